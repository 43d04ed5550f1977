"""kill -9 of ``python -m bot run`` at random points of provisioning and approval, 20 times.

The world lives in this process and survives every kill: the rehearsal stage (Vast simulator on
loopback, an SSH server and a fake ComfyUI per instance, playing the ``happy`` scenario in real
time) and the fake Discord. The bot is the real entry point in a subprocess, pointed at them by
its ordinary settings (VAST_API_URL, VAST_API_KEY, SSH_KEY_PATH, PROVISION_SCRIPT_URL) and, for
Discord, by ``bench/kill9_site/sitecustomize.py`` (discord.py's base URL and gateway). Only the
bot is killed (SIGKILL), then started again on the same database.

Rounds cycle through four kill points, each after a random delay: during a /rent request,
right after an Approve click (a button posted by an earlier, killed process), during
provisioning, and just after a container exits (around the teardown decision and its post).
After each restart: every rental the database holds as active must be watched again (its watch
state saved by the new process). At the end: no label rented twice (simulator ground truth), no
approved rental left without an instance, a teardown post for every container that exited, and
every old button answered. Run: ``.venv/bin/python bench/bench_kill9.py`` (exit 0 when all hold).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from bench_reliability import catalogue  # noqa: E402

from bot.clock import SystemClock  # noqa: E402
from bot.sim.scenarios import load_scenario  # noqa: E402
from bot.sim.stage import SIM_API_KEY, RehearsalStage  # noqa: E402
from tests.support.fakediscord import FakeDiscord, walk_components  # noqa: E402
from tests.support.fakediscord.ids import APP_ID, APPROVER_ROLE_ID, CHANNEL_ID, GUILD_ID, NOTIFY_CHANNEL_ID  # noqa: E402

REQUESTER, APPROVER = 4_001, 4_002
POLL = 2.0
ACTIVE = ("creating", "provisioning", "ready", "degraded", "failed", "tearing_down")


@dataclass
class Tally:
    kills: list[str] = field(default_factory=list)
    restarts: int = 0
    reattach_checks: int = 0
    reattached: int = 0
    not_reattached: list[str] = field(default_factory=list)
    old_clicks: int = 0
    old_clicks_answered: int = 0
    broken: dict[int, int] = field(default_factory=dict)  # instance id -> rental id
    notes: list[str] = field(default_factory=list)


class BotProcess:
    """``python -m bot run`` in a subprocess, killed with SIGKILL and started again."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0

    async def start(self, fake: FakeDiscord) -> float:
        identifies = fake.gateway_events.count("IDENTIFY")
        self.runs += 1
        log = (self.workdir / f"bot-{self.runs}.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", env=self.env, cwd=self.workdir, stdout=log, stderr=log)
        started = time.time()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while fake.gateway_events.count("IDENTIFY") <= identifies:
            if self.proc.returncode is not None:
                raise RuntimeError(f"the bot exited with {self.proc.returncode}; see {log.name}")
            if loop.time() > deadline:
                raise TimeoutError("the bot did not connect to the fake Discord within 60 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # READY and GUILD_CREATE reach the bot's cache
        return started

    async def kill9(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill9()


def bot_env(fake: FakeDiscord, stage: RehearsalStage, settings: Any, work: Path) -> dict[str, str]:
    """The bot's environment: the stage's simulator and keys, the fake Discord, a database in ``work``."""
    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(work), "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(HERE / "kill9_site"), str(REPO)]),
        "VASTOPS_FAKE_DISCORD_API": fake.api_base, "VASTOPS_FAKE_DISCORD_GATEWAY": fake.gateway_url,
        "DISCORD_TOKEN": "fake-token.not.real", "DISCORD_GUILD_ID": str(GUILD_ID),
        "NOTIFY_CHANNEL_ID": str(NOTIFY_CHANNEL_ID), "APPROVER_ROLE_ID": str(APPROVER_ROLE_ID),
        "VAST_BACKEND": "vast", "VAST_API_URL": stage.sim.base_url or "", "VAST_API_KEY": SIM_API_KEY,
        "SSH_KEY_PATH": str(stage.key_path), "PROVISION_SCRIPT_URL": settings.provision_script_url or "",
        "DATABASE_PATH": str(work / "vastops.db"), "POLL_INTERVAL": str(POLL), "COMMAND_COOLDOWN": "0",
        "TEARDOWN_POLICY": "destroy", "SELF_APPROVE_MAX_PRICE": "0",
    }


def db_rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the bot's database from outside (read-only; the bot may be writing)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return list(db.execute(sql, params))


async def request_rent(fake: FakeDiscord) -> Any:
    """/rent, then pick the first offer: the request is posted to the approvers with its buttons."""
    inter = await fake.slash("rent", {"num_gpus": 1}, user_id=REQUESTER)
    await inter.response(timeout=10)
    picker = await fake.wait_for_message(
        CHANNEL_ID, lambda m: m.interaction_id == inter.id and not m.loading and bool(m.custom_ids()), 20)
    select = next(c for c in walk_components(picker.components) if c.get("type") == 3)
    return await fake.click(picker.id, select["custom_id"], user_id=REQUESTER,
                            values=[select["options"][0]["value"]])


def pending_buttons(fake: FakeDiscord) -> list[tuple[int, str]]:
    """(message id, Approve custom_id) of every request message that still shows its buttons."""
    out = []
    for msg in fake.messages_in(NOTIFY_CHANNEL_ID):
        for comp in walk_components(msg.components):
            cid = str(comp.get("custom_id") or "")
            if cid.startswith("vastops:approval:") and cid.endswith(":approve") and not comp.get("disabled"):
                out.append((msg.id, cid))
    return out


async def rent_one(fake: FakeDiscord, stage: RehearsalStage, tally: Tally) -> None:
    """Request and approve a rental without killing anything, until Vast has its instance."""
    before = set(stage.sim.instances) | set(stage.sim.destroyed)
    await request_rent(fake)
    await fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: bool(pending_buttons(fake)), 20)
    msg_id, cid = pending_buttons(fake)[-1]
    click = await fake.click(msg_id, cid, user_id=APPROVER)
    await click.response(timeout=10)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline and not (set(stage.sim.instances) - before):  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.2)
    if not set(stage.sim.instances) - before:
        shown = fake.message(msg_id).text()[:200]
        tally.notes.append(f"an approval without a kill rented nothing within 60 s: {shown!r}")
    else:
        tally.notes.append(f"an approval without a kill rented in {60 - (deadline - loop.time()):.1f} s")


async def check_reattached(db: Path, started: float, tally: Tally) -> None:
    """Every rental the database holds as active gets its watch state saved by the new process."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8 * POLL + 10
    waiting: set[int] = set()
    while loop.time() < deadline:
        active = {r[0] for r in db_rows(db, f"SELECT id FROM rentals WHERE state IN ({','.join('?' * len(ACTIVE))})",
                                        ACTIVE)}
        saved = {r[0] for r in db_rows(db, "SELECT rental_id FROM watch_state WHERE updated_at >= ?", (started,))}
        # A rental that closed meanwhile was watched to its end: it counts as re-attached.
        waiting = {rid for rid in active if rid not in saved}
        if not waiting:
            break
        await asyncio.sleep(0.5)
    seen = {r[0] for r in db_rows(db, f"SELECT id FROM rentals WHERE state IN ({','.join('?' * len(ACTIVE))}) "
                                      "OR updated_at >= ?", (*ACTIVE, started))}
    tally.reattach_checks += len(seen)
    tally.reattached += len(seen - waiting)
    tally.not_reattached += [f"rental {rid} after restart {tally.restarts}" for rid in waiting]


async def round_(kind: str, rng: random.Random, fake: FakeDiscord, bot: BotProcess, stage: RehearsalStage,
                 db: Path, tally: Tally) -> None:
    """Do one action, kill -9 the bot at a random moment of it, start it again and check."""
    msg_id, cid = 0, ""
    if kind == "request":
        delay = rng.uniform(0.0, 1.5)
        await request_rent(fake)
    elif kind == "approve":
        buttons = pending_buttons(fake)
        if not buttons:  # nothing pending: make a request first (not a kill point)
            await request_rent(fake)
            await fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: bool(pending_buttons(fake)), 20)
            buttons = pending_buttons(fake)
        msg_id, cid = buttons[-1]
        delay = rng.uniform(0.0, 8.0)  # an approval takes ~6 s: preflight, re-check, create, records
        tally.old_clicks += 1
        click = await fake.click(msg_id, cid, user_id=APPROVER)
        kill_at = asyncio.get_running_loop().time() + delay
        try:
            await click.response(timeout=max(0.01, delay))
            tally.old_clicks_answered += 1
        except (TimeoutError, AssertionError):
            tally.old_clicks -= 1  # killed before it could answer: not a test of the old button
        delay = max(0.0, kill_at - asyncio.get_running_loop().time())
    elif kind == "provisioning":
        await rent_one(fake, stage, tally)  # not a kill point: a fresh instance to kill during
        delay = rng.uniform(0.0, 20.0)
    else:  # a container exits: kill around the teardown decision, its post and the destroy
        # Only an instance the bot has seen running (its container_running milestone is recorded):
        # one that exits before the bot saw it running is another case (a deadline, not this kill point).
        loop = asyncio.get_running_loop()
        until = loop.time() + 90
        running: list[int] = []
        while loop.time() < until and not running:
            seen = {r[0] for r in db_rows(db, "SELECT r.instance_id FROM events e JOIN rentals r ON r.id = e.rental_id "
                                              "WHERE e.kind = 'milestone' AND e.payload LIKE '%container_running%'")}
            running = [i for i in stage.sim.instances if i in seen and i not in tally.broken
                       and stage.sim._meta[i].destroyed_at is None and stage.sim.status_of(i) == "running"]
            if not running:
                await asyncio.sleep(0.5)
        if not running:
            delay = rng.uniform(0.0, 5.0)
            tally.notes.append("no running instance to break this round")
        else:
            iid = rng.choice(running)
            rows = db_rows(db, "SELECT id FROM rentals WHERE instance_id = ?", (iid,))
            stage.sim.update_instance(iid, actual_status="exited")
            tally.broken[iid] = rows[0][0] if rows else -1
            delay = rng.uniform(0.0, 3 * POLL)
    await asyncio.sleep(delay)
    await bot.kill9()
    tally.kills.append(f"{kind} +{delay:.2f}s")
    await asyncio.sleep(rng.uniform(0.0, 1.0))
    started = await bot.start(fake)
    tally.restarts += 1
    if kind == "approve" and (msg_id, cid) in pending_buttons(fake):
        # Killed before the click took effect: the same old button, clicked again, must work now.
        tally.old_clicks += 1
        again = await fake.click(msg_id, cid, user_id=APPROVER)
        with contextlib.suppress(TimeoutError, AssertionError):
            body = await again.response(timeout=10)
            tally.old_clicks_answered += 1
            tally.notes.append(f"old button clicked again after the restart: {str(body)[:300]}")
    await check_reattached(db, started, tally)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--keep", type=Path, default=None, help="keep the bot logs and database in this directory")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    wall0 = time.monotonic()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="vastops-kill9-") as tmp:
        work = Path(tmp)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        clock = SystemClock()
        stage = RehearsalStage(load_scenario("happy"), clock, workdir=work / "stage")
        stage.sim.offers = catalogue(60, rng)
        fake = FakeDiscord(app_id=APP_ID, guild_id=GUILD_ID,
                           channels={CHANNEL_ID: "general", NOTIFY_CHANNEL_ID: "vastops"},
                           roles={APPROVER_ROLE_ID: "approver"})
        fake.add_member(REQUESTER, "ada", [])
        fake.add_member(APPROVER, "grace", [APPROVER_ROLE_ID])
        settings = await stage.start()
        await fake.start()
        db = work / "vastops.db"
        bot = BotProcess(bot_env(fake, stage, settings, work), work)
        try:
            await bot.start(fake)
            kinds = ("request", "approve", "provisioning", "exit")
            for n in range(args.kills):
                await round_(kinds[n % len(kinds)], rng, fake, bot, stage, db, tally)
            # Let the last restart settle: creates re-sent, teardowns finished, posts delivered.
            await asyncio.sleep(20 * POLL)
            report = judge(fake, stage, db, tally)
        finally:
            await bot.stop()
            await fake.stop()
            await stage.stop()
    print(f"kill -9 of `python -m bot run`: {len(tally.kills)} kills, {tally.restarts} restarts "
          f"(wall {time.monotonic() - wall0:.0f} s)")
    print(f"  kill points: {', '.join(tally.kills)}")
    ok = True
    for name, value, target, good in report:
        ok = ok and good
        print(f"  {name:<62} {value:>7} {target:>8}  {'yes' if good else 'NO'}")
    for note in tally.notes + tally.not_reattached:
        print(f"    {note}")
    print("all targets hold" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


def judge(fake: FakeDiscord, stage: RehearsalStage, db: Path, tally: Tally) -> list[tuple[str, Any, str, bool]]:
    sim = stage.sim
    labels: dict[str, list[int]] = {}
    for iid, row in {**sim.destroyed, **sim.instances}.items():
        labels.setdefault(str(row.get("label") or ""), []).append(iid)
    rentals = db_rows(db, "SELECT id, label, state, instance_id FROM rentals")
    states: dict[str, int] = {}
    for r in rentals:
        states[r[2]] = states.get(r[2], 0) + 1
    tally.notes.append("rentals by state: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    known = {r[1] for r in rentals}
    duplicates = sum(len(ids) - 1 for ids in labels.values() if len(ids) > 1)
    strangers = sum(len(ids) for label, ids in labels.items() if label not in known)
    approved = db_rows(db, "SELECT r.id, r.state, r.instance_id, r.label FROM approvals a JOIN rentals r "
                           "ON r.id = a.rental_id WHERE a.kind = 'rent' AND a.status = 'approved'")
    stuck = [r for r in approved if r[2] is None and r[1] in ("creating", "approved")]
    for r in stuck:
        tally.notes.append(f"approved rental {r[0]} ({r[3]}) still {r[1]} without an instance")
    nothing = [r for r in approved if r[1] == "create_failed" and not labels.get(r[3])]
    for r in nothing:
        tally.notes.append(f"approved rental {r[0]} ended create_failed with nothing rented")
    posts = [m for m in fake.messages_in(NOTIFY_CHANNEL_ID, ephemeral=False)]
    lost_fatal = 0
    for iid, rid in tally.broken.items():
        title = f"Tearing down rental #{rid}"
        if not any(title in m.text() or any(title in str(e.get("title", "")) for e in m.payload.get("embeds") or [])
                   for m in posts):
            lost_fatal += 1
            tally.notes.append(f"no teardown post for rental {rid} (instance {iid} exited)")
    # A request still pending must still offer its buttons: else nobody can ever approve it.
    pending = {r[0] for r in db_rows(db, "SELECT id FROM approvals WHERE status = 'pending' AND kind = 'rent'")}
    clickable = {int(cid.split(":")[2]) for _, cid in pending_buttons(fake)}
    buttonless = sorted(pending - clickable)
    for aid in buttonless:
        shown = next((m.text()[:160].replace("\n", " ") for m in posts
                      if any(c.startswith(f"vastops:approval:{aid}:") for c in m.custom_ids())
                      or f"#{aid}" in m.text()), "?")
        tally.notes.append(f"approval {aid} is pending but its message offers no button: {shown!r}")
    billing_broken = [iid for iid in tally.broken if sim._meta[iid].destroyed_at is None]
    rented = sum(1 for ids in labels.values() if ids)
    return [
        ("kills (SIGKILL) during requests, approvals, provisioning, exits", len(tally.kills), ">= 20",
         len(tally.kills) >= 20),
        ("instances rented (simulator)", rented, "-", True),
        ("rentals re-attached after a restart", f"{tally.reattached}/{tally.reattach_checks}", "all",
         tally.reattached == tally.reattach_checks),
        ("duplicate rents (one label, two instances)", duplicates, "0", duplicates == 0),
        ("instances with no rental behind them", strangers, "0", strangers == 0),
        ("approved rentals left without an instance", len(stuck), "0", not stuck),
        ("approved rentals closed create_failed with nothing rented", len(nothing), "reported", True),
        ("lost fatal posts (a container exited, no teardown post)", lost_fatal, "0", lost_fatal == 0),
        ("exited containers still billing", len(billing_broken), "0", not billing_broken),
        ("pending requests whose message lost its buttons", len(buttonless), "0", not buttonless),
        ("old Approve buttons answered after a restart",
         f"{tally.old_clicks_answered}/{tally.old_clicks}", "all", tally.old_clicks_answered == tally.old_clicks),
    ]


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

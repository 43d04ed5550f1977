"""Bench: the Discord surface's responsiveness and memory (issue 4).

1. Time from an interaction arriving at the fake Discord to the bot's first response (the ack),
   median and worst of 200 commands (/status, /logs, /destroy, /rent, rental autocomplete), with
   10,000 rentals in the database. Target: well under Discord's 3 s, aim < 100 ms.
2. The process's resident memory (RSS) while the bot watches 100 simulated rentals (engine ticks
   against the Vast simulator; instances stay "loading", so no SSH), with the watcher posting and
   editing their status messages in the fake Discord.

Everything runs in this one process (fake Discord, simulator, bot), so RSS is an upper bound for
the bot alone; the delta over the pre-bot baseline is printed too.

Run from the repository root (the fake Discord lives in tests/):
.venv/bin/python -m bench.bench_discord [--commands 200] [--rentals 10000] [--watched 100]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from bot.app import build_bot
from bot.clock import FakeClock, SystemClock
from bot.db.models import RentalState
from bot.db.store import Store
from bot.sim.api import VastSim
from bot.sim.stage import StageSettings
from bot.vast.client import NO_SPACING, VastClient
from tests.support.fakediscord import FakeDiscord, FakeInteraction, patched_discord, start_bot
from tests.support.fakediscord.ids import APP_ID, APPROVER_ROLE_ID, CHANNEL_ID, GUILD_ID, NOTIFY_CHANNEL_ID

USER, APPROVER = 4001, 4002


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settings_for(db: Path) -> StageSettings:
    return StageSettings(
        vast_backend="sim", database_path=db, discord_token="bench.token.fake", discord_guild_id=GUILD_ID,
        notify_channel_id=NOTIFY_CHANNEL_ID, approver_role_id=APPROVER_ROLE_ID, poll_interval=15.0,
    )


def new_fake() -> FakeDiscord:
    fake = FakeDiscord(app_id=APP_ID, guild_id=GUILD_ID, roles={APPROVER_ROLE_ID: "approver"},
                       channels={CHANNEL_ID: "general", NOTIFY_CHANNEL_ID: "ops"})
    fake.add_member(USER, "user")
    fake.add_member(APPROVER, "approver", roles=[APPROVER_ROLE_ID])
    return fake


async def fill(store: Store, n: int, now: float, active: int) -> list[int]:
    """``n`` rentals (most destroyed, ``active`` provisioning without an instance), half of them USER's."""
    ids: list[int] = []
    async with store.transaction():
        for i in range(n):
            state = RentalState.PROVISIONING if i >= n - active else RentalState.DESTROYED
            rental = await store.create_rental(
                label=f"vastops-{i:08x}", requester_id=USER if i % 2 else 9000 + i % 50,
                requester_name="user", offer_id=1000 + i, quoted_dph=0.3, now=now - (n - i) * 60,
                state=state, gpu_name="RTX 4090", num_gpus=1, started_at=now - (n - i) * 60, dph_total=0.3,
            )
            ids.append(rental.id)
    return ids


async def latency_bench(commands: int, rentals: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        clock = SystemClock()
        sim = VastSim(clock, api_key="k", logs_delay=0.0)
        base = await sim.start()
        fake = new_fake()
        await fake.start()
        settings = settings_for(Path(tmp) / "db.sqlite")
        store = await Store.open(settings.database_path)
        ids = await fill(store, rentals, clock.now(), active=20)
        vast = VastClient(base, "k", clock=clock, min_spacing=NO_SPACING)
        bot = await build_bot(settings, store=store, vast=vast, clock=clock, preflight=None, watch_loop=False)
        lat: dict[str, list[float]] = {}
        try:
            with patched_discord(fake):
                async with start_bot(bot):
                    plan = ["status", "logs", "destroy", "rent", "autocomplete"]
                    for i in range(commands):
                        kind = plan[i % len(plan)]
                        rid = str(ids[-1 - (i % 20)])
                        if kind == "autocomplete":
                            await fake.autocomplete("logs", {"rental": "vastops-0000"}, "rental",
                                                    user_id=USER)
                            inter: FakeInteraction = list(fake.interactions.values())[-1]
                        else:
                            options = {"status": {}, "logs": {"rental": rid, "lines": 20},
                                       "destroy": {"rental": rid}, "rent": {"num_gpus": 1}}[kind]
                            inter = await fake.slash(kind, options, user_id=USER)
                            await inter.response(timeout=10)
                            # Let the command finish before the next one: latency of a quiet bot.
                            await fake.wait_for_message(
                                CHANNEL_ID, lambda m, i=inter: m.interaction_id == i.id and not m.loading,
                                timeout=10)
                        assert inter.ack_latency is not None, f"{kind}: no response"
                        lat.setdefault(kind, []).append(inter.ack_latency * 1000)
        finally:
            await vast.aclose()
            await store.close()
            await sim.stop()
            await fake.stop()
        return lat


async def memory_bench(watched: int, ticks: int) -> dict[str, float]:
    out: dict[str, float] = {"rss_start": rss_mib()}
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        # Instances stay "loading" for the whole bench: no SSH, as the issue allows.
        sim = VastSim(clock, api_key="k", logs_delay=0.0, loading_to_running=10**9)
        base = await sim.start()
        fake = new_fake()
        await fake.start()
        settings = settings_for(Path(tmp) / "db.sqlite")
        store = await Store.open(settings.database_path)
        now = clock.now()
        async with store.transaction():
            for i in range(watched):
                iid = sim.seed_instance(label=f"vastops-w{i:04d}")
                await store.create_rental(label=f"vastops-w{i:04d}", requester_id=USER, requester_name="user",
                                          offer_id=i, quoted_dph=0.35, now=now, instance_id=iid,
                                          state=RentalState.PROVISIONING, started_at=now, gpu_name="RTX 4090",
                                          num_gpus=1)
        vast = VastClient(base, "k", clock=clock, min_spacing=NO_SPACING)
        bot = await build_bot(settings, store=store, vast=vast, clock=clock, preflight=None, watch_loop=False)
        out["rss_before_bot"] = rss_mib()
        try:
            with patched_discord(fake):
                async with start_bot(bot):
                    out["rss_ready"] = rss_mib()
                    durations = []
                    for _ in range(ticks):
                        t0 = time.perf_counter()
                        await bot.engine.tick()
                        durations.append(time.perf_counter() - t0)
                        await clock.advance(settings.poll_interval, step=5.0)
                    await bot.notifier.flush()
                    out["rss_watching"] = rss_mib()
                    out["watches"] = len(bot.engine.watches)
                    out["tick_median_ms"] = statistics.median(durations) * 1000
                    out["tick_worst_ms"] = max(durations) * 1000
                    out["status_messages"] = len({m.id for m in fake.messages_in(NOTIFY_CHANNEL_ID)})
                    out["status_edits"] = bot.notifier.edits
                    out["refused_requests"] = sum(1 for r in fake.requests if r.status >= 400)
        finally:
            await vast.aclose()
            await store.close()
            await sim.stop()
            await fake.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--rentals", type=int, default=10_000)
    parser.add_argument("--watched", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    t0 = time.perf_counter()
    lat = asyncio.run(latency_bench(args.commands, args.rentals))
    every = sorted(x for xs in lat.values() for x in xs)
    print(f"interaction -> first response, {len(every)} commands, {args.rentals:,} rentals in the database:")
    print(f"  all          median {statistics.median(every):7.1f} ms   worst {max(every):7.1f} ms"
          f"   p95 {every[int(0.95 * (len(every) - 1))]:7.1f} ms   (target < 100 ms, limit 3000 ms)")
    for kind, xs in sorted(lat.items()):
        print(f"  {kind:<12} median {statistics.median(xs):7.1f} ms   worst {max(xs):7.1f} ms   n={len(xs)}")
    mem = asyncio.run(memory_bench(args.watched, args.ticks))
    print(f"resident memory watching {int(mem['watches'])} simulated rentals ({args.ticks} engine ticks):")
    print(f"  RSS at start {mem['rss_start']:.1f} MiB, before the bot {mem['rss_before_bot']:.1f} MiB, "
          f"bot ready {mem['rss_ready']:.1f} MiB, watching {mem['rss_watching']:.1f} MiB "
          f"(fake Discord and simulator share this process)")
    print(f"  engine tick median {mem['tick_median_ms']:.1f} ms, worst {mem['tick_worst_ms']:.1f} ms; "
          f"{int(mem['status_messages'])} status messages, {int(mem['status_edits'])} edits, "
          f"{int(mem['refused_requests'])} requests refused by the fake")
    print(f"total wall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

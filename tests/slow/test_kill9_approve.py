"""kill -9 of ``python -m bot run`` while an Approve click re-checks the offer: after the restart
the request must not stay "approved: checking the offer and renting…" with no button and nothing
happening (found by bench/bench_kill9.py).

Real pieces: the bot's entry point in a subprocess, killed with SIGKILL; the Vast simulator and
the fake Discord in this process (they survive the kill); the bot's SQLite file. The simulator
holds the offer re-check open (a request that never answers), so the kill lands deterministically
after the click was acknowledged and before the approval was recorded.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import APP_ID, APPROVER_ROLE_ID, CHANNEL_ID, GUILD_ID, NOTIFY_CHANNEL_ID

BENCH = Path(__file__).resolve().parents[2] / "bench"


async def test_a_kill_during_the_approval_recheck_leaves_a_working_request(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_kill9 as k9
    finally:
        sys.path.remove(str(BENCH))
    from bot.clock import SystemClock
    from bot.sim.scenarios import load_scenario
    from bot.sim.stage import RehearsalStage

    stage = RehearsalStage(load_scenario("happy"), SystemClock(), workdir=tmp_path / "stage")
    fake = FakeDiscord(app_id=APP_ID, guild_id=GUILD_ID, channels={CHANNEL_ID: "general", NOTIFY_CHANNEL_ID: "vastops"},
                       roles={APPROVER_ROLE_ID: "approver"})
    fake.add_member(k9.REQUESTER, "ada", [])
    fake.add_member(k9.APPROVER, "grace", [APPROVER_ROLE_ID])
    settings = await stage.start()
    await fake.start()
    bot = k9.BotProcess(k9.bot_env(fake, stage, settings, tmp_path), tmp_path)
    try:
        await bot.start(fake)
        await k9.request_rent(fake)
        await fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: bool(k9.pending_buttons(fake)), 20)
        msg_id, cid = k9.pending_buttons(fake)[-1]
        approval_id = int(cid.split(":")[2])
        stage.sim.hang_seconds = 30.0
        stage.sim.inject_fault("POST", "/api/v0/bundles/", "timeout", times=1)  # the re-check hangs
        click = await fake.click(msg_id, cid, user_id=k9.APPROVER)
        await click.response(timeout=10)
        await asyncio.sleep(0.5)
        await bot.kill9()
        stage.sim.clear_faults()
        await bot.start(fake)
        await asyncio.sleep(10 * k9.POLL)
        status = k9.db_rows(tmp_path / "vastops.db", "SELECT status FROM approvals WHERE id = ?", (approval_id,))[0][0]
        clickable = any(int(c.split(":")[2]) == approval_id for _, c in k9.pending_buttons(fake))
        rented = [i for i, row in {**stage.sim.instances, **stage.sim.destroyed}.items() if row.get("label")]
        assert status != "pending" or clickable or rented, (
            "after the restart the request is still pending, its message offers no button and nothing was "
            f"rented: {fake.message(msg_id).text()[:200]!r}")
    finally:
        await bot.stop()
        await fake.stop()
        await stage.stop()

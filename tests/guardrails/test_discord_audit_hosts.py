"""/audit and /hosts, and host reputation in /rent, through the real bot on the fake Discord, with
rentals played on the Vast simulator (and SSH) on a FakeClock."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.db.models import RentalState
from bot.render import check_limits
from tests.guardrails.helpers import APPROVER, OTHER, REQUESTER, BotWorld, open_bot_world
from tests.support.fakediscord import FakeDiscord, FakeInteraction, StoredMessage, walk_components
from tests.support.fakediscord.ids import CHANNEL_ID

DAY = 86400.0


async def _reply(w: BotWorld, inter: FakeInteraction) -> StoredMessage:
    return await w.fake.wait_for_message(CHANNEL_ID, lambda m: m.interaction_id == inter.id and not m.loading)


async def _fail_once(w: BotWorld) -> int:
    """A disk-full run on the cheapest offer's machine: the engine destroys it and blames the machine."""
    failed = await w.rent("disk-full", requester=(OTHER, "otto"))
    await w.drive(failed.id, until=(RentalState.DESTROYED,))
    assert failed.machine_id is not None
    return failed.machine_id


async def test_audit_command_attaches_table_csv_and_chart(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path) as w:
        ok = await w.rent("happy")
        await w.drive(ok.id, until=(RentalState.READY, RentalState.DEGRADED))
        await w.bot.rentals.destroy(ok.id, user_id=REQUESTER, user_name="rita", is_approver=False, reason=None)
        await _fail_once(w)

        reply = await _reply(w, await w.fake.slash("audit", {"since": "1d"}, user_id=REQUESTER))
        assert reply.ephemeral and not check_limits(reply.payload)
        text = reply.text()
        assert "disk full" in text and "No space left on device" in text
        assert "2 receipt(s)" in text and "agree with the billed costs" in text
        files = reply.files
        assert {"audit.txt", "audit.csv"} <= set(files)
        assert b"Run comparison" in files["audit.txt"] and b"What went wrong and why" in files["audit.txt"]
        if "audit.png" in files:  # the chart extra is installed with the test extra
            assert files["audit.png"][:8] == b"\x89PNG\r\n\x1a\n"
        else:
            pytest.importorskip("matplotlib")
            raise AssertionError("matplotlib is installed but no chart was attached")

        # One requester only, and a bad window is a clear message, not a traceback.
        mine = await _reply(w, await w.fake.slash("audit", {"since": "1d", "user": OTHER}, user_id=REQUESTER))
        assert "requester otto" in mine.text() and "1 rental(s)" in mine.text()
        bad = await _reply(w, await w.fake.slash("audit", {"since": "soon"}, user_id=REQUESTER))
        assert "not a duration" in bad.text() and "Traceback" not in bad.text()
        assert not [r for r in w.fake.requests if r.status >= 400]


async def test_failed_machine_is_excluded_then_shown_with_its_count_after_the_window(
        fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, host_avoid_window=DAY) as w:
        machine = await _fail_once(w)

        async def offered() -> tuple[str, list[int]]:
            picker = await _reply(w, await w.fake.slash("rent", {"num_gpus": 1}, user_id=REQUESTER))
            select = next(c for c in walk_components(picker.components) if c.get("type") == 3)
            ids = [int(m[1]) for o in select["options"] if (m := re.search(r"offer (\d+)", o["description"]))]
            return picker.text(), ids

        machine_offers = {o["id"] for o in w.stage.sim.offers if o.get("machine_id") == machine}
        text, ids = await offered()
        assert not machine_offers & set(ids), "a machine that just failed us was offered"
        # After HOST_AVOID_WINDOW it is offered again, marked.
        await w.clock.advance(DAY + 60, step=3600.0)
        text, ids = await offered()
        assert machine_offers & set(ids)
        assert "failed us 1 time" in text

        # /hosts is for approvers; it lists the machine's outcomes.
        refused = await w.fake.slash("hosts", {}, user_id=REQUESTER)
        body = await refused.response()
        assert body["data"]["flags"] & 64 and "approver role" in body["data"]["content"]
        listing = await _reply(w, await w.fake.slash("hosts", {}, user_id=APPROVER))
        assert f"m{machine}" in listing.text() and "1 failed" in listing.text()

        # Clear forgives the failure: offered without the mark.
        cleared = await _reply(w, await w.fake.slash("hosts", {"machine": machine, "action": "clear"},
                                                     user_id=APPROVER))
        assert "cleared" in cleared.text() and "0 failed" in cleared.text()
        text, ids = await offered()
        assert machine_offers & set(ids) and "failed us" not in text

        # Ban: never offered again, whatever the window.
        banned = await _reply(w, await w.fake.slash(
            "hosts", {"machine": machine, "action": "ban", "reason": "flaky disks"}, user_id=APPROVER))
        assert "banned" in banned.text() and "flaky disks" in banned.text()
        await w.clock.advance(30 * DAY, step=DAY)
        text, ids = await offered()
        assert not machine_offers & set(ids)
        listing = await _reply(w, await w.fake.slash("hosts", {}, user_id=APPROVER))
        assert "banned by ada" in listing.text()
        missing = await _reply(w, await w.fake.slash("hosts", {"action": "ban"}, user_id=APPROVER))
        assert "Say which machine" in missing.text()
        assert not [r for r in w.fake.requests if r.status >= 400]

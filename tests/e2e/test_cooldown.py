"""End to end: the per-user cooldown on /status and /rent answers a too-early run privately, with the wait."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import APPROVER, REQUESTER, assert_clean, original, stack
from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import CHANNEL_ID


async def test_status_and_rent_too_soon_are_told_when_to_retry(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path, command_cooldown=30) as s:
        first = await s.fake.slash("status", {}, user_id=REQUESTER)
        assert (await first.response())["type"] == 5
        await original(s.fake, first)
        before = len(s.stage.sim.requests)
        await s.clock.advance(12)
        again = await s.fake.slash("status", {}, user_id=REQUESTER)
        body = await again.response()
        assert body["type"] == 4 and body["data"]["flags"] & 64, body
        assert "try again in 18 s" in body["data"]["content"]
        assert len(s.stage.sim.requests) == before, "a refused /status still asked Vast"
        # Another user, and another command, are not held up by it.
        other = await s.fake.slash("status", {}, user_id=APPROVER)
        assert (await other.response())["type"] == 5
        rent = await s.fake.slash("rent", {"num_gpus": 1}, user_id=REQUESTER)
        assert (await rent.response())["type"] == 5
        await original(s.fake, rent, lambda m: bool(m.embeds))
        rent_again = await s.fake.slash("rent", {"num_gpus": 1}, user_id=REQUESTER)
        assert "try again in 30 s" in (await rent_again.response())["data"]["content"]
        # Once the cooldown is over, it runs again.
        await s.clock.advance(19)
        later = await s.fake.slash("status", {}, user_id=REQUESTER)
        assert (await later.response())["type"] == 5
        await s.fake.wait_for_message(CHANNEL_ID, lambda m: m.interaction_id == later.id and not m.loading)
        assert_clean(s)

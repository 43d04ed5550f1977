"""Alerts about the bot's own footing reach the channel: Vast's instance list failing for more than
three polls (naming the cause), and its recovery. Real discord.py client against the fake Discord,
the Vast simulator over HTTP, a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from bot.db.models import RentalState
from bot.sim.stage import SIM_API_KEY
from tests.e2e.helpers import stack
from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import NOTIFY_CHANNEL_ID

POLL = 15.0


async def test_a_failing_instance_list_is_announced_after_three_polls_then_its_recovery(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with stack(fake_discord, tmp_path) as s:
        now = s.clock.now()
        offer = s.stage.sim.offers[0]
        instance_id = await s.vast.create_instance(int(offer["id"]), image="img", disk_gb=20, label="vastops-alert")
        rental = await s.store.create_rental(label="vastops-alert", requester_id=1, requester_name="ada",
                                             offer_id=int(offer["id"]), quoted_dph=0.2, now=now,
                                             state=RentalState.CREATING)
        await s.store.update_rental(rental.id, now=now, instance_id=instance_id, started_at=now)
        await s.store.transition_rental(rental.id, to=RentalState.PROVISIONING, now=now)
        await s.bot.engine.reattach()
        s.stage.sim.api_key = "rotated-key"  # the bot's key is refused from now on (revoked)

        def alerts() -> list[str]:
            return [m.content for m in s.notify if "Vast" in m.content and "polls in a row" in m.content]

        for _ in range(2):
            await s.bot.engine.tick()
            await s.clock.advance(POLL)
        await s.bot.engine.pump()
        assert alerts() == []  # two failed polls are not news yet
        for _ in range(3):
            await s.bot.engine.tick()
            await s.clock.advance(POLL)
        await s.bot.engine.pump()
        [alert] = alerts()
        assert "refused the API key" in alert and "VAST_API_KEY" in alert
        assert "@everyone" not in alert

        s.stage.sim.api_key = SIM_API_KEY
        await s.bot.engine.tick()
        await s.bot.engine.pump()
        await fake_discord.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Vast answers again" in m.content)

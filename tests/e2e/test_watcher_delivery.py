"""The channel watcher never lets one bad event block a rental's later posts."""

from __future__ import annotations

from pathlib import Path

from bot.db.models import RentalState
from bot.watch.engine import EV_FINDING
from tests.e2e.helpers import stack
from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import NOTIFY_CHANNEL_ID


async def test_an_event_that_cannot_be_rendered_is_skipped_and_later_events_flow(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with stack(fake_discord, tmp_path) as s:
        now = s.clock.now()
        rental = await s.store.create_rental(label="vastops-odd", requester_id=1, requester_name="ada",
                                             offer_id=1, quoted_dph=0.2, now=now, state=RentalState.PROVISIONING)
        engine = s.bot.engine
        await engine.emit(rental, EV_FINDING, {"severity": "error", "category": "unknown", "line": "not-a-number",
                                               "text": "odd payload", "advice": ""})
        await engine.emit(rental, EV_FINDING, {"severity": "error", "category": "dependency", "line": 7,
                                               "text": "ERROR: Failed building wheel for insightface",
                                               "advice": "fix it"})
        posted = await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "insightface" in m.text())
        assert posted is not None
        await engine.pump()  # the deliverer marks after posting: let its pass finish
        assert await s.store.unposted_events(rental_id=rental.id) == []

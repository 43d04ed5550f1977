"""A Discord rate limit never delays watching: the whole bot against the fake Discord (which answers
the channel's posts with a global 429) and the Vast simulator. Polls and a teardown complete while
the posts wait; the posts then arrive, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.app import build_bot
from bot.clock import FakeClock
from bot.db.models import RentalState
from bot.db.store import Store
from bot.sim.scenarios import load_scenario
from bot.sim.stage import SIM_API_KEY, RehearsalStage
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.engine import EV_FINDING
from tests.fakediscord import FakeDiscord, start_bot
from tests.fakediscord.ids import APPROVER_ROLE_ID, GUILD_ID, NOTIFY_CHANNEL_ID

POLL = 15.0


async def test_a_global_429_on_the_channel_never_delays_a_poll_or_a_teardown(
        fake_discord: FakeDiscord, tmp_path: Path) -> None:
    clock = FakeClock()
    stage = RehearsalStage(load_scenario("happy"), clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start(
        discord_token="fake-token.not.real", discord_guild_id=GUILD_ID, notify_channel_id=NOTIFY_CHANNEL_ID,
        approver_role_id=APPROVER_ROLE_ID, teardown_policy="destroy", command_cooldown=0)
    store = await Store.open(settings.database_path)
    vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock, min_spacing=NO_SPACING)
    bot = await build_bot(settings, store=store, vast=vast, clock=clock, watch_loop=False)
    try:
        async with start_bot(bot):
            engine = bot.engine
            offer = (await vast.search_offers(OfferQuery(limit=5, verified=False, excluded_countries=[])))[0]
            now = clock.now()
            rental = await store.create_rental(label="vastops-ratelimit", requester_id=1, requester_name="ada",
                                               offer_id=offer.id, quoted_dph=offer.dph_total, now=now,
                                               state=RentalState.CREATING, machine_id=offer.machine_id)
            iid = await vast.create_instance(offer.id, image="img", disk_gb=20, label=rental.label)
            await store.update_rental(rental.id, now=now, instance_id=iid, started_at=now)
            await store.transition_rental(rental.id, to=RentalState.PROVISIONING, now=now)
            # Every post to the channel is rate limited for a while (discord.py waits each one out).
            posts = rf"/channels/{NOTIFY_CHANNEL_ID}/messages"
            fake_discord.inject_429("POST", posts, times=4, retry_after=1.5, is_global=True)
            await engine.emit(rental, EV_FINDING, {"severity": "warn", "category": "unknown", "line": 1,
                                                   "text": "first post", "advice": ""})
            for _ in range(60):  # the deliverer has met the rate limit
                if any(r.status == 429 for r in fake_discord.requests):
                    break
                await asyncio.sleep(0.05)
            assert any(r.status == 429 for r in fake_discord.requests)
            for _ in range(3):
                await clock.advance(POLL)
                # A guard against a hang, not a timing figure.
                await asyncio.wait_for(engine.tick(), timeout=20)
            assert await asyncio.wait_for(engine.destroy(rental.id, reason="done", by="ada"), timeout=20)
            assert iid not in stage.sim.instances  # the teardown went through while Discord said "wait"
            current = await store.get_rental(rental.id)
            assert current is not None and current.state == RentalState.DESTROYED
            assert not any("first post" in m.text() for m in fake_discord.messages_in(NOTIFY_CHANNEL_ID))
            # The posts arrive once Discord lets them, in the order they were stored.
            receipt = await fake_discord.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Receipt" in m.text(),
                                                          timeout=30)
            texts = [m.text() for m in fake_discord.messages_in(NOTIFY_CHANNEL_ID)]
            first = next(i for i, t in enumerate(texts) if "first post" in t)
            assert first < texts.index(receipt.text())
    finally:
        await vast.aclose()
        await store.close()
        await stage.stop()

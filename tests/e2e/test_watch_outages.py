"""Outages seen from the channel: the whole bot against the fake Discord and the Vast simulator.

A Discord rate limit never delays watching (polls and a teardown complete while the posts wait;
the posts then arrive, in order), and a Vast outage is said in the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bot.app import VastopsBot, build_bot
from bot.clock import FakeClock
from bot.db.models import Rental, RentalState
from bot.db.store import Store
from bot.sim.scenarios import load_scenario
from bot.sim.stage import SIM_API_KEY, RehearsalStage
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.engine import EV_FINDING
from tests.support.fakediscord import FakeDiscord, start_bot
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, GUILD_ID, NOTIFY_CHANNEL_ID

POLL = 15.0


@dataclass
class Bot:
    clock: FakeClock
    stage: RehearsalStage
    store: Store
    vast: VastClient
    bot: VastopsBot

    async def rent(self, label: str) -> tuple[Rental, int]:
        offer = (await self.vast.search_offers(OfferQuery(limit=5, verified=False, excluded_countries=["CN", "UA"])))[0]
        now = self.clock.now()
        rental = await self.store.create_rental(label=label, requester_id=1, requester_name="ada",
                                                offer_id=offer.id, quoted_dph=offer.dph_total, now=now,
                                                state=RentalState.CREATING, machine_id=offer.machine_id)
        iid = await self.vast.create_instance(offer.id, image="img", disk_gb=20, label=rental.label)
        await self.store.update_rental(rental.id, now=now, instance_id=iid, started_at=now)
        await self.store.transition_rental(rental.id, to=RentalState.PROVISIONING, now=now)
        current = await self.store.get_rental(rental.id)
        assert current is not None
        await self.bot.engine.attach(current)
        return current, iid

    async def poll(self, n: int = 1) -> None:
        for _ in range(n):
            await self.clock.advance(POLL)
            # A guard against a hang, not a timing figure: a poll over loopback takes milliseconds.
            await asyncio.wait_for(self.bot.engine.tick(), timeout=20)


@contextlib.asynccontextmanager
async def running_bot(tmp_path: Path) -> AsyncIterator[Bot]:
    clock = FakeClock()
    stage = RehearsalStage(load_scenario("happy"), clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start(
        discord_token="fake-token.not.real", discord_guild_id=GUILD_ID, notify_channel_id=NOTIFY_CHANNEL_ID,
        approver_role_id=APPROVER_ROLE_ID, teardown_policy="destroy", command_cooldown=0)
    store = await Store.open(settings.database_path)
    # One attempt per call: a poll sees Vast's answer, not the client's retries (which sleep on the clock).
    vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock, min_spacing=NO_SPACING, max_attempts=1)
    bot = await build_bot(settings, store=store, vast=vast, clock=clock, watch_loop=False)
    try:
        async with start_bot(bot):
            yield Bot(clock, stage, store, vast, bot)
    finally:
        await vast.aclose()
        await store.close()
        await stage.stop()


async def test_a_global_429_on_the_channel_never_delays_a_poll_or_a_teardown(
        fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with running_bot(tmp_path) as b:
        engine = b.bot.engine
        rental, iid = await b.rent("vastops-ratelimit")
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
        await b.poll(3)
        assert await asyncio.wait_for(engine.destroy(rental.id, reason="done", by="ada"), timeout=20)
        assert iid not in b.stage.sim.instances  # the teardown went through while Discord said "wait"
        current = await b.store.get_rental(rental.id)
        assert current is not None and current.state == RentalState.DESTROYED
        assert not any("first post" in m.text() for m in fake_discord.messages_in(NOTIFY_CHANNEL_ID))
        # The posts arrive once Discord lets them, in the order they were stored.
        receipt = await fake_discord.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Receipt" in m.text(),
                                                      timeout=30)
        texts = [m.text() for m in fake_discord.messages_in(NOTIFY_CHANNEL_ID)]
        first = next(i for i, t in enumerate(texts) if "first post" in t)
        assert first < texts.index(receipt.text())


async def test_a_vast_outage_is_said_in_the_channel(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with running_bot(tmp_path) as b:
        await b.rent("vastops-outage")
        await b.poll(2)
        b.stage.sim.inject_fault("GET", "/api/v1/instances/", "503", times=1000)
        await b.poll(4)
        alert = await fake_discord.wait_for_message(
            NOTIFY_CHANNEL_ID, lambda m: "Vast" in m.text() and "polls in a row" in m.text(), timeout=10)
        assert "503" in alert.text() or "unreachable" in alert.text()

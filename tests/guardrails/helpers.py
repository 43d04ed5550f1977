"""Guardrail worlds: rentals played end to end (Vast simulator over HTTP, a real SSH server per
instance, a real SQLite file) on a FakeClock, with a scenario chosen per rental; and the real bot
against the fake Discord on the same world."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import VastopsBot, build_bot
from bot.clock import FakeClock
from bot.db.models import Rental, RentalState
from bot.db.store import Store
from bot.rentals import DecisionResult, RentalService
from bot.settings import Settings
from bot.sim.scenarios import load_scenario
from bot.sim.stage import SIM_API_KEY, RehearsalStage
from bot.vast.client import NO_SPACING, VastClient
from bot.watch.engine import WatchEngine, WatchPolicy
from tests.support.fakediscord import FakeDiscord, start_bot
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, GUILD_ID, NOTIFY_CHANNEL_ID

POLL = 15.0
REQUESTER, APPROVER, APPROVER2, OTHER = 3001, 3002, 3003, 3004

# 2023-11-15 01:00 UTC, a Wednesday: a whole UTC day ahead before a budget period resets.
WEDNESDAY_1AM = 1_700_010_000.0
SETTLED = (RentalState.READY, RentalState.DEGRADED, RentalState.DESTROYED)


async def rent_via(service: RentalService, stage: RehearsalStage, scenario: str = "happy", *,
                   requester: tuple[int, str] = (REQUESTER, "rita"), offer_index: int = 0) -> Rental:
    """Request an offer as ``requester`` and approve it; the instance plays ``scenario``."""
    # The stage plays its scenario for every instance created next: switch it per rental.
    stage.scenario = load_scenario(scenario)
    offers = await service.search(service.query())
    assert offers, "the simulator offered nothing"
    _, approval = await service.request(offers[offer_index], requester_id=requester[0], requester_name=requester[1])
    decision = await service.decide(approval.id, approve=True, user_id=APPROVER, user_name="ada", is_approver=True)
    assert decision.result == DecisionResult.APPROVED, decision.message
    assert decision.rental is not None
    return decision.rental


@dataclass
class World:
    clock: FakeClock
    stage: RehearsalStage
    settings: Settings
    store: Store
    vast: VastClient
    engine: WatchEngine
    service: RentalService

    async def rent(self, scenario: str = "happy", *, requester: tuple[int, str] = (REQUESTER, "rita"),
                   offer_index: int = 0) -> Rental:
        return await rent_via(self.service, self.stage, scenario, requester=requester, offer_index=offer_index)

    async def drive(self, rental_id: int, until: tuple[RentalState, ...] = SETTLED, polls: int = 80) -> Rental:
        """Tick the engine once per poll of simulated time until the rental reaches ``until``."""
        for _ in range(polls):
            await self.engine.tick()
            rental = await self.store.get_rental(rental_id)
            assert rental is not None
            if rental.state in until:
                return rental
            await self.clock.advance(POLL, step=1.0)
        raise AssertionError(f"rental {rental_id} did not reach {until} in {polls} polls: {rental.state}")

    async def destroy(self, rental_id: int, *, by: str = "rita", user_id: int = REQUESTER) -> Rental:
        decision = await self.service.destroy(rental_id, user_id=user_id, user_name=by, is_approver=False,
                                              reason=None)
        assert decision.result == DecisionResult.APPROVED, decision.message
        rental = await self.store.get_rental(rental_id)
        assert rental is not None and rental.state == RentalState.DESTROYED
        return rental


@contextlib.asynccontextmanager
async def open_world(tmp_path: Path, **overrides: Any) -> AsyncIterator[World]:
    clock = FakeClock()
    stage = RehearsalStage(load_scenario("happy"), clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start(**{"max_price_per_hour": 5.0, "approval_timeout": 600, **overrides})
    store = await Store.open(settings.database_path)
    vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock, min_spacing=NO_SPACING,
                      reconcile_checks=1)
    engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings))
    service = RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine)
    try:
        yield World(clock, stage, settings, store, vast, engine, service)
    finally:
        await engine.stop()
        await vast.aclose()
        await store.close()
        await stage.stop()


@dataclass
class BotWorld:
    fake: FakeDiscord
    clock: FakeClock
    stage: RehearsalStage
    settings: Settings
    store: Store
    vast: VastClient
    bot: VastopsBot

    async def rent(self, scenario: str = "happy", *, requester: tuple[int, str] = (REQUESTER, "rita"),
                   offer_index: int = 0) -> Rental:
        return await rent_via(self.bot.rentals, self.stage, scenario, requester=requester, offer_index=offer_index)

    async def drive(self, rental_id: int, until: tuple[RentalState, ...] = SETTLED, polls: int = 80) -> Rental:
        for _ in range(polls):
            await self.bot.engine.tick()
            rental = await self.store.get_rental(rental_id)
            assert rental is not None
            if rental.state in until:
                await self.bot.notifier.flush()
                return rental
            await self.clock.advance(POLL, step=1.0)
        raise AssertionError(f"rental {rental_id} did not reach {until}")


@contextlib.asynccontextmanager
async def open_bot_world(fake: FakeDiscord, tmp_path: Path, *, start: float = WEDNESDAY_1AM,
                         watch_loop: bool = False, **overrides: Any) -> AsyncIterator[BotWorld]:
    clock = FakeClock(start)
    stage = RehearsalStage(load_scenario("happy"), clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start(**{
        "discord_token": "fake-token.not.real", "discord_guild_id": GUILD_ID,
        "notify_channel_id": NOTIFY_CHANNEL_ID, "approver_role_id": APPROVER_ROLE_ID,
        "approval_timeout": 600, "self_approve_max_price": 5.0, "max_price_per_hour": 5.0,
        "proposal_timeout": 300, "command_cooldown": 0, **overrides,
    })
    fake.add_member(REQUESTER, "rita")
    fake.add_member(APPROVER, "ada", roles=[APPROVER_ROLE_ID])
    fake.add_member(APPROVER2, "bea", roles=[APPROVER_ROLE_ID])
    fake.add_member(OTHER, "otto")
    store = await Store.open(settings.database_path)
    vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock, min_spacing=NO_SPACING,
                      reconcile_checks=1)
    bot = await build_bot(settings, store=store, vast=vast, clock=clock, watch_loop=watch_loop, preflight=None)
    try:
        async with start_bot(bot):
            yield BotWorld(fake, clock, stage, settings, store, vast, bot)
    finally:
        await vast.aclose()
        await store.close()
        await stage.stop()

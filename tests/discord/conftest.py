"""A rental service over a real store and the Vast simulator on loopback, on a FakeClock (no Discord)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import FakeClock
from bot.db.store import Store
from bot.rentals import RentalService
from bot.sim.api import VastSim
from bot.sim.stage import StageSettings
from bot.vast.client import NO_SPACING, VastClient
from bot.watch.engine import WatchEngine, WatchPolicy
from tests.discord.helpers import World


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = FakeClock()
    sim = VastSim(clock, api_key="k", logs_delay=0.0)
    base = await sim.start()
    settings = StageSettings(vast_backend="sim", database_path=tmp_path / "db.sqlite",
                             provision_script_url="https://example.org/provision.sh", approval_timeout=600,
                             self_approve_max_price=0.5, max_price_per_hour=5.0)
    store = await Store.open(settings.database_path)
    # One reconcile check: the client's spaced re-checks would sleep on the FakeClock.
    vast = VastClient(base, "k", clock=clock, min_spacing=NO_SPACING, reconcile_checks=1)
    engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings))
    service = RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine)
    try:
        yield World(clock, sim, store, engine, service, settings)
    finally:
        await engine.stop()
        await vast.aclose()
        await store.close()
        await sim.stop()



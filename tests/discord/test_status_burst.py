"""A burst of /status (the rental service's instance lists) does not delay the watch engine's poll.

A real store, the simulator enforcing Vast's list spacing, the client's default spacing and a
FakeClock: the figure is simulated seconds, not wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

from bot.clock import FakeClock
from bot.db.store import Store
from bot.rentals import RentalService
from bot.sim.api import VastSim
from bot.sim.stage import StageSettings
from bot.vast.client import DEFAULT_MIN_SPACING, LIST, VastClient
from bot.watch.engine import WatchEngine, WatchPolicy
from tests.vast.helpers import drive


async def _finished_at(clock: FakeClock, call: Awaitable[object]) -> float:
    await call
    return clock.now()


async def test_sixty_status_lists_do_not_delay_the_watchers_poll(tmp_path: Path) -> None:
    clock = FakeClock()
    sim = VastSim(clock, api_key="k", logs_delay=0.0, rate_limits={LIST: 1.0})
    base = await sim.start()
    settings = StageSettings(vast_backend="sim", database_path=tmp_path / "db.sqlite")
    store = await Store.open(settings.database_path)
    vast = VastClient(base, "k", clock=clock, min_spacing=DEFAULT_MIN_SPACING, reconcile_checks=1)
    engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings))
    service = RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine)
    sim.seed_instance(label="someone-elses")
    try:
        burst = [asyncio.ensure_future(_finished_at(clock, service.unknown_instances())) for _ in range(60)]
        for _ in range(5):
            await asyncio.sleep(0)  # queued, the first in flight
        start = clock.now()
        done = await drive(clock, asyncio.gather(_finished_at(clock, engine.tick()), *burst))
    finally:
        await engine.stop()
        await vast.aclose()
        await store.close()
        await sim.stop()
    took = done[0] - start
    assert took <= 2 * DEFAULT_MIN_SPACING[LIST], f"the poll waited {took:.0f}s behind /status"
    assert max(done[1:]) - start >= 59 * DEFAULT_MIN_SPACING[LIST]  # every /status still got its answer
    assert all(r.status == 200 for r in sim.requests_to(LIST))

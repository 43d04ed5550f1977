"""Fixtures for the Vast tests: the simulator on loopback, a real client pointed at it, a FakeClock.

``drive`` runs a client operation to completion, advancing the FakeClock to each pending
sleeper's deadline (backoff, spacing, polling) so nothing waits in real time.
"""

from __future__ import annotations

import asyncio
import faulthandler
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.vast import NO_SPACING, VastClient

T = TypeVar("T")
SIM_KEY = "vk-test-5f3c9a1e-secret"


def next_deadline(clock: FakeClock) -> float | None:
    # FakeClock keeps its sleepers private; peeking lets the driver jump straight to the next wake-up.
    pending = [deadline for deadline, _, fut in clock._sleepers if not fut.done()]
    return min(pending) if pending else None


async def drive(clock: FakeClock, awaitable: Awaitable[T], *, max_sim_seconds: float = 7200) -> T:
    """Await ``awaitable`` while moving the FakeClock to each sleeper's deadline as it comes."""
    task = asyncio.ensure_future(awaitable)
    start = clock.now()
    while not task.done():
        await asyncio.sleep(0.001)  # real time for loopback I/O between clock steps
        if task.done():
            break
        deadline = next_deadline(clock)
        if deadline is None:
            continue
        if deadline - start > max_sim_seconds:
            task.cancel()
            raise AssertionError(f"operation still sleeping after {max_sim_seconds}s of simulated time")
        await clock.advance(max(0.0, deadline - clock.now()))
    return task.result()


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    # An operation left sleeping on the FakeClock without ``drive`` would wait forever: fail loudly.
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


SimFactory = Callable[..., Awaitable[VastSim]]
ClientFactory = Callable[..., VastClient]


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[SimFactory]:
    sims: list[VastSim] = []

    async def factory(**kwargs: Any) -> VastSim:
        kwargs.setdefault("api_key", SIM_KEY)
        kwargs.setdefault("hang_seconds", 10.0)
        sim = VastSim(clock, **kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def sim(make_sim: SimFactory) -> VastSim:
    return await make_sim()


@pytest.fixture
async def make_client(clock: FakeClock) -> AsyncIterator[ClientFactory]:
    clients: list[VastClient] = []

    def factory(base_url: str, api_key: str | None = SIM_KEY, **kwargs: Any) -> VastClient:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("min_spacing", NO_SPACING)
        kwargs.setdefault("timeout", 5.0)
        client = VastClient(base_url, api_key, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
def client(sim: VastSim, make_client: ClientFactory) -> VastClient:
    assert sim.base_url is not None
    return make_client(sim.base_url)

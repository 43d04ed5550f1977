"""Fixtures for the Vast tests: the simulator on loopback, a real client pointed at it, a FakeClock
(``tests.vast.helpers.drive`` runs a client operation on it), and a watchdog for a forgotten sleeper."""

from __future__ import annotations

import faulthandler
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.vast import NO_SPACING, VastClient
from tests.vast.helpers import SIM_KEY, ClientFactory, SimFactory


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    # An operation left sleeping on the FakeClock without ``drive`` would wait forever: fail loudly.
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


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

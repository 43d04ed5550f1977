"""Open the Vast API the settings point at: the real one, or the built-in simulator in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.clock import Clock, SystemClock
from bot.settings import ConfigError, Settings
from bot.vast.client import VastClient

SIM_API_KEY = "sim-key-not-secret"


@asynccontextmanager
async def open_vast(
    settings: Settings, clock: Clock | None = None, *, sim: object | None = None
) -> AsyncIterator[VastClient]:
    """Yield a ``VastClient``. With ``VAST_BACKEND=sim`` a simulator is started on loopback first.

    ``sim`` lets a caller pass a simulator it already built (the demo configures scenarios on it).
    """
    clock = clock or SystemClock()
    if settings.is_sim:
        from bot.sim.api import VastSim

        own = sim is None
        simulator = sim if sim is not None else VastSim(clock, api_key=SIM_API_KEY)
        assert isinstance(simulator, VastSim)
        base_url = await simulator.start() if own else simulator.base_url
        if base_url is None:
            raise RuntimeError("open_vast was passed a simulator that is not started")
        try:
            async with VastClient(base_url, simulator.api_key, clock=clock) as client:
                yield client
        finally:
            if own:
                await simulator.stop()
        return
    if settings.vast_api_key is None:
        raise ConfigError(["VAST_API_KEY is not set: a Vast.ai API key (or set VAST_BACKEND=sim)"])
    async with VastClient(settings.vast_api_url, settings.vast_api_key.get_secret_value(), clock=clock) as client:
        yield client

"""Driving the Vast client on a FakeClock: ``drive`` runs a client operation to completion, advancing
the clock to each pending sleeper's deadline (backoff, spacing, polling) so nothing waits in real
time; and the types of the simulator and client factories."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.vast import VastClient

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


SimFactory = Callable[..., Awaitable[VastSim]]
ClientFactory = Callable[..., VastClient]

"""Injected time: every piece of logic asks a Clock, never ``time.time()``.

``SystemClock`` is wall time; ``ScaledClock`` runs simulated time faster than real time (the
demo); ``FakeClock`` only moves when a test advances it, so a 60-minute run replays instantly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, and a sleep measured in the same seconds."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real wall-clock time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time that runs ``speed`` times faster than real time, from ``start``."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._t0_real = time.monotonic()
        self._t0_sim = time.time() if start is None else start

    def now(self) -> float:
        return self._t0_sim + (time.monotonic() - self._t0_real) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class FakeClock:
    """Manual time for tests: ``sleep`` waits until ``advance``/``run_until`` passes its deadline.

    ``await clock.advance(s)`` moves time forward in order of deadlines, letting the event loop
    run the woken tasks at each step, so code that sleeps in a loop behaves as it would in real
    time, only instantly.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._ids), fut))
        await fut

    async def _settle(self) -> None:
        # Several loop turns so woken tasks can reach their next sleep (or finish their I/O).
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Move time forward by ``seconds``, waking sleepers in deadline order.

        With ``step``, time also moves in increments of at most ``step`` so background I/O
        (real sockets on loopback) gets a chance to complete between wake-ups.
        """
        target = self._now + seconds
        while True:
            await self._settle()
            next_deadline = self._sleepers[0][0] if self._sleepers else None
            limit = target if step is None else min(target, self._now + step)
            if next_deadline is not None and next_deadline <= limit:
                self._now = max(self._now, next_deadline)
                while self._sleepers and self._sleepers[0][0] <= self._now:
                    _, _, fut = heapq.heappop(self._sleepers)
                    if not fut.done():
                        fut.set_result(None)
                continue
            if self._now >= target:
                break
            self._now = limit
        await self._settle()

    @property
    def pending_sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

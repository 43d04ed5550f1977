"""Bad weather for the reliability benchmarks: random Vast faults, SQLite write failures, a flaky
Discord notifier, and a driver that moves a FakeClock only when the world is quiet.

Everything here acts on real pieces from the outside: faults are answered by the Vast simulator's
HTTP server, database failures are real SQLite errors on the store's own file (a page-count limit
on its connection, or an exclusive lock held by a second connection), and the notifier is the
seam the engine's outbox delivers through.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.clock import FakeClock
from bot.db.models import Event, Rental
from bot.db.store import Store
from bot.sim.api import VastSim
from bot.sim.faults import Fault, FaultPlan

# Every fault Vast (or a proxy in front of it) serves: the three 429 shapes, 5xx, a request
# that never answers, and an answer lost after the work was done (a lost create reply).
WEATHER_KINDS: tuple[str, ...] = (
    "429_text", "429_json", "429_destroy", "500", "502", "503", "504", "timeout", "drop_after_apply",
)


class RandomFaults(FaultPlan):
    """A fault plan answering ``rate`` of the API's requests with a random fault kind.

    ``down`` answers every API request with a 503 (Vast down), on top of the random ones.
    """

    def __init__(self, rng: random.Random, rate: float = 0.3, kinds: tuple[str, ...] = WEATHER_KINDS) -> None:
        super().__init__()
        self.rng = rng
        self.rate = rate
        self.kinds = kinds
        self.enabled = True
        self.down = False
        self.served: dict[str, int] = {}

    def take(self, method: str, path: str, template: str) -> Fault | None:
        planned = super().take(method, path, template)
        if planned is not None or not path.startswith("/api/"):
            return planned
        kind: str | None = None
        if self.down:
            kind = "503"
        elif self.enabled and self.rng.random() < self.rate:
            kind = self.rng.choice(self.kinds)
        if kind is None:
            return None
        self.served[kind] = self.served.get(kind, 0) + 1
        return Fault(method, path, kind, 0)


class RateLimited(Exception):
    """What a Discord 429 looks like to the outbox: the delivery failed, try later."""


@dataclass
class FlakyDiscord:
    """A notifier like the bot's Discord one under rate limits: some deliveries fail with a 429,
    some wait out a long global rate limit (on the simulated clock), the rest go through."""

    clock: FakeClock
    rng: random.Random
    fail_rate: float = 0.2
    stall_rate: float = 0.1
    stall_seconds: tuple[float, float] = (20.0, 120.0)
    healthy: bool = False
    delivered: list[Event] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    refused: int = 0
    stalled: int = 0

    async def _weather(self) -> None:
        if self.healthy:
            return
        r = self.rng.random()
        if r < self.fail_rate:
            self.refused += 1
            raise RateLimited("429 Too Many Requests (global)")
        if r < self.fail_rate + self.stall_rate:
            self.stalled += 1
            await self.clock.sleep(self.rng.uniform(*self.stall_seconds))

    async def notify(self, rental: Rental, event: Event) -> None:
        await self._weather()
        self.delivered.append(event)

    async def alert(self, text: str) -> None:
        await self._weather()
        self.alerts.append(text)


class DatabaseWeather:
    """Real SQLite write failures on the store's database file."""

    def __init__(self, store: Store, path: Path) -> None:
        self.store = store
        self.path = path
        self._locker: sqlite3.Connection | None = None
        self.windows: list[tuple[str, float, float]] = []

    async def _pragma(self, sql: str) -> Any:
        # The store's own connection (the limit applies to its writes), between its transactions.
        async with self.store._lock:
            return await self.store._db.execute_fetchall(sql)

    async def prepare(self) -> None:
        await self._pragma("CREATE TABLE IF NOT EXISTS bench_ballast (b BLOB)")

    async def fill(self) -> None:
        """Disk full: the database may not grow by a single page (SQLITE_FULL on the next write
        that needs one), and the free pages inside the file are taken by ballast first."""
        rows = await self._pragma("PRAGMA page_count")
        await self._pragma(f"PRAGMA max_page_count = {int(next(iter(rows))[0])}")
        while await self.writable():
            pass

    async def writable(self) -> bool:
        """Whether a page-sized write goes through now (it stays, as ballast, when it does)."""
        try:
            await self._pragma("INSERT INTO bench_ballast VALUES (randomblob(4000))")
        except sqlite3.OperationalError:
            return False
        return True

    async def unfill(self) -> None:
        await self._pragma("PRAGMA max_page_count = 1073741823")
        await self._pragma("DELETE FROM bench_ballast")

    async def lock(self) -> None:
        """Another process holds the write lock (SQLITE_BUSY after the store's busy timeout)."""
        self._locker = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        # Taken between the store's transactions: one in progress needs the event loop to finish.
        async with self.store._lock:
            self._locker.execute("BEGIN EXCLUSIVE")

    def unlock(self) -> None:
        if self._locker is not None:
            self._locker.execute("ROLLBACK")
            self._locker.close()
            self._locker = None


class QuietDriver:
    """Moves a FakeClock one step at a time, each step only once the simulator has answered every
    request in flight and no task has gone to sleep on the clock for a few loop turns (bounded)."""

    def __init__(self, clock: FakeClock, sims: list[VastSim], *, step: float = 1.0,
                 max_wait: float = 1.0) -> None:
        self.clock = clock
        self.sims = sims
        self.step = step
        self.max_wait = max_wait
        self._task: asyncio.Task[None] | None = None
        self.steps = 0

    async def quiet(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        stable = 0
        last = -1
        while loop.time() < deadline:
            busy = any(s.in_flight for s in self.sims)
            # Callbacks ready to run mean some task is working (SSH, HTTP, parsing): not quiet yet.
            ready = len(getattr(loop, "_ready", ()))
            now_sleepers = self.clock.pending_sleepers
            stable = stable + 1 if (not busy and ready == 0 and now_sleepers == last) else 0
            last = now_sleepers
            if stable >= 3:
                return
            await asyncio.sleep(0.001 if not busy else 0.002)

    async def run(self) -> None:
        while True:
            await self.quiet()
            await self.clock.advance(self.step)
            self.steps += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="quiet-clock-driver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def wait_until(self, t: float) -> None:
        """Sleep (on the simulated clock) until clock time ``t``."""
        left = t - self.clock.now()
        if left > 0:
            await self.clock.sleep(left)

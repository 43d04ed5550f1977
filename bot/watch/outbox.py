"""The event outbox: every event is stored with its per-rental sequence number before anyone sees it,
and a separate deliverer task hands stored events to the notifier in order, marking each delivered.

Watching never waits for Discord: the engine and the rent service only *append* (and wake the
deliverer); a slow, rate-limited or hung notifier delays posts, never a poll or a teardown.
Alerts about the bot itself (the database unwritable, Vast unreachable) cannot go through the
database, so they wait in a small bounded queue in memory and are delivered first.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Mapping
from typing import Any

from bot.clock import Clock
from bot.db.models import Event, Rental
from bot.db.store import Store
from bot.watch.events import Alerter, EventKind, Notifier

log = logging.getLogger(__name__)

# A delivery that takes longer than this (a hung connection) is abandoned and retried later.
DELIVERY_TIMEOUT = 30.0
# Undelivered events read per pass; a rental whose delivery fails waits, the others go on.
BATCH = 500
MAX_ALERTS = 50
RETRY_MIN, RETRY_MAX = 2.0, 120.0


class EventOutbox:
    """Appends events durably and delivers them in order through a background task."""

    def __init__(self, store: Store, clock: Clock, *, notifier: Notifier | None = None,
                 delivery_timeout: float = DELIVERY_TIMEOUT) -> None:
        self.store = store
        self.clock = clock
        self.notifier = notifier
        self.delivery_timeout = delivery_timeout
        self.alerts: deque[str] = deque(maxlen=MAX_ALERTS)
        self.delivered = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    # ------------------------------------------------------------------ writing
    async def append(self, rental: Rental | int, kind: EventKind | str, payload: Mapping[str, Any], *,
                     ts: float | None = None) -> Event:
        """Store one event (next sequence number of its rental) and wake the deliverer."""
        rental_id = rental if isinstance(rental, int) else rental.id
        event = await self.store.append_event(rental_id, kind=str(kind), payload=payload,
                                              ts=self.clock.now() if ts is None else ts)
        self.wake()
        return event

    def alert(self, text: str) -> None:
        """Queue an alert about the bot itself (kept in memory; the oldest drop when 50 wait)."""
        log.warning("alert: %s", text)
        self.alerts.append(text)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ delivering
    def start(self) -> None:
        """Start the deliverer task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-deliverer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # A notifier may swallow one cancellation (an HTTP client retrying): cancel until it ends.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        if not task.cancelled() and task.exception() is not None:
            log.error("the event deliverer ended with %r", task.exception())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                raise asyncio.CancelledError  # a cancellation a notifier swallowed still counts
            self._wake.clear()
            try:
                failed = await self.deliver_pending()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store failing: report and try again later
                log.exception("event delivery pass failed")
                failed = True
            if failed:
                self._failures += 1
                delay = min(RETRY_MAX, RETRY_MIN * 2 ** min(self._failures, 6)) * random.uniform(0.5, 1.0)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass
                # A new event is no reason to hammer a failing notifier: wait the backoff out.
                continue
            self._failures = 0
            await self._wake.wait()

    async def deliver_pending(self) -> bool:
        """Deliver queued alerts, then stored events in order. True if something failed (retry later)."""
        notifier = self.notifier
        if notifier is None:
            return False
        failed = False
        async with self._lock:
            while self.alerts and isinstance(notifier, Alerter):
                try:
                    await asyncio.wait_for(notifier.alert(self.alerts[0]), self.delivery_timeout)
                except Exception as exc:
                    log.warning("delivering an alert failed (%r); retrying later", exc)
                    failed = True
                    break
                self.alerts.popleft()
            blocked: set[int] = set()
            rentals: dict[int, Rental | None] = {}
            for event in await self.store.unposted_events(limit=BATCH):
                if event.rental_id in blocked:
                    continue
                if event.rental_id not in rentals:
                    rentals[event.rental_id] = await self.store.get_rental(event.rental_id)
                rental = rentals[event.rental_id]
                if rental is None:
                    continue
                try:
                    await asyncio.wait_for(notifier.notify(rental, event), self.delivery_timeout)
                except Exception as exc:  # retried at the next pass, in order
                    log.warning("delivering event %s of rental %s failed (%r); retrying later",
                                event.seq, rental.id, exc)
                    blocked.add(event.rental_id)
                    failed = True
                    continue
                await self.store.mark_posted([event.id], now=self.clock.now())
                self.delivered += 1
        return failed

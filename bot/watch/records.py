"""How the engine writes: events into the outbox (buffered while a watch is being stepped), state
transitions, and the watch's resume state, all tolerant of a failing database.

A write that fails is reported to :class:`Alarms` (one "database unwritable" alert, one recovery
note) and retried later; it never stops a safeguard from acting.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from bot.clock import Clock
from bot.db.models import Rental, RentalState
from bot.db.store import Store, StoreError
from bot.durations import format_duration
from bot.watch.events import EV_RECEIPT, EV_STATE, EventKind
from bot.watch.outbox import EventOutbox
from bot.watch.ssh import endpoint_for
from bot.watch.state import RentalWatch, WatchPolicy

log = logging.getLogger(__name__)

# What a failing database raises: locked, disk full, I/O error, closed.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, StoreError)
# Writes must succeed this long (clock time) before the database is said to be back: a nearly
# full disk fails some writes and not others, and must not post an alert and a recovery per poll.
STORE_RECOVERY_HOLD = 120.0


class Alarms:
    """Alerts about the bot's own footing: the database and Vast. Each is said once, then its recovery."""

    def __init__(self, outbox: EventOutbox, *, vast_alert_after: int = 3, vast_alert_after_s: float = 45.0) -> None:
        self.outbox = outbox
        self.vast_alert_after = vast_alert_after
        self.vast_alert_after_s = vast_alert_after_s
        self.vast_failing_since: float | None = None
        self.store_degraded: str | None = None
        self.store_ok_since: float | None = None
        self.vast_failures = 0
        self.vast_alerted = False
        self.vast_cause: str | None = None

    def store_failed(self, exc: BaseException) -> None:
        log.error("database write failed: %r", exc)
        self.store_ok_since = None
        if self.store_degraded is None:
            self.store_degraded = str(exc) or type(exc).__name__
            self.outbox.alert(
                f"⚠️ Database unwritable ({self.store_degraded}): safeguards degraded. The bot still "
                "stops spending (destroys go to Vast without waiting for the database), but posts and "
                "records are delayed. Free disk space or remove the lock on DATABASE_PATH.")

    def store_ok(self) -> None:
        if self.store_degraded is None:
            return
        now = self.outbox.clock.now()
        if self.store_ok_since is None:
            self.store_ok_since = now
        if now - self.store_ok_since >= STORE_RECOVERY_HOLD:
            self.store_degraded = self.store_ok_since = None
            self.outbox.alert("✅ Database writable again: records and posts are catching up.")

    def vast_failed(self, cause: str, *, since: float | None = None) -> None:
        """The instance list failed (the poll that asked began at ``since``).

        Said once, after ``vast_alert_after`` polls or as long in time: a failing list retries for up
        to a minute, so a long outage may span fewer polls than it should.
        """
        now = self.outbox.clock.now()
        self.vast_failures += 1
        self.vast_cause = cause
        if self.vast_failing_since is None:
            self.vast_failing_since = now if since is None else min(since, now)
        lasted = now - self.vast_failing_since
        if (self.vast_failures >= self.vast_alert_after or lasted >= self.vast_alert_after_s) \
                and not self.vast_alerted:
            self.vast_alerted = True
            self.outbox.alert(
                f"🚨 Vast's instance list has failed {self.vast_failures} polls in a row "
                f"({format_duration(lasted)}): {cause}. Running "
                "rentals are not being watched; deadlines and the dollar cap are applied from the last "
                "known state, and anything due is destroyed as soon as Vast answers. The bot keeps retrying.")

    def vast_ok(self) -> None:
        if self.vast_alerted:
            self.outbox.alert(f"✅ Vast answers again after {self.vast_failures} failed polls; watching resumed.")
        self.vast_failures, self.vast_alerted, self.vast_cause = 0, False, None
        self.vast_failing_since = None


class Recorder:
    """Writes events, transitions and watch state for the engine's collaborators."""

    def __init__(self, store: Store, clock: Clock, outbox: EventOutbox, policy: WatchPolicy, alarms: Alarms,
                 watches: Mapping[int, RentalWatch]) -> None:
        self.store = store
        self.clock = clock
        self.outbox = outbox
        self.policy = policy
        self.alarms = alarms
        self.watches = watches
        # Fields other collaborators add to a receipt (the lease: ``idle_s``).
        self.receipt_fields: list[Callable[[Rental], Mapping[str, Any]]] = []

    async def emit(self, rental: Rental, kind: EventKind, payload: Mapping[str, Any]) -> None:
        """Store an event before anyone sees it.

        While the rental's watch is being stepped, the event joins the watch's buffer and is written
        with the state that produced it (one transaction); otherwise it is written at once, and kept
        in the buffer for the next save if the database refuses it.
        """
        if kind == EV_RECEIPT:
            payload = {**payload, **{k: v for extra in self.receipt_fields for k, v in extra(rental).items()}}
        watch = self.watches.get(rental.id)
        if watch is not None and watch.lock.locked():
            watch.buffer.append((str(kind), dict(payload), self.clock.now()))
            return
        try:
            await self.outbox.append(rental, kind, payload)
        except STORE_ERRORS as exc:
            self.alarms.store_failed(exc)
            if watch is not None:
                watch.buffer.append((str(kind), dict(payload), self.clock.now()))

    async def transition(self, watch: RentalWatch, to: RentalState, *, reason: str) -> bool:
        """Move the rental (with its buffered events and state first); False if not recorded."""
        before = watch.rental.state
        if before == to:
            return True
        if not await self.save(watch):
            return False
        now = self.clock.now()
        try:
            async with self.store.transaction():
                moved = await self.store.transition_rental(watch.rental.id, to=to, now=now, reason=reason)
                if moved is not None:
                    await self.store.append_event(watch.rental.id, kind=EV_STATE, ts=now,
                                                  payload={"from": before.value, "to": to.value, "reason": reason})
        except STORE_ERRORS as exc:
            self.alarms.store_failed(exc)
            return False
        self.outbox.wake()
        if moved is not None:
            watch.rental = moved
        return moved is not None

    async def update_rental(self, watch: RentalWatch, **fields: Any) -> bool:
        try:
            watch.rental = await self.store.update_rental(watch.rental.id, now=self.clock.now(), **fields)
        except STORE_ERRORS as exc:
            self.alarms.store_failed(exc)
            return False
        return True

    async def save(self, watch: RentalWatch) -> bool:
        """Write buffered events and the state that produced them in one transaction."""
        endpoint = endpoint_for(watch.instance) if watch.instance is not None else None
        buffered, watch.buffer = watch.buffer, []
        # The assembler may hold a partial last line: resume from its first byte after a restart.
        offset = watch.replay_to or max(0, watch.log_offset - watch.assembler.pending_bytes)
        try:
            async with self.store.transaction():
                for kind, payload, ts in buffered:
                    await self.store.append_event(watch.rental.id, kind=kind, payload=payload, ts=ts)
                await self.store.save_watch_state(
                    watch.rental.id, log_offset=offset, log_path=self.policy.log_path,
                    host_key=watch.host_key,
                    ssh_endpoint=f"{endpoint.host}:{endpoint.port}" if endpoint else None,
                    data=watch.memory.to_json(), now=self.clock.now(),
                )
        except STORE_ERRORS as exc:
            watch.buffer[:0] = buffered  # nothing is lost: written with the next save
            self.alarms.store_failed(exc)
            return False
        if buffered:
            self.outbox.wake()
        self.alarms.store_ok()
        return True

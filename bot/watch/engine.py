"""The provision watch engine: one poll loop over every live rental.

Each poll lists the account's instances once (one paginated call per 25 instances), then steps
every rental: billing and the money rules, instance milestones, log collection, and the teardown
a conclusive finding calls for. The work is done by collaborators, each below this one:
``LogCollector`` (collect) → ``Findings`` → ``Teardown`` → ``Recorder``/``EventOutbox``, with the
money rules as pure functions (money) and ``Reconciler`` for labels and orphans. The engine knows
nothing about Discord and never waits for it: events go to the outbox, delivered by its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from bot.clock import Clock
from bot.db.models import Event, Rental, RentalState
from bot.db.store import Store
from bot.durations import format_duration
from bot.vast.client import VastClient
from bot.vast.errors import VastAuthError, VastError, VastResponseError
from bot.vast.models import Instance
from bot.watch.classifier import Classifier, load_rules
from bot.watch.collect import LogCollector
from bot.watch.events import (
    EV_APPROVAL,
    EV_COST,
    EV_DECISION,
    EV_FINDING,
    EV_INFO,
    EV_LOG_ROTATED,
    EV_MILESTONE,
    EV_NOISE,
    EV_PROPOSAL,
    EV_RECEIPT,
    EV_STATE,
    EV_VERDICT,
    EventKind,
    Notifier,
)
from bot.watch.findings import Findings
from bot.watch.lease import LeaseKeeper
from bot.watch.outbox import EventOutbox
from bot.watch.reconcile import LABEL_PREFIX, Reconciler
from bot.watch.records import Alarms, Recorder
from bot.watch.redact import Redactor
from bot.watch.state import RentalWatch, SshConnector, WatchMemory, WatchPolicy
from bot.watch.step import WATCHED_STATES, RentalStep
from bot.watch.teardown import Teardown
from bot.watch.views import WatchViews

log = logging.getLogger(__name__)

# Re-exported: the rent service, the cogs and the demo import these from here.
__all__ = [
    "EV_APPROVAL", "EV_COST", "EV_DECISION", "EV_FINDING", "EV_INFO", "EV_LOG_ROTATED", "EV_MILESTONE",
    "EV_NOISE", "EV_PROPOSAL", "EV_RECEIPT", "EV_STATE", "EV_VERDICT", "LABEL_PREFIX", "WATCHED_STATES",
    "Notifier", "RentalWatch", "SshConnector", "WatchEngine", "WatchMemory", "WatchPolicy",
]

IDLE_LIST_EVERY = 4
# Container-log reads (two API calls each) allowed in one poll across every rental.
FALLBACK_PER_POLL = 10


def describe_vast_failure(exc: VastError) -> str:
    """Say why the instance list failed, in words that tell an operator what to do."""
    if isinstance(exc, VastAuthError):
        return (f"Vast refused the API key ({exc}); it may have been revoked: set a valid VAST_API_KEY and "
                "restart the bot")
    if isinstance(exc, VastResponseError):
        return f"Vast answered with malformed data ({exc}); Vast's API may be having trouble"
    return f"Vast is unreachable or failing ({exc})"


class WatchEngine:
    """Watches every live rental; records events; decides and carries out teardowns."""

    def __init__(
        self,
        *,
        store: Store,
        vast: VastClient,
        clock: Clock,
        policy: WatchPolicy,
        redactor: Redactor | None = None,
        classifier: Classifier | None = None,
        ssh_connect: SshConnector | None = None,
        notifier: Notifier | None = None,
        outbox: EventOutbox | None = None,
    ) -> None:
        self.store = store
        self.vast = vast
        self.clock = clock
        self.policy = policy
        self.redactor = redactor or Redactor({})
        self.classifier = classifier or Classifier(load_rules())
        if ssh_connect is None:
            from bot.watch.ssh import SshLogSession

            ssh_connect = SshLogSession.connect
        self.outbox = outbox or EventOutbox(store, clock)
        if notifier is not None:
            self.outbox.notifier = notifier
        self.watches: dict[int, RentalWatch] = {}
        # Rentals whose create call is in flight in this process (the rent service keeps this):
        # their instance id is not known yet, and their label must not be taken for missing.
        self.creating: set[int] = set()
        self.alarms = Alarms(self.outbox, vast_alert_after_s=3 * policy.poll_interval)
        self.recorder = Recorder(store, clock, self.outbox, policy, self.alarms, self.watches)
        self.teardown = Teardown(store=store, vast=vast, clock=clock, policy=policy, redactor=self.redactor,
                                 recorder=self.recorder, watches=self.watches, creating=self.creating,
                                 close_session=self._close_session)
        self.findings = Findings(clock=clock, redactor=self.redactor, recorder=self.recorder, teardown=self.teardown)
        self.collector = LogCollector(vast=vast, clock=clock, policy=policy, redactor=self.redactor,
                                      recorder=self.recorder, findings=self.findings, ssh_connect=ssh_connect)
        self.reconciler = Reconciler(store=store, vast=vast, clock=clock, policy=policy, recorder=self.recorder,
                                     creating=self.creating, destroy_sent=self.teardown.destroy_sent)
        self.lease = LeaseKeeper(store=store, clock=clock, recorder=self.recorder, teardown=self.teardown,
                                 watches=self.watches)
        self.stepper = RentalStep(store=store, vast=vast, clock=clock, policy=policy, recorder=self.recorder,
                                  alarms=self.alarms, findings=self.findings, collector=self.collector,
                                  teardown=self.teardown, reconciler=self.reconciler, lease=self.lease,
                                  watches=self.watches, close_session=self._close_session)
        self.on_destroyed = self.teardown.on_destroyed
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.last_tick_at: float | None = None
        # The account as the last successful list showed it (a read API serves /status from it).
        self.last_list: dict[int, Instance] = {}
        self.last_list_at: float | None = None
        self.views = WatchViews(self)

    @property
    def notifier(self) -> Notifier | None:
        return self.outbox.notifier

    @notifier.setter
    def notifier(self, value: Notifier | None) -> None:
        self.outbox.notifier = value

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Re-attach every live rental, start the poll loop and the event deliverer (idempotent)."""
        if self._task is None:
            await self.reattach()
            self._task = asyncio.create_task(self._loop(), name="watch-engine")
        self.outbox.start()

    async def reattach(self) -> int:
        for rental in await self.store.list_rentals(states=WATCHED_STATES, limit=10_000):
            await self.attach(rental)
        self.outbox.wake()
        return len(self.watches)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.outbox.stop()
        for watch in self.watches.values():
            await self._close_session(watch)

    async def attach(self, rental: Rental) -> RentalWatch:
        """Start (or resume) watching ``rental``."""
        if rental.id in self.watches:
            self.watches[rental.id].rental = rental
            return self.watches[rental.id]
        state = await self.store.get_watch_state(rental.id)
        memory = WatchMemory.from_json(state.data if state else None)
        watch = RentalWatch(rental, memory, log_offset=state.log_offset if state else 0,
                            host_key=state.host_key if state else None,
                            classifier=self.classifier, redactor=self.redactor)
        if watch.log_offset > 0:
            watch.replay_to, watch.log_offset = watch.log_offset, 0
        if rental.state == RentalState.FAILED and memory.decided and memory.decided_key \
                and self.teardown.action_for(watch, memory.decided_key) == "destroy" \
                and not await self.store.pending_approvals(rental_id=rental.id):
            # Decided to destroy, but the teardown was never recorded (the process died first).
            watch.destroy_reason = memory.decided
        self.watches[rental.id] = watch
        return watch

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a poll must never kill the loop: report and go on
                log.exception("watch poll failed; retrying at the next interval")
            await self.clock.sleep(self.policy.poll_interval)

    # ------------------------------------------------------------------ one poll
    async def tick(self) -> None:
        """One poll: expire proposals, list instances once, step every watch, sweep orphans."""
        self.ticks += 1
        await self.teardown.expire_due(self.destroy)
        # Idle, the account is still listed once a minute or so: the orphan sweep needs it.
        if self.watches or self.ticks % IDLE_LIST_EVERY == 1:
            instances, listed = await self._list()
            self.collector.fallback_budget = FALLBACK_PER_POLL
            # The dearest first: with many teardowns queued on Vast's rate limit, the most dollars stop first.
            watches = sorted(self.watches.values(), key=_rate, reverse=True)
            results = await asyncio.gather(*(self._step_safely(w, instances, listed) for w in watches),
                                           return_exceptions=True)
            for watch, result in zip(watches, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("watch of rental %s failed: %r", watch.rental.id, result)
            if listed and self.teardown.sent_since(self.last_list_at):
                # Destroys went out after the list: fresh lists confirm them now (not a poll later)
                # and keep the orphan sweep from taking them for orphans.
                for _ in range(self.policy.gone_after_absent):
                    confirming = [w for w in list(self.watches.values()) if w.destroy_reason is not None
                                  and w.memory.destroy_sent_at is not None]
                    if not confirming:
                        break
                    instances, listed = await self._list()
                    if not listed:
                        break
                    await asyncio.gather(*(self._confirm_safely(w, instances, listed) for w in confirming),
                                         return_exceptions=True)
            if listed:
                watched = {w.rental.instance_id for w in self.watches.values() if w.rental.instance_id} | {
                    w.instance.id for w in self.watches.values() if w.instance is not None}
                await self.reconciler.sweep_orphans(instances, watched)
        self.last_tick_at = self.clock.now()
        self.outbox.wake()

    async def _list(self) -> tuple[dict[int, Instance], bool]:
        asked = self.clock.now()
        listing = asyncio.create_task(self.vast.list_instances(), name="list-instances")
        # A list call retries for up to a minute: an outage can hide inside one slow call. Past the
        # alert time it counts as failing (and is said), whatever it answers in the end.
        timer = asyncio.create_task(self.clock.sleep(self.alarms.vast_alert_after_s))
        try:
            await asyncio.wait({listing, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not listing.done():
            self.alarms.vast_failed(f"Vast has not answered the instance list for "
                                    f"{format_duration(self.clock.now() - asked)} (still retrying)", since=asked)
        try:
            instances = {inst.id: inst for inst in await listing}
        except VastError as exc:
            log.warning("instance list failed: %s", exc)
            self.alarms.vast_failed(describe_vast_failure(exc), since=asked)
            return {}, False
        self.alarms.vast_ok()
        self.last_list, self.last_list_at = instances, self.clock.now()
        return instances, True

    async def _step_safely(self, watch: RentalWatch, instances: Mapping[int, Instance], listed: bool) -> None:
        async with watch.lock:
            try:
                await self.stepper.step(watch, instances, listed)
            finally:
                await self.recorder.save(watch)

    async def _confirm_safely(self, watch: RentalWatch, instances: Mapping[int, Instance], listed: bool) -> None:
        async with watch.lock:
            try:
                await self.teardown.follow_up(watch, instances.get(watch.rental.instance_id or -1), listed)
            finally:
                await self.recorder.save(watch)

    # ------------------------------------------------------------------ commands
    async def decline_teardown(self, rental_id: int, *, by: str) -> None:
        """A human kept the instance: remember the reason so the same finding does not re-propose."""
        watch = self.watches.get(rental_id)
        if watch is None:
            return
        async with watch.lock:
            if watch.memory.decided:
                watch.memory.declined.append(watch.memory.decided_key or watch.memory.decided)
                watch.memory.decided = watch.memory.decided_key = None
            await self.recorder.emit(watch.rental, EV_INFO, {"text": f"teardown declined by {by}; still watching"})
            await self.recorder.save(watch)

    async def destroy(self, rental_id: int, *, reason: str, by: str) -> bool:
        """Destroy a rental's instance now (a command, an approved proposal or an expiry).

        True once Vast's list confirms it gone; False while that is pending (the watch keeps at it).
        """
        rental = await self.store.get_rental(rental_id)
        if rental is None:
            return False
        watch = self.watches.get(rental_id) or await self.attach(rental)
        async with watch.lock:
            if watch.rental.state == RentalState.DESTROYED:
                return True
            await self.teardown.destroy_now(watch, reason=reason, by=by)
            ok = watch.confirmed_gone and await self.teardown.follow_up(watch, None, False)
            if not ok and watch.memory.destroy_sent_at is not None:
                ok = await self.teardown.confirm_now(watch)
            await self.recorder.save(watch)
        self.outbox.wake()
        return ok

    @contextlib.asynccontextmanager
    async def create_in_flight(self, rental: Rental) -> AsyncIterator[RentalWatch]:
        """Watch ``rental`` while the rent service's create call is in flight.

        Its instance id is not known yet and its label must not be taken for missing meanwhile; a
        teardown asked for meanwhile waits for Vast's answer.
        """
        self.creating.add(rental.id)
        try:
            yield await self.attach(rental)
        finally:
            self.creating.discard(rental.id)

    async def emit(self, rental: Rental, kind: EventKind | str, payload: dict[str, Any]) -> Event:
        """Store an event from outside the engine; the deliverer posts it."""
        return await self.outbox.append(rental, kind, payload)

    async def pump(self) -> bool:
        """Deliver what is pending now (tests and the demo; the deliverer task does it otherwise)."""
        return await self.outbox.deliver_pending()

    async def _close_session(self, watch: RentalWatch) -> None:
        await self.collector.close_session(watch)


def _rate(watch: RentalWatch) -> float:
    rental = watch.rental
    return rental.dph_total or rental.quoted_dph or 0.0


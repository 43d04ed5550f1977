"""One poll of one rental: its row, billing and the money rules, the instance's state, log
collection, deadlines, and the teardown under way. The engine runs it for every watch, in parallel."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

from bot.clock import Clock
from bot.db.models import ACTIVE_STATES, RentalState
from bot.db.store import Store
from bot.vast.client import VastClient
from bot.vast.errors import VastError
from bot.vast.models import Instance
from bot.watch.collect import LogCollector
from bot.watch.cost import crossed_steps, rental_cost
from bot.watch.events import EV_COST, EV_INFO
from bot.watch.findings import Findings
from bot.watch.lease import LeaseKeeper
from bot.watch.model import Category, Finding, Milestone, Severity
from bot.watch.money import billing_update, cap_finding, clock_skew, deadline_finding
from bot.watch.reconcile import Reconciler
from bot.watch.records import STORE_ERRORS, Alarms, Recorder
from bot.watch.state import RentalWatch, WatchPolicy
from bot.watch.teardown import Teardown

log = logging.getLogger(__name__)

# The engine keeps an eye on every rental that may be billing.
WATCHED_STATES = ACTIVE_STATES
COST_SAMPLE_EVERY = 60.0


class RentalStep:
    """Steps one watch per poll with the engine's collaborators."""

    def __init__(self, *, store: Store, vast: VastClient, clock: Clock, policy: WatchPolicy, recorder: Recorder,
                 alarms: Alarms, findings: Findings, collector: LogCollector, teardown: Teardown,
                 reconciler: Reconciler, lease: LeaseKeeper, watches: MutableMapping[int, RentalWatch],
                 close_session: Callable[[RentalWatch], Awaitable[None]]) -> None:
        self.store = store
        self.vast = vast
        self.clock = clock
        self.policy = policy
        self.recorder = recorder
        self.alarms = alarms
        self.findings = findings
        self.collector = collector
        self.teardown = teardown
        self.reconciler = reconciler
        self.lease = lease
        self.watches = watches
        self.close_session = close_session

    async def step(self, watch: RentalWatch, instances: Mapping[int, Instance], listed: bool) -> None:
        try:
            rental = await self.store.get_rental(watch.rental.id)
        except STORE_ERRORS as exc:
            self.alarms.store_failed(exc)
            rental = watch.rental  # the last known row: the safeguards go on from it
        if rental is None or (rental.state not in WATCHED_STATES and watch.destroy_reason is None):
            self.watches.pop(watch.rental.id, None)
            await self.close_session(watch)
            return
        watch.rental = rental
        now = self.clock.now()
        await self.teardown.retry_pending(watch, before_act=self.findings.update_verdict)
        tearing = rental.state == RentalState.TEARING_DOWN or watch.destroy_reason is not None
        if rental.instance_id is None:
            if tearing:
                await self.teardown.follow_up(watch, None, listed)
                return
            if not await self.reconciler.adopt_by_label(watch, instances, listed, now):
                return
            rental = watch.rental
        inst = instances.get(rental.instance_id or -1) if listed else None
        if tearing:
            await self.teardown.follow_up(watch, inst, listed)
            return
        if listed:
            if inst is None:
                # Gone only when the list misses it twice in a row: one odd answer proves nothing.
                watch.memory.absent_lists += 1
                if watch.memory.absent_lists < self.policy.gone_after_absent:
                    return
                inst = await self._look_up(watch)
                if inst is None:
                    return
            watch.memory.absent_lists = 0
            watch.instance = inst
        status = (inst.actual_status or "").lower() if inst is not None else None
        await self._money(watch, inst, status, now)
        if watch.memory.decided or watch.destroy_reason is not None or inst is None:
            if not listed and not watch.memory.decided and watch.destroy_reason is None:
                await self._deadlines(watch, now)  # Vast unreachable: the clock still runs
            return
        await self._instance(watch, inst, status or "", now)
        if not watch.memory.decided and watch.destroy_reason is None:
            await self._deadlines(watch, now)

    async def _look_up(self, watch: RentalWatch) -> Instance | None:
        """The list missed the instance again: ask for it directly before calling it gone.

        Returns the instance if Vast still has it alive; None after finishing the rental (Vast says
        it is gone) or when the look-up fails (not knowing is not an answer).
        """
        instance_id = watch.rental.instance_id or -1
        try:
            inst = await self.vast.get_instance(instance_id)
        except VastError as exc:
            log.warning("rental %s: instance %s missing from the list and its look-up failed: %s",
                        watch.rental.id, instance_id, exc)
            return None
        if inst is not None and (inst.cur_state or "").lower() != "unloaded":
            return inst
        await self.teardown.finish(watch, reason=watch.memory.decided or "instance disappeared from the account",
                                   by="vast")
        return None

    async def _instance(self, watch: RentalWatch, inst: Instance, status: str, now: float) -> None:
        skew = clock_skew(watch.rental, inst)
        if skew is not None and not watch.memory.skew_warned:
            watch.memory.skew_warned = True
            await self.recorder.emit(watch.rental, EV_INFO, {"text": (
                f"Vast's clock differs from the bot's by {skew:+.0f}s for this instance; deadlines and "
                "cost use the bot's own clock")})
        await self.findings.milestone(watch, Milestone.INSTANCE_CREATED, {"instance_id": inst.id})
        if status not in ("offline", "unknown"):
            watch.memory.host_lost_since = None
        if status == "running":
            await self.findings.milestone(watch, Milestone.CONTAINER_RUNNING, {"status_msg": inst.status_msg})
            await self.collector.collect(watch, inst, now)
        elif status in ("exited", "offline", "unknown") and watch.reached(Milestone.CONTAINER_RUNNING):
            # A missed host heartbeat (unknown) or a host reconnecting (offline, billed nothing) is
            # often over by the next poll: only an exited container is conclusive at once.
            if status != "exited" and watch.memory.host_lost_since is None:
                watch.memory.host_lost_since = now
            lost = watch.memory.host_lost_since
            if lost is None or now - lost >= self.policy.host_lost_grace:
                await self.findings.finding(watch, Finding(
                    Category.CONFIG, Severity.FATAL,
                    f"instance status is {status!r}: {inst.status_msg or 'no message'}",
                    "The container stopped. Destroy it and rent again (another host if it repeats).",
                    stops_run=True, rule="engine.container_stopped"))
        await self.lease.step(watch, inst, now)

    async def _money(self, watch: RentalWatch, inst: Instance | None, status: str | None, now: float) -> None:
        """Billing columns, cost posts and samples, then the dollar cap: the cap never waits on a write."""
        changes = billing_update(watch.rental, inst, status, now)
        if changes:
            await self.recorder.update_rental(watch, **changes)
        rental = watch.rental
        cost = rental_cost(rental, now)
        dph = rental.dph_total if rental.dph_total is not None else rental.quoted_dph
        if not watch.memory.decided and watch.destroy_reason is None:
            finding = cap_finding(cost, self.policy, watch.memory)
            if finding is not None:
                await self.findings.finding(watch, finding)
        start = rental.started_at if rental.started_at is not None else rental.created_at
        steps = crossed_steps(watch.memory.cost_reported, cost, self.policy.cost_step)
        for step in steps:
            await self.recorder.emit(rental, EV_COST, {"cost_usd": round(cost, 4), "step": step, "dph": dph,
                                                       "elapsed_s": round(now - start, 1)})
        watch.memory.cost_reported = max(watch.memory.cost_reported, cost)
        # A sample a minute (and at each step) is plenty for a history; not one per poll per rental.
        if steps or watch.memory.last_sample is None or now - watch.memory.last_sample >= COST_SAMPLE_EVERY:
            try:
                await self.store.add_cost_sample(rental.id, ts=now, dph=dph or 0.0, cost_usd=cost)
                watch.memory.last_sample = now
            except STORE_ERRORS as exc:
                self.alarms.store_failed(exc)

    async def _deadlines(self, watch: RentalWatch, now: float) -> None:
        missed = deadline_finding(watch.rental, watch.memory, self.policy, now, last_read=watch.last_read)
        if missed is not None:
            finding, name = missed
            await self.findings.finding(watch, finding, extra={"deadline": name})

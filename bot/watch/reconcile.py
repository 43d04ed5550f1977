"""Reconciling the database with Vast's account: a rental without an instance id is matched by its
label (adopted or, after a grace, closed), and an instance that carries the label of a closed
rental of ours is destroyed (an orphan). Nothing without our label is ever touched."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.clock import Clock
from bot.db.models import RentalState
from bot.db.store import Store
from bot.durations import format_duration
from bot.vast.client import VastClient
from bot.vast.errors import VastError
from bot.vast.models import Instance
from bot.watch.cost import CostMeter
from bot.watch.events import EV_FINDING
from bot.watch.model import Category, Severity
from bot.watch.records import STORE_ERRORS, Recorder
from bot.watch.state import RentalWatch, WatchPolicy

log = logging.getLogger(__name__)

LABEL_PREFIX = "vastops-"  # every rental label starts with it (bot.rentals)
# Closed rentals whose instance, if Vast still lists it, is an orphan to destroy.
ORPHANING_STATES = frozenset({RentalState.CREATE_FAILED, RentalState.DESTROYED, RentalState.DENIED,
                              RentalState.EXPIRED})
# An instance we sent a destroy for is its rental's business for this long (Vast's list lags a
# destroy); only if it is still listed after that is it an orphan.
DESTROY_SETTLE = 300.0


class Reconciler:
    """Label adoption and the orphan sweep."""

    def __init__(self, *, store: Store, vast: VastClient, clock: Clock, policy: WatchPolicy, recorder: Recorder,
                 creating: set[int], destroy_sent: dict[int, float]) -> None:
        self.store = store
        self.vast = vast
        self.clock = clock
        self.policy = policy
        self.rec = recorder
        self.creating = creating
        self.destroy_sent = destroy_sent

    async def adopt_by_label(self, watch: RentalWatch, instances: Mapping[int, Instance], listed: bool,
                             now: float) -> bool:
        """A rental without an instance id (a crash or a lost answer during the create): look for the
        instance carrying its label, which bills whether or not the database knows its id.

        True once the instance is adopted (the step goes on with it).
        """
        rental = watch.rental
        if rental.id in self.creating or not listed:
            return False  # the rent service is still waiting for Vast's answer, or Vast can't be asked
        found = next((i for i in instances.values() if i.label == rental.label), None)
        if found is None:
            if watch.memory.label_missing_since is None:
                watch.memory.label_missing_since = now
            elif now - watch.memory.label_missing_since >= self.policy.create_reconcile_grace:
                await self.rec.transition(watch, RentalState.CREATE_FAILED, reason=(
                    f"no instance carries the label {rental.label} "
                    f"{format_duration(now - watch.memory.label_missing_since)} after the create; nothing was rented"))
            return False
        watch.memory.label_missing_since = None
        log.warning("rental %s: instance %s found by its label %s; watching it", rental.id, found.id, rental.label)
        # Elapsed time runs on the bot's clock: the create was sent at most a little before now.
        started = rental.started_at if rental.started_at is not None else now
        if not await self.rec.update_rental(watch, instance_id=found.id, started_at=started,
                                            dph_total=found.dph_total if found.dph_total is not None
                                            else rental.quoted_dph):
            return False
        if rental.state == RentalState.CREATING:
            await self.rec.transition(watch, RentalState.PROVISIONING,
                                      reason=f"instance {found.id} found by its label {rental.label}")
        return True

    async def sweep_orphans(self, instances: Mapping[int, Instance], watched: set[int]) -> None:
        """Destroy instances that carry the label of one of our rentals that is over.

        A create whose answer was lost and whose label Vast listed only later, or a destroy Vast
        undid: the rental is closed (create_failed, destroyed, ...) yet the instance bills. It is
        ours by its label, and nobody wants it. Instances with no rental of ours are left alone
        (they are listed as unknown in /status).
        """
        now = self.clock.now()
        for inst in instances.values():
            if inst.id in watched or not inst.label or not inst.label.startswith(LABEL_PREFIX):
                continue
            if (inst.cur_state or "").lower() == "unloaded":
                continue  # destroyed: Vast still shows it for a moment
            sent = self.destroy_sent.get(inst.id)
            if sent is not None and now - sent < DESTROY_SETTLE:
                continue  # our own teardown of it is still settling: not an orphan
            try:
                rental = await self.store.get_rental_by_label(inst.label)
            except STORE_ERRORS as exc:
                self.rec.alarms.store_failed(exc)
                return
            if rental is None or rental.state not in ORPHANING_STATES:
                continue
            try:
                await self.vast.destroy_instance(inst.id, confirm=False)
            except VastError as exc:
                log.warning("orphan instance %s (rental %s) not destroyed yet: %s", inst.id, rental.id, exc)
                continue
            self.destroy_sent[inst.id] = now
            since = rental.ended_at if rental.ended_at is not None else now
            cost = CostMeter(inst.dph_total or 0.0, since).cost_at(now)
            await self.rec.emit(rental, EV_FINDING, {
                "line": None, "category": Category.UNKNOWN.value, "severity": Severity.ERROR.value,
                "text": f"instance {inst.id} carries this rental's label but the rental is {rental.state.value}; "
                        f"it was billing (at least ${cost:.2f} since the rental closed) and a destroy was sent",
                "advice": "Nothing to do; the bot destroys instances it rented but no longer watches.",
                "stops_run": False, "rule": "engine.orphan_destroyed",
            })
        for iid, sent in list(self.destroy_sent.items()):
            if now - sent > 4 * DESTROY_SETTLE and iid not in instances:
                del self.destroy_sent[iid]

"""Teardown: decide, propose, destroy, confirm by Vast's list, finish with a receipt, expire proposals.

Two rules carry the money here. A decision counts only once it is recorded (an unrecorded one is
retried every poll), yet the destroy call to Vast never waits for the database. And an instance is
gone only when the account's list no longer shows it (twice in a row) or shows it unloaded: a 404
alone proves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bot.clock import Clock
from bot.db.models import TERMINAL_STATES, Approval, ApprovalKind, ApprovalStatus, Rental, RentalState
from bot.db.store import Store
from bot.vast.client import VastClient
from bot.vast.errors import VastError
from bot.vast.models import Instance
from bot.watch.cost import rental_cost
from bot.watch.events import EV_APPROVAL, EV_DECISION, EV_FINDING, EV_INFO, EV_PROPOSAL, EV_RECEIPT
from bot.watch.model import Category, Finding, Milestone, Severity, Verdict
from bot.watch.money import billing_update
from bot.watch.records import STORE_ERRORS, Recorder
from bot.watch.redact import Redactor
from bot.watch.state import RentalWatch, WatchPolicy

log = logging.getLogger(__name__)

DESTROY_ALERT_AFTER = 3
# Vast still listing an instance this long after it accepted a destroy: send the destroy again.
DESTROY_RESEND_AFTER = 30.0


def progress(rental: Rental, now: float) -> dict[str, float]:
    """Elapsed time (bot's clock) and cost so far, attached to milestones, verdicts and decisions."""
    start = rental.started_at if rental.started_at is not None else rental.created_at
    return {"elapsed_s": round(now - start, 1), "cost_usd": round(rental_cost(rental, now), 4)}


def is_gone(inst: Instance | None) -> bool:
    """Vast shows the instance as unloaded (destroyed) or not at all."""
    return inst is None or (inst.cur_state or "").lower() == "unloaded"


class Teardown:
    """Decides and carries out teardowns for the engine."""

    def __init__(self, *, store: Store, vast: VastClient, clock: Clock, policy: WatchPolicy, redactor: Redactor,
                 recorder: Recorder, watches: MutableMapping[int, RentalWatch],
                 creating: set[int], close_session: Callable[[RentalWatch], Awaitable[None]]) -> None:
        self.store = store
        self.vast = vast
        self.clock = clock
        self.policy = policy
        self.redactor = redactor
        self.rec = recorder
        self.watches = watches
        self.creating = creating
        self.close_session = close_session
        self.on_destroyed: list[Callable[[Rental], Awaitable[None]]] = []
        # Instances a destroy was sent for, and when: the orphan sweep leaves them to their rental.
        self.destroy_sent: dict[int, float] = {}

    def sent_since(self, since: float | None) -> bool:
        """Was a destroy sent at or after ``since`` (None: ever)?"""
        return any(since is None or sent >= since for sent in self.destroy_sent.values())

    # ------------------------------------------------------------------ decide
    def action_for(self, watch: RentalWatch, key: str) -> str:
        """destroy for a conclusive failure; propose when the policy says so or the case is ambiguous
        (a working ComfyUI that reached the dollar cap may be in use)."""
        if self.policy.teardown_policy != "destroy":
            return "propose"
        if key.startswith("engine.dollar_cap") and watch.reached(Milestone.COMFYUI_READY):
            return "propose"
        return "destroy"

    async def decide(self, watch: RentalWatch, *, reason: str, finding: Finding, key: str,
                     before_act: Callable[[RentalWatch], Awaitable[None]] | None = None) -> None:
        """Record a teardown decision, then act on it. Unrecorded, it is retried next poll.

        ``before_act`` runs between the two (the verdict is said before the teardown starts).
        """
        if watch.rental.state in TERMINAL_STATES:
            # Closed meanwhile (a /destroy raced this poll): deciding now would reopen it as failed.
            watch.pending_decision = None
            return
        if watch.memory.decided or key in watch.memory.declined:
            return
        now = self.clock.now()
        action = self.action_for(watch, key)
        text = self.redactor.redact(finding.text)
        evidence = {"category": finding.category.value, "severity": finding.severity.value,
                    "line": finding.line, "text": text, "advice": finding.advice}
        recorded = await self.rec.transition(watch, RentalState.FAILED, reason=f"{reason}: {text[:200]}")
        if recorded:
            watch.memory.decided, watch.memory.decided_key = reason, key
            watch.pending_decision = None
            await self.rec.emit(watch.rental, EV_DECISION, {
                "action": action, "reason": reason, "evidence": evidence, **progress(watch.rental, now)})
        else:
            watch.pending_decision = (reason, key, finding)
        if before_act is not None:
            await before_act(watch)
        if action == "destroy":
            await self.destroy_now(watch, reason=reason, by="engine")
        elif recorded:
            try:
                approval = await self.store.create_approval(
                    kind=ApprovalKind.TEARDOWN, requester_id=0, rental_id=watch.rental.id,
                    payload={"reason": reason, "evidence": evidence}, now=now,
                    expires_at=now + self.policy.proposal_timeout, default_action="destroy",
                )
            except STORE_ERRORS as exc:
                self.rec.alarms.store_failed(exc)
                watch.memory.decided = watch.memory.decided_key = None
                watch.pending_decision = (reason, key, finding)
                return
            await self.rec.emit(watch.rental, EV_PROPOSAL, {
                "approval_id": approval.id, "reason": reason, "evidence": evidence,
                "expires_at": approval.expires_at, "default_action": "destroy",
            })

    async def retry_pending(self, watch: RentalWatch,
                            before_act: Callable[[RentalWatch], Awaitable[None]] | None = None) -> None:
        """Record a decision the database refused before (the destroy was sent all the same)."""
        if watch.pending_decision is not None and not watch.memory.decided:
            reason, key, finding = watch.pending_decision
            await self.decide(watch, reason=reason, finding=finding, key=key, before_act=before_act)

    # ------------------------------------------------------------------ destroy
    async def destroy_now(self, watch: RentalWatch, *, reason: str, by: str) -> None:
        """Send the destroy to Vast (recording the teardown first if the database lets us)."""
        watch.destroy_reason, watch.destroy_by = reason, by
        if watch.rental.state != RentalState.TEARING_DOWN:
            await self.rec.transition(watch, RentalState.TEARING_DOWN, reason=reason)
        rental = watch.rental
        if rental.instance_id is None and rental.id in self.creating:
            # The rent service destroys the instance as soon as Vast answers the create.
            await self.rec.emit(rental, EV_INFO, {"text": "the instance is still being created; "
                                                          "it will be destroyed as soon as Vast answers"})
            return
        instance_id = rental.instance_id
        if instance_id is None:
            # No id recorded does not mean nothing was rented: ask Vast for the rental's label.
            try:
                found = await self.vast.find_by_label(rental.label)
            except VastError as exc:
                await self.rec.emit(rental, EV_INFO, {"text": f"could not look for the instance yet ({exc}); "
                                                              "retrying"})
                return
            if found is None:
                watch.confirmed_gone = True
                return
            instance_id = found.id
            await self.rec.update_rental(watch, instance_id=found.id, started_at=rental.started_at or self.clock.now())
        try:
            await self.vast.destroy_instance(instance_id, confirm=False)
        except VastError as exc:
            log.warning("destroy of instance %s failed: %s (retrying next poll)", instance_id, exc)
            await self._not_confirmed(watch, instance_id, str(exc))
            return
        now = self.clock.now()
        if watch.memory.destroy_sent_at is None:
            watch.memory.destroy_sent_at = now
        watch.destroy_resent_at = now
        self.destroy_sent[instance_id] = now

    async def follow_up(self, watch: RentalWatch, inst: Instance | None, listed: bool) -> bool:
        """A rental being torn down, at a poll: confirm from the list, resend, finish. True once finished."""
        if watch.confirmed_gone:
            return await self.finish(watch, reason=watch.destroy_reason or watch.rental.state_reason or "teardown",
                                     by=watch.destroy_by or "engine")
        if watch.memory.destroy_sent_at is None or watch.rental.instance_id is None:
            await self.destroy_now(watch, reason=watch.destroy_reason or watch.rental.state_reason or "teardown",
                                   by=watch.destroy_by or "engine (retry)")
            return watch.confirmed_gone and await self.follow_up(watch, None, False)
        if not listed:
            return False  # Vast cannot be asked this poll: the destroy stands, confirm later
        if is_gone(inst):
            watch.memory.absent_lists += 1
            if inst is not None or watch.memory.absent_lists >= self.policy.gone_after_absent:
                watch.confirmed_gone = True
                return await self.follow_up(watch, inst, listed)
            return False
        watch.memory.absent_lists = 0
        if self.clock.now() - (watch.destroy_resent_at or 0.0) >= DESTROY_RESEND_AFTER:
            await self._not_confirmed(watch, watch.rental.instance_id, "Vast still lists the instance")
            await self.destroy_now(watch, reason=watch.destroy_reason or watch.rental.state_reason or "teardown",
                                   by=watch.destroy_by or "engine (retry)")
        return False

    async def confirm_now(self, watch: RentalWatch) -> bool:
        """Confirm a destroy at once with two fresh lists of the account (a command waits for it)."""
        for _ in range(self.policy.gone_after_absent):
            try:
                listed = {i.id: i for i in await self.vast.list_instances()}
            except VastError:
                return False
            inst = listed.get(watch.rental.instance_id or -1)
            if await self.follow_up(watch, inst, True):
                return True
            if inst is not None and not is_gone(inst):
                return False
        return False

    async def _not_confirmed(self, watch: RentalWatch, instance_id: int | None, problem: str) -> None:
        """Retry next poll; tell people once that it is retrying and, after a few failures, once
        more that the instance may still be billing. A long Vast outage is not a post per poll."""
        watch.memory.destroy_failures += 1
        log.warning("rental %s: destroy of instance %s not confirmed (%d): %s", watch.rental.id, instance_id,
                    watch.memory.destroy_failures, problem)
        if watch.memory.destroy_failures == 1:
            await self.rec.emit(watch.rental, EV_INFO, {"text": f"destroy not confirmed yet ({problem}); retrying"})
        if watch.memory.destroy_failures == DESTROY_ALERT_AFTER:
            await self.rec.emit(watch.rental, EV_FINDING, {
                "line": None, "category": Category.UNKNOWN.value, "severity": Severity.ERROR.value,
                "text": f"Vast has not confirmed that instance {instance_id} is destroyed after "
                        f"{DESTROY_ALERT_AFTER} attempts: {problem}",
                "advice": "It may still be billing. Destroy it in the Vast console (Instances) now; "
                          "the bot keeps retrying every poll.",
                "stops_run": False, "rule": "engine.destroy_unconfirmed",
            })

    # ------------------------------------------------------------------ finish
    async def finish(self, watch: RentalWatch, *, reason: str, by: str) -> bool:
        """Close the rental: billing stops where Vast accepted the destroy; receipt; host outcome."""
        if watch.rental.state == RentalState.DESTROYED:
            # Finished already: a /destroy and a poll's confirmation raced for the same watch.
            # One receipt, one host outcome, one call of the hooks.
            self.watches.pop(watch.rental.id, None)
            return True
        now = self.clock.now()
        end = min(now, watch.memory.destroy_sent_at or now)
        rental = watch.rental
        changes = billing_update(rental, None, "destroyed", end)
        if not await self.rec.update_rental(watch, ended_at=end, **changes):
            return False
        if not await self.rec.transition(watch, RentalState.DESTROYED, reason=reason):
            return False
        rental = watch.rental
        cost = rental_cost(rental, now)
        try:
            await self._close_records(watch, rental, reason=reason, now=now)
        except STORE_ERRORS as exc:  # the rental is closed; the host history can miss one row
            self.rec.alarms.store_failed(exc)
        start = rental.started_at if rental.started_at is not None else rental.created_at
        await self.rec.emit(rental, EV_RECEIPT, {
            "duration_s": round(end - start, 1), "cost_usd": round(cost, 4), "reason": reason, "by": by,
            "dph": rental.dph_total if rental.dph_total is not None else rental.quoted_dph,
            "milestones": [name for name in (m.value for m in Milestone) if name in watch.memory.milestones],
            "verdict": watch.memory.verdict,
        })
        await self.close_session(watch)
        self.watches.pop(rental.id, None)
        for hook in self.on_destroyed:
            try:
                await hook(rental)
            except Exception:  # a consumer's failure must not stop the engine's own work
                log.exception("on_destroyed hook failed for rental %s", rental.id)
        return True

    async def _close_records(self, watch: RentalWatch, rental: Rental, *, reason: str, now: float) -> None:
        # A teardown proposal still open has nothing left to decide: close it so its buttons say so.
        for approval in await self.store.pending_approvals(rental_id=rental.id):
            if await self.store.decide_approval(approval.id, status=ApprovalStatus.CANCELLED, by_id=0,
                                                by_name="vastops", now=now, note="rental already destroyed"):
                await self.rec.emit(rental, EV_APPROVAL, {"approval_id": approval.id,
                                                          "kind": approval.kind.value, "status": "cancelled"})
        # Only the engine's own verdict blames the machine: a user's /destroy says nothing about it.
        failed = watch.memory.decided_key is not None and watch.memory.verdict != Verdict.READY.value
        if rental.machine_id is not None:
            await self.store.record_host_outcome(
                machine_id=rental.machine_id, host_id=rental.host_id, geolocation=rental.geolocation,
                outcome="failed" if failed else "ok", reason=reason, now=now,
            )

    # ------------------------------------------------------------------ proposals that expire
    async def expire_due(self, destroy: Callable[..., Awaitable[bool]]) -> None:
        now = self.clock.now()
        try:
            due = await self.store.expire_due_approvals(now)
        except STORE_ERRORS as exc:
            self.rec.alarms.store_failed(exc)
            return
        self.rec.alarms.store_ok()  # a write every poll: the database's recovery is seen with no rental left
        for approval in due:
            # They are marked expired already: one failing must not cost the others their default action.
            try:
                await self._expired(approval, now, destroy)
            except Exception:
                log.exception("the default action of approval %s failed", approval.id)

    async def _expired(self, approval: Approval, now: float, destroy: Callable[..., Awaitable[bool]]) -> None:
        if approval.rental_id is None:
            return
        rental = await self.store.get_rental(approval.rental_id)
        if rental is None:
            return
        payload: dict[str, Any] = {"approval_id": approval.id, "kind": approval.kind.value, "status": "expired",
                                   "default_action": approval.default_action}
        await self.rec.emit(rental, EV_APPROVAL, payload)
        if approval.kind == ApprovalKind.TEARDOWN and approval.default_action == "destroy":
            await destroy(rental.id, reason=f"{approval.payload.get('reason', 'teardown')} "
                          "(nobody answered the proposal)", by="default action on expiry")
        elif approval.kind == ApprovalKind.RENT:
            await self.store.transition_rental(rental.id, to=RentalState.EXPIRED, now=now,
                                               expected=[RentalState.AWAITING_APPROVAL], reason="approval expired")

"""Rent, approve and destroy: the business rules behind /rent, the approval buttons and /destroy.

No Discord in here: the cogs and the demo both call ``RentalService``. Authorization facts that
only Discord knows (does the clicker hold the approver role?) come in as plain booleans.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from bot.clock import Clock
from bot.db.guardrails import failing_machines
from bot.db.models import Approval, ApprovalKind, ApprovalStatus, Rental, RentalState
from bot.db.store import Store
from bot.provisioning.checklist import preflight_payload, run_preflight
from bot.settings import Settings
from bot.vast.client import Priority, VastClient, VastCreateOutcomeUnknown
from bot.vast.errors import VastError, VastUnavailableOffer
from bot.vast.models import Instance, Offer, OfferQuery
from bot.watch.engine import WatchEngine
from bot.watch.events import EV_APPROVAL, EV_INFO, EV_STATE
from bot.watch.reconcile import LABEL_PREFIX

log = logging.getLogger(__name__)

Preflight = Callable[[Settings], Awaitable[Any]]


class _RolledBack(Exception):
    """Raised inside a store transaction to undo it."""


class DecisionResult(StrEnum):
    """What happened to a click on an approval button (the cog turns it into words)."""

    APPROVED = "approved"
    DENIED = "denied"
    ALREADY_DECIDED = "already_decided"
    EXPIRED = "expired"
    NOT_ALLOWED = "not_allowed"
    SELF_APPROVAL_TOO_DEAR = "self_approval_too_dear"
    REQUOTED = "requoted"
    OFFER_GONE = "offer_gone"
    REFUSED = "refused"  # the offer now breaks a hard limit of the request (cap, reliability, country...)
    PREFLIGHT_FAILED = "preflight_failed"
    CREATE_FAILED = "create_failed"
    NOT_FOUND = "not_found"
    BUDGET = "budget"


@dataclass
class Decision:
    result: DecisionResult
    approval: Approval | None = None
    rental: Rental | None = None
    message: str = ""


def may_decide(
    approval: Approval, *, user_id: int, is_approver: bool, self_approve_max_price: float
) -> DecisionResult | None:
    """The approval rules, checked at click time. ``None`` means the user may decide.

    Fail closed: only holders of the approver role decide; a requester may approve their own
    rent request only up to ``self_approve_max_price`` $/h (they may always deny/cancel it).
    """
    if not is_approver:
        return DecisionResult.NOT_ALLOWED
    if approval.kind == ApprovalKind.RENT and approval.requester_id == user_id:
        price = float(approval.payload.get("quoted_dph", 0.0))
        if price > self_approve_max_price:
            return DecisionResult.SELF_APPROVAL_TOO_DEAR
    return None


class RentalService:
    """Creates rent requests, decides approvals and destroys rentals."""

    def __init__(self, *, store: Store, vast: VastClient, clock: Clock, settings: Settings,
                 engine: WatchEngine, preflight: Preflight | None = None) -> None:
        self.store = store
        # Everything here runs for a person's command or click: it queues behind the watcher's
        # calls to the same endpoint, never in front of them (a destroy stays urgent).
        self.vast = vast.with_priority(Priority.COMMAND)
        self.clock = clock
        self.settings = settings
        self.engine = engine
        # Events go to the same outbox as the engine's: stored first, delivered in order.
        self.outbox = engine.outbox
        self.preflight = preflight

    # ------------------------------------------------------------------ search
    def query(self, *, gpu: str | None = None, num_gpus: int = 1, min_vram_gb: float | None = None,
              max_dph: float | None = None, disk_gb: int | None = None,
              excluded_countries: list[str] | None = None, limit: int = 10) -> OfferQuery:
        return OfferQuery(
            gpu_names=[gpu] if gpu else None, num_gpus=num_gpus, min_vram_gb=min_vram_gb,
            max_dph=min(max_dph, self.settings.max_price_per_hour) if max_dph else self.settings.max_price_per_hour,
            min_reliability=self.settings.min_reliability, disk_gb=disk_gb or self.settings.disk_gb,
            excluded_countries=(self.settings.excluded_countries if excluded_countries is None
                                else sorted(set(excluded_countries) | set(self.settings.excluded_countries))),
            limit=limit,
        )

    async def search(self, query: OfferQuery) -> list[Offer]:
        # Banned machines too; failures an approver cleared are forgiven.
        avoid = await failing_machines(self.store, self.clock.now() - self.settings.host_avoid_window)
        if avoid:
            query = query.model_copy(update={"excluded_machines": sorted(set(query.excluded_machines) | set(avoid))})
        return await self.vast.search_offers(query)

    # ------------------------------------------------------------------ request
    async def request(self, offer: Offer, *, requester_id: int, requester_name: str,
                      query: OfferQuery | None = None) -> tuple[Rental, Approval]:
        """Create a rental awaiting approval, bound to this exact offer id and quoted $/h."""
        # The manifest preflight for this offer and disk, first: its checklist is shown to the approver.
        checked = await preflight_payload(self.preflight, self.settings, offer, query)
        now = self.clock.now()
        label = f"{LABEL_PREFIX}{secrets.token_hex(4)}"
        rental = await self.store.create_rental(
            label=label, requester_id=requester_id, requester_name=requester_name, offer_id=offer.id,
            quoted_dph=offer.dph_total, now=now, state=RentalState.AWAITING_APPROVAL,
            machine_id=offer.machine_id, host_id=offer.host_id, gpu_name=offer.gpu_name,
            num_gpus=offer.num_gpus, geolocation=offer.geolocation,
            request={"offer": offer.model_dump(mode="json"),
                     "query": query.model_dump(mode="json") if query else None},
        )
        approval = await self.store.create_approval(
            kind=ApprovalKind.RENT, requester_id=requester_id, rental_id=rental.id, now=now,
            expires_at=now + self.settings.approval_timeout,
            payload={**_quote_payload(offer, requester_name), **checked},
        )
        await self.outbox.append(rental, EV_APPROVAL, {
            "approval_id": approval.id, "kind": "rent", "status": "pending",
            "quoted_dph": offer.dph_total, "offer_id": offer.id,
        })
        return rental, approval

    # ------------------------------------------------------------------ decide
    async def decide(self, approval_id: int, *, approve: bool, user_id: int, user_name: str,
                     is_approver: bool) -> Decision:
        """Handle one click. At most once: the store's conditional update picks a single winner."""
        approval = await self.store.get_approval(approval_id)
        if approval is None:
            return Decision(DecisionResult.NOT_FOUND, message="This request no longer exists.")
        rental = await self.store.get_rental(approval.rental_id) if approval.rental_id else None
        now = self.clock.now()
        if approval.status != ApprovalStatus.PENDING:
            return Decision(DecisionResult.ALREADY_DECIDED, approval, rental,
                            f"Already {approval.status.value}" + (f" by {approval.decided_by_name}."
                                                                  if approval.decided_by_name else "."))
        if approval.expires_at <= now:
            return Decision(DecisionResult.EXPIRED, approval, rental, "This request has expired.")
        # A requester may withdraw their own rent request without the approver role.
        withdrawing = (not approve and approval.kind == ApprovalKind.RENT and approval.requester_id == user_id)
        if not withdrawing:
            refusal = may_decide(approval, user_id=user_id, is_approver=is_approver,
                                 self_approve_max_price=self.settings.self_approve_max_price)
            if refusal is not None:
                return Decision(refusal, approval, rental, _refusal_text(refusal, self.settings))
        if approve and approval.kind == ApprovalKind.RENT:  # budgets: refuse when spent, escalate near it
            from bot.budget import check_rent
            gate = await check_rent(self.store, self.settings, now, user_id=approval.requester_id,
                                    dph=float(approval.payload.get("quoted_dph", 0.0)))
            if gate.blocked or (gate.escalated and approval.requester_id == user_id):
                return Decision(DecisionResult.BUDGET, approval, rental,
                                gate.refusal() if gate.blocked else gate.escalation())

        if approval.kind == ApprovalKind.TEARDOWN:
            return await self._decide_teardown(approval, rental, approve=approve, user_id=user_id,
                                               user_name=user_name)
        if not approve:
            won = await self.store.decide_approval(approval.id, status=ApprovalStatus.DENIED, by_id=user_id,
                                                   by_name=user_name, now=now)
            if not won:
                return await self._lost(approval_id)
            if rental is not None:
                await self.store.transition_rental(rental.id, to=RentalState.DENIED, now=now,
                                                   expected=[RentalState.AWAITING_APPROVAL],
                                                   reason=f"denied by {user_name}")
                await self.outbox.append(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": "rent",
                                                             "status": "denied", "by": user_name})
            return Decision(DecisionResult.DENIED, await self.store.get_approval(approval.id), rental,
                            f"Denied by {user_name}.")
        return await self._approve_rent(approval, rental, user_id=user_id, user_name=user_name)

    async def _lost(self, approval_id: int) -> Decision:
        approval = await self.store.get_approval(approval_id)
        if approval is not None and approval.is_pending and approval.expires_at <= self.clock.now():
            return Decision(DecisionResult.EXPIRED, approval, None, "This request has expired.")
        if approval is not None and approval.is_pending:
            return Decision(DecisionResult.REQUOTED, approval, None,
                            f"The price changed while you clicked: the new quote is "
                            f"${float(approval.payload.get('quoted_dph', 0.0)):.3f}/h; approve it to rent.")
        status = approval.status.value if approval else "decided"
        by = f" by {approval.decided_by_name}" if approval and approval.decided_by_name else ""
        return Decision(DecisionResult.ALREADY_DECIDED, approval, None, f"Already {status}{by}.")

    async def _approve_rent(self, approval: Approval, rental: Rental | None, *, user_id: int,
                            user_name: str) -> Decision:
        assert rental is not None
        quoted = float(approval.payload["quoted_dph"])
        offer_id = int(approval.payload["offer_id"])
        # Re-check the exact offer: gone or dearer means a new quote, never a different machine.
        # Looked up by id alone, so that an offer which now breaks a limit is told apart from a
        # gone one; the request's own filters are then applied here, to refuse it.
        try:
            limits = await self.recheck_limits(rental, offer_id)
            current = await self.vast.search_offers(OfferQuery(
                offer_ids=[offer_id], limit=5, num_gpus=None, disk_gb=self._disk_gb(rental), verified=False,
                excluded_countries=[]))
        except VastError as exc:
            return Decision(DecisionResult.CREATE_FAILED, approval, rental,
                            f"Could not re-check the offer with Vast ({exc}); nothing was rented. Try again.")
        offer = next((o for o in current if o.id == offer_id), None)
        now = self.clock.now()
        if approval.expires_at <= now:
            # It expired while Vast was asked: no re-quote may revive it, whether or not it was swept.
            return await self._lost(approval.id)
        breach = limits.rejects(offer) if offer is not None else None
        if offer is not None and breach is not None:
            return await self._refuse(approval, rental, user_id=user_id, user_name=user_name, why=breach)
        if offer is None:
            # The offer may be gone because another approver's click just rented it: only the winner
            # of the conditional update may call the request off.
            if not await self.store.decide_approval(approval.id, status=ApprovalStatus.CANCELLED, by_id=user_id,
                                                    by_name=user_name, now=now, note="offer gone"):
                return await self._lost(approval.id)
            await self.store.transition_rental(rental.id, to=RentalState.EXPIRED, now=now,
                                               expected=[RentalState.AWAITING_APPROVAL], reason="offer gone")
            await self.outbox.append(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": "rent",
                                                         "status": "offer_gone"})
            return Decision(DecisionResult.OFFER_GONE, approval, rental,
                            "The offer was rented by someone else; nothing was rented. Run /rent again.")
        assert offer.dph_total is not None  # limits.rejects() refuses an offer without a price
        if offer.dph_total > quoted + 1e-9:
            requoted = await self.store.requote_approval(
                approval.id, payload={**_quote_payload(offer, str(approval.payload.get("requester_name", ""))),
                                      **_kept_checks(approval.payload)},
                now=now, expires_at=now + self.settings.approval_timeout,
            )
            if requoted is None:
                return await self._lost(approval.id)  # another click decided it meanwhile
            await self.store.update_rental(rental.id, now=now, quoted_dph=offer.dph_total)
            await self.outbox.append(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": "rent",
                                                         "status": "requoted", "quoted_dph": offer.dph_total,
                                                         "previous_dph": quoted})
            return Decision(DecisionResult.REQUOTED, requoted, rental,
                            f"The price went up from ${quoted:.3f}/h to ${offer.dph_total:.3f}/h: "
                            "approve the new quote to rent.")
        if self.preflight is not None:
            report = await run_preflight(self.preflight, self.settings, offer=offer, disk_gb=self._disk_gb(rental))
            if not report.ok:
                failed = "; ".join(f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "")
                                   for c in report.checks if c.status == "fail")
                return Decision(DecisionResult.PREFLIGHT_FAILED, approval, rental,
                                f"Preflight failed, nothing was rented: {failed}")
        # Bound to the quote this click checked: a requote meanwhile (another click) wins over it.
        # The decision and the rental's move to "creating" commit together: a crash between them
        # would leave an approved request that nothing will ever create.
        try:
            async with self.store.transaction():
                won = await self.store.decide_approval(approval.id, status=ApprovalStatus.APPROVED,
                                                       by_id=user_id, by_name=user_name, now=now,
                                                       revision=approval.revision)
                if won and not await self.store.transition_rental(
                        rental.id, to=RentalState.CREATING, now=now, expected=[RentalState.AWAITING_APPROVAL],
                        reason=f"approved by {user_name}"):
                    raise _RolledBack  # the rental moved on (withdrawn): undo the approval too
        except _RolledBack:
            latest = await self.store.get_rental(rental.id) or rental
            return Decision(DecisionResult.ALREADY_DECIDED, approval, latest,
                            f"This request is already {latest.state.value.replace('_', ' ')}; nothing was rented.")
        if not won:
            return await self._lost(approval.id)
        rental = await self.store.get_rental(rental.id) or rental
        await self.outbox.append(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": "rent",
                                                     "status": "approved", "by": user_name})
        return await self._create(rental, approval, offer)

    async def recheck_limits(self, rental: Rental, offer_id: int) -> OfferQuery:
        """Every hard filter the offer must still pass when an approver clicks.

        The original request's filters (the requester's price ceiling, countries, GPU count...)
        tightened by today's settings: the lower of the two price caps, the higher reliability
        floor, the union of excluded countries, and the machines that failed since.
        """
        stored = rental.request.get("query") if isinstance(rental.request, dict) else None
        base: OfferQuery | None = None
        if isinstance(stored, dict):
            try:
                base = OfferQuery.model_validate(stored)
            except ValidationError:
                log.warning("rental %s: its stored search does not parse; re-checking with the defaults", rental.id)
        if base is None:
            base = self.query()
        caps = [cap for cap in (base.max_dph, self.settings.max_price_per_hour) if cap is not None]
        avoid = await failing_machines(self.store, self.clock.now() - self.settings.host_avoid_window)
        return base.model_copy(update={
            "offer_ids": [offer_id],
            "max_dph": min(caps),
            "min_reliability": max(base.min_reliability or 0.0, self.settings.min_reliability),
            "excluded_countries": sorted(set(base.excluded_countries) | set(self.settings.excluded_countries)),
            "excluded_machines": sorted(set(base.excluded_machines) | set(avoid)),
        })

    async def _refuse(self, approval: Approval, rental: Rental, *, user_id: int, user_name: str,
                      why: str) -> Decision:
        """Close a request whose offer now breaks a hard limit: never a re-quote one click from renting it."""
        now = self.clock.now()
        if not await self.store.decide_approval(approval.id, status=ApprovalStatus.CANCELLED, by_id=user_id,
                                                by_name=user_name, now=now, note=f"refused: {why}"):
            return await self._lost(approval.id)
        await self.store.transition_rental(rental.id, to=RentalState.DENIED, now=now,
                                           expected=[RentalState.AWAITING_APPROVAL],
                                           reason=f"refused at approval: {why}")
        await self.engine.emit(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": "rent",
                                                     "status": "refused", "reason": why})
        return Decision(DecisionResult.REFUSED, await self.store.get_approval(approval.id) or approval, rental,
                        f"The offer no longer meets the request's limits ({why}); nothing was rented. "
                        "Run /rent again.")

    def _disk_gb(self, rental: Rental) -> int:
        """The disk the offer was searched (and priced) with: the price includes storage."""
        query = rental.request.get("query") if isinstance(rental.request, dict) else None
        try:
            disk = int(float((query or {}).get("disk_gb") or 0))
        except (TypeError, ValueError):
            disk = 0
        return disk if disk >= 8 else self.settings.disk_gb

    async def _create(self, rental: Rental, approval: Approval, offer: Offer) -> Decision:
        from bot.provisioning.onstart import build_launch

        now = self.clock.now()
        # Watched from before the PUT: if anything below fails after Vast made the instance (a lost
        # answer, a crash, a database error), the engine finds it by its label and watches it.
        # started_at records that the create is being sent (on the bot's clock): a rental left in
        # creating without it was never sent, and is resumed after a restart.
        async with self.engine.create_in_flight(rental):
            rental = await self.store.update_rental(rental.id, now=now, started_at=now)
            try:
                launch = build_launch(self.settings, run_id=rental.label, label=rental.label)
                created = await self.vast.create_instance(
                    offer.id, image=launch.image, disk_gb=self._disk_gb(rental), label=rental.label,
                    env=launch.env, onstart=launch.onstart, runtype=launch.runtype,
                )
            except VastCreateOutcomeUnknown as exc:
                await self.outbox.append(rental, EV_INFO, {"text": (
                    f"Vast's answer to the create was lost ({exc}); looking for an instance labelled "
                    f"{rental.label}: it is watched if it exists, else the rental is closed")})
                return Decision(DecisionResult.CREATE_FAILED, approval, rental,
                                "Vast's answer to the create was lost. The bot keeps checking the account: "
                                "if an instance was made it is watched like any other, else nothing was rented.")
            except (VastError, ValueError) as exc:
                reason = str(exc)
                await self.store.transition_rental(rental.id, to=RentalState.CREATE_FAILED, now=now, reason=reason)
                await self.outbox.append(rental, EV_STATE, {"from": "creating", "to": "create_failed",
                                                            "reason": reason})
                gone = isinstance(exc, VastUnavailableOffer)
                result = DecisionResult.OFFER_GONE if gone else DecisionResult.CREATE_FAILED
                return Decision(result, approval, rental, f"Vast did not create the instance: {reason}")
            instance_id = created if isinstance(created, int) else created.id
            rental = await self.store.update_rental(rental.id, now=now, instance_id=instance_id,
                                                    dph_total=offer.dph_total)
        moved = await self.store.transition_rental(rental.id, to=RentalState.PROVISIONING, now=now,
                                                   expected=[RentalState.CREATING], reason=f"instance {instance_id}")
        if not moved:
            # Torn down (a /destroy) while Vast was creating it: the new instance bills, destroy it.
            current = await self.store.get_rental(rental.id) or rental
            if current.state != RentalState.TEARING_DOWN:
                await self.store.transition_rental(rental.id, to=RentalState.TEARING_DOWN, now=now,
                                                   reason=current.state_reason or "destroyed while being created")
                current = await self.store.get_rental(rental.id) or current
            await self.engine.destroy(rental.id, reason=current.state_reason or "destroyed while being created",
                                      by="rent service")
            return Decision(DecisionResult.CREATE_FAILED, approval, current,
                            f"Instance {instance_id} was destroyed as soon as Vast created it: "
                            "the rental was torn down meanwhile.")
        rental = await self.store.get_rental(rental.id) or rental
        await self.engine.attach(rental)
        await self.outbox.append(rental, EV_STATE, {"from": "creating", "to": "provisioning",
                                                  "reason": f"instance {instance_id} created",
                                                  "instance_id": instance_id})
        return Decision(DecisionResult.APPROVED, await self.store.get_approval(approval.id), rental,
                        f"Approved; instance {instance_id} is being created.")

    async def _decide_teardown(self, approval: Approval, rental: Rental | None, *, approve: bool,
                               user_id: int, user_name: str) -> Decision:
        now = self.clock.now()
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        won = await self.store.decide_approval(approval.id, status=status, by_id=user_id, by_name=user_name, now=now)
        if not won:
            return await self._lost(approval.id)
        if rental is None:
            return Decision(DecisionResult.NOT_FOUND, approval, None, "The rental no longer exists.")
        await self.outbox.append(rental, EV_APPROVAL, {"approval_id": approval.id, "kind": "teardown",
                                                     "status": status.value, "by": user_name})
        if approve:
            await self.engine.destroy(rental.id, reason=str(approval.payload.get("reason", "teardown approved")),
                                      by=user_name)
            return Decision(DecisionResult.APPROVED, approval, rental, f"Teardown approved by {user_name}.")
        await self.engine.decline_teardown(rental.id, by=user_name)
        return Decision(DecisionResult.DENIED, approval, rental, f"Kept running by {user_name}.")

    # ------------------------------------------------------------------ restart
    async def resume_creates(self) -> int:
        """After a restart: create what was approved but never sent to Vast.

        A rental in creating without ``started_at`` was approved (the approval and the move to
        creating commit together) but the process died before the create call went out, so nothing
        was rented. Its offer is re-checked against the request's limits and created now; if the
        offer is gone or now breaks a limit, the rental is closed and the request says so.
        Returns how many creates were sent.
        """
        sent = 0
        for rental in await self.store.list_rentals(states=[RentalState.CREATING], limit=1_000):
            if rental.started_at is not None or rental.instance_id is not None or rental.offer_id is None:
                continue  # the create went out: the watch finds its instance by label
            approvals = [a for a in await self.store.approvals_for_rental(rental.id)
                         if a.kind == ApprovalKind.RENT and a.status == ApprovalStatus.APPROVED]
            if not approvals:
                continue
            approval = approvals[-1]
            offer_id = int(approval.payload.get("offer_id") or rental.offer_id)
            try:
                limits = await self.recheck_limits(rental, offer_id)
                found = await self.vast.search_offers(OfferQuery(
                    offer_ids=[offer_id], limit=5, num_gpus=None, disk_gb=self._disk_gb(rental), verified=False,
                    excluded_countries=[]))
            except VastError as exc:
                log.warning("rental %s: approved before a restart, offer re-check failed (%s); retrying "
                            "at the next start or by label", rental.id, exc)
                continue
            offer = next((o for o in found if o.id == offer_id), None)
            quoted = float(approval.payload.get("quoted_dph") or rental.quoted_dph or 0.0)
            why = ("the offer is gone" if offer is None else limits.rejects(offer)
                   or (f"its price rose to ${offer.dph_total:.3f}/h from ${quoted:.3f}/h"
                       if offer.dph_total is not None and offer.dph_total > quoted + 1e-9 else None))
            if why is not None or offer is None:
                reason = f"approved, but the bot restarted before renting and {why}; nothing was rented"
                if await self.store.transition_rental(rental.id, to=RentalState.CREATE_FAILED,
                                                      now=self.clock.now(), expected=[RentalState.CREATING],
                                                      reason=reason):
                    await self.outbox.append(rental, EV_STATE, {"from": "creating", "to": "create_failed",
                                                                "reason": reason + ". Run /rent again."})
                continue
            await self.outbox.append(rental, EV_INFO, {"text": (
                "approved before the bot restarted, and not rented yet: the offer still holds, renting it now")})
            await self._create(rental, approval, offer)
            sent += 1
        return sent

    # ------------------------------------------------------------------ destroy
    async def destroy(self, rental_id: int, *, user_id: int, user_name: str, is_approver: bool,
                      reason: str | None) -> Decision:
        """Destroy now. Someone else's rental needs the approver role."""
        rental = await self.store.get_rental(rental_id)
        if rental is None:
            return Decision(DecisionResult.NOT_FOUND, message=f"No rental #{rental_id}.")
        if rental.requester_id != user_id and not is_approver:
            return Decision(DecisionResult.NOT_ALLOWED, rental=rental,
                            message="Only an approver may destroy someone else's rental.")
        if rental.state in (RentalState.DESTROYED, RentalState.DENIED, RentalState.EXPIRED,
                            RentalState.CREATE_FAILED):
            return Decision(DecisionResult.ALREADY_DECIDED, rental=rental,
                            message=f"Rental #{rental.id} is already {rental.state.value}.")
        # Conditional: an approval may have moved it to creating a moment ago (then it is destroyed below).
        if rental.state == RentalState.AWAITING_APPROVAL and await self.store.transition_rental(
                rental.id, to=RentalState.DENIED, now=self.clock.now(), expected=[RentalState.AWAITING_APPROVAL],
                reason=f"withdrawn by {user_name}"):
            now = self.clock.now()
            # Cancel the open request too, so its buttons stop offering an approval of nothing.
            for pending in await self.store.pending_approvals(rental_id=rental.id):
                if await self.store.decide_approval(pending.id, status=ApprovalStatus.CANCELLED, by_id=user_id,
                                                    by_name=user_name, now=now, note=f"withdrawn by {user_name}"):
                    await self.outbox.append(rental, EV_APPROVAL, {
                        "approval_id": pending.id, "kind": pending.kind.value, "status": "cancelled", "by": user_name})
            return Decision(DecisionResult.DENIED, rental=rental, message="Request withdrawn; nothing was rented.")
        rental = await self.store.get_rental(rental.id) or rental
        if rental.is_terminal:
            return Decision(DecisionResult.ALREADY_DECIDED, rental=rental,
                            message=f"Rental #{rental.id} is already {rental.state.value}.")
        text = reason or f"destroyed by {user_name}"
        ok = await self.engine.destroy(rental.id, reason=text, by=user_name)
        rental = await self.store.get_rental(rental.id) or rental
        if not ok:
            return Decision(DecisionResult.CREATE_FAILED, rental=rental,
                            message="Vast has not confirmed the instance is gone yet; the bot keeps trying.")
        return Decision(DecisionResult.APPROVED, rental=rental, message=f"Rental #{rental.id} destroyed.")


    # ------------------------------------------------------------------ unknown instances
    async def unknown_instances(self, listed: list[Instance] | None = None) -> list[Instance]:
        """Instances on the Vast account that no open rental accounts for: they bill all the same.

        ``listed``: the account as a recent poll saw it (else it is listed now).
        """
        unknown = []
        for inst in listed if listed is not None else await self.vast.list_instances():
            rental = await self.store.get_rental_by_instance(inst.id)
            if rental is None or rental.is_terminal:
                unknown.append(inst)
        return unknown

    async def destroy_unknown_instance(self, instance_id: int, *, user_id: int, user_name: str,
                                       is_approver: bool) -> Decision:
        """Destroy an instance the bot does not track (approvers only); a tracked one goes through destroy()."""
        if not is_approver:
            return Decision(DecisionResult.NOT_ALLOWED,
                            message="Only members with the approver role can destroy instances the bot does not know.")
        rental = await self.store.get_rental_by_instance(instance_id)
        if rental is not None and not rental.is_terminal:
            return await self.destroy(rental.id, user_id=user_id, user_name=user_name, is_approver=True,
                                      reason=f"destroyed from /status by {user_name}")
        try:
            gone = await self.vast.destroy_instance(instance_id)
        except VastError as exc:
            return Decision(DecisionResult.CREATE_FAILED, rental=rental,
                            message=f"Vast has not confirmed instance {instance_id} is gone: {exc}")
        log.warning("instance %s (unknown to the bot) destroyed by %s (%s)", instance_id, user_name, user_id)
        if not gone:
            return Decision(DecisionResult.CREATE_FAILED, rental=rental,
                            message=f"Vast has not confirmed instance {instance_id} is gone yet; check /status again.")
        return Decision(DecisionResult.APPROVED, rental=rental,
                        message=f"Instance {instance_id} destroyed; Vast confirmed it is gone.")


def _quote_payload(offer: Offer, requester_name: str) -> dict[str, Any]:
    return {
        "offer_id": offer.id, "quoted_dph": offer.dph_total, "gpu_name": offer.gpu_name,
        "num_gpus": offer.num_gpus, "vram_gb": None if offer.vram_gb is None else round(offer.vram_gb, 1),
        "country": offer.country,
        "geolocation": offer.geolocation, "reliability": offer.reliability, "inet_down": offer.inet_down,
        "machine_id": offer.machine_id, "requester_name": requester_name,
    }


def _kept_checks(payload: dict[str, Any]) -> dict[str, Any]:
    """The preflight checklist of a request, kept across a requote (same machine, same manifest)."""
    return {k: payload[k] for k in ("checklist", "preflight_ok") if k in payload}


def _refusal_text(result: DecisionResult, settings: Settings) -> str:
    if result == DecisionResult.NOT_ALLOWED:
        return "Only members with the approver role can decide this."
    if result == DecisionResult.SELF_APPROVAL_TOO_DEAR:
        return (f"You cannot approve your own request above ${settings.self_approve_max_price:.2f}/h; "
                "ask another approver.")
    return "Not allowed."

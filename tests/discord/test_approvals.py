"""Approval buttons and rules: custom_id parsing at its limits, may_decide, and RentalService.decide
against a real SQLite store and the Vast simulator (no Discord)."""

from __future__ import annotations

import asyncio
import re

import pytest

from bot.db.models import Approval, ApprovalKind, ApprovalStatus, RentalState
from bot.render import CUSTOM_ID_LIMIT
from bot.rentals import DecisionResult, may_decide
from cogs.approvals import APPROVAL_TEMPLATE, ApprovalButton, approval_custom_id, parse_approval_custom_id
from cogs.destroy import DESTROY_TEMPLATE, destroy_custom_id
from tests.discord.helpers import APPROVER, OTHER, REQUESTER, World, request_approval

# ---------------------------------------------------------------- custom ids


def test_approval_custom_id_round_trip() -> None:
    assert parse_approval_custom_id(approval_custom_id(42, "approve")) == (42, True)
    assert parse_approval_custom_id(approval_custom_id(42, "deny")) == (42, False)


@pytest.mark.parametrize("junk", [
    "vastops:approval:x:approve", "vastops:approval:1:maybe", "approval:1:approve",
    "vastops:approval:1:approve:extra", "", "vastops:approval::deny",
])
def test_approval_custom_id_rejects_junk(junk: str) -> None:
    assert parse_approval_custom_id(junk) is None


def test_approval_custom_id_fits_discord_limit_for_huge_ids() -> None:
    cid = approval_custom_id(2**63 - 1, "approve")
    assert len(cid) <= CUSTOM_ID_LIMIT and re.fullmatch(APPROVAL_TEMPLATE, cid)
    button = ApprovalButton(2**63 - 1, False)
    assert button.item.custom_id == approval_custom_id(2**63 - 1, "deny")


def test_destroy_custom_id_carries_a_cut_reason_within_the_limit() -> None:
    cid = destroy_custom_id(2**40, "line one\nline two " + "x" * 200)
    assert len(cid) <= CUSTOM_ID_LIMIT
    match = re.fullmatch(DESTROY_TEMPLATE, cid)
    assert match and int(match["rental"]) == 2**40 and match["reason"].startswith("line one line two")
    assert re.fullmatch(DESTROY_TEMPLATE, destroy_custom_id(7, None))["reason"] is None  # type: ignore[index]


# ---------------------------------------------------------------- may_decide


def _approval(kind: ApprovalKind = ApprovalKind.RENT, price: float = 1.0) -> Approval:
    return Approval(id=1, kind=kind, rental_id=1, requester_id=REQUESTER, payload={"quoted_dph": price},
                    status=ApprovalStatus.PENDING, revision=1, created_at=0, expires_at=10, decided_at=None,
                    decided_by=None, decided_by_name=None, decision_note=None, default_action=None,
                    channel_id=None, message_id=None)


@pytest.mark.parametrize(("user", "approver", "price", "kind", "expected"), [
    (OTHER, False, 0.1, ApprovalKind.RENT, DecisionResult.NOT_ALLOWED),
    (APPROVER, True, 9.0, ApprovalKind.RENT, None),
    (REQUESTER, True, 0.51, ApprovalKind.RENT, DecisionResult.SELF_APPROVAL_TOO_DEAR),
    (REQUESTER, True, 0.50, ApprovalKind.RENT, None),  # exactly at the self-approval cap
    (REQUESTER, False, 0.10, ApprovalKind.RENT, DecisionResult.NOT_ALLOWED),
    (OTHER, False, 0.1, ApprovalKind.TEARDOWN, DecisionResult.NOT_ALLOWED),
    (REQUESTER, True, 9.0, ApprovalKind.TEARDOWN, None),
])
def test_may_decide(user: int, approver: bool, price: float, kind: ApprovalKind,
                    expected: DecisionResult | None) -> None:
    got = may_decide(_approval(kind, price), user_id=user, is_approver=approver, self_approve_max_price=0.5)
    assert got == expected


# ---------------------------------------------------------------- RentalService.decide


async def test_member_without_role_is_refused_and_nothing_changes(world: World) -> None:
    approval = await request_approval(world)
    decision = await world.service.decide(approval.id, approve=True, user_id=OTHER, user_name="o",
                                          is_approver=False)
    assert decision.result == DecisionResult.NOT_ALLOWED
    assert (await world.store.get_approval(approval.id)).status == ApprovalStatus.PENDING  # type: ignore[union-attr]
    assert not world.sim.instances


async def test_two_approvers_at_once_rent_once(world: World) -> None:
    approval = await request_approval(world)
    a, b = await asyncio.gather(
        world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="alice",
                             is_approver=True),
        world.service.decide(approval.id, approve=True, user_id=OTHER, user_name="bob", is_approver=True),
    )
    results = sorted([a.result, b.result])
    assert results == sorted([DecisionResult.APPROVED, DecisionResult.ALREADY_DECIDED])
    loser = a if a.result == DecisionResult.ALREADY_DECIDED else b
    winner = b if loser is a else a
    assert f"approved by {winner.approval.decided_by_name}" in loser.message.lower()  # type: ignore[union-attr]
    assert len(world.sim.instances) == 1


async def test_expired_request_cannot_be_approved(world: World) -> None:
    approval = await request_approval(world)
    await world.clock.advance(601)
    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="a",
                                          is_approver=True)
    assert decision.result == DecisionResult.EXPIRED and not world.sim.instances


async def test_requester_may_withdraw_but_not_self_approve_above_cap(world: World) -> None:
    approval = await request_approval(world)
    cap = float(approval.payload["quoted_dph"]) - 0.01  # just under this quote
    world.service.settings = world.settings.model_copy(update={"self_approve_max_price": cap})
    mine = await world.service.decide(approval.id, approve=True, user_id=REQUESTER, user_name="req",
                                      is_approver=True)
    assert mine.result == DecisionResult.SELF_APPROVAL_TOO_DEAR
    withdraw = await world.service.decide(approval.id, approve=False, user_id=REQUESTER, user_name="req",
                                          is_approver=False)
    assert withdraw.result == DecisionResult.DENIED
    late = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="a",
                                      is_approver=True)
    assert late.result == DecisionResult.ALREADY_DECIDED and not world.sim.instances


async def test_dearer_offer_is_requoted_not_rented(world: World) -> None:
    approval = await request_approval(world)
    offer = world.sim.offer(int(approval.payload["offer_id"]))
    assert offer is not None
    offer["dph_base"] = float(offer["dph_base"]) + 0.2
    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="a",
                                          is_approver=True)
    assert decision.result == DecisionResult.REQUOTED and not world.sim.instances
    requoted = await world.store.get_approval(approval.id)
    assert requoted is not None and requoted.is_pending and requoted.revision == 2
    assert requoted.payload["quoted_dph"] > approval.payload["quoted_dph"]
    again = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="a",
                                       is_approver=True)
    assert again.result == DecisionResult.APPROVED and len(world.sim.instances) == 1


async def test_gone_offer_rents_nothing(world: World) -> None:
    approval = await request_approval(world)
    offer = world.sim.offer(int(approval.payload["offer_id"]))
    assert offer is not None
    offer["rented"] = True
    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="a",
                                          is_approver=True)
    assert decision.result == DecisionResult.OFFER_GONE and not world.sim.instances


async def test_destroying_an_unapproved_request_cancels_its_approval(world: World) -> None:
    approval = await request_approval(world)
    decision = await world.service.destroy(approval.rental_id or 0, user_id=REQUESTER, user_name="req",
                                           is_approver=False, reason=None)
    assert decision.result == DecisionResult.DENIED
    cancelled = await world.store.get_approval(approval.id)
    assert cancelled is not None and cancelled.status == ApprovalStatus.CANCELLED
    rental = await world.store.get_rental(approval.rental_id or 0)
    assert rental is not None and rental.state == RentalState.DENIED

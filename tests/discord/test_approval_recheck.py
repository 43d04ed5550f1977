"""The approval re-check re-applies every filter of the original request: a real SQLite store, the Vast
simulator on loopback and a FakeClock; no Discord.

An offer that breaks a hard limit by the time an approver clicks (price over the cap, reliability under
the floor, no longer verified, in an excluded country, on a machine that failed) is refused, never
re-quoted: a re-quote is one more click away from renting it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bot.db.models import Approval, ApprovalStatus, HostOutcome, RentalState
from bot.rentals import Decision, DecisionResult, RentalService
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.engine import EV_APPROVAL
from tests.discord.helpers import APPROVER, OTHER, REQUESTER, World, request_approval


async def _approve(world: World, approval: Approval, user_id: int = APPROVER, name: str = "alice") -> Decision:
    return await world.service.decide(approval.id, approve=True, user_id=user_id, user_name=name,
                                      is_approver=True)


def _sim_offer(world: World, approval: Approval) -> dict[str, Any]:
    offer = world.sim.offer(int(approval.payload["offer_id"]))
    assert offer is not None
    return offer


async def _request_with(world: World, query: OfferQuery) -> Approval:
    offers = await world.service.search(query)
    assert offers
    _, approval = await world.service.request(offers[0], requester_id=REQUESTER, requester_name="req",
                                              query=query)
    return approval


async def _assert_refused(world: World, approval: Approval, decision: Decision, why: str) -> None:
    """Refused with a reason, the request closed, nothing rented, and a second click rents nothing."""
    assert decision.result == DecisionResult.REFUSED, (decision.result, decision.message)
    assert why in decision.message and "nothing was rented" in decision.message
    stored = await world.store.get_approval(approval.id)
    assert stored is not None and stored.status == ApprovalStatus.CANCELLED and stored.revision == 1
    rental = await world.store.get_rental(approval.rental_id or 0)
    assert rental is not None and rental.state == RentalState.DENIED
    again = await _approve(world, approval, user_id=OTHER, name="bob")
    assert again.result == DecisionResult.ALREADY_DECIDED, again.message
    assert not world.sim.instances, "an offer breaking a hard limit was rented"
    events = await world.store.events_for(rental.id, kinds=[EV_APPROVAL])
    statuses = [e.payload["status"] for e in events]
    assert "requoted" not in statuses and "refused" in statuses


async def test_a_price_over_the_global_cap_is_refused_not_requoted(world: World) -> None:
    """$3/h against a $1 cap: a re-quote would let the second click rent it."""
    world.service.settings.max_price_per_hour = 1.0
    approval = await request_approval(world)
    offer = _sim_offer(world, approval)
    offer["dph_base"] = 3.0
    decision = await _approve(world, approval)
    await _assert_refused(world, approval, decision, "is over $1.000/h")


async def test_a_price_over_the_requesters_own_max_is_refused(world: World) -> None:
    query = world.service.query(max_dph=0.30)
    approval = await _request_with(world, query)
    offer = _sim_offer(world, approval)
    offer["dph_base"] = float(offer["dph_base"]) + 0.20  # still far under the global $5 cap
    decision = await _approve(world, approval)
    await _assert_refused(world, approval, decision, "is over $0.300/h")


async def test_a_price_rise_under_the_cap_is_still_requoted(world: World) -> None:
    approval = await request_approval(world)
    offer = _sim_offer(world, approval)
    offer["dph_base"] = float(offer["dph_base"]) + 0.10
    decision = await _approve(world, approval)
    assert decision.result == DecisionResult.REQUOTED, decision.message
    assert not world.sim.instances
    again = await _approve(world, approval, user_id=OTHER, name="bob")
    assert again.result == DecisionResult.APPROVED, again.message


@pytest.mark.parametrize("change, why", [
    ({"reliability": 0.50, "reliability2": 0.50}, "reliability 0.5 under 0.95"),
    ({"verification": "unverified", "vericode": 0}, "verification 'unverified'"),
    ({"geolocation": "Guangdong, China"}, "country CN is excluded"),
])
async def test_an_offer_that_broke_a_hard_filter_is_refused(world: World, change: dict[str, Any],
                                                            why: str) -> None:
    approval = await request_approval(world)
    _sim_offer(world, approval).update(change)
    decision = await _approve(world, approval)
    await _assert_refused(world, approval, decision, why)


async def test_the_requesters_own_excluded_countries_are_re_applied(world: World) -> None:
    query = world.service.query(excluded_countries=["DE"])
    approval = await _request_with(world, query)
    _sim_offer(world, approval)["geolocation"] = "Bavaria, DE"  # the host moved (or re-reported) meanwhile
    decision = await _approve(world, approval)
    await _assert_refused(world, approval, decision, "country DE is excluded")


async def test_a_machine_that_failed_since_the_request_is_refused(world: World) -> None:
    approval = await request_approval(world)
    machine = int(_sim_offer(world, approval)["machine_id"])
    await world.store.record_host_outcome(machine_id=machine, host_id=None, geolocation=None,
                                          outcome=HostOutcome.FAILED, reason="died provisioning",
                                          now=world.clock.now())
    decision = await _approve(world, approval)
    await _assert_refused(world, approval, decision, f"machine {machine} is excluded")


async def test_a_cap_lowered_since_the_request_applies(world: World) -> None:
    """The operator lowered MAX_PRICE_PER_HOUR after the request: the new, lower cap is the one that holds."""
    approval = await request_approval(world)
    world.service.settings.max_price_per_hour = float(approval.payload["quoted_dph"]) / 2
    decision = await _approve(world, approval)
    assert decision.result == DecisionResult.REFUSED, decision.message
    assert not world.sim.instances


class ExpiringSearch(httpx.AsyncBaseTransport):
    """Loopback HTTP whose offer searches take ``delay`` seconds of simulated time: the request expires
    while its re-check is on the wire (a slow Vast, retries)."""

    def __init__(self, world: World, delay: float) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.world, self.delay = world, delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v0/bundles/":
            await self.world.clock.advance(self.delay)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_requote_does_not_revive_a_request_that_expired_meanwhile(world: World) -> None:
    approval = await request_approval(world)
    offer = _sim_offer(world, approval)
    offer["dph_base"] = float(offer["dph_base"]) + 0.10
    assert world.sim.base_url is not None
    vast = VastClient(world.sim.base_url, "k", clock=world.clock, min_spacing=NO_SPACING,
                      transport=ExpiringSearch(world, world.service.settings.approval_timeout + 5))
    service = RentalService(store=world.store, vast=vast, clock=world.clock, settings=world.service.settings,
                            engine=world.engine)
    try:
        decision = await service.decide(approval.id, approve=True, user_id=APPROVER, user_name="alice",
                                        is_approver=True)
    finally:
        await vast.aclose()
    assert decision.result == DecisionResult.EXPIRED, decision.message
    stored = await world.store.get_approval(approval.id)
    assert stored is not None and stored.revision == 1 and stored.expires_at <= world.clock.now()
    events = await world.store.events_for(approval.rental_id or 0, kinds=[EV_APPROVAL])
    assert "requoted" not in [e.payload["status"] for e in events]
    assert not world.sim.instances

"""The money path of RentalService: what happens when a create's outcome is unclear, when a destroy
arrives while Vast is still creating, and when a competing click rents the offer. A real SQLite
store, the Vast simulator on loopback and a FakeClock; no Discord."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from bot.db.models import Approval, ApprovalStatus, RentalState
from bot.provisioning.preflight import PreflightReport
from bot.rentals import Decision, DecisionResult, RentalService
from bot.vast.client import NO_SPACING, VastClient
from bot.watch.engine import EV_APPROVAL, EV_RECEIPT
from tests.discord.helpers import APPROVER, OTHER, REQUESTER, World, request_approval


async def _approve(world: World, approval: Approval, user_id: int = APPROVER, name: str = "alice") -> Decision:
    return await world.service.decide(approval.id, approve=True, user_id=user_id, user_name=name,
                                      is_approver=True)


async def test_a_create_whose_answer_and_label_check_are_lost_is_still_watched(world: World) -> None:
    """Vast made the instance, the answer was dropped and the label check failed too: the rental
    must not be written off as create_failed (terminal, unwatched) while the instance bills."""
    approval = await request_approval(world)
    world.sim.inject_fault("PUT", "/api/v0/asks/*", "drop_after_apply")

    def on_create(row: dict[str, Any]) -> None:
        # The list the client uses to look for the label fails right after the lost answer.
        world.sim.inject_fault("GET", "/api/v1/instances/", "500")

    world.sim.on_create = on_create
    decision = await _approve(world, approval)
    assert decision.result == DecisionResult.CREATE_FAILED
    [instance_id] = list(world.sim.instances)
    rental = await world.store.get_rental(approval.rental_id or 0)
    assert rental is not None and rental.state == RentalState.CREATING
    # The engine finds the instance by its label on its next poll and watches it from then on.
    await world.engine.tick()
    rental = await world.store.get_rental(rental.id)
    assert rental is not None and rental.instance_id == instance_id
    assert rental.state == RentalState.PROVISIONING and rental.id in world.engine.watches
    assert rental.started_at is not None


async def test_a_create_that_clearly_rented_nothing_is_reported_at_once(world: World) -> None:
    approval = await request_approval(world)
    world.sim.inject_fault("GET", "/api/v1/instances/", "500")  # the label pre-check before the PUT
    decision = await _approve(world, approval)
    assert decision.result == DecisionResult.CREATE_FAILED and not world.sim.instances
    rental = await world.store.get_rental(approval.rental_id or 0)
    # The label pre-check failed, so the PUT was never sent: nothing can exist.
    assert rental is not None and rental.state == RentalState.CREATE_FAILED


async def test_a_destroy_while_vast_is_creating_destroys_the_new_instance(world: World) -> None:
    approval = await request_approval(world)
    during: list[Decision] = []

    async def on_create(row: dict[str, Any]) -> None:
        # The requester presses /destroy while the create is in flight (Vast has made the instance).
        during.append(await world.service.destroy(approval.rental_id or 0, user_id=REQUESTER, user_name="req",
                                                  is_approver=False, reason="changed my mind"))

    world.sim.on_create = on_create
    await _approve(world, approval)
    assert len(during) == 1 and during[0].result != DecisionResult.APPROVED  # not "destroyed" yet
    assert not world.sim.instances, "the instance created under a destroyed rental is still billing"
    rental = await world.store.get_rental(approval.rental_id or 0)
    assert rental is not None and rental.state == RentalState.DESTROYED
    assert rental.instance_id is not None and rental.instance_id in world.sim.destroyed
    receipts = await world.store.events_for(rental.id, kinds=[EV_RECEIPT])
    assert len(receipts) == 1


class GatedSearch(httpx.AsyncBaseTransport):
    """Loopback HTTP whose offer searches after the first wait for ``release``: a slow network for one
    approver's re-check, so it lands after the other approver's create."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.release = asyncio.Event()
        self.searches = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v0/bundles/":
            self.searches += 1
            if self.searches > 1:
                await self.release.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_click_that_lost_to_a_rent_is_not_told_the_offer_is_gone(world: World) -> None:
    approval = await request_approval(world)
    gate = GatedSearch()
    assert world.sim.base_url is not None
    vast = VastClient(world.sim.base_url, "k", clock=world.clock, min_spacing=NO_SPACING, transport=gate)
    service = RentalService(store=world.store, vast=vast, clock=world.clock, settings=world.service.settings,
                            engine=world.engine)
    world.sim.on_create = lambda row: gate.release.set()
    try:
        results = await asyncio.gather(
            service.decide(approval.id, approve=True, user_id=APPROVER, user_name="alice", is_approver=True),
            service.decide(approval.id, approve=True, user_id=OTHER, user_name="bob", is_approver=True),
        )
    finally:
        await vast.aclose()
    assert len(world.sim.instances) == 1
    assert sorted(r.result for r in results) == sorted([DecisionResult.APPROVED, DecisionResult.ALREADY_DECIDED]), \
        [r.message for r in results]
    events = await world.store.events_for(approval.rental_id or 0, kinds=[EV_APPROVAL])
    assert "offer_gone" not in [e.payload["status"] for e in events]


async def test_a_click_that_lost_to_a_rent_does_not_requote_it(world: World) -> None:
    approval = await request_approval(world)
    gate = GatedSearch()
    assert world.sim.base_url is not None
    vast = VastClient(world.sim.base_url, "k", clock=world.clock, min_spacing=NO_SPACING, transport=gate)
    service = RentalService(store=world.store, vast=vast, clock=world.clock, settings=world.service.settings,
                            engine=world.engine)
    offer = world.sim.offer(int(approval.payload["offer_id"]))
    assert offer is not None

    def on_create(row: dict[str, Any]) -> None:
        # The price goes up (the rented offer is offered again dearer) just as the second re-check lands.
        offer["rented"] = False
        offer["dph_base"] = float(offer["dph_base"]) + 0.2
        gate.release.set()

    world.sim.on_create = on_create
    try:
        results = await asyncio.gather(
            service.decide(approval.id, approve=True, user_id=APPROVER, user_name="alice", is_approver=True),
            service.decide(approval.id, approve=True, user_id=OTHER, user_name="bob", is_approver=True),
        )
    finally:
        await vast.aclose()
    assert len(world.sim.instances) == 1
    assert sorted(r.result for r in results) == sorted([DecisionResult.APPROVED, DecisionResult.ALREADY_DECIDED]), \
        [r.message for r in results]
    rental = await world.store.get_rental(approval.rental_id or 0)
    assert rental is not None and rental.quoted_dph == approval.payload["quoted_dph"]
    events = await world.store.events_for(rental.id, kinds=[EV_APPROVAL])
    assert "requoted" not in [e.payload["status"] for e in events]


async def test_an_approval_checked_against_the_old_quote_does_not_rent_at_the_new_one(world: World) -> None:
    """Bob's re-check passed at the old price; while his click was still on its way (preflight),
    Alice's click found the price up and requoted. Bob's click must not approve a quote he never saw."""
    approval = await request_approval(world)
    offer = world.sim.offer(int(approval.payload["offer_id"]))
    assert offer is not None
    alice: list[Decision] = []

    async def preflight(settings: Any) -> PreflightReport:
        offer["dph_base"] = float(offer["dph_base"]) + 0.2
        alice.append(await _approve(world, approval))
        return PreflightReport()

    world.service.preflight = preflight
    bob = await _approve(world, approval, user_id=OTHER, name="bob")
    assert [d.result for d in alice] == [DecisionResult.REQUOTED]
    assert bob.result == DecisionResult.REQUOTED, bob.message
    assert not world.sim.instances
    stored = await world.store.get_approval(approval.id)
    assert stored is not None and stored.is_pending and stored.revision == 2


async def test_a_multi_gpu_rent_with_its_own_disk_is_approved_and_created_with_that_disk(world: World) -> None:
    """The approval re-check must find the exact offer whatever its GPU count, priced at the disk
    the user searched with, and the instance must get that disk."""
    query = world.service.query(num_gpus=2, disk_gb=120)
    offers = await world.service.search(query)
    assert offers and all(o.num_gpus == 2 for o in offers)
    _, approval = await world.service.request(offers[0], requester_id=REQUESTER, requester_name="req",
                                              query=query)
    decision = await _approve(world, approval)
    assert decision.result == DecisionResult.APPROVED, decision.message
    assert decision.rental is not None and decision.rental.instance_id is not None
    row = world.sim.instances[decision.rental.instance_id]
    assert row["disk_space"] == 120
    assert row["num_gpus"] == 2


async def test_approval_and_the_move_to_creating_commit_together(world: World) -> None:
    """If the rental has moved on (withdrawn) when the approval wins, the approval is undone too:
    never an 'approved' request that nothing will create."""
    approval = await request_approval(world)
    assert approval.rental_id is not None
    assert await world.store.transition_rental(approval.rental_id, to=RentalState.DENIED, now=world.clock.now())
    decision = await _approve(world, approval)
    assert decision.result == DecisionResult.ALREADY_DECIDED, decision.message
    current = await world.store.get_approval(approval.id)
    assert current is not None and current.status == ApprovalStatus.PENDING
    assert world.sim.instances == {}

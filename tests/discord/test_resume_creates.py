"""A kill -9 right after an Approve click: the approval and the move to creating were committed, the
create was never sent. After the restart the rental is created at once (or closed, saying why), never
left "renting…" with nothing happening. Real SQLite file, the Vast simulator on loopback."""

from __future__ import annotations

from bot.db.models import Approval, ApprovalStatus, RentalState
from bot.watch.engine import EV_STATE
from tests.discord.helpers import APPROVER, World, request_approval


async def _approved_then_killed(world: World, approval: Approval) -> int:
    """What the database holds when the process dies between the approval's commit and the create call."""
    now = world.clock.now()
    async with world.store.transaction():
        assert await world.store.decide_approval(approval.id, status=ApprovalStatus.APPROVED, by_id=APPROVER,
                                                 by_name="alice", now=now, revision=approval.revision)
        assert await world.store.transition_rental(approval.rental_id or 0, to=RentalState.CREATING, now=now,
                                                   expected=[RentalState.AWAITING_APPROVAL], reason="approved")
    return approval.rental_id or 0


async def test_an_approved_rental_whose_create_was_never_sent_is_created_after_a_restart(world: World) -> None:
    approval = await request_approval(world)
    rental_id = await _approved_then_killed(world, approval)
    assert not world.sim.instances
    assert await world.service.resume_creates() == 1
    [instance_id] = list(world.sim.instances)
    rental = await world.store.get_rental(rental_id)
    assert rental is not None and rental.instance_id == instance_id and rental.state == RentalState.PROVISIONING
    assert world.sim.instances[instance_id]["label"] == rental.label
    # A second start finds nothing left to resume: no double rent.
    assert await world.service.resume_creates() == 0 and len(world.sim.instances) == 1


async def test_an_approved_rental_whose_offer_went_away_meanwhile_is_closed_and_says_so(world: World) -> None:
    approval = await request_approval(world)
    rental_id = await _approved_then_killed(world, approval)
    world.sim.offers = [o for o in world.sim.offers if o["id"] != approval.payload["offer_id"]]
    assert await world.service.resume_creates() == 0
    assert not world.sim.instances
    rental = await world.store.get_rental(rental_id)
    assert rental is not None and rental.state == RentalState.CREATE_FAILED
    [state] = [e.payload for e in await world.store.events_for(rental_id) if e.kind == EV_STATE]
    assert "offer is gone" in state["reason"] and "/rent again" in state["reason"]

"""The rental-service world of the Discord-side tests: a real store and the Vast simulator on
loopback, on a FakeClock (no Discord); and the requester/approver ids."""

from __future__ import annotations

from dataclasses import dataclass

from bot.clock import FakeClock
from bot.db.models import Approval
from bot.db.store import Store
from bot.rentals import RentalService
from bot.sim.api import VastSim
from bot.sim.stage import StageSettings
from bot.watch.engine import WatchEngine

REQUESTER, APPROVER, OTHER = 1001, 2002, 3003


@dataclass
class World:
    clock: FakeClock
    sim: VastSim
    store: Store
    engine: WatchEngine
    service: RentalService
    settings: StageSettings


async def request_approval(world: World) -> Approval:
    """The cheapest offer requested by REQUESTER: the pending rent approval."""
    offers = await world.service.search(world.service.query())
    assert offers
    _, approval = await world.service.request(offers[0], requester_id=REQUESTER, requester_name="req")
    return approval

"""An offer whose VRAM Vast leaves out can still be requested: the quote says "unknown", not a crash."""

from __future__ import annotations

from tests.discord.helpers import REQUESTER, World


async def test_an_offer_without_gpu_ram_is_quoted_with_unknown_vram(world: World) -> None:
    for offer in world.sim.offers:
        offer.pop("gpu_ram", None)
    offers = await world.service.search(world.service.query())
    assert offers and offers[0].vram_gb is None
    _, approval = await world.service.request(offers[0], requester_id=REQUESTER, requester_name="req")
    stored = await world.store.get_approval(approval.id)
    assert stored is not None and stored.is_pending
    assert stored.payload["vram_gb"] is None
    assert stored.payload["offer_id"] == offers[0].id

"""Creating an instance: never blindly repeated, reconciled by label when the outcome is unclear."""

from __future__ import annotations

import pytest

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.vast import (
    VastClient,
    VastServerError,
    VastTransportError,
    VastUnavailableOffer,
)
from bot.vast.client import CREATE, LIST
from tests.vast.helpers import ClientFactory, drive

IMAGE = "vastai/comfyui:@vastai-automatic-tag"


def _cheapest_4090(sim: VastSim) -> int:
    return next(o["id"] for o in sim.offers if o["gpu_name"] == "RTX 4090" and o["geolocation"] == "HK")


def _with_label(sim: VastSim, label: str) -> list[int]:
    return [i for i, row in sim.instances.items() if row.get("label") == label]


async def test_a_create_whose_answer_is_lost_is_reconciled_not_duplicated(
    client: VastClient, sim: VastSim, clock: FakeClock
) -> None:
    sim.inject_fault("PUT", "/api/v0/asks/*", "drop_after_apply")
    instance_id = await drive(
        clock, client.create_instance(_cheapest_4090(sim), image=IMAGE, disk_gb=40, label="vastops:req-1")
    )
    assert _with_label(sim, "vastops:req-1") == [instance_id]
    assert len(sim.instances) == 1
    assert len(sim.requests_to(CREATE)) == 1, "the PUT was not repeated"
    assert sim.requests_to(CREATE)[0].status is None  # the answer really was lost
    # One label check before the PUT, one after the lost answer.
    assert len(sim.requests_to(LIST)) == 2


async def test_a_create_that_times_out_before_applying_rents_nothing(
    sim: VastSim, make_client: ClientFactory, clock: FakeClock
) -> None:
    client = make_client(sim.base_url, timeout=0.5, reconcile_checks=3, reconcile_interval=5.0)
    sim.inject_fault("PUT", "/api/v0/asks/{id}/", "timeout")
    start = clock.now()
    with pytest.raises(VastTransportError, match="nothing was rented") as caught:
        await drive(clock, client.create_instance(_cheapest_4090(sim), image=IMAGE, disk_gb=40, label="req-2"))
    assert caught.value.request_sent
    assert sim.instances == {}
    assert len(sim.requests_to(CREATE)) == 1
    assert len(sim.requests_to(LIST)) == 1 + 3  # the pre-check, then three reconcile checks
    assert clock.now() - start >= 10.0  # the checks were spaced on the clock


async def test_a_5xx_on_create_is_reconciled_not_retried(client: VastClient, sim: VastSim, clock) -> None:
    sim.inject_fault("PUT", "/api/v0/asks/*", "502", times=5)
    with pytest.raises(VastServerError) as caught:
        await drive(clock, client.create_instance(_cheapest_4090(sim), image=IMAGE, disk_gb=40, label="req-3"))
    assert caught.value.status == 502
    assert len(sim.requests_to(CREATE)) == 1
    assert sim.instances == {}


async def test_a_429_on_create_is_safe_to_retry(client: VastClient, sim: VastSim, clock: FakeClock) -> None:
    sim.inject_fault("PUT", "/api/v0/asks/*", "429_text")
    instance_id = await drive(
        clock, client.create_instance(_cheapest_4090(sim), image=IMAGE, disk_gb=40, label="req-4")
    )
    assert [r.status for r in sim.requests_to(CREATE)] == [429, 200]
    assert _with_label(sim, "req-4") == [instance_id]


async def test_an_existing_label_returns_that_instance(client: VastClient, sim: VastSim) -> None:
    existing = sim.seed_instance(label="req-5")
    assert await client.create_instance(_cheapest_4090(sim), image=IMAGE, disk_gb=40, label="req-5") == existing
    assert sim.requests_to(CREATE) == []
    assert len(sim.instances) == 1


async def test_a_taken_offer_is_unavailable(client: VastClient, sim: VastSim) -> None:
    offer_id = _cheapest_4090(sim)
    await client.create_instance(offer_id, image=IMAGE, disk_gb=40, label="req-6")
    with pytest.raises(VastUnavailableOffer, match="no_such_ask") as caught:
        await client.create_instance(offer_id, image=IMAGE, disk_gb=40, label="req-7")
    assert caught.value.status == 404
    with pytest.raises(VastUnavailableOffer):
        await client.create_instance(1, image=IMAGE, disk_gb=40, label="req-8")
    assert len(sim.instances) == 1


async def test_create_sends_the_documented_body(client: VastClient, sim: VastSim) -> None:
    env = {"-p 8188:8188": "1", "PROV_RUN_ID": "run-9"}
    instance_id = await client.create_instance(
        _cheapest_4090(sim), image=IMAGE, disk_gb=40, label="req-9", env=env, onstart="entrypoint.sh"
    )
    row = sim.instances[instance_id]
    assert row["extra_env"] == [["-p 8188:8188", "1"], ["PROV_RUN_ID", "run-9"]]
    assert row["onstart"] == "entrypoint.sh" and row["image_uuid"] == IMAGE
    assert row["disk_space"] == 40 and row["is_bid"] is False


@pytest.mark.parametrize("label", ["", "   ", "x" * 257])
async def test_create_needs_a_label(client: VastClient, sim: VastSim, label: str) -> None:
    with pytest.raises(ValueError, match="label"):
        await client.create_instance(_cheapest_4090(sim), image=IMAGE, disk_gb=40, label=label)
    assert sim.requests == []

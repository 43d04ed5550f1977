"""A create whose answer is lost and whose label cannot be looked up says so with its own error type,
so the caller keeps looking for the instance instead of calling the rental failed."""

from __future__ import annotations

from typing import Any

import pytest

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.vast import VastClient, VastServerError, VastTransportError
from bot.vast.client import CREATE, VastCreateOutcomeUnknown
from tests.vast.helpers import drive

IMAGE = "vastai/comfyui:@vastai-automatic-tag"


def _offer(sim: VastSim) -> int:
    return next(o["id"] for o in sim.offers if o["gpu_name"] == "RTX 4090")


async def test_a_lost_answer_whose_label_check_fails_is_an_unknown_outcome(
    client: VastClient, sim: VastSim, clock: FakeClock
) -> None:
    sim.inject_fault("PUT", "/api/v0/asks/*", "drop_after_apply")

    def on_create(row: dict[str, Any]) -> None:
        sim.inject_fault("GET", "/api/v1/instances/", "500")  # the look-up after the lost answer

    sim.on_create = on_create
    with pytest.raises(VastCreateOutcomeUnknown, match="check the account") as caught:
        await drive(clock, client.create_instance(_offer(sim), image=IMAGE, disk_gb=40, label="req-u1"))
    assert isinstance(caught.value, VastTransportError) and caught.value.endpoint == CREATE
    assert len(sim.instances) == 1  # the instance does exist: the caller must go on looking for it


async def test_a_failed_label_pre_check_is_not_an_unknown_outcome(
    client: VastClient, sim: VastSim, clock: FakeClock
) -> None:
    sim.inject_fault("GET", "/api/v1/instances/", "500")  # before the PUT: nothing was sent
    with pytest.raises(VastServerError) as caught:
        await drive(clock, client.create_instance(_offer(sim), image=IMAGE, disk_gb=40, label="req-u2"))
    assert not isinstance(caught.value, VastCreateOutcomeUnknown)
    assert sim.requests_to(CREATE) == [] and sim.instances == {}

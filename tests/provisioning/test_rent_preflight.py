"""The manifest preflight in the rent flow: the request carries a checklist for the chosen offer, the
approval message shows it within Discord's limits, the click re-checks and refuses an offer that cannot
run the manifest, and /rent's list hides such offers with the reason counted. Real SQLite store, the
Vast simulator and model hosts on loopback, no network."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.clock import FakeClock
from bot.db.store import Store
from bot.provisioning.checklist import disk_to_request, hide_incompatible
from bot.provisioning.preflight import preflight
from bot.provisioning.probes import ProbeCache
from bot.render import EMBED_FIELD_VALUE_LIMIT, Render, check_limits
from bot.rentals import DecisionResult, RentalService
from bot.sim.api import VastSim
from bot.sim.hub import FakeHub, HubFile, HubRepo
from bot.sim.stage import StageSettings
from bot.vast.client import NO_SPACING, VastClient
from bot.watch.engine import WatchEngine, WatchPolicy
from cogs.approvals import approval_reply
from tests.discord.helpers import APPROVER, REQUESTER, World
from tests.provisioning.helpers import WebServer
from tests.provisioning.stubs import SCRIPT

SDXL = "https://huggingface.co/stabilityai/sdxl/resolve/main/sd_xl_base_1.0.safetensors"
FLUX = "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"
NODES = " ".join(f"https://github.com/someone/Node{i}{'!' if i % 2 else ''}" for i in range(12))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """As tests/discord's world: a rental service over a real store and the Vast simulator."""
    clock = FakeClock()
    sim = VastSim(clock, api_key="k", logs_delay=0.0)
    base = await sim.start()
    settings = StageSettings(vast_backend="sim", database_path=tmp_path / "db.sqlite",
                             provision_script_url="https://example.org/provision.sh", approval_timeout=600,
                             self_approve_max_price=0.5, max_price_per_hour=5.0)
    store = await Store.open(settings.database_path)
    vast = VastClient(base, "k", clock=clock, min_spacing=NO_SPACING, reconcile_checks=1)
    engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings))
    service = RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine)
    try:
        yield World(clock, sim, store, engine, service, settings)
    finally:
        await engine.stop()
        await vast.aclose()
        await store.close()
        await sim.stop()


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    files = [HubFile(SDXL, size=7 * 1024**3), HubFile(FLUX, size=23 * 1024**3, gated=True)]
    repos = [HubRepo(f"https://github.com/someone/Node{i}", requirements="numpy\n") for i in range(12)]
    async with FakeHub(files, repos, hf_tokens=("hf_rehearsal",)) as server:
        yield server


def use(world: World, web: WebServer, hub: FakeHub, **overrides: Any) -> StageSettings:
    """The world's service with a loopback script, the given manifest, and the real preflight."""
    values = {**world.settings.model_dump(), "provision_script_url": web.add("/provision.sh", SCRIPT.read_bytes()),
              "hf_token": "hf_rehearsal", **overrides}
    settings = StageSettings(**values)
    world.service.settings = settings
    world.service.preflight = functools.partial(preflight, url_map=hub.url_map, cache=ProbeCache(world.clock))
    return settings


async def _request(world: World) -> tuple[Any, Any]:
    query = world.service.query()
    offers = await world.service.search(query)
    assert offers
    return await world.service.request(offers[0], requester_id=REQUESTER, requester_name="req", query=query)


async def test_the_request_carries_the_checklist_and_the_click_refuses_an_incompatible_offer(
        world: World, web: WebServer, hub: FakeHub) -> None:
    # Every simulator offer's driver runs CUDA 12.8 at most; this image needs 12.9.
    use(world, web, hub, docker_image="vastai/comfyui:v0.3.64-cuda-12.9-py312", provision_models=f"ckpt|{SDXL}")
    _, approval = await _request(world)
    items = {i["n"]: i for i in approval.payload["checklist"]}
    assert approval.payload["preflight_ok"] is False
    assert items["GPU/CUDA"]["s"] == "fail" and "CUDA 12.9 needs driver ≥ 575.51.03" in items["GPU/CUDA"]["d"]
    assert items["model sd_xl_base_1.0.safetensors"]["s"] == "ok" and items["disk"]["s"] == "ok"
    stored = await world.store.get_approval(approval.id)
    assert stored is not None and stored.payload["checklist"] == approval.payload["checklist"]

    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="appr",
                                          is_approver=True)
    assert decision.result == DecisionResult.PREFLIGHT_FAILED
    assert "GPU/CUDA" in decision.message and "575.51.03" in decision.message
    assert not world.sim.instances


async def test_a_compatible_offer_is_approved_and_rented(world: World, web: WebServer, hub: FakeHub) -> None:
    use(world, web, hub, docker_image="vastai/comfyui:v0.3.64-cuda-12.8-py312", provision_models=f"ckpt|{SDXL}")
    _, approval = await _request(world)
    assert approval.payload["preflight_ok"] is True, approval.payload["checklist"]
    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="appr",
                                          is_approver=True)
    assert decision.result == DecisionResult.APPROVED, decision.message
    assert len(world.sim.instances) == 1


async def test_a_gated_model_blocks_at_approval_with_nothing_rented(world: World, web: WebServer,
                                                                    hub: FakeHub) -> None:
    use(world, web, hub, provision_models=f"ckpt|{FLUX}")
    _, approval = await _request(world)
    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="appr",
                                          is_approver=True)
    assert decision.result == DecisionResult.PREFLIGHT_FAILED
    assert "gated" in decision.message and not world.sim.instances
    assert "hf_rehearsal" not in decision.message


async def test_the_approval_message_shows_the_checklist_within_discords_limits(
        world: World, web: WebServer, hub: FakeHub) -> None:
    # A big manifest: 12 nodes, a gated model, an incompatible image: every line cannot fit in one field.
    use(world, web, hub, docker_image="vastai/comfyui:v0.3.64-cuda-12.9-py312", provision_nodes=NODES,
        provision_models=f"ckpt|{SDXL} ckpt|{FLUX}")
    rental, approval = await _request(world)
    assert len(approval.payload["checklist"]) > 15
    reply = approval_reply(Render(), approval, rental, world.clock.now())
    embed = reply.embeds[0].to_dict()
    assert check_limits({"content": reply.content, "embeds": [embed]}) == []
    field = next(f for f in embed["fields"] if f["name"] == "Preflight")
    assert len(field["value"]) <= EMBED_FIELD_VALUE_LIMIT and not field.get("inline")
    lines = field["value"].splitlines()
    # Problems first, each with its fix; the passes collapse into a count.
    assert lines[0].startswith("⛔") and "→" in lines[0]
    assert any("flux1-dev" in line and "gated" in line for line in lines)
    assert any("GPU/CUDA" in line for line in lines)
    assert lines[-1].startswith("✅")


async def test_a_requote_keeps_the_checklist(world: World, web: WebServer, hub: FakeHub) -> None:
    use(world, web, hub, provision_models=f"ckpt|{SDXL}")
    _, approval = await _request(world)
    offer = world.sim.offer(int(approval.payload["offer_id"]))
    assert offer is not None
    offer["dph_base"] = float(offer["dph_base"]) + 0.2
    decision = await world.service.decide(approval.id, approve=True, user_id=APPROVER, user_name="appr",
                                          is_approver=True)
    assert decision.result == DecisionResult.REQUOTED
    assert decision.approval is not None and decision.approval.payload["checklist"] == approval.payload["checklist"]


async def test_rent_list_hides_offers_that_cannot_run_the_manifest(world: World, web: WebServer, hub: FakeHub) -> None:
    settings = use(world, web, hub, docker_image="vastai/comfyui:v0.3.64-cuda-12.9-py312")
    offers = await world.service.search(world.service.query())
    kept, why = await hide_incompatible(offers, settings, cache=ProbeCache(world.clock))
    assert kept == [] and why == f"{len(offers)} offers hidden: CUDA 12.9 needs driver ≥ 575.51.03"
    settings = use(world, web, hub, docker_image="vastai/comfyui:@vastai-automatic-tag")
    kept, why = await hide_incompatible(offers, settings, cache=ProbeCache(world.clock))
    assert kept == offers and why == ""


async def test_a_preflight_that_only_takes_settings_still_works(world: World, web: WebServer, hub: FakeHub) -> None:
    use(world, web, hub)
    calls: list[Any] = []

    async def legacy(settings: Any) -> Any:
        calls.append(settings)
        return await preflight(settings, url_map=hub.url_map, cache=ProbeCache(world.clock))

    world.service.preflight = legacy
    _, approval = await _request(world)
    assert calls and approval.payload["preflight_ok"] is True


async def test_a_preflight_that_crashes_leaves_a_warning_not_a_failed_request(world: World, web: WebServer,
                                                                              hub: FakeHub) -> None:
    use(world, web, hub)

    async def broken(settings: Any, **_: Any) -> Any:
        raise RuntimeError("boom")

    world.service.preflight = broken
    _, approval = await _request(world)
    assert approval.payload["checklist"][0]["s"] == "warn" and "RuntimeError" in approval.payload["checklist"][0]["d"]



async def test_rent_list_reads_the_torch_from_the_manifest_file(world: World, web: WebServer, hub: FakeHub) -> None:
    manifest = web.add("/manifest.txt", b"pip torch==2.8.0+cu129 --extra-index-url https://download.pytorch.org/whl/cu129\n")
    settings = use(world, web, hub, provision_manifest=manifest)
    offers = await world.service.search(world.service.query())
    kept, why = await hide_incompatible(offers, settings, cache=ProbeCache(world.clock))
    assert kept == [] and "CUDA 12.9 needs driver" in why and "/manifest.txt" in web.requests


async def test_rent_asks_for_a_disk_the_models_fit_in(world: World, web: WebServer, hub: FakeHub) -> None:
    settings = use(world, web, hub, disk_gb=20, provision_models=f"ckpt|{SDXL}")
    cache = ProbeCache(world.clock)
    # 7 GB of model + ~16 GB image + 5 GB margin: 28 GB, more than DISK_GB=20.
    assert await disk_to_request(settings, cache=cache, url_map=hub.url_map) == 28
    asked = len(hub.requests)
    roomy = use(world, web, hub, disk_gb=100, provision_models=f"ckpt|{SDXL}")
    assert await disk_to_request(roomy, cache=cache, url_map=hub.url_map) == 100
    assert len(hub.requests) == asked  # the model's size came from the cache
    assert await disk_to_request(use(world, web, hub, disk_gb=30), cache=cache) == 30
    # Searched and priced at that disk, the request's checklist passes the disk check.
    use(world, web, hub, disk_gb=20, provision_models=f"ckpt|{SDXL}")
    query = world.service.query(disk_gb=28)
    offer = (await world.service.search(query))[0]
    _, approval = await world.service.request(offer, requester_id=REQUESTER, requester_name="req", query=query)
    disk = next(i for i in approval.payload["checklist"] if i["n"] == "disk")
    assert disk["s"] == "ok" and "models 7.0 GB" in disk["d"] and "= 28 GB ≤ the request's disk 28 GB" in disk["d"]

"""The simulator itself: instance states on the clock, billing, filter semantics, spacing, hooks."""

from __future__ import annotations

import itertools

import httpx
import pytest

from bot.clock import FakeClock
from bot.sim.api import PUBLISHED_RATE_LIMITS, VastSim, geolocation_code
from bot.sim.catalog import default_catalogue
from bot.vast import DEFAULT_MIN_SPACING, OfferQuery, VastClient
from bot.vast.client import BUNDLES, GET_ONE, LIST
from tests.vast.helpers import SIM_KEY, ClientFactory, SimFactory, drive

AUTH = {"Authorization": f"Bearer {SIM_KEY}"}


async def _search(sim: VastSim, body: dict) -> list[dict]:
    async with httpx.AsyncClient(base_url=sim.base_url or "", headers=AUTH) as raw:
        response = await raw.post("/api/v0/bundles/", json=body)
    assert response.status_code == 200, response.text
    return response.json()["offers"]


async def test_instance_moves_null_created_loading_running_on_the_clock(
    client: VastClient, sim: VastSim, clock: FakeClock
) -> None:
    offer_id = next(o["id"] for o in sim.offers if o["geolocation"] == "HK")
    instance_id = await client.create_instance(offer_id, image="img", disk_gb=40, label="states")
    seen = []
    for step in (0.0, 2.0, 5.0, 30.0, 30.0):
        await clock.advance(step)
        instance = await client.get_instance(instance_id)
        assert instance is not None
        seen.append(instance.actual_status)
    assert seen == [None, "created", "loading", "loading", "running"]
    running = await client.get_instance(instance_id)
    assert running is not None and running.status_msg == "success, running img"
    assert running.ssh_endpoint() == (running.public_ipaddr, running.host_port(22))
    assert running.host_port(22) is not None and running.uptime_mins == pytest.approx(0.0)


async def test_update_instance_pins_status_and_sets_ssh_fields(client: VastClient, sim: VastSim, clock) -> None:
    instance_id = sim.seed_instance(label="pinned")
    sim.update_instance(instance_id, actual_status="running", ssh_host="127.0.0.1", ssh_port=2222, ports=None)
    instance = await client.get_instance(instance_id)
    assert instance is not None and instance.actual_status == "running"
    assert instance.ssh_endpoint() == ("127.0.0.1", 2222)
    sim.update_instance(instance_id, ports={"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "4022"}]},
                        public_ipaddr=" 127.0.0.2 ")  # fmt: skip
    instance = await client.get_instance(instance_id)
    assert instance is not None and instance.ssh_endpoint() == ("127.0.0.2", 4022)  # stripped, direct first
    await clock.advance(3600)
    sim.update_instance(instance_id, actual_status="exited", status_msg="OCI runtime create failed")
    instance = await client.get_instance(instance_id)
    assert instance is not None and (instance.actual_status, instance.status_msg) == (
        "exited", "OCI runtime create failed"
    )


async def test_billing_is_per_second_storage_always_gpu_while_running(
    client: VastClient, sim: VastSim, clock: FakeClock
) -> None:
    offer = next(o for o in sim.offers if o["geolocation"] == "HK")
    instance_id = await client.create_instance(offer["id"], image="img", disk_gb=72, label="bill")
    row = sim.instances[instance_id]
    storage_per_h = offer["storage_cost"] * 72 / 720
    assert row["storage_total_cost"] == pytest.approx(storage_per_h, abs=1e-6)
    assert row["dph_total"] == pytest.approx(offer["dph_base"] + storage_per_h, abs=1e-6)
    boot = sim.provisioning_delay + sim.created_to_loading + sim.loading_to_running
    await clock.advance(boot)
    assert sim.cost_of(instance_id) == pytest.approx(storage_per_h * boot / 3600)  # no GPU yet
    await clock.advance(3600)
    expected = storage_per_h * (boot + 3600) / 3600 + offer["dph_base"]
    assert sim.cost_of(instance_id) == pytest.approx(expected)
    assert (await client.current_user()).credit == pytest.approx(100.0 - expected, abs=1e-5)
    assert await drive(clock, client.destroy_instance(instance_id)) is True
    final = sim.cost_of(instance_id)
    await clock.advance(7200)
    assert sim.cost_of(instance_id) == pytest.approx(final), "destroy stops billing"
    assert sim.running_seconds(instance_id) == pytest.approx(3600, abs=1)


async def test_offer_filters_behave_like_vast(sim: VastSim) -> None:
    every = await _search(sim, {"limit": 1000})
    assert len(every) == len(sim.offers)
    # Numbers and booleans may arrive as strings, as the CLI sends them.
    two = await _search(sim, {"num_gpus": {"eq": "2"}, "limit": 100})
    assert two and all(o["num_gpus"] == 2 for o in two)
    band = await _search(sim, {"dph_total": {"gte": 0.2, "lt": 0.3}, "limit": 100})
    assert band and all(0.2 <= o["dph_total"] < 0.3 for o in band)
    not_4090 = await _search(sim, {"gpu_name": {"neq": "RTX 4090"}, "limit": 100})
    assert not_4090 and all(o["gpu_name"] != "RTX 4090" for o in not_4090)
    unverified = await _search(sim, {"verified": {"eq": "false"}, "limit": 100})
    assert [o["geolocation"] for o in unverified] == ["Utah, US"]
    only = await _search(sim, {"geolocation": {"in": ["SE", "JP"]}, "limit": 100})
    assert {o["geolocation"] for o in only} == {"Skane, SE", "Stockholm, SE", "Tokyo, JP", "Osaka, JP"}
    # notin compares codes only: full names and null slip through, as on Vast.
    kept = {o["geolocation"] for o in await _search(sim, {"geolocation": {"notin": ["CN", "UA"]}, "limit": 100})}
    assert {"Guangdong, China", "Kharkiv, Ukraine", None} <= kept and not kept & {"CN", "Kyiv, UA"}
    ordered = await _search(sim, {"order": [["reliability", "asc"], ["dph_total", "desc"]], "limit": 3})
    assert [o["reliability"] for o in ordered] == sorted(o["reliability"] for o in ordered)
    assert ordered[0]["geolocation"] == "Florida, US"
    machines = await _search(sim, {"machine_id": {"notin": [every[0]["machine_id"]]}, "limit": 100})
    assert len(machines) == len(every) - 1


async def test_an_unknown_operator_is_rejected(sim: VastSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url or "", headers=AUTH) as raw:
        response = await raw.post("/api/v0/bundles/", json={"gpu_name": {"like": "RTX%"}})
    assert response.status_code == 400 and response.json()["error"] == "invalid_args"


def test_geolocation_code_is_what_the_server_filter_sees() -> None:
    assert geolocation_code("Kyiv, UA") == "UA"
    assert geolocation_code("CN") == "CN"
    assert geolocation_code("Guangdong, China") is None
    assert geolocation_code(None) is None


def test_catalogue_covers_the_countries_and_is_fresh_each_call() -> None:
    rows = default_catalogue()
    assert 28 <= len(rows) <= 36
    countries = {geolocation_code(r["geolocation"]) for r in rows}
    assert {"US", "DE", "NL", "FR", "SE", "CA", "JP", "PL", "HK", "CN", "UA"} <= countries
    assert any(r["geolocation"] is None for r in rows)
    assert len({r["id"] for r in rows}) == len(rows) and len({r["machine_id"] for r in rows}) == len(rows)
    cheapest = sorted(rows, key=lambda r: r["dph_total"])[:5]
    assert sum(1 for r in cheapest if r["geolocation"] and ("CN" in r["geolocation"] or "Ukraine" in
               r["geolocation"] or "UA" in r["geolocation"] or "China" in r["geolocation"])) >= 3  # fmt: skip
    rows[0]["rented"] = True
    assert default_catalogue()[0]["rented"] is False


async def test_on_create_hook_sees_the_new_instance(client: VastClient, sim: VastSim) -> None:
    seen: list[dict] = []

    async def hook(row: dict) -> None:
        seen.append(row)
        sim.update_instance(row["id"], ssh_host="127.0.0.1", ssh_port=2200)

    sim.on_create = hook
    offer_id = next(o["id"] for o in sim.offers if o["geolocation"] == "HK")
    instance_id = await client.create_instance(offer_id, image="img", disk_gb=40, label="hooked")
    assert [r["id"] for r in seen] == [instance_id] and seen[0]["label"] == "hooked"
    instance = await client.get_instance(instance_id)
    assert instance is not None and (instance.ssh_host, instance.ssh_port) == ("127.0.0.1", 2200)


async def test_spacing_keeps_calls_apart_in_simulated_time(
    make_sim: SimFactory, make_client: ClientFactory, clock: FakeClock
) -> None:
    # The simulator enforces Vast's published thresholds: any call closer would get a 429.
    thresholds = PUBLISHED_RATE_LIMITS
    assert all(DEFAULT_MIN_SPACING[endpoint] >= limit for endpoint, limit in thresholds.items())
    sim = await make_sim(rate_limits=thresholds)
    client = make_client(sim.base_url, min_spacing=DEFAULT_MIN_SPACING)
    instance_id = sim.seed_instance(label="spaced")
    start = clock.now()

    async def burst() -> None:
        for _ in range(5):
            await client.list_instances()
            await client.get_instance(instance_id)
        await client.search_offers(OfferQuery())
        await client.search_offers(OfferQuery())

    await drive(clock, burst())
    assert all(r.status == 200 for r in sim.requests), [r.status for r in sim.requests]
    for endpoint, spacing in thresholds.items():
        if endpoint not in (LIST, GET_ONE, BUNDLES):
            continue
        times = [r.t for r in sim.requests_to(endpoint)]
        assert len(times) >= 2
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= DEFAULT_MIN_SPACING[endpoint] >= spacing
    assert clock.now() - start >= 4 * DEFAULT_MIN_SPACING[GET_ONE]


async def test_without_spacing_the_simulator_throttles(
    make_sim: SimFactory, make_client: ClientFactory, clock: FakeClock
) -> None:
    sim = await make_sim(rate_limits={LIST: 1.0})
    client = make_client(sim.base_url)  # spacing 0

    async def burst() -> None:
        for _ in range(3):
            await client.list_instances()

    await drive(clock, burst())
    assert 429 in [r.status for r in sim.requests_to(LIST)], "the retries absorbed them, but they happened"

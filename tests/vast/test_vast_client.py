"""The real Vast client against the simulator over loopback HTTP: each endpoint, paging, logs, secrecy."""

from __future__ import annotations

import logging

import httpx
import pytest

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.sim.catalog import CHINA_CHEAPEST_OFFER_ID, china_cheapest_catalogue
from bot.vast import (
    Instance,
    OfferQuery,
    VastClient,
    VastDestroyUnconfirmed,
    VastLogsNotReady,
    VastRequestRejected,
)
from bot.vast.client import GET_ONE, LIST, LOG_RESULT
from tests.vast.helpers import SIM_KEY, ClientFactory, SimFactory, drive

BAD_GEOLOCATIONS = {"Guangdong, China", "Beijing, China", "Kharkiv, Ukraine", "Sichuan, CN", "Kyiv, UA", "CN"}


async def _raw_offers(sim: VastSim, body: dict) -> list[dict]:
    async with httpx.AsyncClient(base_url=sim.base_url or "") as raw:
        response = await raw.post("/api/v0/bundles/", json=body, headers={"Authorization": f"Bearer {SIM_KEY}"})
    response.raise_for_status()
    return response.json()["offers"]


async def test_current_user_reports_credit(client: VastClient) -> None:
    user = await client.current_user()
    assert user.credit == pytest.approx(100.0)
    assert user.email == "operator@example.org"
    assert user.money_left == pytest.approx(100.0)


async def test_offers_from_excluded_countries_and_null_geolocation_never_come_back(
    client: VastClient, sim: VastSim
) -> None:
    query = OfferQuery(num_gpus=1, excluded_countries=["CN", "UA"], limit=100, verified=False)
    # The server-side filter alone lets full country names and null through...
    raw = await _raw_offers(sim, query.to_api_body())
    raw_geos = {o["geolocation"] for o in raw}
    assert {"Guangdong, China", "Beijing, China", "Kharkiv, Ukraine", None} <= raw_geos
    assert not raw_geos & {"CN", "Sichuan, CN", "Kyiv, UA"}
    # ...the client's post-filter is what stops them.
    offers = await client.search_offers(query)
    geos = {o.geolocation for o in offers}
    assert not geos & BAD_GEOLOCATIONS
    assert None not in geos
    assert {o.country for o in offers}.isdisjoint({"CN", "UA", None})
    assert {"HK", "Hong Kong, HK"} <= geos
    assert "California, United States" in geos  # a full name that is not excluded stays
    prices = [o.dph_total for o in offers]
    assert prices == sorted(prices)


async def test_excluded_countries_may_be_given_as_names(client: VastClient) -> None:
    query = OfferQuery(excluded_countries=["China", "ukraine", "hk"], limit=100, verified=False)
    assert query.excluded_countries == ["CN", "UA", "HK"]
    offers = await client.search_offers(query)
    assert offers
    assert {o.country for o in offers}.isdisjoint({"CN", "UA", "HK", None})


async def test_search_applies_every_filter_and_prices_the_disk(client: VastClient, sim: VastSim) -> None:
    ontario = next(o for o in sim.offers if o["geolocation"] == "Ontario, CA")
    query = OfferQuery(
        gpu_names=["RTX_4090"],
        min_vram_gb=24,
        max_dph=0.42,
        min_reliability=0.98,
        min_direct_ports=8,
        min_inet_down=500,
        disk_gb=80,
        excluded_machines=[ontario["machine_id"]],
    )
    offers = await client.search_offers(query)
    assert offers, "the catalogue has matching 4090s"
    for offer in offers:
        assert offer.gpu_name == "RTX 4090" and offer.num_gpus == 1
        assert offer.dph_total is not None and offer.dph_total <= 0.42
        assert (offer.reliability or 0) >= 0.98 and offer.verified
        assert (offer.direct_port_count or 0) >= 8 and (offer.inet_down or 0) >= 500
        assert offer.geolocation != "Ontario, CA"
        # dph_total includes 80 GB of storage at $0.15/GB/month, as Vast prices it.
        assert offer.dph_total == pytest.approx((offer.dph_base or 0) + 0.15 * 80 / 720, abs=1e-6)
    assert offers[0].geolocation == "HK"  # cheaper 4090s sit in UA, CN, nowhere or fail a filter
    assert {o.geolocation for o in offers}.isdisjoint({"Utah, US", "Florida, US", "Nevada, US"})


async def test_china_cheapest_catalogue_is_filtered_by_the_client(make_sim: SimFactory, make_client) -> None:
    sim = await make_sim(catalogue=china_cheapest_catalogue())
    client = make_client(sim.base_url)
    query = OfferQuery(gpu_names=["RTX 4090"], min_reliability=0.98)
    raw = await _raw_offers(sim, query.to_api_body())
    assert raw[0]["id"] == CHINA_CHEAPEST_OFFER_ID, "Vast's own filter would hand us the Chinese host first"
    offers = await client.search_offers(query)
    assert offers and CHINA_CHEAPEST_OFFER_ID not in {o.id for o in offers}
    assert offers[0].country == "HK"


async def test_create_get_list_destroy_round_trip(client: VastClient, sim: VastSim, clock: FakeClock) -> None:
    offers = await client.search_offers(OfferQuery(gpu_names=["RTX 4090"], min_reliability=0.98, disk_gb=60))
    offer = offers[0]
    instance_id = await client.create_instance(
        offer.id, image="vastai/comfyui:@vastai-automatic-tag", disk_gb=60, label="vastops:test:1",
        env={"-p 8188:8188": "1", "PROV_RUN_ID": "r1"}, onstart="entrypoint.sh",
    )
    assert sim.offer(offer.id)["rented"] is True
    got = await client.get_instance(instance_id)
    assert isinstance(got, Instance)
    assert got.label == "vastops:test:1" and got.machine_id == offer.machine_id
    assert got.dph_total == pytest.approx(offer.dph_total, abs=1e-6)
    assert got.image_runtype == "ssh_direc ssh_proxy"
    assert [i.id for i in await client.list_instances()] == [instance_id]
    assert (await client.find_by_label("vastops:test:1")).id == instance_id
    assert await client.find_by_label("vastops:test:other") is None
    # A second search no longer offers the rented machine.
    again = await client.search_offers(OfferQuery(gpu_names=["RTX 4090"], min_reliability=0.98, disk_gb=60))
    assert offer.id not in {o.id for o in again}

    assert await drive(clock, client.destroy_instance(instance_id)) is True
    assert await client.get_instance(instance_id) is None
    assert await client.list_instances() == []
    assert instance_id in sim.destroyed and not sim.instances
    assert sim.offer(offer.id)["rented"] is False


async def test_sixty_instances_are_listed_in_three_pages(client: VastClient, sim: VastSim) -> None:
    ids = [sim.seed_instance(label=f"vastops:seed:{n}") for n in range(60)]
    instances = await client.list_instances()
    assert [i.id for i in instances] == sorted(ids)
    assert client.stats[LIST] == 3
    assert len(sim.requests_to(LIST)) == 3
    assert all("after_token" in r.query for r in sim.requests_to(LIST)[1:])


async def test_get_of_unknown_or_destroyed_instance_is_none(client: VastClient, sim: VastSim, clock) -> None:
    assert await client.get_instance(999) is None
    instance_id = sim.seed_instance(label="gone")
    assert await drive(clock, client.destroy_instance(instance_id, confirm=False)) is True
    assert await client.get_instance(instance_id) is None
    # Destroying it again is not an error: it is gone either way.
    assert await drive(clock, client.destroy_instance(instance_id)) is True


async def test_destroy_polls_until_the_instance_is_gone(make_sim: SimFactory, make_client, clock) -> None:
    sim = await make_sim(destroy_delay=12.0)
    client = make_client(sim.base_url, destroy_poll_interval=5.0)
    instance_id = sim.seed_instance(label="slow-destroy", age=600)
    start = clock.now()
    assert await drive(clock, client.destroy_instance(instance_id)) is True
    assert clock.now() - start >= 12.0
    shows = sim.requests_to(GET_ONE)
    assert len(shows) >= 3 and shows[-1].t - shows[0].t >= 10.0
    assert instance_id in sim.destroyed


async def test_destroy_that_never_completes_raises(make_sim: SimFactory, make_client, clock) -> None:
    sim = await make_sim(destroy_delay=10_000.0)
    client = make_client(sim.base_url, destroy_confirm_timeout=60.0, destroy_poll_interval=5.0)
    instance_id = sim.seed_instance(label="stuck")
    with pytest.raises(VastDestroyUnconfirmed, match="still listed"):
        await drive(clock, client.destroy_instance(instance_id))
    # It repeated the DELETE while waiting, as the official self-test does.
    assert len(sim.requests_to("DELETE /api/v0/instances/{id}/")) >= 2


async def test_request_logs_polls_result_url_without_the_key(client: VastClient, sim: VastSim, clock) -> None:
    instance_id = sim.seed_instance(label="logs")
    sim.set_container_logs(instance_id, "".join(f"line {n}\n" for n in range(10)))
    text = await drive(clock, client.request_logs(instance_id, tail=3))
    assert text.splitlines() == ["line 7", "line 8", "line 9"]
    fetches = [r for r in sim.requests if r.path.startswith("/sim/instance_logs/")]
    assert [r.status for r in fetches][-1] == 200
    assert 403 in [r.status for r in fetches], "the log is not there at once; the client polled"
    assert not any(r.had_auth_header for r in fetches), "the key must not go to the log host"
    assert client.stats[LOG_RESULT] == len(fetches)


async def test_request_logs_from_a_callable(client: VastClient, sim: VastSim, clock) -> None:
    instance_id = sim.seed_instance(label="logs-callable")

    async def produce() -> str:
        return f"status is {sim.status_of(instance_id)}\n"

    sim.set_container_logs(instance_id, produce)
    assert (await drive(clock, client.request_logs(instance_id))).strip() == "status is created"  # read 2 s later


async def test_request_logs_gives_up_when_the_host_never_uploads(make_sim: SimFactory, make_client, clock) -> None:
    sim = await make_sim(logs_delay=10_000.0)
    client = make_client(sim.base_url, logs_timeout=30.0, logs_poll_interval=2.0)
    instance_id = sim.seed_instance(label="silent")
    with pytest.raises(VastLogsNotReady, match="did not upload"):
        await drive(clock, client.request_logs(instance_id))
    assert 10 <= client.stats[LOG_RESULT] <= 20


async def test_a_bad_pagination_token_is_a_rejected_request(client: VastClient, sim: VastSim) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url or "") as raw:
        response = await raw.get(
            "/api/v1/instances/", params={"after_token": "%%%"}, headers={"Authorization": f"Bearer {SIM_KEY}"}
        )
    assert response.status_code == 400 and response.json()["error"] == "invalid_token"
    with pytest.raises(VastRequestRejected, match="computed column"):
        await client.list_instances(select_filters={"dph_total": {"lte": 1}})


async def test_the_api_key_never_appears_in_urls_logs_or_reprs(
    client: VastClient, sim: VastSim, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.inject_fault("GET", "/api/v1/instances/", "429_json")
    sim.inject_fault("GET", "/api/v0/instances/*", "503")
    offers = await client.search_offers(OfferQuery(gpu_names=["RTX 3090"]))
    instance_id = await drive(
        clock, client.create_instance(offers[0].id, image="img", disk_gb=20, label="secret-check")
    )
    await drive(clock, client.list_instances())
    await drive(clock, client.get_instance(instance_id))
    await drive(clock, client.request_logs(instance_id))
    await client.current_user()
    await drive(clock, client.destroy_instance(instance_id))
    assert len(sim.requests) >= 10
    for request in sim.requests:
        assert SIM_KEY not in request.url
        assert "api_key" not in request.query
    api_calls = [r for r in sim.requests if r.path.startswith("/api/")]
    assert all(r.had_auth_header for r in api_calls)
    assert SIM_KEY not in caplog.text
    assert "HTTP Request" in caplog.text, "httpx did log the requests, only without the key"
    assert SIM_KEY not in repr(client)


async def test_client_accepts_a_secret_str_key(sim: VastSim, make_client: ClientFactory) -> None:
    from pydantic import SecretStr

    client = make_client(sim.base_url, SecretStr(SIM_KEY))
    assert (await client.current_user()).credit == pytest.approx(100.0)


def test_a_key_in_the_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="query string"):
        VastClient("https://console.vast.ai/?api_key=abc", None)


async def test_offer_ids_re_checks_one_quoted_offer(client: VastClient, sim: VastSim) -> None:
    quoted = (await client.search_offers(OfferQuery(gpu_names=["RTX 4090"], min_reliability=0.98)))[0]
    again = await client.search_offers(OfferQuery(offer_ids=[quoted.id], limit=5))
    assert [o.id for o in again] == [quoted.id]
    assert sim.requests[-1].endpoint == "POST /api/v0/bundles/"
    # An offer in an excluded country stays excluded even when asked for by id.
    china = next(o["id"] for o in sim.offers if o["geolocation"] == "Guangdong, China")
    assert await client.search_offers(OfferQuery(offer_ids=[china])) == []

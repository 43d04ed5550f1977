"""Retries, backoff on the injected clock, the retry budget, auth failures and transport errors."""

from __future__ import annotations

import socket

import pytest

from bot.clock import FakeClock
from bot.sim.api import VastSim
from bot.vast import (
    OfferQuery,
    VastAuthError,
    VastClient,
    VastRateLimited,
    VastServerError,
    VastTransportError,
)
from bot.vast.client import CURRENT_USER, LIST
from tests.vast.helpers import ClientFactory, SimFactory, drive


@pytest.mark.parametrize("kind", ["429_text", "429_json", "429_destroy"])
async def test_two_429s_then_success(kind: str, client: VastClient, sim: VastSim, clock: FakeClock) -> None:
    sim.seed_instance(label="one")
    sim.inject_fault("GET", "/api/v1/instances/", kind, times=2)  # type: ignore[arg-type]
    start = clock.now()
    instances = await drive(clock, client.list_instances())
    assert [i.label for i in instances] == ["one"]
    statuses = [r.status for r in sim.requests_to(LIST)]
    assert statuses == [429, 429, 200]
    assert clock.now() > start, "the backoff slept on the injected clock"
    assert client.stats[LIST] == 3


async def test_429_on_every_try_gives_rate_limited(client: VastClient, sim: VastSim, clock: FakeClock) -> None:
    sim.inject_fault("GET", "/api/v0/users/current/", "429_destroy", times=100)
    with pytest.raises(VastRateLimited) as caught:
        await drive(clock, client.current_user())
    assert caught.value.attempts == 4 and caught.value.status == 429
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("kind", ["502", "503", "504"])
async def test_5xx_until_the_budget_is_spent_gives_server_error(
    kind: str, client: VastClient, sim: VastSim, clock: FakeClock
) -> None:
    sim.inject_fault("GET", "/api/v1/instances/", kind, times=100)  # type: ignore[arg-type]
    with pytest.raises(VastServerError) as caught:
        await drive(clock, client.list_instances())
    err = caught.value
    assert err.status == int(kind) and err.attempts == 4
    assert len(sim.requests_to(LIST)) == 4
    assert "after 4 attempts" in str(err) and "GET /api/v1/instances/" in str(err)


async def test_a_502_then_success_is_transparent(client: VastClient, sim: VastSim, clock: FakeClock) -> None:
    sim.inject_fault("POST", "/api/v0/bundles/", "502")
    offers = await drive(clock, client.search_offers(OfferQuery()))
    assert offers
    assert [r.status for r in sim.requests_to("POST /api/v0/bundles/")] == [502, 200]


async def test_a_500_is_not_retried(client: VastClient, sim: VastSim, clock: FakeClock) -> None:
    sim.inject_fault("GET", "/api/v0/users/current/", "500", times=5)
    with pytest.raises(VastServerError) as caught:
        await drive(clock, client.current_user())
    assert caught.value.status == 500 and caught.value.attempts == 1
    assert len(sim.requests_to(CURRENT_USER)) == 1


async def test_the_total_retry_time_bounds_the_attempts(
    sim: VastSim, make_client: ClientFactory, clock: FakeClock
) -> None:
    client = make_client(sim.base_url, max_attempts=50, max_retry_time=30.0, backoff_initial=4.0, backoff_max=8.0)
    sim.inject_fault("GET", "/api/v1/instances/", "503", times=1000)
    start = clock.now()
    with pytest.raises(VastServerError) as caught:
        await drive(clock, client.list_instances())
    assert 2 <= caught.value.attempts < 50
    assert clock.now() - start <= 30.0


async def test_a_timeout_is_retried(sim: VastSim, make_client: ClientFactory, clock: FakeClock) -> None:
    client = make_client(sim.base_url, timeout=0.5)
    sim.inject_fault("GET", "/api/v0/users/current/", "timeout")
    user = await drive(clock, client.current_user())
    assert user.credit == pytest.approx(100.0)
    assert [r.status for r in sim.requests_to(CURRENT_USER)] == [None, 200]


async def test_timeouts_until_the_budget_is_spent(sim: VastSim, make_client: ClientFactory, clock) -> None:
    client = make_client(sim.base_url, timeout=0.5, max_attempts=2)
    sim.inject_fault("GET", "/api/v0/users/current/", "timeout", times=2)
    with pytest.raises(VastTransportError, match="no answer within") as caught:
        await drive(clock, client.current_user())
    assert caught.value.attempts == 2 and caught.value.request_sent


async def test_wrong_key_is_a_clear_auth_error(sim: VastSim, make_client: ClientFactory, clock) -> None:
    client = make_client(sim.base_url, "not-the-key")
    with pytest.raises(VastAuthError) as caught:
        await drive(clock, client.list_instances())
    err = caught.value
    assert err.status == 404 and err.code == "auth_error"  # Vast's quirk: 404, not 401
    assert "Invalid user key" in str(err) and "VAST_API_KEY" in str(err)
    assert "not-the-key" not in str(err)
    assert len(sim.requests_to(LIST)) == 1, "auth errors are not retried"
    with pytest.raises(VastAuthError):
        await client.current_user()
    # get_instance must not mistake Vast's auth 404 for "instance gone".
    with pytest.raises(VastAuthError):
        await client.get_instance(sim.seed_instance(label="x"))


async def test_missing_key(sim: VastSim, make_client: ClientFactory) -> None:
    client = make_client(sim.base_url, None)
    with pytest.raises(VastAuthError) as caught:
        await client.current_user()
    assert caught.value.status == 403
    assert "requires login" in str(caught.value) and "no VAST_API_KEY is set" in str(caught.value)
    assert not any(r.had_auth_header for r in sim.requests)
    # Offer search works anonymously, as on Vast.
    assert await client.search_offers(OfferQuery())


async def test_simulator_without_auth_needs_no_key(make_sim: SimFactory, make_client: ClientFactory) -> None:
    sim = await make_sim(api_key=None)
    client = make_client(sim.base_url, None)
    assert (await client.current_user()).credit == pytest.approx(100.0)


async def test_connection_refused_is_a_transport_error_after_retries(make_client: ClientFactory, clock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}")
    with pytest.raises(VastTransportError, match="could not connect") as caught:
        await drive(clock, client.list_instances())
    assert caught.value.attempts == 4 and not caught.value.request_sent
    assert client.stats[LIST] == 4

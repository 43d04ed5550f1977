"""Host history and the avoid list, cost samples, and the watch engine's resume state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.db import HostOutcome, Rental, Store

RentalFactory = Callable[..., Awaitable[Rental]]


async def test_host_history_and_machines_to_avoid(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    first = await store.record_host_outcome(
        machine_id=10, host_id=1, geolocation="Hong Kong, HK", outcome=HostOutcome.FAILED,
        reason="disk full at 40 GB", now=1000.0, rental_id=rental.id,
    )
    assert (first.machine_id, first.outcome, first.reason, first.ts, first.rental_id) == (
        10, "failed", "disk full at 40 GB", 1000.0, rental.id,
    )
    await store.record_host_outcome(
        machine_id=10, host_id=1, geolocation="Hong Kong, HK", outcome="failed", reason="again", now=3000.0
    )
    await store.record_host_outcome(
        machine_id=20, host_id=2, geolocation="Sweden, SE", outcome=HostOutcome.OK, reason=None, now=3000.0
    )
    await store.record_host_outcome(
        machine_id=30, host_id=3, geolocation=None, outcome=HostOutcome.FAILED, reason="ssh", now=500.0
    )
    await store.record_host_outcome(
        machine_id=5, host_id=4, geolocation="Norway, NO", outcome=HostOutcome.FAILED, reason="gpu", now=2000.0
    )
    assert await store.machines_to_avoid(since=0.0) == [5, 10, 30]
    assert await store.machines_to_avoid(since=1000.0) == [5, 10]
    assert await store.machines_to_avoid(since=2500.0) == [10]
    assert await store.machines_to_avoid(since=5000.0) == []
    history = await store.host_history(10)
    assert [h.reason for h in history] == ["again", "disk full at 40 GB"]
    assert [h.reason for h in await store.host_history(10, limit=1)] == ["again"]


async def test_cost_samples_latest_by_time(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    other = await new_rental()
    assert await store.latest_cost(rental.id) is None
    await store.add_cost_sample(rental.id, ts=100.0, dph=0.4, cost_usd=0.01)
    sample = await store.add_cost_sample(rental.id, ts=200.0, dph=0.4, cost_usd=0.02)
    await store.add_cost_sample(rental.id, ts=150.0, dph=0.4, cost_usd=0.015)  # late arrival
    await store.add_cost_sample(other.id, ts=999.0, dph=1.0, cost_usd=5.0)
    assert await store.latest_cost(rental.id) == sample
    assert (sample.rental_id, sample.ts, sample.dph, sample.cost_usd) == (rental.id, 200.0, 0.4, 0.02)


async def test_watch_state_upsert(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    assert await store.get_watch_state(rental.id) is None
    saved = await store.save_watch_state(
        rental.id, log_offset=0, log_path="/workspace/vastops/provision.log", host_key=None,
        ssh_endpoint="1.2.3.4:40022", data={"milestones": ["instance_created"], "noise": {}}, now=10.0,
    )
    assert saved.log_offset == 0 and saved.data["milestones"] == ["instance_created"]
    updated = await store.save_watch_state(
        rental.id, log_offset=4096, log_path="/workspace/vastops/provision.log",
        host_key="ssh-ed25519 AAAAC3Nza…", ssh_endpoint="1.2.3.4:40022",
        data={"milestones": ["instance_created", "ssh_ready"], "noise": {"platform_noise": 3},
              "last_growth_ts": 55.5},
        now=60.0,
    )
    assert await store.get_watch_state(rental.id) == updated
    assert (updated.log_offset, updated.host_key, updated.updated_at) == (4096, "ssh-ed25519 AAAAC3Nza…", 60.0)
    assert updated.data["noise"] == {"platform_noise": 3}

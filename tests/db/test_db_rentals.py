"""Rental repository methods: create, lookups, listing, updates, conditional transitions, autocomplete."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bot.db import (
    ACTIVE_STATES,
    OPEN_STATES,
    PRE_RENTAL_STATES,
    TERMINAL_STATES,
    IntegrityError,
    NotFoundError,
    Rental,
    RentalState,
    Store,
)

RentalFactory = Callable[..., Awaitable[Rental]]


def test_state_sets_partition_the_states() -> None:
    assert ACTIVE_STATES | PRE_RENTAL_STATES | TERMINAL_STATES == set(RentalState)
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert not ACTIVE_STATES & PRE_RENTAL_STATES
    assert not PRE_RENTAL_STATES & TERMINAL_STATES
    assert RentalState.FAILED in ACTIVE_STATES  # a failed instance bills until destroyed
    assert OPEN_STATES == set(RentalState) - TERMINAL_STATES


async def test_create_and_get_round_trip_every_field(store: Store) -> None:
    created = await store.create_rental(
        label="vastops-abc",
        requester_id=42,
        requester_name="Zoë",
        offer_id=777,
        quoted_dph=0.35,
        now=1_700_000_000.25,
        state=RentalState.AWAITING_APPROVAL,
        state_reason="waiting for an approver",
        machine_id=5,
        host_id=6,
        gpu_name="RTX 4090",
        num_gpus=2,
        dph_total=0.36,
        geolocation="Hong Kong, HK",
        instance_id=123456,
        request={"query": {"gpu": "RTX 4090", "max_dph": 0.5}, "note": "für Tests ✓"},
        started_at=None,
        comfyui_url="http://1.2.3.4:8188",
        tunnel_url="https://x.trycloudflare.com",
        status_channel_id=10,
        status_message_id=20,
    )
    assert created.id > 0
    assert created.state is RentalState.AWAITING_APPROVAL
    assert created.created_at == created.updated_at == 1_700_000_000.25
    assert isinstance(created.created_at, float)
    assert created.request["note"] == "für Tests ✓"
    assert created.ended_at is None
    assert await store.get_rental(created.id) == created
    assert await store.get_rental_by_label("vastops-abc") == created
    assert await store.get_rental_by_instance(123456) == created
    assert await store.get_rental(created.id + 1) is None
    assert await store.get_rental_by_label("nope") is None
    assert await store.get_rental_by_instance(1) is None


async def test_integral_timestamps_come_back_as_floats(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental(now=1000, quoted_dph=1)
    assert isinstance(rental.created_at, float) and isinstance(rental.quoted_dph, float)
    updated = await store.update_rental(rental.id, now=2000, started_at=1500)
    assert isinstance(updated.started_at, float) and isinstance(updated.updated_at, float)


async def test_duplicate_label_or_instance_raises(store: Store, new_rental: RentalFactory) -> None:
    await new_rental(label="dup", instance_id=1)
    with pytest.raises(IntegrityError):
        await new_rental(label="dup")
    with pytest.raises(IntegrityError):
        await new_rental(label="other", instance_id=1)
    # A failed insert leaves the store usable and the table unchanged.
    assert len(await store.list_rentals()) == 1


async def test_list_rentals_filters_newest_first(store: Store, new_rental: RentalFactory) -> None:
    a = await new_rental(requester_id=1, state=RentalState.READY)
    b = await new_rental(requester_id=2, state=RentalState.READY)
    c = await new_rental(requester_id=1, state=RentalState.DESTROYED)
    d = await new_rental(requester_id=1, state=RentalState.PROVISIONING)
    assert [r.id for r in await store.list_rentals()] == [d.id, c.id, b.id, a.id]
    assert [r.id for r in await store.list_rentals(limit=2)] == [d.id, c.id]
    assert [r.id for r in await store.list_rentals(requester_id=1)] == [d.id, c.id, a.id]
    assert [r.id for r in await store.list_rentals(states=[RentalState.READY])] == [b.id, a.id]
    assert [r.id for r in await store.list_rentals(states=ACTIVE_STATES, requester_id=1)] == [d.id, a.id]
    assert await store.list_rentals(states=[]) == []


async def test_active_rentals_are_those_that_may_bill(store: Store, new_rental: RentalFactory) -> None:
    by_state = {state: await new_rental(state=state) for state in RentalState}
    active = await store.active_rentals()
    assert {r.state for r in active} == set(ACTIVE_STATES)
    assert [r.id for r in active] == sorted(by_state[s].id for s in ACTIVE_STATES)


async def test_create_in_terminal_state_records_ended_at(new_rental: RentalFactory) -> None:
    rental = await new_rental(state=RentalState.DENIED, now=50.0)
    assert rental.ended_at == 50.0


async def test_update_rental_sets_allowed_fields_only(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental(now=100.0)
    updated = await store.update_rental(
        rental.id, now=200.0, instance_id=99, dph_total=0.5, started_at=150.0, request={"a": [1, 2]}
    )
    assert (updated.instance_id, updated.dph_total, updated.started_at) == (99, 0.5, 150.0)
    assert updated.request == {"a": [1, 2]}
    assert updated.updated_at == 200.0 and updated.created_at == 100.0
    assert await store.get_rental(rental.id) == updated

    touched = await store.update_rental(rental.id, now=300.0)
    assert touched.updated_at == 300.0

    for forbidden in ("state", "state_reason", "label", "id", "created_at", "updated_at", "bogus"):
        with pytest.raises(ValueError, match=forbidden):
            await store.update_rental(rental.id, now=400.0, **{forbidden: "x"})
    with pytest.raises(NotFoundError):
        await store.update_rental(rental.id + 100, now=400.0, gpu_name="x")
    assert (await store.get_rental(rental.id)) == touched


async def test_transition_is_conditional(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental(state=RentalState.AWAITING_APPROVAL, now=10.0)
    assert not await store.transition_rental(
        rental.id, to=RentalState.PROVISIONING, now=11.0, expected=[RentalState.CREATING]
    )
    unchanged = await store.get_rental(rental.id)
    assert unchanged is not None and unchanged.state is RentalState.AWAITING_APPROVAL
    assert unchanged.updated_at == 10.0

    assert await store.transition_rental(
        rental.id, to=RentalState.CREATING, now=12.0, expected=[RentalState.AWAITING_APPROVAL], reason="ok by bob"
    )
    moved = await store.get_rental(rental.id)
    assert moved is not None
    assert (moved.state, moved.state_reason, moved.updated_at, moved.ended_at) == (
        RentalState.CREATING,
        "ok by bob",
        12.0,
        None,
    )
    # Without expected it moves from anything; a missing rental is False, not an error.
    assert await store.transition_rental(rental.id, to=RentalState.DESTROYED, now=13.0, reason="gone")
    assert not await store.transition_rental(rental.id + 50, to=RentalState.DESTROYED, now=13.0)
    assert not await store.transition_rental(rental.id, to=RentalState.READY, now=14.0, expected=[])
    # ended_at is recorded on the first terminal state only.
    assert await store.transition_rental(rental.id, to=RentalState.EXPIRED, now=20.0)
    final = await store.get_rental(rental.id)
    assert final is not None and final.ended_at == 13.0 and final.state is RentalState.EXPIRED


async def test_racing_transitions_have_one_winner(db_path: Path) -> None:
    async with await Store.open(db_path) as one, await Store.open(db_path) as two:
        ids = [
            (
                await one.create_rental(
                    label=f"race-{i}", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0,
                    state=RentalState.AWAITING_APPROVAL,
                )
            ).id
            for i in range(50)
        ]
        for rental_id in ids:
            results = await asyncio.gather(
                one.transition_rental(
                    rental_id, to=RentalState.CREATING, now=2.0, expected=[RentalState.AWAITING_APPROVAL]
                ),
                two.transition_rental(
                    rental_id, to=RentalState.DENIED, now=2.0, expected=[RentalState.AWAITING_APPROVAL]
                ),
            )
            assert sum(r is not None for r in results) == 1
            final = await two.get_rental(rental_id)
            assert final is not None
            assert final.state is (RentalState.CREATING if results[0] else RentalState.DENIED)


async def test_autocomplete(store: Store, new_rental: RentalFactory) -> None:
    mine_a = await new_rental(label="vastops-4090-a", requester_id=1, state=RentalState.READY)
    mine_b = await new_rental(label="zz-vastops-4090-b", requester_id=1, state=RentalState.PROVISIONING)
    old = await new_rental(label="vastops-4090-old", requester_id=1, state=RentalState.DESTROYED)
    theirs = await new_rental(label="vastops-4090-c", requester_id=2, state=RentalState.READY)
    odd = await new_rental(label="odd_100%", requester_id=1, state=RentalState.READY)

    found = await store.search_rentals_for_autocomplete(1, "vastops")
    # Prefix matches first, then substring matches; terminal rentals and other users' are left out.
    assert [r.id for r in found] == [mine_a.id, mine_b.id]
    assert [r.id for r in await store.search_rentals_for_autocomplete(1, "VASTOPS-4090-B")] == [mine_b.id]
    assert [r.id for r in await store.search_rentals_for_autocomplete(1, "")] == [odd.id, mine_b.id, mine_a.id]
    assert [r.id for r in await store.search_rentals_for_autocomplete(1, "", limit=1)] == [odd.id]
    assert [r.id for r in await store.search_rentals_for_autocomplete(None, "4090-c")] == [theirs.id]
    # LIKE wildcards in the typed text are literal.
    assert [r.id for r in await store.search_rentals_for_autocomplete(1, "_100%")] == [odd.id]
    assert [r.id for r in await store.search_rentals_for_autocomplete(1, "%")] == [odd.id]
    assert await store.search_rentals_for_autocomplete(1, "o_d") == []
    found_old = await store.search_rentals_for_autocomplete(1, "vastops", states=[RentalState.DESTROYED])
    assert [r.id for r in found_old] == [old.id]


async def test_counts(store: Store, new_rental: RentalFactory) -> None:
    await new_rental(state=RentalState.READY)
    await new_rental(state=RentalState.READY)
    await new_rental(state=RentalState.DESTROYED)
    counts = await store.counts()
    assert counts.rentals_by_state == {RentalState.READY: 2, RentalState.DESTROYED: 1}
    assert counts.rentals == 3 and counts.active_rentals == 2

"""Approvals: at-most-once decisions across connections, expiry, requotes, message binding."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bot.db import Approval, ApprovalKind, ApprovalStatus, Rental, Store

RentalFactory = Callable[..., Awaitable[Rental]]


async def _approval(store: Store, *, now: float = 100.0, expires_at: float = 200.0, **kw: object) -> Approval:
    values: dict[str, object] = {
        "kind": ApprovalKind.RENT,
        "requester_id": 7,
        "payload": {"offer_id": 555, "quoted_dph": 0.4, "reason": "SDXL batch"},
        "now": now,
        "expires_at": expires_at,
    }
    values.update(kw)
    return await store.create_approval(**values)  # type: ignore[arg-type]


async def test_create_and_get(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    approval = await _approval(
        store, kind=ApprovalKind.TEARDOWN, rental_id=rental.id, default_action="destroy", channel_id=1
    )
    assert approval.status is ApprovalStatus.PENDING and approval.is_pending
    assert (approval.kind, approval.rental_id, approval.default_action, approval.revision) == (
        ApprovalKind.TEARDOWN,
        rental.id,
        "destroy",
        1,
    )
    assert (approval.created_at, approval.expires_at) == (100.0, 200.0)
    assert approval.payload["reason"] == "SDXL batch"
    assert await store.get_approval(approval.id) == approval
    assert await store.get_approval(approval.id + 1) is None
    assert await store.approvals_for_rental(rental.id) == [approval]


async def test_decide_once_records_who_and_when(store: Store) -> None:
    approval = await _approval(store)
    assert await store.decide_approval(
        approval.id, status=ApprovalStatus.APPROVED, by_id=9, by_name="bob", now=150.0, note="go"
    )
    assert not await store.decide_approval(
        approval.id, status=ApprovalStatus.DENIED, by_id=10, by_name="carol", now=151.0
    )
    decided = await store.get_approval(approval.id)
    assert decided is not None
    assert (decided.status, decided.decided_by, decided.decided_by_name, decided.decided_at, decided.decision_note) == (
        ApprovalStatus.APPROVED,
        9,
        "bob",
        150.0,
        "go",
    )
    assert not await store.decide_approval(
        approval.id + 99, status=ApprovalStatus.APPROVED, by_id=9, by_name="bob", now=150.0
    )


async def test_decide_refuses_expired_and_bad_status(store: Store) -> None:
    approval = await _approval(store, expires_at=200.0)
    # At the expiry instant the request is already expired.
    assert not await store.decide_approval(
        approval.id, status=ApprovalStatus.APPROVED, by_id=9, by_name="bob", now=200.0
    )
    assert (await store.get_approval(approval.id)).status is ApprovalStatus.PENDING  # type: ignore[union-attr]
    for bad in (ApprovalStatus.PENDING, ApprovalStatus.EXPIRED):
        with pytest.raises(ValueError):
            await store.decide_approval(approval.id, status=bad, by_id=9, by_name="bob", now=150.0)
    assert await store.decide_approval(
        approval.id, status=ApprovalStatus.CANCELLED, by_id=7, by_name="req", now=199.9
    )


async def test_two_connections_decide_at_most_once(db_path: Path) -> None:
    async with await Store.open(db_path) as one, await Store.open(db_path) as two:
        approvals = [await _approval(one) for _ in range(150)]
        wins = {"one": 0, "two": 0}
        for approval in approvals:
            results = await asyncio.gather(
                one.decide_approval(approval.id, status=ApprovalStatus.APPROVED, by_id=1, by_name="one", now=150.0),
                two.decide_approval(approval.id, status=ApprovalStatus.DENIED, by_id=2, by_name="two", now=150.0),
            )
            assert results.count(True) == 1, results
            winner = "one" if results[0] else "two"
            wins[winner] += 1
            stored = await two.get_approval(approval.id)
            assert stored is not None and stored.decided_by_name == winner
            assert stored.status is (ApprovalStatus.APPROVED if winner == "one" else ApprovalStatus.DENIED)


async def test_many_deciders_at_once_one_winner(db_path: Path) -> None:
    stores = [await Store.open(db_path) for _ in range(4)]
    try:
        approval = await _approval(stores[0])
        results = await asyncio.gather(
            *(
                stores[i % 4].decide_approval(
                    approval.id, status=ApprovalStatus.APPROVED, by_id=i, by_name=f"u{i}", now=150.0
                )
                for i in range(40)
            )
        )
        assert results.count(True) == 1
        winner = results.index(True)
        stored = await stores[1].get_approval(approval.id)
        assert stored is not None and stored.decided_by == winner
    finally:
        for s in stores:
            await s.close()


async def test_expire_due_approvals(store: Store) -> None:
    early = await _approval(store, expires_at=150.0)
    on_time = await _approval(store, expires_at=160.0)
    later = await _approval(store, expires_at=300.0)
    decided = await _approval(store, expires_at=150.0)
    assert await store.decide_approval(decided.id, status=ApprovalStatus.DENIED, by_id=1, by_name="x", now=120.0)

    assert await store.expire_due_approvals(140.0) == []
    expired = await store.expire_due_approvals(160.0)
    assert [a.id for a in expired] == [early.id, on_time.id]
    assert all(a.status is ApprovalStatus.EXPIRED and a.decided_at == 160.0 for a in expired)
    assert await store.expire_due_approvals(160.0) == []  # only once
    assert (await store.get_approval(decided.id)).status is ApprovalStatus.DENIED  # type: ignore[union-attr]
    assert [a.id for a in await store.pending_approvals()] == [later.id]
    # Once expired, a late click changes nothing.
    assert not await store.decide_approval(early.id, status=ApprovalStatus.APPROVED, by_id=1, by_name="x", now=159.0)


async def test_concurrent_expirers_split_the_work(db_path: Path) -> None:
    async with await Store.open(db_path) as one, await Store.open(db_path) as two:
        ids = {(await _approval(one, expires_at=150.0 + i)).id for i in range(60)}
        first, second = await asyncio.gather(one.expire_due_approvals(500.0), two.expire_due_approvals(500.0))
        got_first = {a.id for a in first}
        got_second = {a.id for a in second}
        assert not got_first & got_second
        assert got_first | got_second == ids


async def test_pending_approvals_filters_and_order(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    late_rent = await _approval(store, expires_at=400.0)
    soon_teardown = await _approval(store, kind=ApprovalKind.TEARDOWN, rental_id=rental.id, expires_at=150.0)
    done = await _approval(store, expires_at=120.0)
    await store.decide_approval(done.id, status=ApprovalStatus.APPROVED, by_id=1, by_name="x", now=110.0)
    assert [a.id for a in await store.pending_approvals()] == [soon_teardown.id, late_rent.id]
    assert [a.id for a in await store.pending_approvals(kind=ApprovalKind.RENT)] == [late_rent.id]
    assert [a.id for a in await store.pending_approvals(rental_id=rental.id)] == [soon_teardown.id]
    assert (await store.counts()).pending_approvals == 2


async def test_set_approval_message(store: Store) -> None:
    approval = await _approval(store)
    assert await store.set_approval_message(approval.id, 1234, 5678)
    stored = await store.get_approval(approval.id)
    assert stored is not None and (stored.channel_id, stored.message_id) == (1234, 5678)
    assert not await store.set_approval_message(approval.id + 1, 1, 2)


async def test_requote_bumps_revision_and_invalidates_old_buttons(store: Store) -> None:
    approval = await _approval(store, expires_at=200.0)
    requoted = await store.requote_approval(approval.id, {"offer_id": 555, "quoted_dph": 0.55}, 180.0, 480.0)
    assert requoted is not None
    assert (requoted.revision, requoted.expires_at, requoted.payload["quoted_dph"], requoted.status) == (
        2,
        480.0,
        0.55,
        ApprovalStatus.PENDING,
    )
    assert requoted.created_at == approval.created_at
    # A click carrying the old quote's revision is refused; the current one works.
    assert not await store.decide_approval(
        approval.id, status=ApprovalStatus.APPROVED, by_id=1, by_name="x", now=300.0, revision=1
    )
    assert await store.decide_approval(
        approval.id, status=ApprovalStatus.APPROVED, by_id=1, by_name="x", now=300.0, revision=2
    )


async def test_requote_only_from_allowed_statuses(store: Store) -> None:
    approval = await _approval(store)
    await store.decide_approval(approval.id, status=ApprovalStatus.APPROVED, by_id=1, by_name="x", now=150.0)
    assert await store.requote_approval(approval.id, {"q": 1}, 160.0, 400.0) is None
    again = await store.requote_approval(
        approval.id, payload={"q": 1}, now=160.0, expires_at=400.0,
        from_statuses=[ApprovalStatus.PENDING, ApprovalStatus.APPROVED],
    )
    assert again is not None and again.status is ApprovalStatus.PENDING and again.revision == 2
    assert (again.decided_at, again.decided_by, again.decided_by_name, again.decision_note) == (None,) * 4

    denied = await _approval(store)
    await store.decide_approval(denied.id, status=ApprovalStatus.DENIED, by_id=1, by_name="x", now=150.0)
    assert await store.requote_approval(
        denied.id, {"q": 1}, 160.0, 400.0, from_statuses=[ApprovalStatus.PENDING, ApprovalStatus.APPROVED]
    ) is None
    assert await store.requote_approval(denied.id, {"q": 1}, 160.0, 400.0, from_statuses=[]) is None


async def test_approval_for_unknown_rental_raises(store: Store) -> None:
    from bot.db import IntegrityError

    with pytest.raises(IntegrityError):
        await _approval(store, rental_id=4242)

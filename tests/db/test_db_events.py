"""Events: per-rental gap-free sequence numbers, the notifier's unposted queue, JSON payloads."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bot.db import IntegrityError, Rental, Store

RentalFactory = Callable[..., Awaitable[Rental]]


async def test_append_numbers_each_rental_from_one(store: Store, new_rental: RentalFactory) -> None:
    a = await new_rental()
    b = await new_rental()
    assert await store.last_seq(a.id) == 0
    first = await store.append_event(a.id, kind="milestone", payload={"name": "ssh_ready"}, ts=5.0)
    assert (first.rental_id, first.seq, first.ts, first.kind, first.posted_at) == (a.id, 1, 5.0, "milestone", None)
    assert first.payload == {"name": "ssh_ready"}
    await store.append_event(a.id, kind="finding", payload={}, ts=6.0)
    await store.append_event(b.id, kind="milestone", payload={}, ts=6.5)
    await store.append_event(a.id, kind="cost", payload={"usd": 0.12}, ts=7.0)
    assert [e.seq for e in await store.events_for(a.id)] == [1, 2, 3]
    assert [e.seq for e in await store.events_for(b.id)] == [1]
    assert await store.last_seq(a.id) == 3


async def test_events_for_filters(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    for i, kind in enumerate(["milestone", "finding", "milestone", "cost", "milestone"]):
        await store.append_event(rental.id, kind=kind, payload={"i": i}, ts=float(i))
    assert [e.seq for e in await store.events_for(rental.id, after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in await store.events_for(rental.id, kinds=["milestone"])] == [1, 3, 5]
    assert [e.seq for e in await store.events_for(rental.id, 1, ["milestone", "cost"])] == [3, 4, 5]
    assert [e.seq for e in await store.events_for(rental.id, limit=2)] == [1, 2]
    assert await store.events_for(rental.id, kinds=[]) == []


async def test_unknown_rental_is_a_foreign_key_violation(store: Store, new_rental: RentalFactory) -> None:
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        await store.append_event(12345, kind="x", payload={}, ts=1.0)
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        await store.add_cost_sample(12345, ts=1.0, dph=0.1, cost_usd=0.0)
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        await store.save_watch_state(
            12345, log_offset=0, log_path=None, host_key=None, ssh_endpoint=None, data={}, now=1.0
        )
    # Nothing half-written, and the store still works.
    assert await store.last_seq(12345) == 0
    rental = await new_rental()
    assert (await store.append_event(rental.id, kind="x", payload={}, ts=1.0)).seq == 1


async def test_unposted_queue_and_mark_posted(store: Store, new_rental: RentalFactory) -> None:
    a = await new_rental()
    b = await new_rental()
    # Interleave appends across rentals; the queue comes back in (rental_id, seq) order.
    for i in range(3):
        await store.append_event(b.id, kind="k", payload={"i": i}, ts=float(i))
        await store.append_event(a.id, kind="k", payload={"i": i}, ts=float(i))
    queue = await store.unposted_events()
    assert [(e.rental_id, e.seq) for e in queue] == [(a.id, 1), (a.id, 2), (a.id, 3), (b.id, 1), (b.id, 2), (b.id, 3)]
    assert [(e.rental_id, e.seq) for e in await store.unposted_events(limit=2)] == [(a.id, 1), (a.id, 2)]
    assert [e.seq for e in await store.unposted_events(rental_id=b.id)] == [1, 2, 3]

    assert await store.mark_posted([queue[0].id, queue[3].id, queue[3].id], now=50.0) == 2
    assert await store.mark_posted([queue[0].id], now=60.0) == 0  # already delivered: kept as is
    assert await store.mark_posted([], now=60.0) == 0
    assert [(e.rental_id, e.seq) for e in await store.unposted_events()] == [
        (a.id, 2),
        (a.id, 3),
        (b.id, 2),
        (b.id, 3),
    ]
    posted = (await store.events_for(a.id))[0]
    assert posted.posted_at == 50.0 and posted.posted
    assert (await store.counts()).unposted_events == 4


async def test_mark_posted_handles_more_ids_than_one_statement(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    async with store.transaction():
        events = [await store.append_event(rental.id, kind="k", payload={}, ts=1.0) for _ in range(1200)]
    assert await store.mark_posted((e.id for e in events), now=2.0) == 1200
    assert await store.unposted_events() == []


async def test_concurrent_appends_are_gap_free(db_path: Path) -> None:
    async with await Store.open(db_path) as one, await Store.open(db_path) as two:
        rental = await one.create_rental(
            label="busy", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
        )
        appends = [
            (one if i % 2 else two).append_event(rental.id, kind="tick", payload={"i": i}, ts=float(i))
            for i in range(200)
        ]
        results = await asyncio.gather(*appends)
        assert sorted(e.seq for e in results) == list(range(1, 201))
        stored = await two.events_for(rental.id)
        assert [e.seq for e in stored] == list(range(1, 201))
        assert sorted(e.payload["i"] for e in stored) == list(range(200))


UNICODE_PAYLOAD = {
    "text": "Zoë’s 🚀 run — 日本語, עברית, emoji 👩‍💻",
    "quote": 'a "quoted" \\ backslash',
    "nested": {"list": [1, 2.5, None, True, "ß"], "empty": {}},
    "control": "tab\tnewline\nnul\u0000end",
    "big": 2**62,
}


async def test_json_payload_round_trip_with_unicode(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        rental = await store.create_rental(
            label="ünï-côdé ✓",
            requester_id=1,
            requester_name="名前",
            offer_id=1,
            quoted_dph=0.1,
            now=1.0,
            request=UNICODE_PAYLOAD,
        )
        event = await store.append_event(rental.id, kind="finding", payload=UNICODE_PAYLOAD, ts=1.0)
        assert event.payload == UNICODE_PAYLOAD
    async with await Store.open(db_path) as store:
        again = await store.get_rental_by_label("ünï-côdé ✓")
        assert again is not None and again.requester_name == "名前"
        assert again.request == UNICODE_PAYLOAD
        assert (await store.events_for(again.id))[0].payload == UNICODE_PAYLOAD


async def test_payload_must_be_a_json_object(store: Store, new_rental: RentalFactory) -> None:
    rental = await new_rental()
    with pytest.raises(TypeError):
        await store.append_event(rental.id, kind="x", payload=["not", "a", "dict"], ts=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.append_event(rental.id, kind="x", payload={"nan": math.nan}, ts=1.0)
    assert await store.last_seq(rental.id) == 0

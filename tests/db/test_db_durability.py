"""Durability: transactions are all-or-nothing, state survives reopening, and a SIGKILLed writer
leaves a consistent database with gap-free event sequences."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

import bot
from bot.db import ApprovalKind, ApprovalStatus, RentalState, Store

REPO_ROOT = Path(bot.__file__).resolve().parent.parent


async def test_reopen_after_close_keeps_everything(db_path: Path) -> None:
    async with await Store.open(db_path) as store:
        rental = await store.create_rental(
            label="keep", requester_id=1, requester_name="a", offer_id=2, quoted_dph=0.3, now=1.0,
            request={"gpu": "A100"},
        )
        await store.transition_rental(rental.id, to=RentalState.READY, now=2.0, reason="up")
        rental = await store.update_rental(rental.id, now=3.0, instance_id=77, comfyui_url="http://x")
        event = await store.append_event(rental.id, kind="milestone", payload={"name": "comfyui_ready"}, ts=3.0)
        await store.mark_posted([event.id], now=4.0)
        approval = await store.create_approval(
            kind=ApprovalKind.TEARDOWN, requester_id=0, payload={"reason": "stall"}, now=5.0, expires_at=50.0,
            rental_id=rental.id, default_action="destroy",
        )
        await store.decide_approval(approval.id, status=ApprovalStatus.DENIED, by_id=3, by_name="c", now=6.0)
        host = await store.record_host_outcome(
            machine_id=9, host_id=8, geolocation="Sweden, SE", outcome="ok", reason=None, now=7.0, rental_id=rental.id
        )
        cost = await store.add_cost_sample(rental.id, ts=8.0, dph=0.3, cost_usd=0.0006)
        watch = await store.save_watch_state(
            rental.id, log_offset=10, log_path="/p.log", host_key="k", ssh_endpoint="h:1", data={"a": 1}, now=9.0
        )
        before = (
            await store.get_rental(rental.id),
            await store.events_for(rental.id),
            await store.get_approval(approval.id),
            await store.host_history(9),
            await store.latest_cost(rental.id),
            await store.get_watch_state(rental.id),
        )
    assert before[3] == [host] and before[4] == cost and before[5] == watch

    async with await Store.open(db_path) as store:
        after = (
            await store.get_rental(rental.id),
            await store.events_for(rental.id),
            await store.get_approval(approval.id),
            await store.host_history(9),
            await store.latest_cost(rental.id),
            await store.get_watch_state(rental.id),
        )
        assert after == before
        assert await store.unposted_events() == []
        assert await store.check_integrity() == []


async def test_transaction_is_all_or_nothing(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction():
            rental = await store.create_rental(
                label="half", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
            )
            await store.append_event(rental.id, kind="k", payload={}, ts=1.0)
            # Inside the transaction the task sees its own writes.
            assert (await store.get_rental_by_label("half")) is not None
            raise Boom
    assert await store.get_rental_by_label("half") is None
    assert (await store.counts()).events == 0

    async with store.transaction():
        rental = await store.create_rental(
            label="whole", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
        )
        async with store.transaction():  # nested: joins the outer transaction
            await store.append_event(rental.id, kind="k", payload={}, ts=1.0)
        await store.append_event(rental.id, kind="k", payload={}, ts=1.0)
    assert await store.last_seq(rental.id) == 2


async def test_other_tasks_do_not_see_an_open_transaction(store: Store) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        async with store.transaction():
            await store.create_rental(
                label="pending", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
            )
            entered.set()
            await release.wait()
            raise RuntimeError("roll back")

    task = asyncio.create_task(writer())
    await entered.wait()
    reader = asyncio.create_task(store.get_rental_by_label("pending"))
    await asyncio.sleep(0)
    assert not reader.done()  # waits for the transaction to end instead of reading its writes
    release.set()
    with pytest.raises(RuntimeError):
        await task
    assert await reader is None


async def test_cancelled_transaction_rolls_back_and_store_stays_usable(store: Store) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with store.transaction():
            await store.create_rental(
                label="cancelled", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
            )
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.get_rental_by_label("cancelled") is None
    rental = await store.create_rental(
        label="after", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
    )
    assert (await store.append_event(rental.id, kind="k", payload={}, ts=1.0)).seq == 1


async def test_cancelling_store_calls_never_leaves_a_transaction_open(store: Store) -> None:
    rental = await store.create_rental(
        label="c", requester_id=1, requester_name="a", offer_id=1, quoted_dph=0.1, now=1.0
    )
    # Cancel appends at every possible await point; each one either fully happened or not at all.
    for delay_steps in range(12):
        task = asyncio.create_task(store.append_event(rental.id, kind="k", payload={}, ts=1.0))
        for _ in range(delay_steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    seqs = [e.seq for e in await store.events_for(rental.id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert (await store.append_event(rental.id, kind="k", payload={}, ts=2.0)).seq == len(seqs) + 1


# A writer that never stops: each loop commits one multi-row unit (a rental with five events, a
# cost sample, watch state and a state change) and then one single-row event on a shared "log"
# rental. It prints "done i" after both commits and, in big units, "inside i" in the middle of the
# transaction, so the test can aim its SIGKILL there.
BIG = 4

WRITER = r"""
import asyncio, sys
from bot.db import RentalState, Store
BIG = int(sys.argv[2])

async def main(path):
    store = await Store.open(path)
    log = await store.get_rental_by_label("log")
    if log is None:
        log = await store.create_rental(label="log", requester_id=0, requester_name="w", offer_id=0,
                                        quoted_dph=0.0, now=0.0)
    i = len(await store.list_rentals(limit=1_000_000)) - 1  # units already written, "log" excluded
    print("ready", flush=True)
    while True:
        i += 1
        async with store.transaction():
            r = await store.create_rental(label=f"w{i}", requester_id=1, requester_name="w", offer_id=i,
                                          quoted_dph=0.1, now=float(i), request={"i": i, "pad": "x" * 2000})
            for k in range(5):
                # Every BIG-th unit is larger than SQLite's page cache, so its pages spill into the
                # WAL before COMMIT: a kill then leaves uncommitted frames that recovery must ignore.
                pad = "é" * (1_600_000 if i % BIG == 0 and k == 0 else 500)
                await store.append_event(r.id, kind="step", payload={"k": k, "i": i, "pad": pad},
                                         ts=float(i))
                if i % BIG == 0 and k == 0:
                    # Tell the test we are inside the transaction with spilled pages, and linger
                    # there so its SIGKILL lands before COMMIT.
                    print("inside", i, flush=True)
                    await asyncio.sleep(0.05)
            await store.add_cost_sample(r.id, ts=float(i), dph=0.1, cost_usd=0.001 * i)
            await store.save_watch_state(r.id, log_offset=i * 10, log_path="/p.log", host_key="k",
                                         ssh_endpoint="h:1", data={"i": i}, now=float(i))
            assert await store.transition_rental(r.id, to=RentalState.READY, now=float(i),
                                                 expected=[RentalState.REQUESTED])
        await store.append_event(log.id, kind="tick", payload={"i": i}, ts=float(i))
        print("done", i, flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def _run_writer_and_kill(path: Path, commits_before_kill: int) -> int:
    """Start the writer, let it finish at least ``commits_before_kill`` loops, then SIGKILL it in the
    middle of its next big transaction; return the last loop it reported done."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), str(BIG), cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    last = 0
    seen = 0
    try:
        # The timeout only guards against a hung writer; nothing here measures speed.
        async with asyncio.timeout(60):
            assert (await proc.stdout.readline()).strip() == b"ready"
            while True:
                line = await proc.stdout.readline()
                if not line:
                    assert proc.stderr is not None
                    raise AssertionError(f"writer died: {(await proc.stderr.read()).decode()[-2000:]}")
                what, number = line.split()
                if what == b"done":
                    last = int(number)
                    seen += 1
                elif seen >= commits_before_kill:
                    break  # "inside": the writer is in the middle of a big transaction
    finally:
        proc.kill()  # SIGKILL: no cleanup, no rollback, no checkpoint
        await proc.wait()
    assert proc.returncode == -9
    return last


def _check_consistent(path: Path, last_reported: int) -> int:
    """Check the killed writer's database with a plain sqlite3 connection; return the rentals found."""
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        raw.execute("PRAGMA foreign_keys = ON")
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []

        # Every event sequence is 1..n without gaps or duplicates.
        for rental_id, n, lo, hi, distinct in raw.execute(
            "SELECT rental_id, count(*), min(seq), max(seq), count(DISTINCT seq) FROM events GROUP BY rental_id"
        ):
            assert (lo, hi, distinct) == (1, n, n), f"rental {rental_id}: seqs not 1..{n}"

        # Every committed multi-row unit is complete: nothing half-written survived the kill.
        units = raw.execute(
            "SELECT r.id, r.label, r.state,"
            " (SELECT count(*) FROM events e WHERE e.rental_id = r.id),"
            " (SELECT count(*) FROM cost_samples c WHERE c.rental_id = r.id),"
            " (SELECT log_offset FROM watch_state w WHERE w.rental_id = r.id)"
            " FROM rentals r WHERE r.label != 'log' ORDER BY r.id"
        ).fetchall()
        for _id, label, state, events, costs, offset in units:
            i = int(label[1:])
            assert (state, events, costs, offset) == ("ready", 5, 1, i * 10), label
        labels = [int(u[1][1:]) for u in units]
        assert labels == list(range(1, len(labels) + 1))

        # Everything the writer reported as committed is there; the unit it was killed in is
        # either wholly there or wholly absent (checked above).
        assert len(labels) in (last_reported, last_reported + 1)
        (ticks,) = raw.execute(
            "SELECT count(*) FROM events WHERE rental_id = (SELECT id FROM rentals WHERE label = 'log')"
        ).fetchone()
        assert ticks >= last_reported
        # The log tick is committed after its unit, so there is never a tick without its unit.
        assert ticks <= len(labels)
        return len(labels)


async def test_sigkilled_writer_leaves_a_consistent_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    # Several kills on the same file, at different points, each followed by recovery and more writes.
    for commits in (6, 14, 3, 9):
        last = await _run_writer_and_kill(db_path, commits)
        assert last > total  # the writer resumed from what survived
        total = _check_consistent(db_path, last)
        async with await Store.open(db_path) as store:
            assert await store.check_integrity() == []
            log = await store.get_rental_by_label("log")
            assert log is not None
            assert await store.last_seq(log.id) == len(await store.events_for(log.id))

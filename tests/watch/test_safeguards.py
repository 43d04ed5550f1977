"""The money safeguards in bad weather: a database that cannot be written, a Vast that fails or
answers oddly, a skewed clock, a hung Discord, many SSH-less rentals, secrets in container logs.

Everything is driven from outside: the Vast simulator over loopback HTTP (behind a fault proxy
for answers the simulator does not give), a real asyncssh server per instance, a real SQLite file
locked by another connection, and a FakeClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bot.db.models import RentalState
from bot.watch.engine import EV_DECISION, EV_FINDING, EV_INFO, EV_PROPOSAL, EV_RECEIPT
from tests.watch.helpers import (
    POLL,
    SECRET,
    Rig,
    bare_404,
    ev,
    kinds,
    make_rig,
    malformed,
    null_instances,
    revoked_key,
    unavailable,
    unknown_key,
)

ORPHAN_TEXT = "carries this rental's label"
DISK_FULL = "OSError: [Errno 28] No space left on device\n"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in make_rig(tmp_path):
        yield r


class Lock:
    """Another connection takes the write lock: every write of the bot fails ("database is locked")."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.other: sqlite3.Connection | None = None

    def take(self) -> None:
        self.other = sqlite3.connect(self.db_path, isolation_level=None, timeout=0.1)
        self.other.execute("BEGIN EXCLUSIVE")

    def free(self) -> None:
        if self.other is not None:
            self.other.execute("ROLLBACK")
            self.other.close()
            self.other = None


@contextmanager
def locked(db_path: Path) -> Iterator[None]:
    lock = Lock(db_path)
    lock.take()
    try:
        yield
    finally:
        lock.free()


def orphan_posts(events: list) -> list[dict]:
    return [f for f in kinds(events, EV_FINDING) if ORPHAN_TEXT in str(f.get("text"))]


def db_alerts(rig: Rig) -> list[str]:
    return [a for a in rig.notifier.alerts if "database unwritable" in a.lower()]


# ---------------------------------------------------------------------- 1 + 2: the database fails
@pytest.mark.parametrize("destroy_fails", [False, True])
async def test_a_failed_write_at_a_deadline_decision_does_not_disarm_the_rental(rig: Rig, destroy_fails: bool) -> None:
    """Item 1: the decision poll cannot write; after the lock is gone and a restart, the rental is
    still destroyed (the unrecorded decision was not taken as made). With ``destroy_fails`` the
    destroy sent at that poll fails too, so only the retried decision can stop the spending."""
    await rig.open_engine(provision_deadline=120.0)
    rental, iid = await rig.rent()
    await rig.poll(7)  # 105 s: running, nothing decided yet
    assert await rig.state(rental.id) in (RentalState.PROVISIONING, RentalState.READY)
    lock = Lock(rig.db_path)
    # 120 s: the deadline passes. The database fails from the moment the poll lists the account,
    # so the first write to fail is the decision's (no cost sample is due at this poll).
    rig.proxy.before("GET", "/api/v1/instances/", lock.take, times=1)
    if destroy_fails:
        rig.proxy.add("DELETE", "/api/v0/instances/*", unavailable, times=1)
    try:
        await rig.poll()
    finally:
        lock.free()
    await rig.poll()  # the database is writable again
    await rig.restart(provision_deadline=120.0)
    await rig.poll(8)
    assert rig.destroys(iid) >= 1 and not rig.live(iid)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_RECEIPT)) == 1 and len(kinds(events, EV_DECISION)) == 1
    assert len(db_alerts(rig)) == 1  # the write at the decision did fail


async def test_while_the_database_is_locked_the_dollar_cap_still_stops_spending(rig: Rig) -> None:
    """Items 1 and 2: the cap is crossed during two locked minutes; the destroy reaches Vast anyway,
    one "database unwritable" alert and one recovery note are posted, and after a restart and an
    hour more nothing has billed past the cap (plus one poll of billing)."""
    cap = 0.01
    await rig.open_engine(rental_dollar_cap=cap, provision_deadline=10_000.0, comfyui_ready_deadline=10_000.0)
    rental, iid = await rig.rent()
    dph = rig.sim.instances[iid]["dph_total"]
    crossing = cap / dph * 3600  # seconds of billing until the cap
    while rig.clock.now() - rental.created_at < crossing - 3 * POLL:
        await rig.poll()
    assert rig.destroys(iid) == 0
    with locked(rig.db_path):
        await rig.poll(8)  # 2 minutes locked, across the cap
        assert rig.destroys(iid) >= 1 and not rig.live(iid)  # spending stopped without the database
    await rig.poll(10)  # the recovery is said once writes have held for a while
    assert len(db_alerts(rig)) == 1
    assert len([a for a in rig.notifier.alerts if "writable again" in a.lower()]) == 1
    await rig.restart(rental_dollar_cap=cap, provision_deadline=10_000.0, comfyui_ready_deadline=10_000.0)
    await rig.poll(240)  # one more hour
    assert rig.sim.cost_of(iid) <= cap + dph * 2 * POLL / 3600
    assert await rig.state(rental.id) == RentalState.DESTROYED
    assert len(kinds(await rig.events(rental.id), EV_RECEIPT)) == 1


async def test_a_fatal_finding_while_the_database_is_locked_still_destroys(rig: Rig) -> None:
    """Item 2: the teardown is not behind a bookkeeping write."""
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + DISK_FULL)
    with locked(rig.db_path):
        await rig.poll(2)
        assert rig.destroys(iid) >= 1 and not rig.live(iid)
        assert len(db_alerts(rig)) == 1
    await rig.poll(3)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_RECEIPT)) == 1 and len(kinds(events, EV_DECISION)) == 1
    assert len(db_alerts(rig)) == 1


# ---------------------------------------------------------------------- 3: the instance list fails
@pytest.mark.parametrize(("answer", "says"), [
    (revoked_key, "api key"),
    (unknown_key, "api key"),
    (unavailable, "unreachable"),
    (malformed, "malformed"),
])
async def test_a_failing_instance_list_is_alerted_once_and_a_missed_deadline_acts_when_vast_answers(
        rig: Rig, answer, says: str) -> None:
    await rig.open_engine(provision_deadline=300.0, comfyui_ready_deadline=10_000.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rule = rig.proxy.add("*", "/api/*", answer, times=10_000)  # Vast is out for every call
    await rig.poll(2)
    assert rig.notifier.alerts == []  # two failed polls: maybe a blip
    await rig.poll()
    assert len(rig.notifier.alerts) == 1
    alert = rig.notifier.alerts[0].lower()
    assert says in alert
    if answer not in (revoked_key, unknown_key):
        assert "key" not in alert  # Vast down is not a key problem
    hits = rule.hits
    await rig.poll(20)  # 5 more minutes out: the provisioning deadline passes meanwhile
    assert rule.hits > hits + 15  # still retrying every poll
    assert len(rig.notifier.alerts) == 1
    assert rig.live(iid)
    rig.proxy.clear()
    await rig.poll()  # Vast answers: the overdue rental is destroyed at once
    assert rig.destroys(iid) >= 1 and not rig.live(iid)
    await rig.poll(2)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    assert any("again" in a for a in rig.notifier.alerts[1:])


# ---------------------------------------------------------------------- 4: a bare 404 proves nothing
async def test_a_null_list_and_a_bare_404_do_not_make_a_healthy_instance_gone(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1))
    await rig.poll()
    rig.proxy.add("GET", "/api/v1/instances/", null_instances, times=1)
    rig.proxy.add("GET", "/api/v0/instances/*", bare_404, times=3)
    await rig.poll(4)
    events = await rig.events(rental.id)
    assert kinds(events, EV_RECEIPT) == [] and orphan_posts(events) == []
    assert rig.destroys(iid) == 0 and rig.live(iid)
    assert await rig.state(rental.id) not in (RentalState.DESTROYED, RentalState.TEARING_DOWN)
    assert rental.id in rig.engine.watches  # type: ignore[union-attr]


async def test_two_null_lists_and_a_bare_404_do_not_make_a_healthy_instance_gone(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(5)
    rig.proxy.add("GET", "/api/v1/instances/", null_instances, times=2)
    rig.proxy.add("GET", "/api/v0/instances/*", bare_404, times=1)
    await rig.poll(4)
    events = await rig.events(rental.id)
    assert kinds(events, EV_RECEIPT) == [] and orphan_posts(events) == []
    assert rig.destroys(iid) == 0 and rig.live(iid)


async def test_a_bare_404_on_destroy_is_not_confirmed_gone(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.proxy.add("DELETE", "/api/v0/instances/*", bare_404, times=1)
    rig.proxy.add("GET", "/api/v0/instances/*", bare_404, times=1)
    await rig.engine.destroy(rental.id, reason="user asked", by="ada")  # type: ignore[union-attr]
    if await rig.state(rental.id) == RentalState.DESTROYED:
        assert not rig.live(iid), "the rental was closed while its instance still bills"
    assert kinds(await rig.events(rental.id), EV_RECEIPT) == [] or not rig.live(iid)
    await rig.poll(4)  # the watch resends the destroy; the list confirms it
    assert not rig.live(iid)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    assert len(kinds(await rig.events(rental.id), EV_RECEIPT)) == 1


# ---------------------------------------------------------------------- 6: clock skew
async def test_a_host_clock_ahead_of_vast_does_not_kill_a_young_instance(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    rig.sim.update_instance(iid, start_date=rig.clock.now() - 45 * 60)  # Vast's clock 45 min behind
    await rig.poll(3)  # 45 s old
    events = await rig.events(rental.id)
    assert kinds(events, EV_DECISION) == [] and rig.destroys(iid) == 0 and rig.live(iid)
    await rig.poll(8)
    events = await rig.events(rental.id)
    assert kinds(events, EV_DECISION) == [] and rig.live(iid)
    skews = [i for i in kinds(events, EV_INFO) if "clock" in i["text"].lower()]
    assert len(skews) == 1


# ---------------------------------------------------------------------- 7: a hung Discord
async def test_a_hung_notifier_never_delays_a_poll_or_a_teardown(rig: Rig) -> None:
    rig.pump = False  # delivery is the deliverer's business, not the poll's
    rig.notifier.hold = True
    await rig.open_engine()
    rental, iid = await rig.rent()
    engine = rig.engine
    assert engine is not None
    stuck: asyncio.Task[object] | None = None
    for _ in range(5):
        await rig.clock.advance(POLL)
        # A guard against a hang, not a timing figure: a poll over loopback takes milliseconds.
        await asyncio.wait_for(engine.tick(), timeout=20)
        if stuck is None:
            stuck = asyncio.create_task(engine.pump())  # a delivery in progress, hung on Discord
    rig.append(iid, ev("run.start", seq=1) + DISK_FULL)
    for _ in range(3):
        await rig.clock.advance(POLL)
        await asyncio.wait_for(engine.tick(), timeout=20)
    assert rig.notifier.hung >= 1 and rig.notifier.delivered == []
    assert not rig.live(iid)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    rig.notifier.release.set()  # Discord answers again
    assert stuck is not None
    await stuck
    engine.outbox.start()  # the deliverer task delivers the rest, in order
    stored = await rig.events(rental.id)
    for _ in range(500):
        if len(rig.notifier.delivered) >= len(stored):
            break
        await asyncio.sleep(0.01)
    assert [e.seq for e in rig.notifier.delivered] == [e.seq for e in stored]


# ---------------------------------------------------------------------- 10 + 13: container-log fallback
async def ssh_less_rentals(rig: Rig, n: int) -> list[int]:
    rig.refuse_forever = True
    ids = []
    for _ in range(n):
        _, iid = await rig.rent()
        rig.sim.set_container_logs(iid, "booting\n" + ev("run.start", seq=1) + f"HF_TOKEN={SECRET}\n"
                                   f"downloading with token {SECRET}\n")
        ids.append(iid)
    return ids


async def test_the_container_log_fallback_is_bounded_per_poll(rig: Rig) -> None:
    await rig.open_engine(ssh_boot_grace=60.0, ssh_ready_deadline=10_000.0)
    await ssh_less_rentals(rig, 24)
    per_poll = []
    for _ in range(14):
        before = rig.log_reads()
        await rig.poll()
        per_poll.append(rig.log_reads() - before)
    assert sum(per_poll) > 0  # the fallback does run
    assert max(per_poll) <= 10, per_poll
    # Steady state (after the first read of each): about one read per rental every few polls.
    assert sum(per_poll[-8:]) <= 24 * 8 / 3, per_poll


async def test_the_container_log_fallback_stores_nothing_unredacted(rig: Rig) -> None:
    await rig.open_engine(ssh_boot_grace=60.0, ssh_ready_deadline=10_000.0)
    ids = await ssh_less_rentals(rig, 2)
    await rig.poll(16)
    assert rig.log_reads() >= len(ids)  # the secret was read from Vast
    await rig.close_engine()
    with sqlite3.connect(rig.db_path) as db:
        states = [row[0] or "" for row in db.execute("SELECT data FROM watch_state")]
        dump = "\n".join(db.iterdump())
    assert states and any("booting" in s for s in states)  # the tail is kept, redacted
    assert SECRET not in dump


# ---------------------------------------------------------------------- issue 11: false orphan posts
@pytest.mark.parametrize("policy", ["destroy", "propose"])
async def test_no_orphan_post_after_a_teardown_the_bot_decides(rig: Rig, policy: str) -> None:
    """With ``propose``, nobody answers and the proposal's default action (destroy) runs on expiry."""
    await rig.open_engine(teardown_policy=policy, proposal_timeout=60.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + DISK_FULL)
    await rig.poll(18)
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_RECEIPT)) == 1 and not rig.live(iid)
    assert orphan_posts(events) == []


async def test_no_orphan_post_when_a_destroy_command_races_a_poll(rig: Rig) -> None:
    await rig.open_engine()
    rentals = [await rig.rent() for _ in range(3)]
    await rig.poll(4)
    engine = rig.engine
    assert engine is not None
    await rig.clock.advance(POLL)
    await asyncio.gather(engine.tick(), *(engine.destroy(r.id, reason="done", by="ada") for r, _ in rentals))
    await engine.pump()
    await rig.poll(12)
    for rental, iid in rentals:
        events = await rig.events(rental.id)
        assert not rig.live(iid) and len(kinds(events, EV_RECEIPT)) == 1
        assert orphan_posts(events) == []


async def test_a_dollar_cap_passed_while_vast_was_down_is_applied_as_soon_as_vast_answers(rig: Rig) -> None:
    cap = 0.01
    await rig.open_engine(rental_dollar_cap=cap, provision_deadline=10_000.0, comfyui_ready_deadline=10_000.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.proxy.add("*", "/api/*", unavailable, times=10_000)
    dph = rig.sim.instances[iid]["dph_total"]
    while rig.sim.cost_of(iid) < cap + dph * 4 * POLL / 3600:  # well past the cap, Vast still down
        await rig.poll()
    assert rig.live(iid) and len(rig.notifier.alerts) == 1
    rig.proxy.clear()
    await rig.poll()
    assert rig.destroys(iid) >= 1 and not rig.live(iid)
    await rig.poll(2)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    decisions = kinds(await rig.events(rental.id), EV_DECISION)
    assert len(decisions) == 1 and "cap" in decisions[0]["evidence"]["text"]


async def test_a_proposal_whose_write_failed_is_made_once_the_database_is_back(rig: Rig) -> None:
    """Item 1 under the propose policy: nothing is destroyed, and the proposal is not lost."""
    await rig.open_engine(provision_deadline=120.0, teardown_policy="propose")
    rental, iid = await rig.rent()
    await rig.poll(7)
    lock = Lock(rig.db_path)
    rig.proxy.before("GET", "/api/v1/instances/", lock.take, times=1)
    try:
        await rig.poll()
    finally:
        lock.free()
    await rig.poll()
    await rig.restart(provision_deadline=120.0, teardown_policy="propose")
    await rig.poll(2)
    assert rig.live(iid) and rig.destroys(iid) == 0
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_PROPOSAL)) == 1 and len(kinds(events, EV_DECISION)) == 1
    assert await rig.state(rental.id) == RentalState.FAILED


async def test_a_host_that_never_uploads_its_container_log_does_not_stretch_the_poll(rig: Rig) -> None:
    """Item 10: the fallback must not push the poll past its interval (time on the fake clock)."""
    await rig.open_engine(ssh_boot_grace=60.0, ssh_ready_deadline=10_000.0)
    await ssh_less_rentals(rig, 2)
    rig.sim.logs_delay = 1e9  # the hosts never upload: the result URL stays 403
    engine = rig.engine
    assert engine is not None
    for _ in range(12):
        await rig.clock.advance(POLL)
        # Nobody moves the clock during the poll: a poll that waited for the log would never end.
        await asyncio.wait_for(engine.tick(), timeout=20)
    assert rig.log_reads() >= 1  # the fallback was tried


async def test_a_teardown_held_up_by_a_vast_outage_is_said_once_not_at_every_poll(rig: Rig) -> None:
    """Item 3: during a long outage the channel gets one note and one error, not a post per poll."""
    await rig.open_engine(provision_deadline=120.0, comfyui_ready_deadline=10_000.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.proxy.add("*", "/api/*", unavailable, times=10_000)
    await rig.poll(40)  # 10 minutes out; the deadline passed early on
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_DECISION)) == 1
    unconfirmed = [i for i in kinds(events, EV_INFO) if "not confirmed" in i["text"]]
    assert len(unconfirmed) <= 1, len(unconfirmed)
    assert len([f for f in kinds(events, EV_FINDING) if f["rule"] == "engine.destroy_unconfirmed"]) == 1
    rig.proxy.clear()
    await rig.poll(3)
    assert not rig.live(iid) and await rig.state(rental.id) == RentalState.DESTROYED


async def test_nothing_unredacted_is_stored_from_the_ssh_log_either(rig: Rig) -> None:
    """Item 13's rule for the other source: the tailed log, its findings and the teardown's evidence."""
    await rig.open_engine()
    _, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + f"export HF_TOKEN={SECRET}\n"
               f"Traceback: token {SECRET} rejected\nOSError: [Errno 28] No space left on device ({SECRET})\n")
    await rig.poll(4)
    assert not rig.live(iid)
    await rig.close_engine()
    with sqlite3.connect(rig.db_path) as db:
        dump = "\n".join(db.iterdump())
    assert "No space left" in dump and SECRET not in dump


async def test_a_destroy_command_racing_the_retry_of_an_unrecorded_decision_closes_the_rental_once(
        rig: Rig) -> None:
    """The decision's write failed (and so did its destroy); a /destroy then races the next poll,
    which retries the decision: the rental is destroyed once and stays destroyed."""
    await rig.open_engine(provision_deadline=120.0)
    rental, iid = await rig.rent()
    await rig.poll(7)
    lock = Lock(rig.db_path)
    rig.proxy.before("GET", "/api/v1/instances/", lock.take, times=1)
    rig.proxy.add("DELETE", "/api/v0/instances/*", unavailable, times=1)
    try:
        await rig.poll()
    finally:
        lock.free()
    assert rig.live(iid)
    engine = rig.engine
    assert engine is not None
    await rig.clock.advance(POLL)
    await asyncio.gather(engine.tick(), engine.destroy(rental.id, reason="done", by="ada"))
    await engine.pump()
    await rig.poll(4)
    assert not rig.live(iid)
    assert await rig.state(rental.id) == RentalState.DESTROYED
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_RECEIPT)) == 1
    states = [e.payload["to"] for e in events if e.kind == "state"]
    assert states.count("destroyed") == 1 and states[-1] == "destroyed", states


async def test_a_database_that_fails_on_and_off_is_one_alert_and_one_recovery_note(rig: Rig) -> None:
    """Item 2: a nearly full disk fails some polls and not others; the channel is told once."""
    await rig.open_engine()
    await rig.rent()
    await rig.poll(4)
    for _ in range(6):
        with locked(rig.db_path):
            await rig.poll()
        await rig.poll()
    await rig.poll(8)
    assert len(db_alerts(rig)) == 1, rig.notifier.alerts
    assert len([a for a in rig.notifier.alerts if "writable again" in a.lower()]) == 1, rig.notifier.alerts


async def test_a_list_call_that_hangs_is_announced_before_it_ever_answers(rig: Rig) -> None:
    """Item 3: an outage can hide inside one list call that keeps retrying (or hangs): past three poll
    intervals it is said, without waiting for the call to end."""
    await rig.open_engine()
    await rig.rent()
    await rig.poll(2)
    rig.sim.inject_fault("GET", "/api/v1/instances/", "timeout", times=1)
    await rig.clock.advance(POLL)
    assert rig.engine is not None
    tick = asyncio.create_task(rig.engine.tick())
    try:
        for _ in range(200):
            if any("not answered" in a for a in rig.engine.outbox.alerts) or tick.done():
                break
            await rig.clock.advance(1.0)
            await asyncio.sleep(0.005)
        said = [a for a in rig.engine.outbox.alerts if "not answered" in a]
        assert said and "polls in a row" in said[0]
        assert not tick.done()  # said while the call was still hanging
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await tick

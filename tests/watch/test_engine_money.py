"""The engine's money rules against real pieces (Vast simulator over loopback HTTP, asyncssh server,
SQLite, FakeClock): nothing billing is left unwatched, nothing is called destroyed before Vast says
so, and a human's "keep it" does not switch the other safeguards off."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.db.models import ApprovalStatus, Rental, RentalState
from bot.db.store import Store
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.cost import rental_cost
from bot.watch.engine import EV_DECISION, EV_FINDING, EV_PROPOSAL, EV_RECEIPT, EV_STATE, WatchEngine, WatchPolicy
from bot.watch.redact import Redactor
from tests.watch.engine_helpers import Rig, make_rig
from tests.watch.helpers import POLL, ev, kinds


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in make_rig(tmp_path):
        yield r


async def crashed_create(rig: Rig, *, instance: bool) -> tuple[Rental, int | None]:
    """A rental the rent service moved to creating before the process died: Vast may or may not
    have made the instance (carrying the rental's label), the database never heard its id."""
    assert rig.store is not None
    offer = (await rig.vast.search_offers(OfferQuery(limit=5, max_dph=5)))[0]
    rental = await rig.store.create_rental(label=f"vastops-crash-{offer.id}", requester_id=1, requester_name="ada",
                                           offer_id=offer.id, quoted_dph=offer.dph_total, now=rig.clock.now(),
                                           state=RentalState.CREATING, machine_id=offer.machine_id)
    instance_id = None
    if instance:
        instance_id = await rig.vast.create_instance(offer.id, image="img", disk_gb=20, label=rental.label)
    return rental, instance_id


async def test_a_rental_left_creating_by_a_crash_is_found_by_label_and_watched(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await crashed_create(rig, instance=True)
    await rig.close_engine()
    await rig.open_engine()  # the restart
    await rig.poll()
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.instance_id == iid
    assert current.state == RentalState.PROVISIONING and current.started_at is not None
    await rig.poll(4)
    rig.append(iid or 0, ev("run.start", seq=1))
    await rig.poll()
    names = [p["name"] for p in kinds(await rig.events(rental.id), "milestone")]
    assert "container_running" in names and "provisioning_started" in names


async def test_a_rental_left_creating_with_nothing_on_vast_is_closed_after_a_grace(rig: Rig) -> None:
    await rig.open_engine(create_reconcile_grace=120.0)
    rental, _ = await crashed_create(rig, instance=False)
    await rig.close_engine()
    await rig.open_engine(create_reconcile_grace=120.0)
    await rig.poll(3)
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.state == RentalState.CREATING  # Vast's list may lag a little
    await rig.poll(8)
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.state == RentalState.CREATE_FAILED
    assert [p["to"] for p in kinds(await rig.events(rental.id), EV_STATE)] == ["create_failed"]
    assert rental.id not in rig.engine.watches  # type: ignore[union-attr]


async def test_destroying_a_rental_without_an_instance_id_looks_for_its_label(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await crashed_create(rig, instance=True)
    await rig.close_engine()
    await rig.open_engine()
    ok = await rig.engine.destroy(rental.id, reason="operator cleanup", by="ada")  # type: ignore[union-attr]
    assert ok
    assert iid not in rig.sim.instances, "the rental is called destroyed while its instance bills on"
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.state == RentalState.DESTROYED and current.instance_id == iid


async def test_a_receipt_for_a_rental_that_never_got_an_instance_costs_nothing(rig: Rig) -> None:
    await rig.open_engine()
    rental, _ = await crashed_create(rig, instance=False)
    await rig.clock.advance(3600)
    assert await rig.engine.destroy(rental.id, reason="nothing came up", by="ada")  # type: ignore[union-attr]
    [receipt] = kinds(await rig.events(rental.id), EV_RECEIPT)
    assert receipt["cost_usd"] == 0


class HidingList(httpx.AsyncBaseTransport):
    """Loopback HTTP to the simulator whose instance list leaves out ``hidden`` ids (a page that
    shifted while it was read)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hidden: set[int] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" or request.url.path != "/api/v1/instances/" or not self.hidden:
            return response
        body = json.loads(await response.aread())
        await response.aclose()
        body["instances"] = [r for r in body.get("instances") or [] if r.get("id") not in self.hidden]
        return httpx.Response(response.status_code, json=body)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_an_instance_that_cannot_be_looked_up_is_not_taken_for_gone(rig: Rig) -> None:
    transport = HidingList()
    assert rig.sim.base_url is not None
    lister = VastClient(rig.sim.base_url, "sim-key", clock=rig.clock, min_spacing=NO_SPACING, transport=transport)
    rig.store = await Store.open(rig.db_path)
    policy = WatchPolicy(poll_interval=POLL, log_path="/workspace/vastops/provision.log", ssh_key_path=rig.key_path,
                         connect_timeout=2.0)
    rig.engine = WatchEngine(store=rig.store, vast=lister, clock=rig.clock, policy=policy, redactor=Redactor({}))
    try:
        rental, iid = await rig.rent()
        await rig.poll(2)
        transport.hidden.add(iid)
        rig.sim.inject_fault("GET", "/api/v0/instances/*", "500")  # and the direct look-up fails
        await rig.poll()
        current = await rig.store.get_rental(rental.id)
        assert current is not None and current.state == RentalState.PROVISIONING
        assert kinds(await rig.events(rental.id), EV_RECEIPT) == []
        await rig.poll()  # the look-up answers again: the instance is there, the watch goes on
        current = await rig.store.get_rental(rental.id)
        assert current is not None and current.state == RentalState.PROVISIONING
    finally:
        await rig.close_engine()
        await lister.aclose()


async def test_declining_a_stall_teardown_leaves_the_dollar_cap_on(rig: Rig) -> None:
    await rig.open_engine(teardown_policy="propose", proposal_timeout=1e6, stall_timeout=120.0,
                          comfyui_ready_deadline=1e6, provision_deadline=1e6, cost_step=100.0,
                          rental_dollar_cap=100.0)
    assert rig.store is not None and rig.engine is not None
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("model.start", seq=2, name="big.safetensors"))
    for _ in range(12):
        await rig.poll()
        if kinds(await rig.events(rental.id), EV_PROPOSAL):
            break
    [proposal] = kinds(await rig.events(rental.id), EV_PROPOSAL)
    assert proposal["reason"] == "stalled"
    # A human keeps it (the download is slow, not dead).
    assert await rig.store.decide_approval(proposal["approval_id"], status=ApprovalStatus.DENIED, by_id=7,
                                           by_name="bob", now=rig.clock.now())
    await rig.engine.decline_teardown(rental.id, by="bob")
    await rig.poll(2)
    # Then the money runs out: the cap must still propose a teardown.
    current = await rig.store.get_rental(rental.id)
    assert current is not None and current.dph_total and current.started_at
    spent = rental_cost(current, rig.clock.now())
    rig.engine.policy.rental_dollar_cap = spent + current.dph_total * 2 * POLL / 3600
    await rig.poll(4)
    events = await rig.events(rental.id)
    proposals = kinds(events, EV_PROPOSAL)
    assert len(proposals) == 2 and "cap" in proposals[1]["evidence"]["text"]
    assert len(kinds(events, EV_DECISION)) == 2
    # The declined stall was said once, not again at every poll.
    assert [f["rule"] for f in kinds(events, EV_FINDING)].count("engine.deadline.stalled") == 1


async def test_every_expired_proposal_runs_its_default_action(rig: Rig) -> None:
    await rig.open_engine(teardown_policy="propose", proposal_timeout=60.0)
    assert rig.engine is not None
    rented = [await rig.rent(), await rig.rent()]
    await rig.poll(4)
    for _, iid in rented:
        rig.append(iid, ev("run.start", seq=1) + "OSError: [Errno 28] No space left on device\n")
    await rig.poll()
    for rental, _ in rented:
        assert kinds(await rig.events(rental.id), EV_PROPOSAL)

    async def broken_hook(rental: Rental) -> Any:
        raise RuntimeError("a destroyed-hook consumer failed")

    rig.engine.on_destroyed.append(broken_hook)
    for _ in range(6):  # the poll loop reports a failed poll and goes on; so does this
        await rig.clock.advance(POLL)
        try:
            await rig.engine.tick()
        except RuntimeError:
            pass
    for rental, iid in rented:
        assert iid not in rig.sim.instances, f"rental {rental.id}'s proposal expired but its instance bills on"


async def test_a_restart_while_ssh_is_down_does_not_call_a_progressing_run_stalled(rig: Rig) -> None:
    await rig.open_engine(stall_timeout=120.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("model.start", seq=2, name="a.safetensors"))
    await rig.poll()
    await rig.close_engine()
    # The bot is down for ten minutes; the run goes on meanwhile.
    await rig.clock.advance(600)
    rig.append(iid, ev("model.done", seq=3, name="a.safetensors", bytes=10) + ev("model.start", seq=4, name="b"))
    server = rig.servers[iid]
    port = server.port
    await server.stop()  # and SSH refuses the first poll after the restart (so do container logs)
    rig.sim.inject_fault("PUT", "/api/v0/instances/request_logs/*", "500")
    await rig.open_engine(stall_timeout=120.0)
    await rig.poll()
    assert kinds(await rig.events(rental.id), EV_DECISION) == [], "a run nobody could look at was called stalled"
    await server.start(port=port)
    await rig.poll(2)
    events = await rig.events(rental.id)
    assert kinds(events, EV_DECISION) == []
    state = await rig.store.get_watch_state(rental.id)  # type: ignore[union-attr]
    assert state is not None and state.log_offset == rig.log_file(iid).stat().st_size  # it did look again
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.state == RentalState.PROVISIONING


async def test_a_run_that_made_no_progress_while_the_bot_was_down_is_stalled_at_the_first_look(rig: Rig) -> None:
    await rig.open_engine(stall_timeout=120.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("model.start", seq=2, name="a.safetensors"))
    await rig.poll()
    await rig.close_engine()
    await rig.clock.advance(600)  # nothing new is written meanwhile
    await rig.open_engine(stall_timeout=120.0)
    await rig.poll()
    decisions = kinds(await rig.events(rental.id), EV_DECISION)
    assert decisions and decisions[0]["reason"] == "stalled"


async def test_a_rate_change_is_billed_from_when_it_was_seen_not_over_the_whole_run(rig: Rig) -> None:
    await rig.open_engine(stall_timeout=1e6, comfyui_ready_deadline=1e6, provision_deadline=1e6,
                          container_running_deadline=1e6, ssh_ready_deadline=1e6, provisioning_started_deadline=1e6,
                          cost_step=100.0, rental_dollar_cap=100.0)
    assert rig.engine is not None and rig.store is not None
    rental, iid = await rig.rent()
    await rig.poll(40)  # ten minutes at the rented rate
    current = await rig.store.get_rental(rental.id)
    assert current is not None and current.dph_total and current.started_at
    first_rate, changed_at = current.dph_total, rig.clock.now()
    rig.sim.update_instance(iid, dph_total=first_rate * 10)
    await rig.poll(40)  # ten minutes at ten times the rate
    assert await rig.engine.destroy(rental.id, reason="done", by="ada")
    [receipt] = kinds(await rig.events(rental.id), EV_RECEIPT)
    before, after = changed_at - current.started_at, rig.clock.now() - changed_at
    expected = (first_rate * before + first_rate * 10 * after) / 3600
    # The GPU part bills only while running (Vast's rule): not during the boot before the change.
    expected -= (before - rig.sim.running_seconds(iid, changed_at)) * (current.dph_base or 0.0) / 3600
    # Within one poll of the change (it is seen at the next poll), not ten times the first ten minutes.
    assert expected - first_rate * 10 * POLL / 3600 - 1e-6 <= receipt["cost_usd"] <= expected + 1e-6
    assert receipt["dph"] == first_rate * 10


async def test_a_proposal_that_expires_while_the_bot_is_down_runs_its_default_action_after_restart(rig: Rig) -> None:
    await rig.open_engine(teardown_policy="propose", proposal_timeout=600.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + "OSError: [Errno 28] No space left on device\n")
    await rig.poll()
    assert kinds(await rig.events(rental.id), EV_PROPOSAL)
    await rig.close_engine()
    await rig.clock.advance(3600)  # a night with the bot down: nobody answers
    await rig.open_engine(teardown_policy="propose", proposal_timeout=600.0)
    await rig.poll()
    assert iid not in rig.sim.instances
    [receipt] = kinds(await rig.events(rental.id), EV_RECEIPT)
    assert "nobody answered" in receipt["reason"]


async def _ready(rig: Rig) -> tuple[Rental, int]:
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("run.done", seq=2, rc=0))
    rig.comfy.up = True
    await rig.poll(2)
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.state == RentalState.READY
    return rental, iid


async def test_a_host_that_misses_a_heartbeat_for_one_poll_does_not_cost_a_ready_instance(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await _ready(rig)
    rig.sim.update_instance(iid, actual_status="unknown")  # no recent host heartbeat
    await rig.poll()
    rig.sim.update_instance(iid, actual_status="running")
    await rig.poll(2)
    assert kinds(await rig.events(rental.id), EV_DECISION) == []
    assert iid in rig.sim.instances


async def test_a_host_that_stays_offline_is_torn_down(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await _ready(rig)
    rig.sim.update_instance(iid, actual_status="offline")
    await rig.poll(30)
    decisions = kinds(await rig.events(rental.id), EV_DECISION)
    assert decisions and "offline" in decisions[0]["evidence"]["text"]
    assert iid not in rig.sim.instances


async def test_a_kept_rental_is_asked_again_at_each_further_multiple_of_the_cap(rig: Rig) -> None:
    await rig.open_engine(teardown_policy="propose", proposal_timeout=1e6, stall_timeout=1e6,
                          comfyui_ready_deadline=1e6, provision_deadline=1e6, cost_step=100.0)
    assert rig.store is not None and rig.engine is not None
    rental, iid = await rig.rent()
    rig.append(iid, ev("run.start", seq=1))
    dph = rental.quoted_dph or 0.0
    rig.engine.policy.rental_dollar_cap = dph * 10 * POLL / 3600  # the cap is ten polls' worth

    async def poll_until_proposals(n: int) -> list[dict[str, Any]]:
        for _ in range(40):
            await rig.poll()
            found = kinds(await rig.events(rental.id), EV_PROPOSAL)
            if len(found) >= n:
                return found
        return kinds(await rig.events(rental.id), EV_PROPOSAL)

    first = await poll_until_proposals(1)
    assert len(first) == 1 and "cap" in first[0]["evidence"]["text"]
    assert await rig.store.decide_approval(first[0]["approval_id"], status=ApprovalStatus.DENIED, by_id=7,
                                           by_name="bob", now=rig.clock.now())
    await rig.engine.decline_teardown(rental.id, by="bob")
    kept_at = rig.clock.now()
    second = await poll_until_proposals(2)
    assert len(second) == 2 and "2x the per-rental cap" in second[1]["evidence"]["text"]
    # Asked again only once the second multiple was reached (about ten more polls), not at once.
    asked = [e for e in await rig.events(rental.id) if e.kind == EV_PROPOSAL][1]
    assert asked.ts - kept_at >= 8 * POLL


async def test_an_instance_listed_under_a_closed_rentals_label_is_destroyed(rig: Rig) -> None:
    """A create written off as failed whose instance Vast lists only later: ours, unwanted, billing."""
    await rig.open_engine()
    assert rig.store is not None and rig.engine is not None
    now = rig.clock.now()
    closed = await rig.store.create_rental(label="vastops-late0001", requester_id=1, requester_name="ada",
                                           offer_id=1, quoted_dph=0.2, now=now, state=RentalState.CREATE_FAILED)
    stranger = rig.sim.seed_instance(label="someone-elses-box")
    late = rig.sim.seed_instance(label="vastops-late0001")
    for _ in range(4):  # idle: the account is listed once every few polls
        await rig.poll()
    assert late not in rig.sim.instances
    assert stranger in rig.sim.instances  # not ours: listed in /status, never destroyed by the bot
    [finding] = kinds(await rig.events(closed.id), EV_FINDING)
    assert finding["rule"] == "engine.orphan_destroyed" and str(late) in finding["text"]


async def test_destroying_another_way_closes_the_open_proposal(rig: Rig) -> None:
    await rig.open_engine(teardown_policy="propose", proposal_timeout=1e6)
    assert rig.store is not None and rig.engine is not None
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + "OSError: [Errno 28] No space left on device\n")
    await rig.poll()
    [proposal] = kinds(await rig.events(rental.id), EV_PROPOSAL)
    assert await rig.engine.destroy(rental.id, reason="not needed", by="ada")
    approval = await rig.store.get_approval(proposal["approval_id"])
    assert approval is not None and approval.status == ApprovalStatus.CANCELLED
    closing = [p for p in kinds(await rig.events(rental.id), "approval") if p["status"] == "cancelled"]
    assert [p["approval_id"] for p in closing] == [proposal["approval_id"]]
    # The engine had found a fatal problem: the machine is remembered as failed.
    assert rental.machine_id in await rig.store.machines_to_avoid(since=0)


async def test_a_users_destroy_does_not_blame_the_machine(rig: Rig) -> None:
    await rig.open_engine()
    assert rig.store is not None and rig.engine is not None
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1))
    await rig.poll()
    assert await rig.engine.destroy(rental.id, reason="changed my mind", by="ada")
    assert rental.machine_id is not None
    assert rental.machine_id not in await rig.store.machines_to_avoid(since=0)
    [record] = await rig.store.host_history(rental.machine_id)
    assert record.outcome == "ok"

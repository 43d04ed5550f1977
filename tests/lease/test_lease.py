"""The idle lease end to end: the real bot on the fake Discord, rentals on the Vast simulator with a
real SSH server and a fake ComfyUI per instance (its /queue and /history read through the SSH
tunnel), a real SQLite file, and the FakeClock running the lease out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bot.audit import build_report
from bot.db.models import Event, Rental, RentalState
from bot.sim.hosts import FakeComfyUI
from bot.watch.events import EV_LEASE_EXTENDED, EV_LEASE_NOTICE, EV_RECEIPT
from tests.guardrails.helpers import APPROVER, OTHER, POLL, REQUESTER, BotWorld, open_bot_world
from tests.support.fakediscord import FakeDiscord, FakeInteraction, StoredMessage
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, NOTIFY_CHANNEL_ID

READY = (RentalState.READY, RentalState.DEGRADED)
# A short lease so a test runs it out in a few hundred polls; the idle check off unless a test wants it.
SHORT = {"lease_duration": "20m", "lease_warn_before": "10m", "lease_max_total": "1h20m", "lease_idle_timeout": 0}


async def _until(w: BotWorld, check: Callable[[], bool], polls: int = 400) -> None:
    for _ in range(polls):
        await w.bot.engine.tick()
        await w.bot.engine.pump()
        await w.bot.notifier.flush()
        if check():
            return
        await w.clock.advance(POLL, step=5.0)
    raise AssertionError("the condition never held")


async def _state(w: BotWorld, rental_id: int) -> RentalState:
    rental = await w.store.get_rental(rental_id)
    assert rental is not None
    return rental.state


async def _until_state(w: BotWorld, rental_id: int, states: tuple[RentalState, ...], polls: int = 400) -> Rental:
    for _ in range(polls):
        await w.bot.engine.tick()
        await w.bot.engine.pump()
        rental = await w.store.get_rental(rental_id)
        assert rental is not None
        if rental.state in states:
            await w.bot.notifier.flush()
            return rental
        await w.clock.advance(POLL, step=5.0)
    raise AssertionError(f"rental {rental_id} never reached {states}")


def _notices(w: BotWorld, rental_id: int) -> list[StoredMessage]:
    return [m for m in w.fake.messages_in(NOTIFY_CHANNEL_ID)
            if any(c.startswith(f"vastops:lease:{rental_id}:") for c in m.custom_ids())]


def _comfy(w: BotWorld, rental: Rental) -> FakeComfyUI:
    assert rental.instance_id is not None
    return w.stage.instances[rental.instance_id].comfy


async def _events(w: BotWorld, rental_id: int, kind: str) -> list[Event]:
    return [e for e in await w.store.events_for(rental_id) if e.kind == kind]


async def _ephemeral(inter: FakeInteraction) -> str:
    followups = await inter.wait_followups(1)
    return followups[0].text()


async def _ready(w: BotWorld, **kwargs: str) -> Rental:
    rental = await w.rent("happy", **kwargs)  # type: ignore[arg-type]
    return await _until_state(w, rental.id, READY)


async def test_no_answer_tears_down_at_the_end_with_a_receipt(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, **SHORT) as w:
        rental = await _ready(w)
        await _until(w, lambda: bool(_notices(w, rental.id)))
        notice = _notices(w, rental.id)[0]
        # Only the requester is mentioned: no role, no everyone.
        assert notice.pings.users == [REQUESTER] and not notice.pings.roles and not notice.pings.everyone
        assert not notice.may_ping_roles and "lease ends soon" in notice.text()
        assert sorted(c.rsplit(":", 1)[1] for c in notice.custom_ids()) == ["down", "extend"]
        assert await _state(w, rental.id) in READY  # a notice is not a teardown

        done = await _until_state(w, rental.id, (RentalState.DESTROYED,))
        receipt = (await _events(w, rental.id, EV_RECEIPT))[-1].payload
        assert receipt["by"] == "lease" and "lease of 20m" in receipt["reason"]
        assert "idle_s" in receipt
        assert done.state_reason is not None and "nobody extended" in done.state_reason
        assert any("Receipt" in m.text() for m in w.fake.messages_in(NOTIFY_CHANNEL_ID))
        assert done.instance_id not in {i.id for i in await w.vast.list_instances()}


async def test_extend_once_per_click_and_an_approver_past_the_maximum(fake_discord: FakeDiscord,
                                                                       tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, **SHORT) as w:
        rental = await _ready(w)
        await _until(w, lambda: bool(_notices(w, rental.id)))
        first = _notices(w, rental.id)[0]
        extend = next(c for c in first.custom_ids() if c.endswith(":extend"))

        # Someone who is neither the requester nor an approver cannot answer.
        other = await w.fake.click(first.id, extend, user_id=OTHER)
        assert "Only rita or an approver" in (await other.response())["data"]["content"]

        # A double click: both land before the notice is edited; only one of them extends.
        clicks = await asyncio.gather(w.fake.click(first.id, extend, user_id=REQUESTER),
                                      w.fake.click(first.id, extend, user_id=REQUESTER))
        await w.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == first.id and "Extended by rita" in m.text())
        for _ in range(250):  # the losing click's answer is a followup, sent after the winner's edit
            if any(c.followups for c in clicks):
                break
            await asyncio.sleep(0.02)
        refused = [c.followups[0].text() for c in clicks if c.followups]
        assert len(refused) == 1 and "no longer applies" in refused[0], refused
        extended = await _events(w, rental.id, EV_LEASE_EXTENDED)
        assert len(extended) == 1 and extended[0].payload["total_s"] == 80 * 60.0
        assert extended[0].payload["by_id"] == REQUESTER and extended[0].payload["approver"] is False
        assert not first.custom_ids()  # the answered notice has no buttons left

        # The next notice: another hour would pass the 1h20m maximum; the requester alone cannot.
        await _until(w, lambda: any(m.id != first.id for m in _notices(w, rental.id)))
        second = _notices(w, rental.id)[-1]
        extend2 = next(c for c in second.custom_ids() if c.endswith(":extend"))
        refused = await w.fake.click(second.id, extend2, user_id=REQUESTER)
        text = await _ephemeral(refused)
        assert "past the maximum of 1h20m" in text and "an approver must click Extend" in text
        assert len(await _events(w, rental.id, EV_LEASE_EXTENDED)) == 1

        await w.fake.click(second.id, extend2, user_id=APPROVER, roles=[APPROVER_ROLE_ID])
        await w.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == second.id and "Extended by ada" in m.text())
        extended = await _events(w, rental.id, EV_LEASE_EXTENDED)
        assert len(extended) == 2 and extended[1].payload["approver"] is True
        assert extended[1].payload["total_s"] == 140 * 60.0
        assert await _state(w, rental.id) in READY


async def test_tear_down_now_from_the_notice(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, **SHORT) as w:
        rental = await _ready(w)
        await _until(w, lambda: bool(_notices(w, rental.id)))
        notice = _notices(w, rental.id)[0]
        down = next(c for c in notice.custom_ids() if c.endswith(":down"))
        await w.fake.click(notice.id, down, user_id=REQUESTER)
        await w.fake.wait_for_message(NOTIFY_CHANNEL_ID,
                                      lambda m: m.id == notice.id and "Torn down by rita" in m.text())
        assert await _state(w, rental.id) == RentalState.DESTROYED
        receipt = (await _events(w, rental.id, EV_RECEIPT))[-1].payload
        assert receipt["by"] == "rita" and "lease notice" in receipt["reason"]


async def test_a_running_prompt_holds_the_lease_until_it_finishes(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, **SHORT) as w:
        rental = await _ready(w)
        comfy = _comfy(w, rental)
        await _until(w, lambda: bool(_notices(w, rental.id)))
        comfy.start_prompt("render-1")
        comfy.start_prompt("render-2")
        held = lambda: any("ComfyUI is running 1 prompt(s) with 1 queued" in m.text()  # noqa: E731
                           for m in w.fake.messages_in(NOTIFY_CHANNEL_ID))
        await _until(w, held)
        # Well past the end of the lease, still running a prompt: nothing is torn down.
        for _ in range(20):
            await w.bot.engine.tick()
            await w.clock.advance(POLL, step=5.0)
        assert await _state(w, rental.id) in READY
        assert sum("ComfyUI is running" in m.text() for m in w.fake.messages_in(NOTIFY_CHANNEL_ID)) == 1

        comfy.finish_prompt()
        for _ in range(4):
            await w.bot.engine.tick()
            await w.clock.advance(POLL, step=5.0)
        assert await _state(w, rental.id) in READY  # the queued prompt runs now
        comfy.finish_prompt()
        done = await _until_state(w, rental.id, (RentalState.DESTROYED,), polls=10)
        assert done.state_reason is not None and "lease" in done.state_reason


async def test_idle_comfyui_gets_the_notice_early_and_the_receipt_says_how_long(fake_discord: FakeDiscord,
                                                                              tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, lease_duration="2h", lease_idle_timeout="30m",
                              lease_warn_before="10m") as w:
        rental = await _ready(w)
        ready_at = w.clock.now()
        comfy = _comfy(w, rental)
        # Work at 10 minutes in restarts the idle clock.
        await _until(w, lambda: w.clock.now() - ready_at >= 600)
        comfy.start_prompt("one")
        await _until(w, lambda: w.clock.now() - ready_at >= 660)
        comfy.finish_prompt()
        await _until(w, lambda: bool(_notices(w, rental.id)))
        notice = _notices(w, rental.id)[0]
        assert "looks idle" in notice.text() and "ComfyUI has run nothing for 3" in notice.text()
        assert w.clock.now() - ready_at >= 660 + 1800 - 60  # 30 min after the last work, not after ready
        payload = (await _events(w, rental.id, EV_LEASE_NOTICE))[0].payload
        assert payload["reason"] == "idle" and payload["busy"] is False

        done = await _until_state(w, rental.id, (RentalState.DESTROYED,))
        receipt = (await _events(w, rental.id, EV_RECEIPT))[-1].payload
        assert receipt["by"] == "lease" and receipt["reason"].startswith("idle lease: ComfyUI ran nothing for")
        # Idle: the 10 minutes before the prompt, and the 40 from its end to the teardown (not its minute).
        assert 50 * 60 - 4 * POLL <= receipt["idle_s"] <= 50 * 60 + 2 * POLL
        # The audit counts that share of the cost as idle waste.
        report = await build_report(w.store, since=0, now=w.clock.now())
        row = next(r for r in report.rows if r.rental_id == done.id)
        assert row.cause == "idle after ready" and 0 < row.idle_usd < row.billed_usd


async def test_the_lease_survives_a_restart(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    """The lease is rebuilt from the rental's events: an extension and the open notice's buttons hold."""
    async with open_bot_world(fake_discord, tmp_path, **SHORT) as w:
        rental = await _ready(w)
        ready_at = w.clock.now()
        await _until(w, lambda: bool(_notices(w, rental.id)))
        first = _notices(w, rental.id)[0]
        w.bot.engine.lease.states.clear()  # the process restarts: nothing of the lease in memory
        extend = next(c for c in first.custom_ids() if c.endswith(":extend"))
        await w.fake.click(first.id, extend, user_id=REQUESTER)
        await w.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == first.id and "Extended by rita" in m.text())

        w.bot.engine.lease.states.clear()  # and again: the extension is remembered
        await _until(w, lambda: w.clock.now() - ready_at >= 25 * 60)  # past the first 20-minute end
        assert await _state(w, rental.id) in READY
        assert not [m for m in _notices(w, rental.id) if m.id != first.id]
        w.bot.engine.lease.states.clear()
        await _until(w, lambda: any(m.id != first.id for m in _notices(w, rental.id)))
        second = (await _events(w, rental.id, EV_LEASE_NOTICE))[-1].payload
        assert abs(second["deadline"] - (ready_at + 80 * 60)) <= 2 * POLL
        assert w.clock.now() >= ready_at + 70 * 60 - 2 * POLL

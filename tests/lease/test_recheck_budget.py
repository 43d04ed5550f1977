"""Re-checks after rent and the budget's hard-limit teardown proposals, end to end: the real bot on the
fake Discord, the Vast simulator (whose instance rows a test can make disagree with the offer), a
real SQLite file and the FakeClock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.budget import period_bounds, period_share
from bot.db.models import ApprovalKind, ApprovalStatus, Rental, RentalState
from bot.watch.events import EV_RECEIPT, EV_RECHECK_BREACH
from tests.guardrails.helpers import POLL, REQUESTER, BotWorld, open_bot_world
from tests.support.fakediscord import FakeDiscord, StoredMessage
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, NOTIFY_CHANNEL_ID

READY = (RentalState.READY, RentalState.DEGRADED)


async def _tick_until(w: BotWorld, rental_id: int, states: tuple[RentalState, ...], polls: int = 60) -> Rental:
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


async def _rented(w: BotWorld) -> Rental:
    rental = await w.rent("happy")
    fresh = await w.store.get_rental(rental.id)
    assert fresh is not None and fresh.instance_id is not None
    return fresh


def _posts(w: BotWorld, text: str) -> list[StoredMessage]:
    return [m for m in w.fake.messages_in(NOTIFY_CHANNEL_ID) if text in m.text()]


async def test_an_instance_in_an_excluded_country_is_destroyed_at_once(fake_discord: FakeDiscord,
                                                                      tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path) as w:
        rental = await _rented(w)
        # The offer said elsewhere; the instance Vast lists is in China.
        w.stage.sim.instances[rental.instance_id or -1]["geolocation"] = "Shenzhen, Guangdong, China"
        done = await _tick_until(w, rental.id, (RentalState.DESTROYED,), polls=4)
        breach = [e.payload for e in await w.store.events_for(rental.id) if e.kind == EV_RECHECK_BREACH]
        assert len(breach) == 1 and breach[0]["check"] == "geolocation" and "(CN)" in breach[0]["text"]
        receipt = [e.payload for e in await w.store.events_for(rental.id) if e.kind == EV_RECEIPT][-1]
        assert receipt["by"] == "re-check after rent" and "geolocation" in receipt["reason"]
        assert done.instance_id not in {i.id for i in await w.vast.list_instances()}
        # The machine is avoided from now on, like one that failed a rental.
        assert done.machine_id in await w.store.machines_to_avoid(0.0)
        post = _posts(w, "re-check after rent failed")
        assert len(post) == 1 and "Shenzhen" in post[0].text() and not post[0].could_ping
        assert _posts(w, "Receipt")


async def test_a_billed_price_above_the_quote_is_destroyed_and_one_within_tolerance_is_not(
        fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, recheck_price_tolerance=0.05) as w:
        within = await _rented(w)
        row = w.stage.sim.instances[within.instance_id or -1]
        row["dph_total"] = round(row["dph_total"] * 1.04, 7)  # 4 %: within the tolerance
        row["dph_base"] = round(row["dph_total"] - row["storage_total_cost"], 7)
        ready = await _tick_until(w, within.id, READY)
        assert not [e for e in await w.store.events_for(ready.id) if e.kind == EV_RECHECK_BREACH]

        dear = await _rented(w)
        row = w.stage.sim.instances[dear.instance_id or -1]
        row["dph_total"] = round(row["dph_total"] * 1.25, 7)
        row["dph_base"] = round(row["dph_total"] - row["storage_total_cost"], 7)
        await _tick_until(w, dear.id, (RentalState.DESTROYED,), polls=4)
        breach = [e.payload for e in await w.store.events_for(dear.id) if e.kind == EV_RECHECK_BREACH]
        assert len(breach) == 1 and breach[0]["check"] == "price" and "+25%" in breach[0]["text"]
        assert breach[0]["quoted_dph"] == dear.quoted_dph
        assert _posts(w, "above the approved quote")
        still = await w.store.get_rental(within.id)
        assert still is not None and still.state in READY


# ---------------------------------------------------------------- budget hard limit

BUDGETS: dict[str, Any] = {"budget_user_daily": 0.10, "budget_team_daily": 50.0, "budget_soft_threshold": 0.8,
                           "budget_rent_estimate": 300.0, "lease_idle_timeout": 0}


async def _spend_until_spent(w: BotWorld, user_id: int, limit: float) -> None:
    for _ in range(600):
        rentals = await w.store.list_rentals(requester_id=user_id, limit=50)
        now = w.clock.now()
        start, _ = period_bounds("day", now)
        if sum(period_share(r, start, now) for r in rentals) >= limit:
            return
        await w.bot.engine.tick()
        await w.clock.advance(POLL, step=5.0)
    raise AssertionError("spend never reached the limit")


def _budget_cog(w: BotWorld) -> Any:
    cog = w.bot.get_cog("Budget")
    assert cog is not None
    return cog


async def test_a_spent_budget_proposes_teardown_once_and_the_default_fires(fake_discord: FakeDiscord,
                                                                           tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, budget_hard_default_action="destroy", **BUDGETS) as w:
        rental = await _rented(w)
        await _tick_until(w, rental.id, READY)
        await _spend_until_spent(w, REQUESTER, 0.10)
        await _budget_cog(w).check_budgets()
        await _budget_cog(w).check_budgets()  # a second check in the same period proposes nothing more
        await w.bot.engine.pump()
        proposals = [a for a in await w.store.pending_approvals(kind=ApprovalKind.TEARDOWN) if a.rental_id == rental.id]
        assert len(proposals) == 1 and proposals[0].default_action == "destroy"
        assert proposals[0].payload["reason"].startswith("budget: rita's daily budget is spent")
        msg = await w.fake.wait_for_message(
            NOTIFY_CHANNEL_ID, lambda m: f"vastops:approval:{proposals[0].id}:approve" in m.custom_ids())
        assert "Teardown proposed" in msg.text() and "With no answer: **destroy**" in msg.text()
        assert msg.pings.roles == [APPROVER_ROLE_ID] and not msg.pings.everyone

        # Nobody answers: the default action destroys it.
        await w.clock.advance(w.settings.proposal_timeout + 1, step=30.0)
        done = await _tick_until(w, rental.id, (RentalState.DESTROYED,), polls=6)
        assert done.state_reason is not None and "nobody answered" in done.state_reason
        approval = await w.store.get_approval(proposals[0].id)
        assert approval is not None and approval.status in (ApprovalStatus.EXPIRED, ApprovalStatus.CANCELLED)


async def test_a_kept_budget_proposal_keeps_the_rental(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, budget_hard_default_action="keep", **BUDGETS) as w:
        rental = await _rented(w)
        await _tick_until(w, rental.id, READY)
        await _spend_until_spent(w, REQUESTER, 0.10)
        await _budget_cog(w).check_budgets()
        await w.bot.engine.pump()
        proposal = next(a for a in await w.store.pending_approvals(kind=ApprovalKind.TEARDOWN)
                        if a.rental_id == rental.id)
        assert proposal.default_action == "keep"
        await w.clock.advance(w.settings.proposal_timeout + 1, step=30.0)
        for _ in range(4):
            await w.bot.engine.tick()
            await w.clock.advance(POLL, step=5.0)
        kept = await w.store.get_rental(rental.id)
        assert kept is not None and kept.state in READY
        # Still spent, same period: no second proposal.
        await _budget_cog(w).check_budgets()
        assert not [a for a in await w.store.pending_approvals(kind=ApprovalKind.TEARDOWN) if a.rental_id == rental.id]

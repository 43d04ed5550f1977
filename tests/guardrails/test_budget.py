"""Budgets end to end: the real bot on the fake Discord, rentals on the Vast simulator (with SSH),
a real SQLite file, and the FakeClock moving spend across the soft threshold and the hard limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.budget import (
    BudgetStatus,
    period_bounds,
    period_share,
    rent_gate,
    statuses_from,
    teardown_candidates,
    teardown_proposal,
)
from bot.db.models import Rental, RentalState
from bot.watch.cost import rental_cost
from cogs.budget import Budget
from tests.guardrails.helpers import APPROVER, APPROVER2, POLL, REQUESTER, WEDNESDAY_1AM, BotWorld, open_bot_world
from tests.support.fakediscord import FakeDiscord, StoredMessage, walk_components
from tests.support.fakediscord.ids import CHANNEL_ID, NOTIFY_CHANNEL_ID

BUDGETS = {"budget_user_daily": 0.10, "budget_team_daily": 5.0, "budget_soft_threshold": 0.8,
           "budget_rent_estimate": 300.0}


async def _spend_until(w: BotWorld, rental_id: int, user_id: int, fraction: float, limit: float) -> None:
    """Let the rental run (the engine polling) until the user's spend today reaches ``fraction``."""
    for _ in range(400):
        rentals = await w.store.list_rentals(requester_id=user_id, limit=50)
        now = w.clock.now()
        start, _ = period_bounds("day", now)
        if sum(period_share(r, start, now) for r in rentals) >= fraction * limit:
            return
        await w.bot.engine.tick()
        await w.clock.advance(POLL, step=5.0)
    raise AssertionError("spend never reached the threshold")


async def _rent_in_discord(w: BotWorld, user_id: int) -> tuple[StoredMessage, int]:
    before = {m.id for m in w.fake.messages_in(NOTIFY_CHANNEL_ID)}
    inter = await w.fake.slash("rent", {"num_gpus": 1}, user_id=user_id)
    picker = await w.fake.wait_for_message(
        CHANNEL_ID, lambda m: m.interaction_id == inter.id and not m.loading and bool(m.custom_ids()))
    select = next(c for c in walk_components(picker.components) if c.get("type") == 3)
    await w.fake.click(picker.id, select["custom_id"], user_id=user_id, values=[select["options"][0]["value"]])
    msg = await w.fake.wait_for_message(
        NOTIFY_CHANNEL_ID, lambda m: any(c.startswith("vastops:approval:") for c in m.custom_ids())
        and m.id not in before)
    return msg, int(msg.custom_ids()[0].split(":")[2])


async def _ephemeral_text(inter: Any) -> str:
    body = await inter.response()
    if body["type"] == 4:
        return str(body["data"].get("content") or "")
    followups = await inter.wait_followups(1)
    return followups[0].text()


def _cog(w: BotWorld) -> Any:
    # load_extension imports cogs.budget afresh, so its class is not the one imported here.
    cog = w.bot.get_cog("Budget")
    assert cog is not None and type(cog).__name__ == Budget.__name__
    return cog


async def test_soft_threshold_posts_once_and_escalates_then_hard_limit_refuses(fake_discord: FakeDiscord,
                                                                               tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, **BUDGETS) as w:
        # Under budget: ada may approve her own cheap request.
        first = await w.rent("happy", requester=(APPROVER, "ada"))
        await w.drive(first.id, until=(RentalState.READY, RentalState.DEGRADED))
        assert await _cog(w).check_budgets() == []

        # Past 80 % of her daily $0.10: one post in the channel, not two.
        await _spend_until(w, first.id, APPROVER, 0.8, 0.10)
        alerts = await _cog(w).check_budgets()
        assert [(a.scope, a.period, a.level) for a in alerts] == [("user", "day", "soft")]
        assert await _cog(w).check_budgets() == []
        posts = [m for m in w.fake.messages_in(NOTIFY_CHANNEL_ID) if "budget passed 80%" in m.content]
        assert len(posts) == 1 and "ada's daily budget" in posts[0].content
        assert "new rent now needs an approver" in posts[0].content

        # Her next rent needs another approver, even under the self-approval limit.
        msg, approval_id = await _rent_in_discord(w, APPROVER)
        refused = await w.fake.click(msg.id, f"vastops:approval:{approval_id}:approve", user_id=APPROVER)
        text = await _ephemeral_text(refused)
        assert "needs another approver" in text and "of $0.10" in text
        approval = await w.store.get_approval(approval_id)
        assert approval is not None and approval.is_pending
        await w.fake.click(msg.id, f"vastops:approval:{approval_id}:approve", user_id=APPROVER2)
        await w.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == msg.id and "Approved by" in m.text())
        assert len(w.stage.sim.instances) == 2

        # Spent: one post naming what still bills, and /rent refuses with the numbers.
        await _spend_until(w, first.id, APPROVER, 1.0, 0.10)
        alerts = await _cog(w).check_budgets()
        assert [(a.scope, a.level) for a in alerts] == [("user", "hard")]
        hard = next(m for m in w.fake.messages_in(NOTIFY_CHANNEL_ID) if "budget is spent" in m.content)
        assert f"#{first.id}" in hard.content and "No new rent" in hard.content
        rent = await w.fake.slash("rent", {"num_gpus": 1}, user_id=APPROVER)
        reply = await w.fake.wait_for_message(CHANNEL_ID, lambda m: m.interaction_id == rent.id and not m.loading)
        assert reply.ephemeral and "No new rent: your daily budget is spent" in reply.text()
        assert "of $0.10" in reply.text() and "resets in" in reply.text()
        assert not reply.custom_ids()  # no offers to pick
        # Someone else is not held by ada's budget.
        other = await w.fake.slash("rent", {"num_gpus": 1}, user_id=REQUESTER)
        picker = await w.fake.wait_for_message(
            CHANNEL_ID, lambda m: m.interaction_id == other.id and not m.loading)
        assert "offer(s)" in picker.text()

        # /budget shows both budgets with the time until they reset.
        shown = await w.fake.slash("budget", {}, user_id=APPROVER)
        view = await w.fake.wait_for_message(CHANNEL_ID, lambda m: m.interaction_id == shown.id and not m.loading)
        body = view.text()
        assert view.ephemeral and "No new rent" in body and "Team" in body and "resets in" in body
        assert "This week" in body and "no budget set" in body  # weekly budgets are not set
        refused_msgs = [r for r in w.fake.requests if r.status >= 400]
        assert not refused_msgs


async def test_pending_request_cannot_be_approved_once_the_budget_is_spent(fake_discord: FakeDiscord,
                                                                          tmp_path: Path) -> None:
    async with open_bot_world(fake_discord, tmp_path, **{**BUDGETS, "approval_timeout": 7200}) as w:
        first = await w.rent("happy", requester=(REQUESTER, "rita"))
        await w.drive(first.id, until=(RentalState.READY, RentalState.DEGRADED))
        msg, approval_id = await _rent_in_discord(w, REQUESTER)
        await _spend_until(w, first.id, REQUESTER, 1.0, 0.10)
        click = await w.fake.click(msg.id, f"vastops:approval:{approval_id}:approve", user_id=APPROVER)
        text = await _ephemeral_text(click)
        assert "No new rent: the team's" not in text and "budget is spent" in text and "of $0.10" in text
        assert len(w.stage.sim.instances) == 1


async def test_the_running_bot_checks_budgets_on_its_own(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    """With its loops on (as in production), the bot notices a budget passing its threshold by itself."""
    async with open_bot_world(fake_discord, tmp_path, watch_loop=True, budget_check_interval=60,
                              **BUDGETS) as w:
        await w.rent("happy", requester=(REQUESTER, "rita"))
        cog = _cog(w)
        for _ in range(60):
            done = cog.checks_done
            await w.clock.advance(60, step=5.0)
            # The check talks to SQLite and Discord for real: let this minute's check finish first.
            for _ in range(500):
                if cog.checks_done > done:
                    break
                await asyncio.sleep(0.01)
            if any("budget passed 80%" in m.content for m in w.fake.messages_in(NOTIFY_CHANNEL_ID)):
                break
        posts = [m for m in w.fake.messages_in(NOTIFY_CHANNEL_ID) if "budget passed 80%" in m.content]
        assert len(posts) == 1 and "rita's daily budget" in posts[0].content


# ---------------------------------------------------------------- pure rules


def _rental(rid: int, user: int, start: float, end: float | None, dph: float = 1.0,
            state: RentalState = RentalState.READY) -> Rental:
    return Rental(id=rid, label=f"r{rid}", requester_id=user, requester_name=f"u{user}", offer_id=1,
                  machine_id=1, host_id=1, gpu_name="RTX", num_gpus=1, quoted_dph=dph, dph_total=dph,
                  geolocation="US", instance_id=rid, state=state, state_reason=None, request={},
                  created_at=start, updated_at=start, started_at=start, ended_at=end, comfyui_url=None,
                  tunnel_url=None, status_channel_id=None, status_message_id=None)


def test_periods_are_utc_days_and_monday_weeks() -> None:
    assert period_bounds("day", WEDNESDAY_1AM) == (1_700_006_400.0, 1_700_092_800.0)
    start, end = period_bounds("week", WEDNESDAY_1AM)
    assert start == 1_699_833_600.0 and end - start == 7 * 86400  # Monday 2023-11-13 00:00 UTC


def test_a_rental_across_midnight_counts_its_share_and_the_shares_add_up() -> None:
    midnight = 1_700_006_400.0
    rental = _rental(1, 7, midnight - 1800, midnight + 5400, dph=2.0)  # 2 h at $2/h
    now = midnight + 7200
    assert period_share(rental, midnight, now) == pytest.approx(3.0)
    assert period_share(rental, midnight - 86400, now) == pytest.approx(rental_cost(rental, now))
    running = _rental(2, 7, midnight + 600, None, dph=1.2)
    assert period_share(running, midnight, now) == pytest.approx(rental_cost(running, now))


def test_gate_levels_escalation_and_teardown_candidates() -> None:
    from bot.settings import Settings

    settings = Settings(budget_user_daily=10.0, budget_team_daily=100.0, budget_rent_estimate=3600.0,
                        _env_file=None)  # type: ignore[call-arg]
    now = 1_700_006_400.0 + 36000
    rentals = [_rental(1, 7, now - 3600 * 7, None, dph=1.0), _rental(2, 8, now - 3600, None, dph=0.5),
               _rental(3, 7, now - 600, None, state=RentalState.TEARING_DOWN)]
    statuses = statuses_from(rentals, settings, now, user_ids=[7, 8])
    user7 = next(s for s in statuses if s.user_id == 7)
    assert user7.spent == pytest.approx(7.0 + 1 / 6) and user7.level == "ok"
    gate = rent_gate([s for s in statuses if s.user_id in (7, None)], dph=3.0, estimate_s=3600, now=now)
    assert not gate.blocked and gate.escalated == [user7]  # an hour at $3/h would cross $10
    assert "$10.17" in gate.escalation() or "$10.1" in gate.escalation()
    assert rent_gate([user7], dph=0.5, estimate_s=3600, now=now).ok

    hard = BudgetStatus("user", 7, "day", 10.0, 10.0, now - 3600, now + 3600, 0.8)
    assert hard.level == "hard"
    assert "resets in 1h00m00s" in rent_gate([hard], dph=0.0, estimate_s=0, now=now).refusal()
    picked = teardown_candidates([hard], rentals, already_proposed=[])
    assert [r.id for r, _ in picked] == [1]  # rental 3 is already being torn down; 2 is someone else's
    assert teardown_candidates([hard], rentals, already_proposed=[1]) == []
    proposal = teardown_proposal(picked[0][0], hard, settings, now)
    assert proposal == {"reason": "budget: u7's daily budget is spent ($10.00 of $10.00 (100%), resets in 1h00m00s)",
                        "default_action": "keep"}
    team = BudgetStatus("team", None, "week", 50.0, 60.0, now - 3600, now + 3600, 0.8)
    assert [r.id for r, _ in teardown_candidates([team], rentals)] == [1, 2]

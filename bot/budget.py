"""Budgets: spend per UTC day and week for the team and each requester, against the BUDGET_* settings.

Spend is billed cost by the one cost function (``rental_cost``), running rentals included at
their current rate. A rental that spans a period boundary is split by time: the share of its
billed cost that falls inside the period counts (``period_share``), so a week's days add up to
the week. Levels: ``ok``; ``soft`` from BUDGET_SOFT_THRESHOLD (the channel is told once, and a
new rent needs an approver, even a cheap one); ``hard`` at 100 % (no new rent; running rentals
get a teardown proposal). No Discord here: ``cogs/budget.py`` posts and answers.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bot.db.guardrails import claim_budget_alert, rentals_billing_during
from bot.db.models import ACTIVE_STATES, Approval, ApprovalKind, Rental, RentalState
from bot.db.store import Store
from bot.durations import format_duration
from bot.settings import Settings
from bot.watch.cost import rental_cost
from bot.watch.events import EV_PROPOSAL

# Stores an event for delivery (the engine's outbox: ``WatchEngine.emit``).
Emit = Callable[[Rental, Any, dict[str, Any]], Awaitable[Any]]

Period = Literal["day", "week"]
Level = Literal["ok", "soft", "hard"]
PERIODS: tuple[Period, ...] = ("day", "week")
DAY = 86400.0


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """[start, end) of the UTC day, or of the Monday-to-Monday UTC week, holding ``now``."""
    days = math.floor(now / DAY)
    if period == "day":
        return days * DAY, (days + 1) * DAY
    monday = days - (days + 3) % 7  # 1970-01-01 was a Thursday
    return monday * DAY, (monday + 7) * DAY


def period_share(rental: Rental, start: float, now: float) -> float:
    """Dollars of ``rental``'s billed cost that fall in [start, now], spread evenly over its life."""
    total = rental_cost(rental, now)
    if total <= 0 or rental.started_at is None:
        return 0.0
    begin = rental.started_at
    end = rental.ended_at if rental.ended_at is not None else now
    if end <= begin:
        return total if start <= begin <= now else 0.0
    overlap = max(0.0, min(end, now) - max(begin, start))
    return total * overlap / (end - begin)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Spend in one period against one budget."""

    scope: Literal["team", "user"]
    user_id: int | None
    period: Period
    limit: float
    spent: float
    period_start: float
    resets_at: float
    soft_threshold: float

    @property
    def key(self) -> str:
        return "team" if self.scope == "team" else f"user:{self.user_id}"

    @property
    def fraction(self) -> float:
        return self.spent / self.limit if self.limit > 0 else 0.0

    @property
    def level(self) -> Level:
        if self.limit <= 0:
            return "ok"
        if self.spent >= self.limit - 1e-9:
            return "hard"
        return "soft" if self.fraction >= self.soft_threshold else "ok"

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.spent)

    def name(self, who: str | None = None) -> str:
        owner = "the team's" if self.scope == "team" else (f"{who}'s" if who else "your")
        return f"{owner} {'daily' if self.period == 'day' else 'weekly'} budget"

    def numbers(self, now: float) -> str:
        return (f"${self.spent:,.2f} of ${self.limit:,.2f} ({self.fraction:.0%}), "
                f"resets in {format_duration(self.resets_at - now)}")


def _limits(settings: Settings, scope: str) -> dict[Period, float]:
    if scope == "team":
        return {"day": settings.budget_team_daily, "week": settings.budget_team_weekly}
    return {"day": settings.budget_user_daily, "week": settings.budget_user_weekly}


def statuses_from(rentals: Iterable[Rental], settings: Settings, now: float, *,
                  user_ids: Iterable[int] = (), include_unset: bool = False) -> list[BudgetStatus]:
    """Team statuses, then each of ``user_ids``' (pure: the rentals are given)."""
    rentals = list(rentals)
    out: list[BudgetStatus] = []
    scopes: list[tuple[Literal["team", "user"], int | None]] = [("team", None)]
    scopes += [("user", uid) for uid in dict.fromkeys(user_ids)]
    for scope, uid in scopes:
        limits = _limits(settings, scope)
        for period in PERIODS:
            if limits[period] <= 0 and not include_unset:
                continue
            start, end = period_bounds(period, now)
            spent = sum(period_share(r, start, now) for r in rentals if uid is None or r.requester_id == uid)
            out.append(BudgetStatus(scope, uid, period, limits[period], spent, start, end,
                                    settings.budget_soft_threshold))
    return out


async def budget_statuses(store: Store, settings: Settings, now: float, *, user_id: int | None = None,
                          include_unset: bool = False) -> list[BudgetStatus]:
    """The team's statuses and, with ``user_id``, that requester's."""
    since = min(period_bounds("week", now)[0], period_bounds("day", now)[0])
    rentals = await rentals_billing_during(store, since)
    return statuses_from(rentals, settings, now, user_ids=[user_id] if user_id is not None else [],
                         include_unset=include_unset)


@dataclass(frozen=True, slots=True)
class RentGate:
    """What the budgets say about one more rent: refused (hard), needs an approver (soft), or fine."""

    blocked: list[BudgetStatus]
    escalated: list[BudgetStatus]
    now: float
    dph: float
    estimate_s: float

    @property
    def ok(self) -> bool:
        return not self.blocked and not self.escalated

    def refusal(self) -> str:
        worst = self.blocked[0]
        lines = [f"No new rent: {worst.name()} is spent: {worst.numbers(self.now)}."]
        lines += [f"Also {s.name()}: {s.numbers(self.now)}." for s in self.blocked[1:]]
        lines.append("An approver can raise the BUDGET_* settings; /budget shows where it stands.")
        return "\n".join(lines)

    def escalation(self) -> str:
        status = self.escalated[0]
        projected = status.spent + self.dph * self.estimate_s / 3600.0
        return (f"This rent needs another approver: {status.name()} is at {status.numbers(self.now)}; "
                f"{format_duration(self.estimate_s)} at ${self.dph:.3f}/h would bring it to "
                f"${projected:,.2f} of ${status.limit:,.2f}.")


def rent_gate(statuses: Iterable[BudgetStatus], *, dph: float, estimate_s: float, now: float) -> RentGate:
    """Refuse at a hard limit; ask for an approver past the soft threshold, or when ``estimate_s`` at
    ``dph`` would cross a budget."""
    blocked, escalated = [], []
    extra = max(0.0, dph) * estimate_s / 3600.0
    for status in statuses:
        if status.level == "hard":
            blocked.append(status)
        elif status.limit > 0 and (status.level == "soft" or status.spent + extra > status.limit + 1e-9):
            escalated.append(status)
    order = {"user": 0, "team": 1}
    blocked.sort(key=lambda s: (order[s.scope], -s.fraction))
    escalated.sort(key=lambda s: (-s.fraction, order[s.scope]))
    return RentGate(blocked, escalated, now, dph, estimate_s)


def budgets_set(settings: Settings) -> bool:
    return any(v > 0 for v in (*_limits(settings, "team").values(), *_limits(settings, "user").values()))


async def check_rent(store: Store, settings: Settings, now: float, *, user_id: int | None,
                     dph: float = 0.0) -> RentGate:
    """The gate for one more rent by ``user_id`` at ``dph`` (no database work without budgets)."""
    if not budgets_set(settings):
        return RentGate([], [], now, dph, settings.budget_rent_estimate)
    statuses = await budget_statuses(store, settings, now, user_id=user_id)
    return rent_gate(statuses, dph=dph, estimate_s=settings.budget_rent_estimate, now=now)


# ---------------------------------------------------------------- the periodic check


async def all_statuses(store: Store, settings: Settings, now: float) -> list[BudgetStatus]:
    """The team's statuses and those of every requester who billed this week."""
    since = period_bounds("week", now)[0]
    rentals = await rentals_billing_during(store, since)
    users = sorted({r.requester_id for r in rentals if r.requester_id is not None})
    return statuses_from(rentals, settings, now, user_ids=users)


async def due_alerts(store: Store, settings: Settings, now: float) -> list[BudgetStatus]:
    """Statuses at soft or hard that have not been announced yet in their period (each one is
    claimed in the database, so it is announced once even across restarts)."""
    out: list[BudgetStatus] = []
    if not budgets_set(settings):
        return out
    for status in await all_statuses(store, settings, now):
        if status.level == "ok":
            continue
        if await claim_budget_alert(store, scope=status.key, period=status.period,
                                    period_start=status.period_start, level=status.level, now=now):
            out.append(status)
    return out


def teardown_candidates(statuses: Iterable[BudgetStatus], active: Iterable[Rental],
                        already_proposed: Iterable[int] = ()) -> list[tuple[Rental, BudgetStatus]]:
    """Running rentals that should get a budget teardown proposal: every one when a team budget is
    spent, a requester's own when theirs is. Skips rentals already being torn down or with an open
    proposal (``already_proposed``: rental ids). Pure: the engine makes the proposals."""
    hard = [s for s in statuses if s.level == "hard"]
    team = next((s for s in hard if s.scope == "team"), None)
    users = {s.user_id: s for s in hard if s.scope == "user"}
    skip = set(already_proposed)
    out = []
    for rental in active:
        if rental.state not in ACTIVE_STATES or rental.state == RentalState.TEARING_DOWN or rental.id in skip:
            continue
        status = users.get(rental.requester_id) or team
        if status is not None:
            out.append((rental, status))
    return out


def teardown_proposal(rental: Rental, status: BudgetStatus, settings: Settings, now: float) -> dict[str, str]:
    """The reason and the default action (BUDGET_HARD_DEFAULT_ACTION: ``keep`` or ``destroy``) of the
    teardown proposal a rental from ``teardown_candidates`` gets."""
    who = rental.requester_name if status.scope == "user" else None
    return {"reason": f"budget: {status.name(who)} is spent ({status.numbers(now)})",
            "default_action": settings.budget_hard_default_action}


async def propose_teardowns(store: Store, settings: Settings, now: float, *, emit: Emit,
                            proposal_timeout: float) -> list[Approval]:
    """Give each running rental under a spent budget its teardown proposal, once per budget period.

    The proposal's default action (BUDGET_HARD_DEFAULT_ACTION) is carried out when nobody answers
    within ``proposal_timeout``, by the engine's sweep of expired proposals. "Once" is claimed in the
    database with the proposal, so a restart or a second check does not propose again.
    """
    if not budgets_set(settings):
        return []
    statuses = await all_statuses(store, settings, now)
    if not any(s.level == "hard" for s in statuses):
        return []
    open_ = {a.rental_id for a in await store.pending_approvals(kind=ApprovalKind.TEARDOWN) if a.rental_id}
    made: list[tuple[Rental, Approval, dict[str, str]]] = []
    for rental, status in teardown_candidates(statuses, await store.active_rentals(), open_):
        proposal = teardown_proposal(rental, status, settings, now)
        evidence = {"category": "budget", "severity": "warn", "line": None, "text": proposal["reason"],
                    "advice": f"Destroy it if it is not needed. With no answer: {proposal['default_action']}."}
        async with store.transaction():
            if not await claim_budget_alert(store, scope=f"teardown:{rental.id}", period=status.period,
                                            period_start=status.period_start, level="hard", now=now):
                continue
            approval = await store.create_approval(
                kind=ApprovalKind.TEARDOWN, requester_id=0, rental_id=rental.id,
                payload={"reason": proposal["reason"], "evidence": evidence}, now=now,
                expires_at=now + proposal_timeout, default_action=proposal["default_action"])
        made.append((rental, approval, {**proposal}))
    for rental, approval, proposal in made:
        await emit(rental, EV_PROPOSAL, {
            "approval_id": approval.id, "reason": proposal["reason"],
            "evidence": approval.payload["evidence"], "expires_at": approval.expires_at,
            "default_action": proposal["default_action"]})
    return [approval for _, approval, _ in made]

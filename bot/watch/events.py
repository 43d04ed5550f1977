"""The engine's event kinds, their payloads and the notifier protocol: a contract with every face of
the engine (the Discord channel watcher, the terminal demo). Keep the values: stored events carry them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

from bot.db.models import Event, Rental


class EventKind(StrEnum):
    """What an event reports. The value is stored with the event and is a contract."""

    STATE = "state"
    MILESTONE = "milestone"
    FINDING = "finding"
    NOISE = "noise_summary"
    COST = "cost"
    VERDICT = "verdict"
    DECISION = "decision"
    PROPOSAL = "teardown_proposed"
    RECEIPT = "receipt"
    LOG_ROTATED = "log_rotated"
    INFO = "info"
    APPROVAL = "approval"


# Short names, used throughout the faces of the engine.
EV_STATE = EventKind.STATE
EV_MILESTONE = EventKind.MILESTONE
EV_FINDING = EventKind.FINDING
EV_NOISE = EventKind.NOISE
EV_COST = EventKind.COST
EV_VERDICT = EventKind.VERDICT
EV_DECISION = EventKind.DECISION
EV_PROPOSAL = EventKind.PROPOSAL
EV_RECEIPT = EventKind.RECEIPT
EV_LOG_ROTATED = EventKind.LOG_ROTATED
EV_INFO = EventKind.INFO
EV_APPROVAL = EventKind.APPROVAL


# A rental moved from one state to another ("from" is a keyword, hence the functional form).
StatePayload = TypedDict(
    "StatePayload", {"from": str, "to": str, "reason": str | None, "instance_id": NotRequired[int]})


class ProgressFields(TypedDict):
    """Elapsed time and cost, attached to milestones, verdicts and decisions."""

    elapsed_s: float
    cost_usd: float


class FindingPayload(TypedDict):
    """A classified log line or an engine observation, with its evidence and advice."""

    line: int | None
    category: str
    severity: str
    text: str
    advice: str
    stops_run: bool
    rule: str | None
    lines: NotRequired[list[int | None]]
    similar: NotRequired[int]
    deadline: NotRequired[str]
    candidates: NotRequired[list[str]]
    configured: NotRequired[str]


class EvidencePayload(TypedDict):
    category: str
    severity: str
    line: int | None
    text: str
    advice: str


class DecisionPayload(ProgressFields):
    """The engine decided to destroy, or to propose a teardown."""

    action: str
    reason: str
    evidence: EvidencePayload


class ProposalPayload(TypedDict):
    approval_id: int
    reason: str
    evidence: EvidencePayload
    expires_at: float
    default_action: str


class ReceiptPayload(TypedDict):
    """The rental is over: what it cost and why it ended (cost from ``bot.watch.cost.rental_cost``)."""

    duration_s: float
    cost_usd: float
    reason: str
    by: str
    dph: float | None
    milestones: list[str]
    verdict: str


class CostPayload(TypedDict):
    cost_usd: float
    step: float
    dph: float | None
    elapsed_s: float


class InfoPayload(TypedDict):
    text: str


class ApprovalPayload(TypedDict):
    approval_id: int
    kind: str
    status: str
    by: NotRequired[str]
    quoted_dph: NotRequired[float]
    previous_dph: NotRequired[float]
    offer_id: NotRequired[int]
    default_action: NotRequired[str | None]


# The payload types by kind, for readers that want to narrow (``cast(PAYLOADS[kind], payload)``).
PAYLOADS: dict[EventKind, Any] = {
    EventKind.STATE: StatePayload, EventKind.FINDING: FindingPayload, EventKind.DECISION: DecisionPayload,
    EventKind.PROPOSAL: ProposalPayload, EventKind.RECEIPT: ReceiptPayload, EventKind.COST: CostPayload,
    EventKind.INFO: InfoPayload, EventKind.APPROVAL: ApprovalPayload,
}


class Notifier(Protocol):
    """Delivers stored events somewhere (a Discord channel, a terminal). Raise to retry later."""

    async def notify(self, rental: Rental, event: Event) -> None: ...


@runtime_checkable
class Alerter(Protocol):
    """A notifier that can also post an alert about the bot itself (not about one rental).

    Alerts are held in memory, not in the database: they report that the database (or Vast)
    cannot be relied on, so they must not depend on it.
    """

    async def alert(self, text: str) -> None: ...

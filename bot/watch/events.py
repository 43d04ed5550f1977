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
    LEASE_NOTICE = "lease_notice"
    LEASE_EXTENDED = "lease_extended"
    LEASE_HELD = "lease_held"
    RECHECK_BREACH = "recheck_breach"


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
EV_LEASE_NOTICE = EventKind.LEASE_NOTICE
EV_LEASE_EXTENDED = EventKind.LEASE_EXTENDED
EV_LEASE_HELD = EventKind.LEASE_HELD
EV_RECHECK_BREACH = EventKind.RECHECK_BREACH


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
    idle_s: NotRequired[float]  # seconds ComfyUI sat ready with nothing to do (the idle lease)


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


class LeaseNoticePayload(TypedDict):
    """The requester is asked to extend or tear down: the lease ends (or ComfyUI sat idle) soon."""

    reason: str  # "lease" | "idle"
    deadline: float  # when it is torn down with no answer (also the token of the notice's buttons)
    requester_id: int | None
    idle_s: float  # seconds ComfyUI has been idle at the notice
    busy: bool | None  # ComfyUI running or queueing a prompt now (None: could not tell)


class LeaseExtendedPayload(TypedDict):
    ends_at: float
    by: str
    by_id: int
    total_s: float  # the lease's length from ready to its new end
    approver: bool  # an approver's click was needed (past LEASE_MAX_TOTAL)


class LeaseHeldPayload(TypedDict):
    """The lease is over but ComfyUI is running a prompt: the teardown waits for it."""

    deadline: float
    running: int
    pending: int


class RecheckPayload(TypedDict):
    """Vast's view of a new instance breaks what was approved: destroyed at once."""

    check: str  # "geolocation" | "price"
    text: str
    geolocation: str | None
    dph_total: float | None
    quoted_dph: float | None
    tolerance: float


# The payload types by kind, for readers that want to narrow (``cast(PAYLOADS[kind], payload)``).
PAYLOADS: dict[EventKind, Any] = {
    EventKind.STATE: StatePayload, EventKind.FINDING: FindingPayload, EventKind.DECISION: DecisionPayload,
    EventKind.PROPOSAL: ProposalPayload, EventKind.RECEIPT: ReceiptPayload, EventKind.COST: CostPayload,
    EventKind.INFO: InfoPayload, EventKind.APPROVAL: ApprovalPayload,
    EventKind.LEASE_NOTICE: LeaseNoticePayload, EventKind.LEASE_EXTENDED: LeaseExtendedPayload,
    EventKind.LEASE_HELD: LeaseHeldPayload, EventKind.RECHECK_BREACH: RecheckPayload,
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

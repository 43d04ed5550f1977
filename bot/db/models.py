"""Typed rows of the state store (rentals, events, approvals, hosts, costs, watch state) and their enums."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RentalState(StrEnum):
    """Where a rental is in its life, from the user's request to the destroyed instance."""

    REQUESTED = "requested"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CREATING = "creating"
    PROVISIONING = "provisioning"
    READY = "ready"
    DEGRADED = "degraded"
    FAILED = "failed"
    TEARING_DOWN = "tearing_down"
    DESTROYED = "destroyed"
    CREATE_FAILED = "create_failed"


# Anything that may be billing on Vast: a create may have gone through, and a failed instance
# bills until it is destroyed. These are the rentals the engine watches and /status lists.
ACTIVE_STATES: frozenset[RentalState] = frozenset(
    {
        RentalState.CREATING,
        RentalState.PROVISIONING,
        RentalState.READY,
        RentalState.DEGRADED,
        RentalState.FAILED,
        RentalState.TEARING_DOWN,
    }
)
# Before anything was rented: nothing bills yet, but the rental is still open.
PRE_RENTAL_STATES: frozenset[RentalState] = frozenset(
    {RentalState.REQUESTED, RentalState.AWAITING_APPROVAL, RentalState.APPROVED}
)
# Nothing more will happen to these rentals.
TERMINAL_STATES: frozenset[RentalState] = frozenset(
    {RentalState.DENIED, RentalState.EXPIRED, RentalState.DESTROYED, RentalState.CREATE_FAILED}
)
# Not terminal: what a user may still act on (autocomplete lists these).
OPEN_STATES: frozenset[RentalState] = frozenset(RentalState) - TERMINAL_STATES


class ApprovalKind(StrEnum):
    RENT = "rent"
    TEARDOWN = "teardown"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class HostOutcome(StrEnum):
    """How a machine served a rental; ``failed`` puts it on the avoid list."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Rental:
    id: int
    label: str
    requester_id: int | None
    requester_name: str | None
    offer_id: int | None
    machine_id: int | None
    host_id: int | None
    gpu_name: str | None
    num_gpus: int | None
    quoted_dph: float | None
    dph_total: float | None
    geolocation: str | None
    instance_id: int | None
    state: RentalState
    state_reason: str | None
    request: dict[str, Any]
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None
    comfyui_url: str | None
    tunnel_url: str | None
    status_channel_id: int | None
    status_message_id: int | None
    # Billing model (see bot.watch.cost.rental_cost): rates and running time on the bot's clock.
    dph_base: float | None = None
    storage_dph: float | None = None
    cost_base: float = 0.0
    billed_from: float | None = None
    running_s: float = 0.0
    running_since: float | None = None

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    rental_id: int
    seq: int
    ts: float
    kind: str
    payload: dict[str, Any]
    posted_at: float | None

    @property
    def posted(self) -> bool:
        return self.posted_at is not None


@dataclass(frozen=True, slots=True)
class Approval:
    id: int
    kind: ApprovalKind
    rental_id: int | None
    requester_id: int | None
    payload: dict[str, Any]
    status: ApprovalStatus
    # Starts at 1 and grows with each requote; a button carrying an older revision is stale.
    revision: int
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: int | None
    decided_by_name: str | None
    decision_note: str | None
    default_action: str | None
    channel_id: int | None
    message_id: int | None

    @property
    def is_pending(self) -> bool:
        return self.status is ApprovalStatus.PENDING


@dataclass(frozen=True, slots=True)
class HostRecord:
    id: int
    rental_id: int | None
    machine_id: int
    host_id: int | None
    geolocation: str | None
    outcome: str
    reason: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class CostSample:
    id: int
    rental_id: int
    ts: float
    dph: float
    cost_usd: float


@dataclass(frozen=True, slots=True)
class WatchState:
    """What the watch engine needs to resume a rental after a restart."""

    rental_id: int
    log_offset: int
    log_path: str | None
    host_key: str | None
    ssh_endpoint: str | None
    updated_at: float
    data: dict[str, Any] = field(default_factory=dict)

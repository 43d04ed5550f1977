"""The bot's persistent state: an aiosqlite store with numbered SQL migrations and typed rows."""

from bot.db.models import (
    ACTIVE_STATES,
    OPEN_STATES,
    PRE_RENTAL_STATES,
    TERMINAL_STATES,
    Approval,
    ApprovalKind,
    ApprovalStatus,
    CostSample,
    Event,
    HostOutcome,
    HostRecord,
    Rental,
    RentalState,
    WatchState,
)
from bot.db.schema import Migration, MigrationError, load_migrations
from bot.db.store import (
    RENTAL_UPDATABLE_FIELDS,
    IntegrityError,
    NotFoundError,
    Store,
    StoreCounts,
    StoreError,
)

__all__ = [
    "ACTIVE_STATES",
    "OPEN_STATES",
    "PRE_RENTAL_STATES",
    "RENTAL_UPDATABLE_FIELDS",
    "TERMINAL_STATES",
    "Approval",
    "ApprovalKind",
    "ApprovalStatus",
    "CostSample",
    "Event",
    "HostOutcome",
    "HostRecord",
    "IntegrityError",
    "Migration",
    "MigrationError",
    "NotFoundError",
    "Rental",
    "RentalState",
    "Store",
    "StoreCounts",
    "StoreError",
    "WatchState",
    "load_migrations",
]

"""The engine's event kinds and the notifier protocol: a contract with every face of the engine
(the Discord channel watcher, the terminal demo). Keep the names: stored events carry them."""

from __future__ import annotations

from typing import Protocol

from bot.db.models import Event, Rental

EV_STATE = "state"
EV_MILESTONE = "milestone"
EV_FINDING = "finding"
EV_NOISE = "noise_summary"
EV_COST = "cost"
EV_VERDICT = "verdict"
EV_DECISION = "decision"
EV_PROPOSAL = "teardown_proposed"
EV_RECEIPT = "receipt"
EV_LOG_ROTATED = "log_rotated"
EV_INFO = "info"
EV_APPROVAL = "approval"


class Notifier(Protocol):
    """Delivers stored events somewhere (a Discord channel, a terminal). Raise to retry later."""

    async def notify(self, rental: Rental, event: Event) -> None: ...

"""The one cost function: what Vast has billed for a rental so far, on the bot's own clock.

Every figure the bot shows (live lines, /status, /destroy, receipts, the demo table,
``status --json``, budgets and the audit) comes from :func:`rental_cost`.

Assumptions, from Vast's billing rules:
- storage (``storage_total_cost`` $/h for the allocated disk) bills every second the instance
  exists, from its creation to its destroy, whatever its state;
- the GPU (``dph_base`` $/h) bills only while the instance is ``running``; the bot sees a running
  stretch from the poll that first showed it (so it may start up to one poll late);
- bandwidth is not reported per instance and is left out;
- when only ``dph_total`` is known (an old row, an instance not listed yet), the whole life is
  priced at ``dph_total``: an upper bound, never an under-estimate.
Times are the bot's clock, never Vast's ``start_date`` (a skewed host clock must not move money).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bot.db.models import Rental


@dataclass(frozen=True, slots=True)
class CostMeter:
    """Dollars billed so far for an instance charging ``dph`` $/h since ``start``."""

    dph: float
    start: float

    def cost_at(self, now: float) -> float:
        if not (self.dph >= 0 and math.isfinite(self.dph)):
            return 0.0
        return max(0.0, now - self.start) * self.dph / 3600.0


def _rate(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def rental_cost(rental: Rental, now: float) -> float:
    """Dollars billed for ``rental`` up to ``now`` (or its end), by the model in this module."""
    if rental.started_at is None or rental.instance_id is None:
        return 0.0  # nothing was created: waiting for approval or a create is free
    end = rental.ended_at if rental.ended_at is not None else now
    since = rental.billed_from if rental.billed_from is not None else rental.started_at
    base = rental.cost_base if math.isfinite(rental.cost_base) and rental.cost_base > 0 else 0.0
    storage, gpu = _rate(rental.storage_dph), _rate(rental.dph_base)
    if storage is None or gpu is None:
        total = _rate(rental.dph_total if rental.dph_total is not None else rental.quoted_dph) or 0.0
        return base + CostMeter(total, since).cost_at(end)
    running = max(0.0, rental.running_s)
    if rental.running_since is not None:
        running += max(0.0, end - max(rental.running_since, since))
    return base + storage * max(0.0, end - since) / 3600.0 + gpu * running / 3600.0


def crossed_steps(before: float, after: float, step: float) -> list[float]:
    """Dollar thresholds (multiples of ``step``) passed between two cost readings."""
    if step <= 0 or after <= before:
        return []
    first = math.floor(before / step) + 1
    last = math.floor(after / step + 1e-9)
    return [round(k * step, 6) for k in range(first, last + 1)]

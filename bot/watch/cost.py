"""Cost-to-date from the billed rate: per second, from the billing start."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostMeter:
    """Dollars billed so far for an instance charging ``dph`` $/h since ``start``."""

    dph: float
    start: float

    def cost_at(self, now: float) -> float:
        if not (self.dph >= 0 and math.isfinite(self.dph)):
            return 0.0
        return max(0.0, now - self.start) * self.dph / 3600.0


def crossed_steps(before: float, after: float, step: float) -> list[float]:
    """Dollar thresholds (multiples of ``step``) passed between two cost readings."""
    if step <= 0 or after <= before:
        return []
    first = math.floor(before / step) + 1
    last = math.floor(after / step + 1e-9)
    return [round(k * step, 6) for k in range(first, last + 1)]

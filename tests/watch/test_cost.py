"""Cost-to-date arithmetic."""

from __future__ import annotations

from bot.watch.cost import CostMeter, crossed_steps


def test_cost_is_per_second_from_the_billing_start() -> None:
    meter = CostMeter(dph=0.18, start=1000.0)
    assert meter.cost_at(1000.0) == 0.0
    assert meter.cost_at(900.0) == 0.0  # before the start: nothing billed
    assert abs(meter.cost_at(1000.0 + 3600) - 0.18) < 1e-12
    assert abs(meter.cost_at(1001.0) - 0.18 / 3600) < 1e-12


def test_a_nonsense_rate_costs_nothing_rather_than_crashing() -> None:
    assert CostMeter(dph=float("nan"), start=0).cost_at(100) == 0.0
    assert CostMeter(dph=-1.0, start=0).cost_at(100) == 0.0


def test_crossed_steps() -> None:
    assert crossed_steps(0.0, 0.24, 0.25) == []
    assert crossed_steps(0.0, 0.25, 0.25) == [0.25]
    assert crossed_steps(0.24, 0.76, 0.25) == [0.25, 0.5, 0.75]
    assert crossed_steps(0.25, 0.26, 0.25) == []  # already reported
    assert crossed_steps(0.5, 0.4, 0.25) == []
    assert crossed_steps(0.0, 1.0, 0.0) == []

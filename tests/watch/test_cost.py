"""Cost-to-date arithmetic."""

from __future__ import annotations

import pytest

from bot.db.models import Rental
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


# ---------------------------------------------------------------- rental_cost: the one cost function

def _rental(**over: object) -> Rental:
    from bot.db.models import RentalState

    base: dict[str, object] = dict(
        id=1, label="vastops-t", requester_id=1, requester_name="u", offer_id=1, machine_id=1, host_id=1,
        gpu_name="RTX 4090", num_gpus=1, quoted_dph=0.5, dph_total=0.5, geolocation="Canada", instance_id=7,
        state=RentalState.PROVISIONING, state_reason=None, request={}, created_at=0.0, updated_at=0.0,
        started_at=1000.0, ended_at=None, comfyui_url=None, tunnel_url=None, status_channel_id=None,
        status_message_id=None,
    )
    base.update(over)
    return Rental(**base)  # type: ignore[arg-type]


def test_rental_cost_is_zero_before_anything_was_created() -> None:
    from bot.watch.cost import rental_cost

    assert rental_cost(_rental(started_at=None, instance_id=None), now=5000.0) == 0.0


def test_rental_cost_without_split_rates_prices_the_whole_life_at_dph_total() -> None:
    from bot.watch.cost import rental_cost

    assert rental_cost(_rental(), now=1000.0 + 3600) == pytest.approx(0.5)


def test_rental_cost_bills_storage_from_creation_and_gpu_only_while_running() -> None:
    from bot.watch.cost import rental_cost

    # 1 h of life, 30 min of it running: storage 0.036 $/h for 1 h + GPU 0.40 $/h for 0.5 h.
    rental = _rental(storage_dph=0.036, dph_base=0.40, running_s=600.0, running_since=1000.0 + 2400)
    assert rental_cost(rental, now=1000.0 + 3600) == pytest.approx(0.036 + 0.20)


def test_rental_cost_stops_at_the_end_and_keeps_the_cost_before_a_rate_change() -> None:
    from bot.watch.cost import rental_cost

    rental = _rental(storage_dph=0.01, dph_base=1.0, cost_base=0.25, billed_from=2000.0, running_s=0.0,
                     running_since=2000.0, ended_at=2000.0 + 1800)
    assert rental_cost(rental, now=99_999.0) == pytest.approx(0.25 + 0.005 + 0.5)

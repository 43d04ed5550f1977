"""One cost figure everywhere: the demo table, the receipt, /status and /destroy (cost_to_date), the
CLI's status card, and what the simulator (standing in for Vast) actually billed."""

from __future__ import annotations

import pytest

from bot.cli import rental_card
from cogs.common import cost_to_date
from tests.rehearsal.helpers import play_fresh


@pytest.mark.parametrize("name", ["disk-full", "script-404"])
async def test_the_demo_table_the_receipt_and_status_show_one_figure(name: str) -> None:
    result = await play_fresh(name)
    assert result.rental is not None and result.rental.ended_at is not None
    [receipt] = [e.payload for e in result.events if e.kind == "receipt"]
    table = result.spent
    now = result.rental.ended_at + 3600.0  # any later moment: a closed rental's cost no longer moves
    status = cost_to_date(result.rental, now)
    card = next(line for line in rental_card(result.rental, {}, now) if line.startswith("price"))
    assert receipt["cost_usd"] == pytest.approx(table, abs=1e-4)
    assert status == pytest.approx(table, abs=1e-4)
    assert f"${table:.2f} so far" in card
    # And the figure is what Vast billed, within what one poll takes to see the container running.
    assert abs(table - result.sim_spent) <= (result.dph or 0) * result.poll_interval / 3600 + 1e-4

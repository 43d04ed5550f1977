"""Shared rig of the rehearsal tests: a scenario played on a FakeClock through the real engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bot.clock import FakeClock
from bot.rehearsal.play import play
from bot.rehearsal.result import RunResult
from bot.sim.scenarios import load_scenario

AUDIT_DAY = 1_770_285_600.0  # 2026-02-05 10:00 UTC, the audit's date

Outcome = Callable[[str], Awaitable[RunResult]]


async def play_fresh(name: str, **kwargs: Any) -> RunResult:
    """Play scenario ``name`` once more, on its own FakeClock (nothing shared with other runs)."""
    return await play(load_scenario(name), FakeClock(start=AUDIT_DAY), **kwargs)

"""Fixtures for the rehearsal tests: scenarios played on a FakeClock through the real engine.

A scenario is played once per test session and its ``RunResult`` (plain data) is shared, so the
many assertions below cost one run each. Every run is real: the Vast simulator over loopback
HTTP, an asyncssh server per instance, SQLite in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bot.clock import FakeClock
from bot.sim.scenarios import load_scenario
from bot.sim.stage import RunResult, play

AUDIT_DAY = 1_770_285_600.0  # 2026-02-05 10:00 UTC, the audit's date
_PLAYED: dict[str, RunResult] = {}

Outcome = Callable[[str], Awaitable[RunResult]]


async def play_fresh(name: str, **kwargs: Any) -> RunResult:
    return await play(load_scenario(name), FakeClock(start=AUDIT_DAY), **kwargs)


@pytest.fixture
def outcome() -> Outcome:
    """``await outcome("stall")``: the scenario's result, played on first use."""

    async def get(name: str) -> RunResult:
        if name not in _PLAYED:
            _PLAYED[name] = await play_fresh(name)
        return _PLAYED[name]

    return get

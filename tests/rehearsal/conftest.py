"""Fixtures for the rehearsal tests: scenarios played on a FakeClock through the real engine.

A scenario is played once per test session and its ``RunResult`` (plain data) is shared, so the
many assertions below cost one run each. Every run is real: the Vast simulator over loopback
HTTP, an asyncssh server per instance, SQLite in a temporary directory.
"""

from __future__ import annotations

import pytest

from bot.rehearsal.result import RunResult
from tests.rehearsal.helpers import Outcome, play_fresh

_PLAYED: dict[str, RunResult] = {}


@pytest.fixture
def outcome() -> Outcome:
    """``await outcome("stall")``: the scenario's result, played on first use."""

    async def get(name: str) -> RunResult:
        if name not in _PLAYED:
            _PLAYED[name] = await play_fresh(name)
        return _PLAYED[name]

    return get

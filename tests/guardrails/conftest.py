"""Guardrail fixtures: the ``world`` of tests.guardrails.helpers opened for one test, and the fake
Discord fixtures of the end-to-end tests for the bot on that world."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import fake_discord, make_fake_discord  # noqa: F401 (the fake Discord fixtures)
from tests.guardrails.helpers import World, open_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as w:
        yield w

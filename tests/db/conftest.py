"""Fixtures for the state store tests: a real SQLite file in tmp_path per test."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.db import Rental, Store

_labels = itertools.count(1)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "vastops.sqlite"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    async with await Store.open(db_path) as opened:
        yield opened


async def make_rental(store: Store, **overrides: Any) -> Rental:
    """A rental with plausible defaults; any create_rental argument can be overridden."""
    values: dict[str, Any] = {
        "label": f"vastops-test-{next(_labels):05d}",
        "requester_id": 111,
        "requester_name": "alice",
        "offer_id": 9000,
        "quoted_dph": 0.42,
        "now": 1000.0,
    }
    values.update(overrides)
    return await store.create_rental(**values)


RentalFactory = Callable[..., Awaitable[Rental]]


@pytest.fixture
def new_rental(store: Store) -> RentalFactory:
    """``await new_rental(**overrides)`` creates a rental in the test's store."""

    async def factory(**overrides: Any) -> Rental:
        return await make_rental(store, **overrides)

    return factory

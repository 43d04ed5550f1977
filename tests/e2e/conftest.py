"""End-to-end fixtures: a local fake Discord with discord.py patched to talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.e2e.helpers import MakeFake
from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import APP_ID, APPROVER_ROLE_ID, CHANNEL_ID, GUILD_ID, NOTIFY_CHANNEL_ID


@pytest.fixture
async def make_fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeFake]:
    """Factory: ``await make_fake_discord(**overrides)`` starts a FakeDiscord and points discord.py at it.

    Defaults: the ids above, channels CHANNEL_ID and NOTIFY_CHANNEL_ID, role APPROVER_ROLE_ID ("approver").
    """
    started: list[FakeDiscord] = []

    async def make(**overrides: Any) -> FakeDiscord:
        kwargs: dict[str, Any] = {
            "app_id": APP_ID,
            "guild_id": GUILD_ID,
            "channels": {CHANNEL_ID: "general", NOTIFY_CHANNEL_ID: "vastops"},
            "roles": {APPROVER_ROLE_ID: "approver"},
        }
        kwargs.update(overrides)
        fake = FakeDiscord(**kwargs)
        await fake.start()
        started.append(fake)
        # Route.BASE also covers interaction callbacks and followups (the webhook adapter builds Routes too).
        monkeypatch.setattr(Route, "BASE", fake.api_base)
        # A non-sharded Client never asks GET /gateway/bot; it connects straight to DEFAULT_GATEWAY.
        monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
        return fake

    yield make
    for fake in started:
        await fake.stop()


@pytest.fixture
async def fake_discord(make_fake_discord: MakeFake) -> FakeDiscord:
    """A started FakeDiscord with the default ids; discord.py is patched to it for the test."""
    return await make_fake_discord()

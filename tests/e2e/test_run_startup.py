"""``python -m bot run``'s entry (``bot.app._run``) when Discord is away at boot: the watcher runs and
writes its heartbeat, the login is retried with backoff on the injected clock until the fake Discord
answers; a refused token ends the process with exit code 2 at once."""

# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import discord
import pytest
from discord.http import Route

from bot import app
from bot.clock import FakeClock
from bot.health import read_heartbeat, running_verdict
from bot.settings import Settings, load_settings
from tests.e2e.helpers import MakeFake
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, GUILD_ID, NOTIFY_CHANNEL_ID


def _settings(tmp_path: Path, token: str = "fake-token.not.real") -> Settings:
    return load_settings(
        _env_file=None, vast_backend="sim", discord_token=token, discord_guild_id=GUILD_ID,
        notify_channel_id=NOTIFY_CHANNEL_ID, approver_role_id=APPROVER_ROLE_ID,
        database_path=tmp_path / "data" / "vastops.db", poll_interval="15s",
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Wait (real time, bounded) for background work on loopback; not an assertion about speed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_run_watches_while_discord_is_unreachable_then_connects(
    make_fake_discord: MakeFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = await make_fake_discord()
    # Discord unreachable: every REST call goes to a loopback port nobody listens on.
    monkeypatch.setattr(Route, "BASE", fake.api_base.replace(f":{fake.port}/", f":{_closed_port()}/"))
    # discord.py warns once per process; re-arm the warnings so this run would print them.
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    settings = _settings(tmp_path)
    clock, stop = FakeClock(), asyncio.Event()
    task = asyncio.create_task(app._run(settings, clock=clock, stop=stop,
                                        retry=app.RetryPolicy(first=2.0, cap=60.0), rng=random.Random(7)))
    try:
        await _until(lambda: "Discord is not reachable" in caplog.text or task.done(), "the first failed login")
        assert not task.done(), "run gave up instead of retrying"
        # Several failed attempts, the watcher polling all along.
        for _ in range(4):
            await clock.advance(60.0, step=1.0)
            await asyncio.sleep(0.05)
        retries = caplog.text.count("Discord is not reachable")
        assert retries >= 3, caplog.text
        beat = read_heartbeat(settings.heartbeat_file)
        assert beat is not None and beat.ticks >= 2, "the watcher did not poll while Discord was away"
        assert beat.discord.startswith("unreachable")
        assert running_verdict(settings.heartbeat_file, clock.now(), 120.0)[0] == 0
        assert not fake.requests, "nothing should have reached Discord yet"

        # Discord is back: the next attempt (at most the cap later) logs in, syncs and connects.
        monkeypatch.setattr(Route, "BASE", fake.api_base)
        for _ in range(3):
            await clock.advance(30.0, step=1.0)
            if fake.gateway_connects:
                break
        await fake.wait_for_request(lambda r: r.method == "PUT" and r.path.endswith("/commands"), timeout=20)
        await fake.wait_for_gateway(timeout=20)
        assert {"rent", "status", "logs", "destroy"} <= {c["name"] for c in fake.commands(guild=True)}
        assert not task.done()
        assert "PyNaCl" not in caplog.text and "davey" not in caplog.text
        # The backoff is capped: no wait was longer than the cap.
        waits = [float(line.rsplit("retrying in ", 1)[1].split("s", 1)[0])
                 for line in caplog.text.splitlines() if "retrying in " in line]
        assert waits and max(waits) <= 60.0
        assert waits[1] > waits[0] * 0.5  # it grows (jitter keeps it within half of the ceiling)
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 30)
    assert code == 0


async def test_a_refused_token_exits_2_at_once(make_fake_discord: MakeFake, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    await make_fake_discord(bot_token="the-right-token")
    settings = _settings(tmp_path, token="a-wrong-token")
    clock = FakeClock()
    code = await asyncio.wait_for(app._run(settings, clock=clock, stop=asyncio.Event()), 30)
    assert code == 2
    assert "Reset Token" in caplog.text

"""Point discord.py at a FakeDiscord and run a bot against it, for the e2e fixture and bench scripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, TypeVar

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

if TYPE_CHECKING:
    import discord

    from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound="discord.Client")


class BotCrashed(RuntimeError):
    """The bot's ``start()`` task died (e.g. a gateway parser KeyError) while a test was using it."""


@contextlib.contextmanager
def patched_discord(fake: FakeDiscord) -> Iterator[None]:
    """Redirect every discord.py REST call and the gateway to ``fake`` (process globals; restored on exit).

    For pytest prefer the ``fake_discord`` fixture, which does the same through ``monkeypatch``.
    """
    old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


@contextlib.asynccontextmanager
async def start_bot(bot: ClientT, token: str = "fake-token.not.real", *, ready_timeout: float = 10.0,
                    fast_ready: bool = True) -> AsyncIterator[ClientT]:
    """Run ``bot.start(token)`` in a task until the bot is ready; close it on exit.

    If the start task dies (before or after ready) its exception is raised here as ``BotCrashed``
    instead of the test hanging until some wait times out. ``fast_ready`` lowers discord.py's
    ``guild_ready_timeout`` (2 s by default, the wait for more GUILD_CREATEs before on_ready) to 0.05 s.
    """
    if fast_ready:
        # Same knob as Client(guild_ready_timeout=...); read at READY time, so setting it now is enough.
        bot._connection.guild_ready_timeout = min(bot._connection.guild_ready_timeout, 0.05)
    task = asyncio.create_task(bot.start(token), name="fake-discord-bot-start")
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done and task.exception() is not None:
            await bot.close()
            raise BotCrashed(f"bot died before ready: {task.exception()!r}") from task.exception()
        await bot.close()
        task.cancel()
        raise TimeoutError(f"bot not ready after {ready_timeout}s (start task done: {task.done()})")

    body = asyncio.current_task()
    crashed: list[BaseException] = []

    def on_done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None and body is not None:
            crashed.append(t.exception())  # type: ignore[arg-type]
            body.cancel()  # wake the test out of whatever it is awaiting

    task.add_done_callback(on_done)
    try:
        yield bot
    except asyncio.CancelledError:
        if not crashed:
            raise
        if body is not None:
            body.uncancel()
        raise BotCrashed(f"bot died during the test: {crashed[0]!r}") from crashed[0]
    finally:
        task.remove_done_callback(on_done)
        await bot.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)

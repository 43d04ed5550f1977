"""The Discord bot: a ``commands.Bot`` with its services injected, and ``run(settings)`` that wires it all.

All start-up work happens in ``setup_hook`` (cogs, restart-proof buttons, guild command sync, the
watch engine); one ``tree.on_error`` answers the user whatever state the interaction is in and
logs the rest. The bot holds no business rules: cogs call ``RentalService`` and render.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.clock import Clock, SystemClock
from bot.db.store import DatabasePathError, Store, StoreError
from bot.render import Render
from bot.rentals import RentalService
from bot.replies import answer
from bot.settings import ConfigError, Settings
from bot.vast.client import VastClient
from bot.vast.errors import VastError
from bot.watch.engine import WatchEngine

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = (
    "cogs.approvals", "cogs.rent", "cogs.status", "cogs.logs", "cogs.destroy", "cogs.watcher",
    "cogs.audit", "cogs.budget", "cogs.hosts", "cogs.lease",
)

Preflight = Callable[[Settings], Awaitable[Any]]


def _load_preflight() -> Preflight:
    from bot.provisioning.preflight import preflight

    return preflight


def user_message(error: BaseException) -> str:
    """What the user is told about an error (never a traceback, never a secret)."""
    inner = getattr(error, "original", None) or error
    if isinstance(error, app_commands.NoPrivateMessage):
        return "This command only works in the server, not in DMs."
    if isinstance(error, app_commands.MissingRole | app_commands.MissingAnyRole):
        return "You need the approver role for this."
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {error.retry_after:.0f}s."
    if isinstance(error, app_commands.CheckFailure):
        return "You are not allowed to use this command here."
    if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
        return "This command changed since your Discord app loaded it. Try again in a minute."
    if isinstance(error, app_commands.TransformerError):
        return f"I could not understand the value {str(error.value)[:80]!r}."
    if isinstance(inner, VastError):
        return "Vast.ai did not answer as expected; nothing was changed. Try again in a minute."
    if isinstance(inner, StoreError):
        return "The bot's database is unavailable right now; nothing was changed. Try again shortly."
    if isinstance(inner, TimeoutError | asyncio.TimeoutError):
        return "That took too long and was stopped; nothing more will happen. Try again."
    return "Something went wrong on the bot's side"


class VastopsTree(app_commands.CommandTree["VastopsBot"]):
    async def on_error(self, interaction: discord.Interaction[VastopsBot],
                       error: app_commands.AppCommandError) -> None:
        await self.client.report_interaction_error(interaction, error)


class VastopsBot(commands.Bot):
    """The bot. Dependencies come in through the constructor; nothing is created on import."""

    def __init__(self, *, settings: Settings, store: Store, vast: VastClient, engine: WatchEngine,
                 rentals: RentalService, clock: Clock, render: Render | None = None,
                 preflight: Preflight | None = None, sync_commands: bool = True,
                 status_edit_interval: float = 5.0, watch_loop: bool = True, **options: Any) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned, help_command=None, intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(), tree_cls=VastopsTree, **options,
        )
        self.settings = settings
        self.store = store
        self.vast = vast
        self.engine = engine
        self.rentals = rentals
        self.clock = clock
        self.render = render or Render(engine.redactor)
        self.preflight = preflight
        self.sync_commands = sync_commands
        # False: the engine is only re-attached, and whoever drives it calls engine.tick() (tests, bench).
        self.watch_loop = watch_loop
        self.status_edit_interval = status_edit_interval
        # The channel watcher's notifier: the watcher extension installs it (cog_load).
        self.notifier: Any = None
        self.synced: list[app_commands.AppCommand] = []

    async def setup_hook(self) -> None:
        # Each extension registers its own commands and restart-proof buttons (DynamicItems).
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.sync_commands and self.settings.discord_guild_id is not None:
            guild = discord.Object(id=self.settings.discord_guild_id)
            # Guild commands show up at once (global ones can take an hour) and this bot serves one guild.
            self.tree.copy_global_to(guild=guild)
            self.synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(self.synced), guild.id)
        if self.watch_loop:
            await self.engine.start()
        else:
            await self.engine.reattach()
            self.engine.outbox.start()  # posts flow even when a test drives the polls itself

    async def close(self) -> None:
        try:
            await self.engine.stop()
            if self.notifier is not None:
                await self.notifier.close()
        except Exception:
            log.exception("stopping the watch engine failed")
        await super().close()

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        log.exception("unhandled error in %s", event_method)

    async def report_interaction_error(self, interaction: discord.Interaction[Any], error: BaseException, *,
                                       replace_original: bool = False) -> None:
        """Answer the user with a short, safe message and log the details (with a reference to match them).

        ``replace_original``: the click had already turned its (private, single-purpose) message into a
        "⏳ working…" state; the error replaces that text instead of leaving it there forever.
        """
        ref = secrets.token_hex(3)
        text = user_message(error)
        expected = isinstance(error, app_commands.CheckFailure | app_commands.CommandNotFound
                              | app_commands.TransformerError | app_commands.CommandSignatureMismatch)
        if expected:
            log.info("interaction %s refused: %s", interaction.id, error)
        else:
            cause = getattr(error, "original", None) or error
            log.error("interaction %s failed (ref %s)", interaction.id, ref, exc_info=cause)
            text = f"{text} (ref `{ref}`; the details are in the bot's log)."
        text = self.render.content(text)
        if replace_original and interaction.response.is_done() and not interaction.is_expired():
            try:
                await interaction.edit_original_response(content=f"⚠️ {text}", embeds=[], view=None)
                return
            except discord.HTTPException:
                log.warning("could not replace the working message of interaction %s", interaction.id)
        await answer(interaction, text)


def run(settings: Settings) -> int:
    """``python -m bot run``: the bot until interrupted (SIGINT/SIGTERM). Returns the process exit code.

    2 = configuration (a missing setting, a refused token, an unusable database): restarting will
    not help. Discord being unreachable is not an exit: ``_run`` keeps retrying and keeps watching.
    """
    missing = settings.missing_for("run")
    if missing:
        raise ConfigError([f"{name} is not set: {why}" for name, why in missing])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_run(settings))
    except KeyboardInterrupt:
        return 0
    except DatabasePathError as exc:
        raise ConfigError([exc.operator_message()]) from None


async def build_bot(settings: Settings, *, store: Store, vast: VastClient, clock: Clock,
                    preflight: Preflight | Literal["auto"] | None = "auto",
                    engine_options: dict[str, Any] | None = None, **bot_options: Any) -> VastopsBot:
    """Wire the engine, the rental service and the bot around an open store and Vast client.

    ``preflight="auto"`` uses ``bot.provisioning.preflight`` when PROVISION_SCRIPT_URL is set;
    None runs no provisioning preflight (the settings check in /rent remains).
    """
    from bot.watch.engine import WatchPolicy
    from bot.watch.redact import Redactor

    redactor = Redactor(settings.secret_values())
    engine = WatchEngine(store=store, vast=vast, clock=clock, policy=WatchPolicy.from_settings(settings),
                         redactor=redactor, notifier=None, **(engine_options or {}))
    from bot.watch.lease import LeasePolicy

    engine.lease.policy = LeasePolicy.from_settings(settings)
    if preflight == "auto":
        preflight = _load_preflight() if settings.provision_script_url else None
    rentals = RentalService(store=store, vast=vast, clock=clock, settings=settings, engine=engine,
                            preflight=preflight)
    bot = VastopsBot(settings=settings, store=store, vast=vast, engine=engine, rentals=rentals, clock=clock,
                     render=Render(redactor), preflight=preflight, **bot_options)
    return bot


@contextlib.asynccontextmanager
async def _vast_backend(settings: Settings, clock: Clock) -> AsyncIterator[tuple[Settings, VastClient]]:
    """The real Vast API, or with VAST_BACKEND=sim the rehearsal stage: the simulator plus an SSH
    server and a fake ComfyUI per rented instance playing SIM_SCENARIO in real time."""
    if settings.is_sim:
        from bot.sim.stage import sim_backend

        log.warning("VAST_BACKEND=sim: renting from the built-in simulator (scenario %r); nothing is spent",
                    settings.sim_scenario)
        async with sim_backend(settings, clock, scenario=settings.sim_scenario) as pair:
            yield pair
        return
    from bot.backend import open_vast

    async with open_vast(settings, clock) as vast:
        yield settings, vast


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter between Discord connection attempts (forever)."""

    first: float = 2.0
    cap: float = 300.0

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling: float = min(self.cap, self.first * 2 ** min(failures, 30))
        # Full spread below the ceiling would sometimes retry at once; half to all of it keeps growth.
        return ceiling * rng.uniform(0.5, 1.0)


def _quiet_voice_warnings() -> None:
    # This bot never joins voice; discord.py would warn about PyNaCl/davey on every start.
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


class _DiscordLink:
    """Keeps one bot connected to Discord, replacing it after a failed attempt; the engine is shared.

    discord.py cannot log in twice on one client once ``setup_hook`` ran (extensions are loaded),
    and a failed ``connect`` may close the client, so each new attempt gets a fresh ``VastopsBot``
    built around the same store, Vast client, engine and rental service. The engine is never stopped
    by a retry: rentals stay watched (and torn down) while Discord is away.
    """

    def __init__(self, bot: VastopsBot, token: str, *, clock: Clock, policy: RetryPolicy,
                 rng: random.Random) -> None:
        self.bot = bot
        self._token = token
        self._clock = clock
        self._policy = policy
        self._rng = rng
        self.state = "connecting"
        self.attempts = 0

    def describe(self) -> str:
        return "connected" if self.bot.is_ready() else self.state

    async def run(self) -> int:
        failures = 0
        while True:
            bot = self.bot
            self.attempts += 1
            try:
                await bot.login(self._token)
                await bot.connect(reconnect=True)
                if bot.is_closed():
                    return 0  # closed on purpose (shutdown)
                raise ConnectionError("the gateway connection ended")
            except discord.LoginFailure:
                log.error("Discord refused DISCORD_TOKEN; reset it in the developer portal (Bot > Reset Token) "
                          "and set the new one")
                return 2
            except discord.PrivilegedIntentsRequired:
                log.error("Discord refused the gateway intents; this bot needs no privileged one")
                return 2
            except discord.ConnectionClosed as exc:
                if exc.code == 4004:  # authentication failed on the gateway: the same as a refused token
                    log.error("Discord refused DISCORD_TOKEN on the gateway (close code 4004); reset the token")
                    return 2
                error: Exception = exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, DNS, 5xx, timeouts, a sync that failed half-way
                error = exc
            if bot.ws is not None:
                failures = 0  # a gateway session had been up: start the backoff from the first step again
            delay = self._policy.delay(failures, self._rng)
            failures += 1
            self.state = f"unreachable ({type(error).__name__}), retry {self.attempts + 1} in {delay:.0f}s"
            expected = isinstance(error, OSError | aiohttp.ClientError | discord.HTTPException
                                  | discord.GatewayNotFound | discord.ConnectionClosed | TimeoutError)
            log.warning("Discord is not reachable (%s: %s); retrying in %.0fs. The watcher keeps running.",
                        type(error).__name__, error, delay, exc_info=None if expected else error)
            await self._replace()
            await self._clock.sleep(delay)

    async def _replace(self) -> None:
        old = self.bot
        with contextlib.suppress(Exception):
            # The Discord side only (commands.Bot.close): VastopsBot.close would also stop the engine.
            await commands.Bot.close(old)
        with contextlib.suppress(Exception):
            await old.notifier.close()
        new = VastopsBot(settings=old.settings, store=old.store, vast=old.vast, engine=old.engine,
                         rentals=old.rentals, clock=old.clock, render=old.render, preflight=old.preflight)
        old.engine.notifier = None  # the new bot's watcher extension installs its own at login
        self.bot = new
        await new.engine.start()  # idempotent; restarts it if a closing client had stopped it

    async def close(self) -> None:
        await self.bot.close()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _install_stop_signals(stop: asyncio.Event) -> bool:
    """SIGTERM (systemd, docker stop) and SIGINT end the bot cleanly instead of killing it mid-write."""
    loop = asyncio.get_running_loop()
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not Unix
        return False
    return True


def _remove_stop_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)


async def _resume_creates(rentals: RentalService) -> None:
    """Create what was approved but never sent to Vast before the last stop (see RentalService)."""
    try:
        sent = await rentals.resume_creates()
    except Exception:  # the watch still finds anything by label; this must not stop the bot
        log.exception("resuming approved rentals failed")
        return
    if sent:
        log.warning("%d approved rental(s) were created after the restart", sent)


async def _run(settings: Settings, *, clock: Clock | None = None, stop: asyncio.Event | None = None,
               retry: RetryPolicy | None = None, rng: random.Random | None = None) -> int:
    """The watcher first, then Discord, retried forever; a heartbeat file after every watch poll."""
    assert settings.discord_token is not None
    clock = clock or SystemClock()
    own_signals = False
    if stop is None:
        stop = asyncio.Event()
        own_signals = _install_stop_signals(stop)
    _quiet_voice_warnings()
    try:
        return await _run_until_stopped(settings, clock, stop, retry, rng)
    finally:
        if own_signals:
            _remove_stop_signals()


async def _run_until_stopped(settings: Settings, clock: Clock, stop: asyncio.Event, retry: RetryPolicy | None,
                             rng: random.Random | None) -> int:
    from bot import health

    # The backend's settings keep the operator's Discord token: the one checked here.
    token = settings.discord_token
    assert token is not None
    store = await Store.open(settings.database_path)
    try:
        async with _vast_backend(settings, clock) as (settings, vast):
            bot = await build_bot(settings, store=store, vast=vast, clock=clock)
            link = _DiscordLink(bot, token.get_secret_value(), clock=clock,
                                policy=retry or RetryPolicy(), rng=rng or random.Random())
            beat = asyncio.create_task(health.beat_while_watching(
                settings.heartbeat_file, clock, lambda: link.bot.engine.ticks, link.describe,
                check_every=min(settings.poll_interval, 5.0)), name="heartbeat")
            # Watching starts before (and does not depend on) the Discord login.
            await bot.engine.start()
            resume = asyncio.create_task(_resume_creates(bot.rentals), name="resume-creates")
            connection = asyncio.create_task(link.run(), name="discord-link")
            stopped = asyncio.create_task(stop.wait(), name="stop-signal")
            try:
                await asyncio.wait({connection, stopped}, return_when=asyncio.FIRST_COMPLETED)
                code = connection.result() if connection.done() else 0
            finally:
                for task in (connection, stopped, beat, resume):
                    task.cancel()
                await asyncio.gather(connection, stopped, beat, resume, return_exceptions=True)
                await link.close()
            return code
    finally:
        await store.close()

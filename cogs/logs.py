"""/logs: the redacted tail of a rental's provisioning log; long output arrives as a file.

Where the lines come from, best first: the engine's live SSH session (the last bytes of
``PROVISION_LOG_PATH`` up to what the engine has read); the container log the engine last polled
through the Vast API when SSH is unusable; otherwise the bot's own recorded events (milestones,
findings, state changes), which exist for every rental, even destroyed ones.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.db.models import Rental
from bot.watch.engine import EV_DECISION, EV_FINDING, EV_INFO, EV_MILESTONE, EV_RECEIPT, EV_STATE
from bot.watch.model import Severity
from cogs.common import answer, find_rental, rental_choices

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

BYTES_PER_LINE = 256
MAX_TAIL_BYTES = 2 << 20
SSH_READ_TIMEOUT = 15.0


def _event_line(ts: float, kind: str, p: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")
    if kind == EV_MILESTONE:
        text = f"milestone {p.get('name')}" + (f" (log line {p['line']})" if p.get("line") else "")
    elif kind == EV_FINDING:
        text = f"{str(p.get('severity', '')).upper()} {p.get('category')}: {p.get('text')}"
    elif kind == EV_STATE:
        text = f"state {p.get('from')} -> {p.get('to')}: {p.get('reason') or ''}"
    elif kind == EV_DECISION:
        text = f"decision {p.get('action')}: {p.get('reason')}"
    elif kind == EV_RECEIPT:
        text = f"destroyed after {p.get('duration_s')}s, ${p.get('cost_usd')}: {p.get('reason')}"
    else:
        text = str(p.get("text") or p)
    return f"{when} {text}"


async def log_tail(bot: VastopsBot, rental: Rental, lines: int) -> tuple[list[str], str]:
    """The last ``lines`` lines of the rental's log and a note on where they came from."""
    watch = bot.engine.watches.get(rental.id)
    path = bot.engine.policy.log_path
    session = watch.session if watch is not None else None
    if watch is not None and session is not None:
        want = min(lines * BYTES_PER_LINE, MAX_TAIL_BYTES)
        start = max(0, watch.log_offset - want)
        try:
            reading = session.read_new(path, start, max_bytes=want + 65536)
            chunk = await asyncio.wait_for(reading, SSH_READ_TIMEOUT)
        except Exception as exc:  # SSH trouble: fall back to what the bot already holds
            log.info("rental %s: /logs SSH read failed: %r", rental.id, exc)
        else:
            if not chunk.missing:
                text = chunk.data.decode("utf-8", "replace").splitlines()
                if start > 0 and text and not chunk.rotated:
                    text = text[1:]  # the first line is probably cut mid-way
                return text[-lines:], f"live over SSH: {path}"
    data: dict[str, Any]
    if watch is not None:
        data = watch.memory.to_json()
    else:
        state = await bot.store.get_watch_state(rental.id)
        data = state.data if state else {}
    tail = [str(x) for x in data.get("fallback_tail") or []]
    if tail:
        return tail[-lines:], "container log via the Vast API, as last polled (SSH unavailable)"
    events = await bot.store.events_for(
        rental.id, kinds=[EV_MILESTONE, EV_FINDING, EV_STATE, EV_INFO, EV_DECISION, EV_RECEIPT])
    out = [_event_line(e.ts, e.kind, e.payload) for e in events]
    return out[-lines:], "the bot's recorded events (no live SSH session)"


def only_errors(bot: VastopsBot, lines: list[str]) -> list[str]:
    keep = []
    for line in lines:
        found = bot.engine.classifier.classify_line(line)
        # Unrecognised lines with error words are info (they never post) but belong in this view.
        if found is not None and not found.noise and (found.unknown or found.severity.rank >= Severity.WARN.rank):
            keep.append(line)
    return keep


class Logs(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="logs", description="The redacted tail of a rental's provisioning log")
    @app_commands.guild_only()
    @app_commands.describe(rental="which rental", lines="how many lines (default 50)",
                           errors_only="only warnings or worse, and unrecognised lines with error words")
    async def logs(self, interaction: discord.Interaction[Any], rental: str,
                   lines: app_commands.Range[int, 1, 5000] = 50, errors_only: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = self.bot
        found = await find_rental(bot, rental)
        if found is None:
            await answer(interaction, f"No rental {bot.render.inline(rental, 40)}. Pick one from the list.")
            return
        tail, source = await log_tail(bot, found, lines)
        if errors_only:
            tail = only_errors(bot, tail)
        header = (f"**Rental #{found.id}** · {bot.render.inline(found.label, 40)} · "
                  f"{len(tail)} {'problem ' if errors_only else ''}line(s) · {source}")
        if not tail:
            await answer(interaction, bot.render.content(header + "\nNothing to show."))
            return
        reply = bot.render.long_text("\n".join(tail), header=header, filename=f"rental-{found.id}.log")
        await interaction.followup.send(**reply.kwargs())

    @logs.autocomplete("rental")
    async def rental_autocomplete(self, interaction: discord.Interaction[Any],
                                  current: str) -> list[app_commands.Choice[str]]:
        return await rental_choices(self.bot, interaction, current)


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Logs(bot))

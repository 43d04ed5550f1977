"""/audit [since] [user]: where the money went, rental by rental, and what went wrong and why.

The report is ``bot.audit``; this cog parses the options, shows the summary and the causes in an
embed, and attaches the full table (text and CSV) and, with the chart extra installed, the PNG.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.audit import AuditReport, build_report, header, render_csv, render_text, summary_lines, usd
from bot.audit_cli import DEFAULT_SINCE, AuditUsageError, parse_since
from bot.chart import chart_available, render_png
from bot.durations import format_duration
from bot.render import EMBED_FIELD_VALUE_LIMIT, Attachment, truncate
from cogs.common import answer, user_name

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

TABLE_ROWS_SHOWN = 12
CAUSES_SHOWN = 6


def compact_table(report: AuditReport) -> str:
    """The newest rows, narrow enough for a phone: rental, outcome, ready in, billed, waste, requester."""
    rows = report.rows[-TABLE_ROWS_SHOWN:]
    cells = [("rental", "outcome", "ready", "billed", "waste", "by")]
    for r in rows:
        ready = "-" if r.time_to_ready_s is None else format_duration(r.time_to_ready_s)
        cells.append((f"#{r.rental_id}", r.outcome, ready, usd(r.billed_usd), usd(r.waste_usd), r.requester[:14]))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    if len(report.rows) > len(rows):
        lines.append(f"… and {len(report.rows) - len(rows)} older rental(s): see audit.txt")
    return "\n".join(lines)


class Audit(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="audit",
                          description="Where the money went: each rental's outcome, cause, cost and waste")
    @app_commands.guild_only()
    @app_commands.describe(since="how far back: 7d, 36h, 90m, or a UTC date YYYY-MM-DD (default 7d)",
                           user="only this requester's rentals")
    async def audit(self, interaction: discord.Interaction[Any],
                    since: app_commands.Range[str, 1, 20] = DEFAULT_SINCE,
                    user: discord.User | discord.Member | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = self.bot
        now = bot.clock.now()
        try:
            start = parse_since(since, now)
        except AuditUsageError as exc:
            await answer(interaction, bot.render.text(exc, 300))
            return
        report = await build_report(bot.store, since=start, now=now, requester_id=user.id if user else None,
                                    user=user_name(user) if user else None)
        r = bot.render
        description = "\n".join(r.text(line, 600) for line in summary_lines(report))
        if report.rows:
            description += "\n" + r.code(compact_table(report), limit=2500)
        fields: list[tuple[str, str, bool]] = []
        for group in report.causes[:CAUSES_SHOWN]:
            ids = ", ".join(f"#{i}" for i in group.rentals[:8]) + (" …" if len(group.rentals) > 8 else "")
            value = f"{group.count} rental(s) · **{usd(group.waste_usd)}** wasted · {ids}"
            if group.example:
                value += f"\nwhy: {r.text(group.example, 300)}"
            if group.advice:
                value += f"\nfix: {r.text(group.advice, 300)}"
            fields.append((r.plain(group.label, 200), truncate(value, EMBED_FIELD_VALUE_LIMIT), False))
        if not report.causes:
            fields.append(("What went wrong", "Nothing: no failed, stopped or idle rental in this window.", False))
        elif len(report.causes) > CAUSES_SHOWN:
            fields.append(("More causes", f"{len(report.causes) - CAUSES_SHOWN} more in audit.txt", False))
        files = [Attachment("audit.txt", r.redact(render_text(report)).encode()),
                 Attachment("audit.csv", r.redact(render_csv(report)).encode())]
        footer = "Full table in audit.txt / audit.csv"
        if report.rows and chart_available():
            try:
                # Drawing takes a few hundred milliseconds of CPU: off the event loop.
                files.append(Attachment("audit.png", await asyncio.to_thread(render_png, report)))
            except Exception:  # a broken chart must not cost the user the report
                log.exception("audit chart failed")
                footer += " · the chart could not be drawn (see the bot's log)"
        elif report.rows:
            footer += " · install the chart extra for a PNG chart"
        embed = r.embed(title=r.plain(header(report), 250), description=description, fields=fields,
                        colour=0xE67E22 if report.waste_usd > 0 else 0x2ECC71, footer=footer)
        await interaction.edit_original_response(embeds=[embed], attachments=[f.file() for f in files])


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Audit(bot))

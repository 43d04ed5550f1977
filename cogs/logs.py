"""/logs: the redacted tail of a rental's provisioning log; long output arrives as a file.

Who may read it: the rental's requester and members with the approver role. Anyone else gets a
private refusal: a log carries the ComfyUI and tunnel links of someone else's instance. Where the
lines come from and how they are cleaned and redacted is ``bot.watch.logtail``'s business.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.db.models import Rental
from bot.watch.logtail import THREAD_THRESHOLD
from cogs.common import answer, cooled_down, find_rental, is_approver, rental_choices

if TYPE_CHECKING:
    from bot.app import VastopsBot


def may_read_logs(bot: VastopsBot, rental: Rental, user: discord.abc.User | discord.Member) -> bool:
    """The access policy: the requester and approvers see a rental's logs and links."""
    if rental.requester_id is not None and rental.requester_id == user.id:
        return True
    return is_approver(bot.settings.approver_role_id, user)


class Logs(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="logs", description="The redacted tail of a rental's provisioning log")
    @app_commands.guild_only()
    @app_commands.describe(rental="which rental", lines="how many lines (default 50)",
                           errors_only="only warnings or worse, and unrecognised lines with error words")
    async def logs(self, interaction: discord.Interaction[Any], rental: str,
                   lines: app_commands.Range[int, 1, 5000] = 50, errors_only: bool = False) -> None:
        bot = self.bot
        if not await cooled_down(bot, interaction, "logs"):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await find_rental(bot, rental)
        if found is None:
            await answer(interaction, f"No rental {bot.render.inline(rental, 40)}. Pick one from the list.")
            return
        if not may_read_logs(bot, found, interaction.user):
            await answer(interaction, f"Only the member who requested rental #{found.id} and approvers can "
                                      "read its logs and links.")
            return
        tail = await bot.engine.views.log_tail(found.id, lines=lines, errors_only=errors_only)
        header = (f"**Rental #{found.id}** · {bot.render.inline(found.label, 40)} · "
                  f"{len(tail.lines)} {'problem ' if errors_only else ''}line(s) · {tail.source}")
        if not tail.lines:
            await answer(interaction, bot.render.content(header + "\nNothing to show."))
            return
        text = "\n".join(tail.lines)
        render = functools.partial(bot.render.long_text, text, header=header, filename=f"rental-{found.id}.log")
        # Rendering redacts the text once more (a safety net): off the event loop when it is big.
        reply = render() if len(text) < THREAD_THRESHOLD else await asyncio.to_thread(render)
        await interaction.followup.send(**reply.kwargs())

    @logs.autocomplete("rental")
    async def rental_autocomplete(self, interaction: discord.Interaction[Any],
                                  current: str) -> list[app_commands.Choice[str]]:
        return await rental_choices(self.bot, interaction, current)


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Logs(bot))

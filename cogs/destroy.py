"""/destroy: an ephemeral confirmation button, then ``RentalService.destroy``; receipt in the channel."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.durations import format_duration
from bot.render import money
from bot.rentals import DecisionResult
from cogs.common import answer, cost_to_date, find_rental, is_approver, rental_choices, user_name, vbot

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

# The reason rides in the custom_id (100 chars at most), so it survives a restart without storage.
DESTROY_TEMPLATE = r"vastops:destroy:(?P<rental>\d+)(?::(?P<reason>.{0,60}))?"
CANCEL_TEMPLATE = r"vastops:cancel"
REASON_MAX = 60


def destroy_custom_id(rental_id: int, reason: str | None) -> str:
    clean = " ".join((reason or "").split())[:REASON_MAX]
    return f"vastops:destroy:{rental_id}" + (f":{clean}" if clean else "")


class DestroyConfirmButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=DESTROY_TEMPLATE):
    def __init__(self, rental_id: int, reason: str | None) -> None:
        super().__init__(discord.ui.Button(label=f"Destroy rental #{rental_id}",
                                           style=discord.ButtonStyle.danger,
                                           custom_id=destroy_custom_id(rental_id, reason)))
        self.rental_id, self.reason = rental_id, (reason or None)

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> DestroyConfirmButton:
        return cls(int(match["rental"]), match["reason"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = vbot(interaction)
        try:
            await interaction.response.edit_message(
                content=f"⏳ Destroying rental #{self.rental_id} and waiting for Vast to confirm…", embeds=[],
                view=None)
            name = user_name(interaction.user)
            decision = await bot.rentals.destroy(
                self.rental_id, user_id=interaction.user.id, user_name=name,
                is_approver=is_approver(bot.settings.approver_role_id, interaction.user),
                reason=f"{self.reason} (by {name})" if self.reason else None)
            icon = "✅" if decision.result in (DecisionResult.APPROVED, DecisionResult.DENIED) else "⚠️"
            tail = ""
            if decision.result == DecisionResult.APPROVED and bot.settings.notify_channel_id:
                tail = f" The receipt is in <#{bot.settings.notify_channel_id}>."
            text = bot.render.content(f"{icon} {bot.render.text(decision.message, 1800)}{tail}")
            await interaction.edit_original_response(content=text)
        except Exception as exc:  # never leave the message in its "⏳ destroying…" state
            await bot.report_interaction_error(interaction, exc, replace_original=True)


class CancelButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CANCEL_TEMPLATE):
    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label="Cancel", style=discord.ButtonStyle.secondary,
                                           custom_id="vastops:cancel"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> CancelButton:
        return cls()

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.edit_message(content="Cancelled; nothing was destroyed.", embeds=[],
                                                view=None)


class Destroy(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="destroy", description="Destroy a rental's instance (asks to confirm first)")
    @app_commands.guild_only()
    @app_commands.describe(rental="which rental", reason="why (shown on the receipt)")
    async def destroy(self, interaction: discord.Interaction[Any], rental: str,
                      reason: app_commands.Range[str, 1, REASON_MAX] | None = None) -> None:
        bot = self.bot
        found = await find_rental(bot, rental)
        if found is None:
            await answer(interaction, f"No rental {bot.render.inline(rental, 40)}. Pick one from the list.")
            return
        if found.is_terminal:
            await answer(interaction, f"Rental #{found.id} is already {found.state.value}; nothing bills.")
            return
        now = bot.clock.now()
        start = found.started_at or found.created_at
        desc = (f"{bot.render.inline(found.label, 40)} · {found.state.value} · "
                f"up {format_duration(now - start)} · {money(cost_to_date(found, now))} so far.\n")
        if found.requester_id != interaction.user.id:
            owner = bot.render.text(found.requester_name or "?", 80)
            desc += f"It was requested by {owner}: an approver must confirm.\n"
        if reason:
            desc += f"Reason: {bot.render.text(reason, REASON_MAX + 20)}\n"
        embed = bot.render.embed(title=f"Destroy rental #{found.id}?",
                                 description=desc + "This cannot be undone.", colour=0xE74C3C)
        view = discord.ui.View(timeout=None)
        view.add_item(DestroyConfirmButton(found.id, reason))
        view.add_item(CancelButton())
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    @destroy.autocomplete("rental")
    async def rental_autocomplete(self, interaction: discord.Interaction[Any],
                                  current: str) -> list[app_commands.Choice[str]]:
        return await rental_choices(self.bot, interaction, current)


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Destroy(bot))
    bot.add_dynamic_items(DestroyConfirmButton, CancelButton)

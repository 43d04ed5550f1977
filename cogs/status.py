"""/status: every active rental at a glance (or one in detail), and billing instances unknown to the bot."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.db.models import Rental, RentalState
from bot.durations import format_duration
from bot.render import (
    EMBED_FIELD_NAME_LIMIT,
    EMBED_FIELD_VALUE_LIMIT,
    EMBED_MAX_FIELDS,
    EMBED_TOTAL_LIMIT,
    Attachment,
    Reply,
    money,
    truncate,
)
from bot.rentals import DecisionResult
from bot.vast.errors import VastError
from bot.vast.models import Instance
from bot.watch.links import displayable
from cogs.common import (
    answer,
    cooled_down,
    cost_to_date,
    find_rental,
    in_our_guild,
    is_approver,
    may_see_links,
    rental_choices,
    rental_links,
    rental_progress,
    status_embed,
    status_summary_line,
    user_name,
    vbot,
)

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

ORPHAN_TEMPLATE = r"vastops:orphan:(?P<instance>\d+)(?P<confirm>:confirm)?"
LINKS_TEMPLATE = r"vastops:links:(?P<rental>\d{1,18})"
MAX_RENTAL_FIELDS = 18
MAX_ORPHAN_BUTTONS = 10


class OrphanDestroyButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=ORPHAN_TEMPLATE):
    """Destroy an instance the bot does not know: first click asks, the second (``:confirm``) destroys."""

    def __init__(self, instance_id: int, *, confirm: bool = False) -> None:
        super().__init__(discord.ui.Button(
            label=f"{'Yes, destroy' if confirm else 'Destroy'} {instance_id}",
            style=discord.ButtonStyle.danger,
            custom_id=f"vastops:orphan:{instance_id}{':confirm' if confirm else ''}",
        ))
        self.instance_id, self.confirm = instance_id, confirm

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> OrphanDestroyButton:
        return cls(int(match["instance"]), confirm=bool(match["confirm"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = vbot(interaction)
        try:
            await self._click(bot, interaction)
        except Exception as exc:  # never leave the message in its "⏳ destroying…" state
            await bot.report_interaction_error(interaction, exc, replace_original=True)

    async def _click(self, bot: VastopsBot, interaction: discord.Interaction[Any]) -> None:
        approver = is_approver(bot.settings.approver_role_id, interaction.user)
        if not approver:
            await answer(interaction, "Only approvers can destroy instances the bot does not know.")
            return
        if not self.confirm:
            view = discord.ui.View(timeout=None)
            view.add_item(OrphanDestroyButton(self.instance_id, confirm=True))
            await interaction.response.send_message(
                f"Destroy Vast instance {self.instance_id}? The bot has no rental for it; "
                "whatever runs there is lost.",
                view=view, ephemeral=True)
            return
        await interaction.response.edit_message(content=f"⏳ Destroying instance {self.instance_id}…",
                                                view=None)
        decision = await bot.rentals.destroy_unknown_instance(
            self.instance_id, user_id=interaction.user.id, user_name=user_name(interaction.user),
            is_approver=approver)
        icon = "✅" if decision.result == DecisionResult.APPROVED else "⚠️"
        await interaction.edit_original_response(content=f"{icon} {bot.render.text(decision.message, 1900)}")


class LinksButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=LINKS_TEMPLATE):
    """"🔗 Links" under a public message about a rental: the links, privately, to whom the policy allows.

    The public message itself never carries them (``may_see_links``): the requester and the
    approvers get them from here or from /status.
    """

    def __init__(self, rental_id: int) -> None:
        super().__init__(discord.ui.Button(label="Links", emoji="🔗", style=discord.ButtonStyle.secondary,
                                           custom_id=f"vastops:links:{rental_id}"))
        self.rental_id = rental_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> LinksButton:
        return cls(int(match["rental"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = vbot(interaction)
        try:
            await answer(interaction, await links_text(bot, interaction, self.rental_id))
        except Exception as exc:
            await bot.report_interaction_error(interaction, exc)


async def links_text(bot: VastopsBot, interaction: discord.Interaction[Any], rental_id: int) -> str:
    """What the Links button tells the clicker (only ever ephemerally)."""
    if not in_our_guild(bot, interaction):
        return "Links are only shown inside the server, to its members."
    rental = await bot.store.get_rental(rental_id)
    if rental is None:
        return f"No rental #{rental_id}."
    if not may_see_links(bot.settings.approver_role_id, interaction.user, rental):
        return f"Only the requester of rental #{rental.id} and the approvers see its links."
    links = rental_links(bot.render, rental)
    if not links:
        return f"Rental #{rental.id} has no link yet: it appears once ComfyUI answers."
    return f"Rental #{rental.id}: " + " · ".join(links)


def links_view(rental_id: int) -> discord.ui.View:
    """A view holding only the Links button (for the public in-place status message)."""
    view = discord.ui.View(timeout=None)
    view.add_item(LinksButton(rental_id))
    return view


def orphan_line(bot: VastopsBot, inst: Instance) -> tuple[str, str]:
    r = bot.render
    name = f"⚠️ Instance {inst.id} · not known to the bot"
    value = (f"{r.text(inst.gpu_name or '?', 40)} ×{inst.num_gpus or 1} · "
             f"{r.text(inst.actual_status or '?', 30)} · {money(inst.dph_total, 3)}/h · "
             f"label {r.inline(inst.label or '—', 60)}\nStill billing: destroy it if nobody needs it.")
    return name, value


def _rentals_that_fit(summary: str, orphans: list[tuple[str, str, bool]],
                      rows: list[tuple[str, str, bool]]) -> int:
    """How many rental fields fit after the summary and the unknown instances: within 25 fields and
    the 6000-character total, with room kept for the "full list attached" note."""
    used = len("vastops status") + len(summary) + 200
    used += sum(len(truncate(n, EMBED_FIELD_NAME_LIMIT)) + len(truncate(v, EMBED_FIELD_VALUE_LIMIT))
                for n, v, _ in orphans)
    room = min(MAX_RENTAL_FIELDS, EMBED_MAX_FIELDS - len(orphans))
    shown = 0
    for name, value, _ in rows[:room]:
        used += len(truncate(name, EMBED_FIELD_NAME_LIMIT)) + len(truncate(value, EMBED_FIELD_VALUE_LIMIT))
        if used > EMBED_TOTAL_LIMIT:
            break
        shown += 1
    return shown


def _full_listing(bot: VastopsBot, active: list[Rental], unknown: list[Instance], now: float,
                  show_links: Callable[[Rental], bool]) -> str:
    """Every active rental and unknown instance, one plain line each (a file: no markdown, redacted).

    A rental's link only for whom ``show_links`` allows, and only of a trusted shape."""
    lines = [f"Active rentals ({len(active)})"]
    for r in active:
        start = r.started_at or r.created_at
        dph = r.dph_total if r.dph_total is not None else r.quoted_dph
        url = (displayable(r.comfyui_url) or displayable(r.tunnel_url)) if show_links(r) else None
        lines.append(f"#{r.id} {r.label} · {r.gpu_name or '?'} x{r.num_gpus or 1} · {r.state.value} · "
                     f"up {format_duration(now - start)} · {money(dph, 3)}/h · {money(cost_to_date(r, now))} so far"
                     f" · requested by {r.requester_name or '?'}" + (f" · {url}" if url else ""))
    lines += ["", f"Instances on the Vast account the bot does not know, still billing ({len(unknown)})"]
    for inst in unknown:
        lines.append(f"instance {inst.id} · {inst.gpu_name or '?'} x{inst.num_gpus or 1} · "
                     f"{inst.actual_status or '?'} · {money(inst.dph_total, 3)}/h · label {inst.label or '-'}")
    return bot.render.redact("\n".join(lines) + "\n")


class Status(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="status",
                          description="Active rentals, their progress and cost, and unknown instances")
    @app_commands.guild_only()
    @app_commands.describe(rental="one rental in detail (default: all active rentals)")
    async def status(self, interaction: discord.Interaction[Any], rental: str | None = None) -> None:
        bot = self.bot
        if not await cooled_down(bot, interaction, "status"):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        now = bot.clock.now()
        if rental is not None:
            found = await find_rental(bot, rental)
            if found is None:
                await answer(interaction,
                             f"No rental {bot.render.inline(rental, 40)}. Pick one from the list.")
                return
            show = may_see_links(bot.settings.approver_role_id, interaction.user, found)
            embed = status_embed(bot.render, found, await rental_progress(bot, found), now, show_links=show)
            await interaction.edit_original_response(embeds=[embed])
            return

        active = await bot.store.active_rentals()
        waiting = await bot.store.list_rentals(states=[RentalState.AWAITING_APPROVAL], limit=25)
        unknown: list[Instance] = []
        vast_note = ""
        try:
            # The watcher listed the account moments ago: /status does not queue behind it for the same list.
            unknown = await bot.rentals.unknown_instances(bot.engine.views.recent_instances())
        except VastError as exc:
            vast_note = f"\n⚠️ Could not list the Vast account's instances: {bot.render.text(str(exc), 200)}"
        rate = sum((r.dph_total or r.quoted_dph or 0.0) for r in active)
        spent = sum(cost_to_date(r, now) or 0.0 for r in active)
        summary = (f"**{len(active)}** active rental(s) · {money(rate, 3)}/h · {money(spent)} so far"
                   f"{f' · {len(waiting)} awaiting approval' if waiting else ''}"
                   f"{f' · **{len(unknown)} unknown instance(s) billing**' if unknown else ''}{vast_note}")
        if not active and not unknown:
            summary += "\nNothing is running. Use /rent to start."
        # Unknown instances first: they bill with nobody watching, and their buttons sit under this message.
        orphans = [(*orphan_line(bot, inst), False) for inst in unknown[:MAX_ORPHAN_BUTTONS]]
        rows = [(*status_summary_line(bot.render, item, await rental_progress(bot, item), now,
                                      show_links=may_see_links(bot.settings.approver_role_id, interaction.user,
                                                               item)), False)
                for item in active]
        shown = _rentals_that_fit(summary, orphans, rows)
        attachment = None
        if shown < len(rows) or len(orphans) < len(unknown):
            summary += (f"\n📎 Showing {shown} of {len(rows)} rental(s) and {len(orphans)} of {len(unknown)} "
                        "unknown instance(s); the full list is attached.")
            listing = _full_listing(bot, active, unknown, now,
                                    lambda r: may_see_links(bot.settings.approver_role_id, interaction.user, r))
            attachment = Attachment("status.txt", listing.encode())
        fields = orphans + rows[:shown]
        embed = bot.render.embed(title="vastops status", description=summary, fields=fields,
                                 colour=0xE67E22 if unknown else 0x2ECC71)
        view: discord.ui.View | None = None
        if unknown:
            view = discord.ui.View(timeout=None)
            for inst in unknown[:MAX_ORPHAN_BUTTONS]:
                view.add_item(OrphanDestroyButton(inst.id))
        kwargs = Reply(embeds=[embed], attachment=attachment).edit_kwargs()
        if view is not None:
            kwargs["view"] = view
        await interaction.edit_original_response(**kwargs)

    @status.autocomplete("rental")
    async def rental_autocomplete(self, interaction: discord.Interaction[Any],
                                  current: str) -> list[app_commands.Choice[str]]:
        return await rental_choices(self.bot, interaction, current)


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Status(bot))
    bot.add_dynamic_items(OrphanDestroyButton, LinksButton)

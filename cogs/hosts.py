"""/hosts (approvers): the machines our rentals ran on, how they did, whether offers leave them
out now, and clear or ban one. The rules live in ``bot/hosts.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.durations import format_duration
from bot.hosts import HostView, ban, clear, host_views
from bot.render import timestamp
from cogs.common import answer, is_approver, user_name

if TYPE_CHECKING:
    from bot.app import VastopsBot

MACHINES_SHOWN = 20


def host_line(bot: VastopsBot, view: HostView, now: float) -> str:
    r = bot.render
    where = r.text(view.geolocation or "?", 40)
    counts = f"✅ {view.ok} ok · 🟠 {view.degraded} degraded · ❌ {view.failed} failed"
    status = view.status(now)
    if status == "banned":
        by = f" by {r.text(view.marked_by, 40)}" if view.marked_by else ""
        why = f": {r.text(view.ban_reason, 120)}" if view.ban_reason else ""
        state = f"🚫 banned{by}{why}"
    elif status == "avoided":
        assert view.avoided_until is not None
        state = f"⏸️ left out of offers for {format_duration(view.avoided_until - now)}"
    else:
        state = "offered"
    line = f"**m{view.machine_id}** · {where} · {counts} · {state}"
    if view.failed and view.last_failure_reason:
        line += f"\n  last failure {timestamp(view.last_failed_ts)}: {r.text(view.last_failure_reason, 160)}"
    return line


class Hosts(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="hosts", description="Machines we rented, their outcomes; clear or ban one (approvers)")
    @app_commands.guild_only()
    @app_commands.describe(machine="a machine id (as in /rent and /audit, without the m)",
                           action="clear: forgive its failures and lift a ban; ban: never offer it again",
                           reason="why it is banned (shown in /hosts)")
    async def hosts(self, interaction: discord.Interaction[Any],
                    machine: app_commands.Range[int, 1, 2**53] | None = None,
                    action: Literal["clear", "ban"] | None = None,
                    reason: app_commands.Range[str, 1, 200] | None = None) -> None:
        bot = self.bot
        if not is_approver(bot.settings.approver_role_id, interaction.user):
            await answer(interaction, "Only members with the approver role can use /hosts.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        now = bot.clock.now()
        window = bot.settings.host_avoid_window
        if action is not None:
            if machine is None:
                await answer(interaction, f"Say which machine to {action}: /hosts machine:<id> action:{action}")
                return
            name = user_name(interaction.user)
            if action == "ban":
                await ban(bot.store, machine, by_id=interaction.user.id, by_name=name, reason=reason, now=now)
                done = f"🚫 Machine m{machine} is banned: /rent will never offer it."
            else:
                await clear(bot.store, machine, by_id=interaction.user.id, by_name=name, now=now)
                done = f"✅ Machine m{machine} is cleared: its past failures are forgiven and it is offered again."
            views = await host_views(bot.store, window=window, machine_id=machine)
            detail = "\n".join(host_line(bot, v, now) for v in views)
            await interaction.edit_original_response(content=bot.render.content(f"{done}\n{detail}".strip()))
            return
        views = await host_views(bot.store, window=window, machine_id=machine, limit=MACHINES_SHOWN + 1)
        if not views:
            what = f"machine m{machine}" if machine is not None else "any machine"
            await interaction.edit_original_response(content=f"No history for {what} yet.")
            return
        lines = [host_line(bot, v, now) for v in views[:MACHINES_SHOWN]]
        if len(views) > MACHINES_SHOWN:
            lines.append("… more machines: ask for one with machine:<id>.")
        embed = bot.render.embed(
            title="Hosts", description="\n".join(lines), colour=0x3498DB,
            footer=f"A failure leaves a machine out of offers for {format_duration(window)} (HOST_AVOID_WINDOW).",
        )
        await interaction.edit_original_response(embeds=[embed])


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Hosts(bot))

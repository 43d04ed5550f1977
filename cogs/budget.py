"""/budget, the budget gate /rent calls, and the periodic check that tells the channel once when a
budget passes its soft threshold or is spent. The rules live in ``bot/budget.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.budget import BudgetStatus, budget_statuses, check_rent, due_alerts, propose_teardowns
from bot.db.models import Rental
from bot.render import money, progress_bar
from cogs.common import user_name

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

MIN_CHECK_INTERVAL = 10.0


async def budget_refusal(bot: VastopsBot, user_id: int) -> str | None:
    """The message refusing a new rent when a budget this user falls under is spent, else None."""
    gate = await check_rent(bot.store, bot.settings, bot.clock.now(), user_id=user_id)
    return gate.refusal() if gate.blocked else None


def status_line(status: BudgetStatus, now: float) -> str:
    label = "Today" if status.period == "day" else "This week"
    if status.limit <= 0:
        return f"{label}: {money(status.spent)} (no budget set)"
    icon = {"ok": "🟢", "soft": "🟠", "hard": "🛑"}[status.level]
    bar = progress_bar(int(min(1.0, status.fraction) * 100), 100)
    return f"{icon} {label}: {bar} {status.numbers(now)}"


def alert_text(status: BudgetStatus, now: float, who: str | None, running: list[Rental]) -> str:
    name = status.name(who)
    if status.level == "soft":
        return (f"⚠️ Budget: {name} passed {status.soft_threshold:.0%}: {status.numbers(now)}. "
                "Every new rent now needs an approver.")
    lines = [f"🛑 Budget: {name} is spent: {status.numbers(now)}. No new rent until it resets."]
    if running:
        rows = ", ".join(f"#{r.id} ({money(r.dph_total or r.quoted_dph, 3)}/h)" for r in running[:10])
        lines.append(f"Still billing: {rows}. Tear down what is not needed (/destroy).")
    return "\n".join(lines)


class Budget(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot
        self._task: asyncio.Task[None] | None = None
        self.checks_done = 0  # periodic checks finished (tests wait on it: the check does real I/O)

    async def cog_load(self) -> None:
        # Same switch as the engine loop: tests and benches drive check_budgets() themselves.
        if self.bot.watch_loop:
            self._task = asyncio.create_task(self._loop(), name="budget-check")

    async def cog_unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                await self.check_budgets()
            except Exception:  # the loop must outlive one bad check (database busy, Discord down)
                log.exception("budget check failed")
            self.checks_done += 1
            await self.bot.clock.sleep(max(MIN_CHECK_INTERVAL, self.bot.settings.budget_check_interval))

    async def check_budgets(self) -> list[BudgetStatus]:
        """Post each budget newly past its soft threshold or spent, once per period; returns them. Running
        rentals under a spent budget get a teardown proposal (once per period; the engine posts it)."""
        bot = self.bot
        now = bot.clock.now()
        alerts = await due_alerts(bot.store, bot.settings, now)
        await propose_teardowns(bot.store, bot.settings, now, emit=bot.engine.emit,
                                proposal_timeout=bot.settings.proposal_timeout)
        if not alerts or bot.settings.notify_channel_id is None:
            return alerts
        channel = bot.get_channel(bot.settings.notify_channel_id)
        if channel is None:
            channel = await bot.fetch_channel(bot.settings.notify_channel_id)
        active = await bot.store.active_rentals()
        for status in alerts:
            who = None
            running = active
            if status.scope == "user":
                running = [r for r in active if r.requester_id == status.user_id]
                mine = await bot.store.list_rentals(requester_id=status.user_id, limit=1)
                who = mine[0].requester_name if mine else None
            text = alert_text(status, now, bot.render.text(who, 80) if who else None, running)
            try:
                await channel.send(content=bot.render.content(text))  # type: ignore[union-attr]
            except discord.HTTPException:
                log.warning("could not post the budget alert for %s", status.key, exc_info=True)
        return alerts

    @app_commands.command(name="budget", description="Team and own spend against the budgets, and when they reset")
    @app_commands.guild_only()
    async def budget(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = self.bot
        now = bot.clock.now()
        statuses = await budget_statuses(bot.store, bot.settings, now, user_id=interaction.user.id,
                                         include_unset=True)
        team = "\n".join(status_line(s, now) for s in statuses if s.scope == "team")
        own = "\n".join(status_line(s, now) for s in statuses if s.scope == "user")
        gate = await check_rent(bot.store, bot.settings, now, user_id=interaction.user.id)
        if gate.blocked:
            note, colour = "🛑 " + gate.refusal().splitlines()[0], 0xE74C3C
        elif gate.escalated:
            note, colour = (f"🟠 Past {bot.settings.budget_soft_threshold:.0%} of a budget: your next rent "
                            "needs another approver."), 0xE67E22
        else:
            note, colour = "🟢 Within budget.", 0x2ECC71
        embed = bot.render.embed(
            title="Budgets", description=note, colour=colour,
            fields=[("Team", team, False), (f"You ({bot.render.text(user_name(interaction.user), 80)})", own, False)],
            footer="Billed cost, running rentals included; days are UTC, weeks start Monday 00:00 UTC.",
        )
        await interaction.edit_original_response(embeds=[embed])


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Budget(bot))

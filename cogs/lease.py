"""The idle lease in Discord: the notice that mentions the requester (and only them) with
**Extend 1 h** / **Tear down now**, the "still running a prompt, waiting" note, and the post that
says why a re-check after rent destroyed an instance. The rules live in ``bot/watch/lease.py``.

The buttons are DynamicItems whose custom_id carries the rental id and the notice's deadline, so a
click works after a restart and an old notice cannot extend twice. Who may answer is checked at
click time: the requester or an approver; past LEASE_MAX_TOTAL only an approver may extend.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.db.models import Event, Rental
from bot.durations import format_duration
from bot.render import Render, Reply, money, timestamp
from bot.rentals import DecisionResult
from bot.watch.events import EV_LEASE_EXTENDED, EV_LEASE_HELD, EV_LEASE_NOTICE, EV_RECHECK_BREACH
from bot.watch.lease import EXTEND_STEP
from cogs.common import answer, is_approver, user_name, vbot

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

LEASE_TEMPLATE = r"vastops:lease:(?P<rental>\d+):(?P<token>\d+):(?P<action>extend|down)"
LEASE_KINDS = frozenset({EV_LEASE_NOTICE, EV_LEASE_EXTENDED, EV_LEASE_HELD, EV_RECHECK_BREACH})
NOTICE_COLOUR, HELD_COLOUR, BREACH_COLOUR, DONE_COLOUR = 0xF1C40F, 0x3498DB, 0xE74C3C, 0x2C2F33


def lease_custom_id(rental_id: int, token: int, action: str) -> str:
    return f"vastops:lease:{rental_id}:{token}:{action}"


class LeaseButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=LEASE_TEMPLATE):
    """Extend 1 h or Tear down now, for one lease notice; rebuilt from its custom_id on every click."""

    def __init__(self, rental_id: int, token: int, action: str, *, disabled: bool = False) -> None:
        extend = action == "extend"
        super().__init__(discord.ui.Button(
            label=f"Extend {format_duration(EXTEND_STEP)}" if extend else "Tear down now",
            style=discord.ButtonStyle.success if extend else discord.ButtonStyle.danger,
            custom_id=lease_custom_id(rental_id, token, action), disabled=disabled))
        self.rental_id, self.token, self.action = rental_id, token, action

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> LeaseButton:
        return cls(int(match["rental"]), int(match["token"]), match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = vbot(interaction)
        try:
            await handle_lease_click(bot, interaction, self.rental_id, self.token, self.action)
        except Exception as exc:  # a click must always get an answer
            await bot.report_interaction_error(interaction, exc)


def notice_view(rental_id: int, token: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(LeaseButton(rental_id, token, "extend"))
    view.add_item(LeaseButton(rental_id, token, "down"))
    return view


def notice_reply(render: Render, rental: Rental, p: dict[str, Any], now: float) -> Reply:
    """The notice: who, why, when it is torn down with no answer, and whether a prompt holds it."""
    deadline = float(p.get("deadline") or now)
    ref = f"rental #{rental.id} · {render.inline(rental.label, 40)} · {render.text(rental.gpu_name or 'GPU', 60)}"
    if p.get("reason") == "idle":
        title = f"💤 Rental #{rental.id} looks idle"
        why = (f"ComfyUI has run nothing for {format_duration(float(p.get('idle_s') or 0))} "
               "(empty queue, nothing new in its history).")
    else:
        title = f"⏰ Rental #{rental.id}: the lease ends soon"
        why = "Its lease is ending."
    lines = [ref, why, f"With no answer it is **torn down {timestamp(deadline)}** ({timestamp(deadline, 't')})."]
    if p.get("busy"):
        lines.append("ComfyUI is running a prompt right now: nothing running a prompt is torn down by the "
                     "lease; it waits for the prompt to finish.")
    elif p.get("busy") is None:
        lines.append("ComfyUI's queue could not be read, so the bot cannot tell whether a prompt is running.")
    lines.append(f"Cost so far is on the status message; rate {money(rental.dph_total or rental.quoted_dph, 3)}/h.")
    embed = render.embed(title=title, description="\n".join(lines), colour=NOTICE_COLOUR, footer=rental.label)
    who = p.get("requester_id")
    mention = f"<@{int(who)}> " if isinstance(who, int) else ""
    content = render.content(f"{mention}extend rental #{rental.id} or tear it down?", 200)
    return Reply(content=content, embeds=[embed])


def answered_reply(render: Render, rental: Rental, text: str) -> Reply:
    embed = render.embed(title=f"Lease of rental #{rental.id}", description=render.text(text, 1500),
                         colour=DONE_COLOUR, footer=rental.label)
    return Reply(content=None, embeds=[embed])


def held_reply(render: Render, rental: Rental, p: dict[str, Any]) -> Reply:
    running, pending = int(p.get("running") or 0), int(p.get("pending") or 0)
    text = (f"⏳ Rental #{rental.id}: the lease is over, but ComfyUI is running {running} prompt(s) with "
            f"{pending} queued. Nothing running a prompt is torn down by the lease: it waits, and tears "
            "the instance down once the queue is empty (unless someone extends it).")
    return Reply(embeds=[render.embed(description=render.text(text, 1000), colour=HELD_COLOUR, footer=rental.label)])


def breach_reply(render: Render, rental: Rental, p: dict[str, Any]) -> Reply:
    check = str(p.get("check") or "?")
    fields = [("Check", render.text(check, 40), True),
              ("Location", render.text(p.get("geolocation") or "?", 80), True),
              ("Billed", f"{money(p.get('dph_total'), 4)}/h", True),
              ("Approved quote", f"{money(p.get('quoted_dph'), 4)}/h", True)]
    embed = render.embed(title=f"🛑 Destroying rental #{rental.id}: re-check after rent failed",
                         description=render.text(p.get("text") or "?", 1500) + "\nThe receipt follows.",
                         colour=BREACH_COLOUR, fields=fields, footer=rental.label)
    return Reply(embeds=[embed])


async def deliver_lease_event(bot: VastopsBot, channel: discord.abc.Messageable, rental: Rental, event: Event) -> None:
    """Post a lease or re-check event (the channel watcher's branch for ``LEASE_KINDS``)."""
    p = event.payload
    if event.kind == EV_LEASE_NOTICE:
        reply = notice_reply(bot.render, rental, p, bot.clock.now())
        who = p.get("requester_id")
        # The one intended ping: the requester, on their own rental. Never a role, never everyone.
        mentions = discord.AllowedMentions(users=[discord.Object(int(who))], roles=False, everyone=False) \
            if isinstance(who, int) else discord.AllowedMentions.none()
        await channel.send(**reply.kwargs(), view=notice_view(rental.id, int(float(p["deadline"]))),
                           allowed_mentions=mentions)
    elif event.kind == EV_LEASE_HELD:
        await channel.send(**held_reply(bot.render, rental, p).kwargs(),
                           allowed_mentions=discord.AllowedMentions.none())
    elif event.kind == EV_RECHECK_BREACH:
        await channel.send(**breach_reply(bot.render, rental, p).kwargs(),
                           allowed_mentions=discord.AllowedMentions.none())
    # EV_LEASE_EXTENDED: the click's own answer shows it; the status message is refreshed by the watcher.


async def handle_lease_click(bot: VastopsBot, interaction: discord.Interaction[Any], rental_id: int, token: int,
                             action: str) -> None:
    """One click: the requester or an approver may answer; each click does at most one thing."""
    rental = await bot.store.get_rental(rental_id)
    approver = is_approver(bot.settings.approver_role_id, interaction.user)
    if rental is None or rental.is_terminal:
        await answer(interaction, f"Rental #{rental_id} is already over; nothing to do.")
        if rental is not None and interaction.message is not None:
            await interaction.message.edit(**answered_reply(bot.render, rental, "The rental is over.").edit_kwargs(),
                                           view=None)
        return
    if interaction.user.id != rental.requester_id and not approver:
        await answer(interaction, f"Only {bot.render.text(rental.requester_name or 'the requester', 80)} or an "
                                  f"approver can answer for rental #{rental_id}.")
        return
    name = user_name(interaction.user)
    # Deciding may wait for the rental's watch (an SSH read in flight): answer Discord first.
    await interaction.response.defer()
    if action == "extend":
        result = await bot.engine.lease.extend(rental_id, token=token, by=name, by_id=interaction.user.id,
                                               is_approver=approver)
        if not result.ok:
            await answer(interaction, bot.render.text(result.message, 1500))
            return
        text = (f"▶️ Extended by {name}: the lease now ends {timestamp(result.ends_at)} "
                f"({format_duration(result.total_s or 0)} in all).")
        await interaction.edit_original_response(**answered_reply(bot.render, rental, text).edit_kwargs(), view=None)
        return
    decision = await bot.rentals.destroy(rental_id, user_id=interaction.user.id, user_name=name,
                                         is_approver=approver, reason=f"torn down from the lease notice by {name}")
    if decision.result not in (DecisionResult.APPROVED, DecisionResult.CREATE_FAILED):
        await answer(interaction, bot.render.text(decision.message or "Nothing to do.", 1500))
        return
    text = f"🗑️ Torn down by {name} from the lease notice. The receipt follows."
    if decision.result == DecisionResult.CREATE_FAILED:  # the destroy is sent, Vast has not confirmed yet
        text = f"🗑️ Tear-down started by {name}: {decision.message}"
    await interaction.edit_original_response(**answered_reply(bot.render, rental, text).edit_kwargs(), view=None)


class Lease(commands.Cog):
    """Holds nothing: the notice buttons are DynamicItems, the rules run in the engine."""

    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot


async def setup(bot: VastopsBot) -> None:
    bot.add_dynamic_items(LeaseButton)
    await bot.add_cog(Lease(bot))

"""Approve/deny buttons for rent requests and teardown proposals, as restart-proof DynamicItems.

The button's ``custom_id`` carries the approval id, so a click is honoured by any bot process
with the same database. The approver role is checked here at click time (Discord only knows
roles); every rule and the at-most-once decision live in ``RentalService.decide``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.db.models import Approval, ApprovalKind, ApprovalStatus, Rental
from bot.provisioning.checklist import render_checklist
from bot.render import Render, Reply, money, timestamp
from bot.rentals import DecisionResult, may_decide
from cogs.common import answer, is_approver, user_name, vbot

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

APPROVAL_TEMPLATE = r"vastops:approval:(?P<id>\d+):(?P<verdict>approve|deny)"
RENT_COLOUR, TEARDOWN_COLOUR = 0x3498DB, 0xE67E22
DONE_COLOUR = {ApprovalStatus.APPROVED: 0x2ECC71, ApprovalStatus.DENIED: 0x95A5A6,
               ApprovalStatus.EXPIRED: 0x2C2F33, ApprovalStatus.CANCELLED: 0x2C2F33}
# Outcomes that change what the approval message shows (the rest only concern the clicker).
MESSAGE_CHANGING = {DecisionResult.APPROVED, DecisionResult.DENIED, DecisionResult.REQUOTED,
                    DecisionResult.OFFER_GONE, DecisionResult.CREATE_FAILED, DecisionResult.REFUSED}


def approval_custom_id(approval_id: int, verdict: str) -> str:
    return f"vastops:approval:{approval_id}:{verdict}"


def parse_approval_custom_id(custom_id: str) -> tuple[int, bool] | None:
    """``(approval_id, approve)`` from a button's custom_id, or None if it is not one of ours."""
    match = re.fullmatch(APPROVAL_TEMPLATE, custom_id)
    if match is None:
        return None
    return int(match["id"]), match["verdict"] == "approve"


class ApprovalButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=APPROVAL_TEMPLATE):
    """One approve or deny button; rebuilt from its custom_id on every click (restart-proof)."""

    def __init__(self, approval_id: int, approve: bool, *, label: str | None = None,
                 style: discord.ButtonStyle | None = None, disabled: bool = False) -> None:
        verdict = "approve" if approve else "deny"
        super().__init__(discord.ui.Button(
            label=label or verdict.title(), custom_id=approval_custom_id(approval_id, verdict),
            style=style or (discord.ButtonStyle.success if approve else discord.ButtonStyle.danger),
            disabled=disabled,
        ))
        self.approval_id = approval_id
        self.approve = approve

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> ApprovalButton:
        # No database work here: it runs inside the 3-second window before the callback.
        return cls(int(match["id"]), match["verdict"] == "approve")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = vbot(interaction)
        try:
            await handle_click(bot, interaction, self.approval_id, self.approve)
        except Exception as exc:  # a click must always get an answer
            await bot.report_interaction_error(interaction, exc)


def approval_view(approval: Approval, *, disabled: bool = False) -> discord.ui.View | None:
    """The buttons of a pending approval, or None once decided (the message then has none)."""
    if not approval.is_pending:
        return None
    view = discord.ui.View(timeout=None)
    if approval.kind == ApprovalKind.RENT:
        view.add_item(ApprovalButton(approval.id, True, label="Approve", disabled=disabled))
        view.add_item(ApprovalButton(approval.id, False, label="Deny", disabled=disabled))
    else:
        view.add_item(ApprovalButton(approval.id, True, label="Destroy now", style=discord.ButtonStyle.danger,
                                     disabled=disabled))
        view.add_item(ApprovalButton(approval.id, False, label="Keep running",
                                     style=discord.ButtonStyle.secondary, disabled=disabled))
    return view


def _status_line(render: Render, approval: Approval, now: float) -> str:
    by = render.text(approval.decided_by_name or "someone", 80)
    when = timestamp(approval.decided_at)
    teardown = approval.kind == ApprovalKind.TEARDOWN
    if approval.status == ApprovalStatus.PENDING and approval.expires_at > now:
        if teardown:
            action = approval.default_action or "destroy"
            when = timestamp(approval.expires_at)
            return f"⏳ Waiting for an approver. With no answer: **{action}** {when}."
        requote = "🔁 The price changed; this is the new quote. " if approval.revision > 1 else ""
        return f"{requote}⏳ Waiting for an approver · expires {timestamp(approval.expires_at)}"
    if approval.status in (ApprovalStatus.PENDING, ApprovalStatus.EXPIRED):
        if teardown:
            return f"⌛ Nobody answered: default action **{approval.default_action or 'none'}**."
        return "⌛ Expired: nothing was rented. Run /rent again."
    if approval.status == ApprovalStatus.APPROVED:
        if teardown:
            return f"🗑️ Destroy approved by {by} {when}."
        return f"✅ Approved by {by} {when}. The rental's status message follows below."
    if approval.status == ApprovalStatus.DENIED:
        if teardown:
            return f"▶️ Kept running by {by} {when}."
        withdrawn = approval.requester_id is not None and approval.decided_by == approval.requester_id
        return f"🚫 {'Withdrawn' if withdrawn else 'Denied'} by {by} {when}. Nothing was rented."
    note = render.text(approval.decision_note or "cancelled", 200)
    return f"✖️ Cancelled ({note}): nothing was rented."


def approval_reply(render: Render, approval: Approval, rental: Rental | None, now: float, *,
                   working: str | None = None, ping_role: int | None = None) -> Reply:
    """The approval message: the quote (or the teardown evidence) and its current outcome."""
    p = approval.payload
    status = f"⏳ {working}" if working else _status_line(render, approval, now)
    colour = (RENT_COLOUR if approval.kind == ApprovalKind.RENT else TEARDOWN_COLOUR) \
        if approval.is_pending and approval.expires_at > now else DONE_COLOUR.get(approval.status, 0x2C2F33)
    rental_ref = f"rental #{rental.id} · {render.inline(rental.label, 40)}" if rental else "rental ?"
    if approval.kind == ApprovalKind.RENT:
        gpu = f"{render.text(p.get('gpu_name') or '?', 60)} ×{p.get('num_gpus') or 1}"
        reliability, down = p.get("reliability"), p.get("inet_down")
        fields = [
            ("GPU", gpu, True),
            ("Price", f"**{money(p.get('quoted_dph'), 3)}/h**", True),
            ("VRAM", f"{p.get('vram_gb') or '?'} GB", True),
            ("Location", render.text(p.get("geolocation") or p.get("country") or "?", 80), True),
            ("Reliability", f"{reliability * 100:.1f}%" if isinstance(reliability, int | float) else "?",
             True),
            ("Download", f"{down:.0f} Mbps" if isinstance(down, int | float) else "?", True),
            ("Requested by", render.text(p.get("requester_name") or "?", 80), True),
            ("Offer", f"`{p.get('offer_id')}` · machine `{p.get('machine_id')}`", True),
        ]
        if p.get("checklist"):  # what the preflight verified for this offer, problems first
            fields.append(("Preflight", render_checklist(p["checklist"], escape=render.text), False))
        embed = render.embed(title=f"Rent request #{approval.id}: {gpu} at {money(p.get('quoted_dph'), 3)}/h",
                             description=f"{status}\n{rental_ref}", colour=colour, fields=fields)
    else:
        evidence = p.get("evidence") or {}
        line = evidence.get("line")
        body = [status, rental_ref, f"**Why:** {render.text(p.get('reason') or '?', 200)}"]
        if evidence.get("text"):
            body.append(render.code(evidence["text"], limit=1200))
        if evidence.get("advice"):
            body.append(f"**Advice:** {render.text(evidence['advice'], 600)}")
        fields = [("Category", render.text(evidence.get("category") or "?", 60), True),
                  ("Severity", render.text(evidence.get("severity") or "?", 20), True)]
        if line:
            fields.append(("Log line", str(line), True))
        embed = render.embed(title=f"Teardown proposed for rental #{rental.id if rental else '?'}",
                             description="\n".join(body), colour=colour, fields=fields)
    content = None
    if ping_role and approval.is_pending:
        # The push notification on a phone shows only this line: the decision in a glance.
        if approval.kind == ApprovalKind.RENT:
            ask = (f"{render.text(p.get('requester_name') or 'someone', 40)} asks to rent {gpu} at "
                   f"**{money(p.get('quoted_dph'), 3)}/h** (request #{approval.id}).")
        else:
            ask = (f"destroy rental #{rental.id if rental else '?'}? "
                   f"{render.text(p.get('reason') or '', 100)}")
        content = render.content(f"<@&{ping_role}> {ask}", 300)
    return Reply(content=content, embeds=[embed])


async def render_current(bot: VastopsBot, approval_id: int) -> tuple[Reply, discord.ui.View | None] | None:
    """The approval message as the database says it should look now."""
    approval = await bot.store.get_approval(approval_id)
    if approval is None:
        return None
    rental = await bot.store.get_rental(approval.rental_id) if approval.rental_id else None
    now = bot.clock.now()
    view = approval_view(approval) if approval.expires_at > now else None
    return approval_reply(bot.render, approval, rental, now), view


def _working_text(approval: Approval, approve: bool, name: str, withdrawing: bool) -> str:
    if approval.kind == ApprovalKind.RENT:
        if approve:
            return f"{name} approved: checking the offer and renting…"
        return f"{name} is withdrawing the request…" if withdrawing else f"{name} denied: recording it…"
    if approve:
        return f"{name} chose to destroy: destroying the instance…"
    return f"{name} chose to keep it running: recording it…"


async def handle_click(bot: VastopsBot, interaction: discord.Interaction[Any], approval_id: int,
                       approve: bool) -> None:
    """One click on an approve/deny button.

    Clicks that will decide (approve, deny, withdraw, keep running) first edit the message (type 7)
    to a disabled "working" state within Discord's 3 s, then show the outcome by editing the
    original response. Refusals are ephemeral, to the clicker only.
    """
    approval = await bot.store.get_approval(approval_id)
    approver = is_approver(bot.settings.approver_role_id, interaction.user)
    name = user_name(interaction.user)
    now = bot.clock.now()
    # Every click that will decide answers first: deciding waits for the engine's event delivery
    # (and a teardown's "keep running" for the rental's watch lock), which can outlast Discord's 3 s.
    withdrawing = (approval is not None and not approve and approval.kind == ApprovalKind.RENT
                   and approval.requester_id == interaction.user.id)
    slow = (approval is not None and approval.is_pending and approval.expires_at > now
            and (withdrawing or may_decide(approval, user_id=interaction.user.id, is_approver=approver,
                                           self_approve_max_price=bot.settings.self_approve_max_price) is None))
    if slow:
        assert approval is not None
        rental = await bot.store.get_rental(approval.rental_id) if approval.rental_id else None
        reply = approval_reply(bot.render, approval, rental, now, working=_working_text(approval, approve, name,
                                                                                          withdrawing))
        await interaction.response.edit_message(**reply.edit_kwargs(),
                                                view=approval_view(approval, disabled=True))

    try:
        decision = await bot.rentals.decide(approval_id, approve=approve, user_id=interaction.user.id,
                                            user_name=name, is_approver=approver)
    except Exception:
        if slow:  # do not leave the message stuck in its "working" state with dead buttons
            restored = await render_current(bot, approval_id)
            if restored is not None:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.edit_original_response(**restored[0].edit_kwargs(), view=restored[1])
        raise
    current = await render_current(bot, approval_id)
    if decision.result in MESSAGE_CHANGING or slow:
        if current is not None:
            reply, view = current
            if interaction.response.is_done():
                await interaction.edit_original_response(**reply.edit_kwargs(), view=view)
            else:
                await interaction.response.edit_message(**reply.edit_kwargs(), view=view)
        if decision.result not in (DecisionResult.APPROVED, DecisionResult.DENIED):
            # Re-quoted, offer gone, lost a race...: the clicker also hears why.
            await answer(interaction, bot.render.text(decision.message, 1900))
        return
    # A refusal: only the clicker hears it.
    await answer(interaction, bot.render.text(decision.message or "Nothing to do.", 1900))
    if current is not None and interaction.message is not None and interaction.message.components:
        reply, view = current
        if view is None:  # the message still offers buttons that can no longer work: fix it
            try:
                await interaction.message.edit(**reply.edit_kwargs(), view=None)
            except discord.HTTPException:
                log.warning("could not refresh approval message %s", interaction.message.id, exc_info=True)


class Approvals(commands.Cog):
    """Holds nothing but the registration: the buttons are DynamicItems added by the bot."""

    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Approvals(bot))
    bot.add_dynamic_items(ApprovalButton)

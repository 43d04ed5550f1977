"""The channel watcher: the engine's ``Notifier`` for Discord, posting into ``NOTIFY_CHANNEL_ID``.

Per rental there is ONE status message, edited in place as milestones, cost and state change;
edits are coalesced to at most one per message every ``min_edit_interval`` seconds (injected
clock) so a burst of milestones costs one edit, not ten. Findings of severity warn and above,
teardown decisions and proposals, approval requests and receipts are posts of their own.
Everything goes through ``bot.render``. Raising from ``notify`` makes the engine retry the event
later (in order); errors that a retry cannot fix are logged and dropped instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord.ext import commands

from bot.db.models import Event, Rental, RentalState
from bot.durations import format_duration
from bot.render import Render, Reply, money
from bot.watch.engine import (
    EV_APPROVAL,
    EV_COST,
    EV_DECISION,
    EV_FINDING,
    EV_INFO,
    EV_LOG_ROTATED,
    EV_MILESTONE,
    EV_NOISE,
    EV_PROPOSAL,
    EV_RECEIPT,
    EV_STATE,
    EV_VERDICT,
)
from cogs.approvals import approval_reply, approval_view
from cogs.common import rental_progress, status_embed
from cogs.lease import LEASE_KINDS, deliver_lease_event

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

STATUS_KINDS = frozenset({EV_STATE, EV_MILESTONE, EV_COST, EV_VERDICT, EV_NOISE, EV_LOG_ROTATED, EV_INFO})
POSTED_SEVERITIES = frozenset({"warn", "error", "fatal"})
SEVERITY_COLOUR = {"warn": 0xF1C40F, "error": 0xE67E22, "fatal": 0xE74C3C}
# Rental states that have no status message (nothing was rented, or nothing yet).
NO_STATUS_STATES = frozenset({RentalState.REQUESTED, RentalState.AWAITING_APPROVAL, RentalState.APPROVED,
                              RentalState.DENIED, RentalState.EXPIRED})


class ChannelNotifier:
    """Delivers engine events to the notify channel (implements ``bot.watch.engine.Notifier``)."""

    def __init__(self, bot: VastopsBot, *, min_edit_interval: float = 5.0) -> None:
        self.bot = bot
        self.min_edit_interval = min_edit_interval
        self._last_edit: dict[int, float] = {}
        self._dirty: set[int] = set()
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.edits = 0  # status-message edits made (for tests and the bench)

    @property
    def render(self) -> Render:
        return self.bot.render

    @property
    def channel_id(self) -> int | None:
        return self.bot.settings.notify_channel_id

    def _channel(self) -> discord.PartialMessageable:
        if self.channel_id is None:
            raise RuntimeError("NOTIFY_CHANNEL_ID is not set")
        # A partial channel needs no gateway cache: deliveries work from setup_hook on.
        return self.bot.get_partial_messageable(self.channel_id, type=discord.ChannelType.text)

    # ------------------------------------------------------------------ Notifier
    async def alert(self, text: str) -> None:
        """An alert about the bot itself (database unwritable, Vast failing, and their recoveries).

        Raising retries it later (the outbox keeps it in memory): the channel must hear it.
        """
        await self._send(Reply(content=self.render.content(text)))

    async def notify(self, rental: Rental, event: Event) -> None:
        try:
            await self._dispatch(rental, event)
        except discord.HTTPException as exc:
            if exc.status >= 500 or exc.status == 429:
                raise  # Discord trouble: the engine retries this event later
            # A 4xx will not get better by retrying (bad payload, missing permission, unknown
            # channel); log loudly and move on so the rental's later events still flow.
            log.error("Discord refused event %s/%s of rental %s: %s", event.kind, event.seq, rental.id, exc)
        except (OSError, TimeoutError, aiohttp.ClientError):
            raise  # the network: retried later, in order
        except Exception:
            # A bug rendering this one event (an odd payload) would block every later event of the
            # rental forever if raised: log it with the traceback and move on.
            log.exception("could not render event %s/%s of rental %s; skipped", event.kind, event.seq, rental.id)

    async def _dispatch(self, rental: Rental, event: Event) -> None:
        kind, p = event.kind, event.payload
        if kind == EV_APPROVAL:
            await self._approval(rental, p)
        elif kind == EV_PROPOSAL:
            await self._post_approval(int(p["approval_id"]))
            await self.refresh(rental.id)
        elif kind == EV_FINDING:
            if str(p.get("severity")) in POSTED_SEVERITIES:
                await self._send(self._finding_reply(rental, p))
            await self.refresh(rental.id)
        elif kind == EV_DECISION:
            # A proposal carries the same evidence with buttons; only a direct destroy gets its own post.
            if p.get("action") == "destroy":
                await self._send(self._decision_reply(rental, p))
            await self.refresh(rental.id, force=True)
        elif kind == EV_RECEIPT:
            await self.refresh(rental.id, force=True)
            await self._send(self._receipt_reply(rental, p))
            self._forget(rental.id)
        elif kind == EV_STATE and p.get("to") == RentalState.CREATE_FAILED.value:
            reason = self.render.text(p.get("reason"), 1500)
            text = f"❌ Rental #{rental.id}: Vast did not create the instance: {reason}"
            await self._send(Reply(content=self.render.content(text)))
        elif kind in LEASE_KINDS:
            await deliver_lease_event(self.bot, self._channel(), rental, event)
            await self.refresh(rental.id)
        elif kind in STATUS_KINDS:
            await self.refresh(rental.id)
        else:
            log.debug("event kind %s not shown in Discord", kind)

    # ------------------------------------------------------------------ approvals
    async def _approval(self, rental: Rental, p: dict[str, Any]) -> None:
        status = p.get("status")
        approval_id = int(p["approval_id"])
        if status == "pending":
            await self._post_approval(approval_id)
        elif status in ("expired", "cancelled", "withdrawn"):
            # Nobody clicked: the watcher is the one to update the message. Click outcomes are
            # shown by the click's own response (type 7), so they are not edited twice.
            await self._edit_approval(approval_id)

    async def _post_approval(self, approval_id: int) -> None:
        store = self.bot.store
        approval = await store.get_approval(approval_id)
        if approval is None or approval.message_id is not None:
            return  # already posted (a retried delivery must not post twice)
        rental = await store.get_rental(approval.rental_id) if approval.rental_id else None
        role = self.bot.settings.approver_role_id
        reply = approval_reply(self.render, approval, rental, self.bot.clock.now(), ping_role=role)
        view = approval_view(approval)
        # The one intended ping: the approver role, on a request that needs them.
        mentions = discord.AllowedMentions(roles=[discord.Object(role)], users=False, everyone=False) \
            if role else discord.AllowedMentions.none()
        kwargs: dict[str, Any] = {**reply.kwargs(), "allowed_mentions": mentions}
        if view is not None:
            kwargs["view"] = view
        message = await self._channel().send(**kwargs)
        await store.set_approval_message(approval.id, message.channel.id, message.id)

    async def _edit_approval(self, approval_id: int) -> None:
        from cogs.approvals import render_current

        approval = await self.bot.store.get_approval(approval_id)
        if approval is None or approval.message_id is None or approval.channel_id is None:
            return
        current = await render_current(self.bot, approval_id)
        if current is None:
            return
        reply, view = current
        channel = self.bot.get_partial_messageable(approval.channel_id, type=discord.ChannelType.text)
        try:
            await channel.get_partial_message(approval.message_id).edit(**reply.edit_kwargs(), view=view)
        except discord.NotFound:
            log.info("approval message %s is gone; not updating it", approval.message_id)

    # ------------------------------------------------------------------ posts
    async def _send(self, reply: Reply) -> discord.Message:
        return await self._channel().send(**reply.kwargs())

    def _finding_reply(self, rental: Rental, p: dict[str, Any]) -> Reply:
        r = self.render
        severity = str(p.get("severity") or "warn")
        icon = {"warn": "⚠️", "error": "❗", "fatal": "🛑"}.get(severity, "⚠️")
        category = str(p.get("category") or "unknown")
        parts = []
        if p.get("line"):
            parts.append(f"Log line {int(p['line'])}:")
        parts.append(r.code(p.get("text") or "", limit=1500))
        if p.get("advice"):
            parts.append(f"**Advice:** {r.text(p['advice'], 1000)}")
        title = f"{icon} {severity.upper()} · {category.replace('_', ' ')} · rental #{rental.id}"
        embed = r.embed(title=title,
                        description="\n".join(parts), colour=SEVERITY_COLOUR.get(severity, 0xF1C40F),
                        footer=f"{rental.label} · rule {p.get('rule') or '?'}")
        return Reply(embeds=[embed])

    def _decision_reply(self, rental: Rental, p: dict[str, Any]) -> Reply:
        r = self.render
        evidence = p.get("evidence") or {}
        parts = [f"**Why:** {r.text(p.get('reason') or '?', 200)}"]
        if evidence.get("text"):
            parts.append(r.code(evidence["text"], limit=1500))
        if evidence.get("advice"):
            parts.append(f"**Advice:** {r.text(evidence['advice'], 800)}")
        elapsed = format_duration(float(p.get("elapsed_s") or 0))
        parts.append(f"⏱ {elapsed} · 💵 {money(p.get('cost_usd'))} so far")
        embed = r.embed(title=f"🛑 Tearing down rental #{rental.id}", description="\n".join(parts),
                        colour=0xE74C3C, footer=rental.label)
        return Reply(embeds=[embed])

    def _receipt_reply(self, rental: Rental, p: dict[str, Any]) -> Reply:
        r = self.render
        milestones = [str(m).replace("_", " ") for m in p.get("milestones") or []]
        fields = [
            ("Duration", format_duration(float(p.get("duration_s") or 0)), True),
            ("Cost", f"**{money(p.get('cost_usd'), 3)}**", True),
            ("Rate", f"{money(p.get('dph'), 3)}/h", True),
            ("Verdict", r.text(p.get("verdict") or "?", 40), True),
            ("Destroyed by", r.text(p.get("by") or "?", 80), True),
            ("Reason", r.text(p.get("reason") or "?", 1000), False),
            ("Milestones reached", r.text(", ".join(milestones) or "none", 1000), False),
        ]
        gpu = f"{r.text(rental.gpu_name or 'GPU', 60)} ×{rental.num_gpus or 1}"
        embed = r.embed(title=f"🧾 Receipt · rental #{rental.id} · {gpu}",
                        description=f"{r.inline(rental.label, 60)} · requested by "
                                    f"{r.text(rental.requester_name or '?', 80)}. "
                                    "Vast confirmed the instance is gone.",
                        colour=0x2C2F33, fields=fields, footer=f"instance {rental.instance_id or '—'}")
        return Reply(embeds=[embed])

    # ------------------------------------------------------------------ the status message
    async def refresh(self, rental_id: int, *, force: bool = False) -> None:
        """Bring the rental's status message up to date now, or within ``min_edit_interval``."""
        now = self.bot.clock.now()
        last = self._last_edit.get(rental_id)
        if force or last is None or now - last >= self.min_edit_interval:
            await self._write_status(rental_id)
            return
        self._dirty.add(rental_id)
        if rental_id not in self._flushers or self._flushers[rental_id].done():
            delay = self.min_edit_interval - (now - last)
            self._flushers[rental_id] = asyncio.create_task(self._flush_later(rental_id, delay),
                                                            name=f"status-edit-{rental_id}")

    async def _flush_later(self, rental_id: int, delay: float) -> None:
        try:
            await self.bot.clock.sleep(delay)
            if rental_id in self._dirty:
                await self._write_status(rental_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # a background edit must report, never die silently
            log.exception("delayed status edit of rental %s failed", rental_id)

    async def flush(self) -> None:
        """Write every pending (coalesced) status edit now."""
        for rental_id in list(self._dirty):
            await self._write_status(rental_id)

    async def _write_status(self, rental_id: int) -> None:
        lock = self._locks.setdefault(rental_id, asyncio.Lock())
        async with lock:
            self._dirty.discard(rental_id)
            rental = await self.bot.store.get_rental(rental_id)
            if rental is None or rental.state in NO_STATUS_STATES:
                return
            now = self.bot.clock.now()
            progress = await rental_progress(self.bot, rental)
            embed = status_embed(self.render, rental, progress, now)
            if rental.status_message_id is not None and rental.status_channel_id is not None:
                channel = self.bot.get_partial_messageable(rental.status_channel_id,
                                                           type=discord.ChannelType.text)
                try:
                    message = channel.get_partial_message(rental.status_message_id)
                    await message.edit(content=None, embeds=[embed])
                    self._last_edit[rental_id] = now
                    self.edits += 1
                    return
                except discord.NotFound:
                    log.info("status message of rental %s was deleted; posting a new one", rental_id)
            message = await self._channel().send(embeds=[embed])
            await self.bot.store.update_rental(rental_id, now=now, status_channel_id=message.channel.id,
                                               status_message_id=message.id)
            self._last_edit[rental_id] = now

    def _forget(self, rental_id: int) -> None:
        """A finished rental's message is final: drop its coalescing state (long-running bots)."""
        task = self._flushers.pop(rental_id, None)
        if task is not None and not task.done():
            task.cancel()
        self._dirty.discard(rental_id)
        self._last_edit.pop(rental_id, None)
        self._locks.pop(rental_id, None)

    async def close(self) -> None:
        """Write what is pending and stop the delayed edits."""
        for task in self._flushers.values():
            task.cancel()
        for task in self._flushers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flushers.clear()
        with contextlib.suppress(Exception):
            await self.flush()


class Watcher(commands.Cog):
    """Installs the channel notifier: the engine's events reach the channel while this cog is loaded."""

    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        notifier = ChannelNotifier(self.bot, min_edit_interval=self.bot.status_edit_interval)
        self.bot.notifier = notifier
        self.bot.engine.notifier = notifier
        self.bot.engine.outbox.wake()  # what waited while no notifier was installed goes out now
        self._restore = asyncio.create_task(self._restore_pending(notifier), name="restore-approvals")

    async def cog_unload(self) -> None:
        self._restore.cancel()

    async def _restore_pending(self, notifier: ChannelNotifier) -> None:
        """Give every request still pending its buttons back.

        A click turns its message into "approved: checking the offer…" before deciding; if the bot
        stopped in that moment, the approval is still pending but its message has no buttons left.
        """
        try:
            pending = await self.bot.store.pending_approvals()
        except Exception:
            log.exception("could not list pending approvals to restore their buttons")
            return
        for approval in pending:
            try:
                await notifier._edit_approval(approval.id)
            except Exception:  # one message that cannot be edited must not stop the others
                log.warning("could not restore the buttons of approval %s", approval.id, exc_info=True)


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Watcher(bot))


__all__ = ["ChannelNotifier", "setup"]

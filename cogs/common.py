"""Discord-side helpers shared by the cogs and the channel watcher (not an extension).

Who counts as an approver, answering an interaction whatever state it is in, the rental
argument (parse + autocomplete), and the one status view of a rental that both ``/status`` and
the watcher's in-place status message show.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands

from bot.cooldown import Cooldown
from bot.db.models import ACTIVE_STATES, OPEN_STATES, Rental, RentalState
from bot.durations import format_duration
from bot.render import CHOICE_NAME_LIMIT, Render, escape, money, progress_bar, timestamp, truncate
from bot.replies import answer
from bot.watch.cost import rental_cost
from bot.watch.links import displayable
from bot.watch.model import Milestone
from bot.watch.views import Progress

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

# The milestones every healthy run passes, in order (tunnel/portal are extras, shown when seen).
MILESTONE_PATH: tuple[Milestone, ...] = (
    Milestone.INSTANCE_CREATED, Milestone.CONTAINER_RUNNING, Milestone.SSH_READY,
    Milestone.PROVISIONING_STARTED, Milestone.SCRIPT_FETCHED, Milestone.PACKAGES_INSTALLED,
    Milestone.TORCH_READY, Milestone.NODES_INSTALLED, Milestone.MODELS_DOWNLOADED,
    Milestone.PROVISIONING_COMPLETE, Milestone.COMFYUI_READY,
)
EXTRA_MILESTONES = (Milestone.TUNNEL_READY, Milestone.PORTAL_READY)

STATE_BADGE: dict[RentalState, str] = {
    RentalState.REQUESTED: "📝", RentalState.AWAITING_APPROVAL: "⏳", RentalState.APPROVED: "👍",
    RentalState.DENIED: "🚫", RentalState.EXPIRED: "⌛", RentalState.CREATING: "🛠️",
    RentalState.PROVISIONING: "🟡", RentalState.READY: "🟢", RentalState.DEGRADED: "🟠",
    RentalState.FAILED: "🔴", RentalState.TEARING_DOWN: "🧹", RentalState.DESTROYED: "⚫",
    RentalState.CREATE_FAILED: "❌",
}
STATE_COLOUR: dict[RentalState, int] = {
    RentalState.PROVISIONING: 0xF1C40F, RentalState.READY: 0x2ECC71, RentalState.DEGRADED: 0xE67E22,
    RentalState.FAILED: 0xE74C3C, RentalState.TEARING_DOWN: 0x95A5A6, RentalState.DESTROYED: 0x2C2F33,
    RentalState.CREATE_FAILED: 0xE74C3C, RentalState.CREATING: 0x3498DB,
}

_SAFE_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[A-Za-z0-9._~/?#=&%+-]*)?$")


def vbot(interaction: discord.Interaction[Any]) -> VastopsBot:
    return cast("VastopsBot", interaction.client)  # these cogs load only into a VastopsBot


def is_approver(approver_role_id: int | None, user: discord.abc.User | discord.Member) -> bool:
    """Does ``user`` hold the approver role? Fails closed: no role configured or no member info → no."""
    if approver_role_id is None or not isinstance(user, discord.Member):
        return False
    if any(role.id == approver_role_id for role in user.roles):
        return True
    # Member.roles only lists roles the guild cache knows; the interaction's own role ids are the truth.
    return approver_role_id in getattr(user, "_roles", ())


def in_our_guild(bot: VastopsBot, interaction: discord.Interaction[Any]) -> bool:
    """Is this interaction from a member, inside the server the bot serves? Fails closed.

    A DM (or another server the bot was added to) carries a plain User: no member, no roles, and
    nothing the bot should act on for money.
    """
    if not isinstance(interaction.user, discord.Member) or interaction.guild_id is None:
        return False
    wanted = bot.settings.discord_guild_id
    return wanted is None or interaction.guild_id == wanted


def user_name(user: discord.abc.User | discord.Member) -> str:
    return getattr(user, "display_name", None) or user.name


# ---------------------------------------------------------------- cooldowns

_COOLDOWNS: weakref.WeakKeyDictionary[Any, Cooldown] = weakref.WeakKeyDictionary()


def command_cooldown(bot: VastopsBot) -> Cooldown:
    """The bot's one per-user cooldown book (COMMAND_COOLDOWN), shared by every cog."""
    cooldown = _COOLDOWNS.get(bot)
    if cooldown is None:
        cooldown = _COOLDOWNS[bot] = Cooldown(bot.clock, bot.settings.command_cooldown)
    return cooldown


async def cooled_down(bot: VastopsBot, interaction: discord.Interaction[Any], command: str) -> bool:
    """Call first in a command: False (and the user is told, privately, when to retry) if they ran
    ``command`` less than COMMAND_COOLDOWN ago; True, and their cooldown starts, otherwise."""
    left = command_cooldown(bot).try_start(command, interaction.user.id)
    if left <= 0:
        return True
    await answer(interaction, f"⏳ You ran /{command} a moment ago; try again in {math.ceil(left)} s.")
    return False


# ---------------------------------------------------------------- rental arguments


def rental_choice_name(rental: Rental) -> str:
    gpu = f"{rental.gpu_name or '?'} ×{rental.num_gpus or 1}"
    return truncate(f"#{rental.id} {rental.label} · {gpu} · {rental.state.value}", CHOICE_NAME_LIMIT)


async def rental_choices(bot: VastopsBot, interaction: discord.Interaction[Any],
                         current: str) -> list[app_commands.Choice[str]]:
    """The user's open rentals matching what they typed (approvers also see everyone else's)."""
    text = current.strip().lstrip("#")
    found: list[Rental] = []
    rental_id = _rental_id(text)
    if rental_id is not None:
        rental = await bot.store.get_rental(rental_id)
        if rental is not None and rental.state in OPEN_STATES:
            found.append(rental)
    needle = "" if text.isascii() and text.isdigit() else text
    own = await bot.store.search_rentals_for_autocomplete(interaction.user.id, needle, limit=25)
    found += [r for r in own if r.id not in {f.id for f in found}]
    if len(found) < 25 and is_approver(bot.settings.approver_role_id, interaction.user):
        others = await bot.store.search_rentals_for_autocomplete(None, needle, limit=25)
        found += [r for r in others if r.id not in {f.id for f in found}]
    return [app_commands.Choice(name=rental_choice_name(r), value=str(r.id)) for r in found[:25]]


async def find_rental(bot: VastopsBot, text: str) -> Rental | None:
    """A rental from what the user submitted: the autocomplete value (id), ``#id`` or a label."""
    text = text.strip()
    head = text.lstrip("#").split(" ", 1)[0]
    if head.isascii() and head.isdigit():
        rental_id = _rental_id(head)
        return await bot.store.get_rental(rental_id) if rental_id is not None else None
    return await bot.store.get_rental_by_label(text)


def _rental_id(text: str) -> int | None:
    """``text`` as a rental id, or None. Only ASCII digits (``"²".isdigit()`` is true, ``int("²")`` raises)
    and only what SQLite's INTEGER holds (a bigger int raises OverflowError in the driver)."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


# ---------------------------------------------------------------- the status view of a rental


def cost_to_date(rental: Rental, now: float) -> float | None:
    """What Vast has billed so far (``bot.watch.cost.rental_cost``); None before anything was rented."""
    if rental.started_at is None or rental.instance_id is None:
        return None
    return rental_cost(rental, now)


async def rental_progress(bot: VastopsBot, rental: Rental) -> Progress:
    return await bot.engine.views.progress(rental)


def link(render: Render, label: str, url: str | None) -> str | None:
    """A markdown link, only for a URL of a trusted shape (the instance's IP and port, or a quick
    tunnel's host): a host named in free text (a log line) is never shown, not even as text."""
    url = displayable(render.redact(url)) if url else None
    if not url or not _SAFE_URL.match(url):
        return None
    return f"[{label}](<{url}>)"


def may_see_links(approver_role_id: int | None, user: discord.abc.User | discord.Member, rental: Rental) -> bool:
    """The link policy: a rental's ComfyUI and tunnel links are for its requester and the approvers.

    Everyone else in the server sees the rental's row (state, progress, cost) without them: the
    links open a ComfyUI that can run arbitrary workflows on a machine the team pays for.
    """
    return rental.requester_id == user.id or is_approver(approver_role_id, user)


def rental_links(render: Render, rental: Rental) -> list[str]:
    found = (link(render, "ComfyUI", rental.comfyui_url), link(render, "tunnel", rental.tunnel_url))
    return [x for x in found if x]


def milestone_line(progress: Progress) -> str:
    reached = [m for m in MILESTONE_PATH if m.value in progress.milestones]
    bar = progress_bar(len(reached), len(MILESTONE_PATH))
    upcoming = next((m for m in MILESTONE_PATH if m.value not in progress.milestones), None)
    tail = f" · next: {upcoming.value.replace('_', ' ')}" if upcoming else " · ComfyUI ready"
    return bar + tail


def status_title(rental: Rental) -> str:
    badge = STATE_BADGE.get(rental.state, "•")
    gpu = f"{truncate(escape(rental.gpu_name or 'GPU'), 60)} ×{rental.num_gpus or 1}"
    return f"{badge} Rental #{rental.id} · {gpu} · {rental.state.value.replace('_', ' ')}"


def status_embed(render: Render, rental: Rental, progress: Progress, now: float, *,
                 show_links: bool = False) -> discord.Embed:
    """The one in-place status message of a rental (and ``/status rental``).

    Links only with ``show_links``: the in-place message is public, so it never carries them (see
    ``may_see_links``); ``/status`` passes True for the requester and the approvers.
    """
    start = rental.started_at or rental.created_at
    end = rental.ended_at if rental.is_terminal and rental.ended_at else now
    dph = rental.dph_total if rental.dph_total is not None else rental.quoted_dph
    cost = cost_to_date(rental, now)
    lines = [
        f"{render.inline(rental.label, 60)} · requested by {render.text(rental.requester_name or '?', 80)}",
        milestone_line(progress),
        f"⏱ {'ran' if rental.is_terminal else 'up'} {format_duration(end - start)}"
        f" · 💵 {money(dph, 3)}/h · {money(cost)} so far",
    ]
    links = rental_links(render, rental) if show_links else []
    if links:
        lines.append("🔗 " + " · ".join(links))
    extras = [m.value.replace("_", " ") for m in EXTRA_MILESTONES if m.value in progress.milestones]
    if extras:
        lines.append("➕ " + ", ".join(extras))
    notes = []
    if progress.warnings:
        notes.append(f"⚠️ {progress.warnings} finding(s) posted")
    if progress.noise:
        notes.append(f"🔇 {progress.noise} harmless platform line(s) ignored")
    if notes:
        lines.append(" · ".join(notes))
    if rental.state_reason:
        lines.append(f"ℹ️ {render.text(rental.state_reason, 300)}")
    reached = sorted(((ts, name) for name, ts in progress.milestones.items()), key=lambda x: x[0])
    timeline = "\n".join(f"✅ {name.replace('_', ' ')} · +{format_duration(ts - start)}"
                         for ts, name in reached)
    footer = (f"instance {rental.instance_id or '—'} · offer {rental.offer_id or '—'} · "
              f"{rental.geolocation or ''}")
    return render.embed(
        title=status_title(rental), description="\n".join(lines),
        colour=STATE_COLOUR.get(rental.state, 0x7289DA),
        fields=[("Milestones", timeline, False)] if timeline else [],
        footer=footer,
    )


def status_summary_line(render: Render, rental: Rental, progress: Progress, now: float, *,
                        show_links: bool = False) -> tuple[str, str]:
    """One embed field (name, value) per rental for the ``/status`` overview (links as ``status_embed``)."""
    start = rental.started_at or rental.created_at
    dph = rental.dph_total if rental.dph_total is not None else rental.quoted_dph
    value = [
        f"{render.inline(rental.label, 40)} · {render.text(rental.requester_name or '?', 40)}",
        milestone_line(progress),
        f"⏱ up {format_duration(now - start)} · {money(dph, 3)}/h · "
        f"{money(cost_to_date(rental, now))} so far",
    ]
    links = rental_links(render, rental) if show_links else []
    if links:
        value.append("🔗 " + " · ".join(links))
    return status_title(rental), "\n".join(value)


def is_watched(rental: Rental) -> bool:
    return rental.state in ACTIVE_STATES


__all__ = [
    "MILESTONE_PATH", "Progress", "answer", "command_cooldown", "cooled_down", "cost_to_date", "find_rental",
    "in_our_guild", "is_approver",
    "may_see_links", "rental_choices", "rental_links",
    "rental_progress", "status_embed", "status_summary_line", "timestamp", "user_name", "vbot",
]

"""/rent: search offers, run the preflight checks, let the user pick one, and post an approval request."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.durations import format_duration
from bot.render import SELECT_OPTION_LIMIT, Reply, money, truncate
from bot.vast.models import Offer, OfferQuery
from cogs.common import answer, user_name

if TYPE_CHECKING:
    from bot.app import VastopsBot

log = logging.getLogger(__name__)

# Suggestions only (users may type any model); spelled as Vast spells gpu_name.
KNOWN_GPUS: tuple[str, ...] = (
    "RTX 4090", "RTX 5090", "RTX 3090", "RTX 3090 Ti", "RTX 4080", "RTX 4080S", "RTX 4070 Ti", "RTX 3080",
    "RTX A4000", "RTX A5000", "RTX A6000", "RTX 6000Ada", "L4", "L40", "L40S", "A40", "A10",
    "A100 PCIE", "A100 SXM4", "A100X", "H100 PCIE", "H100 SXM", "H100 NVL", "H200", "Tesla V100", "Tesla T4",
)
OFFERS_SHOWN = 10
CHECK_ICON = {"ok": "✅", "warn": "⚠️", "fail": "❌"}
PICK_TIMEOUT = 600.0  # below the 15-minute token, so the timeout can still edit the message


@dataclass
class Check:
    name: str
    status: str  # ok / warn / fail
    detail: str


def parse_countries(text: str | None) -> list[str] | None:
    """``"cn, ua"`` -> ``["CN", "UA"]``; raises ValueError with a readable message."""
    if text is None or not text.strip():
        return None
    codes = [c.strip().upper() for c in re.split(r"[,\s]+", text) if c.strip()]
    bad = [c for c in codes if not re.fullmatch(r"[A-Z]{2}", c)]
    if bad:
        raise ValueError(f"{', '.join(bad[:5])} is not a two-letter country code (e.g. CN, UA)")
    return codes


async def preflight_checks(bot: VastopsBot) -> list[Check]:
    """The checks that exist: settings, and the provisioning script once PROVISION_SCRIPT_URL is set."""
    checks: list[Check] = []
    missing = bot.settings.missing_for("run")
    checks.append(Check("settings", "fail" if missing else "ok",
                        "missing " + ", ".join(n for n, _ in missing) if missing else "complete"))
    if bot.settings.provision_script_url is None:
        # build_launch refuses it too: an instance without our script would only bill.
        checks.append(Check("provisioning script", "fail", "PROVISION_SCRIPT_URL is not set: an instance "
                            "would have no provisioning script to run"))
        return checks
    if bot.preflight is None:
        checks.append(Check("provisioning script", "warn", "preflight checks are not available"))
        return checks
    try:
        report = await asyncio.wait_for(bot.preflight(bot.settings), timeout=20.0)
    except Exception as exc:  # a broken check must not hide the offers; it is shown as failed
        log.warning("preflight failed to run", exc_info=True)
        return [*checks, Check("preflight", "fail", f"could not run: {type(exc).__name__}")]
    for item in report.checks:
        checks.append(Check(str(item.name), str(item.status), str(item.detail)))
    return checks


def offer_line(index: int, offer: Offer) -> str:
    vram = f"{offer.vram_gb:.0f} GB" if offer.vram_gb is not None else "? GB"
    rel = f"{offer.reliability * 100:.1f}%" if offer.reliability is not None else "?"
    down = f"↓{offer.inet_down:.0f} Mbps" if offer.inet_down is not None else "↓?"
    where = offer.country or (offer.geolocation or "?")
    return (f"**{index}.** {offer.gpu_name or '?'} ×{offer.num_gpus or 1} · "
            f"**{money(offer.dph_total, 3)}/h** · {vram} · {where} · {rel} · {down}")


def offer_option(index: int, offer: Offer) -> discord.SelectOption:
    label = f"{index}. {offer.gpu_name or '?'} ×{offer.num_gpus or 1} · {money(offer.dph_total, 3)}/h"
    desc = (f"{offer.vram_gb:.0f} GB · " if offer.vram_gb is not None else "") + \
        f"{offer.geolocation or offer.country or '?'} · offer {offer.id}"
    return discord.SelectOption(label=truncate(label, SELECT_OPTION_LIMIT), value=str(index - 1),
                                description=truncate(desc, SELECT_OPTION_LIMIT))


class OfferPicker(discord.ui.View):
    """The select menu under the offer list (ephemeral, so a plain view with a timeout is enough)."""

    def __init__(self, bot: VastopsBot, origin: discord.Interaction[Any], offers: list[Offer],
                 query: OfferQuery) -> None:
        super().__init__(timeout=PICK_TIMEOUT)
        self.bot, self.origin, self.offers, self.query = bot, origin, offers, query
        self.select: discord.ui.Select[OfferPicker] = discord.ui.Select(
            placeholder="Pick an offer to request", min_values=1, max_values=1,
            options=[offer_option(i + 1, o) for i, o in enumerate(offers)],
        )
        self.select.callback = self.picked  # type: ignore[method-assign]
        self.add_item(self.select)

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        if interaction.user.id != self.origin.user.id:
            await answer(interaction, "Only the person who ran /rent can pick from this list.")
            return False
        return True

    async def picked(self, interaction: discord.Interaction[Any]) -> None:
        offer = self.offers[int(self.select.values[0])]
        self.stop()
        await interaction.response.edit_message(
            content=f"⏳ Requesting offer {offer.id} ({offer.gpu_name} at {money(offer.dph_total, 3)}/h)…",
            embeds=[], view=None)
        rental, approval = await self.bot.rentals.request(
            offer, requester_id=interaction.user.id, requester_name=user_name(interaction.user),
            query=self.query)
        approval = await self.bot.store.get_approval(approval.id) or approval
        where = f"<#{approval.channel_id}>" if approval.channel_id else "the notify channel"
        link = ""
        if approval.message_id and interaction.guild_id:
            link = f" https://discord.com/channels/{interaction.guild_id}/{approval.channel_id}/{approval.message_id}"
        text = (f"✅ Request #{approval.id} (rental #{rental.id}, {offer.gpu_name} ×{offer.num_gpus or 1} at "
                f"{money(offer.dph_total, 3)}/h) is waiting for an approver in {where}.{link}\n"
                f"It expires in {format_duration(self.bot.settings.approval_timeout)}.")
        await interaction.edit_original_response(content=self.bot.render.content(text))

    async def on_timeout(self) -> None:
        try:
            await self.origin.edit_original_response(content="This offer list expired; run /rent again.",
                                                     embeds=[], view=None)
        except discord.HTTPException:
            pass  # the ephemeral may be gone already; nothing to tidy

    async def on_error(self, interaction: discord.Interaction[Any], error: Exception,
                       item: discord.ui.Item[Any]) -> None:
        await self.bot.report_interaction_error(interaction, error)


class Rent(commands.Cog):
    def __init__(self, bot: VastopsBot) -> None:
        self.bot = bot

    @app_commands.command(name="rent", description="Find GPU offers and ask an approver to rent one")
    @app_commands.guild_only()
    @app_commands.describe(
        gpu="GPU model, e.g. RTX 4090 (any if empty)", num_gpus="how many GPUs",
        min_vram="minimum VRAM per GPU (GB)",
        max_price="highest $/h (capped by the bot's MAX_PRICE_PER_HOUR)", disk="disk in GB",
        excluded_countries="country codes to avoid besides the defaults, e.g. CN,UA",
    )
    async def rent(
        self, interaction: discord.Interaction[Any], gpu: app_commands.Range[str, 1, 40] | None = None,
        num_gpus: app_commands.Range[int, 1, 8] = 1,
        min_vram: app_commands.Range[float, 1.0, 200.0] | None = None,
        max_price: app_commands.Range[float, 0.01, 200.0] | None = None,
        disk: app_commands.Range[int, 10, 2000] | None = None,
        excluded_countries: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = self.bot
        try:
            countries = parse_countries(excluded_countries)
        except ValueError as exc:
            await answer(interaction, f"excluded_countries: {exc}")
            return
        query = bot.rentals.query(gpu=gpu, num_gpus=num_gpus, min_vram_gb=min_vram, max_dph=max_price,
                                  disk_gb=disk, excluded_countries=countries, limit=OFFERS_SHOWN)
        offers, checks = await asyncio.gather(bot.rentals.search(query), preflight_checks(bot))
        offers = offers[:OFFERS_SHOWN]
        r = bot.render
        check_lines = "\n".join(
            f"{CHECK_ICON.get(c.status, '•')} **{r.text(c.name, 60)}**: {r.text(c.detail, 200)}"
            for c in checks)
        excluded = ", ".join(query.excluded_countries) or "none"
        filters = (f"{r.text(gpu or 'any GPU', 40)} ×{num_gpus} · ≤ {money(query.max_dph, 2)}/h · "
                   f"disk {query.disk_gb:.0f} GB · excluding {excluded}")
        if not offers:
            embed = r.embed(title="No offers match",
                            description=f"{filters}\n\nTry a higher max_price or another GPU.",
                            fields=[("Preflight", check_lines, False)], colour=0x95A5A6)
            await interaction.edit_original_response(embeds=[embed])
            return
        failed = [c for c in checks if c.status == "fail"]
        desc = filters + "\n\n" + "\n".join(offer_line(i + 1, o) for i, o in enumerate(offers))
        embed = r.embed(title=f"{len(offers)} offer(s), cheapest first", description=desc,
                        fields=[("Preflight", check_lines, False)], colour=0x3498DB,
                        footer="Pick one below; an approver then confirms it in the notify channel.")
        if failed:
            embed.colour = discord.Colour(0xE74C3C)
            embed.set_footer(text="Fix the failed preflight checks before renting (python -m bot check).")
            await interaction.edit_original_response(embeds=[embed])
            return
        picker = OfferPicker(bot, interaction, offers, query)
        await interaction.edit_original_response(**Reply(embeds=[embed]).edit_kwargs(), view=picker)

    @rent.autocomplete("gpu")
    async def gpu_autocomplete(self, interaction: discord.Interaction[Any],
                               current: str) -> list[app_commands.Choice[str]]:
        needle = current.strip().lower().replace("_", " ")
        names = [g for g in KNOWN_GPUS if needle in g.lower()] if needle else list(KNOWN_GPUS)
        return [app_commands.Choice(name=g, value=g) for g in names[:25]]


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Rent(bot))

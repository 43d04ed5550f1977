"""/rent: search offers, run the preflight checks, let the user pick one, and post an approval request."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.durations import format_duration
from bot.hosts import offer_trouble, trouble_note
from bot.provisioning.checklist import disk_to_request, hide_incompatible, run_preflight
from bot.render import SELECT_OPTION_LIMIT, Render, Reply, money
from bot.vast.models import Offer, OfferQuery
from cogs.budget import budget_refusal
from cogs.common import answer, cooled_down, in_our_guild, user_name, vbot

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
PICK_TIMEOUT = 600.0  # an older list is refused at the pick: its preflight checks are stale
PICK_CLOCK_SKEW = 60.0  # an ``issued`` further ahead than this was not written by this bot's clock
MAX_OWN_COUNTRIES = 18  # what fits in the pick's custom_id (100 characters) as two letters each
PICK_TEMPLATE = (r"vastops:pick:(?P<user>\d{1,20}):(?P<issued>\d{1,12}):(?P<gpus>\d{1,2}):(?P<disk>\d{1,5})"
                 r":(?P<max>\d{1,7})(?::(?P<countries>(?:[A-Z]{2}){1," + str(MAX_OWN_COUNTRIES) + r"}))?")


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


async def preflight_checks(bot: VastopsBot, disk_gb: int | None = None) -> list[Check]:
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
        report = await asyncio.wait_for(run_preflight(bot.preflight, bot.settings, disk_gb=disk_gb), timeout=20.0)
    except Exception as exc:  # a broken check must not hide the offers; it is shown as failed
        log.warning("preflight failed to run", exc_info=True)
        return [*checks, Check("preflight", "fail", f"could not run: {type(exc).__name__}")]
    for item in report.checks:
        checks.append(Check(str(item.name), str(item.status), str(item.detail)))
    return checks


def offer_line(render: Render, index: int, offer: Offer) -> str:
    vram = f"{offer.vram_gb:.0f} GB" if offer.vram_gb is not None else "? GB"
    rel = f"{offer.reliability * 100:.1f}%" if offer.reliability is not None else "?"
    down = f"↓{offer.inet_down:.0f} Mbps" if offer.inet_down is not None else "↓?"
    where = render.text(offer.country or (offer.geolocation or "?"), 40)
    return (f"**{index}.** {render.text(offer.gpu_name or '?', 60)} ×{offer.num_gpus or 1} · "
            f"**{money(offer.dph_total, 3)}/h** · {vram} · {where} · {rel} · {down}")


def offer_option(render: Render, index: int, offer: Offer) -> discord.SelectOption:
    """One select option; its value is what the pick needs after a restart: the offer id and the price shown."""
    label = f"{index}. {offer.gpu_name or '?'} ×{offer.num_gpus or 1} · {money(offer.dph_total, 3)}/h"
    desc = (f"{offer.vram_gb:.0f} GB · " if offer.vram_gb is not None else "") + \
        f"{offer.geolocation or offer.country or '?'} · offer {offer.id}"
    return discord.SelectOption(label=render.plain(label, SELECT_OPTION_LIMIT),
                                value=f"{offer.id}:{offer.dph_total or 0:.4f}",
                                description=render.plain(desc, SELECT_OPTION_LIMIT))


def pick_custom_id(user_id: int, issued: int, num_gpus: int, disk_gb: int, max_milli: int,
                   countries: list[str] | None = None) -> str:
    """What the pick must know without memory: who may pick, when the list was shown, and the search's
    GPU count, disk, $/h ceiling (in thousandths) and the requester's own excluded countries (two
    validated letters each) to re-check the offer with. Never free user text."""
    tail = ":" + "".join(countries) if countries else ""
    return f"vastops:pick:{user_id}:{issued}:{num_gpus}:{disk_gb}:{max_milli}{tail}"


def own_countries(query: OfferQuery, settings_countries: list[str]) -> list[str]:
    """The countries the requester excluded beyond the bot's own list (those are re-applied anyway)."""
    return [c for c in query.excluded_countries if c not in settings_countries]


class OfferPick(discord.ui.DynamicItem[discord.ui.Select[Any]], template=PICK_TEMPLATE):
    """The select menu under the offer list, rebuilt from its custom_id on every pick (restart-proof).

    The pick re-reads the chosen offer from Vast by id and binds the request to that offer and its
    current $/h, so a list shown before a restart (or a price change) never rents something else.
    """

    def __init__(self, user_id: int, issued: int, num_gpus: int, disk_gb: int, max_milli: int,
                 options: list[discord.SelectOption], countries: list[str] | None = None) -> None:
        super().__init__(discord.ui.Select(
            placeholder="Pick an offer to request", min_values=1, max_values=1, options=options,
            custom_id=pick_custom_id(user_id, issued, num_gpus, disk_gb, max_milli, countries),
        ))
        self.user_id, self.issued = user_id, issued
        self.num_gpus, self.disk_gb, self.max_dph = num_gpus, disk_gb, max_milli / 1000
        self.countries = list(countries or [])

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> OfferPick:
        options = list(getattr(item, "options", []))
        codes = match["countries"] or ""
        return cls(int(match["user"]), int(match["issued"]), int(match["gpus"]), int(match["disk"]),
                   int(match["max"]), options, [codes[i:i + 2] for i in range(0, len(codes), 2)])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = vbot(interaction)
        try:
            await self._pick(bot, interaction)
        except Exception as exc:  # never leave the list in its "checking…" state
            await bot.report_interaction_error(interaction, exc, replace_original=True)

    async def _pick(self, bot: VastopsBot, interaction: discord.Interaction[Any]) -> None:
        # Checked at click time, not taken from the custom_id: only a member, in the bot's server,
        # may post a request (it pings the approver role).
        if not in_our_guild(bot, interaction):
            await answer(interaction, "Offers can only be picked in the server, by one of its members.")
            return
        if interaction.user.id != self.user_id:
            await answer(interaction, "Only the person who ran /rent can pick from this list.")
            return
        age = bot.clock.now() - self.issued
        if age > PICK_TIMEOUT or age < -PICK_CLOCK_SKEW:
            await interaction.response.edit_message(content="This offer list expired; run /rent again.",
                                                    embeds=[], view=None)
            return
        picked = re.fullmatch(r"(\d{1,20}):(\d{1,6}(?:\.\d{1,6})?)", (self.item.values or [""])[0])
        if picked is None:
            await answer(interaction, "That is not an offer from this list; run /rent again.")
            return
        offer_id, shown_dph = int(picked[1]), float(picked[2])
        if refusal := await budget_refusal(bot, interaction.user.id):  # spent since the list was shown
            await interaction.response.edit_message(content=bot.render.content(refusal), embeds=[], view=None)
            return
        await interaction.response.edit_message(
            content=f"⏳ Checking offer {offer_id} with Vast…", embeds=[], view=None)
        query = bot.rentals.query(num_gpus=self.num_gpus, max_dph=self.max_dph, disk_gb=self.disk_gb, limit=5,
                                  excluded_countries=self.countries)
        query = query.model_copy(update={"offer_ids": [offer_id]})
        offer = next((o for o in await bot.rentals.search(query) if o.id == offer_id), None)
        if offer is None:
            await interaction.edit_original_response(content=bot.render.content(
                f"⚠️ Offer {offer_id} is no longer available (rented by someone else, or now above "
                f"{money(query.max_dph, 2)}/h). Nothing was requested; run /rent again."))
            return
        rental, approval = await bot.rentals.request(
            offer, requester_id=interaction.user.id, requester_name=user_name(interaction.user), query=query)
        approval = await bot.store.get_approval(approval.id) or approval
        where = f"<#{approval.channel_id}>" if approval.channel_id else "the notify channel"
        link = ""
        if approval.message_id and interaction.guild_id:
            link = f" https://discord.com/channels/{interaction.guild_id}/{approval.channel_id}/{approval.message_id}"
        r = bot.render
        changed = ""
        if offer.dph_total is not None and abs(offer.dph_total - shown_dph) >= 0.0005:
            changed = (f"💲 The price changed from {money(shown_dph, 3)}/h to {money(offer.dph_total, 3)}/h "
                       "since the list was shown; the request uses the new price.\n")
        text = (f"{changed}✅ Request #{approval.id} (rental #{rental.id}, {r.text(offer.gpu_name or '?', 60)} "
                f"×{offer.num_gpus or 1} at {money(offer.dph_total, 3)}/h) is waiting for an approver in "
                f"{where}.{link}\nIt expires in {format_duration(bot.settings.approval_timeout)}.")
        await interaction.edit_original_response(content=r.content(text))


def offer_picker(bot: VastopsBot, user_id: int, offers: list[Offer], query: OfferQuery) -> discord.ui.View:
    """The restart-proof select under the offer list (a View only to carry it; nothing is kept in memory)."""
    max_milli = math.ceil(round((query.max_dph or 0) * 1000, 6))  # rounded up: the shown prices stay inside
    view = discord.ui.View(timeout=None)
    view.add_item(OfferPick(user_id, int(bot.clock.now()), query.num_gpus or 1, int(query.disk_gb), max_milli,
                            [offer_option(bot.render, i + 1, o) for i, o in enumerate(offers)],
                            own_countries(query, bot.settings.excluded_countries)))
    return view


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
        bot = self.bot
        if not await cooled_down(bot, interaction, "rent"):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if refusal := await budget_refusal(bot, interaction.user.id):
            await answer(interaction, bot.render.content(refusal))
            return
        try:
            countries = parse_countries(excluded_countries)
        except ValueError as exc:
            await answer(interaction, f"excluded_countries: {bot.render.text(exc, 300)}")
            return
        disk = disk or await disk_to_request(bot.settings)  # priced at a disk the manifest's models fit in
        query = bot.rentals.query(gpu=gpu, num_gpus=num_gpus, min_vram_gb=min_vram, max_dph=max_price,
                                  disk_gb=disk, excluded_countries=countries, limit=OFFERS_SHOWN)
        if len(own_countries(query, bot.settings.excluded_countries)) > MAX_OWN_COUNTRIES:
            await answer(interaction, f"excluded_countries: at most {MAX_OWN_COUNTRIES} countries besides "
                                      f"the bot's own ({', '.join(bot.settings.excluded_countries) or 'none'}).")
            return
        offers, checks = await asyncio.gather(bot.rentals.search(query), preflight_checks(bot, disk))
        offers, hidden = await hide_incompatible(offers, bot.settings)  # drivers/GPUs the manifest's torch cannot use
        offers = offers[:OFFERS_SHOWN]
        r = bot.render
        check_lines = "\n".join(
            f"{CHECK_ICON.get(c.status, '•')} **{r.text(c.name, 60)}**: {r.text(c.detail, 200)}"
            for c in checks)
        excluded = ", ".join(query.excluded_countries) or "none"
        filters = (f"{r.text(gpu or 'any GPU', 40)} ×{num_gpus} · ≤ {money(query.max_dph, 2)}/h · "
                   f"disk {query.disk_gb:.0f} GB · excluding {excluded}")
        filters += f"\n{r.text(hidden, 300)}" if hidden else ""
        if not offers:
            embed = r.embed(title="No offers match",
                            description=f"{filters}\n\nTry a higher max_price or another GPU.",
                            fields=[("Preflight", check_lines, False)], colour=0x95A5A6)
            await interaction.edit_original_response(embeds=[embed])
            return
        failed = [c for c in checks if c.status == "fail"]
        trouble = await offer_trouble(bot.store, offers)  # machines that failed us before the avoid window
        desc = filters + "\n\n" + "\n".join(offer_line(r, i + 1, o) + trouble_note(trouble.get(o.id))
                                             for i, o in enumerate(offers))
        embed = r.embed(title=f"{len(offers)} offer(s), cheapest first", description=desc,
                        fields=[("Preflight", check_lines, False)], colour=0x3498DB,
                        footer="Pick one below; an approver then confirms it in the notify channel.")
        if failed:
            embed.colour = discord.Colour(0xE74C3C)
            embed.set_footer(text="Fix the failed preflight checks before renting (python -m bot check).")
            await interaction.edit_original_response(embeds=[embed])
            return
        picker = offer_picker(bot, interaction.user.id, offers, query)
        await interaction.edit_original_response(**Reply(embeds=[embed]).edit_kwargs(), view=picker)

    @rent.autocomplete("gpu")
    async def gpu_autocomplete(self, interaction: discord.Interaction[Any],
                               current: str) -> list[app_commands.Choice[str]]:
        needle = current.strip().lower().replace("_", " ")
        names = [g for g in KNOWN_GPUS if needle in g.lower()] if needle else list(KNOWN_GPUS)
        return [app_commands.Choice(name=g, value=g) for g in names[:25]]


async def setup(bot: VastopsBot) -> None:
    await bot.add_cog(Rent(bot))
    bot.add_dynamic_items(OfferPick)

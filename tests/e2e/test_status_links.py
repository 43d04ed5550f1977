"""End to end: who sees a rental's ComfyUI and tunnel links in /status, and which links are shown at all.

Policy: the requester and the approvers see a rental's links; anyone else sees its row without them.
A link is shown only when built from the instance's address or of a quick tunnel's shape: a host
named in a log line never reaches Discord.
"""

from __future__ import annotations

from pathlib import Path

from bot.db.models import Rental, RentalState
from cogs.common import rental_progress, status_embed
from cogs.status import links_view
from tests.e2e.helpers import APPROVER, OUTSIDER, REQUESTER, Stack, assert_clean, original, stack
from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import NOTIFY_CHANNEL_ID

COMFY = "http://203.0.113.7:40123"
TUNNEL = "https://able-baker-charlie-delta.trycloudflare.com"
PHISH = "https://vast-ai-login.example.net:8188"


async def _ready_rental(s: Stack, label: str, **urls: str) -> Rental:
    now = s.clock.now()
    return await s.store.create_rental(
        label=label, requester_id=REQUESTER, requester_name="rita", offer_id=1, quoted_dph=0.3, now=now,
        state=RentalState.READY, started_at=now - 600, dph_total=0.3, gpu_name="RTX 4090", num_gpus=1, **urls)


async def _status_text(s: Stack, user_id: int, **options: str) -> str:
    inter = await s.fake.slash("status", options, user_id=user_id)
    shown = await original(s.fake, inter)
    assert shown.ephemeral
    return shown.text() + "".join(data.decode() for data in shown.files.values())


async def test_links_are_for_the_requester_and_approvers(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        rental = await _ready_rental(s, "vastops-links", comfyui_url=COMFY, tunnel_url=TUNNEL)
        for user in (REQUESTER, APPROVER):
            text = await _status_text(s, user)
            assert COMFY in text and TUNNEL in text, (user, text)
            await s.clock.advance(s.settings.command_cooldown + 1)
        text = await _status_text(s, OUTSIDER)
        assert "vastops-links" in text and f"Rental #{rental.id}" in text  # the row, without its links
        assert COMFY not in text and TUNNEL not in text and "trycloudflare" not in text
        await s.clock.advance(s.settings.command_cooldown + 1)
        detail = await _status_text(s, OUTSIDER, rental=str(rental.id))
        assert "vastops-links" in detail and COMFY not in detail and TUNNEL not in detail
        await s.clock.advance(s.settings.command_cooldown + 1)
        detail = await _status_text(s, REQUESTER, rental=str(rental.id))
        assert COMFY in detail and TUNNEL in detail
        assert_clean(s)


async def test_a_link_whose_host_came_from_a_log_line_is_never_shown(fake_discord: FakeDiscord,
                                                                      tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        rental = await _ready_rental(s, "vastops-phish", comfyui_url=PHISH,
                                     tunnel_url="https://login-vast.trycloudflare.com.example.net/")
        text = await _status_text(s, REQUESTER)
        assert "vastops-phish" in text
        assert "example.net" not in text and "vast-ai-login" not in text
        await s.clock.advance(s.settings.command_cooldown + 1)
        detail = await _status_text(s, APPROVER, rental=str(rental.id))
        assert "example.net" not in detail
        assert_clean(s)


async def test_the_links_button_answers_privately_by_policy(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    """The public status message carries no links; its Links button gives them to requester and approvers."""
    async with stack(fake_discord, tmp_path) as s:
        rental = await _ready_rental(s, "vastops-button", comfyui_url=COMFY, tunnel_url=TUNNEL)
        channel = s.bot.get_partial_messageable(NOTIFY_CHANNEL_ID)
        progress = await rental_progress(s.bot, rental)
        posted = await channel.send(embed=status_embed(s.bot.render, rental, progress, s.clock.now()),
                                    view=links_view(rental.id))
        public = s.fake.message(posted.id)
        assert COMFY not in public.text() and TUNNEL not in public.text()
        [custom_id] = public.custom_ids()
        answers = {}
        for user in (REQUESTER, APPROVER, OUTSIDER):
            click = await s.fake.click(posted.id, custom_id, user_id=user)
            body = await click.response()
            assert body["type"] == 4 and body["data"]["flags"] & 64, body
            answers[user] = body["data"]["content"]
        assert COMFY in answers[REQUESTER] and TUNNEL in answers[APPROVER]
        assert COMFY not in answers[OUTSIDER] and "Only the requester" in answers[OUTSIDER]
        assert_clean(s)

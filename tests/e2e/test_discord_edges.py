"""End to end, the Discord surface at its edges: error paths that must not leave a "working…" message
behind, odd rental arguments, /status with many rentals, the 3-second acknowledgement while deliveries
are slow, and what the approver's push notification says."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from bot.db.models import RentalState
from bot.render import check_limits
from tests.e2e.helpers import (
    APPROVER,
    REQUESTER,
    Stack,
    assert_clean,
    original,
    request_rental,
    stack,
)
from tests.support.fakediscord import FakeDiscord, StoredMessage, walk_components
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, CHANNEL_ID, NOTIFY_CHANNEL_ID


def _select(msg: StoredMessage) -> dict[str, Any]:
    return next(c for c in walk_components(msg.components) if c.get("type") == 3)


async def _picker(s: Stack, **options: Any) -> StoredMessage:
    inter = await s.fake.slash("rent", {"num_gpus": 1, **options}, user_id=REQUESTER)
    return await original(s.fake, inter, lambda m: bool(m.custom_ids()))


def _shown_offer_id(option: dict[str, Any]) -> int:
    found = re.search(r"offer (\d+)", option.get("description") or "")
    assert found, option
    return int(found[1])


async def _approval_posted(s: Stack) -> StoredMessage:
    return await s.fake.wait_for_message(
        NOTIFY_CHANNEL_ID, lambda m: any(c.startswith("vastops:approval:") for c in m.custom_ids()))


# ---------------------------------------------------------------- error paths of buttons


async def test_destroy_that_fails_replaces_the_working_message(fake_discord: FakeDiscord,
                                                               tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        now = s.clock.now()
        rental = await s.store.create_rental(
            label="vastops-deadbeef", requester_id=REQUESTER, requester_name="rita", offer_id=1,
            quoted_dph=0.4, now=now, state=RentalState.READY, started_at=now, gpu_name="RTX 4090", num_gpus=1)
        d = await s.fake.slash("destroy", {"rental": str(rental.id)}, user_id=REQUESTER)
        confirm = await original(s.fake, d, lambda m: bool(m.custom_ids()))
        button = next(c for c in confirm.custom_ids() if c.startswith("vastops:destroy:"))
        await s.store.close()  # the database goes away between the question and the click
        click = await s.fake.click(confirm.id, button, user_id=REQUESTER)
        assert (await click.response())["type"] == 7
        msg = await s.fake.wait_for_message(
            CHANNEL_ID, lambda m: m.id == confirm.id and "database is unavailable" in m.content)
        assert "⏳" not in msg.content and not msg.custom_ids()


# ---------------------------------------------------------------- rental arguments


async def test_odd_rental_arguments_are_answered(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        for typed in ("²", "9" * 30, "#" + "1" * 25):
            choices = await s.fake.autocomplete("logs", {"rental": typed}, "rental", user_id=APPROVER, timeout=3)
            assert choices == []
            inter = await s.fake.slash("status", {"rental": typed}, user_id=REQUESTER)
            shown = await original(s.fake, inter)
            assert shown.content.startswith("No rental"), shown.content
        assert_clean(s)
# ---------------------------------------------------------------- the 3-second acknowledgement


async def test_deny_is_acknowledged_while_deliveries_are_slow(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        first, first_id = await request_rental(s)
        # Discord answers the next notify-channel post with a 2 s rate limit; the delivery that hits it
        # holds the engine's event pump meanwhile.
        s.fake.interaction_ack_deadline = 1.0
        s.fake.inject_429("POST", rf"/channels/{NOTIFY_CHANNEL_ID}/messages", retry_after=2.0)
        picker = await _picker(s)
        select = _select(picker)
        pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER,
                                  values=[select["options"][1]["value"]])
        await pick.response()
        await s.fake.wait_for_request(lambda r: r.status == 429)
        deny = await s.fake.click(first.id, f"vastops:approval:{first_id}:deny", user_id=APPROVER)
        assert (await deny.response(timeout=5))["type"] == 7
        assert not deny.rejected
        await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == first.id and "Denied by ada" in m.text()
                                      and not m.custom_ids())
        second = await _approval_posted_after(s, first.id)
        assert second.id != first.id
        refused = [(r.path, r.status) for r in s.fake.requests if r.status >= 400 and r.status != 429]
        assert not refused


async def _approval_posted_after(s: Stack, first_id: int) -> StoredMessage:
    return await s.fake.wait_for_message(
        NOTIFY_CHANNEL_ID, lambda m: m.id != first_id and any(c.startswith("vastops:approval:")
                                                              for c in m.custom_ids()), timeout=10)


# ---------------------------------------------------------------- /status at scale


async def test_status_with_30_rentals_and_30_unknown_instances(fake_discord: FakeDiscord,
                                                              tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        now = s.clock.now()
        rentals = []
        for i in range(30):
            rentals.append(await s.store.create_rental(
                label=f"vastops-{i:08x}", requester_id=REQUESTER, requester_name="rita " * 20, offer_id=1000 + i,
                quoted_dph=0.5, now=now, state=RentalState.READY, started_at=now - 3600, dph_total=0.55,
                gpu_name="NVIDIA GeForce RTX 4090 Extreme Edition " * 4, num_gpus=8,
                comfyui_url=f"https://abc-{i}.trycloudflare.com/" + "x" * 150))
        strays = [s.stage.sim.seed_instance(label=f"stray-{i}-" + "y" * 60, age=600) for i in range(30)]
        inter = await s.fake.slash("status", {}, user_id=REQUESTER)
        shown = await original(s.fake, inter)
        assert not check_limits(shown.payload)
        text = shown.text()
        assert text.index("30** active rental") < 200  # the headline comes first
        (name, data), = shown.files.items()
        listing = data.decode()
        for rental in rentals:
            assert f"#{rental.id} " in listing
        for stray in strays:
            assert str(stray) in listing
        # Every destroy button names an instance that the message itself lists.
        buttons = [c for c in shown.custom_ids() if c.startswith("vastops:orphan:")]
        assert buttons
        for cid in buttons:
            assert f"Instance {cid.rsplit(':', 1)[1]}" in text
        assert name.endswith(".txt") and "attached" in text
        assert_clean(s)




# ---------------------------------------------------------------- the approver's phone


async def test_approval_ping_says_who_what_and_how_much(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake_discord.add_member(5005, "**zed** @everyone")
    async with stack(fake_discord, tmp_path) as s:
        inter = await s.fake.slash("rent", {"num_gpus": 1}, user_id=5005)
        picker = await original(s.fake, inter, lambda m: bool(m.custom_ids()))
        select = _select(picker)
        pick = await s.fake.click(picker.id, select["custom_id"], user_id=5005,
                                  values=[select["options"][0]["value"]])
        assert (await pick.response())["type"] == 7
        msg = await _approval_posted(s)
        approval = await s.store.get_approval(int(msg.custom_ids()[0].split(":")[2]))
        assert approval is not None
        # What a phone's push notification shows is the content: who, what and how much, in one short line.
        line = msg.content
        assert "\n" not in line and len(line) <= 200
        assert f"${approval.payload['quoted_dph']:.3f}/h" in line and str(approval.payload["gpu_name"]) in line
        assert "\\*\\*zed\\*\\*" in line and "@everyone" not in line
        assert msg.pings.roles == [APPROVER_ROLE_ID] and not msg.pings.everyone
        assert_clean(s)


# ---------------------------------------------------------------- user input shown back


async def test_bad_country_codes_are_shown_escaped(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        typed = f"<@&{APPROVER_ROLE_ID}>, **x**"
        inter = await s.fake.slash("rent", {"excluded_countries": typed}, user_id=REQUESTER)
        shown = await original(s.fake, inter)
        assert shown.content.startswith("excluded_countries:") and "two-letter" in shown.content
        assert f"<@&{APPROVER_ROLE_ID}>" not in shown.content and "\\*\\*X\\*\\*" in shown.content
        assert_clean(s)


async def test_the_race_loser_hears_the_winner_s_name_escaped(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake_discord.add_member(5006, "**ann**", roles=[APPROVER_ROLE_ID])
    fake_discord.add_member(5007, "__bob__", roles=[APPROVER_ROLE_ID])
    async with stack(fake_discord, tmp_path) as s:
        msg, approval_id = await request_rental(s)
        approve = f"vastops:approval:{approval_id}:approve"
        a, b = await asyncio.gather(s.fake.click(msg.id, approve, user_id=5006),
                                    s.fake.click(msg.id, approve, user_id=5007))
        await a.response()
        await b.response()
        note = await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Already approved by" in m.content)
        assert "\\*\\*ann\\*\\*" in note.content or "\\_\\_bob\\_\\_" in note.content, note.content
        assert_clean(s)

"""End to end: the /rent offer pick is restart-proof, re-reads the offer by id and binds the current price."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from tests.e2e.helpers import (
    APPROVER,
    OUTSIDER,
    REQUESTER,
    Stack,
    assert_clean,
    open_bot,
    original,
    stack,
)
from tests.support.fakediscord import FakeDiscord, FakeInteraction, StoredMessage, start_bot, walk_components
from tests.support.fakediscord.ids import CHANNEL_ID, NOTIFY_CHANNEL_ID


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


# ---------------------------------------------------------------- the offer picker


async def test_offer_pick_survives_a_restart(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        assert len(select["custom_id"]) <= 100
        option = select["options"][0]
        offer_id = _shown_offer_id(option)
        await s.bot.close()
        # A new process: new bot, store and client on the same database file.
        store, vast, bot = await open_bot(s.fake, s.stage, s.clock, s.settings)
        try:
            async with start_bot(bot):
                pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER,
                                          values=[option["value"]])
                assert (await pick.response())["type"] == 7
                approval_msg = await _approval_posted(s)
                approval = await store.get_approval(int(approval_msg.custom_ids()[0].split(":")[2]))
                assert approval is not None and approval.is_pending
                assert approval.payload["offer_id"] == offer_id  # bound to the offer shown, at its price
                assert f"${approval.payload['quoted_dph']:.3f}/h" in option["label"]
                await s.fake.wait_for_message(
                    CHANNEL_ID, lambda m: m.id == picker.id and "waiting for an approver" in m.text())
        finally:
            await vast.aclose()
            await store.close()
        assert_clean(s)


async def test_pick_binds_the_current_price_and_says_so(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        option = select["options"][0]
        offer = s.stage.sim.offer(_shown_offer_id(option))
        assert offer is not None
        before = float(offer["dph_total"])
        offer["dph_base"] = float(offer["dph_base"]) + 0.1
        pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER, values=[option["value"]])
        assert (await pick.response())["type"] == 7
        approval_msg = await _approval_posted(s)
        approval = await s.store.get_approval(int(approval_msg.custom_ids()[0].split(":")[2]))
        assert approval is not None and approval.payload["quoted_dph"] > before + 0.05
        done = await s.fake.wait_for_message(
            CHANNEL_ID, lambda m: m.id == picker.id and "waiting for an approver" in m.text())
        assert "price changed" in done.content.lower()
        assert_clean(s)


async def test_pick_of_a_gone_offer_requests_nothing(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        option = select["options"][0]
        offer = s.stage.sim.offer(_shown_offer_id(option))
        assert offer is not None
        offer["rented"] = True
        pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER, values=[option["value"]])
        assert (await pick.response())["type"] == 7
        done = await s.fake.wait_for_message(
            CHANNEL_ID, lambda m: m.id == picker.id and "no longer available" in m.content)
        assert "⏳" not in done.content and not done.custom_ids()
        assert not await s.store.list_rentals(limit=5)
        assert_clean(s)


async def test_pick_by_someone_else_or_too_late_is_refused(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        value = select["options"][0]["value"]
        other = await s.fake.click(picker.id, select["custom_id"], user_id=APPROVER, values=[value])
        body = await other.response()
        assert body["type"] == 4 and body["data"]["flags"] & 64 and "Only the person" in body["data"]["content"]
        await s.clock.advance(601)
        late = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER, values=[value])
        assert (await late.response())["type"] == 7
        msg = s.fake.message(picker.id)
        assert "expired" in msg.content and not msg.custom_ids()
        assert not await s.store.list_rentals(limit=5)
        assert_clean(s)


async def test_pick_that_fails_replaces_the_working_message(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        s.stage.sim.inject_fault("POST", "/api/v0/bundles/", "500")
        pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER,
                                  values=[select["options"][0]["value"]])
        assert (await pick.response())["type"] == 7
        msg = await s.fake.wait_for_message(
            CHANNEL_ID, lambda m: m.id == picker.id and "Vast.ai did not answer" in m.content)
        assert "⏳" not in msg.content and "ref `" in msg.content and "Traceback" not in msg.content
        assert_clean(s)


# ---------------------------------------------------------------- picks the list never offered


async def _forged_pick(s: Stack, picker: StoredMessage, custom_id: str, value: str, *, user_id: int,
                       guild: bool = True) -> FakeInteraction:
    """A component interaction the Discord client would not send for this message: a custom_id edited
    by hand, or a pick from a DM. The bot may only trust what it checks itself at click time."""
    # The message as the forger's client shows it: the same list, under the edited custom_id.
    shown = _select(picker)["custom_id"]
    forged = dataclasses.replace(picker, payload=json.loads(json.dumps(picker.payload).replace(shown, custom_id)))
    data = {"custom_id": custom_id, "component_type": 3, "values": [value]}
    inter = s.fake._new_interaction(3, data, user_id=user_id, roles=None, channel_id=None, guild=guild,
                                    message=forged)
    await s.fake.dispatch("INTERACTION_CREATE", inter.payload)
    return inter


async def _nothing_requested(s: Stack) -> None:
    assert not await s.store.list_rentals(limit=5)
    assert not [m for m in s.notify if any(c.startswith("vastops:approval:") for c in m.custom_ids())]


async def test_pick_from_a_dm_is_refused(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    """Outside the server nobody is a member: no request, and above all no ping of the approver role."""
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        forged = select["custom_id"].replace(f":{REQUESTER}:", f":{OUTSIDER}:", 1)
        inter = await _forged_pick(s, picker, forged, select["options"][0]["value"], user_id=OUTSIDER, guild=False)
        body = await inter.response()
        assert body["type"] == 4 and body["data"]["flags"] & 64, body
        assert "server" in body["data"]["content"]
        await _nothing_requested(s)
        assert_clean(s)


async def test_pick_with_an_issued_time_in_the_future_is_refused(fake_discord: FakeDiscord,
                                                                  tmp_path: Path) -> None:
    """A future ``issued`` would keep a list (and its preflight checks) valid for ever."""
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s)
        select = _select(picker)
        parts = select["custom_id"].split(":")
        parts[3] = str(int(parts[3]) + 86_400)
        inter = await _forged_pick(s, picker, ":".join(parts), select["options"][0]["value"], user_id=REQUESTER)
        assert (await inter.response())["type"] == 7
        done = await s.fake.wait_for_message(
            CHANNEL_ID, lambda m: m.id == picker.id and ("/rent again" in m.content or "waiting for" in m.text()))
        assert "expired" in done.content and not done.custom_ids()
        await _nothing_requested(s)
        assert_clean(s)


async def test_pick_carries_the_requesters_excluded_countries(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    """The request remembers the countries the requester excluded: the approval re-check applies them."""
    async with stack(fake_discord, tmp_path) as s:
        picker = await _picker(s, excluded_countries="de, fr")
        select = _select(picker)
        assert len(select["custom_id"]) <= 100
        pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER,
                                  values=[select["options"][0]["value"]])
        assert (await pick.response())["type"] == 7
        approval_msg = await _approval_posted(s)
        approval = await s.store.get_approval(int(approval_msg.custom_ids()[0].split(":")[2]))
        assert approval is not None and approval.rental_id is not None
        rental = await s.store.get_rental(approval.rental_id)
        assert rental is not None
        assert {"DE", "FR"} <= set(rental.request["query"]["excluded_countries"])
        assert_clean(s)

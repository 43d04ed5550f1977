"""End to end: the real VastopsBot (unmodified discord.py) against the fake Discord, with the Vast
simulator, a real asyncssh server per instance (the rehearsal stage) and the watch engine ticked
on a FakeClock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.db.models import RentalState
from tests.e2e.helpers import (
    APPROVER,
    APPROVER2,
    FAKE_HF_TOKEN,
    OUTSIDER,
    REQUESTER,
    always_true,
    assert_clean,
    open_bot,
    original,
    request_rental,
    stack,
)
from tests.support.fakediscord import FakeDiscord, StoredMessage, start_bot
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, CHANNEL_ID, NOTIFY_CHANNEL_ID


async def test_rent_approve_watch_logs_destroy(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        fake = s.fake
        names = {c["name"] for c in fake.commands()}
        assert names == {"rent", "status", "logs", "destroy", "audit", "budget", "hosts"}
        choices = await fake.autocomplete("rent", {"gpu": "409"}, "gpu", user_id=REQUESTER)
        assert "RTX 4090" in [c["value"] for c in choices]

        approval_msg, approval_id = await request_rental(s)
        assert approval_msg.pings.roles == [APPROVER_ROLE_ID]  # the one intended ping
        approve = f"vastops:approval:{approval_id}:approve"

        # A member without the approver role is refused, privately; the request stays open.
        refused = await fake.click(approval_msg.id, approve, user_id=OUTSIDER)
        body = await refused.response()
        assert body["type"] == 4 and body["data"]["flags"] & 64 and "approver role" in body["data"]["content"]
        assert fake.message(approval_msg.id).custom_ids()

        # Two approvers at once: one rental, and the loser hears who won.
        a, b = await asyncio.gather(fake.click(approval_msg.id, approve, user_id=APPROVER),
                                    fake.click(approval_msg.id, approve, user_id=APPROVER2))
        await a.response()
        await b.response()
        loser_note = await fake.wait_for_message(NOTIFY_CHANNEL_ID,
                                                 lambda m: "Already approved by" in m.content)
        assert loser_note.ephemeral
        await fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == approval_msg.id
                                    and "Approved by" in m.text() and not m.custom_ids())
        # The instance exists once the rental's status message is posted.
        await fake.wait_for_message(NOTIFY_CHANNEL_ID,
                                    lambda m: "Rental #" in m.text() and "provisioning" in m.text())
        assert len(s.stage.sim.instances) == 1
        rental = (await s.store.list_rentals(limit=1))[0]
        assert rental.state == RentalState.PROVISIONING and rental.instance_id in s.stage.sim.instances

        # The watch: milestones edit ONE status message in place; findings are posts of their own.
        async def settled() -> bool:
            r = await s.store.get_rental(rental.id)
            return r is not None and r.state in (RentalState.READY, RentalState.DEGRADED)

        await s.drive(settled)
        rental = await s.store.get_rental(rental.id)
        assert rental is not None and rental.status_message_id is not None
        status = fake.message(rental.status_message_id)
        assert "ComfyUI ready" in status.text() and "11/11" in status.text()
        assert len(status.history) >= 2  # edited in place, not re-posted
        statuses = [m for m in s.notify if m.embeds and "Rental #" in (m.embeds[0].get("title") or "")]
        assert [m.id for m in statuses] == [status.id]
        assert any("WARN" in (m.embeds[0].get("title") or "") for m in s.notify if m.embeds)

        # Coalescing: a burst of refreshes costs at most one edit now and one when the interval passes.
        before = s.bot.notifier.edits
        for _ in range(5):
            await s.bot.notifier.refresh(rental.id)
        assert s.bot.notifier.edits <= before + 1
        await s.clock.advance(6.0)
        assert s.bot.notifier.edits <= before + 2

        # Autocomplete offers the requester's rental.
        offered = await fake.autocomplete("logs", {"rental": ""}, "rental", user_id=REQUESTER)
        assert [c["value"] for c in offered] == [str(rental.id)]

        # A log line with @everyone and a secret: posted without a ping and without the token.
        inst = s.stage.instances[rental.instance_id or 0]
        with inst.local(s.settings.provision_log_path).open("a") as fh:
            fh.write(f"ERROR: download failed: 401 Unauthorized for token {FAKE_HF_TOKEN} @everyone ```\n")
        await s.drive(lambda: always_true(), polls=1)
        finding = await fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "401 Unauthorized" in m.text())
        assert FAKE_HF_TOKEN not in finding.text() and "@everyone" not in finding.text()
        assert not finding.pings.everyone

        # /logs: the redacted tail; long output becomes a file.
        logs = await fake.slash("logs", {"rental": str(rental.id), "lines": 3}, user_id=REQUESTER)
        short = await original(fake, logs)
        assert "live over SSH" in short.content and "```" in short.content and not short.files
        assert FAKE_HF_TOKEN not in short.content
        logs = await fake.slash("logs", {"rental": str(rental.id), "lines": 5000}, user_id=REQUESTER)
        long = await original(fake, logs)
        (name, data), = long.files.items()
        assert name == f"rental-{rental.id}.log" and len(data) > 2000 and FAKE_HF_TOKEN.encode() not in data

        # /status lists it with its progress.
        st = await fake.slash("status", {}, user_id=REQUESTER)
        overview = await original(fake, st)
        assert f"Rental #{rental.id}" in overview.text() and "1** active rental" in overview.text()

        # /destroy: confirm privately, then the receipt in the channel once Vast confirms.
        d = await fake.slash("destroy", {"rental": str(rental.id), "reason": "done testing"},
                             user_id=REQUESTER)
        confirm = await original(fake, d, lambda m: bool(m.custom_ids()))
        button = next(c for c in confirm.custom_ids() if c.startswith("vastops:destroy:"))
        done = await fake.click(confirm.id, button, user_id=REQUESTER)
        assert (await done.response())["type"] == 7
        receipt = await fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Receipt" in m.text())
        assert "done testing" in receipt.text() and "comfyui ready" in receipt.text()
        await fake.wait_for_message(CHANNEL_ID, lambda m: m.id == confirm.id and "destroyed" in m.content)
        assert not s.stage.sim.instances
        assert_clean(s)


async def test_click_on_an_expired_request(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        approval_msg, approval_id = await request_rental(s)
        await s.clock.advance(601)  # past APPROVAL_TIMEOUT, before the engine's sweep
        late = await s.fake.click(approval_msg.id, f"vastops:approval:{approval_id}:approve",
                                  user_id=APPROVER)
        body = await late.response()
        assert body["type"] == 4 and "expired" in body["data"]["content"].lower()
        # The sweep marks it expired and the watcher edits the message: no buttons left.
        await s.bot.engine.tick()
        msg = await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == approval_msg.id
                                            and not m.custom_ids() and "Expired" in m.text())
        assert "nothing was rented" in msg.text()
        assert not s.stage.sim.instances
        assert_clean(s)


async def test_button_survives_a_restart(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        approval_msg, approval_id = await request_rental(s)
        await s.bot.close()
        # A new process: new bot, store and client on the same database file.
        store, vast, bot = await open_bot(s.fake, s.stage, s.clock, s.settings)
        try:
            async with start_bot(bot):
                click = await s.fake.click(approval_msg.id, f"vastops:approval:{approval_id}:approve",
                                           user_id=APPROVER)
                assert (await click.response())["type"] == 7
                await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == approval_msg.id
                                              and "Approved by ada" in m.text())
                assert len(s.stage.sim.instances) == 1
                rental = (await store.list_rentals(limit=1))[0]
                assert rental.instance_id in s.stage.sim.instances
        finally:
            await vast.aclose()
            await store.close()
        assert_clean(s)


@pytest.mark.parametrize("answer", ["click", "expire"])
async def test_teardown_proposal_buttons(fake_discord: FakeDiscord, tmp_path: Path, answer: str) -> None:
    # The preflight would refuse this script URL (see test_preflight_blocks_a_dead_script_url); without it
    # the engine's watch is the second line of defence.
    async with stack(fake_discord, tmp_path, scenario="script-404", with_preflight=False) as s:
        approval_msg, approval_id = await request_rental(s)
        click = await s.fake.click(approval_msg.id, f"vastops:approval:{approval_id}:approve",
                                   user_id=APPROVER)
        await click.response()
        await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Rental #" in m.text())

        def proposal() -> StoredMessage | None:
            return next((m for m in s.notify if "Teardown proposed" in m.text() and m.custom_ids()), None)

        async def proposed() -> bool:
            return proposal() is not None

        await s.drive(proposed, polls=10)
        msg = proposal()
        assert msg is not None and "script" in msg.text()
        labels = [c.get("label") for row in msg.components for c in row["components"]]
        assert labels == ["Destroy now", "Keep running"]
        assert s.stage.sim.instances  # proposed, not destroyed: a human decides
        pid = int(msg.custom_ids()[0].split(":")[2])
        if answer == "click":
            outsider = await s.fake.click(msg.id, f"vastops:approval:{pid}:approve", user_id=OUTSIDER)
            assert (await outsider.response())["type"] == 4
            assert s.stage.sim.instances
            yes = await s.fake.click(msg.id, f"vastops:approval:{pid}:approve", user_id=APPROVER)
            assert (await yes.response())["type"] == 7
            await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == msg.id
                                          and "Destroy approved by ada" in m.text() and not m.custom_ids())
        else:
            await s.clock.advance(301)
            await s.bot.engine.tick()
            await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: m.id == msg.id
                                          and "Nobody answered" in m.text() and not m.custom_ids())
        receipt = await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Receipt" in m.text())
        assert "script_missing" in receipt.text() or "script" in receipt.text()
        assert not s.stage.sim.instances
        assert_clean(s)


async def test_preflight_blocks_a_dead_script_url(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path, scenario="script-404") as s:
        inter = await s.fake.slash("rent", {}, user_id=REQUESTER)
        shown = await original(s.fake, inter)
        assert "❌" in shown.text() and not shown.custom_ids()  # the checks, and nothing to pick
        assert "Fix the failed preflight checks" in shown.text()
        assert_clean(s)


async def test_failing_command_gets_a_clear_private_answer(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        s.stage.sim.inject_fault("POST", "/api/v0/bundles/", "500")
        inter = await s.fake.slash("rent", {}, user_id=REQUESTER)
        shown = await original(s.fake, inter)
        assert shown.ephemeral and "Vast.ai did not answer as expected" in shown.content
        assert "ref `" in shown.content and "Traceback" not in shown.content
        assert_clean(s)


async def test_unknown_instance_is_listed_with_a_destroy_button(fake_discord: FakeDiscord,
                                                                tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        stray = s.stage.sim.seed_instance(label="someone-elses", age=600)
        inter = await s.fake.slash("status", {}, user_id=REQUESTER)
        shown = await original(s.fake, inter)
        assert f"Instance {stray}" in shown.text() and "not known to the bot" in shown.text()
        button = f"vastops:orphan:{stray}"
        assert button in shown.custom_ids()
        refused = await s.fake.click(shown.id, button, user_id=OUTSIDER)
        assert "approver" in (await refused.response())["data"]["content"]
        ask = await s.fake.click(shown.id, button, user_id=APPROVER)
        assert (await ask.response())["type"] == 4
        confirm = await s.fake.wait_for_message(CHANNEL_ID, lambda m: f"{button}:confirm" in m.custom_ids())
        yes = await s.fake.click(confirm.id, f"{button}:confirm", user_id=APPROVER)
        assert (await yes.response())["type"] == 7
        await s.fake.wait_for_message(CHANNEL_ID,
                                      lambda m: m.id == confirm.id and "Vast confirmed" in m.content)
        assert stray not in s.stage.sim.instances
        assert_clean(s)

"""/logs end to end: the real bot and discord.py against the fake Discord, a rental watched over a
real asyncssh server; who may read a rental's logs, and that nothing secret reaches the message."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

from bot.clock import FakeClock
from bot.db.models import RentalState
from bot.sim.scenarios import load_scenario
from bot.sim.stage import RehearsalStage
from tests.e2e.helpers import (
    APPROVER,
    APPROVER_ROLE_ID,
    FAKE_HF_TOKEN,
    GUILD_ID,
    OUTSIDER,
    REQUESTER,
    Stack,
    add_members,
    always_true,
    assert_clean,
    open_bot,
    original,
    request_rental,
    stack,
)
from tests.support.fakediscord import FakeDiscord, StoredMessage, start_bot
from tests.support.fakediscord.ids import NOTIFY_CHANNEL_ID

# Obviously fake key material: 64-character base64-alphabet lines.
KEY_BODY = [f"FAKEKEYLINE{i:02d}" + "NotARealKeyJustTestData" * 2 + "abcdefg" for i in range(30)]
KEY_BLOCK = ["-----BEGIN OPENSSH PRIVATE KEY-----", *KEY_BODY, "-----END OPENSSH PRIVATE KEY-----"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


async def _ready_rental(s: Stack) -> int:
    approval_msg, approval_id = await request_rental(s)
    click = await s.fake.click(approval_msg.id, f"vastops:approval:{approval_id}:approve", user_id=APPROVER)
    await click.response()
    await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Rental #" in m.text())
    rental = (await s.store.list_rentals(limit=1))[0]

    async def settled() -> bool:
        r = await s.store.get_rental(rental.id)
        return r is not None and r.state in (RentalState.READY, RentalState.DEGRADED)

    await s.drive(settled)
    return rental.id


async def _append_log(s: Stack, rental_id: int, lines: list[str]) -> None:
    rental = await s.store.get_rental(rental_id)
    assert rental is not None and rental.instance_id is not None
    inst = s.stage.instances[rental.instance_id]
    with inst.local(s.settings.provision_log_path).open("a") as fh:
        fh.write("".join(line + "\n" for line in lines))
    await s.drive(always_true, polls=1)  # the watcher reads it: /logs reads up to the watcher's offset


def _shown(msg: StoredMessage) -> str:
    return msg.content + "".join(data.decode("utf-8", "replace") for data in msg.files.values())


async def test_logs_window_inside_a_key_block_and_a_token_split_by_colour(fake_discord: FakeDiscord,
                                                                          tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        rental_id = await _ready_rental(s)
        split = FAKE_HF_TOKEN[:12] + "\x1b[1;31m" + FAKE_HF_TOKEN[12:] + "\x1b[0m"
        await _append_log(s, rental_id, [*KEY_BLOCK, f"[hf] logging in with {split} now"])
        # 5 lines x 256 bytes back from the watcher's offset starts the window inside the key body.
        inter = await s.fake.slash("logs", {"rental": str(rental_id), "lines": 5}, user_id=REQUESTER)
        shown = _shown(await original(s.fake, inter))
        assert "live over SSH" in shown
        for body in KEY_BODY:
            assert body[:16] not in shown
        assert "«redacted:private-key»" in shown
        assert "\x1b" not in shown
        plain = _ANSI.sub("", shown)
        assert FAKE_HF_TOKEN not in plain and FAKE_HF_TOKEN[:12] not in plain and FAKE_HF_TOKEN[12:] not in plain
        assert "logging in with «redacted:HF_TOKEN» now" in plain

        # A bigger window sees the BEGIN line: the whole block is one redacted run.
        inter = await s.fake.slash("logs", {"rental": str(rental_id), "lines": 200}, user_id=REQUESTER)
        shown = _shown(await original(s.fake, inter))
        assert not any(body[:16] in shown for body in KEY_BODY)
        assert "BEGIN OPENSSH" not in shown and "END OPENSSH" not in shown
        assert_clean(s)


async def test_logs_only_for_the_requester_and_approvers(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        rental_id = await _ready_rental(s)
        inter = await s.fake.slash("logs", {"rental": str(rental_id)}, user_id=OUTSIDER)
        refused = await original(s.fake, inter)
        assert refused.ephemeral and "Only the member who requested" in refused.content
        assert "```" not in refused.content and not refused.files
        assert "trycloudflare" not in _shown(refused)

        for user in (REQUESTER, APPROVER):
            inter = await s.fake.slash("logs", {"rental": str(rental_id), "lines": 20}, user_id=user)
            shown = await original(s.fake, inter)
            assert shown.ephemeral and "live over SSH" in shown.content
        assert_clean(s)


@contextlib.asynccontextmanager
async def _stack_without_ssh(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[Stack]:
    """The happy scenario with an sshd that never listens: the watcher reads the container log."""
    clock = FakeClock()
    scenario = dataclasses.replace(load_scenario("happy"), ssh_never=True)
    stage = RehearsalStage(scenario, clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start(
        discord_token="fake-token.not.real", discord_guild_id=GUILD_ID, notify_channel_id=NOTIFY_CHANNEL_ID,
        approver_role_id=APPROVER_ROLE_ID, teardown_policy="propose", hf_token=FAKE_HF_TOKEN,
        approval_timeout=600, self_approve_max_price=0.0, max_price_per_hour=2.0, proposal_timeout=300,
    )
    add_members(fake)
    store, vast, bot = await open_bot(fake, stage, clock, settings)
    try:
        async with start_bot(bot):
            yield Stack(fake, clock, stage, settings, store, vast, bot)
    finally:
        await vast.aclose()
        await store.close()
        await stage.stop()


async def test_logs_from_the_container_log_are_cleaned_and_redacted(fake_discord: FakeDiscord,
                                                                     tmp_path: Path) -> None:
    async with _stack_without_ssh(fake_discord, tmp_path) as s:
        approval_msg, approval_id = await request_rental(s)
        click = await s.fake.click(approval_msg.id, f"vastops:approval:{approval_id}:approve", user_id=APPROVER)
        await click.response()
        await s.fake.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "Rental #" in m.text())
        rental = (await s.store.list_rentals(limit=1))[0]
        split = FAKE_HF_TOKEN[:12] + "\x1b[1;31m" + FAKE_HF_TOKEN[12:] + "\x1b[0m"
        planted = False

        async def tail_stored() -> bool:
            nonlocal planted
            inst = s.stage.instances.get(rental.instance_id or 0)
            watch = s.bot.engine.watches.get(rental.id)
            if inst is not None and watch is not None and watch.memory.fallback_tail and not planted \
                    and "provisioning_complete" in watch.memory.milestones:
                # The container log's last 50 lines start inside a key block (planted once the run's
                # own output is over, so the next read's last 50 lines still hold it).
                inst.container_lines.extend([*KEY_BLOCK, f"[hf] logging in with {split} now"] + ["x"] * 20)
                planted = True
            return watch is not None and any("logging in" in line for line in watch.memory.fallback_tail)

        await s.drive(tail_stored, polls=60)
        watch = s.bot.engine.watches[rental.id]
        assert watch.session is None and watch.memory.fallback  # the container-log fallback is what is tested
        inter = await s.fake.slash("logs", {"rental": str(rental.id), "lines": 100}, user_id=REQUESTER)
        shown = _shown(await original(s.fake, inter))
        assert "container log via the Vast API" in shown
        assert not any(body[:16] in shown for body in KEY_BODY)
        assert "\x1b" not in shown
        plain = _ANSI.sub("", shown)
        assert FAKE_HF_TOKEN[:12] not in plain and FAKE_HF_TOKEN[12:] not in plain
        assert "logging in with «redacted:HF_TOKEN» now" in plain
        assert_clean(s)

"""The end-to-end stack: the real VastopsBot against the fake Discord, the rehearsal stage (Vast
simulator, an asyncssh server per instance) and a FakeClock; and the checks every e2e test shares."""

# ruff: noqa: ASYNC109
from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import VastopsBot, build_bot
from bot.clock import FakeClock
from bot.db.store import Store
from bot.provisioning.preflight import preflight
from bot.render import check_limits
from bot.settings import Settings
from bot.sim.scenarios import load_scenario
from bot.sim.stage import SIM_API_KEY, RehearsalStage
from bot.vast.client import NO_SPACING, VastClient
from tests.support.fakediscord import FakeDiscord, FakeInteraction, StoredMessage, start_bot, walk_components
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, CHANNEL_ID, GUILD_ID, NOTIFY_CHANNEL_ID

REQUESTER, APPROVER, APPROVER2, OUTSIDER = 3001, 3002, 3003, 3004
# What the make_fake_discord fixture yields: ``await make_fake_discord(**overrides)``.
MakeFake = Callable[..., Awaitable[FakeDiscord]]
FAKE_HF_TOKEN = "hf_" + "Zq9XvB3k" * 5
POLL = 15.0


def add_members(fake: FakeDiscord) -> None:
    fake.add_member(REQUESTER, "rita")
    fake.add_member(APPROVER, "ada", roles=[APPROVER_ROLE_ID])
    fake.add_member(APPROVER2, "bea", roles=[APPROVER_ROLE_ID])
    fake.add_member(OUTSIDER, "otto")


@dataclass
class Stack:
    fake: FakeDiscord
    clock: FakeClock
    stage: RehearsalStage
    settings: Settings
    store: Store
    vast: VastClient
    bot: VastopsBot

    @property
    def notify(self) -> list[StoredMessage]:
        return self.fake.messages_in(NOTIFY_CHANNEL_ID)

    async def drive(self, until: Callable[[], Any], polls: int = 40) -> None:
        """Tick the engine once per poll interval of simulated time until ``until()`` is truthy."""
        for _ in range(polls):
            await self.bot.engine.tick()
            if await until():
                break
            await self.clock.advance(POLL, step=1.0)
        await self.bot.engine.pump()  # delivery runs on its own task: let it catch up before looking
        await self.bot.notifier.flush()


async def open_bot(fake: FakeDiscord, stage: RehearsalStage, clock: FakeClock, settings: Settings, *,
                    with_preflight: bool = True) -> tuple[Store, VastClient, VastopsBot]:
    store = await Store.open(settings.database_path)
    vast = VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock, min_spacing=NO_SPACING)
    # The real preflight, asking the stage's fake gist host instead of api.github.com.
    check = functools.partial(preflight, gist_api_base=stage.gist.base_url) if with_preflight else None
    bot = await build_bot(settings, store=store, vast=vast, clock=clock, watch_loop=False, preflight=check)
    return store, vast, bot


@contextlib.asynccontextmanager
async def stack(fake: FakeDiscord, tmp_path: Path, scenario: str = "happy",
                with_preflight: bool = True, **overrides: Any) -> AsyncIterator[Stack]:
    clock = FakeClock()
    stage = RehearsalStage(load_scenario(scenario), clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start(
        discord_token="fake-token.not.real", discord_guild_id=GUILD_ID, notify_channel_id=NOTIFY_CHANNEL_ID,
        approver_role_id=APPROVER_ROLE_ID, teardown_policy="propose", hf_token=FAKE_HF_TOKEN,
        approval_timeout=600, self_approve_max_price=0.0, max_price_per_hour=2.0, proposal_timeout=300,
        # Most tests run commands back to back; the cooldown's own tests turn it on.
        **{"command_cooldown": 0, **overrides},
    )
    add_members(fake)
    store, vast, bot = await open_bot(fake, stage, clock, settings, with_preflight=with_preflight)
    try:
        async with start_bot(bot):
            yield Stack(fake, clock, stage, settings, store, vast, bot)
    finally:
        await vast.aclose()
        await store.close()
        await stage.stop()


def _by_interaction(fake: FakeDiscord, inter: FakeInteraction) -> Callable[[StoredMessage], bool]:
    return lambda m: m.interaction_id == inter.id and not m.loading


async def original(fake: FakeDiscord, inter: FakeInteraction,
                    check: Callable[[StoredMessage], bool] = lambda m: True,
                    timeout: float = 5.0) -> StoredMessage:
    return await fake.wait_for_message(inter.channel_id or CHANNEL_ID,
                                       lambda m: _by_interaction(fake, inter)(m) and check(m), timeout)


async def request_rental(s: Stack) -> tuple[StoredMessage, int]:
    """/rent as the requester, pick the first offer; returns the approval message and its approval id."""
    inter = await s.fake.slash("rent", {"num_gpus": 1}, user_id=REQUESTER)
    assert (await inter.response())["type"] == 5
    picker = await original(s.fake, inter, lambda m: bool(m.custom_ids()))
    assert picker.ephemeral and "offer(s), cheapest first" in picker.text()
    select = next(c for c in walk_components(picker.components) if c.get("type") == 3)
    pick = await s.fake.click(picker.id, select["custom_id"], user_id=REQUESTER,
                              values=[select["options"][0]["value"]])
    assert (await pick.response())["type"] == 7
    approval_msg = await s.fake.wait_for_message(
        NOTIFY_CHANNEL_ID, lambda m: any(c.startswith("vastops:approval:") for c in m.custom_ids()))
    approval_id = int(approval_msg.custom_ids()[0].split(":")[2])
    await s.fake.wait_for_message(CHANNEL_ID,
                                  lambda m: m.id == picker.id and "waiting for an approver" in m.text())
    return approval_msg, approval_id


def assert_clean(s: Stack) -> None:
    """No request was refused by the fake (size limits, bad payloads) and nothing ever pinged @everyone."""
    refused = [(r.method, r.path, r.status, r.response) for r in s.fake.requests if r.status >= 400]
    assert not refused, refused
    for inter in s.fake.interactions.values():
        assert not inter.rejected, inter.rejected
    for channel in (CHANNEL_ID, NOTIFY_CHANNEL_ID):
        for msg in s.fake.messages_in(channel):
            assert not msg.pings.everyone and not msg.pings.users
            assert set(msg.pings.roles) <= {APPROVER_ROLE_ID}
            assert not check_limits(msg.payload)


async def always_true() -> bool:
    return True

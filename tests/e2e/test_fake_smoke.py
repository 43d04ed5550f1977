"""Smoke tests of the fake Discord: an unmodified discord.py bot, defined here, run against it end to end."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.clock import FakeClock
from tests.support.fakediscord import BotCrashed, FakeDiscord, start_bot, validate_message
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, CHANNEL_ID, GUILD_ID, NOTIFY_CHANNEL_ID

REQUESTER = 2001
APPROVER = 2002
GPUS = ["A100", "H100", "L40S", "RTX 4090", "RTX 3090"]


class DemoApprove(discord.ui.DynamicItem[discord.ui.Button], template=r"demo:(?P<id>\d+)"):
    """An approve button whose custom_id carries the request id, so it survives restarts."""

    def __init__(self, request_id: int) -> None:
        super().__init__(discord.ui.Button(label="Approve", style=discord.ButtonStyle.success,
                                           custom_id=f"demo:{request_id}"))
        self.request_id = request_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> DemoApprove:
        return cls(int(match["id"]))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        roles = getattr(interaction.user, "roles", [])
        if any(r.id == APPROVER_ROLE_ID for r in roles):
            return True
        await interaction.response.send_message("You need the approver role.", ephemeral=True)
        return False

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.edit_message(
            content=f"Request {self.request_id} approved by <@{interaction.user.id}>", view=None)


class DemoBot(commands.Bot):
    """A minimal bot: guild commands synced in setup_hook, dynamic buttons registered there too."""

    def __init__(self, *, with_commands: bool = True) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default(),
                         allowed_mentions=discord.AllowedMentions.none())
        self.errors: list[BaseException] = []
        self.error_seen = asyncio.Event()
        self.late_gate = asyncio.Event()
        self.with_commands = with_commands
        self.tree.on_error = self._on_tree_error  # type: ignore[method-assign]

    async def _on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(getattr(error, "original", error))
        self.error_seen.set()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(DemoApprove)
        guild = discord.Object(GUILD_ID)
        if self.with_commands:
            for cmd in _demo_commands(self):
                self.tree.add_command(cmd, guild=guild)
        await self.tree.sync(guild=guild)


def _demo_commands(bot: DemoBot) -> list[app_commands.Command[Any, ..., Any] | app_commands.Group]:
    @app_commands.command(name="ping", description="Replies at once")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("pong @everyone")

    @app_commands.command(name="slow", description="Defers, then follows up")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("done after thinking")
        await interaction.followup.send("second followup", ephemeral=True)

    @app_commands.command(name="request", description="Posts an approval button")
    async def request(interaction: discord.Interaction, request_id: app_commands.Range[int, 1, 10_000]) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(DemoApprove(request_id))
        await interaction.response.send_message(f"Request {request_id} awaits approval", view=view)

    @app_commands.command(name="big", description="Sends a message over the limit")
    async def big(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("x" * 2001)

    @app_commands.command(name="late", description="Answers only when the test lets it")
    async def late(interaction: discord.Interaction) -> None:
        await bot.late_gate.wait()
        await interaction.response.send_message("too late")

    @app_commands.command(name="logs", description="Posts a file to the notify channel")
    async def logs(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        channel = bot.get_channel(NOTIFY_CHANNEL_ID)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("log tail attached", file=discord.File(io.BytesIO(b"line 1\nline 2\n"), "tail.txt"))
        await interaction.followup.send("posted")

    @app_commands.command(name="rent", description="Pick a GPU")
    async def rent(interaction: discord.Interaction, gpu: str, count: int = 1) -> None:
        await interaction.response.send_message(f"renting {count}x {gpu}")

    @rent.autocomplete("gpu")
    async def rent_gpu(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=g, value=g) for g in GPUS if current.lower() in g.lower()]

    group = app_commands.Group(name="demo", description="A group with a subcommand")

    @group.command(name="echo", description="Echoes text back")
    async def echo(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.send_message(f"echo: {text}", ephemeral=True)

    return [ping, slow, request, big, late, logs, rent, group]


async def test_sync_reaches_fake_with_command_names(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()) as bot:
        names = {c["name"] for c in fake_discord.commands(guild=True)}
        assert names == {"ping", "slow", "request", "big", "late", "logs", "rent", "demo"}
        put = next(r for r in fake_discord.requests if r.method == "PUT")
        assert put.path == f"/applications/{bot.application_id}/guilds/{GUILD_ID}/commands"
        rent = next(c for c in fake_discord.commands() if c["name"] == "rent")
        assert [o["name"] for o in rent["options"]] == ["gpu", "count"]
        assert rent["options"][0]["autocomplete"] is True
        # The guild, its channels and roles reached discord.py's cache through GUILD_CREATE.
        guild = bot.get_guild(GUILD_ID)
        assert guild is not None and guild.get_role(APPROVER_ROLE_ID) is not None
        assert isinstance(guild.get_channel(CHANNEL_ID), discord.TextChannel)
        assert not fake_discord.unhandled


async def test_slash_reply_carries_no_ping(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()):
        inter = await fake_discord.slash("ping", user_id=REQUESTER)
        body = await inter.response()
        assert body["type"] == 4 and body["data"]["content"] == "pong @everyone"
        assert inter.original is not None and inter.original.content == "pong @everyone"
        assert inter.original.allowed_mentions == {"parse": []}
        assert not inter.original.could_ping and not inter.original.may_ping_everyone
        assert fake_discord.messages_in(CHANNEL_ID) == [inter.original]


async def test_gateway_resume_after_drop(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()):
        await fake_discord.drop_gateway()
        await fake_discord.wait_for_gateway()
        assert fake_discord.gateway_events == ["IDENTIFY", "RESUME"]
        inter = await fake_discord.slash("ping", user_id=REQUESTER)
        assert (await inter.response())["type"] == 4


async def test_defer_then_followups(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()):
        inter = await fake_discord.slash("slow", user_id=REQUESTER)
        assert (await inter.response())["type"] == 5
        first, second = await inter.wait_followups(2)
        # The first followup after a thinking defer replaces the loading message.
        assert first is inter.original and first.content == "done after thinking" and not first.loading
        assert second.content == "second followup" and second.ephemeral


async def test_subcommand(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()):
        inter = await fake_discord.slash("demo echo", {"text": "hi"}, user_id=REQUESTER)
        body = await inter.response()
        assert body["data"]["content"] == "echo: hi" and inter.original is not None and inter.original.ephemeral


async def test_dynamic_button_checks_role_then_edits_message(fake_discord: FakeDiscord) -> None:
    fake_discord.add_member(APPROVER, "ada", roles=[APPROVER_ROLE_ID])
    async with start_bot(DemoBot()):
        inter = await fake_discord.slash("request", {"request_id": 42}, user_id=REQUESTER)
        await inter.response()
        assert inter.original is not None
        msg_id = inter.original.id
        assert inter.original.custom_ids() == ["demo:42"]

        refused = await fake_discord.click(msg_id, "demo:42", user_id=REQUESTER)
        body = await refused.response()
        assert body["type"] == 4 and body["data"]["flags"] == 64
        assert fake_discord.message(msg_id).custom_ids() == ["demo:42"]  # untouched

        approved = await fake_discord.click(msg_id, "demo:42", user_id=APPROVER)
        assert (await approved.response())["type"] == 7
        msg = fake_discord.message(msg_id)
        assert msg.content == f"Request 42 approved by <@{APPROVER}>" and msg.components == []
        assert not msg.could_ping


async def test_button_survives_restart(fake_discord: FakeDiscord) -> None:
    fake_discord.add_member(APPROVER, "ada", roles=[APPROVER_ROLE_ID])
    async with start_bot(DemoBot()):
        inter = await fake_discord.slash("request", {"request_id": 7}, user_id=REQUESTER)
        await inter.response()
        assert inter.original is not None
        msg_id = inter.original.id
    # A new process: nothing in memory but the dynamic item registered in setup_hook.
    async with start_bot(DemoBot(with_commands=False)):
        click = await fake_discord.click(msg_id, "demo:7", user_id=APPROVER)
        assert (await click.response())["type"] == 7
        assert fake_discord.message(msg_id).content.startswith("Request 7 approved")
    assert len(fake_discord.gateway_connects) == 2


async def test_oversize_message_rejected_with_50035(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()) as bot:
        inter = await fake_discord.slash("big", user_id=REQUESTER)
        rejected = await inter.wait_rejected()
        assert rejected.status == 400 and rejected.error_code == 50035
        assert "content" in rejected.response["errors"]
        await fake_discord.wait_for_request(lambda r: r.status == 400)
        await asyncio.wait_for(bot.error_seen.wait(), 5)
        error = bot.errors[0]
        assert isinstance(error, discord.HTTPException) and error.code == 50035
        assert inter.response_body is None and fake_discord.messages_in(CHANNEL_ID) == []


async def test_late_first_response_gets_10062(make_fake_discord: Any) -> None:
    clock = FakeClock()
    fake: FakeDiscord = await make_fake_discord(clock=clock, interaction_ack_deadline=3.0)
    async with start_bot(DemoBot()) as bot:
        inter = await fake.slash("late", user_id=REQUESTER)
        await clock.advance(3.5)
        bot.late_gate.set()
        rejected = await inter.wait_rejected()
        assert rejected.status == 404 and rejected.error_code == 10062
        await asyncio.wait_for(bot.error_seen.wait(), 5)
        assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062


async def test_followup_after_token_lifetime_is_refused(make_fake_discord: Any) -> None:
    clock = FakeClock()
    fake: FakeDiscord = await make_fake_discord(clock=clock)
    async with start_bot(DemoBot()) as bot:
        inter = await fake.slash("ping", user_id=REQUESTER)
        await inter.response()
        await clock.advance(901)
        webhook = discord.Webhook.partial(bot.application_id or 0, inter.token, client=bot)
        try:
            await webhook.send("too late")
        except discord.HTTPException as exc:
            assert exc.status == 401 and exc.code == 50027
        else:
            raise AssertionError("followup after the token lifetime was accepted")


async def test_autocomplete_round_trip(fake_discord: FakeDiscord) -> None:
    async with start_bot(DemoBot()):
        choices = await fake_discord.autocomplete("rent", {"gpu": "rtx"}, "gpu", user_id=REQUESTER)
        assert [c["value"] for c in choices] == ["RTX 4090", "RTX 3090"]
        inter = await fake_discord.slash("rent", {"gpu": "H100", "count": 2}, user_id=REQUESTER)
        assert (await inter.response())["data"]["content"] == "renting 2x H100"


async def test_channel_file_upload_retries_after_429(fake_discord: FakeDiscord) -> None:
    fake_discord.inject_429("POST", rf"/channels/{NOTIFY_CHANNEL_ID}/messages", times=1)
    async with start_bot(DemoBot()):
        inter = await fake_discord.slash("logs", user_id=REQUESTER)
        await inter.wait_followups(1)
        msg = await fake_discord.wait_for_message(NOTIFY_CHANNEL_ID)
        assert msg.files == {"tail.txt": b"line 1\nline 2\n"}
        posts = [r for r in fake_discord.requests if r.path == f"/channels/{NOTIFY_CHANNEL_ID}/messages"]
        assert [r.status for r in posts] == [429, 200]
        assert posts[1].json["allowed_mentions"] == {"parse": []}


async def test_parser_crash_surfaces_instead_of_timing_out(fake_discord: FakeDiscord) -> None:
    try:
        async with start_bot(DemoBot()):
            # A member without "flags" makes discord.py's Member parser raise KeyError in the gateway loop.
            user = {"id": "3003", "username": "x", "discriminator": "0", "avatar": None}
            await fake_discord.dispatch("GUILD_MEMBER_ADD", {"guild_id": str(GUILD_ID), "roles": [], "user": user})
            await asyncio.sleep(5)
    except BotCrashed as exc:
        assert isinstance(exc.__cause__, KeyError)
    else:
        raise AssertionError("the crash was not surfaced")


async def test_sync_with_oversize_description_fails_startup(fake_discord: FakeDiscord) -> None:
    class BadBot(DemoBot):
        async def setup_hook(self) -> None:
            @app_commands.command(name="wordy", description="d" * 101)  # discord.py does not check this locally
            async def wordy(interaction: discord.Interaction) -> None: ...

            self.tree.add_command(wordy, guild=discord.Object(GUILD_ID))
            await self.tree.sync(guild=discord.Object(GUILD_ID))

    try:
        async with start_bot(BadBot()):
            raise AssertionError("the bot became ready despite a rejected sync")
    except BotCrashed as exc:
        assert isinstance(exc.__cause__, discord.HTTPException) and exc.__cause__.code == 50035
    assert fake_discord.commands() == []


def _button(i: int, *, label: str = "b", custom_id: str | None = None) -> dict[str, Any]:
    return {"type": 2, "style": 1, "label": label, "custom_id": custom_id or f"c{i}"}


def _rows(n_rows: int, per_row: int) -> list[dict[str, Any]]:
    return [{"type": 1, "components": [_button(r * 10 + i) for i in range(per_row)]} for r in range(n_rows)]


LIMIT_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("content", {"content": "x" * 2000}, {"content": "x" * 2001}, "content"),
    ("embeds", {"embeds": [{"title": "t"}] * 10}, {"embeds": [{"title": "t"}] * 11}, "embeds"),
    ("title", {"embeds": [{"title": "x" * 256}]}, {"embeds": [{"title": "x" * 257}]}, "embeds.0.title"),
    ("description", {"embeds": [{"description": "x" * 4096}]}, {"embeds": [{"description": "x" * 4097}]},
     "embeds.0.description"),
    ("fields", {"embeds": [{"fields": [{"name": "n", "value": "v"}] * 25}]},
     {"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, "embeds.0.fields"),
    ("field name", {"embeds": [{"fields": [{"name": "x" * 256, "value": "v"}]}]},
     {"embeds": [{"fields": [{"name": "x" * 257, "value": "v"}]}]}, "embeds.0.fields.0.name"),
    ("field value", {"embeds": [{"fields": [{"name": "n", "value": "x" * 1024}]}]},
     {"embeds": [{"fields": [{"name": "n", "value": "x" * 1025}]}]}, "embeds.0.fields.0.value"),
    ("empty field value", {"embeds": [{"fields": [{"name": "n", "value": "v"}]}]},
     {"embeds": [{"fields": [{"name": "n", "value": ""}]}]}, "embeds.0.fields.0.value"),
    ("footer", {"embeds": [{"footer": {"text": "x" * 2048}}]}, {"embeds": [{"footer": {"text": "x" * 2049}}]},
     "embeds.0.footer.text"),
    ("author", {"embeds": [{"author": {"name": "x" * 256}}]}, {"embeds": [{"author": {"name": "x" * 257}}]},
     "embeds.0.author.name"),
    ("6000 total", {"embeds": [{"description": "x" * 4000}, {"description": "x" * 2000}]},
     {"embeds": [{"description": "x" * 4000}, {"description": "x" * 2001}]}, "embeds"),
    ("rows", {"components": _rows(5, 5)}, {"components": _rows(6, 1)}, "components"),
    ("buttons per row", {"components": _rows(1, 5)}, {"components": _rows(1, 6)}, "components.0.components"),
    ("custom_id", {"components": [{"type": 1, "components": [_button(0, custom_id="x" * 100)]}]},
     {"components": [{"type": 1, "components": [_button(0, custom_id="x" * 101)]}]},
     "components.0.components.0.custom_id"),
    ("label", {"components": [{"type": 1, "components": [_button(0, label="x" * 80)]}]},
     {"components": [{"type": 1, "components": [_button(0, label="x" * 81)]}]}, "components.0.components.0.label"),
    ("select options",
     {"components": [{"type": 1, "components": [{"type": 3, "custom_id": "s", "options": [
         {"label": f"o{i}", "value": f"{i}"} for i in range(25)]}]}]},
     {"components": [{"type": 1, "components": [{"type": 3, "custom_id": "s", "options": [
         {"label": f"o{i}", "value": f"{i}"} for i in range(26)]}]}]}, "components.0.components.0.options"),
]


def test_message_limits_at_and_over_the_boundary() -> None:
    for name, at_limit, over, path in LIMIT_CASES:
        assert validate_message(at_limit) == {}, name
        assert path in validate_message(over), name

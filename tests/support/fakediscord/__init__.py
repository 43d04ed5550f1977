"""A local fake Discord (REST + gateway on loopback) that the unmodified discord.py client runs against.

Usage (pytest, see tests/e2e/conftest.py for the ``fake_discord`` / ``make_fake_discord`` fixtures)::

    fake_discord.add_member(APPROVER, "ada", roles=[APPROVER_ROLE_ID])   # before the bot connects
    async with start_bot(MyBot(...)) as bot:                              # ready; re-raises a crash
        inter = await fake_discord.slash("rent", {"gpu": "H100"}, user_id=REQUESTER)
        body = await inter.response()                    # {"type": 4|5|..., "data": {...}}
        msg = inter.original                             # StoredMessage: content, embeds, components, files
        click = await fake_discord.click(msg.id, "approval:1:approve", user_id=APPROVER)
        assert (await click.response())["type"] == 7
        post = await fake_discord.wait_for_message(NOTIFY_CHANNEL_ID, lambda m: "receipt" in m.text())
        assert not post.could_ping and post.allowed_mentions is not None

Outside pytest (bench scripts): ``await fake.start()``, then ``with patched_discord(fake):`` around the bot run.
"""

from .model import FakeInteraction, RecordedRequest, StoredMessage, walk_components
from .runner import BotCrashed, patched_discord, start_bot
from .server import DiscordError, FakeDiscord
from .validate import Pings, mention_pings, validate_commands, validate_message

__all__ = [
    "BotCrashed",
    "DiscordError",
    "FakeDiscord",
    "FakeInteraction",
    "Pings",
    "RecordedRequest",
    "StoredMessage",
    "mention_pings",
    "patched_discord",
    "start_bot",
    "validate_commands",
    "validate_message",
    "walk_components",
]

"""A local fake Discord (REST + gateway on loopback) that the unmodified discord.py client runs against."""

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

"""Answering a Discord interaction whatever state it is in: the one path every reply takes."""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.render import Reply, truncate

log = logging.getLogger(__name__)


async def answer(interaction: discord.Interaction[Any], text: str | None = None, *,
                 reply: Reply | None = None, ephemeral: bool = True) -> None:
    """Tell the user something whatever state the interaction is in.

    Not answered yet: the initial response. Answered (or deferred): a followup while the
    15-minute token lives. Token dead: a plain message in the channel (visible to all, so the
    text must be fit for that; it mentions the user without pinging anyone else).
    """
    reply = reply or Reply(content=text)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(ephemeral=ephemeral, **reply.kwargs())
        elif not interaction.is_expired():
            await interaction.followup.send(ephemeral=ephemeral, **reply.kwargs())
        elif interaction.channel is not None and isinstance(interaction.channel, discord.abc.Messageable):
            content = f"{interaction.user.mention} {reply.content or ''}"
            await interaction.channel.send(
                **{**reply.kwargs(), "content": truncate(content, 2000)},
                allowed_mentions=discord.AllowedMentions(users=[interaction.user], everyone=False,
                                                         roles=False),
            )
    except discord.HTTPException:
        log.warning("could not answer interaction %s", interaction.id, exc_info=True)

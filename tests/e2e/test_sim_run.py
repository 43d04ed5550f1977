"""``VAST_BACKEND=sim python -m bot run``: the real bot entry point against the rehearsal stage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot import app
from bot.settings import load_settings
from tests.e2e.helpers import original
from tests.support.fakediscord import FakeDiscord
from tests.support.fakediscord.ids import APPROVER_ROLE_ID, GUILD_ID, NOTIFY_CHANNEL_ID


async def test_sim_backend_run_syncs_commands_and_rents_from_the_simulator(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    settings = load_settings(
        _env_file=None, vast_backend="sim", discord_token="fake-token.not.real", discord_guild_id=GUILD_ID,
        notify_channel_id=NOTIFY_CHANNEL_ID, approver_role_id=APPROVER_ROLE_ID,
        database_path=tmp_path / "db.sqlite",
    )
    fake_discord.add_member(42, "ada", [APPROVER_ROLE_ID])
    task = asyncio.create_task(app._run(settings))
    try:
        await fake_discord.wait_for_request(lambda r: r.method == "PUT" and r.path.endswith("/commands"),
                                            timeout=20)
        await fake_discord.wait_for_gateway()
        await asyncio.sleep(0.3)  # let READY / GUILD_CREATE reach the bot's cache
        names = {c["name"] for c in fake_discord.commands(guild=True)}
        assert {"rent", "status", "logs", "destroy"} <= names
        inter = await fake_discord.slash("rent", {"gpu": "RTX 4090"}, user_id=42, roles=[APPROVER_ROLE_ID])
        assert (await inter.response())["type"] == 5
        picker = await original(fake_discord, inter, lambda m: bool(m.custom_ids()))
        shown = picker.text()
        assert "4090" in shown and "offer(s), cheapest first" in shown
        assert "excluding CN, UA" in shown
        offers = [line for line in shown.splitlines() if "$" in line and "/h" in line]
        assert offers and not any(" CN " in o or " UA " in o or "China" in o for o in offers)
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

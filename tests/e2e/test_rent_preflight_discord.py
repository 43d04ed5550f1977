"""The manifest preflight as Discord shows it: /rent hides offers the manifest's torch cannot run, with
the reason counted, and the approval request carries the preflight's checklist within Discord's limits."""

from __future__ import annotations

from pathlib import Path

from bot.render import EMBED_FIELD_VALUE_LIMIT
from tests.e2e.helpers import REQUESTER, assert_clean, original, request_rental, stack
from tests.support.fakediscord import FakeDiscord


async def test_rent_hides_offers_whose_driver_cannot_run_the_image(fake_discord: FakeDiscord,
                                                                    tmp_path: Path) -> None:
    # cuda-incompatible: the image is built for CUDA 12.9, every simulated host runs 12.8 at most.
    async with stack(fake_discord, tmp_path, scenario="cuda-incompatible") as s:
        inter = await s.fake.slash("rent", {}, user_id=REQUESTER)
        shown = await original(s.fake, inter)
        assert "No offers match" in shown.text() and not shown.custom_ids()
        assert "offers hidden: CUDA 12.9 needs driver ≥ 575.51.03" in shown.text()
        assert not s.stage.sim.instances
        assert_clean(s)


async def test_the_approval_request_shows_the_checklist(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    async with stack(fake_discord, tmp_path) as s:
        approval_msg, _ = await request_rental(s)
        fields = {f["name"]: f["value"] for f in approval_msg.embeds[0].get("fields", [])}
        checklist = fields["Preflight"]
        assert len(checklist) <= EMBED_FIELD_VALUE_LIMIT
        lines = checklist.splitlines()
        assert any(line.startswith("✅") and "script download" in line for line in lines)
        assert any("GPU/CUDA" in line for line in lines) and any("disk" in line for line in lines)
        assert_clean(s)

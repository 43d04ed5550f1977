"""/rent's parts that need no Discord: the offer line and select option escape and cut what Vast sends,
and the picker's custom_id carries no user text and fits Discord's 100 characters at its extremes."""

from __future__ import annotations

import re

from bot.render import CUSTOM_ID_LIMIT, SELECT_OPTION_LIMIT, Render
from bot.vast.models import Offer
from cogs.rent import PICK_TEMPLATE, offer_line, offer_option, pick_custom_id


def _offer(**fields: object) -> Offer:
    base: dict[str, object] = {"id": 2**40, "gpu_name": "RTX 4090", "num_gpus": 8, "gpu_ram": 24000,
                               "dph_total": 0.4567, "geolocation": "Ontario, CA", "reliability": 0.99,
                               "inet_down": 800.0}
    return Offer.model_validate({**base, **fields})


def test_offer_line_escapes_and_cuts_what_vast_sends() -> None:
    line = offer_line(Render(), 1, _offer(gpu_name="RTX_4090 **@everyone** " + "x" * 300))
    assert "@everyone" not in line and "\\*\\*" in line and "RTX\\_4090" in line
    assert len(line) < 250


def test_offer_option_fits_and_its_value_is_the_offer_and_the_price() -> None:
    option = offer_option(Render(), 10, _offer(gpu_name="G" * 300, geolocation="Somewhere, " + "Y" * 300))
    assert len(option.label) <= SELECT_OPTION_LIMIT and len(option.description or "") <= SELECT_OPTION_LIMIT
    assert option.value == f"{2**40}:0.4567"


def test_pick_custom_id_fits_at_its_extremes() -> None:
    cid = pick_custom_id(2**64 - 1, 10**12 - 1, 99, 99999, 9_999_999)
    assert len(cid) <= CUSTOM_ID_LIMIT
    match = re.fullmatch(PICK_TEMPLATE, cid)
    assert match and int(match["user"]) == 2**64 - 1 and int(match["max"]) == 9_999_999


def test_status_title_escapes_and_cuts_the_gpu_name() -> None:
    from bot.db.models import Rental, RentalState
    from cogs.common import status_title

    rental = Rental(**{
        "id": 7, "label": "vastops-1", "requester_id": 1, "requester_name": "r", "offer_id": 1,
        "machine_id": None, "host_id": None, "gpu_name": "RTX_4090 **@everyone** " + "y" * 300, "num_gpus": 2,
        "quoted_dph": 0.4, "dph_total": None, "geolocation": None, "instance_id": None,
        "state": RentalState.READY, "state_reason": None, "request": {}, "created_at": 0.0, "updated_at": 0.0,
        "started_at": None, "ended_at": None, "comfyui_url": None, "tunnel_url": None,
        "status_channel_id": None, "status_message_id": None})
    title = status_title(rental)
    assert "RTX\\_4090" in title and "@everyone" not in title and len(title) < 120 and title.endswith("ready")

"""Models of Vast's untrusted JSON, the offer query body and country parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.vast import Instance, Offer, OfferQuery, User, country_of
from bot.vast.errors import (
    VastAuthError,
    VastNotFound,
    VastRateLimited,
    VastRequestRejected,
    VastResponseError,
    VastServerError,
    VastUnavailableOffer,
    error_from_response,
)


@pytest.mark.parametrize(
    ("geolocation", "code"),
    [
        ("Kyiv, UA", "UA"),
        ("CN", "CN"),
        ("Guangdong, China", "CN"),
        ("Beijing,  china ", "CN"),
        ("Kharkiv, Ukraine", "UA"),
        ("Hong Kong, HK", "HK"),
        ("HK", "HK"),
        ("Hong Kong", "HK"),
        ("Taipei, Taiwan", "TW"),
        ("California, United States", "US"),
        ("<ward>, <district>, Tokyo, JP", "JP"),
        ("Seoul, Korea, Republic of", "KR"),
        ("Prague, Czechia", "CZ"),
        ("London, United Kingdom", "GB"),
        ("ontario, ca", "CA"),
        (None, None),
        ("", None),
        ("Atlantis, Lost Kingdom", None),
        ("somewhere, 42", None),
    ],
)
def test_country_of(geolocation: str | None, code: str | None) -> None:
    assert country_of(geolocation) == code


@given(st.text(max_size=60))
def test_country_of_never_raises_and_returns_a_code_or_none(text: str) -> None:
    code = country_of(text)
    assert code is None or (len(code) == 2 and code.isupper())


def test_offer_is_tolerant_of_missing_and_wrong_fields() -> None:
    offer = Offer.model_validate({
        "id": 7, "gpu_ram": "24564", "dph_total": "n/a", "reliability": None, "reliability2": 0.97,
        "num_gpus": "1", "geolocation": None, "rented": "false", "brand_new_field": {"x": 1},
    })  # fmt: skip
    assert offer.vram_gb == pytest.approx(24.564)
    assert offer.dph_total is None and offer.reliability == 0.97 and offer.num_gpus == 1
    assert offer.country is None and offer.rented is False
    assert offer.model_extra == {"brand_new_field": {"x": 1}}
    with pytest.raises(ValidationError):
        Offer.model_validate({"gpu_name": "RTX 4090"})  # an offer without id cannot be rented


def test_instance_ssh_endpoint_prefers_direct_then_proxy() -> None:
    direct = Instance.model_validate({
        "id": 1, "public_ipaddr": "203.0.113.77\n", "ssh_host": "ssh7.vast.ai", "ssh_port": 24402,
        "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}]},
    })  # fmt: skip
    assert direct.ssh_endpoint() == ("203.0.113.77", 41022)
    assert direct.ssh_candidates() == [("203.0.113.77", 41022), ("ssh7.vast.ai", 24402), ("ssh7.vast.ai", 24403)]
    proxy = Instance.model_validate({"id": 2, "public_ipaddr": "203.0.113.77", "ssh_host": "ssh5.vast.ai",
                                     "ssh_port": "37754", "ports": None})  # fmt: skip
    assert proxy.ssh_endpoint() == ("ssh5.vast.ai", 37754)
    odd = Instance.model_validate({"id": 3, "public_ipaddr": "1.2.3.4", "ports": {"22/tcp": [22, 23]}})
    assert odd.ssh_endpoint() is None
    assert Instance.model_validate({"id": 4}).ssh_endpoint() is None


def test_instance_from_the_documented_v1_row() -> None:
    row = {
        "id": 30117755, "actual_status": None, "intended_status": "running", "cur_state": "running",
        "label": "dcbot:g123:u456:req-7f3a", "dph_total": 0.3966667, "start_date": 1786450120.51,
        "ssh_host": "ssh5.vast.ai", "ssh_port": 37754, "ports": None, "geolocation": "Ontario, CA",
        "extra_env": [["-p 8188:8188", "1"]], "uptime_mins": None,
    }  # fmt: skip
    instance = Instance.model_validate(row)
    assert instance.actual_status is None and not instance.is_running
    assert instance.country == "CA" and instance.model_extra["extra_env"] == [["-p 8188:8188", "1"]]


def test_user_money_left() -> None:
    assert User.model_validate({"id": 1, "credit": 25.0, "balance": -3}).money_left == 25.0
    assert User.model_validate({"balance": 4.5}).money_left == 4.5


def test_query_body_matches_the_documented_example() -> None:
    query = OfferQuery(
        gpu_names=["RTX 4090", "RTX 3090"], num_gpus=1, min_vram_gb=23, min_reliability=0.98,
        min_direct_ports=8, min_inet_down=500, disk_gb=80, min_cuda=12.4, max_dph=0.6,
        excluded_countries=["CN", "UA"], excluded_machines=[12345], limit=20,
    )  # fmt: skip
    assert query.to_api_body() == {
        "verified": {"eq": True}, "external": {"eq": False},
        "rentable": {"eq": True}, "rented": {"eq": False},
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]}, "num_gpus": {"eq": 1},
        "gpu_ram": {"gte": 23000}, "reliability": {"gte": 0.98},
        "direct_port_count": {"gte": 8}, "inet_down": {"gte": 500},
        "disk_space": {"gte": 80}, "cuda_max_good": {"gte": 12.4}, "dph_total": {"lte": 0.6},
        "geolocation": {"notin": ["CN", "UA"]},
        "machine_id": {"notin": [12345]},
        "order": [["dph_total", "asc"]], "type": "on-demand",
        "allocated_storage": 80, "limit": 20,
    }  # fmt: skip


def test_query_defaults_exclude_china_and_ukraine_and_refuse_unknown_countries() -> None:
    assert OfferQuery().excluded_countries == ["CN", "UA"]
    assert OfferQuery(excluded_countries=["Viet Nam", "vn", " "]).excluded_countries == ["VN"]
    with pytest.raises(ValidationError, match="unknown country"):
        OfferQuery(excluded_countries=["Atlantis"])


def test_query_rejects_what_the_server_let_through() -> None:
    query = OfferQuery(max_dph=0.5, min_vram_gb=24, excluded_machines=[9])
    good = {"id": 1, "geolocation": "Texas, US", "dph_total": 0.4, "gpu_ram": 24564, "num_gpus": 1,
            "verification": "verified", "machine_id": 1}  # fmt: skip
    assert query.rejects(Offer.model_validate(good)) is None
    for change, reason in [
        ({"geolocation": "Guangdong, China"}, "country CN"),
        ({"geolocation": None}, "no recognisable country"),
        ({"dph_total": 0.51}, "over"),
        ({"gpu_ram": 12000}, "VRAM"),
        ({"machine_id": 9}, "machine 9"),
        ({"verification": "deverified"}, "verification"),
    ]:
        assert reason in (query.rejects(Offer.model_validate({**good, **change})) or "")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, '{"success": false, "error": "auth_error", "msg": "Invalid user key"}', VastAuthError),
        (403, '{"msg": "This action requires login."}', VastAuthError),
        (401, "", VastAuthError),
        (429, "API requests too frequent endpoint threshold=1.0", VastRateLimited),
        (429, '{"detail": "API requests too frequent"}', VastRateLimited),
        (404, '{"success": false, "error": "invalid_args", "msg": "error 404/3603: no_such_ask x"}',
         VastUnavailableOffer),
        (410, '{"success": false, "error": "no_such_ask"}', VastUnavailableOffer),
        (404, '{"success": false, "error": "no_such_instance", "msg": "gone"}', VastNotFound),
        (503, "<html>oops</html>", VastServerError),
        (400, '{"success": false, "error": "label_too_long", "msg": "too long"}', VastRequestRejected),
        (200, '{"success": false, "error": "weird_new_code", "msg": "?"}', VastResponseError),
    ],
)  # fmt: skip
def test_error_mapping(status: int, body: str, kind: type) -> None:
    err = error_from_response(status, body, endpoint="GET /x/")
    assert type(err) is kind
    assert str(err).startswith("Vast GET /x/:")

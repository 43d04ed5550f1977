"""Links to a rental's ComfyUI come from Vast's view of the instance or a quick tunnel's shape, never free text."""

from __future__ import annotations

from typing import Any

import pytest

from bot.vast.models import Instance
from bot.watch.links import comfyui_link, displayable, tunnel_link


def _instance(**fields: Any) -> Instance:
    return Instance.model_validate({"id": 7, "actual_status": "running", **fields})


def _ports(port: str = "40123") -> dict[str, Any]:
    return {"8188/tcp": [{"HostIp": "0.0.0.0", "HostPort": port}], "22/tcp": [{"HostIp": "0.0.0.0",
                                                                             "HostPort": "40022"}]}


def test_comfyui_link_is_the_public_ip_and_the_mapped_port() -> None:
    assert comfyui_link(_instance(public_ipaddr="203.0.113.7", ports=_ports())) == "http://203.0.113.7:40123"
    assert comfyui_link(_instance(public_ipaddr=" 2001:db8::5 ", ports=_ports()), scheme="https") == \
        "https://[2001:db8::5]:40123"


@pytest.mark.parametrize("fields", [
    {"public_ipaddr": "203.0.113.7"},  # no port mapping: proxy-only, or not running yet
    {"public_ipaddr": "203.0.113.7", "ports": {"22/tcp": [{"HostPort": "40022"}]}},
    {"public_ipaddr": "203.0.113.7", "ports": _ports("0")},
    {"public_ipaddr": "vast-ai-login.example.net", "ports": _ports()},  # a name, not an address
    {"public_ipaddr": "0.0.0.0", "ports": _ports()},
    {"public_ipaddr": None, "ports": _ports()},
])
def test_no_comfyui_link_without_an_address_and_a_mapping(fields: dict[str, Any]) -> None:
    assert comfyui_link(_instance(**fields)) is None


def test_comfyui_link_refuses_other_schemes() -> None:
    with pytest.raises(ValueError):
        comfyui_link(_instance(public_ipaddr="203.0.113.7", ports=_ports()), scheme="javascript")


@pytest.mark.parametrize("url, expected", [
    ("https://able-baker-charlie.trycloudflare.com", "https://able-baker-charlie.trycloudflare.com"),
    ("https://Able-Baker.trycloudflare.com/some/path?token=x#f", "https://able-baker.trycloudflare.com"),
    ("https://able-baker.trycloudflare.com:443/", "https://able-baker.trycloudflare.com"),
    ("http://able-baker.trycloudflare.com", None),  # cloudflared hands out https only
    ("https://vast-ai-login.example.net:8188", None),
    ("https://able-baker.trycloudflare.com.example.net", None),
    ("https://example.net/able-baker.trycloudflare.com", None),
    ("https://x.able-baker.trycloudflare.com", None),  # only directly under trycloudflare.com
    ("https://trycloudflare.com", None),
    ("https://single.trycloudflare.com", None),
    ("https://user@able-baker.trycloudflare.com", None),
    ("https://able-baker.trycloudflare.com:8443", None),
    ("https://able-baker.trycloudflare.com:99999", None),
    ("https://able_baker.trycloudflare.com", None),
    ("", None),
    (None, None),
])
def test_tunnel_link_accepts_only_the_quick_tunnel_shape(url: str | None, expected: str | None) -> None:
    assert tunnel_link(url) == expected


@pytest.mark.parametrize("url, expected", [
    ("http://203.0.113.7:40123", "http://203.0.113.7:40123"),
    ("https://[2001:db8::5]:40123/", "https://[2001:db8::5]:40123/"),
    ("https://able-baker.trycloudflare.com/", "https://able-baker.trycloudflare.com"),
    ("https://vast-ai-login.example.net:8188", None),  # the host a log line named
    ("http://203.0.113.7", None),  # an address without its mapped port is not what Vast gave
    ("http://203.0.113.7:40123/?next=https://evil.example", None),
    ("http://0.0.0.0:8188", None),
    ("javascript://203.0.113.7:1/", None),
    ("http://user:pw@203.0.113.7:40123", None),
    ("http://203.0.113.7:40123/a b", None),
    ("x" * 400, None),
])
def test_displayable_shows_only_trusted_shapes(url: str, expected: str | None) -> None:
    assert displayable(url) == expected

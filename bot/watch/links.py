"""The links to a rental's ComfyUI: built from what Vast says about the instance, never from free text.

A log line is written by whatever runs on the rented machine, so a host it names could be anyone's
(a line once produced ``https://vast-ai-login.example.net:8188``). The only trusted sources are:

* the instance's public IP address and the host port Vast mapped ComfyUI's container port to
  (``comfyui_link``), and
* a Cloudflare quick-tunnel URL whose host has the shape cloudflared gives out
  (``word-word-word.trycloudflare.com``, ``tunnel_link``).

``displayable`` applies the same rules to a URL already stored, so nothing else is ever shown.
Pure functions: no I/O, no Discord.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from bot.vast.models import Instance

COMFYUI_PORT = 8188  # the container port ComfyUI is published on (see provisioning's PUBLISHED_PORTS)
TUNNEL_SUFFIX = ".trycloudflare.com"
# cloudflared quick tunnels: lower-case words joined by hyphens, directly under trycloudflare.com.
_TUNNEL_HOST = re.compile(r"[a-z0-9]{1,63}(?:-[a-z0-9]{1,63}){1,15}\.trycloudflare\.com")
_SAFE_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]*){0,16}")


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address a browser can reach, or None (hostnames are not accepted)."""
    if not isinstance(text, str):
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if address.is_unspecified or address.is_multicast or address.is_reserved or address.is_link_local:
        return None
    return address


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def comfyui_link(instance: Instance, *, port: int = COMFYUI_PORT, scheme: str = "http") -> str | None:
    """``scheme://<public IP>:<mapped host port>`` for ComfyUI's container ``port``, or None when Vast
    gives no public address or no mapping for it (proxy-only instance, not running yet)."""
    if scheme not in ("http", "https"):
        raise ValueError("scheme must be http or https")
    address = _ip(instance.public_ipaddr)
    host_port = instance.host_port(port)
    if address is None or host_port is None:
        return None
    return f"{scheme}://{_host(address)}:{host_port}"


def tunnel_link(url: str | None) -> str | None:
    """The quick-tunnel URL reduced to ``https://<host>`` if its host has cloudflared's shape, else None.

    Only https, no user info, no port, no path, query or fragment: the host is all that is trusted.
    """
    if not isinstance(url, str) or len(url) > 300:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        return None
    if port not in (None, 443) or not _TUNNEL_HOST.fullmatch(host):
        return None
    return f"https://{host}"


def displayable(url: str | None) -> str | None:
    """A stored link fit to show: a tunnel host of the expected shape, or ``http(s)://<IP>:<port>``
    (what ``comfyui_link`` builds, with an optional plain path). Anything naming a host by name is not."""
    if not isinstance(url, str) or len(url) > 300:
        return None
    tunnel = tunnel_link(url)
    if tunnel is not None:
        return tunnel
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.username is not None or parts.password is not None:
        return None
    if parts.query or parts.fragment or not _SAFE_PATH.fullmatch(parts.path or ""):
        return None
    address = _ip(parts.hostname)
    if address is None or port is None or not 0 < port < 65536:
        return None
    return f"{parts.scheme}://{_host(address)}:{port}{parts.path}"


__all__ = ["COMFYUI_PORT", "comfyui_link", "displayable", "tunnel_link"]

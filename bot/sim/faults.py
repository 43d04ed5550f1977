"""The simulator's misbehaviour on demand: injected faults and Vast's per-endpoint rate limits.

A fault answers a matching request with what Vast (or the proxies in front of it) sends when
things go wrong: 429 in its three body shapes without Retry-After, 5xx pages, a request that
never answers, and a create whose answer is lost after the work was done. Rate limits answer a
caller faster than an endpoint's threshold with Vast's 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

FaultKind = Literal[
    "429_text", "429_json", "429_destroy", "500", "502", "503", "504", "timeout", "drop_after_apply"
]
FAULT_KINDS: tuple[str, ...] = FaultKind.__args__  # type: ignore[attr-defined]

# Vast's published per-endpoint thresholds (its API docs list them per endpoint), for
# ``VastSim(rate_limits=...)``.
PUBLISHED_RATE_LIMITS: dict[str, float] = {
    "PUT /api/v0/asks/{id}/": 4.5,
    "GET /api/v1/instances/": 1.0,
    "GET /api/v0/instances/{id}/": 2.0,
    "DELETE /api/v0/instances/{id}/": 3.0,
    "POST /api/v0/bundles/": 6.0,  # "10 requests/minute/IP"
}

_GATEWAY_REASONS = {"502": "Bad Gateway", "503": "Service Unavailable", "504": "Gateway Time-out"}


@dataclass
class Fault:
    """``remaining`` more requests matching ``method`` and ``pattern`` get ``kind``."""

    method: str
    pattern: str
    kind: str
    remaining: int


class FaultPlan:
    """The faults still to be served, first injected first matched."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, method: str, pattern: str, kind: FaultKind, times: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        self._faults.append(Fault(method.upper(), pattern, kind, times))

    def clear(self) -> None:
        self._faults.clear()

    def take(self, method: str, path: str, template: str) -> Fault | None:
        """The fault this request gets (its count used up by one), or None to answer normally.

        A pattern matches the route template exactly or the path as a glob.
        """
        for fault in self._faults:
            if fault.remaining <= 0 or fault.method not in ("*", method):
                continue
            if fault.pattern == template or fnmatch.fnmatchcase(path, fault.pattern):
                fault.remaining -= 1
                return fault
        return None


def canned_response(kind: str) -> web.Response | None:
    """The answer a fault sends instead of the route's; None for the kinds that send nothing
    (``timeout``, ``drop_after_apply``)."""
    if kind == "429_text":
        return web.Response(status=429, text="API requests too frequent endpoint threshold=1.0")
    if kind == "429_json":
        return web.json_response({"detail": "API requests too frequent endpoint threshold=1.0"}, status=429)
    if kind == "429_destroy":
        body = {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"}
        return web.json_response(body, status=429)
    if kind == "500":
        return web.json_response({"success": False, "error": "server_error", "msg": "Internal error"}, status=500)
    if kind in _GATEWAY_REASONS:
        page = f"<html><body><h1>{kind} {_GATEWAY_REASONS[kind]}</h1></body></html>"
        return web.Response(status=int(kind), text=page, content_type="text/html")
    return None


class RateLimiter:
    """Vast's per-endpoint minimum spacing: a call sooner than the threshold after the last
    allowed one gets a 429 (and does not count as a call)."""

    def __init__(self, thresholds: dict[str, float] | None = None) -> None:
        # Endpoint template ("GET /api/v1/instances/") -> minimum seconds between calls.
        self.thresholds: dict[str, float] = dict(thresholds or {})
        self._last_call: dict[str, float] = {}

    def refuse(self, endpoint: str, t: float) -> web.Response | None:
        """The 429 for a call to ``endpoint`` at clock time ``t``, or None when it may proceed."""
        threshold = self.thresholds.get(endpoint)
        if not threshold:
            return None
        last = self._last_call.get(endpoint)
        if last is not None and t - last < threshold:
            return web.Response(status=429, text=f"API requests too frequent endpoint threshold={threshold}")
        self._last_call[endpoint] = t
        return None


async def hang(stopping: asyncio.Event, seconds: float) -> None:
    """Wait until the simulator stops or ``seconds`` pass, answering nothing."""
    # Real time on purpose: the client's socket timeout is what this exercises.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


def dropped(request: web.Request) -> BaseException:
    """Close the connection without an answer; raise what this returns to end the handler."""
    # Closing the socket without a response is what a lost answer looks like to the client;
    # the request entry keeps status None to show nothing was sent back.
    if request.transport is not None:
        request.transport.abort()
    return asyncio.CancelledError()

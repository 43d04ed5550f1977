"""What the fake Discord stores and hands to tests: recorded requests, messages, injected interactions."""

# Test helpers take a `timeout=` argument on purpose: it reads best at the call site.
# ruff: noqa: ASYNC109

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .validate import EPHEMERAL, LOADING, Pings

Waiter = Callable[[Callable[[], bool], float, str], Awaitable[None]]


@dataclass
class RecordedRequest:
    """One REST call the bot made, with what the fake answered."""

    method: str
    path: str  # relative to /api/v10, e.g. "/channels/1/messages"
    json: Any
    files: dict[str, bytes]  # uploaded filename -> bytes
    ts: float  # the fake's clock
    query: dict[str, str] = field(default_factory=dict)
    status: int = 0
    response: Any = None

    @property
    def error_code(self) -> int | None:
        return self.response.get("code") if isinstance(self.response, dict) else None


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component, depth first, through action rows, sections and containers."""
    for comp in components:
        yield comp
        yield from walk_components(comp.get("components") or [])
        if comp.get("accessory"):
            yield from walk_components([comp["accessory"]])


@dataclass(eq=False)
class StoredMessage:
    """A message as Discord would return it (``payload``), plus what only the fake knows."""

    payload: dict[str, Any]
    blobs: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # attachment id -> (filename, bytes)
    allowed_mentions: dict[str, Any] | None = None  # as sent at creation; None = field absent
    pings: Pings = field(default_factory=Pings)
    interaction_id: int | None = None
    deleted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # payloads before each edit

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def channel_id(self) -> int:
        return int(self.payload["channel_id"])

    @property
    def content(self) -> str:
        return self.payload.get("content") or ""

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.payload.get("embeds") or []

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.payload.get("components") or []

    @property
    def attachments(self) -> list[dict[str, Any]]:
        return self.payload.get("attachments") or []

    @property
    def flags(self) -> int:
        return int(self.payload.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    @property
    def files(self) -> dict[str, bytes]:
        """Current attachments as filename -> bytes."""
        live = {int(a["id"]) for a in self.attachments}
        return {name: data for aid, (name, data) in self.blobs.items() if aid in live}

    @property
    def could_ping(self) -> bool:
        """Whether the content as sent notified anyone (its mentions filtered through allowed_mentions)."""
        return self.pings.any

    @property
    def may_ping_everyone(self) -> bool:
        """Policy, whatever the content: allowed_mentions absent (Discord parses all) or parse has "everyone"."""
        return self.allowed_mentions is None or "everyone" in (self.allowed_mentions.get("parse") or [])

    @property
    def may_ping_roles(self) -> bool:
        am = self.allowed_mentions
        return am is None or "roles" in (am.get("parse") or []) or bool(am.get("roles"))

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def text(self) -> str:
        """Content plus every embed's text, for loose assertions."""
        parts = [self.content]
        for e in self.embeds:
            parts += [e.get("title") or "", e.get("description") or ""]
            parts += [f"{f.get('name')}\n{f.get('value')}" for f in e.get("fields") or []]
            parts.append((e.get("footer") or {}).get("text") or "")
        parts += [c.get("content") or "" for c in walk_components(self.components) if c.get("type") == 10]
        return "\n".join(p for p in parts if p)


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the test injected, and everything the bot did with its token."""

    id: int
    token: str
    type: int  # 2 command, 3 component, 4 autocomplete, 5 modal submit
    payload: dict[str, Any]
    created_at: float  # the fake's clock
    channel_id: int | None
    message_id: int | None  # the component's message, for clicks
    _wait: Waiter = field(repr=False)
    dispatched_perf: float = field(default_factory=time.perf_counter)
    responded_perf: float | None = None
    response_body: dict[str, Any] | None = None  # the accepted initial callback {type, data}
    rejected: list[RecordedRequest] = field(default_factory=list)  # callbacks the fake refused
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None  # autocomplete result
    modal: dict[str, Any] | None = None

    @property
    def response_type(self) -> int | None:
        return None if self.response_body is None else int(self.response_body["type"])

    @property
    def ack_latency(self) -> float | None:
        """Seconds (perf counter) from dispatch to the accepted initial response, for bench scripts."""
        return None if self.responded_perf is None else self.responded_perf - self.dispatched_perf

    async def response(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the accepted initial callback and return its body ``{"type": ..., "data": ...}``."""
        await self._wait(lambda: self.response_body is not None, timeout, f"initial response to interaction {self.id}")
        assert self.response_body is not None
        return self.response_body

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[StoredMessage]:
        await self._wait(lambda: len(self.followups) >= count, timeout, f"{count} followup(s) to interaction {self.id}")
        return self.followups

    async def wait_rejected(self, timeout: float = 5.0) -> RecordedRequest:
        """Wait for a callback the fake refused (late, duplicate, invalid) and return it."""
        await self._wait(lambda: bool(self.rejected), timeout, f"a rejected callback for interaction {self.id}")
        return self.rejected[0]

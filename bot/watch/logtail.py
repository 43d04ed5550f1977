"""The redacted tail of a rental's log, as ``/logs`` shows it, from whichever source is best.

Sources, best first: the live provisioning log over SSH (the last bytes up to what the watcher has
read); the container log the watcher last fetched through the Vast API; otherwise the bot's own
recorded events (milestones, findings, state changes), which exist for every rental.

Log bytes go through the same pipeline as the watcher's: ``LineAssembler`` (ANSI escapes, carriage
returns, invalid UTF-8, over-long lines) and then redaction that carries the private-key state from
line to line over the whole window, so a window that starts inside a key block hides the rest of
the block. Assembly and redaction of a big window run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.watch.classifier import Classifier
from bot.watch.events import EV_DECISION, EV_FINDING, EV_INFO, EV_MILESTONE, EV_RECEIPT, EV_STATE
from bot.watch.lines import LineAssembler
from bot.watch.model import Severity
from bot.watch.redact import Redactor

log = logging.getLogger(__name__)

BYTES_PER_LINE = 256  # how many bytes to read per requested line (most log lines are shorter)
MAX_TAIL_BYTES = 2 << 20
READ_SLACK = 64 << 10  # read a little past the watcher's offset: the log keeps growing
SSH_READ_TIMEOUT = 15.0
# Below this many bytes the work is quicker than a hop to a worker thread.
THREAD_THRESHOLD = 64 << 10
EVENT_KINDS = (EV_MILESTONE, EV_FINDING, EV_STATE, EV_INFO, EV_DECISION, EV_RECEIPT)

SOURCE_SSH = "live over SSH: {path}"
SOURCE_CONTAINER = "container log via the Vast API, as last polled (SSH unavailable)"
SOURCE_EVENTS = "the bot's recorded events (no live SSH session)"


class LogReader(Protocol):
    """What ``/logs`` needs from a live SSH session (``bot.watch.ssh.SshLogSession``)."""

    async def read_new(self, path: str, offset: int, *, max_bytes: int = ...) -> Any: ...


class EventStore(Protocol):
    """What ``/logs`` needs from the store when no live log is at hand."""

    async def get_watch_state(self, rental_id: int) -> Any: ...

    async def events_for(self, rental_id: int, after_seq: int = 0, kinds: Iterable[str] | None = None, *,
                         limit: int | None = None) -> Sequence[Any]: ...


@dataclass(frozen=True)
class WatchView:
    """What the watcher currently holds for a rental (None fields: nothing of that kind)."""

    reader: LogReader | None = None
    path: str = ""
    end: int = 0  # bytes of ``path`` the watcher has read
    fallback_tail: list[str] | None = None  # the container log's last lines, as last polled


@dataclass(frozen=True)
class LogTail:
    lines: list[str]  # redacted, at most the number asked for
    source: str  # where they came from, for the header


def lines_from_bytes(data: bytes, redactor: Redactor, *, mid_file: bool) -> list[str]:
    """A window of log bytes as clean, redacted lines (the watcher's pipeline).

    ``mid_file``: the window starts after the start of the file, so its first line is probably
    cut mid-way (dropped) and it may start inside a private-key block.
    """
    assembler = LineAssembler()
    if mid_file:
        nl = data.find(b"\n")
        data = data[nl + 1:] if nl >= 0 else b""
    lines = assembler.feed(data) + assembler.flush()
    return redactor.redact_lines(lines, mid_stream=mid_file)


def lines_from_stored(lines: Iterable[str], redactor: Redactor) -> list[str]:
    """Lines kept from a log (the container-log fallback's tail) as clean, redacted lines.

    The same pipeline as ``lines_from_bytes``; the lines are the end of a longer log, so they may
    start inside a key block. Use it before storing such lines too: nothing unredacted is stored.
    """
    text = "\n".join(lines)
    if not text:
        return []
    assembler = LineAssembler()
    out = assembler.feed(text.encode("utf-8", "replace") + b"\n") + assembler.flush()
    return redactor.redact_lines(out, mid_stream=True)


def event_line(ts: float, kind: str, payload: dict[str, Any]) -> str:
    """One recorded event as a log-like line."""
    when = datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")
    p = payload
    if kind == EV_MILESTONE:
        text = f"milestone {p.get('name')}" + (f" (log line {p['line']})" if p.get("line") else "")
    elif kind == EV_FINDING:
        text = f"{str(p.get('severity', '')).upper()} {p.get('category')}: {p.get('text')}"
    elif kind == EV_STATE:
        text = f"state {p.get('from')} -> {p.get('to')}: {p.get('reason') or ''}"
    elif kind == EV_DECISION:
        text = f"decision {p.get('action')}: {p.get('reason')}"
    elif kind == EV_RECEIPT:
        text = f"destroyed after {p.get('duration_s')}s, ${p.get('cost_usd')}: {p.get('reason')}"
    else:
        text = str(p.get("text") or p)
    return f"{when} {text}"


def only_problems(lines: Iterable[str], classifier: Classifier) -> list[str]:
    """The lines the classifier flags as warnings or worse, and unrecognised lines with error words
    (counted at info by the watcher, never posted, but they belong in this view); noise excluded."""
    keep = []
    for line in lines:
        found = classifier.classify_line(line)
        if found is not None and not found.noise and (found.unknown or found.severity.rank >= Severity.WARN.rank):
            keep.append(line)
    return keep


async def read_live(view: WatchView, lines: int) -> tuple[bytes, bool] | None:
    """The last bytes of the live log, up to a little past what the watcher has read.

    Returns (bytes, starts mid-file), or None when there is no session or the read fails.
    """
    if view.reader is None:
        return None
    want = min(lines * BYTES_PER_LINE, MAX_TAIL_BYTES)
    start = max(0, view.end - want)
    try:
        async with asyncio.timeout(SSH_READ_TIMEOUT):
            chunk = await view.reader.read_new(view.path, start, max_bytes=want + READ_SLACK)
    except Exception as exc:  # SSH trouble: fall back to what the bot already holds
        log.info("/logs: SSH read of %s failed: %r", view.path, exc)
        return None
    if chunk.missing:
        return None
    return bytes(chunk.data), start > 0 and not chunk.rotated


async def _off_loop(size: int, fn: Any, *args: Any, **kwargs: Any) -> Any:
    if size < THREAD_THRESHOLD:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def log_tail(view: WatchView, store: EventStore, rental_id: int, *, redactor: Redactor,
                   classifier: Classifier | None = None, lines: int = 50, errors_only: bool = False) -> LogTail:
    """The last ``lines`` redacted lines of a rental's log (only problem lines with ``errors_only``)."""
    if lines < 1:
        raise ValueError("lines must be at least 1")

    def finish(all_lines: list[str]) -> list[str]:
        if errors_only and classifier is not None:
            all_lines = only_problems(all_lines, classifier)
        return all_lines[-lines:]

    def from_bytes(data: bytes, mid_file: bool) -> list[str]:
        return finish(lines_from_bytes(data, redactor, mid_file=mid_file))

    def from_stored(stored: list[str]) -> list[str]:
        return finish(lines_from_stored(stored, redactor))

    live = await read_live(view, lines)
    if live is not None:
        data, mid_file = live
        out = await _off_loop(len(data), from_bytes, data, mid_file)
        return LogTail(out, SOURCE_SSH.format(path=view.path))
    stored = view.fallback_tail
    if stored is None:
        state = await store.get_watch_state(rental_id)
        stored = list((state.data if state is not None else {}).get("fallback_tail") or [])
    stored = [str(x) for x in stored]
    if stored:
        out = await _off_loop(sum(map(len, stored)), from_stored, stored)
        return LogTail(out, SOURCE_CONTAINER)
    events = await store.events_for(rental_id, kinds=list(EVENT_KINDS))
    text = [redactor.redact(event_line(e.ts, e.kind, e.payload)) for e in events]
    return LogTail(finish(text), SOURCE_EVENTS)

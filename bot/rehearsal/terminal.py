"""The demo's stand-in for the Discord channel: each engine event as one compact terminal line."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from bot.db.models import Event, Rental
from bot.provisioning.contract import EVENT_PREFIX, REQUIRED_FIELDS
from bot.watch.redact import Redactor

_MARK = {"info": "  ", "warn": "! ", "error": "!!", "fatal": "XX"}


class TerminalNotifier:
    """The engine's ``Notifier`` for a terminal: one compact line per event (a finding's advice on
    a second, indented line), redacted.

    Lines are prefixed with the scenario and the simulated seconds since the instance was
    created, so concurrent rentals stay readable.
    """

    def __init__(self, label: str, out: TextIO = sys.stdout, *, redactor: Redactor | None = None,
                 width: int = 16) -> None:
        self.label = label
        self.out = out
        self.redactor = redactor or Redactor({})
        self.width = width
        self.count = 0

    def _print(self, rental: Rental, event: Event, text: str) -> None:
        start = rental.started_at or rental.created_at
        t = event.ts - start if rental.started_at is not None else 0.0
        head, *rest = self.redactor.redact(text).split("\n")
        prefix = f"[{self.label:<{self.width}} {t:>5.0f}s]"
        print(f"{prefix} {head}", file=self.out)
        for more in rest:  # e.g. a finding's advice, indented under it
            print(f"{'':<{len(prefix)}} {more.strip()}", file=self.out)
        self.count += 1

    async def notify(self, rental: Rental, event: Event) -> None:
        text = describe_event(event)
        if text:
            self._print(rental, event, text)

    async def alert(self, text: str) -> None:
        """An alert about the bot itself (the database, Vast): printed as it comes."""
        print(f"[{self.label:<{self.width}} alert] !! {self.redactor.redact(text)}", file=self.out)
        self.count += 1


def compact(text: object) -> str:
    """One of our ``@@prov`` event lines as ``ev st: key=value, ...`` (other text unchanged)."""
    line = str(text)
    head, sep, tail = line.partition(EVENT_PREFIX)
    if not sep:
        return line
    if head:
        shown = compact(EVENT_PREFIX + tail)
        return head + (shown if not shown.startswith(EVENT_PREFIX) else "(an event line)")
    try:
        body = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return line
    if not isinstance(body, dict):
        return line
    extras = ", ".join(f"{k}={v}" for k, v in body.items() if k not in REQUIRED_FIELDS)
    return f"[{body.get('ev')} {body.get('st')}] {extras}".rstrip()


def describe_event(event: Event) -> str | None:
    """What the channel would show for one engine event, as one line (None: not shown)."""
    p: dict[str, Any] = event.payload
    kind = event.kind
    if kind == "milestone":
        extra = ""
        if p.get("url"):
            extra = f" {p['url']}"
        elif p.get("confirmed"):
            extra = f" ({p['confirmed']})"
        elif p.get("endpoint"):
            extra = f" ({p['endpoint']})"
        return f"   milestone {p.get('name')}{extra}  [${p.get('cost_usd', 0):.4f} so far]"
    if kind == "finding":
        sev = str(p.get("severity", "info"))
        line = f" line {p['line']}:" if p.get("line") else ":"
        out = f"{_MARK.get(sev, '  ')} {sev} {p.get('category')}{line} {compact(p.get('text'))}"
        if p.get("advice"):
            out += f"\n     advice: {p['advice']}"
        return out
    if kind == "noise_summary":
        return f"   noise: {p.get('text')}"
    if kind == "decision":
        ev = p.get("evidence") or {}
        return (f"XX decision: {str(p.get('action')).upper()} ({p.get('reason')}) because "
                f"{ev.get('category')}: {compact(ev.get('text'))[:160]}")
    if kind == "teardown_proposed":
        return f"?? teardown proposed ({p.get('reason')}); default '{p.get('default_action')}' on expiry"
    if kind == "receipt":
        return (f"$$ receipt: destroyed after {p.get('duration_s'):.0f}s, ${p.get('cost_usd', 0):.4f} "
                f"at ${p.get('dph') or 0:.3f}/h, verdict {p.get('verdict')} "
                f"({p.get('reason')}, by {p.get('by')})")
    if kind == "verdict":
        cause = p.get("cause") or {}
        why = f" - cause {cause.get('category')}: {compact(cause.get('text'))[:100]}" if cause else ""
        return f"== verdict {p.get('verdict')}{why}"
    if kind == "state":
        return f"   state {p.get('from')} -> {p.get('to')} ({compact(p.get('reason'))[:120]})"
    if kind == "approval":
        status = p.get("status")
        if status == "pending":
            return (f"   rent request #{p.get('approval_id')} for offer {p.get('offer_id')} "
                    f"at ${p.get('quoted_dph', 0):.3f}/h")
        return f"   rent request #{p.get('approval_id')} {status}" + (f" by {p['by']}" if p.get("by") else "")
    if kind == "cost":
        return f"$  cost ${p.get('cost_usd', 0):.2f} after {p.get('elapsed_s', 0):.0f}s"
    if kind in ("info", "log_rotated"):
        return f"   {p.get('text')}"
    return f"   {kind}: {p}"

"""``python -m bot audit``: the audit report on the terminal (text, ``--json`` or ``--csv``) and,
with ``--chart FILE``, its PNG chart. Reads DATABASE_PATH; touches neither Vast nor Discord."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bot.clock import Clock, SystemClock
from bot.durations import parse_duration
from bot.settings import Settings

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
DEFAULT_SINCE = "7d"
# Longer than any database of this bot will hold, and keeps datetime arithmetic in range.
MAX_SINCE_S = 10 * 366 * 86400


class AuditUsageError(ValueError):
    """A bad ``--since`` or ``--user``; the message says what to type instead."""


def parse_since(text: str, now: float) -> float:
    """``7d`` / ``36h`` / ``90m`` (back from now) or a UTC date ``2026-11-30`` -> epoch seconds."""
    text = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise AuditUsageError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise AuditUsageError(f"since: {text!r} is not a duration like 7d, 36h, 90m or a date YYYY-MM-DD") from None
    if seconds <= 0 or seconds > MAX_SINCE_S:
        raise AuditUsageError("since: must be more than 0 and at most ten years")
    return now - seconds


def add_parser(sub: Any) -> None:
    """Register ``audit`` on the CLI's sub-command parsers."""
    audit = sub.add_parser(
        "audit", help="the run-by-run audit: outcome, root cause, billed cost and waste of each rental",
        description="Every rental that billed in the window: host, GPU, $/h, outcome, root cause, time to "
        "ready, billed cost and waste; then what went wrong and why, grouped by cause with counts and dollars.",
    )
    audit.add_argument("--since", default=DEFAULT_SINCE, metavar="DURATION|DATE",
                       help="window start: 7d, 36h, 90m back from now, or a UTC date YYYY-MM-DD (default 7d)")
    audit.add_argument("--user", metavar="NAME|ID", help="only this requester (Discord name or id)")
    fmt = audit.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    fmt.add_argument("--csv", action="store_true", help="print the run table as CSV")
    audit.add_argument("--chart", metavar="FILE.png", type=Path,
                       help="also write the PNG chart (needs the chart extra: pip install 'vastops[chart]')")


async def run_audit(settings: Settings, args: argparse.Namespace, *, out: TextIO = sys.stdout,
                    err: TextIO = sys.stderr, clock: Clock | None = None) -> int:
    from bot.audit import build_report, render_csv, render_json, render_text
    from bot.db.guardrails import find_requester
    from bot.db.store import Store

    now = (clock or SystemClock()).now()
    try:
        since = parse_since(args.since, now)
    except AuditUsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_CONFIG
    path = settings.database_path
    if not path.exists():
        print(f"error: no database at {path} (set DATABASE_PATH to the bot's database file)", file=err)
        return EXIT_CONFIG
    store = await Store.open(path)
    try:
        requester_id, user = await find_requester(store, args.user) if args.user else (None, None)
        if args.user and requester_id is None:
            print(f"error: no rental was ever requested by {args.user!r}", file=err)
            return EXIT_CONFIG
        report = await build_report(store, since=since, now=now, requester_id=requester_id, user=user)
    finally:
        await store.close()
    out.write(render_json(report) if args.json else render_csv(report) if args.csv else render_text(report))
    if args.chart is not None:
        from bot.chart import ChartUnavailable, render_png

        try:
            png = render_png(report)
        except ChartUnavailable as exc:
            print(f"error: no chart written: {exc}", file=err)
            return EXIT_CONFIG
        args.chart.write_bytes(png)
        print(f"chart written to {args.chart}", file=err)
    return EXIT_OK

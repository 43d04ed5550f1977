"""The after-the-fact audit: every rental of a window with its host, outcome, root cause, time to
ready, billed cost and waste, then "what went wrong and why" grouped by cause, with counts and
dollars. Rendered as text, JSON or CSV; no Discord here (``cogs/audit.py`` and ``bot/audit_cli.py``
are its two faces, ``bot/chart.py`` draws it).

Every dollar is ``bot.watch.cost.rental_cost``: a destroyed rental's billed cost is the figure
its receipt carries, so the report's totals agree with the receipts (the report checks it).

Outcomes: ``useful`` (ComfyUI became ready), ``degraded`` (ready with warnings), ``failed`` (the
watch decided it was failing: fatal finding, missed deadline, stall, dollar cap), ``stopped``
(torn down before it was ready, by a person or because it vanished), ``running`` (still billing,
not ready yet). Waste is the whole cost of a failed or stopped rental, plus the idle share of a
useful one (``idle_s`` in its receipt: seconds it sat ready with nothing to do).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.db.guardrails import events_by_kind, rentals_billing_during, unrented_requests
from bot.db.models import Event, Rental, RentalState
from bot.db.store import Store
from bot.durations import format_duration
from bot.watch.cost import rental_cost
from bot.watch.events import EV_DECISION, EV_FINDING, EV_MILESTONE, EV_RECEIPT, EV_VERDICT

# Outcome -> the bucket it is charted in.
BUCKETS: tuple[str, ...] = ("useful", "idle", "failed", "running")
_BUCKET_OF = {"useful": "useful", "degraded": "useful", "failed": "failed", "stopped": "failed",
              "running": "running"}
# Receipts are rounded to 4 decimals; anything beyond a cent apart is a real disagreement.
RECEIPT_TOLERANCE = 0.01
CAUSE_LABELS: dict[str, str] = {
    "script_missing": "provisioning script missing or wrong",
    "config": "configuration error on the instance",
    "network": "network failure on the instance",
    "dependency": "a dependency failed to install",
    "dependency_fatal": "a required dependency failed",
    "disk_full": "disk full",
    "gpu": "GPU / CUDA failure",
    "auth": "download refused (token or licence)",
    "stalled": "no progress (stall or deadline)",
    "ssh_unreachable": "SSH never reachable",
    "unknown": "unclassified failure",
}


@dataclass
class AuditRow:
    """One rental, as the audit table shows it."""

    rental_id: int
    label: str
    requester: str
    requester_id: int | None
    machine_id: int | None
    host_id: int | None
    country: str | None
    geolocation: str | None
    gpu: str
    dph: float | None
    state: str
    outcome: str
    cause: str | None  # the group key in "what went wrong"; None when nothing went wrong
    root_cause: str  # the evidence in words ("-" for a useful rental)
    advice: str
    time_to_ready_s: float | None
    billed_usd: float
    waste_usd: float
    idle_usd: float
    receipt_usd: float | None
    started_at: float | None
    ended_at: float | None

    @property
    def host(self) -> str:
        machine = f"m{self.machine_id}" if self.machine_id is not None else "m?"
        return f"{machine} {self.country or '??'}"


@dataclass
class CauseGroup:
    cause: str
    label: str
    count: int = 0
    waste_usd: float = 0.0
    rentals: list[int] = field(default_factory=list)
    example: str = ""
    advice: str = ""


@dataclass
class AuditReport:
    since: float
    until: float
    user: str | None
    rows: list[AuditRow]
    causes: list[CauseGroup]
    unrented: dict[str, int]
    # (UTC day "YYYY-MM-DD", bucket) -> dollars; (requester, bucket) -> dollars
    daily: dict[str, dict[str, float]]
    per_user: dict[str, dict[str, float]]

    @property
    def billed_usd(self) -> float:
        return sum(r.billed_usd for r in self.rows)

    @property
    def waste_usd(self) -> float:
        return sum(r.waste_usd for r in self.rows)

    @property
    def receipts(self) -> list[AuditRow]:
        return [r for r in self.rows if r.receipt_usd is not None]

    def receipt_mismatches(self) -> list[AuditRow]:
        """Rows whose billed cost and receipt disagree by more than a cent."""
        return [r for r in self.receipts if abs(r.billed_usd - (r.receipt_usd or 0.0)) > RECEIPT_TOLERANCE]


# ---------------------------------------------------------------- building the report


def country_of(geolocation: str | None) -> str | None:
    """``"Texas, US"`` -> ``"US"``; Vast puts the two-letter code last."""
    if not geolocation:
        return None
    tail = geolocation.rsplit(",", 1)[-1].strip()
    return tail.upper() if len(tail) == 2 and tail.isalpha() else None


def _last(events: list[Event], kind: str) -> Event | None:
    found = [e for e in events if e.kind == kind]
    return found[-1] if found else None


def _cause_of_failure(events: list[Event], rental: Rental) -> tuple[str, str, str]:
    """(group key, evidence, advice) of a rental the watch gave up on."""
    decision = _last(events, EV_DECISION)
    if decision is None:
        return "unknown", rental.state_reason or "failed", ""
    evidence = decision.payload.get("evidence") or {}
    category = str(decision.payload.get("reason") or evidence.get("category") or "unknown")
    text = str(evidence.get("text") or rental.state_reason or category)
    # The engine's own rules (deadlines, dollar cap) share a category: name which one fired.
    detail = ""
    for finding in (e for e in events if e.kind == EV_FINDING and e.seq < decision.seq):
        rule = str(finding.payload.get("rule") or "")
        if finding.payload.get("stops_run") and rule.startswith("engine."):
            detail = rule.removeprefix("engine.").split(".x")[0].replace("deadline.", "deadline ")
    key = f"{category}: {detail.replace('_', ' ')}" if detail else category
    return key, text, str(evidence.get("advice") or "")


def _outcome(rental: Rental, events: list[Event]) -> str:
    receipt = _last(events, EV_RECEIPT)
    verdicts = [str(e.payload.get("verdict")) for e in events if e.kind == EV_VERDICT]
    verdict = str(receipt.payload.get("verdict")) if receipt is not None else (verdicts[-1] if verdicts else "")
    if verdict == "failed" or (_last(events, EV_DECISION) is not None and verdict not in ("ready", "degraded")):
        return "failed"
    if verdict in ("ready", "degraded"):
        return "useful" if verdict == "ready" else "degraded"
    if rental.state == RentalState.FAILED:
        return "failed"
    if rental.is_terminal:
        return "stopped"
    return "running"


def _stopped_cause(rental: Rental, receipt: Event | None) -> str:
    by = str((receipt.payload if receipt else {}).get("by") or "")
    if by == "vast":
        return "instance vanished before it was ready"
    if by in ("engine", ""):
        return "torn down before it was ready"
    return "stopped by a person before it was ready"


def build_row(rental: Rental, events: list[Event], now: float) -> AuditRow:
    billed = rental_cost(rental, now)
    receipt = _last(events, EV_RECEIPT)
    outcome = _outcome(rental, events)
    ready = next((e.ts for e in events if e.kind == EV_MILESTONE and e.payload.get("name") == "comfyui_ready"), None)
    start = rental.started_at or rental.created_at
    cause: str | None = None
    root, advice = "-", ""
    waste = idle = 0.0
    if outcome == "failed":
        cause, root, advice = _cause_of_failure(events, rental)
        waste = billed
    elif outcome == "stopped":
        cause = _stopped_cause(rental, receipt)
        root = rental.state_reason or cause
        waste = billed
    elif outcome in ("useful", "degraded") and receipt is not None:
        idle_s = _number(receipt.payload.get("idle_s"))
        duration = _number(receipt.payload.get("duration_s")) or 0.0
        if idle_s and duration > 0:
            idle = billed * min(1.0, idle_s / duration)
            waste = idle
            cause, root = "idle after ready", f"idle {format_duration(idle_s)} after ComfyUI was ready"
            advice = "Tear instances down when the work is done; the idle lease does it for you."
    return AuditRow(
        rental_id=rental.id, label=rental.label, requester=rental.requester_name or str(rental.requester_id or "?"),
        requester_id=rental.requester_id, machine_id=rental.machine_id, host_id=rental.host_id,
        country=country_of(rental.geolocation), geolocation=rental.geolocation,
        gpu=f"{rental.gpu_name or '?'} x{rental.num_gpus or 1}",
        dph=rental.dph_total if rental.dph_total is not None else rental.quoted_dph, state=rental.state.value,
        outcome=outcome, cause=cause, root_cause=root, advice=advice,
        time_to_ready_s=None if ready is None else max(0.0, ready - start),
        billed_usd=billed, waste_usd=waste, idle_usd=idle,
        receipt_usd=_number(receipt.payload.get("cost_usd")) if receipt is not None else None,
        started_at=rental.started_at, ended_at=rental.ended_at,
    )


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def split_by_day(start: float, end: float, amount: float) -> dict[str, float]:
    """``amount`` spread evenly over [start, end] and cut at UTC midnights (the whole of it on
    ``start``'s day when the interval is empty)."""
    if end <= start:
        return {utc_day(start): amount}
    out: dict[str, float] = {}
    t = start
    while t < end:
        midnight = (math.floor(t / 86400) + 1) * 86400
        stop = min(end, midnight)
        out[utc_day(t)] = out.get(utc_day(t), 0.0) + amount * (stop - t) / (end - start)
        t = stop
    return out


def _charted(row: AuditRow, now: float) -> tuple[dict[str, float], dict[str, float]]:
    """(per-day, per-bucket) dollars of one row, the buckets summing to its billed cost."""
    bucket = _BUCKET_OF.get(row.outcome, "failed")
    parts = {bucket: row.billed_usd - row.idle_usd}
    if row.idle_usd:
        parts["idle"] = parts.get("idle", 0.0) + row.idle_usd
    start = row.started_at or now
    end = row.ended_at if row.ended_at is not None else now
    days = split_by_day(start, end, 1.0)
    per_day: dict[str, float] = {}
    for day, share in days.items():
        for name, dollars in parts.items():
            per_day[f"{day}\0{name}"] = per_day.get(f"{day}\0{name}", 0.0) + dollars * share
    return per_day, parts


async def build_report(store: Store, *, since: float, now: float, requester_id: int | None = None,
                       user: str | None = None) -> AuditReport:
    """The audit of every rental that billed at or after ``since`` (optionally one requester's)."""
    rentals = await rentals_billing_during(store, since, requester_id=requester_id)
    events = await events_by_kind(store, (r.id for r in rentals),
                                  (EV_RECEIPT, EV_DECISION, EV_FINDING, EV_MILESTONE, EV_VERDICT))
    rows = [build_row(r, events.get(r.id, []), now) for r in rentals]
    groups: dict[str, CauseGroup] = {}
    daily: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(BUCKETS, 0.0))
    per_user: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(BUCKETS, 0.0))
    for row in rows:
        if row.cause is not None:
            group = groups.setdefault(row.cause, CauseGroup(row.cause, _cause_label(row.cause)))
            group.count += 1
            group.waste_usd += row.waste_usd
            group.rentals.append(row.rental_id)
            group.example = group.example or row.root_cause
            group.advice = group.advice or row.advice
        per_day, parts = _charted(row, now)
        for key, dollars in per_day.items():
            day, bucket = key.split("\0")
            daily[day][bucket] += dollars
        for bucket, dollars in parts.items():
            per_user[row.requester][bucket] += dollars
    causes = sorted(groups.values(), key=lambda g: (-g.waste_usd, -g.count, g.cause))
    return AuditReport(since=since, until=now, user=user, rows=rows, causes=causes,
                       unrented=await unrented_requests(store, since, requester_id=requester_id),
                       daily=dict(sorted(daily.items())), per_user=dict(sorted(per_user.items())))


def _cause_label(cause: str) -> str:
    head, _, detail = cause.partition(": ")
    label = CAUSE_LABELS.get(head)
    if label is None:
        return cause
    return f"{label} ({detail})" if detail else label


# ---------------------------------------------------------------- rendering


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if abs(value) < 0.995 else f"${value:,.2f}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


TABLE_HEADERS = ("rental", "requester", "host", "GPU", "$/h", "outcome", "root cause", "ready in", "billed",
                 "waste")


def table_cells(row: AuditRow, *, cause_width: int = 48) -> tuple[str, ...]:
    cause = row.root_cause if len(row.root_cause) <= cause_width else row.root_cause[: cause_width - 1] + "…"
    return (f"#{row.rental_id}", row.requester[:20], row.host, row.gpu[:22],
            "-" if row.dph is None else f"{row.dph:.3f}", row.outcome, cause,
            "-" if row.time_to_ready_s is None else format_duration(row.time_to_ready_s),
            usd(row.billed_usd), usd(row.waste_usd))


def render_table(rows: list[AuditRow], *, cause_width: int = 48) -> str:
    cells = [TABLE_HEADERS, *(table_cells(r, cause_width=cause_width) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_HEADERS))]
    right = {4, 7, 8, 9}
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_lines(report: AuditReport) -> list[str]:
    billed, waste = report.billed_usd, report.waste_usd
    share = f" ({waste / billed:.0%})" if billed > 0 else ""
    lines = [f"{len(report.rows)} rental(s) billed {usd(billed)}; waste {usd(waste)}{share}."]
    receipts = report.receipts
    if receipts:
        total = sum(r.receipt_usd or 0.0 for r in receipts)
        wrong = report.receipt_mismatches()
        verdict = "agree with the billed costs above" if not wrong else (
            "DISAGREE for " + ", ".join(f"#{r.rental_id} (receipt {usd(r.receipt_usd)}, billed {usd(r.billed_usd)})"
                                        for r in wrong[:5]))
        lines.append(f"{len(receipts)} receipt(s) total {usd(total)} and {verdict}.")
    running = [r for r in report.rows if r.ended_at is None]
    if running:
        lines.append(f"{len(running)} rental(s) still billing, counted up to now.")
    if report.unrented:
        parts = ", ".join(f"{n} {state.replace('_', ' ')}" for state, n in sorted(report.unrented.items()))
        lines.append(f"Requests that never reached Vast (nothing billed): {parts}.")
    return lines


def cause_lines(report: AuditReport) -> list[str]:
    if not report.causes:
        return ["Nothing went wrong: no failed, stopped or idle rental in this window."]
    out = []
    for n, group in enumerate(report.causes, 1):
        ids = ", ".join(f"#{i}" for i in group.rentals[:12]) + (" …" if len(group.rentals) > 12 else "")
        out.append(f"{n}. {group.label}: {group.count} rental(s), {usd(group.waste_usd)} wasted ({ids})")
        if group.example:
            out.append(f"   why: {group.example}")
        if group.advice:
            out.append(f"   fix: {group.advice}")
    return out


def header(report: AuditReport) -> str:
    who = f"requester {report.user}" if report.user else "all requesters"
    return f"vastops audit · {_when(report.since)} → {_when(report.until)} UTC · {who}"


def render_text(report: AuditReport) -> str:
    parts = [header(report), ""]
    if report.rows:
        parts += ["Run comparison", render_table(report.rows), ""]
    else:
        parts += ["No rental billed in this window.", ""]
    parts += summary_lines(report)
    parts += ["", "What went wrong and why", *cause_lines(report)]
    if report.daily:
        parts += ["", "Spend per day (UTC)", *_bucket_table(report.daily, "day")]
    if report.per_user:
        parts += ["", "Spend per requester", *_bucket_table(report.per_user, "requester")]
    return "\n".join(parts) + "\n"


def _bucket_table(data: dict[str, dict[str, float]], first: str) -> list[str]:
    shown = [b for b in BUCKETS if any(v.get(b, 0.0) > 0 for v in data.values())] or ["useful"]
    cells = [(first, *shown, "total")]
    for key, values in data.items():
        cells.append((key[:24], *(usd(values.get(b, 0.0)) for b in shown), usd(sum(values.values()))))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in cells]


def to_json(report: AuditReport) -> dict[str, Any]:
    rows = []
    for row in report.rows:
        item = asdict(row)
        item["host"] = row.host
        for key in ("billed_usd", "waste_usd", "idle_usd"):
            item[key] = round(item[key], 4)
        rows.append(item)
    return {
        "since": report.since, "until": report.until, "user": report.user,
        "totals": {"rentals": len(report.rows), "billed_usd": round(report.billed_usd, 4),
                   "waste_usd": round(report.waste_usd, 4),
                   "receipts": len(report.receipts),
                   "receipts_usd": round(sum(r.receipt_usd or 0.0 for r in report.receipts), 4),
                   "receipt_mismatches": [r.rental_id for r in report.receipt_mismatches()]},
        "rows": rows,
        "causes": [{**asdict(g), "waste_usd": round(g.waste_usd, 4)} for g in report.causes],
        "unrented": report.unrented,
        "daily": {d: {b: round(v, 4) for b, v in vals.items()} for d, vals in report.daily.items()},
        "per_user": {u: {b: round(v, 4) for b, v in vals.items()} for u, vals in report.per_user.items()},
    }


def render_json(report: AuditReport) -> str:
    return json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n"


CSV_FIELDS: tuple[str, ...] = (
    "rental_id", "label", "requester", "machine_id", "host_id", "country", "gpu", "dph", "outcome", "cause",
    "root_cause", "time_to_ready_s", "billed_usd", "waste_usd", "receipt_usd", "started_at", "ended_at",
)


_NUMERIC_CSV = frozenset({"dph", "time_to_ready_s", "billed_usd", "waste_usd", "receipt_usd", "started_at",
                          "ended_at"})


def render_csv(report: AuditReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for row in report.rows:
        values = asdict(row)
        out = []
        for name in CSV_FIELDS:
            value = values[name]
            if isinstance(value, float):
                value = round(value, 4)
            text = "" if value is None else str(value)
            # A cell starting with = + - @ is a formula to a spreadsheet: host names are not ours.
            if len(text) > 1 and text[0] in "=+-@" and name not in _NUMERIC_CSV:
                text = "'" + text
            out.append(text)
        writer.writerow(out)
    return buf.getvalue()

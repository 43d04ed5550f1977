"""``python -m bot demo``: play the audit's failures against the simulator and print what the bot
would post to the channel, then a table comparing its spend with the audit's approach.

Every scenario runs through the same rental service, watch engine and store as the Discord bot
(a fake approver approves the best offer), on a ``ScaledClock``, all scenarios concurrently.
The terminal notifier stands in for the Discord channel. Exit 0 if every outcome matches its
scenario's expectation, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from bot.clock import ScaledClock
from bot.db.models import Event, Rental
from bot.provisioning.contract import EVENT_PREFIX, REQUIRED_FIELDS
from bot.sim.scenarios import Scenario, ScenarioError, load_all, load_scenario
from bot.sim.stage import RunResult, play
from bot.watch.redact import Redactor

# Simulated seconds per real second. The longest scenario (SSH never answers) needs ~660
# simulated seconds, so `--scenario all` ends in ~15 s of wall time even on 2 busy cores.
DEFAULT_SPEED = 50.0
# Under a fast ScaledClock every poll also costs the simulated time its API calls wait (log upload,
# request spacing) plus CPU time x speed, so polls drift later than on a real clock; the demo
# allows three polls of lateness. The exact one-poll checks run on a FakeClock (tests, bench).
DEMO_LATENESS_POLLS = 3.0

_MARK = {"info": "  ", "warn": "! ", "error": "!!", "fatal": "XX"}


def _fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


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


def outcome_text(result: RunResult) -> str:
    if result.preflight_blocked and result.instance_id is None:
        return "not rented"
    if result.verdict == "failed":
        return f"failed/{result.category}"
    if result.verdict == "degraded":
        return f"degraded/{result.category}" if result.category else "degraded"
    return result.verdict


def summary_table(results: list[RunResult], out: TextIO, *,
                  tolerance_polls: float = DEMO_LATENESS_POLLS) -> int:
    """Print the per-scenario table; return the number of scenarios whose outcome mismatched."""
    headers = ("SCENARIO", "PREFLIGHT", "OUTCOME", "HOST", "KNEW", "STOPPED", "SPENT", "AUDIT", "AUDIT $",
               "RATIO", "MATCH")
    rows: list[tuple[str, ...]] = []
    bad: list[tuple[RunResult, list[str]]] = []
    for r in results:
        wrong = r.mismatches(tolerance=tolerance_polls * r.poll_interval)
        if wrong:
            bad.append((r, wrong))
        stopped = _fmt_s(r.stopped_at) if r.scenario.expect.stop != "none" or r.decision_at else "kept"
        stopped = "-" if r.instance_id is None else stopped
        ratio = f"{r.ratio:.0f}x" if r.ratio is not None else "-"
        preflight = {None: "-", True: "BLOCKS", False: "pass"}[r.preflight_blocked]
        rows.append((r.scenario.name, preflight, outcome_text(r), r.country or "-", _fmt_s(r.knew_at),
                     stopped, _usd(r.spent), f"{r.scenario.baseline.seconds:.0f}s", _usd(r.baseline_usd),
                     ratio, "ok" if not wrong else "MISMATCH"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=out)
    print(file=out)
    print("KNEW: simulated seconds from create to the first conclusive finding (failures) or to ComfyUI\n"
          "      answering /system_stats through SSH (successes). STOPPED: when the instance was destroyed;\n"
          "      'kept' = a good rental, left running for its user. SPENT: billed by the simulator until\n"
          "      spending stopped (failures) or until ready (successes).\n"
          "AUDIT: the audit's approach on the same run (its collector was blind and waited for a 3,600 s\n"
          "      timeout; a wrong script ran indefinitely, 3,600 s is a floor), at the rented $/h (for\n"
          "      china-cheapest, at the price of the China offer the audit's UA-only filter picks).\n"
          "      RATIO = AUDIT $ / SPENT.\n"
          f"MATCH: verdict, cause, and spending stopped within {DEMO_LATENESS_POLLS:g} polls of the signal\n"
          "      (polls drift under a fast simulated clock; bench/bench_scenarios.py has exact figures).\n"
          "PREFLIGHT: the check before renting (script URL, models, nodes, disk, GPU). Where it BLOCKS,\n"
          "      nothing would be rented at all ($0); for a broken script URL the run shown bypasses it to\n"
          "      rehearse the instance-side defence; the manifest's catches end there ('not rented').",
          file=out)
    for r, wrong in bad:
        print(f"\nMISMATCH {r.scenario.name}: " + "; ".join(wrong), file=out)
    return len(bad)


def print_scenario_header(scenario: Scenario, out: TextIO) -> None:
    print(f"-- {scenario.name}: {scenario.title}", file=out)
    print(f"   audit: {scenario.audit}", file=out)


def print_preflight(result: RunResult, out: TextIO) -> None:
    report = result.preflight
    if report is None:
        return
    name = result.scenario.name
    if not result.preflight_blocked:
        warned = [f"{c.name}: {c.detail}" for c in getattr(report, "checks", []) if c.status == "warn"]
        extra = f" (warnings: {'; '.join(warned)})" if warned else ""
        print(f"[{name}] preflight passes{extra}", file=out)
        return
    print(f"[{name}] preflight BLOCKS the rent, nothing would be rented ($0). The approver sees: "
          f"{result.preflight_message}", file=out)
    if result.instance_id is not None:
        print(f"[{name}] the run above bypassed it to rehearse the defences on the instance", file=out)


async def run_demo(scenario: str = "all", speed: float | None = None, list_only: bool = False,
                   out: TextIO | None = None) -> int:
    """Play one scenario or all of them; print the channel's view and the summary table.

    Returns 0 when every outcome matches its scenario's expectation, 1 otherwise (and 2 for an
    unknown scenario name).
    """
    out = out or sys.stdout
    try:
        scenarios = load_all() if scenario == "all" else [load_scenario(scenario)]
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if list_only:
        width = max(len(s.name) for s in scenarios)
        for s in scenarios:
            print(f"{s.name:<{width}}  {s.title}\n{'':<{width}}  audit: {s.audit}", file=out)
        return 0
    speed = speed or DEFAULT_SPEED
    print(f"vastops rehearsal: {len(scenarios)} scenario(s) against the built-in simulator, "
          f"simulated time x{speed:g}, poll every 15 s (simulated).", file=out)
    print("Teardown policy here is 'destroy' so spending stops at once; the Discord bot's default "
          "('propose') posts a teardown proposal first and destroys when nobody answers in time.", file=out)
    for s in scenarios:
        print_scenario_header(s, out)
    print(file=out)
    width = max(len(s.name) for s in scenarios)
    wall0 = time.monotonic()
    results = await asyncio.gather(*(
        play(s, ScaledClock(speed), notifier=TerminalNotifier(s.name, out, width=width)) for s in scenarios
    ), return_exceptions=True)
    print(file=out)
    ok_results: list[RunResult] = []
    crashed = 0
    for s, r in zip(scenarios, results, strict=True):
        if isinstance(r, BaseException):
            crashed += 1
            print(f"[{s.name}] crashed: {type(r).__name__}: {r}", file=out)
            continue
        for note in r.notes:
            print(f"[{s.name}] note: {note}", file=out)
        print_preflight(r, out)
        ok_results.append(r)
    print(f"\nSummary ({time.monotonic() - wall0:.1f}s wall):\n", file=out)
    mismatched = summary_table(ok_results, out) if ok_results else 0
    if mismatched or crashed:
        print(f"\n{mismatched + crashed} scenario(s) did not go as expected.", file=out)
        return 1
    print("\nEvery scenario went as expected.", file=out)
    return 0

"""``python -m bot demo``: play the audit's failures against the simulator and print what the bot
would post to the channel, then a table comparing its spend with the audit's approach.

Every scenario runs through the same rental service, watch engine and store as the Discord bot
(a fake approver approves the best offer), on a ``ScaledClock``, all scenarios concurrently.
The terminal notifier stands in for the Discord channel. Exit 0 if every outcome matches its
scenario's expectation, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from bot.clock import ScaledClock
from bot.rehearsal.play import play
from bot.rehearsal.result import DRIFT, RunResult
from bot.rehearsal.terminal import TerminalNotifier
from bot.settings import Settings
from bot.sim.scenarios import Scenario, ScenarioError, load_all, load_scenario
from bot.sim.stage import REHEARSAL_TEARDOWN_POLICY

# Simulated seconds per real second. The longest scenario (SSH never answers) needs ~660
# simulated seconds, so `--scenario all` ends in ~15 s of wall time even on 2 busy cores.
DEFAULT_SPEED = 50.0
# Under a fast ScaledClock every poll also costs the simulated time its API calls wait (log upload,
# request spacing) plus CPU time x speed, so polls drift later than on a real clock; the demo
# allows three polls of lateness. The exact one-poll checks run on a FakeClock (tests, bench).
DEMO_LATENESS_POLLS = 3.0
# The speeds `--speed` accepts. Below x1 the rehearsal is slower than real time; above x100 a busy
# machine cannot keep up: at x400 on 2 shared cores four failures were torn down more than three
# polls after their signal only because the polls ran late (x200 still passed, hence the margin).
MIN_SPEED = 1.0
MAX_SPEED = 100.0

# What each TEARDOWN_POLICY does once the bot judges a run failed.
POLICY_MEANS = {
    "destroy": "the instance is destroyed at once",
    "propose": "a teardown is proposed to the approvers first and carried out when nobody answers "
               "within PROPOSAL_TIMEOUT",
}


def _fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


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
          "      'kept' = a good rental, left running for its user. SPENT: the bot's own cost figure (the\n"
          "      one on receipts and /status: storage from creation, GPU while running) until spending\n"
          "      stopped (failures) or until ready (successes); MATCH checks it against what the\n"
          "      simulator billed.\n"
          "AUDIT: the audit's approach on the same run (its collector was blind and waited for a 3,600 s\n"
          "      timeout; a wrong script ran indefinitely, 3,600 s is a floor), at the rented $/h (for\n"
          "      china-cheapest, at the price of the China offer the audit's UA-only filter picks).\n"
          "      RATIO = AUDIT $ / SPENT, for failures only (a run that reached ready saved nothing:\n"
          "      its user keeps it, with or without the bot).\n"
          f"MATCH: verdict, cause, and spending stopped within {DEMO_LATENESS_POLLS:g} polls of the signal\n"
          "      (polls drift under a fast simulated clock; bench/bench_scenarios.py has exact figures).\n"
          "PREFLIGHT: the check before renting (script URL, models, nodes, disk, GPU). Where it BLOCKS,\n"
          "      nothing would be rented at all ($0); for a broken script URL the run shown bypasses it to\n"
          "      rehearse the instance-side defence; the manifest's catches end there ('not rented').",
          file=out)
    for r, wrong in bad:
        print(f"\nMISMATCH {r.scenario.name}: " + "; ".join(wrong), file=out)
    return len(bad)


def speed_problem(speed: float) -> str | None:
    """Why ``speed`` cannot be used for the demo, or None when it can."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        return (f"--speed must be between {MIN_SPEED:g} and {MAX_SPEED:g} (got {speed:g}): faster than "
                f"x{MAX_SPEED:g}, the polls run late on a busy machine and the table would blame the bot")
    return None


def print_banner(scenarios: list[Scenario], speed: float, out: TextIO) -> None:
    default = str(Settings.model_fields["teardown_policy"].default)
    used = sorted({str(s.settings.get("teardown_policy", REHEARSAL_TEARDOWN_POLICY)) for s in scenarios})
    print(f"vastops rehearsal: {len(scenarios)} scenario(s) against the built-in simulator, "
          f"simulated time x{speed:g}, poll every 15 s (simulated).", file=out)
    here = " and ".join(f"'{p}'" for p in used)
    why = "the default" if used == [default] else "so spending stops as soon as the bot decides"
    print(f"The bot's default teardown policy (TEARDOWN_POLICY) is '{default}': when a run has failed, "
          f"{POLICY_MEANS.get(default, 'see the README')}. This rehearsal uses {here}, {why}.", file=out)


def drift_only(result: RunResult, *, tolerance_polls: float = DEMO_LATENESS_POLLS) -> bool:
    """Whether the run's only mismatch is a late teardown caused by late polls (clock drift)."""
    tolerance = tolerance_polls * result.poll_interval
    return len(result.mismatches(tolerance=tolerance)) == 1 and result.drifted(tolerance=tolerance)


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
    unknown scenario name or a ``speed`` outside ``MIN_SPEED``..``MAX_SPEED``).
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
    speed = DEFAULT_SPEED if speed is None else speed
    problem = speed_problem(speed)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print_banner(scenarios, speed, out)
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
        drift = [r.scenario.name for r in ok_results if drift_only(r)]
        if drift and len(drift) == mismatched and not crashed:
            print(f"Each of them ({', '.join(drift)}) was decided in time by the bot, but its polls ran "
                  f"late: {DRIFT} at x{speed:g} on this machine, not the bot. Try a lower --speed.", file=out)
        return 1
    print("\nEvery scenario went as expected.", file=out)
    return 0

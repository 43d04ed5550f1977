"""Rehearsal figures: for every scenario, how fast the bot decided and what it spent, next to the
audit's approach on the same run.

Each scenario is played through the real rental service, watch engine, store, simulator and SSH
servers on a FakeClock (deterministic: one tick per 15 s poll). Then the whole demo is timed at
its default speed on the wall clock. Run: ``.venv/bin/python bench/bench_scenarios.py``.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time

from bot.clock import FakeClock
from bot.rehearsal.demo import DEFAULT_SPEED, outcome_text, run_demo
from bot.rehearsal.play import play
from bot.rehearsal.result import RunResult
from bot.sim.scenarios import load_all

AUDIT_DAY = 1_770_285_600.0


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


async def main() -> int:
    results: list[RunResult] = []
    for scenario in load_all():
        results.append(await play(scenario, FakeClock(start=AUDIT_DAY)))
    header = (f"{'scenario':<18} {'outcome':<24} {'signal s':>8} {'decided s':>9} {'signal->decision s':>18} "
              f"{'stopped s':>9} {'spent $':>9} {'audit s':>7} {'audit $':>8} {'ratio':>6} {'wall s':>6}")
    print("Simulated seconds since create; poll interval 15 s; teardown policy 'destroy'.")
    print("signal->decision: from the first conclusive signal (or the deadline it was due at) to the")
    print("teardown decision; '-' where the run was good and kept. spent $: billed by the simulator until")
    print("spending stopped (failures) or until ComfyUI was confirmed ready (successes).")
    print("audit $: the audit's approach on the same run (blind collector, 3,600 s timeout) at the")
    print("rented $/h (china-cheapest: at the China offer the audit's UA-only filter rents).")
    print("ratio = audit $ / spent $.\n")
    print(header)
    print("-" * len(header))
    worst = 0.0
    mismatched = 0
    for r in results:
        delta = r.signal_to_decision
        if delta is not None:
            worst = max(worst, delta)
        mismatched += bool(r.mismatches())
        ratio = f"{r.ratio:.0f}x" if r.ratio else "-"
        print(f"{r.scenario.name:<18} {outcome_text(r):<24} {_s(r.scenario.expect.signal_at):>8} "
              f"{_s(r.decision_at):>9} {_s(delta):>18} {_s(r.stopped_at):>9} {r.spent:>9.4f} "
              f"{r.scenario.baseline.seconds:>7.0f} {r.baseline_usd:>8.4f} {ratio:>6} {r.wall_seconds:>6.2f}")
    failed = [r for r in results if r.decision_at is not None]
    spent = sum(r.spent for r in failed)
    audit = sum(r.baseline_usd for r in failed)
    print(f"\nfailures: {len(failed)}; worst signal->decision {worst:.0f} s (target: <= one poll, 15 s); "
          f"spent ${spent:.4f} vs the audit's ${audit:.4f} ({audit / spent:.0f}x)")
    print(f"scenarios not matching their expectation: {mismatched}")

    t0 = time.monotonic()
    code = await run_demo("all", speed=DEFAULT_SPEED, out=io.StringIO())
    print(f"\n`python -m bot demo --scenario all` at x{DEFAULT_SPEED:g}: {time.monotonic() - t0:.1f} s wall, "
          f"exit {code}")
    return 0 if mismatched == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

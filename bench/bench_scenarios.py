"""Rehearsal figures: for every scenario, how fast the bot decided and what it spent, next to the
audit's approach on the same run.

Each scenario is played through the real rental service, watch engine, store, simulator and SSH
servers on a FakeClock (deterministic: one tick per 15 s poll), with the real defaults. Per
scenario: billed seconds and dollars, and the share of the audit's 3,600 s baseline. Then every
healthy scenario is replayed ``--replays`` times with jittered timing (``--jitter``: the whole
timeline stretched x0.85-1.3, each moment moved by up to 3 s, the poll phase shifted by up to a
poll), counting false teardowns. Last, the whole demo is timed at its default speed on the wall
clock. Run: ``.venv/bin/python bench/bench_scenarios.py [--replays 20 --jitter] [--seed N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import random
import sys
import time

from bot.clock import FakeClock
from bot.rehearsal.demo import DEFAULT_SPEED, outcome_text, run_demo
from bot.rehearsal.play import play
from bot.rehearsal.result import RunResult
from bot.sim.scenarios import Scenario, Step, load_all

AUDIT_DAY = 1_770_285_600.0
BASELINE_S = 3600.0
SILENT = ("stall", "stall-heartbeat", "ssh-never")  # the silent failures: at most a tenth of the baseline
SILENT_LIMIT_S = 360.0


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def billed_seconds(r: RunResult) -> float | None:
    """Seconds since create the instance billed for: until spending stopped (a failure) or until
    ComfyUI was confirmed ready (a good run, the user's to keep); None if nothing was rented."""
    if r.instance_id is None:
        return None
    if r.stopped_at is not None:
        return r.stopped_at
    return r.knew_at


def healthy(scenario: Scenario) -> bool:
    return scenario.expect.stop == "none" and not scenario.preflight_blocks


def jittered(scenario: Scenario, rng: random.Random) -> Scenario:
    """The same run, slower or faster and out of phase with the polls: every moment stretched by
    one factor and moved by up to 3 s (in order: nothing overtakes what came before it), all of
    it shifted by up to one poll."""
    factor, shift = rng.uniform(0.85, 1.3), rng.uniform(0.0, 15.0)
    moved: dict[float, float] = {}
    last = 0.0
    for at in sorted({s.at for s in scenario.steps}):
        last = moved[at] = max(last + 0.5, at * factor + shift + rng.uniform(-3.0, 3.0))

    def step(s: Step) -> Step:
        every = s.every * factor if s.every is not None else None
        until = s.until * factor + shift if s.until is not None else None
        return dataclasses.replace(s, at=moved[s.at], every=every, until=until)

    running = scenario.running_at * factor + shift
    return dataclasses.replace(
        scenario, steps=tuple(step(s) for s in scenario.steps), running_at=running,
        ssh_at=max(running, scenario.ssh_at * factor + shift),
        run_for=scenario.run_for)


async def replays(count: int, seed: int, *, jitter: bool = True) -> tuple[int, int]:
    """Replay every healthy scenario ``count`` times (jittered timing); (plays, false teardowns)."""
    rng = random.Random(seed)
    how = f"with jittered timing (seed {seed})" if jitter else "exactly as written"
    print(f"\nHealthy scenarios replayed {count} times each {how}:")
    header = f"{'scenario':<20} {'replays':>7} {'false teardowns':>15} {'other mismatches':>16}  first teardown"
    print(header)
    print("-" * len(header))
    plays = false = 0
    for scenario in [s for s in load_all() if healthy(s)]:
        torn = other = 0
        first = ""
        for _ in range(count):
            r = await play(jittered(scenario, rng) if jitter else scenario, FakeClock(start=AUDIT_DAY))
            plays += 1
            if r.decision_at is not None:
                torn += 1
                if not first:
                    first = f"{r.category} at {r.decision_at:.0f}s: {str((r.conclusive or {}).get('text', ''))[:70]}"
            elif r.mismatches():
                other += 1
                first = first or "; ".join(r.mismatches())[:90]
        false += torn
        print(f"{scenario.name:<20} {count:>7} {torn:>15} {other:>16}  {first or '-'}")
    print(f"\nfalse teardowns: {false} over {plays} healthy replays")
    return plays, false


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replays", type=int, default=20, help="replays of each healthy scenario (0: none)")
    parser.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=True,
                        help="jitter the replays' timing (default: on; --no-jitter replays them exactly)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--no-demo", action="store_true", help="skip timing the wall-clock demo")
    args = parser.parse_args(argv)
    results: list[RunResult] = []
    for scenario in load_all():
        results.append(await play(scenario, FakeClock(start=AUDIT_DAY)))
    header = (f"{'scenario':<18} {'outcome':<24} {'signal s':>8} {'decided s':>9} {'signal->decision s':>18} "
              f"{'billed s':>8} {'spent $':>9} {'/3600 s':>7} {'audit $':>8} {'ratio':>6} {'wall s':>6}")
    print("Simulated seconds since create; poll interval 15 s; teardown policy 'destroy'.")
    print("signal->decision: from the first conclusive signal (or the deadline it was due at) to the")
    print("teardown decision; '-' where the run was good and kept. spent $: billed by the simulator until")
    print("spending stopped (failures) or until ComfyUI was confirmed ready (successes).")
    print("audit $: the audit's approach on the same run (blind collector, 3,600 s timeout) at the")
    print("rented $/h (china-cheapest: at the China offer the audit's UA-only filter rents).")
    print("billed s: seconds since create until spending stopped (failures) or ComfyUI was confirmed")
    print("ready (successes); /3600 s: billed s as a share of the audit's 3,600 s baseline.")
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
        billed = billed_seconds(r)
        share = "-" if billed is None else f"{billed / BASELINE_S:.3f}"
        print(f"{r.scenario.name:<18} {outcome_text(r):<24} {_s(r.scenario.expect.signal_at):>8} "
              f"{_s(r.decision_at):>9} {_s(delta):>18} {_s(billed):>8} {r.spent:>9.4f} "
              f"{share:>7} {r.baseline_usd:>8.4f} {ratio:>6} {r.wall_seconds:>6.2f}")
    failed = [r for r in results if r.decision_at is not None]
    spent = sum(r.spent for r in failed)
    audit = sum(r.baseline_usd for r in failed)
    print(f"\nfailures: {len(failed)}; worst signal->decision {worst:.0f} s (target: <= one poll, 15 s); "
          f"spent ${spent:.4f} vs the audit's ${audit:.4f} ({audit / spent:.0f}x)")
    print(f"scenarios not matching their expectation: {mismatched}")
    caught = [r for r in results if r.scenario.preflight_blocks]
    unpaid = [r.scenario.name for r in caught if r.spent > 0 or r.instance_id is not None]
    print(f"preflight-catchable scenarios: {len(caught)}, spent $"
          f"{sum(r.spent for r in caught):.4f}{' (rented: ' + ', '.join(unpaid) + ')' if unpaid else ''}")
    silent_ok = True
    for r in results:
        if r.scenario.name in SILENT:
            billed = billed_seconds(r)
            ok = billed is not None and billed <= SILENT_LIMIT_S
            silent_ok = silent_ok and ok
            print(f"silent failure {r.scenario.name}: {_s(billed)} s billed "
                  f"({'within' if ok else 'OVER'} {SILENT_LIMIT_S:.0f} s, a tenth of the baseline)")
    false = 0
    if args.replays > 0:
        _, false = await replays(args.replays, args.seed, jitter=args.jitter)
    if args.no_demo:
        return 0 if mismatched == 0 and not unpaid and silent_ok and false == 0 else 1

    t0 = time.monotonic()
    shown = io.StringIO()
    code = await run_demo("all", speed=DEFAULT_SPEED, out=shown)
    print(f"\n`python -m bot demo --scenario all` at x{DEFAULT_SPEED:g}: {time.monotonic() - t0:.1f} s wall, "
          f"exit {code}")
    for line in shown.getvalue().splitlines():
        if line.startswith("MISMATCH"):
            print(f"  {line}")
    return 0 if mismatched == 0 and code == 0 and not unpaid and silent_ok and false == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Bench: Vast API calls per status poll, and the client's per-request overhead on loopback.

1. One status poll (``list_instances()``) with 1, 25 and 100 tracked instances: how many API
   calls it makes (target: one paginated list call per 25 instances, no per-instance calls), and
   how much spacing wait the default per-endpoint spacing adds to it (simulated seconds).
2. Per-request latency through ``VastClient`` (spacing 0) against the simulator on 127.0.0.1,
   median and p95 over a few hundred calls, next to a bare ``httpx`` request to the same endpoint;
   the difference is the client's own overhead (retry wrapper, pacing, parsing into models).

Run: .venv/bin/python bench/bench_vast_client.py [--calls 400]   (finishes in a few seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

from bot.sim.api import VastSim
from bot.vast.client import DEFAULT_MIN_SPACING, LIST, NO_SPACING, VastClient

KEY = "bench-key"


class JumpClock:
    """Simulated time that jumps forward on every sleep, so spacing waits cost no real time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)


async def calls_per_poll() -> None:
    print("1. API calls made by one status poll (list_instances)")
    print(f"   {'tracked':>8} {'calls':>6} {'list pages':>11} {'per-instance':>13} {'spacing wait (sim s)':>21}")
    for tracked in (1, 25, 100):
        clock = JumpClock()
        sim = VastSim(clock, api_key=KEY)
        base = await sim.start()
        try:
            for n in range(tracked):
                sim.seed_instance(label=f"vastops:bench:{n}")
            async with VastClient(base, KEY, clock=clock, min_spacing=DEFAULT_MIN_SPACING) as client:
                await client.list_instances()  # warm the connection; its call is not counted
                await clock.sleep(DEFAULT_MIN_SPACING[LIST])  # a real poll interval apart
                client.stats.clear()
                before = len(sim.requests)
                start = clock.now()
                instances = await client.list_instances()
                waited = clock.now() - start
                assert len(instances) == tracked
                received = sim.requests[before:]
                pages = sum(1 for r in received if r.endpoint == LIST)
                others = sum(1 for r in received if r.endpoint != LIST)
                print(f"   {tracked:>8} {sum(client.stats.values()):>6} {pages:>11} {others:>13} {waited:>21.1f}")
        finally:
            await sim.stop()


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


async def _time(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(20):  # warm-up
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples


async def overhead(calls: int) -> None:
    print(f"\n2. Per-request latency on loopback, {calls} calls each (ms)")
    clock = JumpClock()
    sim = VastSim(clock, api_key=KEY)
    base = await sim.start()
    try:
        instance_id = sim.seed_instance(label="vastops:bench:one")
        for n in range(24):
            sim.seed_instance(label=f"vastops:bench:{n}")
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=base, headers=headers) as raw, VastClient(
            base, KEY, clock=clock, min_spacing=NO_SPACING
        ) as client:
            rows = [
                ("current_user", lambda: raw.get("/api/v0/users/current/"), client.current_user),
                ("get_instance", lambda: raw.get(f"/api/v0/instances/{instance_id}/"),
                 lambda: client.get_instance(instance_id)),
                ("list_instances (25 rows)", lambda: raw.get("/api/v1/instances/", params={"limit": 25}),
                 client.list_instances),
            ]
            print(f"   {'operation':<26} {'bare httpx med/p95':>19} {'VastClient med/p95':>19} {'overhead med':>13}")
            for name, bare_call, client_call in rows:
                bare_med, bare_p95 = _summary(await _time(calls, bare_call))
                cli_med, cli_p95 = _summary(await _time(calls, client_call))
                print(f"   {name:<26} {bare_med:>8.2f} / {bare_p95:<8.2f} {cli_med:>8.2f} / {cli_p95:<8.2f}"
                      f" {cli_med - bare_med:>12.2f}")
    finally:
        await sim.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="timed calls per operation")
    args = parser.parse_args()
    await calls_per_poll()
    await overhead(args.calls)


if __name__ == "__main__":
    asyncio.run(main())

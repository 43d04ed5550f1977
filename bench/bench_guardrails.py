"""How long the audit report and a budget check take on a large history.

Fills a fresh SQLite file with N destroyed rentals over the past 30 days (each with a milestone,
a verdict, a receipt; one in five with a finding and a teardown decision) plus 20 running ones,
then times ``build_report`` over the last 7 days and 30 days, and ``check_rent`` / ``due_alerts``
(the work /rent and the periodic budget check add).
Run: .venv/bin/python -m bench.bench_guardrails   (a few seconds)
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

from bot.audit import build_report, render_text
from bot.budget import check_rent, due_alerts
from bot.db.models import RentalState
from bot.db.store import Store
from bot.settings import Settings

RENTALS = 10_000
NOW = 1_700_000_000.0
DAY = 86400.0


async def fill(store: Store, rng: random.Random) -> None:
    for i in range(RENTALS + 20):
        start = NOW - rng.uniform(0, 30 * DAY)
        running = i >= RENTALS
        failed = not running and i % 5 == 0
        r = await store.create_rental(label=f"vastops-b{i}", requester_id=1000 + i % 12,
                                      requester_name=f"user{i % 12}", offer_id=i, quoted_dph=0.3, now=start,
                                      state=RentalState.READY, machine_id=rng.randrange(400), host_id=1,
                                      gpu_name="RTX 4090", num_gpus=1, dph_total=0.3, geolocation="Texas, US",
                                      instance_id=i + 1, started_at=start)
        end = start + rng.uniform(300, 4 * 3600)
        await store.append_event(r.id, kind="milestone", payload={"name": "comfyui_ready"}, ts=start + 240)
        if failed:
            await store.append_event(r.id, kind="finding", ts=start + 200, payload={
                "category": "stalled", "rule": "engine.deadline.comfyui_ready", "stops_run": True})
            await store.append_event(r.id, kind="decision", ts=start + 210, payload={
                "reason": "stalled", "evidence": {"category": "stalled", "text": "no progress", "advice": "x"}})
        if running:
            continue
        await store.append_event(r.id, kind="verdict", payload={"verdict": "failed" if failed else "ready"}, ts=end)
        await store.update_rental(r.id, now=end, ended_at=end)
        await store.transition_rental(r.id, to=RentalState.DESTROYED, now=end)
        await store.append_event(r.id, kind="receipt", ts=end, payload={
            "cost_usd": round((end - start) * 0.3 / 3600, 4), "duration_s": end - start, "by": "engine",
            "verdict": "failed" if failed else "ready"})


async def timed(label: str, make: object, repeat: int = 3) -> None:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        await make()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    print(f"{label:<48} {best * 1000:8.1f} ms")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.db", synchronous="NORMAL")
        t0 = time.perf_counter()
        async with store.transaction():
            await fill(store, random.Random(7))
        print(f"filled {RENTALS:,} rentals (+20 running) in {time.perf_counter() - t0:.1f} s")
        settings = Settings(_env_file=None, budget_team_daily=100.0, budget_user_daily=10.0,  # type: ignore[call-arg]
                            budget_team_weekly=500.0, budget_user_weekly=50.0)
        await timed("audit, 7 days (report + text)", lambda: _report(store, 7))
        await timed("audit, 30 days (report + text)", lambda: _report(store, 30))
        await timed("budget gate for one /rent (check_rent)",
                    lambda: check_rent(store, settings, NOW, user_id=1003, dph=0.3), repeat=20)
        await timed("periodic budget check (due_alerts, 12 users)", lambda: due_alerts(store, settings, NOW))
        await store.close()


async def _report(store: Store, days: int) -> None:
    report = await build_report(store, since=NOW - days * DAY, now=NOW)
    render_text(report)


if __name__ == "__main__":
    asyncio.run(main())

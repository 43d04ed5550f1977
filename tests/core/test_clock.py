"""The injected clocks."""

from __future__ import annotations

import asyncio

from bot.clock import FakeClock, ScaledClock


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper("b", 20)), asyncio.create_task(sleeper("a", 10))]
    await clock.advance(5)
    assert woke == []
    await clock.advance(30)
    await asyncio.gather(*tasks)
    assert woke == [("a", 110.0), ("b", 120.0)]
    assert clock.now() == 135.0


async def test_fake_clock_runs_a_polling_loop_instantly() -> None:
    clock = FakeClock()
    polls: list[float] = []

    async def loop() -> None:
        while True:
            polls.append(clock.now())
            await clock.sleep(15)

    task = asyncio.create_task(loop())
    await clock.advance(3600)
    task.cancel()
    assert len(polls) == 241  # t=0 and every 15 s for an hour


async def test_scaled_clock_compresses_time() -> None:
    clock = ScaledClock(speed=1000.0, start=0.0)
    await clock.sleep(50)  # 50 ms real
    assert 45 <= clock.now() < 5000  # loose: only the scaling is checked

"""The per-user command cooldown on a FakeClock."""

from __future__ import annotations

import pytest

from bot.clock import FakeClock
from bot.cooldown import MAX_TRACKED, Cooldown


async def test_a_second_run_inside_the_cooldown_is_told_the_wait() -> None:
    clock = FakeClock()
    cooldown = Cooldown(clock, 10)
    assert cooldown.try_start("status", 1) == 0
    await clock.advance(4)
    assert cooldown.try_start("status", 1) == pytest.approx(6)
    assert cooldown.try_start("status", 2) == 0  # per user
    assert cooldown.try_start("rent", 1) == 0  # per command
    await clock.advance(6)
    assert cooldown.try_start("status", 1) == 0  # over: runs, and a new cooldown starts
    assert cooldown.try_start("status", 1) == pytest.approx(10)


async def test_a_refused_run_does_not_extend_the_cooldown() -> None:
    clock = FakeClock()
    cooldown = Cooldown(clock, 10)
    cooldown.try_start("logs", 1)
    for _ in range(9):
        await clock.advance(1)
        assert cooldown.try_start("logs", 1) > 0
    await clock.advance(1)
    assert cooldown.try_start("logs", 1) == 0


def test_zero_turns_it_off_and_a_per_command_value_wins() -> None:
    clock = FakeClock()
    off = Cooldown(clock, 0, per_command={"rent": 60})
    assert off.try_start("status", 1) == 0 and off.try_start("status", 1) == 0
    assert off.try_start("rent", 1) == 0 and off.try_start("rent", 1) == pytest.approx(60)
    with pytest.raises(ValueError):
        Cooldown(clock, -1)


async def test_a_clock_that_went_back_does_not_lock_a_user_out() -> None:
    clock = FakeClock(start=1_000_000.0)
    cooldown = Cooldown(clock, 10)
    cooldown.try_start("status", 1)
    clock._now -= 3600  # an NTP step back: the earlier start is in the future
    assert cooldown.try_start("status", 1) == 0


async def test_memory_stays_bounded() -> None:
    clock = FakeClock()
    cooldown = Cooldown(clock, 5)
    for user in range(MAX_TRACKED):
        cooldown.try_start("status", user)
    await clock.advance(6)
    cooldown.try_start("status", MAX_TRACKED + 1)
    assert len(cooldown._last) == 1

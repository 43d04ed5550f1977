"""The watcher's calls go before queued command calls to the same endpoint, within Vast's spacing.

Sixty /status clicks used to queue sixty instance lists in front of the watcher's poll (one poll
took 92 s). Measured in simulated time on the FakeClock, against the simulator over loopback.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable

from bot.clock import FakeClock
from bot.vast.client import DEFAULT_MIN_SPACING, DESTROY, LIST, Priority, VastClient
from tests.vast.helpers import ClientFactory, SimFactory, drive

SPACING = DEFAULT_MIN_SPACING[LIST]


async def _finished_at(clock: FakeClock, call: Awaitable[object]) -> float:
    await call
    return clock.now()


async def _burst_then_poll(clock: FakeClock, client: VastClient, commands: VastClient,
                           n: int = 60) -> tuple[float, list[float]]:
    """``n`` command lists queued, then the watcher's poll: (seconds the poll took, when each command ended)."""
    burst = [asyncio.ensure_future(_finished_at(clock, commands.list_instances())) for _ in range(n)]
    for _ in range(5):
        await asyncio.sleep(0)  # the burst is queued (its first call in flight) before the poll
    start = clock.now()
    poll = asyncio.ensure_future(_finished_at(clock, client.list_instances()))
    done = await drive(clock, asyncio.gather(poll, *burst))
    return done[0] - start, list(done[1:])


async def test_a_burst_of_command_lists_does_not_delay_the_watchers_poll(
    make_sim: SimFactory, make_client: ClientFactory, clock: FakeClock
) -> None:
    sim = await make_sim(rate_limits={LIST: 1.0})
    client = make_client(sim.base_url, min_spacing=DEFAULT_MIN_SPACING)
    sim.seed_instance(label="watched")
    took, commands_done = await _burst_then_poll(clock, client, client.with_priority(Priority.COMMAND))
    # At most the one command call already in flight, then the spacing: never the queue behind it.
    assert took <= 2 * SPACING, f"the watcher's poll waited {took:.0f}s behind commands"
    assert max(commands_done) - min(commands_done) >= 58 * SPACING  # the commands still all ran, spaced
    assert all(r.status == 200 for r in sim.requests_to(LIST)), "priority must not break Vast's spacing"
    times = [r.t for r in sim.requests_to(LIST)]
    assert min(b - a for a, b in itertools.pairwise(times)) >= SPACING


async def test_calls_of_one_priority_keep_their_order(
    make_sim: SimFactory, make_client: ClientFactory, clock: FakeClock
) -> None:
    """Without a command lane everything is equally urgent: first come, first served (as before)."""
    sim = await make_sim(rate_limits={LIST: 1.0})
    client = make_client(sim.base_url, min_spacing=DEFAULT_MIN_SPACING)
    took, commands_done = await _burst_then_poll(clock, client, client, n=10)
    assert took >= 10 * SPACING  # the poll queued behind all ten
    assert commands_done == sorted(commands_done)


async def test_a_destroy_from_a_command_is_as_urgent_as_the_watchers(
    make_sim: SimFactory, make_client: ClientFactory, clock: FakeClock
) -> None:
    """Stopping spend is never pushed back: /destroy's DELETEs keep their place before a later
    watcher destroy (first come, first served between destroys)."""
    sim = await make_sim()
    client = make_client(sim.base_url, min_spacing={DESTROY: 3.0})
    commands = client.with_priority(Priority.COMMAND)
    ids = [sim.seed_instance(label=f"i{n}") for n in range(6)]
    queued = [asyncio.ensure_future(_finished_at(clock, commands.destroy_instance(i, confirm=False)))
              for i in ids[:5]]
    for _ in range(5):
        await asyncio.sleep(0)
    watcher = asyncio.ensure_future(_finished_at(clock, client.destroy_instance(ids[5], confirm=False)))
    done = await drive(clock, asyncio.gather(watcher, *queued))
    assert done[0] >= max(done[1:]), "a command's destroy was pushed behind a later one"


async def test_a_cancelled_waiter_does_not_stall_the_endpoint(
    make_sim: SimFactory, make_client: ClientFactory, clock: FakeClock
) -> None:
    sim = await make_sim()
    client = make_client(sim.base_url, min_spacing=DEFAULT_MIN_SPACING)
    commands = client.with_priority(Priority.COMMAND)
    first = asyncio.ensure_future(commands.list_instances())
    waiting = [asyncio.ensure_future(commands.list_instances()) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    waiting[1].cancel()
    poll = asyncio.ensure_future(client.list_instances())
    await drive(clock, asyncio.gather(first, poll, waiting[0], waiting[2]))
    assert waiting[1].cancelled()
    # Nothing is left holding the turn: another call goes straight through.
    await drive(clock, client.list_instances())

"""Silent failures decided sooner without false teardowns: a download whose byte counter stops
(heartbeats notwithstanding), and SSH that never comes while Vast shows the port mapped.

Against the real pieces of ``test_engine``'s Rig: the Vast simulator over loopback HTTP, a real
asyncssh server per instance, a real SQLite file, a FakeClock moved one poll at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.watch.events import EV_DECISION, EV_FINDING
from tests.watch.engine_helpers import Rig, make_rig
from tests.watch.helpers import POLL, ev, kinds

# Generous general timeouts, so only the rules under test can decide.
QUIET = {"stall_timeout": 300.0, "ssh_ready_deadline": 600.0, "download_stall_timeout": 120.0,
         "ssh_refused_grace": 120.0}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in make_rig(tmp_path):
        yield r


def tqdm(name: str, done_g: float, total_g: float, rate: str) -> str:
    pct = int(100 * done_g / total_g)
    return f"\r{name}: {pct:3d}%|{'█' * (pct // 10):<10}| {done_g:.2f}G/{total_g:.1f}G [01:02<03:04, {rate}]"


async def _started(rig: Rig) -> tuple[int, int]:
    await rig.open_engine(**QUIET)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("model.start", seq=2, name="flux.safetensors", total=23_800_000_000))
    await rig.poll()
    return rental.id, iid


async def test_a_download_stuck_under_heartbeats_is_a_stall_at_the_download_timeout(rig: Rig) -> None:
    rental_id, iid = await _started(rig)
    seq = 3
    for done in (1_000_000_000, 2_000_000_000):
        rig.append(iid, ev("model.progress", seq=seq, name="flux.safetensors", bytes=done, total=23_800_000_000))
        seq += 1
        await rig.poll(2)
    moved_at = rig.clock.now() - POLL  # the poll that read the last advance
    # From here the counter is stuck, while a heartbeat and the same count keep the log growing.
    for _ in range(12):
        rig.append(iid, ev("heartbeat", seq=seq, step="model:flux.safetensors")
                   + ev("model.progress", seq=seq + 1, name="flux.safetensors", bytes=2_000_000_000,
                        total=23_800_000_000))
        seq += 2
        await rig.poll()
        if kinds(await rig.events(rental_id), EV_DECISION):
            break
    events = await rig.events(rental_id)
    decisions = [e for e in events if e.kind == EV_DECISION]
    assert decisions, "a download stuck at 2 GB under heartbeats was never called stalled"
    [conclusive] = [f for f in kinds(events, EV_FINDING) if f.get("stops_run")]
    assert conclusive["rule"] == "engine.deadline.download_stalled"
    assert "flux.safetensors" in conclusive["text"] and "2.00 GB" in conclusive["text"]
    # At the download timeout (120 s) after the counter last moved, well before STALL_TIMEOUT (300 s).
    assert decisions[0].ts - moved_at <= 120 + POLL
    assert iid not in rig.sim.instances


async def test_a_slow_but_advancing_download_is_not_a_stall(rig: Rig) -> None:
    rental_id, iid = await _started(rig)
    seq, done = 3, 0
    # Twenty minutes at ~3 MB/s: the counter moves a little every 30 s, heartbeats in between.
    for _ in range(40):
        done += 90_000_000
        rig.append(iid, ev("heartbeat", seq=seq, step="model:flux.safetensors")
                   + ev("model.progress", seq=seq + 1, name="flux.safetensors", bytes=done, total=23_800_000_000))
        seq += 2
        await rig.poll(2)
    events = await rig.events(rental_id)
    assert kinds(events, EV_DECISION) == []
    assert [f for f in kinds(events, EV_FINDING) if f.get("stops_run")] == []


async def test_tqdm_progress_lines_are_read_slow_is_alive_and_stuck_is_a_stall(rig: Rig) -> None:
    rental_id, iid = await _started(rig)
    # huggingface_hub's own bar, rewritten with \r: slow (0.05 GB every 45 s) but moving.
    done = 0.0
    for _ in range(16):
        done += 0.05
        rig.append(iid, tqdm("flux1-dev.safetensors", done, 23.8, "1.11MB/s") + "\n")
        await rig.poll(3)
    assert kinds(await rig.events(rental_id), EV_DECISION) == []
    # Stuck: the bar is redrawn with the same count (its rate decaying), for minutes.
    for _ in range(14):
        rig.append(iid, tqdm("flux1-dev.safetensors", done, 23.8, "0.00B/s") + "\n")
        await rig.poll()
    events = await rig.events(rental_id)
    [conclusive] = [f for f in kinds(events, EV_FINDING) if f.get("stops_run")]
    assert conclusive["rule"] == "engine.deadline.download_stalled"
    assert "tqdm" in conclusive["text"]


async def test_ssh_refused_with_the_port_mapped_and_a_quiet_container_log_is_conclusive(rig: Rig) -> None:
    rig.refuse_forever = True
    await rig.open_engine(**QUIET)
    rental, iid = await rig.rent()
    chatter = "comfyui startup paused until instance provisioning has completed (/.provisioning present)\n"
    # The image boots, then only repeats itself; our script never runs.
    rig.sim.set_container_logs(iid, lambda: "booting image\n" + chatter * int(rig.clock.now() % 97 + 1))
    await rig.poll(30)
    events = await rig.events(rental.id)
    decisions = [e for e in events if e.kind == EV_DECISION]
    assert decisions, "SSH never came and the container log showed nothing: yet no teardown"
    conclusive = [f for f in kinds(events, EV_FINDING) if f.get("stops_run")]
    assert conclusive[0]["rule"] == "engine.deadline.ssh_refused"
    assert conclusive[0]["category"] == "ssh_unreachable"
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.started_at is not None
    # Long before the 600 s SSH deadline: within a tenth of the audit's hour.
    assert decisions[0].ts - current.started_at <= 360


async def test_ssh_refused_while_the_container_log_progresses_keeps_the_instance(rig: Rig) -> None:
    rig.refuse_forever = True
    await rig.open_engine(**QUIET)
    rental, iid = await rig.rent()
    start = rig.clock.now()

    def container() -> str:
        # The image's own boot downloads something for minutes (wget's bar, the count moving),
        # before our script starts: SSH refuses all along.
        elapsed = rig.clock.now() - start
        lines = ["booting image"]
        lines += [f"ComfyUI-frontend.tar.gz  {min(99, int(elapsed // 10))}%[===>     ]  {elapsed * 1.5:.1f}M  "
                  "1.50MB/s    eta 2m"]
        return "\n".join(lines) + "\n"

    rig.sim.set_container_logs(iid, container)
    await rig.poll(30)  # seven and a half minutes
    events = await rig.events(rental.id)
    assert kinds(events, EV_DECISION) == [], "a container log that progresses must keep the instance"


async def test_a_tool_bar_left_short_of_100_percent_is_no_stall_once_the_script_moves_on(rig: Rig) -> None:
    rental_id, iid = await _started(rig)
    rig.append(iid, ev("node.reqs", "start", seq=3, name="ComfyUI-InstantID"))
    for done in (0.10, 0.20, 0.35):  # the bar's last redraw says 97%: the file was done all the same
        rig.append(iid, tqdm("antelopev2.zip", done, 0.361, "1.07MB/s") + "\n")
        await rig.poll()
    rig.append(iid, ev("node.reqs", "ok", seq=4, name="ComfyUI-InstantID", rc=0))
    await rig.poll()
    # Four quiet minutes follow (heartbeats only): under STALL_TIMEOUT, and no transfer is under way.
    for n in range(16):
        rig.append(iid, ev("heartbeat", seq=5 + n, step="node:ComfyUI-InstantID"))
        await rig.poll()
    assert kinds(await rig.events(rental_id), EV_DECISION) == []


async def test_an_empty_container_log_proves_nothing_about_ssh(rig: Rig) -> None:
    rig.refuse_forever = True
    await rig.open_engine(**{**QUIET, "ssh_ready_deadline": 1e6})
    rental, iid = await rig.rent()
    # Vast has no container log to give (its upload lags or failed): no evidence either way, so
    # only the SSH deadline may decide, never the quiet-container rule.
    rig.sim.set_container_logs(iid, "")
    await rig.poll(30)
    assert kinds(await rig.events(rental.id), EV_DECISION) == []

"""The watch engine against real pieces: the Vast simulator over loopback HTTP, a real asyncssh
server per instance serving a log the test grows between polls, and a real SQLite file.

Time is a FakeClock: each ``poll()`` advances it by one poll interval and runs one engine tick.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.db.models import Event, RentalState
from bot.watch.engine import (
    EV_DECISION,
    EV_FINDING,
    EV_LOG_ROTATED,
    EV_MILESTONE,
    EV_NOISE,
    EV_RECEIPT,
)
from tests.watch.engine_helpers import Rig, make_rig, milestone_names
from tests.watch.helpers import POLL, ev, kinds


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in make_rig(tmp_path):
        yield r


async def test_comfyui_ready_run_with_port_forwarding_noise_is_not_a_failure(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)  # created -> loading -> running
    rig.append(iid, ev("run.start", seq=1))
    for _ in range(30):
        rig.append(iid, "Error: remote port forwarding failed for listen port 34656\n")
    rig.append(iid, ev("pip", seq=2, n=3) + ev("torch", seq=3, ver="2.5.1+cu124", changed=False))
    await rig.poll()
    rig.append(iid, ev("run.done", seq=4, rc=0, nodes_ok=0, nodes_fail=0, models_ok=0, models_fail=0))
    await rig.poll()
    rig.comfy.up = True
    await rig.poll()
    events = await rig.events(rental.id)
    names = milestone_names(events)
    for name in ("instance_created", "container_running", "ssh_ready", "provisioning_started",
                 "provisioning_complete", "comfyui_ready"):
        assert name in names
    assert names.index("provisioning_complete") < names.index("comfyui_ready")
    assert kinds(events, EV_DECISION) == []
    assert all(f["category"] != "platform_noise" for f in kinds(events, EV_FINDING))
    assert kinds(events, EV_NOISE)[-1]["total"] == 30
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.state == RentalState.READY
    assert rental.id in rig.engine.watches  # type: ignore[union-attr]


async def test_comfyui_is_not_ready_until_system_stats_answers(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("run.done", seq=2, rc=0))
    rig.append(iid, "To see the GUI go to: http://127.0.0.1:18188\n")
    await rig.poll(3)
    assert "comfyui_ready" not in milestone_names(await rig.events(rental.id))
    rig.comfy.up = True
    await rig.poll()
    assert "comfyui_ready" in milestone_names(await rig.events(rental.id))


async def test_refused_ssh_during_boot_is_silent_then_collection_starts(rig: Rig) -> None:
    rig.boot_delay = 90.0
    await rig.open_engine(ssh_boot_grace=180.0)
    rental, iid = await rig.rent()
    rig.append(iid, ev("run.start", seq=1))
    await rig.poll(5)  # running at ~35 s; SSH refused until 90 s
    events = await rig.events(rental.id)
    assert "ssh_ready" not in milestone_names(events)
    assert kinds(events, EV_FINDING) == []
    await rig.poll(3)
    events = await rig.events(rental.id)
    assert "ssh_ready" in milestone_names(events)
    assert "provisioning_started" in milestone_names(events)
    assert kinds(events, EV_FINDING) == []


async def test_ssh_unreachable_past_the_grace_falls_back_to_container_logs(rig: Rig) -> None:
    rig.refuse_forever = True
    await rig.open_engine(ssh_boot_grace=60.0, ssh_ready_deadline=600.0)
    rental, iid = await rig.rent()
    rig.sim.set_container_logs(iid, "booting\n" + ev("run.start", seq=1))
    await rig.poll(10)
    events = await rig.events(rental.id)
    findings = kinds(events, EV_FINDING)
    assert [f["category"] for f in findings] == ["ssh_unreachable"]
    assert findings[0]["severity"] == "warn"
    # The watch went on through the container log.
    assert "provisioning_started" in milestone_names(events)
    assert kinds(events, EV_DECISION) == []


async def test_rotation_is_read_again_from_the_start_and_said(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + "a long line of output\n" * 50)
    await rig.poll()
    rig.log_file(iid).write_bytes(ev("pip", seq=2, n=1).encode())  # truncated and rewritten, shorter
    await rig.poll()
    events = await rig.events(rental.id)
    rotated = kinds(events, EV_LOG_ROTATED)
    assert len(rotated) == 1 and "from the start" in rotated[0]["text"]
    assert "packages_installed" in milestone_names(events)


async def test_missing_log_with_a_differently_named_one_present(rig: Rig) -> None:
    await rig.open_engine(log_path="/workspace/provision_core.log")
    rental, iid = await rig.rent()
    rig.append(iid, "provisioning...\n", path="/workspace/provision_v3.log")
    await rig.poll(8)
    events = await rig.events(rental.id)
    findings = kinds(events, EV_FINDING)
    assert findings and findings[0]["category"] == "config"
    assert "/workspace/provision_core.log" in findings[0]["text"]
    assert "/workspace/provision_v3.log" in findings[0]["text"]
    assert kinds(events, EV_DECISION)[0]["action"] == "destroy"
    assert len(kinds(events, EV_RECEIPT)) == 1
    assert iid not in rig.sim.instances


async def test_disk_full_is_torn_down_within_one_poll(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("model.start", seq=2, name="flux.safetensors"))
    await rig.poll()
    written_at = rig.clock.now()
    rig.append(iid, "curl: (23) Failure writing output to destination\n"
                    "OSError: [Errno 28] No space left on device\n")
    await rig.poll()
    events = await rig.events(rental.id)
    decision = [e for e in events if e.kind == EV_DECISION]
    assert decision and decision[0].payload["evidence"]["category"] == "disk_full"
    assert decision[0].ts - written_at <= POLL
    receipt = kinds(events, EV_RECEIPT)
    assert receipt and receipt[0]["verdict"] == "failed"
    assert iid not in rig.sim.instances


async def test_a_stall_is_torn_down_at_the_stall_timeout(rig: Rig) -> None:
    await rig.open_engine(stall_timeout=120.0)
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1) + ev("model.start", seq=2, name="big.safetensors"))
    await rig.poll()
    last_progress = rig.clock.now()
    for i in range(12):  # heartbeats keep coming: growth, but not progress
        rig.append(iid, ev("heartbeat", seq=3 + i, step="models"))
        await rig.poll()
    events = await rig.events(rental.id)
    stall = [e for e in events if e.kind == EV_FINDING and e.payload["category"] == "stalled"]
    assert len(stall) == 1
    assert 120.0 <= stall[0].ts - last_progress <= 120.0 + POLL
    assert kinds(events, EV_RECEIPT)


async def test_secrets_and_mentions_in_log_lines_are_redacted_before_storage(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1)
               + "Traceback: token hf_secretvalue1234567890abcdefghijkl rejected, see ?token=abcdef123456\n")
    await rig.poll()
    raw = json.dumps([e.payload for e in await rig.events(rental.id)])
    assert "hf_secretvalue1234567890abcdefghijkl" not in raw
    assert "abcdef123456" not in raw


async def test_cost_steps_and_the_dollar_cap(rig: Rig) -> None:
    await rig.open_engine(cost_step=0.01, rental_dollar_cap=0.05, stall_timeout=1e6, comfyui_ready_deadline=1e6,
                          provision_deadline=1e6)
    rental, iid = await rig.rent()
    rig.append(iid, ev("run.start", seq=1))
    dph = rental.quoted_dph or 0
    hours_to_cap = 0.05 / dph
    await rig.poll(int(hours_to_cap * 3600 / POLL) + 3)
    for _ in range(10):  # the GPU bills only once running: the cap comes a few polls after the quote says
        if kinds(await rig.events(rental.id), EV_RECEIPT):
            break
        await rig.poll()
    events = await rig.events(rental.id)
    steps = [p["step"] for p in kinds(events, "cost")]
    assert steps[:5] == [0.01, 0.02, 0.03, 0.04, 0.05]
    decision = kinds(events, EV_DECISION)
    assert decision and "cap" in decision[0]["evidence"]["text"]
    receipt = kinds(events, EV_RECEIPT)[0]
    assert 0.05 <= receipt["cost_usd"] <= 0.05 + dph * POLL / 3600 + 1e-6


async def test_changed_host_key_is_reported_and_not_trusted(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1))
    await rig.poll()
    assert "ssh_ready" in milestone_names(await rig.events(rental.id))
    # Drop the engine's session (as a restart would) and present a different host key.
    await rig.close_engine()
    rig.servers[iid].rotate_host_key()
    await rig.open_engine()
    await rig.poll(2)
    findings = kinds(await rig.events(rental.id), EV_FINDING)
    assert any("host key changed" in f["text"].lower() for f in findings)


LOG_SCRIPT: list[str] = [
    ev("run.start", seq=1) + ev("env", seq=2, gpu="RTX 4090"),
    "Error: remote port forwarding failed for listen port 34656\n" * 3 + ev("pip", seq=3, n=4),
    ev("torch", seq=4, ver="2.5.1", changed=False) + "ERROR: Could not find a version that satisfies the "
    "requirement insightface\n" + ev("node.reqs", "fail", seq=5, name="ReActor", rc=1, required=False),
    "partial line without its newl",
    "ine yet\n" + ev("model.start", seq=6, name="sdxl.safetensors"),
    ev("model.done", seq=7, name="sdxl.safetensors", bytes=6_900_000_000),
    ev("run.done", seq=8, rc=0, nodes_ok=2, nodes_fail=1, models_ok=1, models_fail=0),
]


def comparable(events: list[Event]) -> list[tuple[int, str, str]]:
    return [(e.seq, e.kind, json.dumps(e.payload, sort_keys=True)) for e in events]


async def run_script(rig: Rig, *, crash_at: int | None, cancel_after: int = 0) -> list[Event]:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    for i, chunk in enumerate(LOG_SCRIPT):
        rig.append(iid, chunk)
        await rig.clock.advance(POLL)
        if i == crash_at:
            # Kill the engine in the middle of its poll: cancel the tick after a few loop turns.
            task = asyncio.create_task(rig.engine.tick())  # type: ignore[union-attr]
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await rig.close_engine()
            await rig.open_engine()
            await rig.engine.tick()  # type: ignore[union-attr]
        else:
            await rig.engine.tick()  # type: ignore[union-attr]
    rig.comfy.up = True
    await rig.poll(2)
    return await rig.events(rental.id)


@pytest.mark.parametrize(("crash_at", "cancel_after"), [(2, 0), (2, 5), (3, 40), (4, 25), (6, 60)])
async def test_a_restart_mid_run_loses_no_event_and_duplicates_none(
    tmp_path: Path, rig: Rig, crash_at: int, cancel_after: int
) -> None:
    crashed = await run_script(rig, crash_at=crash_at, cancel_after=cancel_after)
    delivered_ids = [e.id for e in rig.delivered]
    assert len(delivered_ids) == len(set(delivered_ids)), "an event was delivered twice"
    await rig.close_engine()

    # The same run without a crash, on a fresh rig sharing nothing but the scenario.
    control_dir = tmp_path / "control"
    control_dir.mkdir()
    async for control in make_rig(control_dir):
        uninterrupted = await run_script(control, crash_at=None)
    # Same events, same order, same sequence numbers; only the SSH endpoint port differs.
    def strip(events: list[Event]) -> list[tuple[int, str, str]]:
        out = []
        for seq, kind, payload in comparable(events):
            if kind == EV_MILESTONE and '"ssh_ready"' in payload:
                payload = "ssh_ready"
            out.append((seq, kind, payload))
        return out

    assert strip(crashed) == strip(uninterrupted)
    assert "nodes_installed" in milestone_names(crashed)
    assert [p["category"] for p in kinds(crashed, EV_FINDING)].count("dependency") == 2


async def test_a_burst_of_similar_errors_is_one_post_with_every_line(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.append(iid, ev("run.start", seq=1)
               + "  × Building wheel for insightface (pyproject.toml) did not run successfully.\n"
               + "  ERROR: Failed building wheel for insightface\n"
               + "ERROR: Failed to build installable wheels for some pyproject.toml based projects (insightface)\n")
    await rig.poll()
    findings = kinds(await rig.events(rental.id), EV_FINDING)
    assert len(findings) == 1
    assert findings[0]["similar"] == 2 and len(findings[0]["lines"]) == 3
    assert "Failed building wheel" in findings[0]["text"] and "installable wheels" in findings[0]["text"]


async def test_a_destroy_vast_keeps_refusing_is_retried_and_people_are_told_once(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    rig.sim.inject_fault("DELETE", "/api/v0/instances/*", "500", times=4)
    rig.append(iid, ev("run.start", seq=1) + "OSError: [Errno 28] No space left on device\n")
    await rig.poll(4)  # the decision's attempt and three retries fail
    events = await rig.events(rental.id)
    alerts = [f for f in kinds(events, EV_FINDING) if f["rule"] == "engine.destroy_unconfirmed"]
    assert len(alerts) == 1 and alerts[0]["severity"] == "error"
    assert "console" in alerts[0]["advice"]
    assert iid in rig.sim.instances and kinds(events, EV_RECEIPT) == []
    await rig.poll()  # Vast answers again
    events = await rig.events(rental.id)
    assert len(kinds(events, EV_RECEIPT)) == 1
    assert iid not in rig.sim.instances
    assert len([f for f in kinds(events, EV_FINDING) if f["rule"] == "engine.destroy_unconfirmed"]) == 1


async def test_the_comfyui_link_comes_from_vast_never_from_a_log_line(rig: Rig) -> None:
    await rig.open_engine()
    rental, iid = await rig.rent()
    await rig.poll(4)
    # Vast publishes ComfyUI's port on the instance's public address.
    rig.sim.update_instance(iid, ports={**(rig.sim.instances[iid].get("ports") or {}),
                                        "8188/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41888"}]})
    rig.append(iid, ev("run.start", seq=1) + ev("run.done", seq=2, rc=0))
    rig.append(iid, "To see the GUI go to: https://vast-ai-login.example.net:8188\n")
    rig.comfy.up = True
    await rig.poll(3)
    events = await rig.events(rental.id)
    assert "comfyui_ready" in milestone_names(events)
    current = await rig.store.get_rental(rental.id)  # type: ignore[union-attr]
    assert current is not None and current.comfyui_url == "http://127.0.0.1:41888"
    assert not any("example.net" in str(e.payload) for e in events)

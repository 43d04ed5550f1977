"""The pure rules behind the sooner silent-failure decisions (bot.watch.money)."""

from __future__ import annotations

from bot.db.models import Rental, RentalState
from bot.watch.model import Milestone
from bot.watch.money import deadline_finding, ssh_refused_text, stalled_download_text
from bot.watch.state import WatchMemory, WatchPolicy

POLICY = WatchPolicy(ssh_refused_grace=120.0, download_stall_timeout=120.0)


def _rental() -> Rental:
    return Rental(
        id=1, label="vastops-t", requester_id=1, requester_name="u", offer_id=1, machine_id=1, host_id=1,
        gpu_name="RTX 4090", num_gpus=1, quoted_dph=0.5, dph_total=0.5, geolocation="Canada", instance_id=7,
        state=RentalState.PROVISIONING, state_reason=None, request={}, created_at=0.0, updated_at=0.0,
        started_at=0.0, ended_at=None, comfyui_url=None, tunnel_url=None, status_channel_id=None,
        status_message_id=None,
    )


def test_ssh_refused_needs_the_grace_and_a_quiet_container_log_for_as_long() -> None:
    memory = WatchMemory(ssh_port_seen_at=45.0, container_novel_at=165.0, container_read_at=225.0)
    assert ssh_refused_text(memory, POLICY, 225.0) is None  # quiet for 60 s only
    memory.container_read_at = 285.0
    text = ssh_refused_text(memory, POLICY, 285.0)
    assert text is not None and "port mapped" in text and "2m" in text
    memory.container_read_at = 284.0  # a second short of the grace
    assert ssh_refused_text(memory, POLICY, 290.0) is None
    memory.container_read_at = 285.0
    memory.container_novel_at = 285.0  # something new at the last read: alive
    assert ssh_refused_text(memory, POLICY, 285.0) is None
    assert ssh_refused_text(WatchMemory(ssh_port_seen_at=45.0), POLICY, 900.0) is None  # never read: unknown


def test_ssh_refused_is_not_applied_once_provisioning_shows() -> None:
    memory = WatchMemory(ssh_port_seen_at=45.0, container_novel_at=165.0, container_read_at=300.0)
    memory.milestones = {Milestone.CONTAINER_RUNNING.value: 45.0}
    missed = deadline_finding(_rental(), memory, POLICY, 300.0, last_read=300.0)
    assert missed is not None and missed[1] == "ssh_refused"
    memory.milestones[Milestone.PROVISIONING_STARTED.value] = 200.0
    assert deadline_finding(_rental(), memory, POLICY, 300.0, last_read=300.0) is None


def test_a_download_counter_still_for_the_timeout_is_named() -> None:
    memory = WatchMemory(downloads={
        "model:flux1-dev.safetensors": {"bytes": 10_240_000_000, "since": 210.0, "total": 23_802_932_552, "tool": ""},
        "tqdm:other.bin": {"bytes": 5, "since": 300.0, "total": None, "tool": "tqdm"},
    })
    assert stalled_download_text(memory, POLICY, 329.0) is None
    text = stalled_download_text(memory, POLICY, 330.0)
    assert text is not None and "flux1-dev.safetensors" in text and "10.24 GB of 23.80 GB" in text
    assert stalled_download_text(memory, POLICY, None) is None  # nobody read the log: no verdict


def test_a_stalled_download_counts_only_while_provisioning_runs_and_a_human_can_decline_it() -> None:
    memory = WatchMemory(downloads={"model:a": {"bytes": 1, "since": 100.0, "total": None, "tool": ""}})
    memory.milestones = {Milestone.CONTAINER_RUNNING.value: 40.0, Milestone.SSH_READY.value: 45.0,
                         Milestone.PROVISIONING_STARTED.value: 46.0}
    missed = deadline_finding(_rental(), memory, POLICY, 240.0, last_read=240.0)
    assert missed is not None and missed[1] == "download_stalled"
    assert missed[0].rule == "engine.deadline.download_stalled" and missed[0].stops_run
    memory.declined.append("engine.deadline.download_stalled")
    assert deadline_finding(_rental(), memory, POLICY, 240.0, last_read=240.0) is None
    memory.declined.clear()
    memory.milestones[Milestone.PROVISIONING_COMPLETE.value] = 200.0
    assert deadline_finding(_rental(), memory, POLICY, 240.0, last_read=240.0) is None

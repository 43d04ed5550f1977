"""The lease's pure rules, and ComfyUI's queue and history read through a real SSH tunnel (the
simulator's sshd forwarding to the simulator's fake ComfyUI)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.db.models import Rental, RentalState
from bot.settings import Settings
from bot.sim.hosts import FakeComfyUI
from bot.vast.models import Instance
from bot.watch.lease import (
    EXTEND_STEP,
    LeasePolicy,
    LeaseState,
    extension,
    idle_due,
    lease_action,
    observe,
    recheck,
)
from bot.watch.ssh import ComfyActivity
from tests.ssh.helpers import SessionFactory, SimFactory

POLICY = LeasePolicy(duration=3600, max_total=7200, warn_before=600, idle_timeout=1800, price_tolerance=0.05)


def _rental(quoted: float | None = 1.0, request: dict[str, object] | None = None) -> Rental:
    return Rental(id=1, label="r1", requester_id=7, requester_name="rita", offer_id=1, machine_id=1, host_id=1,
                  gpu_name="RTX", num_gpus=1, quoted_dph=quoted, dph_total=None, geolocation="Texas, US",
                  instance_id=5, state=RentalState.READY, state_reason=None, request=request or {},
                  created_at=0.0, updated_at=0.0, started_at=0.0, ended_at=None, comfyui_url=None,
                  tunnel_url=None, status_channel_id=None, status_message_id=None)


def _inst(geo: str | None = "Texas, US", dph: float | None = 1.0) -> Instance:
    return Instance.model_validate({"id": 5, "geolocation": geo, "dph_total": dph})


def test_recheck_country_and_price() -> None:
    assert recheck(_rental(), _inst(), POLICY) is None
    assert recheck(_rental(), _inst(dph=1.049), POLICY) is None  # within 5 %
    assert recheck(_rental(), _inst(dph=0.5), POLICY) is None  # cheaper is no breach
    assert recheck(_rental(), _inst(geo=None, dph=None), POLICY) is None  # not shown yet
    check, why = recheck(_rental(), _inst(dph=1.2), POLICY) or ("", "")
    assert check == "price" and "+20%" in why and "$1.0000/h" in why
    check, why = recheck(_rental(), _inst(geo="Kyiv, Ukraine"), POLICY) or ("", "")
    assert check == "geolocation" and "(UA)" in why
    assert recheck(_rental(quoted=None), _inst(dph=9.0), POLICY) is None  # nothing approved to compare


def test_a_rental_may_ask_for_its_lease_up_to_the_maximum() -> None:
    assert POLICY.lease_for(_rental()) == 3600
    assert POLICY.lease_for(_rental(request={"lease_s": 5400})) == 5400
    assert POLICY.lease_for(_rental(request={"lease_s": 99_999})) == 7200
    assert POLICY.lease_for(_rental(request={"lease_s": True})) == 3600
    settings = Settings(lease_duration="90m", lease_max_total="1h", _env_file=None)  # type: ignore[call-arg]
    assert LeasePolicy.from_settings(settings).max_total == 5400  # never below the lease itself
    with pytest.raises(ValueError):
        Settings(lease_duration="10s", _env_file=None)  # type: ignore[call-arg]


def test_notice_hold_expire_and_the_idle_clock() -> None:
    state = LeaseState(start=0, ends_at=3600, last_activity=0)
    observe(state, ComfyActivity(True, last_prompt="a"), 10)
    assert lease_action(state, 2999, POLICY) == "none"
    assert lease_action(state, 3000, POLICY) == "notice"
    state.noticed = 3600
    assert lease_action(state, 3100, POLICY) == "none"  # one notice per deadline
    observe(state, ComfyActivity(True, running=1, last_prompt="a"), 3600)
    assert lease_action(state, 3600, POLICY) == "hold"
    state.held = 3600
    assert lease_action(state, 3700, POLICY) == "none"  # said once; waits
    observe(state, ComfyActivity(True, last_prompt="b"), 3800)
    assert lease_action(state, 3800, POLICY) == "expire"
    observe(state, None, 3900)  # unreadable: not known to be running a prompt
    assert state.busy is None and lease_action(state, 3900, POLICY) == "expire"


def test_idle_counts_only_between_idle_reads_and_work_resets_it() -> None:
    state = LeaseState(start=0, ends_at=7200, last_activity=0)
    observe(state, ComfyActivity(True, last_prompt="old"), 30)  # the first read is a baseline
    observe(state, ComfyActivity(True, last_prompt="old"), 60)
    assert state.idle_s == 30 and not idle_due(state, 60, POLICY)
    observe(state, ComfyActivity(True, last_prompt="new"), 90)  # a prompt ran between two reads
    assert state.last_activity == 90 and state.idle_s == 30
    observe(state, ComfyActivity(True, last_prompt="new"), 1890)
    assert idle_due(state, 1890, POLICY)
    state.idle_deadline = 2490
    assert state.reason == "idle" and lease_action(state, 1890, POLICY) == "notice"
    observe(state, ComfyActivity(True, pending=1, last_prompt="new"), 2000)
    assert state.idle_deadline is None and state.reason == "lease"  # work resumed: the idle notice lapses


def test_extension_token_step_and_maximum() -> None:
    state = LeaseState(start=0, ends_at=3600, last_activity=0, noticed=3600)
    assert extension(state, 3100, POLICY, token=3500, is_approver=False)[0] is None  # another notice's
    assert extension(state, 3100, POLICY, token=3600, is_approver=False) == (3600 + EXTEND_STEP, "")
    state.ends_at, state.noticed = 7200, 7200
    new_end, why = extension(state, 6700, POLICY, token=7200, is_approver=False)
    assert new_end is None and "approver" in why and "2h00m00s" in why
    assert extension(state, 6700, POLICY, token=7200, is_approver=True) == (7200 + EXTEND_STEP, "")
    idle = LeaseState(start=0, ends_at=7200, last_activity=0, idle_deadline=2400, noticed=2400)
    assert extension(idle, 2000, POLICY, token=2400, is_approver=False) == (7200, "")  # the lease already covers 1 h


@pytest.fixture
async def comfyui() -> AsyncIterator[FakeComfyUI]:
    comfy = FakeComfyUI()
    await comfy.start()
    yield comfy
    await comfy.stop()


async def test_queue_and_history_are_read_through_the_tunnel(make_sim: SimFactory, connect: SessionFactory,
                                                             comfyui: FakeComfyUI) -> None:
    srv = await make_sim(comfyui_port_map={18188: comfyui.port})
    await srv.wait_listening()
    session = await connect(srv)
    loading = await session.comfyui_activity(ports=(18188,))
    assert not loading.ok and "HTTP 502" in loading.detail  # the portal's placeholder: not ComfyUI yet
    comfyui.up = True
    idle = await session.comfyui_activity(ports=(18188, 8188))
    assert idle.ok and not idle.busy and idle.last_prompt is None
    comfyui.start_prompt("p1")
    comfyui.start_prompt("p2")
    busy = await session.comfyui_activity()
    assert busy.ok and (busy.running, busy.pending) == (1, 1) and busy.busy
    comfyui.finish_prompt()
    comfyui.finish_prompt()
    done = await session.comfyui_activity()
    assert done.ok and not done.busy and done.last_prompt == "p2"


async def test_the_idle_lease_rehearsal_tears_the_forgotten_instance_down() -> None:
    from tests.rehearsal.helpers import play_fresh

    result = await play_fresh("idle-lease")
    assert result.mismatches() == [], result.notes
    kinds = [e.kind for e in result.events]
    assert "lease_notice" in kinds and "decision" not in kinds
    receipt = next(e.payload for e in result.events if e.kind == "receipt")
    assert receipt["by"] == "lease" and receipt["reason"].startswith("idle lease")
    assert 6 * 60 <= receipt["idle_s"] <= 8 * 60  # 5 min idle, then the 2 min notice
    assert result.stopped_at is not None and result.stopped_at < 900

"""The rehearsal stage on its own: scenario files, timelines on the clock, the per-instance SSH
server, the fake ComfyUI behind it, container logs through the Vast API, clean-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.clock import FakeClock
from bot.provisioning.contract import EVENT_PREFIX, REQUIRED_FIELDS
from bot.sim.scenarios import ScenarioError, load_all, load_scenario, parse_scenario
from bot.sim.stage import SIM_API_KEY, RehearsalStage, StageSettings, expand_steps, sim_backend
from bot.vast.client import NO_SPACING, VastClient
from bot.vast.models import OfferQuery
from bot.watch.milestones import parse_event
from bot.watch.ssh import SshLogSession, SshTransient, endpoint_for

AUDIT_DAY = 1_770_285_600.0  # 2026-02-05 10:00 UTC, the audit's date


def _client(stage: RehearsalStage, clock: FakeClock) -> VastClient:
    return VastClient(stage.sim.base_url or "", SIM_API_KEY, clock=clock, min_spacing=NO_SPACING)


MINIMAL = {"title": "t", "expect": {"verdict": "ready"}, "baseline": {"seconds": 3600, "why": "w"}}


def test_every_shipped_scenario_loads() -> None:
    names = [s.name for s in load_all()]
    assert len(names) == len(set(names)) >= 10
    for scenario in load_all():
        assert scenario.steps and scenario.title and scenario.baseline.why


@pytest.mark.parametrize(("patch", "message"), [
    ({"step": [{"at": 1, "oops": 2}]}, "unknown key"),
    ({"step": [{"at": 1, "target": "stderr"}]}, "target must be"),
    ({"step": [{"at": 1, "snippet": "nope"}]}, "no snippet"),
    ({"step": [{"at": 1, "out": [{"ev": "env"}]}]}, "needs 'ev' and 'st'"),
    ({"step": [{"out": ["x"]}]}, "missing key 'at'"),
    ({"expect": {"verdict": "fine"}}, "is not one of"),
    ({"expect": {"verdict": "failed", "stop": "signal"}}, "signal_at is required"),
])
def test_malformed_scenarios_are_refused_with_the_key(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario({**MINIMAL, **patch}, "bad")


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="happy"):
        load_scenario("no-such-scenario")


def test_repeats_unroll_inclusively_in_time_order() -> None:
    scenario = parse_scenario({**MINIMAL, "step": [
        {"at": 10, "every": 5, "until": 20, "out": ["tick"]}, {"at": 12, "out": ["once"]}]}, "r")
    times = [(t, step.out[0].line) for t, step in expand_steps(scenario.steps)]
    assert times == [(10, "tick"), (12, "once"), (15, "tick"), (20, "tick")]


async def test_the_stage_plays_a_timeline_over_real_ssh(tmp_path: Path) -> None:
    clock = FakeClock(start=AUDIT_DAY)
    stage = RehearsalStage(load_scenario("happy"), clock, workdir=tmp_path / "stage", logs_delay=0.0)
    settings = await stage.start()
    assert settings.teardown_policy == "destroy" and settings.vast_backend == "sim"
    try:
        async with _client(stage, clock) as vast:
            offer = (await vast.search_offers(OfferQuery(disk_gb=80, max_dph=1.0)))[0]
            instance_id = await vast.create_instance(offer.id, image="vastai/comfyui", disk_gb=80,
                                                     label="vastops-stage-test")
            inst = stage.instances[instance_id]
            endpoint = endpoint_for(await vast.get_instance(instance_id))
            assert endpoint is not None and endpoint.host == "127.0.0.1"

            await clock.advance(30, step=1.0)  # before ssh_at (45 s): the host refuses
            with pytest.raises(SshTransient) as refused:
                await SshLogSession.connect(endpoint, key_path=stage.key_path, known_host_key=None,
                                            connect_timeout=5)
            assert refused.value.kind == "refused"
            assert (await vast.get_instance(instance_id)).actual_status == "loading"

            await clock.advance(30, step=1.0)  # 60 s: running, SSH up, the script has started
            assert (await vast.get_instance(instance_id)).actual_status == "running"
            session = await SshLogSession.connect(endpoint, key_path=stage.key_path, known_host_key=None,
                                                  connect_timeout=5)
            try:
                chunk = await session.read_new(settings.provision_log_path, 0)
                lines = chunk.data.decode().splitlines()
                assert lines
                assert all(line.startswith(EVENT_PREFIX) or "port forwarding" in line for line in lines)
                # Our event lines carry the contract's fields and parse with the engine's parser.
                event = parse_event(lines[0])
                assert event is not None and event.run == "vastops-stage-test" and event.ev == "fetch"
                assert set(REQUIRED_FIELDS) <= set(json.loads(lines[0][len(EVENT_PREFIX):]))
                assert not (await session.check_comfyui()).ok  # Caddy's placeholder, nothing on 18188

                await clock.advance(180, step=1.0)  # 240 s: ComfyUI is up
                check = await session.check_comfyui()
                assert check.ok and check.port == 18188
                grown = await session.read_new(settings.provision_log_path, chunk.new_offset)
                assert b'"ev":"run.done"' in grown.data
                assert b"To see the GUI" not in grown.data  # ComfyUI writes its own log, not ours
                assert await session.exists("/var/log/comfyui.log")
            finally:
                await session.close()

            container = await vast.request_logs(instance_id)
            assert "CUDA 12.8 selected" in container and "To see the GUI go to" in container
            assert inst.container_log() == container

            assert await vast.destroy_instance(instance_id)
            await clock.advance(60, step=1.0)
            assert inst.task is not None and inst.task.done()  # a destroyed instance writes no more
            assert not inst.sshd.listening
    finally:
        await stage.stop()


async def test_a_scenario_can_refuse_ssh_forever(tmp_path: Path) -> None:
    clock = FakeClock(start=AUDIT_DAY)
    stage = RehearsalStage(load_scenario("ssh-never"), clock, workdir=tmp_path / "s", logs_delay=0.0)
    await stage.start()
    try:
        async with _client(stage, clock) as vast:
            offer = (await vast.search_offers(OfferQuery(disk_gb=80, max_dph=1.0)))[0]
            instance_id = await vast.create_instance(offer.id, image="img", disk_gb=80, label="vastops-never")
            await clock.advance(900, step=5.0)
            endpoint = endpoint_for(await vast.get_instance(instance_id))
            assert endpoint is not None
            with pytest.raises(SshTransient):
                await SshLogSession.connect(endpoint, key_path=stage.key_path, known_host_key=None,
                                            connect_timeout=5)
            assert "comfyui startup paused" in await vast.request_logs(instance_id)
    finally:
        await stage.stop()


async def test_own_temporary_directory_is_removed_on_stop() -> None:
    stage = RehearsalStage(load_scenario("stall"), FakeClock(start=AUDIT_DAY))
    await stage.start()
    assert stage.key_path.exists()
    await stage.stop()
    assert not stage.dir.exists()


async def test_sim_backend_puts_the_stage_behind_the_real_bot() -> None:
    # What `VAST_BACKEND=sim python -m bot run` needs: the operator's settings, pointed at the stage.
    operator = StageSettings(discord_guild_id=42, notify_channel_id=43, teardown_policy="propose",
                             poll_interval=30)
    clock = FakeClock(start=AUDIT_DAY)
    async with sim_backend(operator, clock, scenario="port-noise-only") as (settings, vast):
        assert settings.discord_guild_id == 42 and settings.teardown_policy == "propose"
        assert settings.is_sim and settings.ssh_key_path is not None and settings.ssh_key_path.exists()
        offer = (await vast.search_offers(OfferQuery(disk_gb=80, max_dph=1.0)))[0]
        instance_id = await vast.create_instance(offer.id, image="img", disk_gb=80, label="vastops-bot")
        await clock.advance(60, step=1.0)
        endpoint = endpoint_for(await vast.get_instance(instance_id))
        assert endpoint is not None
        session = await SshLogSession.connect(endpoint, key_path=settings.ssh_key_path, known_host_key=None,
                                              connect_timeout=5)
        try:
            assert (await session.read_new(settings.provision_log_path, 0)).size > 0
        finally:
            await session.close()
    assert not settings.ssh_key_path.exists()  # the stage cleaned up after itself

"""Each audit failure, played through the real rental service, watch engine and store, must end
the way its scenario says: verdict and cause, when spending stopped, what the bot said."""

from __future__ import annotations

import pytest

from bot.sim.scenarios import load_scenario, scenario_names
from tests.rehearsal.helpers import Outcome, play_fresh

ALL = scenario_names()
STOPPING = [n for n in ALL if load_scenario(n).expect.stop != "none"]
KEPT = [n for n in ALL if load_scenario(n).expect.stop == "none" and not load_scenario(n).preflight_blocks]
BLOCKED = [n for n in ALL if load_scenario(n).preflight_blocks]


def test_every_audit_failure_has_a_scenario() -> None:
    assert {"happy", "script-404", "gistfile1", "log-path-mismatch", "ssh-refused", "ssh-never", "stall",
            "disk-full", "china-cheapest", "port-noise-only"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
async def test_outcome_matches_the_scenario(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    assert result.mismatches() == [], f"{name}: {result.notes}"
    expect = result.scenario.expect
    assert result.verdict in expect.verdicts
    if expect.category:
        assert result.category == expect.category


@pytest.mark.parametrize("name", STOPPING)
async def test_spending_stops_within_one_poll_of_the_signal(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    signal = result.scenario.expect.signal_at
    assert signal is not None and result.decision_at is not None and result.stopped_at is not None
    # Never before the signal (that would be a guess), at most one poll after it.
    assert signal <= result.decision_at <= signal + result.poll_interval
    assert result.stopped_at <= signal + result.poll_interval
    # The simulator really stopped billing, and what was billed is what ran until then.
    assert result.billing_stopped is True
    assert result.sim_spent == pytest.approx(result.billed_total)
    receipt = [e for e in result.events if e.kind == "receipt"]
    assert len(receipt) == 1 and receipt[0].payload["by"] == "engine"


@pytest.mark.parametrize("name", KEPT)
async def test_good_rentals_are_never_torn_down(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    assert result.verdict in ("ready", "degraded")
    assert result.decision_at is None
    assert not [e for e in result.events if e.kind in ("decision", "teardown_proposed")]
    assert not [f for f in result.findings if f.get("stops_run") or f.get("severity") == "fatal"]
    # Ready means ComfyUI answered /system_stats through SSH, not just a log line.
    ready = [e for e in result.events if e.kind == "milestone" and e.payload["name"] == "comfyui_ready"]
    assert ready and result.knew_at is not None


@pytest.mark.parametrize("name", ["port-noise-only", "happy"])
async def test_noise_is_counted_not_alarmed_on(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    assert not [f for f in result.findings if f.get("category") == "platform_noise"]
    assert not [f for f in result.findings if "remote port forwarding failed" in str(f.get("text"))]
    summaries = [e for e in result.events if e.kind == "noise_summary"]
    assert summaries and summaries[-1].payload["total"] >= 1
    if name == "port-noise-only":
        assert result.verdict == "ready" and result.findings == []
        assert summaries[-1].payload["total"] >= 25


async def test_happy_is_degraded_by_its_two_optional_nodes(outcome: Outcome) -> None:
    result = await outcome("happy")
    assert result.verdict == "degraded"
    texts = " ".join(str(f.get("text")) for f in result.findings)
    assert "ComfyUI-VideoHelperSuite" in texts and "ComfyUI-ReActor" in texts
    assert {f.get("severity") for f in result.findings} <= {"warn", "error"}


async def test_wrong_path_log_is_found_and_both_paths_named(outcome: Outcome) -> None:
    result = await outcome("log-path-mismatch")
    finding = result.conclusive
    assert finding is not None and finding["category"] == "config"
    assert "/workspace/provision_core.log" in finding["text"]
    assert "/workspace/provision_v3.log" in finding["text"]
    assert finding["configured"] == "/workspace/provision_core.log"
    assert finding["candidates"][0] == "/workspace/provision_v3.log"
    # The advice points at the script's log, not at one of the image's own service logs.
    assert "writes /workspace/provision_v3.log" in finding["advice"]


async def test_no_excluded_country_is_rented_even_when_cheapest(outcome: Outcome) -> None:
    result = await outcome("china-cheapest")
    assert result.country not in ("CN", "UA") and result.country is not None
    # The trap was real: with the audit's UA-only filter the cheapest offer is in China.
    pick = result.audit_pick
    assert pick is not None and "China" in str(pick["geolocation"])
    assert pick["dph_total"] < (result.dph or 0)


@pytest.mark.parametrize("name", ALL)
async def test_no_scenario_rents_in_cn_or_ua(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    assert result.country not in ("CN", "UA", None)


async def test_ssh_never_is_decided_from_the_container_log_not_the_deadline(outcome: Outcome) -> None:
    result = await outcome("ssh-never")
    warn = [f for f in result.findings if f["category"] == "ssh_unreachable" and f["severity"] == "warn"]
    assert warn, "past the boot grace the bot says SSH fails, once, as a warning"
    # The container log was read (first at the refused grace, then until it had been quiet as long).
    assert result.sim_calls.get("PUT /api/v0/instances/request_logs/{id}/", 0) >= 3
    assert result.conclusive is not None and result.conclusive["category"] == "ssh_unreachable"
    assert result.conclusive["rule"] == "engine.deadline.ssh_refused"
    assert "port mapped" in result.conclusive["text"]
    # Well before the 600 s SSH deadline: at most a tenth of the audit's 3,600 s billed.
    assert result.stopped_at is not None and result.stopped_at <= 360


async def test_ssh_refused_through_a_long_boot_is_no_false_alarm(outcome: Outcome) -> None:
    result = await outcome("ssh-refused")
    assert result.verdict == "degraded"  # an optional node failed meanwhile; still a good rental
    assert {f["severity"] for f in result.findings} <= {"warn", "error"}
    # What the container log told the bot is not posted again when SSH takes over.
    texts = [f["text"] for f in result.findings]
    assert len(texts) == len(set(texts))
    milestones = {e.payload["name"]: e.ts for e in result.events if e.kind == "milestone"}
    # Provisioning was followed through the container log while SSH refused ...
    assert milestones["provisioning_complete"] < milestones["ssh_ready"]
    # ... and readiness waited for SSH to confirm /system_stats.
    assert milestones["comfyui_ready"] >= milestones["ssh_ready"]


@pytest.mark.parametrize("name", ["script-404", "gistfile1", "log-path-mismatch"])
async def test_the_preflight_blocks_the_broken_script_url(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    if result.preflight is None:
        pytest.skip("bot/provisioning/preflight.py is not available")
    assert result.preflight_blocked is True
    failed = " ".join(c.detail for c in result.preflight.checks if c.status == "fail")
    hint = {"script-404": "7aad3f7", "gistfile1": "provision-reliable.sh",
            "log-path-mismatch": "PROV_LOG_PATH"}
    assert hint[name] in failed


@pytest.mark.parametrize("name", ["happy", "stall", "ssh-refused"])
async def test_the_preflight_passes_our_own_script(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    if result.preflight is None:
        pytest.skip("bot/provisioning/preflight.py is not available")
    assert result.preflight_blocked is False


def test_every_preflight_catch_has_a_scenario() -> None:
    assert {"gated-model", "token-401", "disk-too-small", "cuda-incompatible", "torch-node"} <= set(BLOCKED)


@pytest.mark.parametrize("name", BLOCKED)
async def test_the_preflight_catches_cost_nothing(outcome: Outcome, name: str) -> None:
    result = await outcome(name)
    assert result.preflight_blocked is True and result.instance_id is None and result.spent == 0.0
    assert result.rental is None and not result.events
    # The approver is told what failed and how to fix it, never a token.
    for wanted in result.scenario.preflight["contains"]:
        assert wanted in result.preflight_message
    assert "NotSecret" not in result.preflight_message


async def test_stall_behind_heartbeats_and_noise_is_still_a_stall(outcome: Outcome) -> None:
    result = await outcome("stall-heartbeat")
    assert result.category == "stalled"
    # The log kept growing right up to the teardown: it is progress that stopped, not bytes.
    assert result.scenario.end_of_script > (result.stopped_at or 0)


async def test_slow_script_host_is_not_mistaken_for_a_missing_log(outcome: Outcome) -> None:
    result = await outcome("slow-fetch")
    assert result.verdict == "ready" and result.findings == []


async def test_propose_policy_destroys_when_nobody_answers() -> None:
    # The Discord default: propose first, destroy at the proposal's expiry if nobody answers.
    result = await play_fresh("disk-full", setting_overrides={"teardown_policy": "propose",
                                                              "proposal_timeout": 300})
    kinds = [e.kind for e in result.events]
    assert "teardown_proposed" in kinds
    signal = result.scenario.expect.signal_at
    assert signal is not None and result.decision_at is not None and result.stopped_at is not None
    assert result.decision_at <= signal + result.poll_interval
    assert signal + 300 <= result.stopped_at <= signal + 300 + 2 * result.poll_interval
    receipt = next(e for e in result.events if e.kind == "receipt")
    assert receipt.payload["by"] == "default action on expiry"
    assert result.billing_stopped is True


async def test_temporary_directories_are_removed(outcome: Outcome) -> None:
    result = await outcome("script-404")
    assert result.workdir is not None and not result.workdir.exists()

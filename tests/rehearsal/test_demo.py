"""The demo's face: what the terminal notifier prints for each engine event, the summary table,
exit codes, and the CLI entry point."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.db.models import Event, Rental, RentalState
from bot.rehearsal.demo import MAX_SPEED, print_banner, run_demo, summary_table
from bot.rehearsal.terminal import TerminalNotifier, compact, describe_event
from bot.settings import Settings
from bot.sim.scenarios import load_all, scenario_names
from bot.watch import engine
from tests.rehearsal.helpers import Outcome

REPO = Path(__file__).resolve().parents[2]
KINDS = [getattr(engine, name) for name in dir(engine) if name.startswith("EV_")]


def _rental() -> Rental:
    return Rental(id=1, label="vastops-t", requester_id=1, requester_name="u", offer_id=1, machine_id=1,
                  host_id=1, gpu_name="RTX 3090", num_gpus=1, quoted_dph=0.2, dph_total=0.2, geolocation="HK",
                  instance_id=7, state=RentalState.PROVISIONING, state_reason=None, request={},
                  created_at=1000.0, updated_at=1000.0, started_at=1000.0, ended_at=None, comfyui_url=None,
                  tunnel_url=None, status_channel_id=None, status_message_id=None)


def _event(kind: str, payload: dict[str, object], ts: float = 1060.0) -> Event:
    return Event(id=1, rental_id=1, seq=1, ts=ts, kind=kind, payload=payload, posted_at=None)


async def test_every_event_kind_the_engine_emits_has_a_line(outcome: Outcome) -> None:
    seen: dict[str, Event] = {}
    for name in ("happy", "disk-full"):
        for event in (await outcome(name)).events:
            seen.setdefault(event.kind, event)
    assert {"milestone", "finding", "decision", "receipt", "verdict", "state", "approval"} <= set(seen)
    for kind, event in seen.items():
        text = describe_event(event)
        assert text and not text.startswith(f"   {kind}:"), f"{kind} fell through to the raw fallback"
    assert set(seen) <= set(KINDS)


async def test_notifier_prints_one_prefixed_line_per_event_and_redacts() -> None:
    out = io.StringIO()
    notifier = TerminalNotifier("disk-full", out)
    token = "0123456789abcdef0123456789abcdef"
    await notifier.notify(_rental(), _event("finding", {
        "severity": "error", "category": "auth", "line": 12, "advice": "check CIVITAI_TOKEN",
        "text": f"Downloading: https://civitai.com/api/download/models/128713?token={token}"}))
    printed = out.getvalue()
    assert printed.startswith("[disk-full") and "60s]" in printed and "line 12" in printed
    assert token not in printed
    first, advice = printed.splitlines()
    assert "civitai.com" in first
    assert advice.strip() == "advice: check CIVITAI_TOKEN" and notifier.count == 1


def test_event_lines_are_shown_compactly() -> None:
    line = ('@@prov {"v":1,"run":"r","att":1,"seq":3,"ts":"2026-02-05T10:00:00Z","ev":"node.reqs",'
            '"st":"fail","name":"ComfyUI-ReActor","why":"wheel build failed"}')
    assert compact(line) == "[node.reqs fail] name=ComfyUI-ReActor, why=wheel build failed"
    assert compact("plain text") == "plain text"
    assert compact("script_missing: " + line[:40]) == "script_missing: (an event line)"


async def test_summary_table_has_a_row_per_scenario_and_counts_mismatches(outcome: Outcome) -> None:
    results = [await outcome(n) for n in ("happy", "script-404", "china-cheapest")]
    out = io.StringIO()
    assert summary_table(results, out, tolerance_polls=1) == 0
    table = out.getvalue()
    for name in ("happy", "script-404", "china-cheapest"):
        assert name in table
    assert "failed/script_missing" in table and "kept" in table and "MISMATCH" not in table
    # A run that does not match its expectation is flagged and counted.
    wrong = dataclasses.replace(results[1], verdict="ready", decision_at=None)
    out = io.StringIO()
    assert summary_table([wrong], out) == 1
    assert "MISMATCH script-404: verdict ready, expected failed" in out.getvalue()


def _table(text: str) -> dict[str, dict[str, str]]:
    """The summary table's rows by scenario, each as {column header: cell}."""
    head, *lines = text.splitlines()
    names = re.split(r"\s{2,}", head.strip())
    starts: list[int] = []
    for name in names:
        starts.append(head.index(name, starts[-1] + 1 if starts else 0))
    rows: dict[str, dict[str, str]] = {}
    for line in lines:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


async def test_ratio_is_shown_only_for_failures(outcome: Outcome) -> None:
    # A run that reached ready saved nothing: its user keeps it, as they would have without the bot.
    results = [await outcome(n) for n in ("happy", "port-noise-only", "script-404")]
    out = io.StringIO()
    summary_table(results, out, tolerance_polls=1)
    rows = _table(out.getvalue())
    assert rows["happy"]["RATIO"] == "-" and rows["port-noise-only"]["RATIO"] == "-"
    assert results[0].ratio is None and results[1].ratio is None
    assert rows["script-404"]["OUTCOME"].startswith("failed/")
    assert re.fullmatch(r"\d+x", rows["script-404"]["RATIO"])


def test_banner_states_the_bots_real_default_teardown_policy() -> None:
    default = Settings.model_fields["teardown_policy"].default
    out = io.StringIO()
    print_banner(load_all(), 50.0, out)
    text = out.getvalue()
    assert f"default teardown policy (TEARDOWN_POLICY) is '{default}'" in text
    for other in ("destroy", "propose"):
        if other != default:
            assert f"default ('{other}')" not in text and f"is '{other}'" not in text


async def test_a_speed_beyond_what_runs_correctly_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert await run_demo("script-404", speed=MAX_SPEED * 4, out=out) == 2
    err = capsys.readouterr().err
    assert "--speed" in err and f"{MAX_SPEED:g}" in err and out.getvalue() == ""


def test_cli_refuses_a_speed_beyond_what_runs_correctly() -> None:
    proc = subprocess.run([sys.executable, "-m", "bot", "demo", "--scenario", "script-404", "--speed", "1000"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert "--speed" in proc.stderr and "Traceback" not in proc.stderr


async def test_a_late_teardown_caused_by_clock_drift_is_blamed_on_the_drift(outcome: Outcome) -> None:
    run = await outcome("script-404")
    signal = run.scenario.expect.signal_at
    assert signal is not None and run.poll_times
    before = [t for t in run.poll_times if t < signal]
    late = signal + 5 * run.poll_interval
    # The clock could not keep up: the first poll after the signal came 5 intervals late, and decided.
    drifted = dataclasses.replace(run, decision_at=late, poll_times=[*before, late])
    out = io.StringIO()
    assert summary_table([drifted], out) == 1
    said = out.getvalue()
    assert "MISMATCH script-404" in said and "clock drift, not the bot" in said
    # Polls on time that let the signal pass are the bot's fault, and said so.
    slow = dataclasses.replace(run, decision_at=late,
                               poll_times=[*before, *(signal + k * run.poll_interval for k in range(1, 6))])
    out = io.StringIO()
    assert summary_table([slow], out) == 1
    assert "MISMATCH script-404" in out.getvalue() and "drift" not in out.getvalue().split("MISMATCH")[-1]


async def test_list_prints_every_scenario() -> None:
    out = io.StringIO()
    assert await run_demo(list_only=True, out=out) == 0
    for name in scenario_names():
        assert f"\n{name} " in "\n" + out.getvalue()


async def test_unknown_scenario_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo("nope", out=io.StringIO()) == 2
    assert "no scenario named 'nope'" in capsys.readouterr().err


def test_cli_lists_scenarios() -> None:
    proc = subprocess.run([sys.executable, "-m", "bot", "demo", "--list"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "log-path-mismatch" in proc.stdout and "china-cheapest" in proc.stdout

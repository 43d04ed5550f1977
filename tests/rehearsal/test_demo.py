"""The demo's face: what the terminal notifier prints for each engine event, the summary table,
exit codes, and the CLI entry point."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest

from bot.db.models import Event, Rental, RentalState
from bot.rehearsal.demo import run_demo, summary_table
from bot.rehearsal.terminal import TerminalNotifier, compact, describe_event
from bot.sim.scenarios import scenario_names
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

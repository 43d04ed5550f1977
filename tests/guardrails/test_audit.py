"""The audit report: rentals played end to end (simulator, SSH, SQLite, FakeClock), then reported
by ``build_report`` and by the ``python -m bot audit`` process; its dollars agree with the receipts."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.audit import build_report, render_csv, render_json, render_text, split_by_day
from bot.audit_cli import AuditUsageError, parse_since
from bot.db.models import RentalState
from bot.watch.cost import rental_cost
from tests.guardrails.helpers import OTHER, World

ROOT = Path(__file__).resolve().parents[2]


async def _three_runs(world: World) -> dict[str, int]:
    """A useful run, a disk-full failure, and one stopped by its requester before it was ready."""
    useful = await world.rent("happy")
    await world.drive(useful.id, until=(RentalState.READY, RentalState.DEGRADED))
    await world.clock.advance(600, step=5.0)
    await world.destroy(useful.id)

    failed = await world.rent("disk-full", requester=(OTHER, "otto"))
    await world.drive(failed.id, until=(RentalState.DESTROYED,))

    stopped = await world.rent("happy")
    await world.clock.advance(30, step=5.0)
    await world.destroy(stopped.id)
    return {"useful": useful.id, "failed": failed.id, "stopped": stopped.id}


async def _receipts(world: World) -> dict[int, float]:
    out = {}
    for rental in await world.store.list_rentals(limit=50):
        receipts = await world.store.events_for(rental.id, kinds=["receipt"])
        if receipts:
            out[rental.id] = float(receipts[-1].payload["cost_usd"])
    return out


async def test_report_rows_causes_and_dollars_agree_with_receipts(world: World) -> None:
    ids = await _three_runs(world)
    now = world.clock.now()
    report = await build_report(world.store, since=now - 86400, now=now)
    rows = {r.rental_id: r for r in report.rows}
    assert set(rows) == set(ids.values())

    assert rows[ids["useful"]].outcome in ("useful", "degraded")
    assert rows[ids["useful"]].waste_usd == 0.0 and rows[ids["useful"]].time_to_ready_s is not None
    assert rows[ids["failed"]].outcome == "failed"
    assert rows[ids["failed"]].cause == "disk_full"
    assert "No space left on device" in rows[ids["failed"]].root_cause
    assert rows[ids["failed"]].waste_usd == pytest.approx(rows[ids["failed"]].billed_usd)
    assert rows[ids["failed"]].requester == "otto"
    assert rows[ids["stopped"]].outcome == "stopped"
    assert rows[ids["stopped"]].cause == "stopped by a person before it was ready"

    # Every billed figure is the one cost function, and each agrees with its receipt.
    receipts = await _receipts(world)
    assert set(receipts) == set(ids.values())
    for rental_id, receipt in receipts.items():
        rental = await world.store.get_rental(rental_id)
        assert rental is not None
        assert rows[rental_id].billed_usd == pytest.approx(rental_cost(rental, now))
        assert rows[rental_id].billed_usd == pytest.approx(receipt, abs=1e-4)
    assert report.billed_usd == pytest.approx(sum(receipts.values()), abs=1e-3)
    assert not report.receipt_mismatches()
    assert report.billed_usd > 0

    # What went wrong, grouped by cause with counts and dollars; the biggest waste first.
    causes = {g.cause: g for g in report.causes}
    assert set(causes) == {"disk_full", "stopped by a person before it was ready"}
    assert causes["disk_full"].count == 1 and causes["disk_full"].rentals == [ids["failed"]]
    assert causes["disk_full"].waste_usd == pytest.approx(rows[ids["failed"]].billed_usd)
    assert report.waste_usd == pytest.approx(rows[ids["failed"]].billed_usd + rows[ids["stopped"]].billed_usd)

    # The charted buckets add up to the billed total, per day and per requester.
    assert sum(sum(v.values()) for v in report.daily.values()) == pytest.approx(report.billed_usd)
    assert sum(sum(v.values()) for v in report.per_user.values()) == pytest.approx(report.billed_usd)
    assert report.per_user["otto"]["failed"] == pytest.approx(rows[ids["failed"]].billed_usd)

    text = render_text(report)
    assert "Run comparison" in text and "What went wrong and why" in text
    assert "disk full: 1 rental(s)" in text and "agree with the billed costs" in text
    assert f"#{ids['failed']}" in text and "m" + str(rows[ids["failed"]].machine_id) in text

    data = json.loads(render_json(report))
    assert data["totals"]["receipts"] == 3 and data["totals"]["receipt_mismatches"] == []
    assert data["totals"]["billed_usd"] == pytest.approx(data["totals"]["receipts_usd"], abs=1e-3)
    table = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert [int(r["rental_id"]) for r in table] == sorted(ids.values())
    assert sum(float(r["billed_usd"]) for r in table) == pytest.approx(report.billed_usd, abs=1e-3)


async def test_report_filters_by_requester_and_window(world: World) -> None:
    ids = await _three_runs(world)
    now = world.clock.now()
    mine = await build_report(world.store, since=now - 86400, now=now, requester_id=OTHER, user="otto")
    assert [r.rental_id for r in mine.rows] == [ids["failed"]]
    assert "requester otto" in render_text(mine)
    # A window that starts after everything ended shows nothing billed.
    later = await build_report(world.store, since=now + 1, now=now + 3600)
    assert later.rows == [] and later.billed_usd == 0
    assert "No rental billed in this window." in render_text(later)


async def test_running_rental_is_counted_up_to_now(world: World) -> None:
    rental = await world.rent("happy")
    await world.drive(rental.id, until=(RentalState.READY, RentalState.DEGRADED))
    now = world.clock.now()
    report = await build_report(world.store, since=now - 3600, now=now)
    (row,) = report.rows
    current = await world.store.get_rental(rental.id)
    assert current is not None
    assert row.receipt_usd is None and row.billed_usd == pytest.approx(rental_cost(current, now)) and row.billed_usd > 0
    assert "still billing" in render_text(report)


def test_split_by_day_cuts_at_utc_midnight_and_keeps_the_total() -> None:
    midnight = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    parts = split_by_day(midnight - 3600, midnight + 7200, 3.0)
    assert parts == {"2023-11-14": pytest.approx(1.0), "2023-11-15": pytest.approx(2.0)}
    assert split_by_day(midnight, midnight, 0.5) == {"2023-11-15": 0.5}


def test_parse_since() -> None:
    assert parse_since("7d", 1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("2023-11-15", 0.0) == 1_700_006_400.0
    for bad in ("", "soon", "-3d", "0", "2023-13-45", "99999d"):
        with pytest.raises(AuditUsageError):
            parse_since(bad, 1_000_000.0)


# ---------------------------------------------------------------- the process


def _cli(*args: str, db: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "DISCORD_", "BUDGET_"))}
    env.update({"DATABASE_PATH": str(db), "PYTHONPATH": str(ROOT), **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "bot", "audit", *args], capture_output=True, text=True, env=env,
                          cwd=db.parent, timeout=120)


async def test_cli_text_json_csv_and_chart(world: World, tmp_path: Path) -> None:
    ids = await _three_runs(world)
    receipts = await _receipts(world)
    db = world.settings.database_path
    since = "2023-11-01"  # the FakeClock's epoch; the process reads the real clock

    text = _cli("--since", since, db=db)
    assert text.returncode == 0, text.stderr
    assert "What went wrong and why" in text.stdout and "disk full" in text.stdout
    data = json.loads(_cli("--since", since, "--json", db=db).stdout)
    assert {r["rental_id"] for r in data["rows"]} == set(ids.values())
    assert data["totals"]["billed_usd"] == pytest.approx(sum(receipts.values()), abs=1e-3)
    by_id = {r["rental_id"]: r for r in data["rows"]}
    for rental_id, receipt in receipts.items():
        assert by_id[rental_id]["billed_usd"] == pytest.approx(receipt, abs=1e-4)
    rows = list(csv.DictReader(io.StringIO(_cli("--since", since, "--csv", "--user", "otto", db=db).stdout)))
    assert [int(r["rental_id"]) for r in rows] == [ids["failed"]]

    pytest.importorskip("matplotlib")
    png = tmp_path / "audit.png"
    charted = _cli("--since", since, "--chart", str(png), db=db)
    assert charted.returncode == 0, charted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = _cli(db=tmp_path / "nope.db")
    assert missing.returncode == 2 and "no database" in missing.stderr and "Traceback" not in missing.stderr
    db = tmp_path / "db.sqlite"
    db.touch()
    bad = _cli("--since", "soon", db=db)
    assert bad.returncode == 2 and "not a duration" in bad.stderr and "Traceback" not in bad.stderr
    both = _cli("--json", "--csv", db=db)
    assert both.returncode == 2
    nobody = _cli("--user", "nobody", db=db)
    assert nobody.returncode == 2 and "no rental was ever requested by 'nobody'" in nobody.stderr


def test_cli_text_report_works_without_matplotlib(tmp_path: Path) -> None:
    """The chart extra is optional: with matplotlib unimportable the report still prints, and asking
    for a chart says how to get one (exit 2) instead of a traceback."""
    db = tmp_path / "db.sqlite"
    db.touch()
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    plain = _cli("--since", "7d", db=db, env_extra=env)
    assert plain.returncode == 0 and "No rental billed in this window." in plain.stdout
    chart = _cli("--since", "7d", "--chart", str(tmp_path / "x.png"), db=db, env_extra=env)
    assert chart.returncode == 2 and "vastops[chart]" in chart.stderr and "Traceback" not in chart.stderr
    assert "No rental billed" in chart.stdout and not (tmp_path / "x.png").exists()


def test_chart_draws_names_with_dollar_signs() -> None:
    """A requester called "pay$^$day" is text, not a broken formula that would stop the chart."""
    pytest.importorskip("matplotlib")
    from bot.audit import AuditReport
    from bot.chart import render_png

    report = AuditReport(since=0.0, until=86400.0, user="pay$^$day", rows=[], causes=[], unrented={},
                         daily={"1970-01-01": {"useful": 1.0, "idle": 0.0, "failed": 0.5, "running": 0.0}},
                         per_user={"pay$^$day": {"useful": 1.0, "idle": 0.0, "failed": 0.5, "running": 0.0}})
    assert render_png(report)[:8] == b"\x89PNG\r\n\x1a\n"


def test_idle_time_in_a_receipt_is_waste_charted_as_idle() -> None:
    """The receipt's ``idle_s`` (seconds ready with nothing to do) is the idle share of a useful rental."""
    from bot.audit import _charted, build_row
    from bot.db.models import Event, Rental

    start = 1_700_006_400.0
    rental = Rental(id=9, label="r9", requester_id=1, requester_name="rita", offer_id=1, machine_id=5, host_id=1,
                    gpu_name="RTX 4090", num_gpus=1, quoted_dph=0.4, dph_total=0.4, geolocation="Texas, US",
                    instance_id=9, state=RentalState.DESTROYED, state_reason="lease expired", request={},
                    created_at=start, updated_at=start + 7200, started_at=start, ended_at=start + 7200,
                    comfyui_url=None, tunnel_url=None, status_channel_id=None, status_message_id=None)
    events = [
        Event(1, 9, 1, start + 300, "milestone", {"name": "comfyui_ready"}, None),
        Event(2, 9, 2, start + 7200, "receipt", {"cost_usd": 0.8, "duration_s": 7200, "idle_s": 3600,
                                                  "by": "lease", "verdict": "ready"}, None),
    ]
    row = build_row(rental, events, start + 9000)
    assert row.outcome == "useful" and row.billed_usd == pytest.approx(0.8) and row.receipt_usd == 0.8
    assert row.idle_usd == pytest.approx(0.4) and row.waste_usd == pytest.approx(0.4)
    assert row.cause == "idle after ready" and row.time_to_ready_s == 300 and row.country == "US"
    _, parts = _charted(row, start + 9000)
    assert parts == {"useful": pytest.approx(0.4), "idle": pytest.approx(0.4)}

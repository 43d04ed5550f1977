"""The command line as an operator meets it: the real entry point in a subprocess, against the Vast
simulator (VAST_BACKEND=sim, or a VastSim on loopback reached with --url / VAST_API_URL) and real
SQLite files."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from bot.clock import SystemClock
from bot.db.models import RentalState
from bot.db.store import Store
from bot.sim.api import VastSim
from tests.core.helpers import ROOT, cli

KEY = "sim-operator-key"


def _env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "SYSTEMROOT")}
    base.update({"HOME": str(tmp_path), "DATABASE_PATH": str(tmp_path / "db.sqlite"), "PYTHONPATH": str(ROOT)})
    base.update(env)
    return base


async def acli(args: list[str], tmp_path: Path, stdin: str = "", **env: str) -> tuple[int, str, str]:
    """Like ``cli`` but without blocking the event loop (a simulator in this process must answer)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=tmp_path, env=_env(tmp_path, **env),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def sim() -> VastSim:
    simulator = VastSim(SystemClock(), api_key=KEY)
    await simulator.start()
    yield simulator  # type: ignore[misc]
    await simulator.stop()


# ---------------------------------------------------------------- conventions of the vastai CLI

def test_help_names_the_program_vastops_and_states_the_teardown_policy(tmp_path: Path) -> None:
    result = cli(["--help"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: vastops")
    flat = " ".join(result.stdout.split())
    assert "TEARDOWN_POLICY=destroy (default): a conclusive failure" in flat
    assert "with destroy as the default action when nobody answers within PROPOSAL_TIMEOUT" in flat


def test_version(tmp_path: Path) -> None:
    result = cli(["--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("vastops ")


def test_verbose_is_accepted_after_the_command_and_raw_is_json(tmp_path: Path) -> None:
    result = cli(["status", "--raw", "-v"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"instances": []}
    assert "DEBUG" in result.stderr  # -v took effect


@pytest.mark.parametrize("command", ["show", "logs", "destroy", "gpus"])
def test_new_commands_have_help(tmp_path: Path, command: str) -> None:
    result = cli([command, "--help"], tmp_path)
    assert result.returncode == 0 and "usage: vastops" in result.stdout


# ---------------------------------------------------------------- offers and gpus

@pytest.mark.parametrize("spelling", ["rtx 4090", "RTX_4090", "rtx_4090", " RTX  4090 "])
def test_gpu_names_are_case_and_underscore_insensitive(tmp_path: Path, spelling: str) -> None:
    result = cli(["offers", "--gpu", spelling, "--json", "--max-price", "5"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    offers = json.loads(result.stdout)["offers"]
    assert offers and {o["gpu"] for o in offers} == {"RTX 4090"}


def test_vram_is_shown_in_gib_as_vast_counts_it(tmp_path: Path) -> None:
    result = cli(["offers", "--gpu", "RTX 4090", "--json"], tmp_path, VAST_BACKEND="sim")
    offers = json.loads(result.stdout)["offers"]
    assert offers and all(o["vram_gb"] == 24.0 for o in offers)  # 24564 MB / 1024, not 24.6


def test_more_columns_and_order(tmp_path: Path) -> None:
    result = cli(["offers", "--cols", "all", "--order", "dlperf-", "--max-price", "5", "--limit", "5"], tmp_path,
                 VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    for col in ("DISK", "CUDA", "DLPERF", "RELIAB", "DOWN", "VERIFIED"):
        assert col in header
    raw = cli(["offers", "--order", "dlperf-", "--max-price", "5", "--limit", "5", "--raw"], tmp_path,
              VAST_BACKEND="sim")
    perf = [o["dlperf"] for o in json.loads(raw.stdout)["offers"]]
    assert perf == sorted(perf, reverse=True) and perf[0] >= 100  # the A100 comes first


def test_limit_above_the_maximum_is_a_usage_error(tmp_path: Path) -> None:
    result = cli(["offers", "--limit", "5000"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 2
    assert "at most 1000" in result.stderr
    assert "pydantic" not in result.stderr and "Traceback" not in result.stderr


def test_unknown_column_or_order_is_a_usage_error(tmp_path: Path) -> None:
    assert cli(["offers", "--cols", "gpu_temp"], tmp_path, VAST_BACKEND="sim").returncode == 2
    assert cli(["offers", "--order", "colour"], tmp_path, VAST_BACKEND="sim").returncode == 2


def test_no_offers_says_which_filter_removed_the_most(tmp_path: Path) -> None:
    result = cli(["offers", "--gpu", "RTX 4090", "--max-price", "0.01"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    assert "No offers match" in result.stdout and "--max-price 0.01" in result.stdout


def test_unknown_gpu_name_is_a_usage_error_pointing_at_gpus(tmp_path: Path) -> None:
    result = cli(["offers", "--gpu", "RTX 9999"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 2 and "vastops gpus" in result.stderr


def test_gpus_lists_the_names_on_offer(tmp_path: Path) -> None:
    result = cli(["gpus", "--json", "--max-price", "5"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    names = {row["gpu"] for row in json.loads(result.stdout)["gpus"]}
    assert {"RTX 4090", "RTX 3090"} <= names


# ---------------------------------------------------------------- the API key and URL

async def test_the_vastai_key_file_is_used_when_vast_api_key_is_unset(tmp_path: Path, sim: VastSim) -> None:
    keyfile = tmp_path / ".config" / "vastai" / "vast_api_key"
    keyfile.parent.mkdir(parents=True)
    keyfile.write_text(KEY + "\n")
    code, out, err = await acli(["status", "--json"], tmp_path, VAST_API_URL=sim.base_url or "")
    assert code == 0, err
    assert json.loads(out) == {"instances": []}


async def test_api_key_and_url_flags(tmp_path: Path, sim: VastSim) -> None:
    code, _, err = await acli(["status", "--json", "--api-key", "wrong", "--url", sim.base_url or ""], tmp_path)
    assert code == 2 and "refused" in err
    code, out, err = await acli(["offers", "--api-key", KEY, "--url", sim.base_url or "", "--json"], tmp_path)
    assert code == 0, err
    assert json.loads(out)["offers"]


# ---------------------------------------------------------------- status, show, logs, destroy

async def _rentals(db: Path, instance_id: int) -> tuple[int, int]:
    store = await Store.open(db)
    try:
        now = time.time()
        live = await store.create_rental(label="vastops-live-1", requester_id=1, requester_name="rita", offer_id=7,
                                         quoted_dph=0.35, now=now - 600, state=RentalState.PROVISIONING,
                                         instance_id=instance_id, gpu_name="RTX 4090", num_gpus=1, dph_total=0.35,
                                         started_at=now - 600, geolocation="Ontario, CA")
        await store.append_event(live.id, kind="finding", ts=now - 60, payload={
            "severity": "fatal", "category": "disk_full", "text": "No space left on device (hf_AAAA)"})
        waiting = await store.create_rental(label="vastops-wait-2", requester_id=1, requester_name="rita",
                                            offer_id=8, quoted_dph=0.2, now=now,
                                            state=RentalState.AWAITING_APPROVAL, gpu_name="RTX 3090")
        return live.id, waiting.id
    finally:
        await store.close()


async def test_status_json_marks_untracked_instances_and_includes_rentals_without_instance(
        tmp_path: Path, sim: VastSim) -> None:
    tracked = sim.seed_instance(label="vastops-live-1")
    stray = sim.seed_instance(label="someone-else")
    live, waiting = await _rentals(tmp_path / "db.sqlite", tracked)
    code, out, err = await acli(["status", "--json"], tmp_path, VAST_API_KEY=KEY, VAST_API_URL=sim.base_url or "")
    assert code == 0, err
    rows = {(r["instance_id"], r["rental_id"]): r for r in json.loads(out)["instances"]}
    assert rows[(tracked, live)]["rental_state"] == "provisioning"
    assert rows[(stray, None)]["rental_state"] == "untracked"
    assert rows[(None, waiting)]["rental_state"] == "awaiting_approval"


async def test_show_and_logs_render_a_rental_as_text_redacted(tmp_path: Path, sim: VastSim) -> None:
    tracked = sim.seed_instance(label="vastops-live-1")
    live, _ = await _rentals(tmp_path / "db.sqlite", tracked)
    env = {"VAST_API_KEY": KEY, "VAST_API_URL": sim.base_url or "", "HF_TOKEN": "hf_AAAA"}
    code, out, err = await acli(["show", str(live)], tmp_path, **env)
    assert code == 0, err
    assert f"Rental #{live}" in out and "provisioning" in out and str(tracked) in out and "$0.350/h" in out
    code, out, err = await acli(["logs", f"#{live}", "--errors"], tmp_path, **env)
    assert code == 0, err
    assert "disk_full" in out and "hf_AAAA" not in out
    code, out, err = await acli(["show", "vastops-live-1", "--raw"], tmp_path, **env)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["id"] == live and shown["state"] == "provisioning" and shown["instance_id"] == tracked
    code, _, err = await acli(["show", "404"], tmp_path, **env)
    assert code == 2 and "No rental" in err


async def test_destroy_asks_then_destroys_a_rental_and_an_untracked_instance(tmp_path: Path, sim: VastSim) -> None:
    tracked = sim.seed_instance(label="vastops-live-1")
    stray = sim.seed_instance(label="someone-else")
    live, _ = await _rentals(tmp_path / "db.sqlite", tracked)
    env = {"VAST_API_KEY": KEY, "VAST_API_URL": sim.base_url or ""}
    # Without a terminal and without -y nothing happens.
    code, _, err = await acli(["destroy", str(live)], tmp_path, **env)
    assert code == 2 and "-y" in err and tracked in sim.instances
    code, out, err = await acli(["destroy", str(live), "-y"], tmp_path, **env)
    assert code == 0, out + err
    assert "destroyed" in out and tracked not in sim.instances
    store = await Store.open(tmp_path / "db.sqlite")
    try:
        rental = await store.get_rental(live)
        assert rental is not None and rental.state == RentalState.DESTROYED
    finally:
        await store.close()
    code, out, err = await acli(["destroy", str(stray), "--yes"], tmp_path, **env)
    assert code == 0, out + err
    assert stray not in sim.instances


# ---------------------------------------------------------------- check

def test_check_warns_about_unknown_keys_naming_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_PRICE_PER_HR=0.3\nEXCLUDE_COUNTRIES=CN\nVAST_BACKEND=sim\n")
    result = cli(["check"], tmp_path)
    assert "MAX_PRICE_PER_HR" in result.stdout and "did you mean MAX_PRICE_PER_HOUR?" in result.stdout
    assert "did you mean EXCLUDED_COUNTRIES?" in result.stdout


def test_check_shows_what_will_spend_money(tmp_path: Path) -> None:
    result = cli(["check"], tmp_path, VAST_BACKEND="sim", MAX_PRICE_PER_HOUR="0.45", RENTAL_DOLLAR_CAP="3",
                 EXCLUDED_COUNTRIES="CN,UA,RU", TEARDOWN_POLICY="propose")
    assert result.returncode == 0, result.stdout
    text = result.stdout
    assert "What will spend money" in text
    assert "$0.45/h" in text and "CN,UA,RU" in text and "$3.00 per rental" in text
    assert "TEARDOWN_POLICY" in text and "propose" in text and "COMFYUI" not in text
    assert "ComfyUI 45m" in text  # the deadlines


def test_check_and_status_create_no_data_directory(tmp_path: Path) -> None:
    env = _env(tmp_path)
    del env["DATABASE_PATH"]  # the default, data/vastops.db in the current directory
    import subprocess

    for args in (["check"], ["status"]):
        proc = subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert not (tmp_path / "data").exists(), args


def test_check_in_sim_mode_creates_no_database_either(tmp_path: Path) -> None:
    result = cli(["check"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0
    assert "does not exist yet" in result.stdout and not (tmp_path / "db.sqlite").exists()


# ---------------------------------------------------------------- database mistakes

@pytest.mark.parametrize("command", ["check", "status", "run"])
def test_database_path_that_is_a_directory_is_a_configuration_error(tmp_path: Path, command: str) -> None:
    folder = tmp_path / "dbdir"
    folder.mkdir()
    env = {"VAST_BACKEND": "sim", "DATABASE_PATH": str(folder), "DISCORD_TOKEN": "x.y.z", "DISCORD_GUILD_ID": "1",
           "NOTIFY_CHANNEL_ID": "2", "APPROVER_ROLE_ID": "3"}
    for _ in range(3):  # the loop-closed traceback came in 10-20 % of runs
        result = cli([command], tmp_path, **env)
        both = result.stdout + result.stderr
        assert result.returncode == 2, both
        assert str(folder) in both and "is a directory" in both and "vastops.db" in both
        assert "Traceback" not in both and "Event loop is closed" not in both
        assert "make the directory writable" not in both


def test_a_file_that_is_not_sqlite_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("these are my notes, not a database\n" * 10)
    result = cli(["check"], tmp_path, VAST_BACKEND="sim", DATABASE_PATH=str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stdout and "not an SQLite database" in result.stdout
    assert bad.read_text().startswith("these are my notes")  # untouched


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = cli(["check"], tmp_path, VAST_BACKEND="sim", DATABASE_PATH=str(locked / "sub" / "v.db"))
    assert result.returncode == 2 and "not writable" in result.stdout


def _corrupt(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE filler(x)")
    con.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,) for _ in range(400)])
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = bytearray(db.read_bytes())
    page = 4096
    # Scribble over every page but the first (the header and schema stay readable).
    for start in range(page, len(data), page):
        data[start:start + 64] = b"\xde\xad\xbe\xef" * 16
    db.write_bytes(bytes(data))


async def test_a_corrupted_database_still_shows_vasts_list_and_how_to_recover(tmp_path: Path, sim: VastSim) -> None:
    db = tmp_path / "db.sqlite"
    store = await Store.open(db)
    await store.close()
    _corrupt(db)
    stray = sim.seed_instance(label="vastops-live-1")
    env = {"VAST_API_KEY": KEY, "VAST_API_URL": sim.base_url or ""}
    code, out, err = await acli(["status"], tmp_path, **env)
    assert code == 2
    assert str(stray) in out  # Vast's list, what matters most when the database is gone
    assert ".recover" in err and "label" in err and "Traceback" not in err
    code, out, err = await acli(["check"], tmp_path, VAST_BACKEND="sim")
    assert code == 2, out + err
    assert "DATABASE_PATH" in out and ".recover" in out


def test_check_runs_quick_check(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    result = cli(["check"], tmp_path, VAST_BACKEND="sim", DATABASE_PATH=str(db))
    assert result.returncode == 0
    sqlite3.connect(db).close()  # now it exists (empty file is fine for SQLite): the next check opens it
    result = cli(["check"], tmp_path, VAST_BACKEND="sim", DATABASE_PATH=str(db))
    assert result.returncode == 0, result.stdout
    assert "quick_check ok" in result.stdout


# ---------------------------------------------------------------- check --running

def test_check_running_reads_the_heartbeat(tmp_path: Path) -> None:
    beat = tmp_path / "hb"
    missing = cli(["check", "--running"], tmp_path, VAST_BACKEND="sim", HEARTBEAT_PATH=str(beat))
    assert missing.returncode == 1 and "NOT RUNNING" in missing.stdout
    beat.write_text(json.dumps({"time": time.time() - 5, "ticks": 9, "pid": 1, "discord": "connected"}))
    fresh = cli(["check", "--running"], tmp_path, VAST_BACKEND="sim", HEARTBEAT_PATH=str(beat))
    assert fresh.returncode == 0 and "running" in fresh.stdout and "9 polls" in fresh.stdout
    beat.write_text(json.dumps({"time": time.time() - 3600, "ticks": 9, "pid": 1, "discord": "connected"}))
    stale = cli(["check", "--running"], tmp_path, VAST_BACKEND="sim", HEARTBEAT_PATH=str(beat))
    assert stale.returncode == 1 and "NOT RUNNING" in stale.stdout
    # The default file sits next to the database.
    default = cli(["check", "--running"], tmp_path, VAST_BACKEND="sim")
    assert str(tmp_path / "db.heartbeat") in default.stdout


def test_check_prints_the_exact_pin_line_when_none_is_set(tmp_path: Path) -> None:
    import hashlib
    import http.server
    import threading
    from functools import partial

    deploy = ROOT / "deploy"
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(deploy))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/provision.sh"
        result = cli(["check"], tmp_path, VAST_BACKEND="sim", PROVISION_SCRIPT_URL=url)
    finally:
        server.shutdown()
        server.server_close()
    digest = hashlib.sha256((deploy / "provision.sh").read_bytes()).hexdigest()
    assert f"\nPROVISION_SCRIPT_SHA256={digest}\n" in result.stdout, result.stdout


def test_the_teardown_policy_is_stated_the_same_in_readme_env_example_and_help(tmp_path: Path) -> None:
    import re

    from bot.__main__ import TEARDOWN_HELP

    def flat(text: str) -> str:
        return " ".join(re.sub(r"^\s*# ?", "", text, flags=re.M).split())

    assert flat(TEARDOWN_HELP) in flat((ROOT / ".env.example").read_text())
    assert flat(TEARDOWN_HELP) in flat((ROOT / "README.md").read_text())
    assert flat(TEARDOWN_HELP) in flat(cli(["run", "--help"], tmp_path).stdout)

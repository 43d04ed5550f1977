"""The command line, run as a user would: a subprocess with a controlled environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.helpers import ROOT, cli

SETTING_NAMES = ("DISCORD_TOKEN", "DISCORD_GUILD_ID", "NOTIFY_CHANNEL_ID", "APPROVER_ROLE_ID", "VAST_API_KEY",
                 "SSH_KEY_PATH", "PROVISION_SCRIPT_URL")


def test_check_with_empty_environment_names_every_missing_setting(tmp_path: Path) -> None:
    result = cli(["check"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    for name in SETTING_NAMES:
        assert name in result.stdout, name
    assert "Traceback" not in result.stdout + result.stderr


def test_check_in_sim_mode_passes_without_a_vast_key(tmp_path: Path) -> None:
    result = cli(["check"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "key accepted" in result.stdout
    assert "All checks passed" in result.stdout


def test_check_reports_an_unreadable_ssh_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("not a key")
    result = cli(["check"], tmp_path, VAST_BACKEND="sim", SSH_KEY_PATH=str(key))
    assert result.returncode == 2
    assert "not a usable private key" in result.stdout


def test_invalid_setting_is_a_configuration_error_without_traceback(tmp_path: Path) -> None:
    result = cli(["offers"], tmp_path, VAST_BACKEND="sim", POLL_INTERVAL="whenever")
    assert result.returncode == 2
    assert "POLL_INTERVAL" in result.stderr
    assert "Traceback" not in result.stderr


def test_offers_against_the_simulator_never_returns_excluded_countries(tmp_path: Path) -> None:
    result = cli(["offers", "--json", "--limit", "50", "--max-price", "5"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    offers = json.loads(result.stdout)["offers"]
    assert offers, "the simulator catalogue should have matching offers"
    assert all(o["country"] not in ("CN", "UA") and o["country"] for o in offers)
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)


def test_offers_table_is_readable(tmp_path: Path) -> None:
    result = cli(["offers", "--gpu", "RTX 4090", "--limit", "3"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert "GPU" in header and "$/h" in header
    assert all("4090" in line for line in result.stdout.splitlines()[1:])


def test_bad_arguments_exit_2_with_a_message(tmp_path: Path) -> None:
    result = cli(["offers", "--limit", "zero"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 2
    assert "not a whole number" in result.stderr


def test_status_in_sim_mode(tmp_path: Path) -> None:
    result = cli(["status", "--json"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"instances": []}


@pytest.mark.parametrize("command", ["run", "check", "offers", "status", "classify", "demo"])
def test_every_command_has_help(tmp_path: Path, command: str) -> None:
    result = cli([command, "--help"], tmp_path)
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_run_without_discord_settings_lists_them(tmp_path: Path) -> None:
    result = cli(["run"], tmp_path, VAST_BACKEND="sim")
    assert result.returncode == 2
    for name in ("DISCORD_TOKEN", "DISCORD_GUILD_ID", "NOTIFY_CHANNEL_ID", "APPROVER_ROLE_ID"):
        assert name in result.stderr


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update({"VAST_BACKEND": "sim", "DATABASE_PATH": str(tmp_path / "db.sqlite"), "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen([sys.executable, "-m", "bot", "offers", "--limit", "20"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_an_unknown_sim_scenario_is_a_configuration_error(tmp_path: Path) -> None:
    proc = cli(["check"], tmp_path, VAST_BACKEND="sim", SIM_SCENARIO="no-such-scenario")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "SIM_SCENARIO" in proc.stdout + proc.stderr and "happy" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

"""The systemd unit, container file and compose file say what the operator section promises."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bot.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PYTHON = "/opt/vastops/.venv/bin/python"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "vastops.service")
    return parser


def test_unit_runs_the_venv_python_by_absolute_path_with_state_and_hardening() -> None:
    service = unit()["Service"]
    assert service["ExecStart"] == f"{PYTHON} -m bot run"
    assert service["EnvironmentFile"] == "/etc/vastops/vastops.env"
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["StateDirectory"] == "vastops"
    assert service["User"] == "vastops" and service["User"] != "root"
    env = (DEPLOY / "vastops.service").read_text()
    assert "Environment=DATABASE_PATH=/var/lib/vastops/vastops.db" in env
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/vastops"
    # Every variable the unit sets is a real setting name.
    for name in re.findall(r"^Environment=([A-Z_]+)=", env, re.M):
        assert name == "PYTHONUNBUFFERED" or name.lower() in Settings.model_fields, name


def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Same unit with an interpreter that exists here, so only the unit's syntax is judged.
    copy = tmp_path / "vastops.service"
    copy.write_text((DEPLOY / "vastops.service").read_text().replace(PYTHON, shutil.which("python3") or PYTHON))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if "vastops.service" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_dockerfile_is_non_root_with_data_volume() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^ENV DATABASE_PATH=/data/vastops\.db$", text, re.M)
    assert re.search(r'^VOLUME \["/data"\]$', text, re.M)
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd is not None and json.loads(cmd.group(1)) == ["python", "-m", "bot", "run"]


def test_compose_has_env_file_named_volume_and_restart_policy() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert re.search(r"^    env_file: \S+", text, re.M)
    assert re.search(r"^      - vastops-data:/data$", text, re.M)
    assert re.search(r"^volumes:\n  vastops-data:", text, re.M)
    assert re.search(r"^    restart: unless-stopped$", text, re.M)
    assert "dockerfile: deploy/Dockerfile" in text

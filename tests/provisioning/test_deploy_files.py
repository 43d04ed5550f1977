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


ROOT = DEPLOY.parent


def test_unit_restarts_forever_except_on_configuration_errors() -> None:
    parsed = unit()
    # A start limit makes systemd give up after a minute of outage: nobody would watch billing rentals.
    assert parsed["Unit"].get("StartLimitIntervalSec") == "0"
    assert "StartLimitBurst" not in parsed["Unit"]
    assert parsed["Service"]["Restart"] in ("on-failure", "always")
    assert parsed["Service"]["RestartPreventExitStatus"] == "2"


@pytest.mark.parametrize("path", ["deploy/vastops.env", "deploy/ssh/vastops_ed25519", ".env", ".env.local",
                                  "data/vastops.db", "data/vastops.heartbeat"])
def test_operator_secrets_and_state_are_git_ignored(path: str) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, timeout=30)
    assert proc.returncode == 0, f"{path} is not git-ignored"


def test_the_settings_template_is_not_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", ".env.example"], cwd=ROOT, timeout=30)
    assert proc.returncode == 1


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_docker_build_context_holds_only_what_the_image_copies() -> None:
    patterns = _dockerignore()
    # Everything is excluded first, then only the sources are let back in: no .env, .venv,
    # deploy/vastops.env, deploy/ssh/ or database can reach the daemon.
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for line in re.findall(r"^COPY (.+)$", (DEPLOY / "Dockerfile").read_text(), re.M):
        copied.update(part.rstrip("/") for part in line.split()[:-1])
    assert copied and copied <= allowed, copied - allowed
    for secret in (".env", ".venv", "deploy", "data"):
        assert secret not in allowed


def _readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```sh", 1)[1].split("```", 1)[0]


def test_systemd_steps_do_not_hard_code_a_python_minor_version() -> None:
    block = _readme_block("Run as a systemd service")
    assert not re.search(r"python3\.\d+ ", block), block


def test_container_steps_never_change_a_file_after_giving_it_away() -> None:
    # `sudo chown 10001 key && chmod 0600 key` fails at chmod for a non-root operator: the file is
    # no longer theirs. Ownership and mode must be set in one privileged step.
    block = _readme_block("Run in a container")
    given: set[str] = set()
    for line in block.splitlines():
        for cmd in re.split(r"&&|;", line.split("#", 1)[0]):
            words = cmd.split()
            if not words:
                continue
            if words[0] == "sudo":
                if len(words) > 1 and words[1] == "chown":
                    given.update(words[3:])
                continue
            if words[0] in ("chmod", "chown", "cp", "mv") and given & set(words[1:]):
                raise AssertionError(f"unprivileged {cmd.strip()!r} on a file already given to the container user")


def test_image_health_is_the_watchers_heartbeat() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.+\])$", text, re.M)
    assert match is not None, "no HEALTHCHECK"
    assert json.loads(match.group(1)) == ["python", "-m", "bot", "check", "--running"]

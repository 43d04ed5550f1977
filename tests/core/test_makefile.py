"""The quick start's Makefile: a .venv made by the wrong Python is rebuilt, an old PY is refused with a
clear message, and `make demo` installs only the package (not the test extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _fake_python(path: Path, version: str, ok: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Answers --version like Python and fails the 3.11 check like an old interpreter would.
    path.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}" && exit 0\nexit {0 if ok else 1}\n')
    path.chmod(0o755)
    return path


def make(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(project), *args], capture_output=True, text=True, timeout=60)


def test_a_venv_made_by_an_old_python_is_rebuilt(tmp_path: Path) -> None:
    project = _project(tmp_path)
    _fake_python(project / ".venv" / "bin" / "python", "3.10.12", ok=False)
    (project / ".venv" / ".installed-base").touch()  # looks installed: only the Python is wrong
    dry = make(project, "-n", "demo", f"PY={sys.executable}")
    assert dry.returncode == 0, dry.stderr
    assert "rm -rf .venv" in dry.stdout and f"{sys.executable} -m venv .venv" in dry.stdout


def test_a_good_venv_is_kept(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stamp = project / ".venv" / ".installed-base"
    stamp.touch()
    dry = make(project, "-n", "demo", f"PY={sys.executable}")
    assert dry.returncode == 0, dry.stderr
    assert "rm -rf" not in dry.stdout and "pip install" not in dry.stdout


def test_demo_installs_only_the_package(tmp_path: Path) -> None:
    project = _project(tmp_path)
    dry = make(project, "-n", "demo", f"PY={sys.executable}")
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line]
    assert installs and not any("[test]" in line for line in installs)
    dry = make(project, "-n", "test", f"PY={sys.executable}")
    assert any("[test]" in line for line in dry.stdout.splitlines() if "pip install" in line)


def test_an_old_py_is_refused_with_the_fix(tmp_path: Path) -> None:
    project = _project(tmp_path)
    old = _fake_python(tmp_path / "bin" / "python3.10", "3.10.12", ok=False)
    result = make(project, "demo", f"PY={old}")
    assert result.returncode != 0
    assert "not Python 3.11 or newer" in result.stderr and "Python 3.10.12" in result.stderr
    assert not (project / ".venv").exists()

"""Run the command line as a user would: a subprocess with a controlled environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(args: list[str], tmp_path: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    base.update({"DATABASE_PATH": str(tmp_path / "db.sqlite"), **env})
    # Run from an empty directory so no .env is picked up.
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env={**base, "PYTHONPATH": str(ROOT)},
                          input=stdin, capture_output=True, text=True, timeout=120)

"""``python -m bot check`` on a configured manifest, run as a user would (a subprocess), against the script,
model and git hosts on 127.0.0.1: exit 2 naming the model or node, the status and the fix."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.sim.hub import FakeHub, HubFile, HubRepo
from tests.provisioning.helpers import WebServer
from tests.provisioning.stubs import SCRIPT

ROOT = Path(__file__).resolve().parents[2]
GB = 1024**3
TOKEN = "hf_NeverShowThisToken42"


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    files = [HubFile("https://huggingface.co/org/sdxl/resolve/main/sdxl.safetensors", size=7 * GB),
             HubFile("https://models.example/private/lora.safetensors", size=GB, token="secret-elsewhere")]
    repos = [HubRepo("https://github.com/someone/GoodNode", requirements="numpy\n")]
    async with FakeHub(files, repos) as server:
        yield server


async def check(tmp_path: Path, web: WebServer, **env: str) -> tuple[int, str]:
    script = SCRIPT.read_bytes()
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    base.update({"DATABASE_PATH": str(tmp_path / "db.sqlite"), "VAST_BACKEND": "sim", "PYTHONPATH": str(ROOT),
                 "PROVISION_SCRIPT_URL": web.add("/provision.sh", script),
                 "PROVISION_SCRIPT_SHA256": hashlib.sha256(script).hexdigest(), "HF_TOKEN": TOKEN, **env})
    # Async: the hub answers from this test's event loop while the command runs.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "check", cwd=tmp_path, env=base,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    text = out.decode()
    assert TOKEN not in text and "Traceback" not in text, text
    assert proc.returncode is not None
    return proc.returncode, text


def line_of(text: str, needle: str) -> str:
    found = [line for line in text.splitlines() if needle in line]
    assert found, text
    return found[0]


async def test_a_good_manifest_passes(tmp_path: Path, web: WebServer, hub: FakeHub) -> None:
    code, text = await check(tmp_path, web, PROVISION_MODELS=f"checkpoints|{hub.base}/o/huggingface.co/org/sdxl/"
                             "resolve/main/sdxl.safetensors",
                             PROVISION_NODES=f"{hub.base}/o/github.com/someone/GoodNode!")
    assert code == 0, text
    assert "model sdxl.safetensors" in line_of(text, "7.0 GB") and "node GoodNode" in text


async def test_a_missing_required_model_exits_2_naming_it(tmp_path: Path, web: WebServer, hub: FakeHub) -> None:
    code, text = await check(tmp_path, web,
                             PROVISION_MODELS=f"checkpoints|{hub.base}/o/huggingface.co/org/sdxl/resolve/main/gone.ckpt")
    assert code == 2, text
    line = line_of(text, "model gone.ckpt")
    assert line.startswith("PROBLEM") and "HTTP 404" in line
    assert "fix the URL in PROVISION_MODELS" in text


async def test_a_refused_model_exits_2_with_the_fix(tmp_path: Path, web: WebServer, hub: FakeHub) -> None:
    url = f"{hub.base}/o/models.example/private/lora.safetensors"
    code, text = await check(tmp_path, web, PROVISION_MODELS=f"loras|{url}")
    assert code == 2, text
    line = line_of(text, "model lora.safetensors")
    assert "HTTP 401" in line and "credentials the bot does not send" in line
    assert "use a public URL" in text
    # The refused request carried no token: HF_TOKEN goes to huggingface.co only.
    assert all("Authorization" not in r.headers for r in hub.seen("/private/lora"))


async def test_models_too_big_for_disk_gb_exit_2_with_the_size(tmp_path: Path, web: WebServer, hub: FakeHub) -> None:
    code, text = await check(tmp_path, web, DISK_GB="20", PROVISION_MODELS=(
        f"checkpoints|{hub.base}/o/huggingface.co/org/sdxl/resolve/main/sdxl.safetensors"))
    assert code == 2, text
    assert "> DISK_GB=20" in line_of(text, "preflight: disk")
    assert "set DISK_GB=28" in text


async def test_a_missing_required_node_exits_2(tmp_path: Path, web: WebServer, hub: FakeHub) -> None:
    code, text = await check(tmp_path, web, PROVISION_NODES=f"{hub.base}/o/github.com/someone/NoSuchNode!")
    assert code == 2, text
    line = line_of(text, "node NoSuchNode")
    assert "does not exist" in line and "HTTP 401" in line and "PROVISION_NODES" in text


async def test_a_missing_optional_node_only_warns(tmp_path: Path, web: WebServer, hub: FakeHub) -> None:
    code, text = await check(tmp_path, web, PROVISION_NODES=f"{hub.base}/o/github.com/someone/NoSuchNode")
    assert code == 0, text
    assert line_of(text, "node NoSuchNode").startswith("warn")

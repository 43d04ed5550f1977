"""classify CLI logic: JSON and summary output, stdin, unreadable input, no secret in any output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.watch.classify_cli import (
    EXIT_DEGRADED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREADABLE,
    looks_binary,
    run_classify,
)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
SECRETS = {"MY_SECRET": "MySecretValue-42", "HF_TOKEN": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
           "WEB_PASSWORD": "Tr0ub4dor3xyz"}
RAW_SECRETS = [*SECRETS.values(), "5f4dcc3b5aa765d61d8327deb882cf99", "0123456789abcdef0123456789abcdef",
               "4f3c2b1a0f9e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a49382716f5e4d"]


def classify(source: str, *, as_json: bool, secrets: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_classify(source, as_json=as_json, secrets=secrets, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("name", "verdict", "category"), [
    ("happy_run.log", "degraded", "dependency"),
    ("script_404_fallback.log", "failed", "script_missing"),
    ("script_404_legacy.log", "failed", "script_missing"),
    ("disk_full.log", "failed", "disk_full"),
    ("torch_replaced.log", "failed", "dependency_fatal"),
    ("gated_hf.log", "degraded", "auth"),
    ("retry_attempts.log", "failed", "dependency"),
    ("no_cause.log", "failed", "dependency_fatal"),
    ("events_degraded.log", "degraded", "dependency"),
    ("events_required_node.log", "failed", "dependency_fatal"),
])
def test_json_output_per_fixture(name: str, verdict: str, category: str | None) -> None:
    code, out, err = classify(str(FIXTURES / name), as_json=True)
    assert (code, err) == ({"degraded": EXIT_DEGRADED, "failed": EXIT_FAILED}.get(verdict, EXIT_OK), "")
    assert out.endswith("\n") and out.count("\n") == 1  # one JSON object on one line
    data = json.loads(out)
    assert set(data) == {"verdict", "cause", "milestones", "findings", "counts"}
    assert data["verdict"] == verdict
    if category is None:
        assert data["cause"] is None
    else:
        assert data["cause"]["category"] == category and data["cause"]["line"] >= 1


def test_summary_output() -> None:
    code, out, _ = classify(str(FIXTURES / "disk_full.log"), as_json=False)
    assert code == EXIT_FAILED
    assert out.startswith("Verdict: FAILED  (14 lines)\n")
    assert "Cause: line 7 [disk_full]" in out
    assert "-> The next download will not fit." in out
    assert "line 3  script_fetched  path=/provisioning.sh bytes=8123" in out
    assert "line 12  disk_full/fatal  OSError: [Errno 28] No space left on device" in out
    assert "Platform noise ignored: 2 lines" in out


def test_summary_of_a_clean_run() -> None:
    code, out, _ = classify(str(FIXTURES / "happy_run.log"), as_json=False)
    assert code == EXIT_DEGRADED
    assert out.startswith("Verdict: DEGRADED") and "Cause: line 40 [dependency]" in out
    assert "comfyui_ready" in out and "remote port forwarding" not in out


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (FIXTURES / "no_cause.log").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = classify("-", as_json=True)
    assert code == EXIT_FAILED and json.loads(out)["cause"]["line"] == 6


def test_unterminated_last_line_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"Provisioner starting\nOSError: [Errno 28] No space left on device")
    code, out, _ = classify(str(path), as_json=True)
    assert code == EXIT_FAILED and json.loads(out)["cause"] == {
        "category": "disk_full", "line": 2, "text": "OSError: [Errno 28] No space left on device"}


@pytest.mark.parametrize("data", [
    bytes(range(256)) * 50 + b"\r\n\x1b[31mERROR: x\x1b[0m\n",
    b"\x1f\x8b\x08\x00" + bytes(range(7, 200)) * 10,  # a gzipped log
    b"\x88\x45\x00\x00\x00\x00\x00\x00{\"__metadata__\":{}}" + bytes(range(256)) * 40,  # a .safetensors file
])
@pytest.mark.parametrize("as_json", [True, False])
def test_a_binary_file_is_refused_with_a_clear_message(tmp_path: Path, data: bytes, as_json: bool) -> None:
    path = tmp_path / "junk.log"
    path.write_bytes(data)
    code, out, err = classify(str(path), as_json=as_json)
    assert (code, out) == (EXIT_UNREADABLE, "")
    assert err.startswith(f"classify: {path} is a binary file, not a text log") and "Traceback" not in err


def test_binary_on_stdin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(bytes(range(256)) * 64)))
    code, out, err = classify("-", as_json=True)
    assert (code, out) == (EXIT_UNREADABLE, "") and "standard input is a binary file" in err


def test_a_text_log_with_stray_bad_bytes_is_still_a_log() -> None:
    text = ("Cloning into '/workspace/ComfyUI/custom_nodes/x'...\n" * 40).encode()
    assert not looks_binary(text[:500] + b"Author: Jos\xe9 \xff\xfe\n" + text[500:] + "é".encode()[:1])
    assert not looks_binary(b"") and not looks_binary("☃ snowman\n".encode() * 100)


@pytest.mark.parametrize(("lines", "code"), [
    (["Provisioning complete!", "To see the GUI go to: http://127.0.0.1:18188"], EXIT_OK),
    (["Downloading node: https://github.com/x/y..."], EXIT_OK),  # in progress
    (["ERROR: No matching distribution found for foo==1", "Provisioning complete!"], EXIT_DEGRADED),
    (["OSError: [Errno 28] No space left on device"], EXIT_FAILED),
])
def test_exit_status_follows_the_verdict(tmp_path: Path, lines: list[str], code: int) -> None:
    path = tmp_path / "x.log"
    path.write_text("\n".join(lines) + "\n")
    for as_json in (True, False):
        assert classify(str(path), as_json=as_json)[0] == code


@pytest.mark.parametrize("as_json", [True, False])
def test_missing_file_exits_2_with_a_message(tmp_path: Path, as_json: bool) -> None:
    code, out, err = classify(str(tmp_path / "nope.log"), as_json=as_json)
    assert code == EXIT_UNREADABLE and out == ""
    assert err == f"classify: no such file: {tmp_path / 'nope.log'}\n"


def test_directory_exits_2(tmp_path: Path) -> None:
    code, _, err = classify(str(tmp_path), as_json=True)
    assert code == EXIT_UNREADABLE and "is a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("as_json", [True, False])
def test_no_secret_in_output(as_json: bool) -> None:
    code, out, _ = classify(str(FIXTURES / "secrets.log"), as_json=as_json, secrets=SECRETS)
    assert code in (EXIT_OK, EXIT_DEGRADED, EXIT_FAILED)
    for secret in RAW_SECRETS:
        assert secret not in out
    assert "«redacted:MY_SECRET»" in out
    if as_json:
        texts = [f["text"] for f in json.loads(out)["findings"]]
        assert "ERROR: custom secret «redacted:MY_SECRET» leaked in an error" in texts


def test_patterns_redact_even_without_known_secrets() -> None:
    code, out, _ = classify(str(FIXTURES / "secrets.log"), as_json=True)
    assert code in (EXIT_OK, EXIT_DEGRADED, EXIT_FAILED)
    for secret in RAW_SECRETS[1:]:
        assert secret not in out


def test_through_the_bot_cli(tmp_path: Path) -> None:
    """The lead's ``python -m bot classify`` wiring runs this logic end to end."""
    proc = subprocess.run([sys.executable, "-m", "bot", "classify", str(FIXTURES / "retry_attempts.log"), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "failed"
    proc = subprocess.run([sys.executable, "-m", "bot", "classify", str(tmp_path / "absent.log")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "absent.log" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bot", "classify", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "3 degraded, 4 failed" in " ".join(proc.stdout.split())

"""The onstart text run with bash against a local HTTP server, and build_launch's env and limits."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bot.provisioning.contract import (
    ENV_LOG_PATH,
    ENV_MANIFEST,
    ENV_NODES,
    ENV_RUN_ID,
    ENV_SCRIPT_SHA256,
    ENV_SCRIPT_URL,
    EVENT_PREFIX,
)
from bot.provisioning.onstart import (
    PORTAL_CONFIG,
    VAST_ENV_TOTAL_MAX,
    VAST_ONSTART_MAX,
    LaunchError,
    build_launch,
    onstart_script,
    vast_limit_problems,
)
from tests.provisioning.contract_check import assert_contract_lines, assert_seq_monotonic
from tests.provisioning.helpers import WebServer, make_settings
from tests.provisioning.stubs import SCRIPT, Sandbox

BASH = shutil.which("bash") or "/bin/bash"
MARKER_SCRIPT = b'#!/usr/bin/env bash\necho "ran $PROV_RUN_ID" > "$MARKER"\n'
ENTRYPOINT = '#!/usr/bin/env bash\necho entrypoint >> "$ENTRY_MARKER"\n'


def wait_for(path: Path, text: str = "", limit_s: float = 20.0) -> str:
    """Poll until ``path`` exists (and holds ``text``); the background script runs on its own."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and text in (content := path.read_text()):
            return content
        time.sleep(0.05)
    raise AssertionError(f"{path} never showed {text!r}")


class Onstart:
    """Runs an onstart text with bash the way Vast does: a file, the instance env, no proxy vars."""

    def __init__(self, tmp_path: Path, web: WebServer) -> None:
        self.tmp = tmp_path
        self.web = web
        self.marker = tmp_path / "ran.marker"
        self.entry_marker = tmp_path / "entry.marker"
        self.bindir = tmp_path / "bin"
        self.bindir.mkdir()
        entry = self.bindir / "entrypoint.sh"
        entry.write_text(ENTRYPOINT)
        entry.chmod(0o755)

    def run(self, url: str, *, sha256: str | None = None, path_dirs: tuple[Path, ...] = (),
            **extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        settings = make_settings(self.tmp, provision_script_url=url, provision_script_sha256=sha256)
        spec = build_launch(settings, run_id="r-test1", label="vastops:test")
        env = {k: v for k, v in spec.env.items() if not k.startswith("-")}
        path = os.pathsep.join([*map(str, path_dirs), str(self.bindir), os.environ.get("PATH", "/usr/bin:/bin")])
        env.update({
            "PATH": path, "HOME": str(self.tmp), "TMPDIR": str(self.tmp), "MARKER": str(self.marker),
            "ENTRY_MARKER": str(self.entry_marker), "PROV_STDOUT": str(self.tmp / "container.log"),
            **extra,
        })
        onstart = self.tmp / "onstart.sh"
        onstart.write_text(spec.onstart)
        proc = subprocess.run([BASH, str(onstart)], env=env, capture_output=True, text=True, timeout=60,
                              cwd=self.tmp)
        return proc, Path(spec.env[ENV_LOG_PATH])


@pytest.fixture
def onstart(tmp_path: Path, web: WebServer) -> Onstart:
    return Onstart(tmp_path, web)


def assert_script_missing(proc: subprocess.CompletedProcess[str], log: Path, why: str, on: Onstart) -> dict:
    assert proc.returncode != 0
    events = assert_contract_lines(log.read_text(), run_id="r-test1")
    assert len(events) == 1, log.read_text()
    event = events[0]
    assert (event["ev"], event["st"], event["att"], event["seq"]) == ("script_missing", "fail", 0, 0)
    assert why in event["why"], event
    # Same line on stdout (the container log shows it too).
    assert assert_contract_lines(proc.stdout, run_id="r-test1") == events
    # It stopped: the script did not run and the image's entrypoint was not started either.
    assert not on.marker.exists() and not on.entry_marker.exists()
    assert not list(log.parent.glob("vastops-provision.sh*"))
    return event


def test_404_is_script_missing_and_nothing_runs(onstart: Onstart, web: WebServer) -> None:
    url = web.base + "/owner/abc123/raw/7aad3f7/provision-reliable.sh?token=SEKRIT"
    proc, log = onstart.run(url)
    event = assert_script_missing(proc, log, "http 404", onstart)
    assert event["url"] == f"127.0.0.1:{web.base.rsplit(':', 1)[1]}/owner/abc123/raw/7aad3f7/provision-reliable.sh"
    assert "SEKRIT" not in log.read_text()


def test_wrong_hash_is_script_missing(onstart: Onstart, web: WebServer) -> None:
    url = web.add("/provision.sh", MARKER_SCRIPT)
    proc, log = onstart.run(url, sha256=hashlib.sha256(b"another script").hexdigest())
    event = assert_script_missing(proc, log, "sha256 mismatch", onstart)
    assert hashlib.sha256(MARKER_SCRIPT).hexdigest()[:12] in event["why"]


def test_html_page_is_script_missing(onstart: Onstart, web: WebServer) -> None:
    url = web.add("/provision.sh", b"<!DOCTYPE html><html><body>Sign in to GitHub</body></html>",
                  Content_Type="text/html")
    proc, log = onstart.run(url)
    assert_script_missing(proc, log, "not a shell script: starts with <!DOCTYPE html>", onstart)


def test_empty_body_is_script_missing(onstart: Onstart, web: WebServer) -> None:
    proc, log = onstart.run(web.add("/provision.sh", b""))
    assert_script_missing(proc, log, "empty body", onstart)


def test_right_script_after_redirect_runs_in_background_then_entrypoint(onstart: Onstart, web: WebServer) -> None:
    web.add("/real/provision.sh", MARKER_SCRIPT)
    url = web.redirect("/latest", "/real/provision.sh")
    # An upper-case pin is accepted as the same hash.
    proc, log = onstart.run(url, sha256=hashlib.sha256(MARKER_SCRIPT).hexdigest().upper())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wait_for(onstart.marker).strip() == "ran r-test1"
    assert onstart.entry_marker.read_text() == "entrypoint\n"
    assert "script_missing" not in proc.stdout
    assert not log.exists() or "script_missing" not in log.read_text()


def test_non_vastai_image_onstart_does_not_call_an_entrypoint(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, docker_image="ghcr.io/me/comfy:1.0")
    spec = build_launch(settings, run_id="r-1", label="x")
    assert "entrypoint.sh" not in spec.onstart
    assert "entrypoint.sh" in onstart_script()


def test_onstart_runs_the_real_provision_script_with_the_same_log_path(onstart: Onstart, web: WebServer,
                                                                        tmp_path: Path) -> None:
    # End to end: the onstart fetches deploy/provision.sh from the server, checks its pin and runs it;
    # the script's events land in the very file build_launch named, which is what the collector reads.
    body = SCRIPT.read_bytes()
    url = web.add("/provision.sh", body)
    sandbox = Sandbox.create(tmp_path / "sb")
    (sandbox.root / "bin" / "curl").unlink()  # the onstart needs the real curl for the local server
    stub_env = {k: v for k, v in sandbox.env.items() if k.startswith(("STUB_", "PROV_HEARTBEAT", "PROV_PYTHON"))}
    proc, log = onstart.run(url, sha256=hashlib.sha256(body).hexdigest(), path_dirs=(sandbox.root / "bin",),
                            COMFYUI_DIR=sandbox.env["COMFYUI_DIR"], **stub_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(log, '"ev":"run.done"')
    events = assert_contract_lines(log.read_text(), run_id="r-test1")
    assert_seq_monotonic(events)
    assert events[0]["ev"] == "run.start" and events[0]["log"] == str(log)
    assert events[-1]["ev"] == "run.done" and events[-1]["st"] == "ok"
    # The background script's stdout went to the container log as well.
    assert wait_for(tmp_path / "container.log", '"ev":"run.done"')


# --------------------------------------------------------------------------- build_launch


def test_env_carries_the_contract_and_a_minimal_portal(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, provision_script_sha256="ab" * 32, hf_token="hf_" + "x" * 34, civitai_token="c" * 32,
    )
    spec = build_launch(settings, run_id="r-7f3a", label="vastops:g1:u2:r-7f3a",
                        extra_env={ENV_NODES: "https://github.com/a/b!"})
    env = spec.env
    assert env[ENV_LOG_PATH] == settings.provision_log_path
    assert env[ENV_RUN_ID] == "r-7f3a" and env["PROV_EVENT_PREFIX"] == EVENT_PREFIX
    assert env[ENV_SCRIPT_URL] == settings.provision_script_url and env[ENV_SCRIPT_SHA256] == "ab" * 32
    assert env[ENV_NODES] == "https://github.com/a/b!"
    assert "PROVISIONING_SCRIPT" not in env
    assert env["HF_TOKEN"].startswith("hf_") and env["CIVITAI_TOKEN"] == "c" * 32
    assert spec.secret_env == {"HF_TOKEN", "CIVITAI_TOKEN"}
    assert "hf_" not in str(spec.redacted_env()) and "c" * 32 not in str(spec.redacted_env())

    # PORTAL_CONFIG: exactly ComfyUI and the Instance Portal, well formed, ports published.
    apps = [entry.split(":", 4) for entry in env["PORTAL_CONFIG"].split("|")]
    assert env["PORTAL_CONFIG"] == PORTAL_CONFIG
    assert sorted(a[4] for a in apps) == ["ComfyUI", "Instance Portal"]
    for host, external, internal, path, _name in apps:
        assert host == "localhost" and external.isdigit() and internal.isdigit() and path == "/"
        assert env[f"-p {external}:{external}"] == "1"

    body = spec.create_body()
    assert body["image"] == settings.docker_image and body["disk"] == settings.disk_gb
    assert body["onstart"] == spec.onstart and body["env"] == env and body["runtype"] == spec.runtype
    assert len(spec.onstart) <= VAST_ONSTART_MAX


def test_env_value_over_255_chars_is_refused_with_a_manifest_hint(tmp_path: Path) -> None:
    nodes = " ".join(f"https://github.com/someone/ComfyUI-Node{i}" for i in range(8))
    with pytest.raises(LaunchError) as err:
        build_launch(make_settings(tmp_path), run_id="r-1", label="x", extra_env={ENV_NODES: nodes})
    (problem,) = err.value.problems
    assert f"{ENV_NODES} is {len(nodes)} characters" in problem and ENV_MANIFEST in problem


def test_env_total_over_32768_is_refused(tmp_path: Path) -> None:
    extra = {f"EXTRA_{i}": "v" * 250 for i in range(140)}
    with pytest.raises(LaunchError) as err:
        build_launch(make_settings(tmp_path), run_id="r-1", label="x", extra_env=extra)
    assert any(f"Vast allows {VAST_ENV_TOTAL_MAX}" in p for p in err.value.problems)


def test_onstart_over_4096_is_refused() -> None:
    problems = vast_limit_problems({}, "x" * (VAST_ONSTART_MAX + 1))
    assert problems == [f"onstart is {VAST_ONSTART_MAX + 1} characters; Vast allows {VAST_ONSTART_MAX}"]
    assert vast_limit_problems({"A": "v" * 255}, "x" * VAST_ONSTART_MAX) == []


def test_contract_vars_cannot_be_overridden_and_default_script_var_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as err:
        build_launch(
            make_settings(tmp_path), run_id="r-1", label="x",
            extra_env={ENV_LOG_PATH: "/workspace/provision_v3.log", "PROVISIONING_SCRIPT": "https://x/y.sh"},
        )
    text = str(err.value)
    assert ENV_LOG_PATH in text and "one source of truth" in text
    assert "PROVISIONING_SCRIPT must not be set" in text


def test_missing_url_and_bad_run_id_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as err:
        build_launch(make_settings(tmp_path, provision_script_url=None), run_id="bad id;rm", label="x")
    assert len(err.value.problems) == 2
    assert "PROVISION_SCRIPT_URL is not set" in str(err.value)

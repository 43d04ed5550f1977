"""deploy/provision.sh run for real with bash, stub tools on PATH, events read from $PROV_LOG_PATH."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.provisioning.contract_check import assert_contract_lines, assert_seq_monotonic
from tests.provisioning.stubs import SCRIPT, Run, Sandbox, parse_events

HF_TOKEN = "hf_TESTtoken0123456789abcdefghijklmnopq"
CIVITAI_TOKEN = "c1v1ta10123456789abcdef0123456789"
HF_URL = "https://huggingface.co/org/sdxl/resolve/main/sdxl.safetensors"
CIVITAI_URL = "https://civitai.com/api/download/models/12345"
IMPACT = "https://github.com/ltdrdata/ComfyUI-Impact-Pack"
REACTOR = "https://github.com/Gourieff/ComfyUI-ReActor"
MODEL_BYTES = b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"\x01" * 4096


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    sb = Sandbox.create(tmp_path)
    sb.repo("ComfyUI-Impact-Pack", "numpy\nopencv-python\n")
    sb.repo("ComfyUI-ReActor", "insightface==0.7.3\n")
    sb.repo("ComfyUI-KJNodes", None)
    sb.serve(HF_URL, MODEL_BYTES, auth=f"Authorization: Bearer {HF_TOKEN}")
    sb.serve(CIVITAI_URL, b"PK\x03\x04" + b"\x02" * 4096, auth=f"Authorization: Bearer {CIVITAI_TOKEN}")
    return sb


def checked(run: Run) -> list[dict]:
    """The run's events after the contract checks every test applies."""
    events = assert_contract_lines(run.log, run_id="r-test1")
    assert events, f"no events in the log\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert_seq_monotonic(events)
    assert events[-1]["ev"] == "run.done", run.log
    # The same lines went to stdout (the container log) as to the file.
    assert parse_events(run.stdout) == events
    return events


def models(*specs: str) -> str:
    return " ".join(specs)


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck; .ci/run installs it)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_good_run_logs_every_step_to_the_env_log_path(sandbox: Sandbox) -> None:
    run = sandbox.run(
        PROV_NODES=f"{IMPACT}! {REACTOR}@v0.5.2 https://github.com/kijai/ComfyUI-KJNodes.git",
        PROV_MODELS=models(f"checkpoints|{HF_URL}?download=true|1000", f"loras|{CIVITAI_URL}?type=Model|1000"),
        PROV_APT_PACKAGES="ffmpeg libgl1",
        PROV_PIP_PACKAGES="onnxruntime-gpu",
        HF_TOKEN=HF_TOKEN,
        CIVITAI_TOKEN=CIVITAI_TOKEN,
    )
    events = checked(run)
    assert run.rc == 0, run.log
    # The log path came from the environment: a nested dir under tmp that the script created.
    assert run.log_path.is_relative_to(sandbox.root.parent)
    assert run.done["st"] == "ok" and run.done["step"] == "done"
    assert (run.done["nodes_ok"], run.done["nodes_fail"]) == (3, 0)
    assert (run.done["models_ok"], run.done["models_fail"]) == (2, 0)

    names = [e["ev"] for e in events]
    assert names[:3] == ["run.start", "env", "torch"]
    env = run.ev("env")[0]
    assert env["gpu"] == "NVIDIA GeForce RTX 4090" and env["driver"] == "550.54.14"
    assert env["cuda_max"] == "12.4" and env["py"] == "3.11.9"
    assert env["disk_free_gb"] == 80.0 and env["disk_total_gb"] == 100.0
    assert [e["st"] for e in run.ev("apt")] == ["start", "ok"] and run.ev("apt")[0]["n"] == 2
    assert [e["st"] for e in run.ev("pip")] == ["start", "ok"]

    # A torch probe follows the pip block and every node requirements install.
    afters = [e["after"] for e in run.ev("torch")]
    assert afters == ["start", "pip", "node.reqs:ComfyUI-Impact-Pack", "node.reqs:ComfyUI-ReActor"]
    assert all(e["changed"] is False for e in run.ev("torch"))

    clones = {e["name"]: e for e in run.ev("node.clone") if e["st"] == "start"}
    assert clones["ComfyUI-Impact-Pack"]["required"] is True
    assert clones["ComfyUI-ReActor"]["ref"] == "v0.5.2" and clones["ComfyUI-ReActor"]["required"] is False
    assert clones["ComfyUI-KJNodes"]["url"] == "github.com/kijai/ComfyUI-KJNodes.git"
    assert "checkout --quiet v0.5.2" in "\n".join(run.calls("git"))
    kj = [e for e in run.ev("node.reqs") if e["name"] == "ComfyUI-KJNodes"]
    assert [e["st"] for e in kj] == ["skip"]

    comfy = Path(sandbox.env["COMFYUI_DIR"])
    assert (comfy / "models" / "checkpoints" / "sdxl.safetensors").read_bytes() == MODEL_BYTES
    assert (comfy / "models" / "loras" / "12345").stat().st_size > 4096
    # Each model: disk check, then start, then done, in that order.
    per_model = [(e["ev"], e["st"]) for e in events if e["ev"] in ("disk.check", "model.start", "model.done")]
    assert per_model == [("disk.check", "ok"), ("model.start", "start"), ("model.done", "ok")] * 2
    # Events name host + path only, never the query string.
    starts = run.ev("model.start")
    assert (starts[0]["host"], starts[0]["path"]) == ("huggingface.co", "/org/sdxl/resolve/main/sdxl.safetensors")
    assert "download=true" not in run.log.split("@@prov")[-1]


def test_tokens_go_in_headers_to_their_own_host_and_never_into_the_log(sandbox: Sandbox) -> None:
    run = sandbox.run(
        PROV_MODELS=models(f"checkpoints|{HF_URL}|1000", f"loras|{CIVITAI_URL}|1000"),
        HF_TOKEN=HF_TOKEN,
        CIVITAI_TOKEN=CIVITAI_TOKEN,
    )
    checked(run)
    assert run.rc == 0 and run.done["st"] == "ok", run.log
    for token in (HF_TOKEN, CIVITAI_TOKEN):
        assert token not in run.log
        assert token not in run.stdout
        assert token not in run.stderr
    calls = [line.split("\t") for line in run.calls("curl")]
    assert calls, "curl was never called"
    for method, url, headers, argv in calls:
        assert HF_TOKEN not in url and CIVITAI_TOKEN not in url
        # Never on the command line either (visible to anyone running ps on the instance).
        assert HF_TOKEN not in argv and CIVITAI_TOKEN not in argv
        if url.startswith("https://huggingface.co/"):
            assert headers == f"Authorization: Bearer {HF_TOKEN}", (method, url)
        if url.startswith("https://civitai.com/"):
            assert headers == f"Authorization: Bearer {CIVITAI_TOKEN}", (method, url)
    assert {(m, u.split("/")[2]) for m, u, *_ in calls} == {
        ("HEAD", "huggingface.co"), ("GET", "huggingface.co"), ("HEAD", "civitai.com"), ("GET", "civitai.com"),
    }


def test_no_token_header_is_sent_to_other_hosts(sandbox: Sandbox) -> None:
    url = "https://example.org/files/vae.safetensors"
    sandbox.serve(url, MODEL_BYTES)
    run = sandbox.run(PROV_MODELS=f"vae|{url}|1000", HF_TOKEN=HF_TOKEN, CIVITAI_TOKEN=CIVITAI_TOKEN)
    checked(run)
    assert run.rc == 0, run.log
    assert all(line.split("\t")[2] == "" for line in run.calls("curl"))


def test_failing_required_node_fails_the_run(sandbox: Sandbox) -> None:
    run = sandbox.run(
        PROV_NODES=f"{REACTOR} {IMPACT}!",
        PROV_MODELS=f"checkpoints|{HF_URL}|1000",
        HF_TOKEN=HF_TOKEN,
        STUB_GIT_FAIL="ComfyUI-Impact-Pack",
    )
    checked(run)
    assert run.rc != 0
    fail = [e for e in run.ev("node.clone") if e["st"] == "fail"]
    assert len(fail) == 1 and fail[0]["name"] == "ComfyUI-Impact-Pack" and fail[0]["required"] is True
    assert "not found" in fail[0]["why"]
    done = run.done
    assert done["st"] == "fail" and done["step"] == "node:ComfyUI-Impact-Pack" and done["rc"] == run.rc
    assert done["nodes_ok"] == 1 and done["nodes_fail"] == 1
    assert "required node ComfyUI-Impact-Pack" in done["why"]
    # The run stopped there: no model was even looked at.
    assert run.calls("curl") == [] and run.ev("model.start") == []
    assert not (Path(sandbox.env["COMFYUI_DIR"]) / "custom_nodes" / "ComfyUI-Impact-Pack").exists()


def test_failing_optional_node_degrades_and_continues(sandbox: Sandbox) -> None:
    run = sandbox.run(
        PROV_NODES=f"{REACTOR} {IMPACT}!",
        PROV_MODELS=f"checkpoints|{HF_URL}|1000",
        HF_TOKEN=HF_TOKEN,
        STUB_PIP_FAIL="ComfyUI-ReActor",
    )
    checked(run)
    assert run.rc == 0, run.log
    fail = [e for e in run.ev("node.reqs") if e["st"] == "fail"]
    assert len(fail) == 1 and fail[0]["name"] == "ComfyUI-ReActor" and fail[0]["required"] is False
    assert fail[0]["rc"] == 1 and "insightface" in fail[0]["why"]
    # It went on: the next node and the model were installed.
    assert any(e["name"] == "ComfyUI-Impact-Pack" and e["st"] == "ok" for e in run.ev("node.reqs"))
    assert [e["st"] for e in run.ev("model.done")] == ["ok"]
    done = run.done
    assert done["st"] == "degraded" and done["step"] == "node:ComfyUI-ReActor"
    assert (done["nodes_ok"], done["nodes_fail"], done["models_ok"]) == (1, 1, 1)


def test_disk_check_refuses_before_downloading(sandbox: Sandbox) -> None:
    big = "https://huggingface.co/org/flux/resolve/main/flux1-dev.safetensors"
    sandbox.serve(big, MODEL_BYTES, length=24 * 1024**3)
    run = sandbox.run(
        PROV_MODELS=models(f"unet|{big}", f"checkpoints|{HF_URL}|1000"),
        STUB_DF_AVAIL_KB=str(10 * 1024 * 1024),  # 10 GB free for a 24 GB file
    )
    checked(run)
    assert run.rc != 0
    check = run.ev("disk.check")
    assert len(check) == 1 and check[0]["st"] == "fail" and check[0]["name"] == "flux1-dev.safetensors"
    assert check[0]["free_gb"] == 10.0 and check[0]["need_gb"] > 24
    # Only the HEAD for the size was made: no download of this or any later model.
    assert [c.split("\t")[0] for c in run.calls("curl")] == ["HEAD"]
    assert run.ev("model.start") == []
    assert run.done["st"] == "fail" and run.done["step"] == "model:flux1-dev.safetensors"
    assert "not enough disk" in run.done["why"]


def test_manifest_size_is_used_when_there_is_no_content_length(sandbox: Sandbox, tmp_path: Path) -> None:
    manifest = tmp_path / "recipe.txt"
    manifest.write_text(f"# recipe\nmodel checkpoints|{HF_URL}|1000|{30 * 1024**3}\n")
    run = sandbox.run(PROV_MANIFEST=str(manifest), STUB_DF_AVAIL_KB=str(20 * 1024 * 1024))
    checked(run)
    assert run.rc != 0 and run.ev("disk.check")[0]["st"] == "fail"
    assert run.calls("curl") == []  # the manifest gave the size; nothing was fetched at all


def test_torch_replaced_by_node_requirements_is_a_visible_failure(sandbox: Sandbox) -> None:
    sandbox.repo("ComfyUI-Bad", "torch==2.6.0\nnumpy\n")
    run = sandbox.run(
        PROV_NODES=f"https://github.com/someone/ComfyUI-Bad {IMPACT}",
        STUB_PIP_TORCH="2.6.0+cu126",
    )
    checked(run)
    torch = run.ev("torch")
    assert torch[0]["after"] == "start" and torch[0]["changed"] is False
    changed = torch[-1]
    assert changed["st"] == "fail" and changed["changed"] is True
    assert (changed["ver"], changed["base"]) == ("2.6.0+cu126", "2.5.1+cu124")
    assert changed["after"] == "node.reqs:ComfyUI-Bad"
    assert run.rc != 0
    assert run.done["st"] == "fail" and run.done["step"] == "node:ComfyUI-Bad"
    assert "torch changed" in run.done["why"]
    # Nothing after the swap ran.
    assert all(e.get("name") != "ComfyUI-Impact-Pack" for e in run.events)


def test_error_page_instead_of_model_fails_after_trying_the_rest(sandbox: Sandbox) -> None:
    bad = "https://civitai.com/api/download/models/999"
    sandbox.serve(bad, b'{"error": "Unauthorized", "message": "The creator requires login"}' + b" " * 200)
    run = sandbox.run(PROV_MODELS=models(f"loras|{bad}|100", f"checkpoints|{HF_URL}|1000"), HF_TOKEN=HF_TOKEN)
    checked(run)
    assert run.rc != 0
    done = run.ev("model.done")
    assert [(e["name"], e["st"]) for e in done] == [("999", "fail"), ("sdxl.safetensors", "ok")]
    assert "JSON/HTML" in done[0]["why"]
    assert run.done["st"] == "fail" and run.done["step"] == "model:999"
    assert (run.done["models_ok"], run.done["models_fail"]) == (1, 1)
    assert not list((Path(sandbox.env["COMFYUI_DIR"]) / "models" / "loras").iterdir())


def test_file_under_the_size_floor_fails(sandbox: Sandbox) -> None:
    run = sandbox.run(PROV_MODELS=f"checkpoints|{HF_URL}", HF_TOKEN=HF_TOKEN)  # default floor 1 MB
    checked(run)
    assert run.rc != 0
    assert run.ev("model.done")[0]["st"] == "fail" and "too small" in run.ev("model.done")[0]["why"]


def test_missing_log_path_fails_loudly_on_stdout(sandbox: Sandbox) -> None:
    env = dict(sandbox.env)
    del env["PROV_LOG_PATH"]
    sandbox.env = env
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    events = assert_contract_lines(proc.stdout, run_id="r-test1")
    assert [e["ev"] for e in events] == ["run.done"]
    assert events[0]["st"] == "fail" and "PROV_LOG_PATH" in events[0]["why"]


def test_manifest_from_url_is_a_fetch_event(sandbox: Sandbox) -> None:
    url = "https://recipes.example.org/vastops/recipe.txt"
    sandbox.serve(url, f"node {IMPACT}!\nmodel checkpoints|{HF_URL}|1000\napt ffmpeg\n".encode())
    run = sandbox.run(PROV_MANIFEST=f"{url}?rev=3", HF_TOKEN=HF_TOKEN)
    checked(run)
    assert run.rc == 0, run.log
    fetch = run.ev("fetch")
    assert len(fetch) == 1 and fetch[0]["st"] == "ok" and fetch[0]["what"] == "manifest"
    assert (fetch[0]["host"], fetch[0]["path"], fetch[0]["http"]) == ("recipes.example.org", "/vastops/recipe.txt", 200)
    assert run.done["nodes_ok"] == 1 and run.done["models_ok"] == 1
    assert run.calls("apt-get")


def test_missing_manifest_fails_the_run(sandbox: Sandbox) -> None:
    run = sandbox.run(PROV_MANIFEST="https://recipes.example.org/vastops/gone.txt")
    checked(run)
    assert run.rc != 0
    fetch = run.ev("fetch")
    assert fetch[0]["st"] == "fail" and fetch[0]["http"] == 404
    assert run.done["step"] == "fetch"


def test_rerun_counts_the_attempt_and_skips_what_is_there(sandbox: Sandbox) -> None:
    env = {"PROV_NODES": IMPACT, "PROV_MODELS": f"checkpoints|{HF_URL}|1000", "HF_TOKEN": HF_TOKEN}
    first = sandbox.run(**env)
    second = sandbox.run(**env)
    assert first.rc == 0 and second.rc == 0
    # Both attempts are in the same log; each has its own seq 1..n.
    events = assert_contract_lines(second.log, run_id="r-test1")
    assert_seq_monotonic(events)
    assert sorted({e["att"] for e in events}) == [1, 2]
    again = [e for e in events if e["att"] == 2]
    assert [e["st"] for e in again if e["ev"] == "node.clone"] == ["skip"]
    assert [e["st"] for e in again if e["ev"] == "model.done"] == ["skip"]
    assert [e["st"] for e in again if e["ev"] == "run.done"] == ["ok"]


def test_heartbeat_reports_the_current_step_during_a_download(sandbox: Sandbox) -> None:
    run = sandbox.run(
        PROV_MODELS=f"checkpoints|{HF_URL}|1000",
        HF_TOKEN=HF_TOKEN,
        PROV_HEARTBEAT_S="1",
        # The stub download only returns once the heartbeat has reported its progress.
        STUB_CURL_WAIT_FOR='"ev":"model.progress"',
    )
    checked(run)
    assert run.rc == 0, run.log
    beats = run.ev("heartbeat")
    assert beats and beats[0]["step"] == "model:sdxl.safetensors"
    assert run.ev("model.progress")[0]["name"] == "sdxl.safetensors"
    # The heartbeat was stopped at exit: run.done is the last line of the log.
    assert run.events[-1]["ev"] == "run.done"


def test_secret_in_a_model_url_query_never_reaches_an_event(sandbox: Sandbox) -> None:
    url = "https://example.org/files/vae.safetensors"
    sandbox.serve(url, MODEL_BYTES)
    run = sandbox.run(PROV_MODELS=f"vae|{url}?token=SEKRIT123&x=1|1000")
    events = checked(run)
    assert run.rc == 0
    assert "SEKRIT123" not in "".join(str(e) for e in events)

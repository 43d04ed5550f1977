"""The manifest preflight against model and git hosts served on 127.0.0.1 (bot.sim.hub.FakeHub and a
plain threaded HTTP server): redirects, 401/403/gated, 404, sizes, disk, node repos, CUDA; no network."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.clock import FakeClock
from bot.provisioning.preflight import PreflightReport, preflight
from bot.provisioning.probes import CACHE_TTL_S, ProbeCache
from bot.sim.catalog import make_offer
from bot.sim.hub import FakeHub, HubFile, HubRepo
from bot.vast.models import Offer
from tests.provisioning.helpers import Route, WebServer, make_settings

FLUX = "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"
SDXL = "https://huggingface.co/stabilityai/sdxl/resolve/main/sd_xl_base_1.0.safetensors"
CIVITAI = "https://civitai.com/api/download/models/128713"
MANAGER = "https://github.com/ltdrdata/ComfyUI-Manager"
HF_GOOD, HF_BAD, CIVITAI_KEY = "hf_GoodToken0123456789", "hf_RevokedToken987654", "civ_Key0123456789abcdef"
GB = 1024**3


def hub_files() -> list[HubFile]:
    return [HubFile(FLUX, size=23 * GB, gated=True), HubFile(SDXL, size=7 * GB),
            HubFile(CIVITAI, size=2 * GB, token=CIVITAI_KEY)]


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    repos = [HubRepo(MANAGER, requirements="GitPython\ntyper\n", tags={"v3.0": "ab" * 20}),
             HubRepo("https://github.com/Gourieff/ComfyUI-ReActor", requirements="insightface==0.7.3\n"),
             HubRepo("https://github.com/someone/TorchPinner", requirements="numpy\ntorch==2.1.0\n"),
             HubRepo("https://github.com/someone/CpuIndex",
                     requirements="--extra-index-url https://download.pytorch.org/whl/cpu\ntorchvision\n"),
             HubRepo("https://github.com/someone/NoReqs"),
             HubRepo("https://codeberg.org/someone/GiteaNode", requirements="xformers\n")]
    async with FakeHub(hub_files(), repos, hf_tokens=(HF_GOOD,)) as server:
        yield server


async def run(tmp_path: Path, hub: FakeHub, *, cache: ProbeCache | None = None, offer: Offer | None = None,
              request_disk: int | None = None, **settings: Any) -> PreflightReport:
    values: dict[str, Any] = {"provision_script_url": None, "disk_gb": 200}
    values.update(settings)
    report = await preflight(make_settings(tmp_path, **values), url_map=hub.url_map, offer=offer, disk_gb=request_disk,
                             cache=cache or ProbeCache(FakeClock()), probe_timeout_s=5)
    # No script URL here: only the manifest's checks are under test.
    report.checks = [c for c in report.checks if c.name != "script URL"]
    for line in report.render().splitlines():
        assert len(line) < 300, line
    return report


def check(report: PreflightReport, name: str) -> tuple[str, str, str]:
    found = report.get(name)
    assert found is not None, report.render()
    return found.status, found.detail, found.fix


def no_secret_anywhere(hub: FakeHub, report: PreflightReport, *secrets: str) -> None:
    text = report.render()
    for secret in secrets:
        assert secret not in text
        for req in hub.requests:
            assert secret not in req.path and secret not in req.query


# ----------------------------------------------------------------------------- models


async def test_redirected_model_passes_with_its_size_and_the_token_only_in_the_header(
        tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, hf_token=HF_GOOD, provision_models=f"checkpoints|{SDXL}")
    status, detail, _ = check(report, "model sd_xl_base_1.0.safetensors")
    assert status == "ok" and "7.0 GB at huggingface.co" in detail
    hub_req = hub.seen("/o/huggingface.co/stabilityai/sdxl/resolve/")
    cdn_req = hub.seen("/cdn/")
    assert len(hub_req) == 1 and hub_req[0].headers.get("Authorization") == f"Bearer {HF_GOOD}"
    assert hub_req[0].headers.get("Range") == "bytes=0-0"
    # The redirect left the origin: the CDN never sees the token.
    assert cdn_req and all("Authorization" not in r.headers for r in cdn_req)
    no_secret_anywhere(hub, report, HF_GOOD)


async def test_a_model_that_answers_only_with_the_token_header_passes(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, civitai_token=CIVITAI_KEY, provision_models=f"loras|{CIVITAI}")
    assert check(report, "model 128713")[0] == "ok", report.render()
    no_secret_anywhere(hub, report, CIVITAI_KEY)


async def test_the_token_goes_only_to_its_own_host(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, hf_token=HF_GOOD, civitai_token=CIVITAI_KEY,
                       provision_models=f"a|{CIVITAI} b|{SDXL}")
    assert report.ok, report.render()
    civitai = hub.seen("/o/civitai.com/")
    assert civitai and civitai[0].headers["Authorization"] == f"Bearer {CIVITAI_KEY}"
    assert all(HF_GOOD not in str(r.headers) for r in civitai)


async def test_civitai_401_without_a_token_names_civitai_token(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_models=f"loras|{CIVITAI}")
    status, detail, fix = check(report, "model 128713")
    assert status == "fail" and not report.ok
    assert "HTTP 401" in detail and "CIVITAI_TOKEN is not set" in detail and "CIVITAI_TOKEN" in fix


async def test_civitai_invalid_token_is_named(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, civitai_token="civ_expired_expired", provision_models=f"loras|{CIVITAI}")
    status, detail, fix = check(report, "model 128713")
    assert status == "fail" and "HTTP 401" in detail and "CIVITAI_TOKEN is refused" in detail
    assert "set CIVITAI_TOKEN" in fix
    no_secret_anywhere(hub, report, "civ_expired_expired")


async def test_civitai_token_without_access(tmp_path: Path) -> None:
    file = HubFile(CIVITAI, size=GB, token=CIVITAI_KEY, other_tokens=("civ_other_account",))
    async with FakeHub([file]) as hub:
        report = await run(tmp_path, hub, civitai_token="civ_other_account", provision_models=f"loras|{CIVITAI}")
    status, detail, _ = check(report, "model 128713")
    assert status == "fail" and "HTTP 403" in detail and "may not download this model" in detail


async def test_gated_model_without_a_token(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_models=f"checkpoints|{FLUX}")
    status, detail, fix = check(report, "model flux1-dev.safetensors")
    assert status == "fail"
    assert "HTTP 401" in detail and "gated" in detail and "HF_TOKEN is not set" in detail
    assert "https://huggingface.co/black-forest-labs/FLUX.1-dev" in fix and "HF_TOKEN" in fix


async def test_gated_model_with_an_invalid_token(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, hf_token=HF_BAD, provision_models=f"checkpoints|{FLUX}")
    status, detail, fix = check(report, "model flux1-dev.safetensors")
    assert status == "fail" and "HF_TOKEN is invalid" in detail and "set HF_TOKEN" in fix
    assert hub.seen("/api/whoami-v2")
    no_secret_anywhere(hub, report, HF_BAD)


async def test_gated_model_whose_terms_the_account_has_not_accepted(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, hf_token=HF_GOOD, provision_models=f"checkpoints|{FLUX}")
    status, detail, fix = check(report, "model flux1-dev.safetensors")
    assert status == "fail" and "HTTP 403" in detail and "has not accepted its terms" in detail
    assert "accept the terms" in fix
    no_secret_anywhere(hub, report, HF_GOOD)


async def test_gated_model_whose_terms_were_accepted_passes(tmp_path: Path) -> None:
    async with FakeHub([HubFile(FLUX, size=23 * GB, gated=True, accepted=True)], hf_tokens=(HF_GOOD,)) as hub:
        report = await run(tmp_path, hub, hf_token=HF_GOOD, provision_models=f"checkpoints|{FLUX}")
    assert check(report, "model flux1-dev.safetensors")[0] == "ok", report.render()


async def test_gated_without_the_error_header_is_recognised_from_the_model_api(tmp_path: Path,
                                                                                web: WebServer) -> None:
    # A 403 with no X-Error-Code: the Hub's model API says the repo is gated.
    web.add("/hf/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors", b"denied", 403)
    web.add("/hf/api/whoami-v2", b'{"name": "me"}')
    web.add("/hf/api/models/black-forest-labs/FLUX.1-dev", b'{"id": "x", "gated": "auto"}')
    report = await preflight(make_settings(tmp_path, provision_script_url=None, hf_token=HF_GOOD,
                                           provision_models=f"checkpoints|{FLUX}"),
                             url_map={"https://huggingface.co": web.base + "/hf"}, cache=ProbeCache(FakeClock()))
    status, detail, _ = check(report, "model flux1-dev.safetensors")
    assert status == "fail" and "is gated" in detail and "/hf/api/models/black-forest-labs/FLUX.1-dev" in web.requests


async def test_missing_model_file_names_the_model(tmp_path: Path, hub: FakeHub) -> None:
    url = "https://huggingface.co/stabilityai/sdxl/resolve/main/sd_xl_refiner_1.0.safetensors"
    report = await run(tmp_path, hub, provision_models=f"checkpoints|{url}")
    status, detail, fix = check(report, "model sd_xl_refiner_1.0.safetensors")
    assert status == "fail" and "HTTP 404" in detail and "no such file" in detail and "PROVISION_MODELS" in fix


async def test_plain_host_404_and_401(tmp_path: Path, web: WebServer) -> None:
    web.add("/private/model.safetensors", b"", 401)
    models = f"a|{web.base}/gone/model.ckpt b|{web.base}/private/model.safetensors"
    report = await preflight(make_settings(tmp_path, provision_script_url=None, provision_models=models),
                             cache=ProbeCache(FakeClock()))
    assert "HTTP 404" in check(report, "model model.ckpt")[1]
    status, detail, fix = check(report, "model model.safetensors")
    assert status == "fail" and "credentials the bot does not send" in detail and "public URL" in fix


async def test_a_token_in_a_model_url_is_refused_without_being_shown(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_models=f"loras|{CIVITAI}?token={CIVITAI_KEY}")
    status, detail, fix = check(report, "model 128713")
    assert status == "fail" and "token" in detail and "CIVITAI_TOKEN" in fix
    assert not hub.requests
    no_secret_anywhere(hub, report, CIVITAI_KEY)


async def test_an_html_page_instead_of_a_model_fails(tmp_path: Path, web: WebServer) -> None:
    web.add("/m/model.safetensors", b"<html>login</html>", Content_Type="text/html")
    report = await preflight(make_settings(tmp_path, provision_script_url=None,
                                           provision_models=f"a|{web.base}/m/model.safetensors"),
                             cache=ProbeCache(FakeClock()))
    assert "serves text/html" in check(report, "model model.safetensors")[1]


async def test_server_errors_and_timeouts_warn_as_not_verified(tmp_path: Path, web: WebServer) -> None:
    web.add("/m/busy.safetensors", b"", 503)
    hold = threading.Event()
    web.routes["/m/slow.safetensors"] = Route(200, b"x", {}, hold)
    try:
        report = await preflight(make_settings(tmp_path, provision_script_url=None, provision_models=(
            f"a|{web.base}/m/busy.safetensors b|{web.base}/m/slow.safetensors")),
            cache=ProbeCache(FakeClock()), probe_timeout_s=0.2)
    finally:
        hold.set()
    host = web.base.removeprefix("http://")
    assert check(report, "model busy.safetensors")[:2] == ("warn", f"HTTP 503 from {host}/m/busy.safetensors "
                                                           "(not verified)")
    status, detail, _ = check(report, "model slow.safetensors")
    assert status == "warn" and "no answer within" in detail


# ----------------------------------------------------------------------------- disk


async def test_models_that_do_not_fit_disk_gb_fail_with_the_size_to_set(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, hf_token=HF_GOOD, disk_gb=20, provision_models=f"a|{SDXL}")
    status, detail, fix = check(report, "disk")
    # 7 GB of model + ~16 GB image + 5 GB margin = 28 GB
    assert status == "fail" and "models 7.0 GB" in detail and "= 28 GB > DISK_GB=20" in detail
    assert "DISK_GB=28" in fix
    ok = await run(tmp_path, hub, hf_token=HF_GOOD, disk_gb=28, provision_models=f"a|{SDXL}")
    assert check(ok, "disk")[0] == "ok"


async def test_manifest_size_bytes_counts_when_the_server_gives_none(tmp_path: Path, web: WebServer) -> None:
    web.add("/m/nosize.bin", b"")  # Content-Length 0 on a 200: no usable size
    models = f"a|{web.base}/m/nosize.bin|1|{60 * GB}"
    report = await preflight(make_settings(tmp_path, provision_script_url=None, provision_models=models,
                                           disk_gb=80), cache=ProbeCache(FakeClock()))
    status, detail, fix = check(report, "disk")
    assert status == "fail" and "models 60.0 GB" in detail and "DISK_GB=81" in fix


async def test_the_request_disk_and_the_host_disk_are_checked(tmp_path: Path, hub: FakeHub) -> None:
    offer = Offer.model_validate(make_offer(1, "RTX 4090", 0.3, "Utah, US", disk_space=25.0))
    report = await run(tmp_path, hub, hf_token=HF_GOOD, offer=offer, request_disk=100, provision_models=f"a|{SDXL}")
    status, detail, fix = check(report, "disk")
    assert status == "fail" and "this host offers only 25 GB" in detail and "at least 28 GB" in fix
    roomy = Offer.model_validate(make_offer(1, "RTX 4090", 0.3, "Utah, US"))
    report = await run(tmp_path, hub, hf_token=HF_GOOD, offer=roomy, request_disk=24, provision_models=f"a|{SDXL}")
    assert "> the request's disk 24 GB" in check(report, "disk")[1]


# ----------------------------------------------------------------------------- nodes


async def test_reachable_node_at_its_ref_passes(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_nodes=f"{MANAGER}@main! https://github.com/Gourieff/ComfyUI-ReActor")
    assert check(report, "node ComfyUI-Manager") == ("ok", "@main exists; requirements.txt leaves torch alone", "")
    assert check(report, "node ComfyUI-ReActor")[0] == "ok"
    assert hub.seen("/o/github.com/ltdrdata/ComfyUI-Manager/info/refs")[0].query == "service=git-upload-pack"
    # requirements.txt read raw at the commit the ref resolved to
    assert hub.seen("/o/raw.githubusercontent.com/ltdrdata/ComfyUI-Manager/")


async def test_tag_and_commit_pins(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_nodes=f"{MANAGER}@v3.0!")
    assert check(report, "node ComfyUI-Manager")[0] == "ok"
    report = await run(tmp_path, hub, provision_nodes=f"{MANAGER}@0123abc!")
    status, detail, _ = check(report, "node ComfyUI-Manager")
    assert status == "ok" and "not a branch tip" in detail


async def test_missing_required_repository_fails_optional_warns(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_nodes="https://github.com/nobody/Gone! https://github.com/nobody/Gone2")
    status, detail, fix = check(report, "node Gone")
    assert status == "fail" and "does not exist" in detail and "HTTP 401" in detail and "PROVISION_NODES" in fix
    assert check(report, "node Gone2")[0] == "warn"


async def test_missing_ref_fails(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_nodes=f"{MANAGER}@no-such-branch!")
    status, detail, _ = check(report, "node ComfyUI-Manager")
    assert status == "fail" and "no branch or tag no-such-branch" in detail


@pytest.mark.parametrize(("node", "phrase"), [
    ("https://github.com/someone/TorchPinner", "pins torch==2.1.0"),
    ("https://github.com/someone/CpuIndex", "adds a CPU index"),
    ("https://codeberg.org/someone/GiteaNode", "installs xformers"),
])
async def test_torch_replacing_requirements_block_required_nodes(tmp_path: Path, hub: FakeHub, node: str,
                                                                 phrase: str) -> None:
    name = "node " + node.rsplit("/", 1)[1]
    required = await run(tmp_path, hub, provision_nodes=node + "!")
    status, detail, fix = check(required, name)
    assert status == "fail" and phrase in detail and "replaces the CUDA torch" in detail and "required" in fix
    optional = await run(tmp_path, hub, provision_nodes=node)
    assert check(optional, name)[0] == "warn" and optional.ok


async def test_node_without_requirements_passes(tmp_path: Path, hub: FakeHub) -> None:
    report = await run(tmp_path, hub, provision_nodes="https://github.com/someone/NoReqs!")
    assert check(report, "node NoReqs") == ("ok", "default branch exists; no requirements.txt", "")


# ----------------------------------------------------------------------------- manifest file and CUDA


async def test_manifest_url_is_read_and_its_entries_checked(tmp_path: Path, hub: FakeHub, web: WebServer) -> None:
    web.add("/manifest.txt", (f"# our stack\nnode {MANAGER}@main!\nmodel checkpoints|{SDXL}\n"
                              "pip torch==2.8.0+cu128 accelerate\n").encode())
    report = await preflight(make_settings(tmp_path, provision_script_url=None, hf_token=HF_GOOD,
                                           provision_manifest=web.base + "/manifest.txt"),
                             url_map=hub.url_map, cache=ProbeCache(FakeClock()))
    assert check(report, "manifest")[0] == "ok"
    assert check(report, "node ComfyUI-Manager")[0] == "ok"
    assert check(report, "model sd_xl_base_1.0.safetensors")[0] == "ok"
    status, detail, _ = check(report, "GPU/CUDA")
    assert status == "ok" and "CUDA 12.8" in detail and "torch==2.8.0+cu128" in detail


async def test_broken_manifest_fails(tmp_path: Path, web: WebServer) -> None:
    web.add("/manifest.txt", b"nodes https://github.com/a/b\n")
    report = await preflight(make_settings(tmp_path, provision_script_url=None,
                                           provision_manifest=web.base + "/manifest.txt"),
                             cache=ProbeCache(FakeClock()))
    status, detail, _ = check(report, "manifest")
    assert status == "fail" and "unknown kind 'nodes'" in detail
    report = await preflight(make_settings(tmp_path, provision_script_url=None,
                                           provision_manifest=web.base + "/gone.txt"),
                             cache=ProbeCache(FakeClock()))
    assert check(report, "manifest")[:2] == ("fail", f"HTTP 404 from {web.base.removeprefix('http://')}/gone.txt")


async def test_pascal_offer_cannot_run_a_cu128_image(tmp_path: Path, hub: FakeHub) -> None:
    pascal = Offer.model_validate(make_offer(7, "GTX 1080 Ti", 0.08, "Texas, US", compute_cap=610))
    report = await run(tmp_path, hub, offer=pascal, docker_image="vastai/comfyui:v0.3.64-cuda-12.8-py312")
    status, detail, fix = check(report, "GPU/CUDA")
    assert status == "fail" and "cu128 torch has no kernels for sm_61" in detail and fix == "pick another offer"
    ampere = Offer.model_validate(make_offer(8, "RTX 3090", 0.2, "Texas, US"))
    report = await run(tmp_path, hub, offer=ampere, docker_image="vastai/comfyui:v0.3.64-cuda-12.8-py312")
    assert check(report, "GPU/CUDA")[0] == "ok"


async def test_old_driver_cannot_run_a_newer_cuda(tmp_path: Path, hub: FakeHub) -> None:
    offer = Offer.model_validate(make_offer(9, "RTX 4090", 0.3, "Utah, US", cuda_max_good=12.4,
                                            driver_version="550.54.14"))
    report = await run(tmp_path, hub, offer=offer, docker_image="vastai/comfyui:v0.3.64-cuda-12.8-py312")
    status, detail, _ = check(report, "GPU/CUDA")
    assert status == "fail" and "CUDA 12.8 needs driver ≥ 570.26" in detail


# ----------------------------------------------------------------------------- cache


async def test_probes_are_cached_per_url_for_a_few_minutes(tmp_path: Path, hub: FakeHub) -> None:
    clock = FakeClock()
    cache = ProbeCache(clock)
    settings = {"hf_token": HF_GOOD, "provision_models": f"a|{SDXL}", "provision_nodes": f"{MANAGER}!"}
    await run(tmp_path, hub, cache=cache, **settings)
    first = len(hub.requests)
    await run(tmp_path, hub, cache=cache, **settings)
    assert len(hub.requests) == first
    await clock.advance(CACHE_TTL_S + 1)
    await run(tmp_path, hub, cache=cache, **settings)
    assert len(hub.requests) == 2 * first
    # Another token is another probe: a fixed token is seen at once.
    await run(tmp_path, hub, cache=cache, **{**settings, "hf_token": HF_BAD})
    assert len(hub.requests) > 2 * first


async def test_probes_run_concurrently(tmp_path: Path, web: WebServer) -> None:
    # Each model's answer waits at a two-party barrier: one after the other, the first would never be answered.
    barrier = threading.Barrier(2, timeout=4)
    for name in ("one", "two"):
        web.routes[f"/m/{name}.bin"] = Route(200, b"x", {}, barrier)  # type: ignore[arg-type]
    models = f"a|{web.base}/m/one.bin b|{web.base}/m/two.bin"
    report = await preflight(make_settings(tmp_path, provision_script_url=None, provision_models=models),
                             cache=ProbeCache(FakeClock()), probe_timeout_s=5)
    assert [c.status for c in report.checks if c.name.startswith("model")] == ["ok", "ok"], report.render()


async def test_caller_client_is_used(tmp_path: Path, hub: FakeHub) -> None:
    async with httpx.AsyncClient() as client:
        report = await preflight(make_settings(tmp_path, provision_script_url=None, hf_token=HF_GOOD,
                                               provision_models=f"a|{SDXL}"),
                                 http=client, url_map=hub.url_map, cache=ProbeCache(FakeClock()))
        assert check(report, "model sd_xl_base_1.0.safetensors")[0] == "ok"
        assert not client.is_closed


async def test_a_probe_that_timed_out_is_asked_again(tmp_path: Path, web: WebServer) -> None:
    hold = threading.Event()
    web.routes["/m/slow.bin"] = Route(200, b"x", {}, hold)
    cache = ProbeCache(FakeClock())
    settings = make_settings(tmp_path, provision_script_url=None, provision_models=f"a|{web.base}/m/slow.bin")
    try:
        first = await preflight(settings, cache=cache, probe_timeout_s=0.1)
    finally:
        hold.set()
    assert check(first, "model slow.bin")[0] == "warn"
    second = await preflight(settings, cache=cache, probe_timeout_s=5)
    assert check(second, "model slow.bin")[0] == "ok"


async def test_the_bot_in_sim_mode_probes_the_stage_hosts_not_the_internet(tmp_path: Path) -> None:
    from bot.sim.scenarios import load_scenario
    from bot.sim.stage import RehearsalStage

    stage = RehearsalStage(load_scenario("gated-model"), FakeClock(), workdir=tmp_path / "stage")
    await stage.start()
    try:
        assert stage.hub is not None
        settings = stage.bot_settings(make_settings(tmp_path))
        assert settings.provision_models is not None and settings.provision_models.startswith(
            f"checkpoints|{stage.hub.base}/o/huggingface.co/")
        report = await preflight(settings, cache=ProbeCache(FakeClock()))
        assert check(report, "model flux1-dev.safetensors")[0] == "fail"
        assert stage.hub.seen("/o/huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors")
    finally:
        await stage.stop()

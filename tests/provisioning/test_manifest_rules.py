"""The pure parts of the manifest preflight: the documented forms, the torch a manifest implies, the
offer rules (CUDA/driver, architecture), the hidden-offer summary and the approval checklist's limits."""

from __future__ import annotations

import pytest

from bot.provisioning.checklist import checklist_items, render_checklist, summary_counts
from bot.provisioning.compat import DiskPlan, compatible_offers, min_driver, offer_problem
from bot.provisioning.manifest import (
    ManifestError,
    ModelSpec,
    NodeSpec,
    parse_manifest_text,
    parse_model,
    parse_node,
    parse_settings_lists,
    torch_need,
)
from bot.provisioning.probes import parse_pkt_lines, raw_requirements_url, torch_risks
from bot.provisioning.report import PreflightReport
from bot.sim.catalog import make_offer
from bot.sim.hub import HubRepo, _advertisement
from bot.vast.models import Offer


def test_node_forms_as_the_script_splits_them() -> None:
    assert parse_node("https://github.com/a/ComfyUI-X@v1.2!") == NodeSpec("https://github.com/a/ComfyUI-X", "v1.2",
                                                                          True)
    assert parse_node("https://github.com/a/b.git") == NodeSpec("https://github.com/a/b.git", None, False)
    assert parse_node("https://github.com/a/b.git").name == "b"
    # An @ in an earlier segment is not a ref (the script looks at the last segment only).
    assert parse_node("https://git.example/@team/node").ref is None
    with pytest.raises(ManifestError, match="want an http"):
        parse_node("git@github.com:a/b")


def test_model_forms() -> None:
    assert parse_model("checkpoints|https://h/x.safetensors") == ModelSpec("checkpoints", "https://h/x.safetensors")
    spec = parse_model("loras|https://h/api/download/models/12|1000|5000")
    assert (spec.min_bytes, spec.size_bytes, spec.name, spec.required) == (1000, 5000, "12", True)
    for bad in ("checkpoints", "|https://h/x", "a|ftp://h/x", "a|https://h/x|big", "a|https://h/x|1|2|3"):
        with pytest.raises(ManifestError):
            parse_model(bad)


def test_settings_lists_report_every_bad_entry_at_once() -> None:
    with pytest.raises(ManifestError) as err:
        parse_settings_lists("https://github.com/a/b nope", "a|https://h/x bad")
    assert len(err.value.problems) == 2


def test_manifest_text() -> None:
    manifest = parse_manifest_text(
        "# comment\nnode https://github.com/a/b@main!  https://github.com/a/c\n\n"
        "model checkpoints|https://h/m.safetensors  # trailing comment\napt libgl1\npip onnxruntime-gpu\n")
    assert [n.name for n in manifest.nodes] == ["b", "c"] and manifest.nodes[0].required
    assert manifest.models[0].url == "https://h/m.safetensors"
    assert manifest.apt == ["libgl1"] and manifest.pip == ["onnxruntime-gpu"]
    with pytest.raises(ManifestError, match="line 2: unknown kind 'modle'"):
        parse_manifest_text("apt x\nmodle a|https://h/x\n")


@pytest.mark.parametrize(("pip", "image", "cuda", "cpu"), [
    ([], "vastai/comfyui:@vastai-automatic-tag", None, False),
    ([], "vastai/comfyui:v0.3.64-cuda-12.8-py312", (12, 8), False),
    ([], "pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime", (12, 9), False),
    ([], "ghcr.io/me/comfy:cu126", (12, 6), False),
    (["torch==2.8.0+cu128"], "vastai/comfyui:v0.3.64-cuda-12.6-py312", (12, 8), False),
    (["torch", "--index-url", "https://download.pytorch.org/whl/cu129"], "vastai/comfyui:@vastai-automatic-tag",
     (12, 9), False),
    (["torch", "--index-url", "https://download.pytorch.org/whl/cpu"], "x:cuda-12.8", None, True),
    (["onnxruntime-gpu"], "vastai/comfyui:@vastai-automatic-tag", None, False),
])
def test_torch_need(pip: list[str], image: str, cuda: tuple[int, int] | None, cpu: bool) -> None:
    need = torch_need(pip, image)
    if cuda is None and not cpu:
        assert need is None
    else:
        assert need is not None and need.cuda == cuda and need.cpu == cpu


def _offer(gpu: str = "RTX 4090", **extra: object) -> Offer:
    return Offer.model_validate(make_offer(1, gpu, 0.3, "Utah, US", **extra))


def test_offer_rules() -> None:
    cu128 = torch_need([], "x:cuda-12.8")
    cu124 = torch_need([], "x:cuda-12.4")
    assert offer_problem(_offer(), cu128) is None
    assert offer_problem(_offer(cuda_max_good=12.4), cu128) == "CUDA 12.8 needs driver ≥ 570.26"
    # No cuda_max_good: the driver version decides.
    assert offer_problem(_offer(cuda_max_good=None, driver_version="550.54.14"), cu128) is not None
    assert offer_problem(_offer(cuda_max_good=None, driver_version="575.51.03"), cu128) is None
    assert offer_problem(_offer("GTX 1080 Ti", compute_cap=610), cu128) == "cu128 torch has no kernels for sm_61"
    assert offer_problem(_offer("RTX 5090", compute_cap=1200), cu124) == \
        "sm_120 needs a CUDA ≥ 12.8 torch (cu124 has no kernels for it)"
    # The automatic tag runs the host's CUDA: a Pascal host with a 12.8 driver gets a cu128 image.
    assert offer_problem(_offer("GTX 1080 Ti", compute_cap=610), None) == "cu128 torch has no kernels for sm_61"
    assert offer_problem(_offer("GTX 1080 Ti", compute_cap=610, cuda_max_good=12.2), None) is None
    assert min_driver((12, 7)) == "570.26" and min_driver((14, 0)) is None


def test_hidden_offers_are_counted_by_reason() -> None:
    offers = [_offer(), _offer(cuda_max_good=12.4), _offer(cuda_max_good=12.2),
              _offer("GTX 1080 Ti", compute_cap=610)]
    kept, hidden = compatible_offers(offers, torch_need([], "x:cuda-12.8"))
    assert kept == offers[:1]
    assert hidden.summary() == ("3 offers hidden: CUDA 12.8 needs driver ≥ 570.26 (2); "
                                "cu128 torch has no kernels for sm_61")
    kept, hidden = compatible_offers(offers[:1], None)
    assert kept == offers[:1] and hidden.summary() == ""


def test_disk_plan() -> None:
    plan = DiskPlan(models_bytes=30 * 1024**3, models_unknown=1, nodes=4)
    assert plan.need_gb == 30 + 16 + 4 + 1 + 2
    assert "(+1 of unknown size)" in plan.breakdown()


@pytest.mark.parametrize(("text", "risky"), [
    ("torch==2.1.0", True), ("torch>=2.0", False), ("torch", False), ("torchvision<0.17", True),
    ("xformers", True), ("torch @ https://download.pytorch.org/whl/cpu/torch-2.1.0.whl", True),
    ("--extra-index-url https://download.pytorch.org/whl/cpu", True),
    ("--extra-index-url https://pypi.ngc.nvidia.com", False), ("# torch==1.0", False),
    ("numpy==1.26.4\nopencv-python", False), ("torch==2.8.0 ; sys_platform == 'darwin'", True),
])
def test_torch_risks(text: str, risky: bool) -> None:
    assert bool(torch_risks(text)) is risky


def test_git_advertisement_and_raw_urls() -> None:
    repo = HubRepo("https://github.com/a/b", branches={"main": "1" * 40, "dev": "2" * 40}, tags={"v1": "3" * 40})
    refs, head = parse_pkt_lines(_advertisement(repo))
    assert head == "1" * 40 and refs["refs/heads/dev"] == "2" * 40 and refs["refs/tags/v1"] == "3" * 40
    assert raw_requirements_url("https://github.com/a/b.git", "abc") == \
        "https://raw.githubusercontent.com/a/b/abc/requirements.txt"
    assert raw_requirements_url("https://gitlab.com/a/b", "main") == "https://gitlab.com/a/b/-/raw/main/requirements.txt"
    assert raw_requirements_url("https://codeberg.org/a/b/", "HEAD") == \
        "https://codeberg.org/a/b/raw/HEAD/requirements.txt"


def _report(n_ok: int, n_warn: int, n_fail: int, detail: str = "x" * 120) -> PreflightReport:
    report = PreflightReport()
    for i in range(n_ok):
        report.add(f"model m{i}.safetensors", "ok", detail)
    for i in range(n_warn):
        report.add(f"node optional{i}", "warn", detail, "drop it")
    for i in range(n_fail):
        report.add(f"node required{i}", "fail", detail, "fix it " + "y" * 100)
    return report


def test_checklist_is_problems_first_and_fits_a_field() -> None:
    items = checklist_items(_report(3, 1, 1))
    text = render_checklist(items)
    lines = text.splitlines()
    assert lines[0].startswith("⛔ node required0") and "→ fix it" in lines[0]
    assert lines[1].startswith("⚠️ node optional0") and len(lines) == 5
    assert summary_counts(items) == "3 ✅ · 1 ⚠️ · 1 ⛔"


@pytest.mark.parametrize(("ok", "warn", "fail"), [(40, 0, 0), (5, 10, 10), (0, 0, 30), (60, 3, 1)])
def test_checklist_never_exceeds_discords_field_limit(ok: int, warn: int, fail: int) -> None:
    text = render_checklist(checklist_items(_report(ok, warn, fail)))
    assert len(text) <= 1024
    if fail:
        assert text.startswith("⛔")
    if ok > 6:
        assert "more check(s) passed" in text or fail + warn > 0
    if fail + warn > 6:
        assert "more problem(s) not shown" in text


def test_checklist_with_escaping_still_fits() -> None:
    items = checklist_items(_report(20, 5, 5, detail="*_" * 60))
    text = render_checklist(items, escape=lambda s: s.replace("*", "\\*"))
    assert len(text) <= 1024

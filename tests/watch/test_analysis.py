"""RunAnalysis over realistic logs: verdicts, causes (never a consequence line), attempts, counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.provisioning.contract import EVENT_PREFIX
from bot.watch.analysis import MAX_FINDINGS_PER_ATTEMPT, NO_CAUSE_TEXT, RunAnalysis
from bot.watch.classifier import Classifier, load_rules
from bot.watch.lines import LineAssembler
from bot.watch.model import Category, Milestone, Severity, Verdict
from bot.watch.redact import Redactor

FIXTURES = Path(__file__).parent / "fixtures"
CLASSIFIER = Classifier(load_rules())
PORT = "Error: remote port forwarding failed for listen port 34656"


def analyse_file(name: str, secrets: dict[str, str] | None = None, chunk: int = 7) -> RunAnalysis:
    analysis = RunAnalysis(CLASSIFIER, Redactor(secrets or {}))
    data = (FIXTURES / name).read_bytes()
    asm = LineAssembler()
    for i in range(0, len(data), chunk):  # odd chunk size: lines arrive split, as over SSH
        for lineno, line in asm.feed_numbered(data[i:i + chunk]):
            analysis.feed_line(line, lineno)
    for line in asm.flush():
        analysis.feed_line(line, asm.line_count)
    return analysis


def analyse_lines(lines: list[str], redactor: Redactor | None = None) -> RunAnalysis:
    analysis = RunAnalysis(CLASSIFIER, redactor)
    for i, line in enumerate(lines, 1):
        analysis.feed_line(line, i)
    return analysis


def ev(e: str, st: str, seq: int = 1, att: int = 1, **extra: Any) -> str:
    data = {"v": 1, "run": "r-1", "att": att, "seq": seq, "ts": "2026-02-05T10:00:00Z", "ev": e, "st": st, **extra}
    return EVENT_PREFIX + json.dumps(data, separators=(",", ":"))


def line_of(name: str, needle: str) -> int:
    """1-based line number of the first line containing ``needle`` in a fixture (as LineAssembler sees it)."""
    asm = LineAssembler()
    lines = asm.feed((FIXTURES / name).read_bytes()) + asm.flush()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# -- fixtures end to end --------------------------------------------------------------------------

def test_happy_run_with_port_noise_and_optional_node_failures_is_degraded() -> None:
    a = analyse_file("happy_run.log")
    assert a.verdict() == Verdict.DEGRADED
    cause = a.cause()  # a degraded run names what degraded it: the first error
    assert cause is not None and (cause.category, cause.severity) == (Category.DEPENDENCY, Severity.ERROR)
    assert cause.line == line_of("happy_run.log", "Could not find a version")
    names = [m.name for m in a.milestones]
    assert names == [Milestone.PORTAL_READY, Milestone.PROVISIONING_STARTED, Milestone.SCRIPT_FETCHED,
                     Milestone.PACKAGES_INSTALLED, Milestone.NODES_INSTALLED, Milestone.MODELS_DOWNLOADED,
                     Milestone.PROVISIONING_COMPLETE, Milestone.TORCH_READY, Milestone.COMFYUI_READY,
                     Milestone.TUNNEL_READY]
    gui = next(m for m in a.milestones if m.name == Milestone.COMFYUI_READY)
    assert gui.line == line_of("happy_run.log", "To see the GUI go to") and gui.detail["needs_http_check"] is True
    # The port-forwarding lines are counted as noise, never listed as findings.
    assert all("remote port forwarding" not in f.text for f in a.findings)
    assert a.counts["platform_noise"] == 13
    assert a.counts["dependency"] >= 4
    assert {f.category for f in a.findings} == {Category.DEPENDENCY}
    assert all(not f.stops_run and f.severity != Severity.FATAL for f in a.findings)
    first = a.findings[0]
    assert first.line == line_of("happy_run.log", "Could not find a version") and first.advice


def test_port_noise_alone_never_fails_a_run() -> None:
    a = analyse_lines([PORT] * 50 + ["Provisioning complete:  Application will start now", PORT,
                                     "To see the GUI go to: http://127.0.0.1:18188"])
    assert a.verdict() == Verdict.READY
    assert a.findings == [] and a.counts == {"platform_noise": 51}


def test_script_404_with_platform_fallback_fails_on_the_404() -> None:
    a = analyse_file("script_404_fallback.log")
    assert a.verdict() == Verdict.FAILED
    cause = a.cause()
    assert cause is not None and cause.category == Category.SCRIPT_MISSING
    # Retries make three attempts; the cause is the 404 of the last (failed) attempt, not a consequence line.
    assert cause.line == line_of("script_404_fallback.log", "10:02:03 [ERROR] Failed to download")
    assert "HTTP Error 404" in cause.text
    # ComfyUI came up anyway (image defaults): still failed, because the wrong script ran.
    assert a.reached(Milestone.COMFYUI_READY)


def test_legacy_404_body_is_script_missing_not_script_fetched() -> None:
    a = analyse_file("script_404_legacy.log")
    assert not a.reached(Milestone.SCRIPT_FETCHED)
    cause = a.cause()
    assert a.verdict() == Verdict.FAILED and cause is not None
    assert (cause.category, cause.line) == (Category.SCRIPT_MISSING, line_of("script_404_legacy.log", "(14 bytes)"))


def test_disk_full_cause_is_the_early_warning() -> None:
    a = analyse_file("disk_full.log")
    cause = a.cause()
    assert a.verdict() == Verdict.FAILED and cause is not None
    assert cause.category == Category.DISK_FULL and cause.stops_run
    assert cause.line == line_of("disk_full.log", "Not enough free disk space")
    assert "DISK_GB" in cause.advice


def test_torch_replaced_is_dependency_fatal() -> None:
    a = analyse_file("torch_replaced.log")
    cause = a.cause()
    assert a.verdict() == Verdict.FAILED and cause is not None
    assert (cause.category, cause.line) == (Category.DEPENDENCY_FATAL,
                                            line_of("torch_replaced.log", "Successfully uninstalled torch-"))


def test_gated_repo_with_fallback_model_is_degraded() -> None:
    a = analyse_file("gated_hf.log")
    assert a.verdict() == Verdict.DEGRADED
    cause = a.cause()  # the optional gated model is named as what degraded the run
    assert cause is not None and cause.category == Category.AUTH and not cause.stops_run
    assert Category.AUTH in {f.category for f in a.findings}
    assert a.reached(Milestone.MODELS_DOWNLOADED) and a.reached(Milestone.PROVISIONING_COMPLETE)


def test_retries_cause_is_in_the_failed_attempt_not_a_consequence_line() -> None:
    a = analyse_file("retry_attempts.log")
    assert a.verdict() == Verdict.FAILED
    cause = a.cause()
    assert cause is not None and cause.category == Category.DEPENDENCY
    # Third attempt's own error (attempts 1 and 2 failed the same way before it).
    lines = [f.line for f in a.findings if "Could not find a version" in f.text]
    assert len(lines) == 3 and cause.line == lines[2]
    assert a.attempt == 3
    consequence_lines = {f.line for f in a.findings if f.rule.startswith("consequence.")}
    assert cause.line not in consequence_lines and len(consequence_lines) == 8


def test_failure_without_a_recognised_cause_points_at_the_consequence_line() -> None:
    a = analyse_file("no_cause.log")
    cause = a.cause()
    assert a.verdict() == Verdict.FAILED and cause is not None
    assert cause.category == Category.DEPENDENCY_FATAL and cause.text == NO_CAUSE_TEXT
    assert cause.line == line_of("no_cause.log", "Provisioning script failed (exit 3)")


def test_our_events_degraded_run() -> None:
    a = analyse_file("events_degraded.log")
    assert a.verdict() == Verdict.DEGRADED
    assert [m.name.value for m in a.milestones] == [
        "script_fetched", "provisioning_started", "torch_ready", "packages_installed", "nodes_installed",
        "models_downloaded", "provisioning_complete"]
    optional = next(f for f in a.findings if f.rule == "event.node.reqs")
    assert (optional.category, optional.severity, optional.stops_run) == (Category.DEPENDENCY, Severity.WARN, False)
    assert "ComfyUI-ReActor" in optional.advice
    # The truncated event line is not an event, and the unknown future event is ignored.
    assert all("future.event" not in f.text for f in a.findings)


def test_our_events_required_node_fails_the_run() -> None:
    a = analyse_file("events_required_node.log")
    cause = a.cause()
    assert a.verdict() == Verdict.FAILED and cause is not None
    assert (cause.category, cause.severity, cause.rule) == (Category.DEPENDENCY_FATAL, Severity.FATAL,
                                                            "event.node.reqs")
    assert cause.line == 5
    # Event findings read as one human line; the raw JSON stays in the log at that line number.
    assert cause.text == "node.reqs fail: ComfyUI-Impact-Pack (required, rc=1) — pip resolution failed"
    done = a.findings[-1]
    assert done.rule == "event.run_done_fail" and done.line == 6


# -- rules of the analysis --------------------------------------------------------------------------

def test_line_numbers_are_the_callers_and_one_based() -> None:
    a = analyse_lines(["hello", "OSError: [Errno 28] No space left on device"])
    assert [f.line for f in a.findings] == [2]


def test_consequence_line_alone_is_never_the_cause_even_with_later_errors() -> None:
    a = analyse_lines(["[ERROR] Provisioning script failed (exit 1)", "ValueError: later"])
    cause = a.cause()
    assert cause is not None and cause.text == NO_CAUSE_TEXT and cause.line == 1


def test_fatal_is_preferred_over_an_earlier_optional_error() -> None:
    a = analyse_lines(["ERROR: No matching distribution found for foo==1", "curl: (23) Failure writing output",
                       "[ERROR] Provisioning script failed (exit 1)"])
    cause = a.cause()
    assert cause is not None and (cause.category, cause.line) == (Category.DISK_FULL, 2)


def test_stops_run_finding_fails_without_a_consequence_line() -> None:
    a = analyse_lines(["Provisioner starting", "RuntimeError: CUDA error: no kernel image is available"])
    assert a.verdict() == Verdict.FAILED
    assert a.cause() is not None and a.cause().category == Category.GPU  # type: ignore[union-attr]


def test_in_progress_and_ready() -> None:
    a = analyse_lines(["Provisioner starting", "Collecting x"])
    assert a.verdict() == Verdict.IN_PROGRESS and a.cause() is None
    a.feed_line("[INFO] Provisioning complete!", 3)
    assert a.verdict() == Verdict.READY
    a.feed_line("ValueError: odd", 4)  # an unknown error line degrades a ready run
    assert a.verdict() == Verdict.DEGRADED


def test_recovered_network_error_degrades() -> None:
    a = analyse_lines(["curl: (56) Recv failure: Connection reset by peer", "[INFO] Retrying in 4s...",
                       "Successfully downloaded: /w/m.safetensors", "Provisioning complete!"])
    assert a.verdict() == Verdict.DEGRADED


def test_retry_in_progress_is_not_failed_yet() -> None:
    a = analyse_lines(["Running provisioning script: /provisioning.sh", "ERROR: ResolutionImpossible",
                       "[ERROR] Provisioning script failed (exit 1)",
                       "[WARNING] Attempt 1/3 failed, retrying in 30s...",
                       "Running provisioning script: /provisioning.sh"])
    assert a.attempt == 2
    assert a.verdict() == Verdict.IN_PROGRESS
    a.feed_line("[INFO] Provisioning complete!", 6)
    assert a.verdict() == Verdict.DEGRADED  # recovered, with the first attempt's errors on record


def test_fatal_in_an_attempt_superseded_by_a_completed_retry() -> None:
    a = analyse_lines(["Running provisioning script: /provisioning.sh", "E: Unable to locate package libfoo",
                       "[ERROR] Provisioning script failed (exit 100)", "[WARNING] Attempt 1/3 failed, retrying",
                       "Running provisioning script: /provisioning.sh", "Provisioning complete!"])
    assert a.verdict() == Verdict.DEGRADED
    cause = a.cause()  # what the retry recovered from
    assert cause is not None and cause.line == 2


def test_attempts_from_run_start_events() -> None:
    a = analyse_lines([ev("run.start", "start", 1, att=1), ev("run.done", "fail", 9, att=1, step="pip", rc=1),
                       ev("run.start", "start", 1, att=2)])
    outcomes = [a.feed_line(ev("heartbeat", "ok", 2, att=2), 4)]
    assert a.attempt == 2 and outcomes[0].attempt == 2
    assert a.verdict() == Verdict.IN_PROGRESS  # the failed attempt was retried


def test_repeated_run_start_line_is_not_a_new_attempt() -> None:
    a = analyse_lines([ev("run.start", "start", 1, att=1), ev("heartbeat", "ok", 2, att=1),
                       ev("run.start", "start", 1, att=1)])
    assert a.attempt == 1


def test_run_done_fail_without_cause_names_step_and_rc() -> None:
    a = analyse_lines([ev("run.start", "start", 1), ev("run.done", "fail", 2, step="models", rc=7,
                                                       why="model x: download failed")])
    cause = a.cause()
    assert cause is not None and cause.line == 2
    assert cause.text == f"{NO_CAUSE_TEXT} (step models, exit 7): model x: download failed"


def test_run_done_fail_reason_is_classified_when_recognisable() -> None:
    a = analyse_lines([ev("run.start", "start", 1), ev("run.done", "fail", 2, step="models", rc=1,
                                                       why="curl: (23) Failure writing output to destination")])
    cause = a.cause()
    assert cause is not None and (cause.category, cause.line, cause.stops_run) == (Category.DISK_FULL, 2, True)
    assert "DISK_GB" in cause.advice
    assert cause.text == ("provisioning script failed (step models, exit 1): "
                          "curl: (23) Failure writing output to destination")


def test_malformed_event_line_is_classified_as_a_line() -> None:
    broken = EVENT_PREFIX + '{"v":1,"run":"r","att":1,"seq":9,"ts":"t","ev":"run.done","st":"fail","step":"pi'
    out = RunAnalysis(CLASSIFIER).feed_line(broken, 1)
    assert out.event is None and out.consequence
    assert out.finding is not None and out.finding.rule == "consequence.run_done_fail"


@pytest.mark.parametrize(("line", "category", "severity"), [
    (ev("disk.check", "fail", name="flux1-dev.safetensors", need_gb=23.8, free_gb=9.1), Category.DISK_FULL,
     Severity.FATAL),
    (ev("torch", "fail", ver="2.1.0", base="2.8.0+cu128", changed=True), Category.DEPENDENCY_FATAL, Severity.FATAL),
    (ev("torch", "ok", ver="2.1.0", changed=True), Category.DEPENDENCY_FATAL, Severity.FATAL),
    (ev("torch", "ok", ver="2.8.0", available=False, changed=False), Category.GPU, Severity.FATAL),
    (ev("script_missing", "fail", url="gist.githubusercontent.com/x/p.sh"), Category.SCRIPT_MISSING,
     Severity.FATAL),
    (ev("node.clone", "fail", name="N", required=True, why="repo gone"), Category.DEPENDENCY_FATAL, Severity.FATAL),
    (ev("node.reqs", "fail", name="N", required=False), Category.DEPENDENCY, Severity.WARN),
    (ev("apt", "fail", why="E: Unable to locate package libfoo"), Category.DEPENDENCY_FATAL, Severity.FATAL),
    (ev("pip", "fail", why="No space left on device"), Category.DISK_FULL, Severity.FATAL),
    (ev("fetch", "fail", what="manifest", http=404), Category.SCRIPT_MISSING, Severity.ERROR),
    (ev("fetch", "fail", what="manifest", http=403), Category.AUTH, Severity.ERROR),
    (ev("fetch", "fail", what="manifest", http=0, rc=6), Category.NETWORK, Severity.WARN),
    (ev("model.done", "fail", name="m", why="download failed (curl rc 22): HTTP Error 401: Unauthorized"),
     Category.AUTH, Severity.ERROR),
    (ev("model.done", "fail", name="m", why="file too small: 120 bytes < 1048576"), Category.NETWORK,
     Severity.ERROR),
    (ev("disk.check", "warn", name="m"), Category.DISK_FULL, Severity.WARN),
    (ev("torch", "warn", ver="none", why="torch does not import"), Category.DEPENDENCY, Severity.WARN),
    (ev("env", "fail", why="nvidia-smi: Failed to initialize NVML: Unknown Error"), Category.GPU, Severity.FATAL),
])
def test_structured_event_findings(line: str, category: Category, severity: Severity) -> None:
    out = RunAnalysis(CLASSIFIER).feed_line(line, 3)
    assert out.event is not None and out.finding is not None
    assert (out.finding.category, out.finding.severity, out.finding.line) == (category, severity, 3)


@pytest.mark.parametrize("line", [
    ev("heartbeat", "ok"), ev("model.progress", "ok", bytes=10), ev("run.done", "ok"), ev("mystery", "fail"),
    ev("node.reqs", "ok", name="N"), ev("run.start", "start"),
])
def test_quiet_events(line: str) -> None:
    out = RunAnalysis(CLASSIFIER).feed_line(line, 1)
    assert out.event is not None and out.finding is None


def test_deliberate_fallback_downgrades_the_script_404() -> None:
    a = analyse_lines([ev("run.start", "start", 1), "curl: (22) The requested URL returned error: 404",
                       ev("fetch", "fail", 2, what="recipe", http=404), ev("fallback", "ok", 3, to="default"),
                       ev("run.done", "degraded", 4)])
    assert a.verdict() == Verdict.DEGRADED
    assert all(not f.stops_run for f in a.findings)
    curl = next(f for f in a.findings if f.line == 2)
    assert (curl.category, curl.severity) == (Category.SCRIPT_MISSING, Severity.ERROR)


def test_run_done_degraded_alone_degrades() -> None:
    a = analyse_lines([ev("run.start", "start", 1), ev("run.done", "degraded", 2, nodes_fail=1)])
    assert a.verdict() == Verdict.DEGRADED


def test_noise_outcome_and_counts() -> None:
    a = RunAnalysis(CLASSIFIER)
    out = a.feed_line(PORT, 1)
    assert out.noise and out.finding is not None and out.finding.category == Category.PLATFORM_NOISE
    assert a.findings == [] and a.counts == {"platform_noise": 1}
    a.feed_line("Skipping jupyter startup (not in /etc/portal.yaml)", 2)
    a.feed_line("OSError: [Errno 28] No space left on device", 3)
    assert a.counts == {"platform_noise": 2, "disk_full": 1}


def test_redaction_happens_before_classification_and_storage() -> None:
    red = Redactor({"HF_TOKEN": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"})
    a = RunAnalysis(CLASSIFIER, red)
    lines = ["401 Client Error for https://huggingface.co/x?token=hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
             "-----BEGIN RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEAx8s9", "-----END RSA PRIVATE KEY-----"]
    texts = [a.feed_line(line, i).text for i, line in enumerate(lines, 1)]
    assert "hf_AbCd" not in json.dumps(a.to_json())
    assert a.findings[0].text == "401 Client Error for https://huggingface.co/x?token=«redacted:HF_TOKEN»"
    assert texts[1:] == ["«redacted:private-key»"] * 3
    out = RunAnalysis(CLASSIFIER, Redactor()).feed_line("export CIVITAI_TOKEN=0123456789abcdef", 1)
    assert out.text == "export CIVITAI_TOKEN=«redacted»"


def test_to_json_schema() -> None:
    data = analyse_file("retry_attempts.log").to_json()
    assert set(data) == {"verdict", "cause", "milestones", "findings", "counts"}
    assert data["verdict"] == "failed"
    assert set(data["cause"]) == {"category", "line", "text"}
    for m in data["milestones"]:
        assert {"name", "line"} <= set(m) and m["line"] >= 1
    for f in data["findings"]:
        assert set(f) == {"line", "category", "severity", "text", "advice"}
        assert f["category"] in {c.value for c in Category} and f["severity"] in {s.value for s in Severity}
        assert isinstance(f["line"], int) and f["line"] >= 1
    assert all(isinstance(n, int) and n > 0 for n in data["counts"].values())
    json.dumps(data)  # serialisable as is
    empty = RunAnalysis(CLASSIFIER).to_json()
    assert empty == {"verdict": "in_progress", "cause": None, "milestones": [], "findings": [], "counts": {}}


def test_findings_are_capped_per_attempt_but_counted_and_fatal_kept() -> None:
    a = RunAnalysis(CLASSIFIER)
    n = MAX_FINDINGS_PER_ATTEMPT + 50
    for i in range(1, n + 1):
        a.feed_line(f"ValueError: odd thing {i}", i)
    a.feed_line("OSError: [Errno 28] No space left on device", n + 1)
    assert len(a.findings) == MAX_FINDINGS_PER_ATTEMPT + 1 and a.findings_dropped == 50
    assert a.counts == {"disk_full": 1, "unknown": n}
    assert a.cause() is not None and a.cause().line == n + 1  # type: ignore[union-attr]


# -- required versus optional pieces, unknown lines --------------------------------------------------

WGET_401 = ["--2026-02-05 10:03:01--  https://civitai.com/api/download/models/798204?type=Model&format=SafeTensor",
            "HTTP request sent, awaiting response... 401 Unauthorized",
            "Username/Password Authentication Failed."]


def test_an_optional_download_refused_degrades_with_its_cause() -> None:
    a = analyse_lines([*WGET_401, "Provisioning complete:  Application will start now",
                       "To see the GUI go to: http://127.0.0.1:18188"])
    cause = a.cause()
    assert a.verdict() == Verdict.DEGRADED and cause is not None
    assert (cause.category, cause.line, cause.stops_run) == (Category.AUTH, 2, False)


def test_a_workflow_missing_the_refused_model_makes_it_required_and_fails() -> None:
    a = analyse_lines([*WGET_401, "--2026-02-05 10:03:40--  https://huggingface.co/x/y/resolve/main/vae.safetensors",
                       "HTTP request sent, awaiting response... 403 Forbidden",
                       "Provisioning complete:  Application will start now",
                       "To see the GUI go to: http://127.0.0.1:18188", "got prompt",
                       "Failed to validate prompt for output 9:", "* VAELoader 10:"])
    outcome = a.feed_line("  - Value not in list: vae_name: 'vae.safetensors' not in []", 12)
    # the line that proves the need stops the run (the engine acts on it) but is not the cause
    assert outcome.finding is not None and outcome.finding.stops_run
    cause = a.cause()
    assert a.verdict() == Verdict.FAILED and cause is not None
    # the refusal whose URL names the missing file, not merely the earliest refusal
    assert (cause.category, cause.line, cause.stops_run) == (Category.AUTH, 5, True)
    assert "required" in cause.advice


def test_a_missing_model_with_no_failed_download_only_degrades() -> None:
    a = analyse_lines(["Provisioning complete!", "To see the GUI go to: http://127.0.0.1:18188",
                       "  - Value not in list: ckpt_name: 'typo.safetensors' not in ['real.safetensors']"])
    cause = a.cause()
    assert a.verdict() == Verdict.DEGRADED and cause is not None and cause.category == Category.CONFIG


def test_wordy_unknown_lines_are_counted_not_findings() -> None:
    a = analyse_lines(["Provisioning complete!", "Job failed after 3 tries, using cache", "[E] boom",
                       "To see the GUI go to: http://127.0.0.1:18188"])
    outcome = a.feed_line("Exception in thread Thread-1:", 5)
    assert outcome.finding is None and outcome.classification is not None and outcome.classification.unknown
    assert a.verdict() == Verdict.READY and a.findings == [] and a.counts == {"unknown": 3}


def test_one_runs_key_block_is_not_closed_by_another_runs_lines() -> None:
    """Two rentals' analyses share the engine's Redactor: a line of B while A is inside a private-key
    block must not end A's block (its remaining key lines would be shown)."""
    redactor = Redactor({})
    classifier = Classifier(load_rules())
    a, b = RunAnalysis(classifier, redactor), RunAnalysis(classifier, redactor)
    a.feed_line("-----BEGIN OPENSSH PRIVATE KEY-----", 1)
    b.feed_line("Collecting torch==2.5.1", 1)
    body = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
    outcome = a.feed_line(body, 2)
    assert body not in outcome.text

"""The log corpus: every log in the images' own wording is judged right (verdict, cause, findings,
harmless lines left alone, milestones, no planted secret in any output), and the corpus targets hold."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bot.watch.classify_cli import EXIT_DEGRADED, EXIT_FAILED, EXIT_OK, run_classify
from tests.watch import corpus_eval

NAMES = corpus_eval.names()


def test_the_corpus_has_at_least_25_logs_each_with_an_expected_result() -> None:
    assert len(NAMES) >= 25
    expects = sorted(p.name[: -len(".expect.json")] for p in corpus_eval.CORPUS.glob("*.expect.json"))
    assert expects == NAMES
    verdicts = {corpus_eval.load_expectation(n).verdict.value for n in NAMES}
    assert verdicts == {"ready", "degraded", "failed", "in_progress"}


@pytest.mark.parametrize("name", NAMES)
def test_corpus_log(name: str) -> None:
    result = corpus_eval.evaluate(name)
    if result.skipped:
        pytest.skip(f"{name} {result.skipped} (the over-long-line cut that keeps a line's end is not merged yet)")
    assert result.fully_right, f"{name}: " + "; ".join(result.problems)


def test_corpus_targets() -> None:
    figures = corpus_eval.summary(corpus_eval.evaluate_all())
    assert figures["logs"] >= 25 and figures["fully_right"] >= 0.9 * figures["logs"]
    assert figures["harmless_flagged_healthy"] == 0
    assert figures["secrets_leaked"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_classify_exit_status_matches_the_expected_verdict(name: str) -> None:
    exp = corpus_eval.load_expectation(name)
    if not all(corpus_eval.has_capability(need) for need in exp.needs):
        pytest.skip(f"{name} needs {exp.needs}")
    code = run_classify(str(corpus_eval.CORPUS / f"{name}.log"), as_json=True, secrets=exp.known_secrets,
                        out=io.StringIO(), err=io.StringIO())
    assert code == {"degraded": EXIT_DEGRADED, "failed": EXIT_FAILED}.get(exp.verdict.value, EXIT_OK)


def test_the_scoring_catches_leaks_false_alarms_and_missed_milestones(tmp_path: Path) -> None:
    """The harness itself can fail: a secret no pattern knows, a harmless line flagged, a milestone missed."""
    (tmp_path / "bad.log").write_text("my password for the box: plain-words-secret\n"
                                      "ValueError: this harmless line is flagged\n"
                                      "Provisioning complete!\n")
    (tmp_path / "bad.expect.json").write_text(json.dumps({
        "source": "a deliberately wrong expectation", "verdict": "degraded", "cause": "unknown", "findings": [],
        "not_flagged": ["ValueError: this harmless line"], "milestones": ["provisioning_complete", "comfyui_ready"],
        "known_secrets": {}, "secrets": ["plain-words-secret"]}))
    result = corpus_eval.evaluate("bad", tmp_path)
    assert not result.fully_right
    assert result.secrets_leaked == 1 and len(result.harmless_flagged) == 1
    assert result.milestones_missed == ["comfyui_ready"]
    figures = corpus_eval.summary([result])
    assert (figures["fully_right"], figures["secrets_leaked"], figures["milestones_missed"]) == (0, 1, 1)


def test_a_not_flagged_line_must_be_in_the_log(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_text("hello\n")
    (tmp_path / "x.expect.json").write_text(json.dumps({
        "source": "s", "verdict": "in_progress", "cause": None, "findings": [], "not_flagged": ["absent line"],
        "milestones": [], "known_secrets": {}, "secrets": []}))
    with pytest.raises(corpus_eval.ExpectationError, match="absent line"):
        corpus_eval.evaluate("x", tmp_path)

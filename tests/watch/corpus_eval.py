"""Run the log corpus (``tests/watch/corpus/``) through the watch engine's analysis and score it.

Each ``NAME.log`` has a ``NAME.expect.json`` written by hand next to it:

* ``source``: what setup the log imitates (free text);
* ``verdict``: ``ready`` / ``degraded`` / ``failed`` / ``in_progress``;
* ``cause``: the cause's category, or null (a ready or unfinished run has none);
* ``findings``: ``{"category", "min_severity", "text"}`` that must be found (``text`` is a
  substring of the finding's evidence line);
* ``not_flagged``: substrings of harmless lines that must not be flagged at ``warn`` or above (each
  must occur in the log);
* ``milestones``: exactly the milestones the log reaches;
* ``known_secrets``: secrets the bot itself knows (passed to the Redactor, as the bot does with its
  settings); ``secrets``: fake secrets planted in the log that must never appear in any output;
* optional ``needs``: capabilities of the line layer the log depends on. ``line_tail``: an
  over-long line keeps its end as well as its start (where tar, pip and tqdm put the error); a log
  that needs a capability the installed ``LineAssembler`` lacks is reported as skipped, not scored.

The analysis is the engine's: bytes in odd-sized chunks through ``LineAssembler``, each line through
``RunAnalysis`` with a ``Redactor``, exactly as ``python -m bot classify`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.watch.analysis import LineOutcome, RunAnalysis
from bot.watch.classifier import Classifier, load_rules
from bot.watch.classify_cli import format_summary
from bot.watch.lines import LineAssembler
from bot.watch.model import Category, Milestone, Severity, Verdict
from bot.watch.redact import Redactor

CORPUS = Path(__file__).parent / "corpus"
CHUNK = 997  # odd on purpose: lines, UTF-8 characters and CRLF pairs arrive split
_KEYS = {"source", "verdict", "cause", "findings", "not_flagged", "milestones", "known_secrets", "secrets"}
_OPTIONAL_KEYS = {"needs"}
CAPABILITIES = ("line_tail",)


class ExpectationError(ValueError):
    """An expected-result file is malformed (the corpus itself is wrong, not the classifier)."""


@dataclass
class Expectation:
    name: str
    source: str
    verdict: Verdict
    cause: Category | None
    findings: list[tuple[Category, Severity, str]]
    not_flagged: list[str]
    milestones: set[Milestone]
    known_secrets: dict[str, str]
    secrets: list[str]
    needs: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.verdict == Verdict.READY


@dataclass
class Result:
    name: str
    healthy: bool
    problems: list[str] = field(default_factory=list)
    findings_expected: int = 0
    findings_found: int = 0
    harmless_flagged: list[str] = field(default_factory=list)
    milestones_missed: list[str] = field(default_factory=list)
    milestones_extra: list[str] = field(default_factory=list)
    secrets_leaked: int = 0
    verdict: str = ""
    skipped: str = ""  # why the log was not scored (a capability the line layer lacks)

    @property
    def fully_right(self) -> bool:
        return not self.problems


def names(corpus: Path = CORPUS) -> list[str]:
    return sorted(p.name[: -len(".log")] for p in corpus.glob("*.log"))


def load_expectation(name: str, corpus: Path = CORPUS) -> Expectation:
    path = corpus / f"{name}.expect.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExpectationError(f"{path.name}: {exc}") from None
    if not isinstance(data, dict) or not _KEYS <= set(data) <= _KEYS | _OPTIONAL_KEYS:
        raise ExpectationError(f"{path.name}: keys must be {sorted(_KEYS)}, optionally {sorted(_OPTIONAL_KEYS)}")
    unknown = set(data.get("needs", [])) - set(CAPABILITIES)
    if unknown:
        raise ExpectationError(f"{path.name}: unknown capability {sorted(unknown)}")
    try:
        return Expectation(
            name=name, source=str(data["source"]), verdict=Verdict(data["verdict"]),
            cause=None if data["cause"] is None else Category(data["cause"]),
            findings=[(Category(f["category"]), Severity(f["min_severity"]), str(f.get("text", "")))
                      for f in data["findings"]],
            not_flagged=[str(s) for s in data["not_flagged"]],
            milestones={Milestone(m) for m in data["milestones"]},
            known_secrets={str(k): str(v) for k, v in data["known_secrets"].items()},
            secrets=[str(s) for s in data["secrets"]],
            needs=[str(n) for n in data.get("needs", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ExpectationError(f"{path.name}: {exc!r}") from None


def analyse(name: str, known_secrets: dict[str, str], chunk: int = CHUNK, corpus: Path = CORPUS
            ) -> tuple[RunAnalysis, list[LineOutcome], int]:
    """The engine's analysis over one corpus log: the analysis, every line's outcome, the line count."""
    analysis = RunAnalysis(Classifier(load_rules()), Redactor(known_secrets))
    data = (corpus / f"{name}.log").read_bytes()
    assembler = LineAssembler()
    outcomes: list[LineOutcome] = []
    for i in range(0, len(data), chunk):
        for lineno, line in assembler.feed_numbered(data[i:i + chunk]):
            outcomes.append(analysis.feed_line(line, lineno))
    first = assembler.line_count + 1
    for offset, line in enumerate(assembler.flush()):
        outcomes.append(analysis.feed_line(line, first + offset))
    return analysis, outcomes, assembler.line_count


def has_capability(name: str) -> bool:
    """Whether the installed line layer has a capability a corpus log may need."""
    if name == "line_tail":
        lines = LineAssembler().feed(("x" * 100_000 + " one two three four five TAIL-KEPT\n").encode())
        return any("TAIL-KEPT" in line for line in lines)
    raise ValueError(f"unknown capability {name!r}")


def evaluate(name: str, corpus: Path = CORPUS) -> Result:
    exp = load_expectation(name, corpus)
    missing = [need for need in exp.needs if not has_capability(need)]
    if missing:
        return Result(name, exp.healthy, skipped=f"needs {', '.join(missing)}")
    analysis, outcomes, lines = analyse(name, exp.known_secrets, corpus=corpus)
    res = Result(name, exp.healthy)
    verdict = analysis.verdict()
    res.verdict = verdict.value
    if verdict != exp.verdict:
        res.problems.append(f"verdict {verdict.value}, expected {exp.verdict.value}")
    cause = analysis.cause()
    got_cause = None if cause is None else cause.category
    if got_cause != exp.cause:
        res.problems.append(f"cause {got_cause and got_cause.value}, expected {exp.cause and exp.cause.value}"
                            + (f" (line {cause.line}: {cause.text[:80]})" if cause else ""))

    findings = analysis.findings
    res.findings_expected = len(exp.findings)
    for category, severity, text in exp.findings:
        if any(f.category == category and f.severity.rank >= severity.rank and text in f.text for f in findings):
            res.findings_found += 1
        else:
            res.problems.append(f"finding not found: {category.value}/{severity.value}+ {text!r}")

    def flagged(o: LineOutcome) -> bool:
        f = o.finding
        return f is not None and f.category != Category.PLATFORM_NOISE and f.severity.rank >= Severity.WARN.rank

    for needle in exp.not_flagged:
        hits = [o for o in outcomes if needle in o.text]
        if not hits:
            raise ExpectationError(f"{name}: not_flagged line {needle!r} is not in the log")
        res.harmless_flagged += [f"line {o.lineno}: {o.text[:100]}" for o in hits if flagged(o)]
    if exp.healthy:  # on a healthy run, nothing deserves a warning
        res.harmless_flagged += [f"line {o.lineno}: {o.text[:100]}" for o in outcomes
                                 if flagged(o) and not any(n in o.text for n in exp.not_flagged)]
    if res.harmless_flagged:
        res.problems.append(f"harmless lines flagged: {res.harmless_flagged}")

    got = {m.name for m in analysis.milestones}
    res.milestones_missed = sorted(m.value for m in exp.milestones - got)
    res.milestones_extra = sorted(m.value for m in got - exp.milestones)
    if res.milestones_missed or res.milestones_extra:
        res.problems.append(f"milestones missed {res.milestones_missed}, unexpected {res.milestones_extra}")

    outputs = [json.dumps(analysis.to_json(), ensure_ascii=False), format_summary(analysis, lines),
               *(o.text for o in outcomes), *(f"{f.text} {f.advice}" for f in findings)]
    if cause is not None:
        outputs.append(f"{cause.text} {cause.advice}")
    blob = "\n".join(outputs)
    res.secrets_leaked = sum(1 for secret in exp.secrets if secret in blob)
    if res.secrets_leaked:
        res.problems.append(f"{res.secrets_leaked} planted secret(s) leaked")
    return res


def evaluate_all(corpus: Path = CORPUS) -> list[Result]:
    return [evaluate(name, corpus) for name in names(corpus)]


def summary(results: list[Result]) -> dict[str, Any]:
    """The corpus figures: logs fully right, findings right, harmless lines flagged, misses, leaks."""
    skipped = [r for r in results if r.skipped]
    results = [r for r in results if not r.skipped]
    healthy = [r for r in results if r.healthy]
    return {
        "skipped": len(skipped),
        "logs": len(results),
        "fully_right": sum(r.fully_right for r in results),
        "findings_expected": sum(r.findings_expected for r in results),
        "findings_found": sum(r.findings_found for r in results),
        "harmless_flagged": sum(len(r.harmless_flagged) for r in results),
        "harmless_flagged_healthy": sum(len(r.harmless_flagged) for r in healthy),
        "healthy_logs": len(healthy),
        "milestones_missed": sum(len(r.milestones_missed) for r in results),
        "milestones_unexpected": sum(len(r.milestones_extra) for r in results),
        "secrets_leaked": sum(r.secrets_leaked for r in results),
    }

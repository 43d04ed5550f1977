"""Stateful analysis of one provisioning run, line by line: redaction, events, milestones,
classification, attempts, and from those the run's verdict and cause. Pure: no I/O, no clock.

Attempts: the Vast provisioner re-runs a failing script (up to 3 times). A new attempt starts at a
native ``Attempt N/M failed`` line (which also marks the current attempt failed), or when a start
marker of a kind already seen in the current attempt appears again (a second
``Running provisioning script``, or a ``run.start`` event with a new ``(run, att)``).

Verdict (the judgement calls, in order):
* ``failed``: the latest attempt carries a failure signal (a consequence line such as
  ``Provisioning script failed (exit 1)`` / ``All 3 attempts exhausted`` / ``on_failure=`` /
  ``Provisioning encountered issues``, or ``run.done st=fail``), or any finding that is fatal or
  stops the run, unless it lies in an attempt that a later attempt superseded by completing.
* ``ready``: provisioning completed (``run.done`` ok/degraded, native ``Provisioning complete``) or
  ComfyUI printed its GUI line, and there is no finding of severity warn or above.
* ``degraded``: as ready, but with warn/error findings (optional nodes that failed, an auth
  refusal for an optional model, a network error that recovered, unknown error lines), or our
  script said ``run.done st=degraded``.
* ``in_progress``: otherwise.

Required versus optional: a failed download (auth refusal, 404, an HTTP error) is an ``error`` that
degrades the run, because most scripts carry on without the file. It becomes the run's fatal cause
when a later line proves the file was required: the script stopping (a consequence line), a script
saying a required download failed, or the workflow asking for a model file that is absent or is not
a model (``Value not in list: ckpt_name: ...``, ``HeaderTooLarge``) — rules marked
``required_missing``. The failed download whose URL names the missing file is promoted (else the
earliest failed download); without any failed download the line stands on its own.

Lines no rule knows but that carry an error word (``UNKNOWN_INFO``) are counted under ``unknown``
and classified, but are not findings: they never post, never degrade.

Cause: for a failed run, in the failed attempt, among findings before its first failure signal,
the earliest fatal/stops-run finding, else the earliest error finding, else the last failure-shaped
unknown line; consequence lines are never the cause. With none, a ``dependency_fatal`` finding
"provisioning script failed without a recognised cause — see the last 20 lines" pointing at the
failure signal's line. For a degraded
run, the most severe finding (earliest first, a recognised category before ``unknown``) of the
latest attempt that has any.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from bot.watch.classifier import UNKNOWN_INFO, Classification, Classifier
from bot.watch.milestones import MilestoneParser, ProvEvent, parse_event
from bot.watch.model import Category, Finding, Milestone, MilestoneHit, Severity, Verdict
from bot.watch.redact import Redactor

NO_CAUSE_TEXT = "provisioning script failed without a recognised cause — see the last 20 lines"
NO_CAUSE_ADVICE = ("The script stopped without an error we recognise. Read the last 20 lines of the log "
                   "(the logs command) and fix the step that ran last.")
CONSEQUENCE_ADVICE = "This only says the script failed; the cause is an earlier line (shown as the cause)."
# Findings kept per attempt (a log can repeat one error line for hours). Fatal / stops-run findings
# are always kept, and the earliest ones are, so the cause never depends on this cap.
MAX_FINDINGS_PER_ATTEMPT = 2000

_ATTEMPT_FAILED = re.compile(r"\bAttempt (\d+)/(\d+) failed")
# What a download line is about: the last path segment of its URL, or a saved file's name.
_SUBJECT_URL = re.compile(r"https?://[^\s'\"<>]+")
_SUBJECT_SAVED = re.compile(r"Saving to: ['‘`\"]?([^'’`\"]+)")
_HTTP_STATUS = re.compile(r"\b[45]\d\d\b")
# The file a required_missing line names: the first quoted name, else a model-looking word.
_MISSING_NAME = re.compile(r"'([^']+)'|([\w.+-]+\.(?:safetensors|ckpt|pth?|bin|gguf|sft|onnx))\b")
_DOWNLOAD_CATEGORIES = frozenset({Category.AUTH, Category.SCRIPT_MISSING})
_NOISE = Category.PLATFORM_NOISE  # an alias: enum attribute lookups are slow on the per-line path
_RUNNING_SCRIPT = re.compile(r"\bRunning provisioning script\b")


class _MakeFinding(Protocol):
    """Builds the finding of one provisioning event (its text, line and default rule filled in)."""

    def __call__(self, category: Category, severity: Severity, advice: str, *, stops: bool = ...,
                 rule: str = ...) -> Finding: ...


@dataclass(slots=True)
class LineOutcome:
    """What one line turned out to be. ``finding`` is set for noise too (category platform_noise)."""

    lineno: int
    text: str  # the redacted line
    attempt: int
    event: ProvEvent | None = None
    classification: Classification | None = None
    finding: Finding | None = None
    milestones: list[MilestoneHit] = field(default_factory=list)

    @property
    def noise(self) -> bool:
        return self.finding is not None and self.finding.category == Category.PLATFORM_NOISE

    @property
    def consequence(self) -> bool:
        return self.classification is not None and self.classification.consequence


@dataclass(slots=True)
class _Record:
    finding: Finding
    attempt: int
    consequence: bool = False
    subject: str = ""  # the download this finding is about (file name from the URL), if any


class RunAnalysis:
    """Feed a run's lines in order; ask for findings, milestones, counts, verdict and cause."""

    def __init__(self, classifier: Classifier, redactor: Redactor | None = None) -> None:
        self.classifier = classifier
        self.redactor = redactor
        # Key blocks span lines: the state is this run's own, never shared with another rental's.
        self._redact = redactor.stream() if redactor is not None else None
        self.milestone_parser = MilestoneParser()
        self.lines_seen = 0
        self._counter: Counter[str] = Counter()
        self._records: list[_Record] = []
        self._kept_per_attempt: Counter[int] = Counter()
        self.findings_dropped = 0  # over the per-attempt cap: still counted in ``counts``
        self._milestones: list[MilestoneHit] = []
        self._attempt = 1
        self._markers: set[str] = set()
        self._signals: dict[int, list[int]] = {}  # attempt -> line numbers of failure signals
        self._completed: dict[int, int] = {}  # attempt -> line where provisioning completed
        self._run_done_fail: dict[int, ProvEvent] = {}  # attempt -> run.done st=fail event
        self._degraded_signal = False
        self._last_start: tuple[str, int] | None = None
        self._last_line = 0
        self._subject = ""  # file name of the download the log is currently at

    # -- feeding ----------------------------------------------------------------------------------
    def feed_line(self, text: str, lineno: int) -> LineOutcome:
        """Analyse one line (1-based ``lineno``). The text is redacted before anything else."""
        if self._redact is not None:
            text = self._redact.line(text)
        self.lines_seen += 1
        if lineno > self._last_line:
            self._last_line = lineno
        event = parse_event(text)
        if event is not None:
            return self._feed_event(event, text, lineno)
        return self._feed_native(text, lineno)

    def _feed_native(self, text: str, lineno: int) -> LineOutcome:
        if "Running provisioning script" in text and _RUNNING_SCRIPT.search(text):
            self._start_marker("native")
        outcome = LineOutcome(lineno, text, self._attempt)
        if "http" in text or "Saving to" in text:
            self._note_subject(text)
        cls = self.classifier.classify_line(text)
        noise = False
        if cls is not None:
            outcome.classification = cls
            self._counter[cls.category] += 1  # a StrEnum key is the same dict key as its value
            noise = cls.category is _NOISE
            if cls is UNKNOWN_INFO:
                pass  # counted and classified, but not a finding (module docstring)
            elif cls.required_missing:
                outcome.finding = self._required_missing(cls, text, lineno)
            else:
                finding = cls.to_finding(text, lineno)
                outcome.finding = finding
                if not noise:
                    self._add(finding, consequence=cls.consequence, subject=self._subject)
            if cls.consequence:
                self._signal(lineno)
        if not noise:  # no noise rule matches a milestone line: skip the parser for them
            outcome.milestones = self._milestone_hits(self.milestone_parser.feed_native(text, lineno), lineno)
        if "Attempt " in text and (m := _ATTEMPT_FAILED.search(text)):
            if cls is None or not cls.consequence:
                self._signal(lineno)
            # The failed attempt is closed; whatever follows belongs to the retry.
            self._new_attempt(at_least=int(m.group(1)) + 1)
        return outcome

    def _feed_event(self, event: ProvEvent, text: str, lineno: int) -> LineOutcome:
        if event.ev == "run.start":
            # The same (run, att) again is a repeated line (log snapshot overlap), not a new attempt.
            if (event.run, event.att) != self._last_start:
                self._last_start = (event.run, event.att)
                self._start_marker("event")
        outcome = LineOutcome(lineno, text, self._attempt, event=event)
        finding, consequence = self._event_finding(event, text, lineno)
        if finding is not None:
            outcome.finding = finding
            self._count(finding.category)
            self._add(finding, consequence=consequence)
            if consequence:
                self._signal(lineno)
        if event.ev == "run.done":
            if event.st == "fail":
                self._run_done_fail.setdefault(self._attempt, event)
            elif event.st == "degraded":
                self._degraded_signal = True
        outcome.milestones = self._milestone_hits(self.milestone_parser.feed_event(event, lineno), lineno)
        return outcome

    # -- results ----------------------------------------------------------------------------------
    @property
    def findings(self) -> list[Finding]:
        """Non-noise findings in line order (consequence lines included, marked by their rule id)."""
        return [r.finding for r in self._records]

    @property
    def counts(self) -> dict[str, int]:
        """Classified lines per category (noise included), in the vocabulary's order; zeros omitted."""
        return {c.value: self._counter[c.value] for c in Category if self._counter[c.value]}

    @property
    def milestones(self) -> list[MilestoneHit]:
        return list(self._milestones)

    @property
    def attempt(self) -> int:
        return self._attempt

    def reached(self, name: Milestone) -> bool:
        return self.milestone_parser.reached(name)

    def verdict(self) -> Verdict:
        if self._failed_attempt() is not None:
            return Verdict.FAILED
        ready = self.reached(Milestone.PROVISIONING_COMPLETE) or self.reached(Milestone.COMFYUI_READY)
        if not ready:
            return Verdict.IN_PROGRESS
        degrading = self._degraded_signal or any(r.finding.severity.rank >= Severity.WARN.rank
                                                 for r in self._records)
        return Verdict.DEGRADED if degrading else Verdict.READY

    def cause(self) -> Finding | None:
        """Why the run failed, or what degraded it (None for a ready or unfinished run)."""
        attempt = self._failed_attempt()
        if attempt is None:
            return self._degraded_cause() if self.verdict() == Verdict.DEGRADED else None
        signals = self._signals.get(attempt, [])
        before = signals[0] if signals else None
        candidates = [r.finding for r in self._records
                      if r.attempt == attempt and not r.consequence
                      and (before is None or (r.finding.line or 0) < before)]
        preferences: tuple[Callable[[Finding], bool], ...] = (
            lambda f: f.stops_run or f.severity == Severity.FATAL, lambda f: f.severity == Severity.ERROR)
        for wanted in preferences:
            for finding in candidates:
                if wanted(finding):
                    return finding
        # A failure-shaped line no rule knows (``hf: command not found`` under ``set -e``): the last
        # one before the script stopped is what stopped it.
        shaped = [f for f in candidates if f.category == Category.UNKNOWN and f.severity == Severity.WARN]
        if shaped:
            return shaped[-1]
        line = before if before is not None else self._last_line or None
        text = NO_CAUSE_TEXT
        done = self._run_done_fail.get(attempt)
        if done is not None:
            bits = [f"step {done.get('step')}" if done.get("step") else "",
                    f"exit {done.get('rc')}" if done.get("rc") is not None else ""]
            why = done.get("why")
            detail = " ({})".format(", ".join(b for b in bits if b)) if any(bits) else ""
            # Our script's own reason may itself be recognisable ("No space left on device").
            known = self._classify_reason(str(why)) if why else None
            if known is not None and not known.noise and not known.consequence:
                return Finding(known.category, Severity.FATAL, f"provisioning script failed{detail}: {why}",
                               known.advice, line=line, stops_run=True, rule=f"analysis.run_done.{known.rule_id}")
            text = f"{text}{detail}" + (f": {why}" if why else "")
        return Finding(Category.DEPENDENCY_FATAL, Severity.FATAL, text, NO_CAUSE_ADVICE, line=line,
                       stops_run=True, rule="analysis.no_cause")

    def to_json(self) -> dict[str, Any]:
        cause = self.cause()
        return {
            "verdict": self.verdict().value,
            "cause": None if cause is None else {"category": cause.category.value, "line": cause.line,
                                                 "text": cause.text},
            "milestones": [hit.to_dict() for hit in self._milestones],
            "findings": [f.to_dict() for f in self.findings],
            "counts": self.counts,
        }

    def _degraded_cause(self) -> Finding | None:
        records = [r for r in self._records if not r.consequence and r.finding.severity.rank >= Severity.WARN.rank]
        if not records:
            return None
        latest = max(r.attempt for r in records)
        records = [r for r in records if r.attempt == latest]
        # The most severe; at equal severity a recognised cause beats an unrecognised line.
        def weight(r: _Record) -> tuple[int, bool]:
            return r.finding.severity.rank, r.finding.category != Category.UNKNOWN
        top = max(map(weight, records))
        return next(r.finding for r in records if weight(r) == top)

    # -- required pieces ---------------------------------------------------------------------------
    def _note_subject(self, text: str) -> None:
        m = _SUBJECT_SAVED.search(text)
        if m is not None:
            self._subject = m.group(1).rstrip("/").rsplit("/", 1)[-1]
            return
        m = _SUBJECT_URL.search(text)
        if m is not None:
            path = m.group(0).split("?", 1)[0].split("#", 1)[0].rstrip("/")
            self._subject = unquote(path.rsplit("/", 1)[-1])

    def _required_missing(self, cls: Classification, text: str, lineno: int) -> Finding:
        """A line proving something required is missing: promote the failed download it points at."""
        own = cls.to_finding(text, lineno)
        m = _MISSING_NAME.search(text)
        name = (m.group(1) or m.group(2) or "") if m else ""
        name = name.replace("\\", "/").rsplit("/", 1)[-1]
        failures = [r for r in self._records if not r.consequence and _is_download_failure(r.finding)]
        target = None
        if name:
            target = next((r for r in failures if name in r.subject or name in r.finding.text), None)
        if target is None and failures:
            target = failures[0]
        if target is None:
            self._add(own, consequence=False)
            return own
        f = target.finding
        if not (f.stops_run or f.severity == Severity.FATAL):
            target.finding = dataclasses.replace(
                f, severity=Severity.FATAL, stops_run=True,
                advice=f"{f.advice} This file is required (line {lineno} needs it), so the run cannot work.")
        # The line itself only proves the need: it stops the run but is never the cause.
        own = dataclasses.replace(own, severity=Severity.FATAL, stops_run=True)
        self._add(own, consequence=True)
        return own

    # -- attempts and failure ---------------------------------------------------------------------
    def _start_marker(self, kind: str) -> None:
        if kind in self._markers:
            self._new_attempt()
        self._markers.add(kind)

    def _new_attempt(self, at_least: int = 0) -> None:
        self._attempt = max(self._attempt + 1, at_least)
        self._markers = set()

    def _signal(self, lineno: int) -> None:
        self._signals.setdefault(self._attempt, []).append(lineno)

    def _failed_attempt(self) -> int | None:
        """The attempt whose failure decides the run, or None if the run has not failed."""
        latest = self._attempt
        if latest in self._signals or self._has_fatal(latest):
            return latest
        superseded_below = max(self._completed, default=0)
        for attempt in sorted({r.attempt for r in self._records}, reverse=True):
            if attempt >= superseded_below and self._has_fatal(attempt):
                return attempt
        return None

    def _has_fatal(self, attempt: int) -> bool:
        return any(r.attempt == attempt and not r.consequence
                   and (r.finding.stops_run or r.finding.severity == Severity.FATAL)
                   for r in self._records)

    # -- helpers ----------------------------------------------------------------------------------
    def _count(self, category: Category) -> None:
        self._counter[category.value] += 1

    def _add(self, finding: Finding, *, consequence: bool, subject: str = "") -> None:
        vital = finding.stops_run or finding.severity == Severity.FATAL
        if not vital and self._kept_per_attempt[self._attempt] >= MAX_FINDINGS_PER_ATTEMPT:
            self.findings_dropped += 1
            return
        self._kept_per_attempt[self._attempt] += 1
        self._records.append(_Record(finding, self._attempt, consequence, subject))

    def _milestone_hits(self, hits: list[MilestoneHit], lineno: int) -> list[MilestoneHit]:
        for hit in hits:
            self._milestones.append(hit)
            if hit.name == Milestone.PROVISIONING_COMPLETE:
                self._completed.setdefault(self._attempt, lineno)
        return hits

    # -- structured events to findings ------------------------------------------------------------
    def _event_finding(self, ev: ProvEvent, text: str, lineno: int) -> tuple[Finding | None, bool]:
        """The finding a structured event stands for, and whether it is a consequence (signal)."""
        if not ev.known:
            return None, False  # a newer script's event we don't know yet: ignore it, don't guess
        st = ev.st
        name = ev.get("name")
        why = str(ev.get("why") or "")
        required = ev.get("required") is True

        shown = event_text(ev)  # readable on a phone; the raw JSON stays in the log at ``lineno``

        def make(category: Category, severity: Severity, advice: str, *, stops: bool = False,
                 rule: str = "") -> Finding:
            return Finding(category, severity, shown, advice, line=lineno, stops_run=stops,
                           rule=rule or f"event.{ev.ev}")

        if ev.ev == "run.done":
            if st == "fail":
                return make(Category.UNKNOWN, Severity.ERROR, CONSEQUENCE_ADVICE, rule="event.run_done_fail"), True
            return None, False
        if ev.ev == "script_missing" and st not in ("ok", "skip"):
            return make(Category.SCRIPT_MISSING, Severity.FATAL,
                        "The provisioning script could not be fetched (404?), so it did not run. Check "
                        "PROVISION_SCRIPT_URL (raw URL, branch, file name, public repo).", stops=True), False
        if ev.ev == "fallback":
            self._downgrade_script_missing()
            return make(Category.SCRIPT_MISSING, Severity.WARN,
                        f"The script fell back from {ev.get('from', '?')} to {ev.get('to', '?')} on purpose; "
                        "the instance runs a reduced setup."), False
        if st == "fail":
            return self._event_failure(ev, why, required, name, make), False
        if ev.ev == "torch" and (ev.get("changed") is True or ev.get("available") is False):
            if ev.get("changed") is True:
                return make(Category.DEPENDENCY_FATAL, Severity.FATAL, _TORCH_CHANGED, stops=True), False
            return make(Category.GPU, Severity.FATAL,
                        "PyTorch can't see a GPU on this host (driver/GPU broken or a CPU-only torch). "
                        "Destroy and rent another machine.", stops=True), False
        if st == "warn":
            return self._event_warning(ev, why, make), False
        return None, False

    def _event_failure(self, ev: ProvEvent, why: str, required: bool, name: Any, make: _MakeFinding) -> Finding:
        rule_cls = self._classify_reason(why)
        if ev.ev in ("node.clone", "node.reqs"):
            if required:
                return make(Category.DEPENDENCY_FATAL, Severity.FATAL,
                            f"Required custom node {name} failed to install ({why or 'see the lines above'}). "
                            "Fix or unpin it and relaunch.", stops=True)
            return make(Category.DEPENDENCY, Severity.WARN,
                        f"Optional custom node {name} failed ({why or 'see the lines above'}); ComfyUI starts "
                        "without it and workflows using it will show missing nodes.")
        if ev.ev == "disk.check":
            return make(Category.DISK_FULL, Severity.FATAL,
                        f"Not enough disk for {name or 'the next model'} (need {ev.get('need_gb', '?')} GB, "
                        f"{ev.get('free_gb', '?')} GB free). Disk is fixed at creation: destroy and rent with a "
                        "larger disk (DISK_GB).", stops=True)
        if ev.ev == "torch":
            return make(Category.DEPENDENCY_FATAL, Severity.FATAL, _TORCH_CHANGED, stops=True)
        if ev.ev in ("apt", "pip"):
            if rule_cls is not None and rule_cls.category in (Category.DISK_FULL, Category.NETWORK):
                return make(rule_cls.category, max(rule_cls.severity, Severity.ERROR, key=_rank),
                            rule_cls.advice, stops=rule_cls.stops_run, rule=f"event.{ev.ev}")
            return make(Category.DEPENDENCY_FATAL, Severity.FATAL,
                        f"The {ev.ev} install step failed ({why or 'see the lines above'}). Fix the package "
                        "list and relaunch.", stops=True)
        if ev.ev == "fetch":
            http = ev.get("http")
            if http in (404, 410):
                return make(Category.SCRIPT_MISSING, Severity.ERROR,
                            f"{ev.get('what', 'A file')} returned HTTP {http}: check the URL (raw link, branch, "
                            "file name).")
            if http in (401, 403):
                return make(Category.AUTH, Severity.ERROR,
                            f"{ev.get('what', 'A file')} was refused (HTTP {http}): check the token for that host.")
            return make(Category.NETWORK, Severity.WARN,
                        "A fetch failed (network or server); the script retries or stops.")
        if ev.ev in ("model.start", "model.done", "model.progress"):
            if rule_cls is not None and not rule_cls.consequence and not rule_cls.noise:
                return make(rule_cls.category, max(rule_cls.severity, Severity.ERROR, key=_rank),
                            rule_cls.advice, stops=rule_cls.stops_run)
            return make(Category.NETWORK, Severity.ERROR,
                        f"Model {name or ''} did not download ({why or 'no reason given'}); workflows that need "
                        "it will fail. Check the URL/token, or relaunch on another host.")
        if rule_cls is not None and not rule_cls.consequence and not rule_cls.noise:
            return make(rule_cls.category, rule_cls.severity, rule_cls.advice, stops=rule_cls.stops_run)
        return make(Category.UNKNOWN, Severity.ERROR, f"Step {ev.ev} failed ({why or 'no reason given'}).")

    def _event_warning(self, ev: ProvEvent, why: str, make: _MakeFinding) -> Finding:
        if ev.ev == "disk.check":
            return make(Category.DISK_FULL, Severity.WARN,
                        "Disk space is tight; the next downloads may not fit. Consider a larger disk (DISK_GB).")
        rule_cls = self._classify_reason(why)
        if rule_cls is not None and not rule_cls.consequence and not rule_cls.noise:
            return make(rule_cls.category, Severity.WARN, rule_cls.advice)
        category = {"torch": Category.DEPENDENCY, "pip": Category.DEPENDENCY, "apt": Category.DEPENDENCY,
                    "node.clone": Category.DEPENDENCY, "node.reqs": Category.DEPENDENCY,
                    "fetch": Category.NETWORK, "model.done": Category.NETWORK}.get(ev.ev, Category.UNKNOWN)
        return make(category, Severity.WARN, f"Step {ev.ev} reported a warning ({why or 'no detail'}).")

    def _classify_reason(self, why: str) -> Classification | None:
        if not why:
            return None
        rule = self.classifier.match_rule(why)
        return None if rule is None else Classification.of(rule)

    def _downgrade_script_missing(self) -> None:
        # A deliberate fallback means the missing script was handled: it degrades, it doesn't stop.
        for record in self._records:
            f = record.finding
            if record.attempt == self._attempt and f.category == Category.SCRIPT_MISSING and (
                    f.stops_run or f.severity == Severity.FATAL):
                record.finding = dataclasses.replace(f, severity=Severity.ERROR, stops_run=False)


_EVENT_DETAIL_KEYS = ("what", "host", "path", "http", "step", "rc", "need_gb", "free_gb", "ver", "base", "cuda",
                      "changed", "available", "from", "to", "url", "bytes")


def event_text(ev: ProvEvent) -> str:
    """One readable line for a structured event: ``node.reqs fail: ComfyUI-ReActor (rc=1) — why``."""
    text = f"{ev.ev} {ev.st}"
    name = ev.get("name")
    if name:
        text += f": {name}"
    details = ["required"] if ev.get("required") is True else []
    details += [f"{key}={ev.get(key)}" for key in _EVENT_DETAIL_KEYS if ev.get(key) is not None]
    if details:
        text += f" ({', '.join(details)})"
    why = ev.get("why")
    if why:
        text += f" — {why}"
    return text


_TORCH_CHANGED = ("A requirement replaced PyTorch, so ComfyUI will likely lose the GPU. Remove or pin the node/package "
                  "that did it and relaunch.")


def _rank(severity: Severity) -> int:
    return severity.rank


def _is_download_failure(finding: Finding) -> bool:
    """A finding that says a file could not be fetched (refused, not found, an HTTP error)."""
    if finding.category in _DOWNLOAD_CATEGORIES or finding.rule.startswith("missing."):
        return True
    return (finding.category in (Category.NETWORK, Category.UNKNOWN, Category.CONFIG)
            and finding.severity.rank >= Severity.WARN.rank and _HTTP_STATUS.search(finding.text) is not None)

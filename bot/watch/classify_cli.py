"""``python -m bot classify FILE|- [--json]``: run the watch engine's analysis over a saved log.

Reads bytes (a file path, or ``-`` for stdin) through the same LineAssembler, Redactor, classifier
and milestone parser as the live watch, then prints either one JSON object or a readable summary.
Every printed line comes from redacted text; exit status is 0 whatever the verdict, 2 when the
input can't be read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import BinaryIO, TextIO

from bot.watch.analysis import RunAnalysis
from bot.watch.classifier import Classifier, RuleError, load_rules
from bot.watch.lines import LineAssembler
from bot.watch.redact import Redactor

CHUNK = 1 << 16
EXIT_OK = 0
EXIT_UNREADABLE = 2
SUMMARY_TEXT_CHARS = 160


def analyse_stream(stream: BinaryIO, analysis: RunAnalysis) -> int:
    """Feed a byte stream through a LineAssembler into ``analysis``; return the number of lines."""
    assembler = LineAssembler()
    while chunk := stream.read(CHUNK):
        for lineno, line in assembler.feed_numbered(chunk):
            analysis.feed_line(line, lineno)
    first = assembler.line_count + 1
    for offset, line in enumerate(assembler.flush()):
        analysis.feed_line(line, first + offset)
    return assembler.line_count


def run_classify(source: str, *, as_json: bool, secrets: Mapping[str, str] | None = None,
                 out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Classify the log at ``source`` (a path or ``-``); print JSON or a summary to ``out``."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        classifier = Classifier(load_rules())
    except RuleError as exc:  # only a broken install gets here; say so plainly
        print(f"classify: the rule file is invalid: {exc}", file=err)
        return EXIT_UNREADABLE
    analysis = RunAnalysis(classifier, Redactor(secrets or {}))
    try:
        if source == "-":
            lines = analyse_stream(sys.stdin.buffer, analysis)
        else:
            with open(source, "rb") as stream:
                lines = analyse_stream(stream, analysis)
    except IsADirectoryError:
        print(f"classify: {source} is a directory, not a log file", file=err)
        return EXIT_UNREADABLE
    except FileNotFoundError:
        print(f"classify: no such file: {source}", file=err)
        return EXIT_UNREADABLE
    except PermissionError:
        print(f"classify: permission denied: {source}", file=err)
        return EXIT_UNREADABLE
    except OSError as exc:
        print(f"classify: cannot read {source}: {exc.strerror or exc}", file=err)
        return EXIT_UNREADABLE
    if as_json:
        json.dump(analysis.to_json(), out, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(format_summary(analysis, lines))
    return EXIT_OK


def format_summary(analysis: RunAnalysis, lines: int | None = None) -> str:
    """A plain-text report: verdict, cause, milestones, findings with advice, noise counts."""
    data = analysis.to_json()
    cause = analysis.cause()
    parts: list[str] = []
    header = f"Verdict: {data['verdict'].upper().replace('_', ' ')}"
    if lines is not None:
        header += f"  ({lines} line{'s' if lines != 1 else ''})"
    parts.append(header)
    if cause is not None:
        where = f"line {cause.line}" if cause.line is not None else "no line"
        parts.append(f"Cause: {where} [{cause.category.value}] {_short(cause.text)}")
        if cause.advice:
            parts.append(f"  -> {cause.advice}")
    parts.append("")
    parts.append("Milestones:" if data["milestones"] else "Milestones: none")
    for hit in data["milestones"]:
        extra = {k: v for k, v in hit.items() if k not in ("name", "line")}
        detail = " ".join(f"{k}={v}" for k, v in extra.items())
        parts.append(f"  line {_num(hit['line'])}  {hit['name']}" + (f"  {detail}" if detail else ""))
    findings = analysis.findings
    parts.append("")
    parts.append(f"Findings ({len(findings)}):" if findings else "Findings: none")
    for f in findings:
        parts.append(f"  line {_num(f.line)}  {f.category.value}/{f.severity.value}  {_short(f.text)}")
        if f.advice:
            parts.append(f"      -> {f.advice}")
    noise = data["counts"].get("platform_noise", 0)
    parts.append("")
    parts.append(f"Platform noise ignored: {noise} line{'s' if noise != 1 else ''}" if noise
                 else "Platform noise ignored: none")
    counts = ", ".join(f"{k}={v}" for k, v in data["counts"].items())
    parts.append(f"Counts: {counts or 'none'}")
    return "\n".join(parts) + "\n"


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= SUMMARY_TEXT_CHARS else text[: SUMMARY_TEXT_CHARS - 1] + "…"


def _num(line: int | None) -> str:
    return "?" if line is None else str(line)

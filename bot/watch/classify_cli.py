"""``python -m bot classify FILE|- [--json]``: run the watch engine's analysis over a saved log.

Reads bytes (a file path, or ``-`` for stdin) through the same LineAssembler, Redactor, classifier
and milestone parser as the live watch, then prints either one JSON object or a readable summary.
Every printed line comes from redacted text.

Exit status, so scripts can branch on the verdict: 0 for ``ready`` or ``in_progress``, 3 for
``degraded``, 4 for ``failed``; 2 when the input can't be read or is not a text log (a binary file
is refused before anything is printed: its "lines" would be noise and could hold anything).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import BinaryIO, TextIO

from bot.watch.analysis import RunAnalysis
from bot.watch.classifier import Classifier, RuleError, load_rules
from bot.watch.lines import LineAssembler
from bot.watch.model import Verdict
from bot.watch.redact import Redactor

CHUNK = 1 << 16
EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_DEGRADED = 3
EXIT_FAILED = 4
VERDICT_EXIT = {Verdict.READY: EXIT_OK, Verdict.IN_PROGRESS: EXIT_OK, Verdict.DEGRADED: EXIT_DEGRADED,
                Verdict.FAILED: EXIT_FAILED}
EXIT_CODES_HELP = ("exit status: 0 ready or in progress, 3 degraded, 4 failed, "
                   "2 unreadable or not a text log")
SUMMARY_TEXT_CHARS = 160
# Binary sniffing on the first chunk: a text log has almost no control bytes and decodes as UTF-8
# apart from a few stray bytes; a model file, archive or image has many of both.
SNIFF_BYTES = 8192
MAX_BINARY_RATIO = 0.10
_TEXT_CONTROLS = frozenset(b"\t\n\r\x0c\x1b\x08")
_BINARY_MAGIC = (b"\x1f\x8b", b"PK\x03\x04", b"\x7fELF", b"\x89PNG", b"%PDF", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf")


class NotALog(ValueError):
    """The input is binary data, not a text log."""


def looks_binary(head: bytes) -> bool:
    """True when the first bytes of a file are clearly not a text log."""
    if not head:
        return False
    if head.startswith(_BINARY_MAGIC):
        return True
    sample = head[:SNIFF_BYTES]
    controls = sum(1 for b in sample if b < 0x20 and b not in _TEXT_CONTROLS) + sample.count(0x7f)
    # Drop the last 3 bytes: a cut in the middle of a UTF-8 character there is not evidence.
    body = sample[:-3] if len(sample) > 3 else sample
    invalid = body.decode("utf-8", errors="replace").count("\ufffd")
    return (controls + invalid) / len(sample) > MAX_BINARY_RATIO


def analyse_stream(stream: BinaryIO, analysis: RunAnalysis, *, refuse_binary: bool = False) -> int:
    """Feed a byte stream through a LineAssembler into ``analysis``; return the number of lines.

    With ``refuse_binary`` the first chunk is sniffed and ``NotALog`` raised before anything is fed.
    """
    assembler = LineAssembler()
    first = True
    while chunk := stream.read(CHUNK):
        if first and refuse_binary and looks_binary(chunk):
            raise NotALog("binary data")
        first = False
        for lineno, line in assembler.feed_numbered(chunk):
            analysis.feed_line(line, lineno)
    flushed_from = assembler.line_count + 1
    for offset, line in enumerate(assembler.flush()):
        analysis.feed_line(line, flushed_from + offset)
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
            lines = analyse_stream(sys.stdin.buffer, analysis, refuse_binary=True)
        else:
            with open(source, "rb") as stream:
                lines = analyse_stream(stream, analysis, refuse_binary=True)
    except NotALog:
        where = "standard input" if source == "-" else source
        print(f"classify: {where} is a binary file, not a text log; give the provisioning log "
              "(for example /var/log/portal/provisioning.log)", file=err)
        return EXIT_UNREADABLE
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
    return VERDICT_EXIT[analysis.verdict()]


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

"""Classify one log line against the ordered rule file (``rules.json``, shipped as package data).

First matching rule wins; platform noise comes first in the file because several noise lines
contain "Error", "CRIT" or "WRN". Lines that match no rule but look like errors (a traceback,
``ERROR``, ``Error:``, ``FATAL``, an exception, ``failed``, apt's ``E:``) become ``unknown``
warnings so nothing alarming is silently dropped; ordinary lines classify as ``None``.

Speed: every rule's regex is reduced (via the regex parser) to literal substrings that any match
must contain; one pass of a literal-only gate over the lower-cased line rejects the vast majority
of lines before a single rule regex runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bot.watch.model import Category, Finding, Severity

try:  # the regex parser is private API; without it every rule is simply checked on every line
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Python versions
    try:
        import sre_parse as _sre_parse  # type: ignore[no-redef]
    except ImportError:
        _sre_parse = None  # type: ignore[assignment]

RULES_RESOURCE = "rules.json"
_REQUIRED_KEYS = ("id", "pattern", "category", "severity", "stops_run", "advice")
_OPTIONAL_KEYS = ("consequence",)
_MIN_LITERAL = 3
UNKNOWN_RULE_ID = "unknown.error_line"
UNKNOWN_ADVICE = "Unrecognised error line; it may be harmless. Look at the lines around it if the run misbehaves."


class RuleError(ValueError):
    """The rule file is malformed; the message names the offending rule."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One classifier rule: a case-insensitive regex and what a match means."""

    id: str
    pattern: str
    category: Category
    severity: Severity
    stops_run: bool
    advice: str
    consequence: bool = False
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern, re.IGNORECASE)
        except re.error as exc:
            raise RuleError(f"rule {self.id!r}: invalid regex {self.pattern!r}: {exc}") from None
        object.__setattr__(self, "regex", compiled)


@dataclass(frozen=True, slots=True)
class Classification:
    """What a line is, according to the rule that matched it (or the unknown-error fallback)."""

    rule_id: str
    category: Category
    severity: Severity
    stops_run: bool
    advice: str
    consequence: bool = False

    @property
    def noise(self) -> bool:
        return self.category == Category.PLATFORM_NOISE

    @property
    def unknown(self) -> bool:
        return self.rule_id == UNKNOWN_RULE_ID

    def to_finding(self, text: str, line: int | None = None) -> Finding:
        return Finding(category=self.category, severity=self.severity, text=text, advice=self.advice,
                       line=line, stops_run=self.stops_run, rule=self.rule_id)

    @classmethod
    def of(cls, rule: Rule) -> Classification:
        return cls(rule.id, rule.category, rule.severity, rule.stops_run, rule.advice, rule.consequence)


UNKNOWN_ERROR = Classification(UNKNOWN_RULE_ID, Category.UNKNOWN, Severity.WARN, False, UNKNOWN_ADVICE)


# -- loading ------------------------------------------------------------------------------------------

def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Load and validate the rule file (the packaged ``rules.json`` when ``path`` is None)."""
    if path is None:
        text = resources.files("bot.watch").joinpath(RULES_RESOURCE).read_text(encoding="utf-8")
        where = f"bot/watch/{RULES_RESOURCE}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"cannot read rule file {path}: {exc.strerror or exc}") from None
        where = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuleError(f"{where}: not valid JSON: {exc}") from None
    return parse_rules(data, where=where)


def parse_rules(data: Any, where: str = "rules") -> list[Rule]:
    """Validate already-decoded rule data (a list of rule objects)."""
    if not isinstance(data, list):
        raise RuleError(f"{where}: expected a list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise RuleError(f"{where}: rule #{index + 1} is not an object")
        rule_id = item.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            raise RuleError(f"{where}: rule #{index + 1} has no id")
        name = f"rule {rule_id!r}"
        if rule_id in seen:
            raise RuleError(f"{name}: duplicate id")
        seen.add(rule_id)
        missing = [k for k in _REQUIRED_KEYS if k not in item]
        if missing:
            raise RuleError(f"{name}: missing {', '.join(missing)}")
        extra = sorted(set(item) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if extra:
            raise RuleError(f"{name}: unknown key(s) {', '.join(extra)}")
        try:
            category = Category(item["category"])
        except ValueError:
            raise RuleError(f"{name}: unknown category {item['category']!r} "
                            f"(expected one of {', '.join(c.value for c in Category)})") from None
        try:
            severity = Severity(item["severity"])
        except ValueError:
            raise RuleError(f"{name}: unknown severity {item['severity']!r} "
                            f"(expected one of {', '.join(s.value for s in Severity)})") from None
        for key in ("pattern", "advice"):
            if not isinstance(item[key], str) or not item[key]:
                raise RuleError(f"{name}: {key} must be a non-empty string")
        for key in ("stops_run", "consequence"):
            if key in item and not isinstance(item[key], bool):
                raise RuleError(f"{name}: {key} must be true or false")
        rules.append(Rule(rule_id, item["pattern"], category, severity, item["stops_run"], item["advice"],
                          item.get("consequence", False)))
    return rules


# -- literal extraction for the gate --------------------------------------------------------------

def required_literals(pattern: str) -> list[str] | None:
    """Lower-case substrings of which every match of ``pattern`` contains at least one, or None."""
    if _sre_parse is None:
        return None
    try:
        parsed = _sre_parse.parse(pattern, re.IGNORECASE)
    except re.error:
        return None
    found = _seq_literals(list(parsed.data))
    return sorted(set(found)) if found else None


def _better(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    # Prefer the set whose shortest literal is longest (fewer false gate hits), then fewer items.
    return a if (min(map(len, a)), -len(a)) >= (min(map(len, b)), -len(b)) else b


def _seq_literals(items: Sequence[tuple[Any, Any]]) -> list[str] | None:
    c = _sre_parse  # local alias; constants live on the parser module
    literal, at, subpattern, branch = c.LITERAL, c.AT, c.SUBPATTERN, c.BRANCH
    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None))
    best: list[str] | None = None
    run = ""

    def close_run() -> None:
        nonlocal run, best
        if len(run) >= _MIN_LITERAL:
            best = _better(best, [run])
        run = ""

    for op, av in items:
        if op is literal:
            run += chr(av).lower()
        elif op is at:
            continue  # zero-width: the literals on either side are still adjacent
        elif op is subpattern:
            inner = list(av[-1].data)
            if all(o is literal for o, _ in inner):
                run += "".join(chr(v).lower() for _, v in inner)
                continue
            close_run()
            best = _better(best, _seq_literals(inner))
        elif op is branch:
            close_run()
            alternatives: list[str] = []
            for alt in av[1]:
                got = _seq_literals(list(alt.data))
                if got is None:
                    alternatives = []
                    break
                alternatives.extend(got)
            if alternatives:
                best = _better(best, alternatives)
        elif op in repeats and av[0] >= 1:
            close_run()
            best = _better(best, _seq_literals(list(av[2].data)))
        else:
            close_run()
    close_run()
    return best


# -- the unknown-error heuristic ---------------------------------------------------------------------

# Cheap lower-case gate first; the precise (case-sensitive) test only runs when it passes.
_ERROR_GATE = re.compile(r"err|fatal|fail|exception|traceback|crit|panic|segmentation|core dump|killed|abort"
                         r"|^\s*(?:\[e\]|e:)")
_ERRORISH = re.compile(
    r"Traceback \(most recent call last\)"
    r"|\b(?:ERROR|ERRORS|FATAL|CRITICAL|CRIT|PANIC|FAILED|FAILURE)\b"
    r"|\b(?:[Ee]rror|[Ff]atal|[Pp]anic|[Ee]rrno)\b\s*[:\]]"
    r"|\b\w*(?:Error|Exception)\b(?=\s*[:(]|\s*$)"
    r"|\bException\b"
    r"|\b[Ff]ail(?:ed|ure|s)\b"
    r"|^\s*\[E\]|^\s*E:\s"
    r"|Segmentation fault|core dumped|\bKilled\b|\bAborted\b"
)
# Phrases that contain an error word without reporting an error.
_NOT_ERROR = re.compile(
    r"\b(?:0|no|zero|without)\s+(?:errors?|failures?|failed|exceptions?)\b"
    r"|\b(?:errors?|failures?|failed|exceptions?)\s*[:=]\s*0\b"
    r"|\b0\s+(?:failed|errors?)\b"
    r"|[\w.-]*(?:_|-)(?:error|errors|fail|failed|failure|failures|exception)\w*"
    r"|\b(?:error|errors|fail|failed|failure|exception)(?:_|-)[\w.-]*"
    r"|--?[\w-]*(?:error|fail)[\w-]*"
    r"|\b(?:if|on|ignore|ignoring|suppress|raise)\s+errors?\b"
    r"|\berror(?:s)?\s+(?:handling|handler|reporting|level|log)\b",
    re.IGNORECASE,
)


def looks_like_error(text: str) -> bool:
    """True for lines that read like an error report (used for lines no rule recognises)."""
    if _ERROR_GATE.search(text.lower()) is None:
        return False
    if _ERRORISH.search(text) is None:
        return False
    return _ERRORISH.search(_NOT_ERROR.sub(" ", text)) is not None


# -- the classifier ----------------------------------------------------------------------------------

class Classifier:
    """Ordered, first-match-wins line classifier."""

    _CACHE_MAX = 4096

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._results = tuple(Classification.of(rule) for rule in self.rules)
        literal_sets: list[tuple[str, ...] | None] = []
        gate_literals: set[str] = set()
        for rule in self.rules:
            lits = required_literals(rule.pattern)
            literal_sets.append(tuple(lits) if lits else None)
            if lits:
                gate_literals.update(lits)
        self._literals = tuple(literal_sets)
        self.ungated_rules = tuple(r.id for r, lits in zip(self.rules, literal_sets, strict=True) if lits is None)
        if gate_literals and not self.ungated_rules:
            ordered = sorted(gate_literals, key=len, reverse=True)
            self._gate: re.Pattern[str] | None = re.compile("|".join(re.escape(x) for x in ordered))
        else:
            self._gate = None
        self._cache: dict[str, Classification | None] = {}

    def classify_line(self, text: str) -> Classification | None:
        """The first matching rule's classification, the unknown-error fallback, or None."""
        cached = self._cache.get(text, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        result = self._classify(text)
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        self._cache[text] = result
        return result

    def match_rule(self, text: str) -> Rule | None:
        """The first rule whose pattern matches ``text`` (no unknown-error fallback)."""
        index = self._first_rule(text)
        return None if index is None else self.rules[index]

    # -- internals --------------------------------------------------------------------------------
    def _classify(self, text: str) -> Classification | None:
        index = self._first_rule(text)
        if index is not None:
            return self._results[index]
        if looks_like_error(text):
            return UNKNOWN_ERROR
        return None

    def _first_rule(self, text: str) -> int | None:
        if not text:
            return None
        # Non-ASCII text bypasses the gate: IGNORECASE equates some non-ASCII letters with ASCII
        # ones (the Kelvin sign and 'k'), which lower() does not.
        if text.isascii():
            low = text.lower()
            if self._gate is not None and self._gate.search(low) is None:
                return None
            for i, rule in enumerate(self.rules):
                lits = self._literals[i]
                if lits is not None and not any(lit in low for lit in lits):
                    continue
                if rule.regex.search(text) is not None:
                    return i
            return None
        for i, rule in enumerate(self.rules):
            if rule.regex.search(text) is not None:
                return i
        return None


_MISS = object()

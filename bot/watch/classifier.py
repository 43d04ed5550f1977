"""Classify one log line against the ordered rule file (``rules.json``, shipped as package data).

First matching rule wins; platform noise comes first in the file because several noise lines
contain "Error", "CRIT" or "WRN". ``set -x`` trace lines (``+ cmd``, ``++ cmd``) are commands a script
is about to run, not results, so they are never classified (a traced ``trap '... [ERROR] ...'`` is
not an error).

Lines no rule knows (the rule for unknown lines):
* reported as ``unknown`` at ``warn`` only when they have the *shape of a failure*: a traceback's
  last line (``SomeError: ...``), a non-zero exit (``exit status 2``, ``(exit 1)``, ``Killed``,
  ``Segmentation fault``), ``fatal:``/``error:``/``E:``/``ERROR:``/``[ERROR]`` at the start of the
  line (git, pip, apt, the Vast provisioner, aria2c), bash's ``script: line N: ...`` errors, or an
  HTTP 4xx/5xx status on a download (``awaiting response... 404``, ``HTTP/2 403``, ``returned
  error: 500``);
* otherwise, if they merely contain an error word (``error``, ``failed``, ``CRIT``...), counted as
  ``unknown`` at ``info`` (``UNKNOWN_INFO``): never a warning, never degrading a run, but listed by
  ``/logs errors_only``;
* ordinary lines classify as ``None``.

Speed: every rule's regex is reduced (via the regex parser) to literal substrings one of which any
match must contain. A literal with a word in its middle is found by intersecting that word with the
line's whitespace tokens (one C-level set operation); the rest are checked with ``in`` in groups that
share a substring. Only the rules whose literals occur run their regex, in rule order, so the answer
is exactly the first-match-wins answer (a property test compares it with trying every rule).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bot.watch.model import Category, Finding, Severity

try:  # the regex parser is private API; without it every rule is simply checked on every line
    import re._parser as _sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Python versions
    try:
        import sre_parse as _sre_parse
    except ImportError:
        _sre_parse = None

RULES_RESOURCE = "rules.json"
_REQUIRED_KEYS = ("id", "pattern", "category", "severity", "stops_run", "advice")
_OPTIONAL_KEYS = ("consequence", "required_missing")
_MIN_LITERAL = 3
UNKNOWN_RULE_ID = "unknown.error_line"
UNKNOWN_INFO_RULE_ID = "unknown.error_word"
UNKNOWN_ADVICE = "Unrecognised error line; it may be harmless. Look at the lines around it if the run misbehaves."
UNKNOWN_INFO_ADVICE = "An unrecognised line with an error word but not the shape of a failure; usually harmless."


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
    # The line shows that something the run needs is missing (a workflow asking for a model file that
    # is absent or not a model, a script saying a required download failed): an earlier failed
    # download is then the run's cause, and it stops being optional.
    required_missing: bool = False
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
    required_missing: bool = False

    @property
    def noise(self) -> bool:
        return self.category == Category.PLATFORM_NOISE

    @property
    def unknown(self) -> bool:
        """No rule knew the line (a failure-shaped ``warn`` or a merely wordy ``info`` line)."""
        return self.rule_id in (UNKNOWN_RULE_ID, UNKNOWN_INFO_RULE_ID)

    def to_finding(self, text: str, line: int | None = None) -> Finding:
        return Finding(category=self.category, severity=self.severity, text=text, advice=self.advice,
                       line=line, stops_run=self.stops_run, rule=self.rule_id)

    @classmethod
    def of(cls, rule: Rule) -> Classification:
        return cls(rule.id, rule.category, rule.severity, rule.stops_run, rule.advice, rule.consequence,
                   rule.required_missing)


UNKNOWN_ERROR = Classification(UNKNOWN_RULE_ID, Category.UNKNOWN, Severity.WARN, False, UNKNOWN_ADVICE)
UNKNOWN_INFO = Classification(UNKNOWN_INFO_RULE_ID, Category.UNKNOWN, Severity.INFO, False, UNKNOWN_INFO_ADVICE)


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
        for key in ("stops_run", "consequence", "required_missing"):
            if key in item and not isinstance(item[key], bool):
                raise RuleError(f"{name}: {key} must be true or false")
        rules.append(Rule(rule_id, item["pattern"], category, severity, item["stops_run"], item["advice"],
                          item.get("consequence", False), item.get("required_missing", False)))
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


_MAX_ALTERNATIVES = 64


def _pure_strings(items: Sequence[tuple[Any, Any]]) -> list[str] | None:
    """The few exact (lower-case) strings a regex fragment can match, or None if not a small finite set."""
    c = _sre_parse
    outs = [""]
    for op, av in items:
        if op is c.LITERAL:
            options = [chr(av).lower()]
        elif op is c.AT:
            continue  # zero-width: adjacency is unchanged
        elif op is c.IN:
            if not av or any(o is not c.LITERAL for o, _ in av):
                return None
            options = sorted({chr(v).lower() for _, v in av})
        elif op is c.SUBPATTERN:
            got = _pure_strings(list(av[-1].data))
            if got is None:
                return None
            options = got
        elif op is c.BRANCH:
            options = []
            for alt in av[1]:
                got = _pure_strings(list(alt.data))
                if got is None:
                    return None
                options.extend(got)
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[1] == 1:
            got = _pure_strings(list(av[2].data))
            if got is None:
                return None
            options = ([""] if av[0] == 0 else []) + got
        else:
            return None
        outs = sorted({o + x for o in outs for x in options})
        if len(outs) > _MAX_ALTERNATIVES:
            return None
    return outs


def _seq_literals(items: Sequence[tuple[Any, Any]]) -> list[str] | None:
    """Literal alternatives (lower case) one of which every match of this sequence contains."""
    c = _sre_parse
    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None))
    best: list[str] | None = None
    runs = [""]  # the text matched so far by adjacent exact pieces: one of these strings

    def close_runs() -> None:
        nonlocal runs, best
        if min(map(len, runs)) >= _MIN_LITERAL:
            best = _better(best, runs)
        runs = [""]

    for item in items:
        op, av = item
        pure = _pure_strings([item])
        if pure is not None:
            grown = sorted({r + p for r in runs for p in pure})
            if len(grown) > _MAX_ALTERNATIVES:
                close_runs()
                grown = pure
            runs = grown
            continue
        close_runs()
        if op is c.SUBPATTERN:
            best = _better(best, _seq_literals(list(av[-1].data)))
        elif op is c.BRANCH:
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
            best = _better(best, _seq_literals(list(av[2].data)))
    close_runs()
    return best


def literal_gate(literals: Iterable[str], *, longest: bool = False) -> re.Pattern[str]:
    """A regex that finds occurrences of any of ``literals``, built as a trie.

    A flat ``a|b|c...`` alternation makes the regex engine try every alternative at every position;
    the trie only tries the alternatives that share the character at hand, which for ~150 literals
    is several times faster. With ``longest=False`` (existence only) a literal that is a prefix of
    another ends its branch; with ``longest=True`` a match is always a whole literal, the longest
    one starting at that position.
    """
    trie: dict[str, Any] = {}
    for lit in literals:
        if not lit:
            raise ValueError("empty literal in a gate")
        node = trie
        for ch in lit:
            node = node.setdefault(ch, {})
        node[""] = {}
    if not trie:
        raise ValueError("a gate needs at least one literal")

    def render(node: dict[str, Any]) -> str:
        ends = "" in node
        if ends and not longest:
            return ""
        alts = [re.escape(ch) + render(node[ch]) for ch in sorted(k for k in node if k)]
        if ends:
            alts.append("")  # tried last: the longer literal wins when it matches
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return re.compile(render(trie))


# The only non-ASCII characters that IGNORECASE regexes equate with ASCII letters (checked against
# every code point). Folding them first makes lower() agree with the regex engine for the gates.
_IGNORECASE_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def fold_lower(text: str) -> str:
    """``text.lower()``, with the few non-ASCII letters that IGNORECASE treats as ASCII folded first."""
    return text.lower() if text.isascii() else text.translate(_IGNORECASE_FOLD).lower()


# -- the unknown-error heuristic ---------------------------------------------------------------------

# Cheap lower-case gate first; the precise (case-sensitive) test only runs when it passes.
_ERROR_WORDS = ("err", "fail", "fatal", "exception", "traceback", "crit", "panic", "segmentation", "core dump",
                "killed", "abort")
_ERROR_START = ("[e]", "e:")


def _has_error_word(low: str) -> bool:
    for word in _ERROR_WORDS:  # a plain loop of `in` beats a regex for a dozen short words
        if word in low:
            return True
    return low.lstrip().startswith(_ERROR_START)
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


# The shape of a failure, for lines no rule knows (see the module docstring). Each shape has a cheap
# substring gate and a small regex, anchored where it can be: one big alternation searched at every
# position of every line was several times slower than the whole rule set.
_TRACEBACK_LAST = re.compile(r"(?:\S+ - )?(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)(?::\s|:?$)")
_TOOL_PREFIX = re.compile(r"(?i:fatal|error)\s*:\s|E:\s|[\d/:.,T\- ]*\[(?:ERROR|FATAL)\]")
_BASH_ERROR = re.compile(r"\S+: line \d+: ")
_NONZERO_EXIT = re.compile(
    r"\b(?i:exit(?:ed)?|returned)(?: with)?(?: (?:a )?non-zero)?(?: exit)? (?i:status|code)[ :=]*[1-9]\d*\b"
    r"|\(exit [1-9]\d*\)|\bnon-zero exit (?:status|code)\b")
_CRASH_WORDS = ("Segmentation fault", "core dumped")
_KILLED = re.compile(r"(?:^|\s)Killed(?:\s|$)")
_HTTP_FAILURE = re.compile(
    r"(?i:awaiting response\.\.\.|HTTP/[\d.]+|HTTP Error|returned error:|status code:?|response code:?)\s*[45]\d\d\b"
    r"|\b[45]\d\d (?:Client|Server) Error\b")
_HTTP_WORDS = ("awaiting response", "http/", "http error", "returned error", "status code", "response code",
               " client error", " server error")
# Whole words one of which a failure-shaped line without an error word contains ("exit status 2",
# "(exit 1)", "script: line 9:", "awaiting response... 404", "HTTP/2 403", "status code: 500").
_QUIET_SHAPE_TOKENS = frozenset({"exit", "exited", "returned", "(exit", "line", "awaiting", "code", "code:", "status",
                                 "status:", "http/1.0", "http/1.1", "http/2", "http/3", "<", "killed"})
_XTRACE = re.compile(r"\++ ")


def is_xtrace(text: str) -> bool:
    """A ``set -x`` trace line: the command about to run, echoed with bash's ``+`` prefix."""
    return text[:1] == "+" and _XTRACE.match(text) is not None


def failure_shaped(text: str, low: str | None = None) -> bool:
    """True for lines shaped like a failure report (see the module docstring)."""
    if low is None:
        low = fold_lower(text)
    if ":" in text:
        if ("Error" in text or "Exception" in text or "Exit" in text or "Interrupt" in text) \
                and _TRACEBACK_LAST.match(text):
            return True
        head = low.lstrip()[:8]
        if (head.startswith(("fatal", "error", "e:")) or "[error]" in low or "[fatal]" in low) \
                and _TOOL_PREFIX.match(text.lstrip()):
            return True
        if ": line " in text and _BASH_ERROR.match(text):
            return True
    if ("exit" in low or "returned" in low) and _NONZERO_EXIT.search(text):
        return True
    if "Killed" in text and _KILLED.search(text):
        return True
    for word in _CRASH_WORDS:
        if word in text:
            return True
    for word in _HTTP_WORDS:
        if word in low:
            return _HTTP_FAILURE.search(text) is not None
    return False


def looks_like_error(text: str, low: str | None = None) -> bool:
    """True for lines that read like an error report (used for lines no rule recognises).

    ``low`` may pass ``text.lower()`` when the caller already has it.
    """
    if low is None:
        low = text.lower()
    return _has_error_word(low) and _errorish(text)


def _errorish(text: str) -> bool:
    """The precise half of ``looks_like_error``, for a line already known to carry an error word."""
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
        by_anchor: dict[str, set[int]] = {}
        by_literal: dict[str, set[int]] = {}
        ungated: list[int] = []
        for index, rule in enumerate(self.rules):
            lits = required_literals(rule.pattern)
            if not lits or not all(lit.isascii() for lit in lits):
                ungated.append(index)
                continue
            for lit in lits:
                anchor = _anchor_token(lit)
                if anchor is not None:
                    by_anchor.setdefault(anchor, set()).add(index)
                else:
                    by_literal.setdefault(lit, set()).add(index)
        self.ungated_rules = tuple(self.rules[i].id for i in ungated)
        self._ungated = frozenset(ungated)
        self._anchors = frozenset(by_anchor)
        self._token_gate = self._anchors | _QUIET_SHAPE_TOKENS
        self._by_anchor = {tok: frozenset(idx) for tok, idx in by_anchor.items()}
        self._literal_groups = _group_literals({lit: frozenset(idx) for lit, idx in by_literal.items()})
        # The same groups split for the hot loop: a bare loop over keys, members looked up on a hit.
        self._group_keys = tuple(key for key, _ in self._literal_groups)
        self._group_members = dict(self._literal_groups)
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
        index = self._first_rule(text, fold_lower(text))
        return None if index is None else self.rules[index]

    # -- internals --------------------------------------------------------------------------------
    def _classify(self, text: str) -> Classification | None:
        if text[:1] == "+" and _XTRACE.match(text):
            return None  # a traced command, not its result
        low = fold_lower(text)
        # The line's words that gate a rule or a quiet failure shape: one C-level set intersection.
        words = self._token_gate.intersection(low.split())
        index = self._first_rule(text, low, words)
        if index is not None:
            return self._results[index]
        if _has_error_word(low):
            if failure_shaped(text, low):
                return UNKNOWN_ERROR
            return UNKNOWN_INFO if _errorish(text) else None
        # Without an error word only a few shapes are possible (an exit status, bash's "line N:",
        # an HTTP status), each with one of a few whole words: one C-level set check.
        if words and not _QUIET_SHAPE_TOKENS.isdisjoint(words):
            return UNKNOWN_ERROR if failure_shaped(text, low) else None
        return None

    def _first_rule(self, text: str, low: str, words: AbstractSet[str] | None = None) -> int | None:
        """Index of the first matching rule. Only rules whose required literal occurs are tried.

        ``words`` may pass the line's words that are in ``_token_gate`` when the caller has them.
        """
        candidates = set(self._ungated) if self._ungated else set()
        # A literal with a word in its middle ("no SPACE left on device") can only occur if that
        # word is one of the line's whitespace-separated tokens: one C-level set intersection.
        for token in self._token_gate.intersection(low.split()) if words is None else words:
            indices = self._by_anchor.get(token)
            if indices is not None:
                candidates |= indices
        # The other literals are checked in groups sharing a substring ("error" for "error 404",
        # "client error"...), so a line without the shared part costs one check for the group.
        for key in self._group_keys:
            if key in low:
                for lit, indices in self._group_members[key]:
                    if lit is key or lit in low:
                        candidates |= indices
        if not candidates:
            return None
        rules = self.rules
        for index in sorted(candidates):
            if rules[index].regex.search(text) is not None:
                return index
        return None


def _group_literals(literals: dict[str, frozenset[int]]
                    ) -> tuple[tuple[str, tuple[tuple[str, frozenset[int]], ...]], ...]:
    """Group literals under shared substrings (5-8 chars, shared by two or more), greedily."""
    remaining = set(literals)
    groups: list[tuple[str, tuple[tuple[str, frozenset[int]], ...]]] = []
    while True:
        shared: dict[str, set[str]] = {}
        for lit in remaining:
            for n in range(5, 9):
                for i in range(len(lit) - n + 1):
                    shared.setdefault(lit[i:i + n], set()).add(lit)
        best = max(((len(v), len(k), k) for k, v in shared.items() if len(v) >= 2), default=None)
        if best is None:
            break
        key = best[2]
        members = sorted(shared[key])
        groups.append((key, tuple((lit, literals[lit]) for lit in members)))
        remaining -= shared[key]
    # A lone literal is its own key: "lit is key" then skips the second check.
    groups.extend((lit, ((lit, literals[lit]),)) for lit in sorted(remaining))
    return tuple(groups)


def _anchor_token(literal: str) -> str | None:
    """The longest word strictly inside ``literal`` (space on both sides), or None.

    Such a word is a whole whitespace-separated token of any line that contains the literal.
    """
    parts = literal.split(" ")
    inner = [p for p in parts[1:-1] if p and not any(ch.isspace() for ch in p)]
    if not inner:
        return None
    # Prefer a word that is rare in ordinary lines: not a stop word, then the longest.
    return max(inner, key=lambda p: (p not in _COMMON_WORDS, len(p)))


# Stop words, and words that fill ordinary provisioning logs ("Requirement already satisfied").
_COMMON_WORDS = frozenset(
    "a an and are as at be by for from has have in is it not of on or that the this to was with already".split())


_MISS = object()

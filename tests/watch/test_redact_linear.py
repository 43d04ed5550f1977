"""Redaction cost is linear in the text's length: the rules every pattern follows, checked on the
parsed patterns (no timing here; ``bench/bench_redact.py`` prints seconds per MB).

The defect this guards against: one pattern scanned the rest of a URL from every position, so a
224 KB line took 45 s to redact, on the event loop.

Rules, for Python's backtracking engine: no repeat inside a repeat; no unbounded repeat inside a
lookaround; an unbounded repeat is possessive (nothing backtracks into it) or the last thing the
pattern matches (once it matches, the match is over); every other repeat is bounded; and the number
of ways a pattern can backtrack from one start position is small. Together they bound the work per
start position by a constant, whatever the text.
"""

from __future__ import annotations

import re
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import pytest

from bot.watch import lines, redact
from bot.watch.redact import ALL_PATTERNS, Redactor

MAX_BOUND = 4096  # the largest bounded repeat allowed where something follows it
MAX_WAYS = 4096  # backtracking alternatives from one start position
_REPEATS = (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT)


class Unsafe(Exception):
    pass


def backtracking_ways(pattern: re.Pattern[str]) -> int:
    """How many ways ``pattern`` can backtrack from one start position; Unsafe if a rule breaks."""
    parsed = sre_parse.parse(pattern.pattern, pattern.flags)
    looks: list[int] = [1]
    ways = _ways(list(parsed.data), tail=True, in_repeat=False, in_look=False, looks=looks)
    return max(ways, *looks)


def _ways(items: list[tuple[Any, Any]], *, tail: bool, in_repeat: bool, in_look: bool, looks: list[int]) -> int:
    ways = 1
    last = len(items) - 1
    for i, (op, av) in enumerate(items):
        at_tail = tail and i == last
        if op in _REPEATS:
            lo, hi, body = av
            if hi > 1 and in_repeat:
                raise Unsafe("a repeat inside a repeat")
            unbounded = hi == sre_c.MAXREPEAT
            if unbounded and in_look:
                raise Unsafe("an unbounded repeat inside a lookaround")
            if unbounded and not at_tail and op is not sre_c.POSSESSIVE_REPEAT:
                raise Unsafe("an unbounded repeat that can backtrack and is not the pattern's end")
            if not unbounded and hi > MAX_BOUND:
                raise Unsafe(f"a repeat bound of {hi}")
            inner = _ways(list(body.data), tail=False, in_repeat=in_repeat or hi > 1, in_look=in_look,
                          looks=looks)
            ways *= inner if op is sre_c.POSSESSIVE_REPEAT or at_tail else (hi - lo + 1) * inner
        elif op is sre_c.BRANCH:
            ways *= sum(_ways(list(alt.data), tail=at_tail, in_repeat=in_repeat, in_look=in_look, looks=looks)
                        for alt in av[1])
        elif op is sre_c.SUBPATTERN:
            ways *= _ways(list(av[-1].data), tail=at_tail, in_repeat=in_repeat, in_look=in_look, looks=looks)
        elif op is sre_c.ATOMIC_GROUP:
            looks.append(_ways(list(av.data), tail=False, in_repeat=in_repeat, in_look=in_look, looks=looks))
        elif op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
            looks.append(_ways(list(av[1].data), tail=False, in_repeat=in_repeat, in_look=True, looks=looks))
        elif op in (sre_c.GROUPREF, sre_c.GROUPREF_EXISTS):
            raise Unsafe("a back-reference")
    return ways


def _module_patterns() -> dict[str, re.Pattern[str]]:
    found = {f"redact.{k}": v for k, v in vars(redact).items() if isinstance(v, re.Pattern)}
    found |= {f"lines.{k}": v for k, v in vars(lines).items() if isinstance(v, re.Pattern)}
    return found


CHECKED = {**ALL_PATTERNS, **{k: v for k, v in _module_patterns().items() if k.startswith("lines.")},
           "redact._PERCENT": redact._PERCENT}


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_pattern_is_linear(name: str) -> None:
    assert backtracking_ways(CHECKED[name]) <= MAX_WAYS


def test_every_module_pattern_is_checked() -> None:
    checked = {id(p) for p in CHECKED.values()}
    missing = [k for k, p in _module_patterns().items() if id(p) not in checked and k != "redact._TRIGGER"]
    assert not missing


def test_known_value_pattern_is_linear() -> None:
    # Built at run time from the secrets: literal alternatives and the marker, nothing that repeats.
    r = Redactor({"HF_TOKEN": "hf_" + "a" * 34, "WEB_PASSWORD": "p%2Fw pass", "X": "short1"})
    exact = r._known.exact
    assert exact is not None and backtracking_ways(exact) <= MAX_WAYS * 8


@pytest.mark.parametrize(("pattern", "rule"), [
    (r"https?://[^\s]*[?&]sig=[^\s]*", "backtrack"),  # the old signed-URL pattern
    (r"(?:a{1,3}){1,5}b", "inside a repeat"),
    (r"(?=[a-z]*x)y", "lookaround"),
    (r"x[a-z]{0,9999}y", "bound"),
    (r"(a)\1", "back-reference"),
])
def test_the_rules_catch_quadratic_shapes(pattern: str, rule: str) -> None:
    with pytest.raises(Unsafe, match=rule):
        backtracking_ways(re.compile(pattern))

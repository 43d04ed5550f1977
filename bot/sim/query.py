"""Vast's query semantics as the simulator applies them, without HTTP.

The offer search (``POST /api/v0/bundles/``): its ``{"field": {"op": value}}`` filters, the
aliases and computed fields Vast compares, its order and limit, with prices recomputed for the
search's ``allocated_storage``. The v1 instance list: which columns it filters on, its order and
its opaque pagination token. Numbers and booleans are compared as leniently as Vast does (the
CLI sends them as strings).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from bot.sim.catalog import priced_offer

OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
# Keys of a search body that are not filters.
QUERY_META = frozenset({"order", "limit", "type", "allocated_storage", "select_cols", "disable_bundling"})
FIELD_ALIASES = {"dph": "dph_total", "cuda_vers": "cuda_max_good"}
# Columns the v1 list can filter on; computed ones (dph_total, num_gpus) give 400 as on Vast.
LIST_FILTER_COLUMNS = frozenset(
    {"id", "label", "actual_status", "intended_status", "cur_state", "gpu_name", "verification",
     "machine_id", "host_id", "geolocation", "image_uuid"}
)


class QueryError(ValueError):
    """A query Vast would answer with 400: ``code`` is Vast's ``error`` field, the text its ``msg``."""

    def __init__(self, msg: str, code: str = "invalid_args") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def search_offers(catalogue: list[dict[str, Any]], query: Any) -> list[dict[str, Any]]:
    """The offers a search body selects, priced for its ``allocated_storage``, ordered and cut."""
    if not isinstance(query, dict):
        raise QueryError("query must be a JSON object")
    try:
        allocated = float(query.get("allocated_storage", 5.0))
        offers = [priced_offer(o, allocated) for o in catalogue]
        for key, condition in query.items():
            if key in QUERY_META:
                continue
            if not isinstance(condition, dict):
                condition = {"eq": condition}
            bad = set(condition) - OPERATORS
            if bad:
                raise QueryError(f"unknown operator(s) {sorted(bad)} on {key}")
            offers = [o for o in offers if matches(offer_field(o, key), condition)]
        offers = ordered(offers, query.get("order") or [["score", "desc"]])
        limit = int(query.get("limit") or 64)
    except QueryError:
        raise
    except (TypeError, ValueError) as exc:
        raise QueryError(f"bad query: {exc}") from None
    return offers[: max(limit, 0)]


def filter_instances(rows: list[dict[str, Any]], filters: dict[str, Any], order: list[Any]) -> list[dict[str, Any]]:
    """The v1 list's ``select_filters`` and ``order_by`` applied to instance rows."""
    for column, condition in filters.items():
        if column not in LIST_FILTER_COLUMNS:
            raise QueryError(f"cannot filter on computed column {column}")
        if not isinstance(condition, dict) or set(condition) - OPERATORS:
            raise QueryError(f"bad condition on {column}")
        rows = [r for r in rows if matches(r.get(column), condition)]
    return ordered(rows, [[o.get("col"), o.get("dir", "asc")] for o in order if isinstance(o, dict)])


def geolocation_code(geolocation: Any) -> str | None:
    """What Vast's server-side ``geolocation`` filter compares: a trailing two-letter code only.

    Full country names ("Guangdong, China") and null yield None, so ``notin`` lets them through.
    """
    if not isinstance(geolocation, str):
        return None
    tail = geolocation.rsplit(",", 1)[-1].strip()
    return tail.upper() if len(tail) == 2 and tail.isalpha() else None


def offer_field(offer: dict[str, Any], key: str) -> Any:
    """The value Vast compares for a search key (aliases and computed fields resolved)."""
    key = FIELD_ALIASES.get(key, key)
    if key == "verified":
        return offer.get("verification") == "verified"
    if key == "geolocation":
        return geolocation_code(offer.get("geolocation"))
    return offer.get(key)


def matches(actual: Any, condition: dict[str, Any]) -> bool:
    """Whether ``actual`` meets every operator of ``condition``; a missing value meets only
    ``neq`` and ``notin``."""
    for op, wanted in condition.items():
        if op in ("in", "notin"):
            values = wanted if isinstance(wanted, list) else [wanted]
            hit = actual is not None and any(_equal(actual, v) for v in values)
            if hit != (op == "in"):
                return False
            continue
        if op == "eq":
            if actual is None or not _equal(actual, wanted):
                return False
            continue
        if op == "neq":
            if actual is not None and _equal(actual, wanted):
                return False
            continue
        if actual is None:
            return False
        a, w = _coerce_pair(actual, wanted)
        try:
            ok = {"gt": a > w, "gte": a >= w, "lt": a < w, "lte": a <= w}[op]
        except TypeError:
            return False
        if not ok:
            return False
    return True


def ordered(rows: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    """Rows sorted by ``[[field, "asc"|"desc"], ...]``, missing values last either way."""
    if not isinstance(order, list):
        raise ValueError("order must be a list of [field, direction]")
    for spec in reversed(order):
        if not isinstance(spec, list | tuple) or not spec:
            raise ValueError("order must be a list of [field, direction]")
        column = FIELD_ALIASES.get(str(spec[0]), str(spec[0]))
        descending = len(spec) > 1 and str(spec[1]).lower() == "desc"
        present = [r for r in rows if r.get(column) is not None]
        missing = [r for r in rows if r.get(column) is None]
        present.sort(key=lambda r: _sort_key(r.get(column)), reverse=descending)
        rows = present + missing
    return rows


def encode_token(offset: int) -> str:
    """The v1 list's ``next_token`` for the page starting at ``offset``."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int | None:
    """The offset an ``after_token`` stands for, or None when it is not one of ours."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        return None
    offset = data.get("o") if isinstance(data, dict) else None
    return offset if isinstance(offset, int) and offset >= 0 else None


def as_int(value: Any) -> int | None:
    number = as_float(value)
    return int(number) if number is not None else None


def as_float(value: Any) -> float | None:
    """A finite number from a number or numeric string; None for anything else (booleans too)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _coerce_pair(actual: Any, wanted: Any) -> tuple[Any, Any]:
    # The CLI sends numbers and booleans as strings; compare like with like.
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return _as_bool(actual), _as_bool(wanted)
    if isinstance(actual, int | float) or isinstance(wanted, int | float):
        a, w = as_float(actual), as_float(wanted)
        if a is not None and w is not None:
            return a, w
    return actual, wanted


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _equal(actual: Any, wanted: Any) -> bool:
    a, w = _coerce_pair(actual, wanted)
    return bool(a == w)


def _sort_key(value: Any) -> tuple[int, Any]:
    number = as_float(value)
    return (0, number) if number is not None else (1, str(value))

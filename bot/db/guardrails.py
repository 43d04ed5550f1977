"""The SQL behind the guardrails (audit, budgets, host reputation), as functions taking the Store.

Kept out of ``store.py`` so the store's core stays small; the functions use the store's own
locked connection helpers, so they join a surrounding ``store.transaction()`` like any other call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.db.models import Event, HostOutcome, Rental
from bot.db.store import (
    _CHUNK,
    _EVENT_COLS,
    _RENTAL_COLS,
    Store,
    _event,
    _placeholders,
    _rental,
    _select,
)

# ---------------------------------------------------------------- rentals and events


async def rentals_billing_during(store: Store, since: float, *, requester_id: int | None = None) -> list[Rental]:
    """Rentals that were billing at some point at or after ``since``: created on Vast (``started_at``
    set) and not ended before ``since``. Oldest first."""
    where = "started_at IS NOT NULL AND (ended_at IS NULL OR ended_at >= ?)"
    params: list[Any] = [since]
    if requester_id is not None:
        where += " AND requester_id = ?"
        params.append(requester_id)
    rows = await store._fetchall(f"SELECT {_select(_RENTAL_COLS)} FROM rentals WHERE {where} ORDER BY id", params)
    return [_rental(r) for r in rows]


async def unrented_requests(store: Store, since: float, *, requester_id: int | None = None) -> dict[str, int]:
    """Requests made at or after ``since`` that never reached Vast, counted by final state."""
    where = "started_at IS NULL AND created_at >= ?"
    params: list[Any] = [since]
    if requester_id is not None:
        where += " AND requester_id = ?"
        params.append(requester_id)
    rows = await store._fetchall(f"SELECT state, count(*) FROM rentals WHERE {where} GROUP BY state", params)
    return {str(state): int(n) for state, n in rows}


async def events_by_kind(store: Store, rental_ids: Iterable[int], kinds: Iterable[str]) -> dict[int, list[Event]]:
    """The events of ``kinds`` for each rental, in sequence order (rentals without any are absent)."""
    ids = sorted(set(rental_ids))
    wanted = sorted(set(kinds))
    out: dict[int, list[Event]] = {}
    if not ids or not wanted:
        return out
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = await store._fetchall(
            f"SELECT {_select(_EVENT_COLS)} FROM events WHERE rental_id IN ({_placeholders(len(chunk))})"
            f" AND kind IN ({_placeholders(len(wanted))}) ORDER BY rental_id, seq",
            (*chunk, *wanted),
        )
        for row in rows:
            event = _event(row)
            out.setdefault(event.rental_id, []).append(event)
    return out


async def find_requester(store: Store, text: str) -> tuple[int | None, str | None]:
    """(requester id, name as recorded) of the latest rental requested by ``text``: an id or a name."""
    text = text.strip().lstrip("@")
    if text.isascii() and text.isdigit() and len(text) <= 18:
        row = await store._fetchone(
            "SELECT requester_id, requester_name FROM rentals WHERE requester_id = ? ORDER BY id DESC LIMIT 1",
            (int(text),))
    else:
        row = await store._fetchone(
            "SELECT requester_id, requester_name FROM rentals WHERE lower(requester_name) = lower(?)"
            " ORDER BY id DESC LIMIT 1", (text,))
    if row is None or row[0] is None:
        return None, None
    return int(row[0]), str(row[1] or row[0])


# ---------------------------------------------------------------- budget warnings


async def claim_budget_alert(store: Store, *, scope: str, period: str, period_start: float, level: str,
                             now: float) -> bool:
    """Record that a warning is being posted: True for exactly one caller per (scope, period, level)."""
    rows = await store._write_fetchall(
        "INSERT INTO budget_alerts (scope, period, period_start, level, ts) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING RETURNING scope",
        (scope, period, period_start, level, now),
    )
    return bool(rows)


# ---------------------------------------------------------------- host reputation


@dataclass(frozen=True, slots=True)
class HostMark:
    """An approver's word on a machine: banned for good, and/or its older failures forgiven."""

    machine_id: int
    banned: bool
    cleared_at: float | None
    reason: str | None
    by_name: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class HostStats:
    """One machine's recorded outcomes (failures before a clear are not counted)."""

    machine_id: int
    host_id: int | None
    geolocation: str | None
    ok: int
    degraded: int
    failed: int
    last_ts: float
    last_failed_ts: float | None
    last_failure_reason: str | None


def _mark(row: Any) -> HostMark:
    machine_id, banned, cleared_at, reason, by_name, updated_at = row
    return HostMark(int(machine_id), bool(banned), None if cleared_at is None else float(cleared_at),
                    reason, by_name, float(updated_at))


async def host_marks(store: Store, machine_ids: Iterable[int] | None = None) -> dict[int, HostMark]:
    """Marks by machine id (all of them, or only ``machine_ids``)."""
    cols = "machine_id, banned, cleared_at, reason, by_name, updated_at"
    if machine_ids is None:
        rows = await store._fetchall(f"SELECT {cols} FROM host_marks")
    else:
        ids = sorted(set(machine_ids))
        if not ids:
            return {}
        rows = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows += await store._fetchall(
                f"SELECT {cols} FROM host_marks WHERE machine_id IN ({_placeholders(len(chunk))})", chunk)
    return {m.machine_id: m for m in map(_mark, rows)}


async def set_host_mark(store: Store, machine_id: int, *, banned: bool, clear: bool, reason: str | None,
                        by_id: int | None, by_name: str | None, now: float) -> HostMark:
    """Ban or unban a machine; ``clear`` also forgives its failures recorded up to ``now``."""
    rows = await store._write_fetchall(
        "INSERT INTO host_marks (machine_id, banned, cleared_at, reason, by_id, by_name, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (machine_id) DO UPDATE SET banned = excluded.banned,"
        " cleared_at = coalesce(excluded.cleared_at, host_marks.cleared_at), reason = excluded.reason,"
        " by_id = excluded.by_id, by_name = excluded.by_name, updated_at = excluded.updated_at"
        " RETURNING machine_id, banned, cleared_at, reason, by_name, updated_at",
        (machine_id, int(banned), now if clear else None, reason, by_id, by_name, now),
    )
    return _mark(rows[0])


_FORGIVEN = "(m.cleared_at IS NOT NULL AND h.ts <= m.cleared_at)"


async def failing_machines(store: Store, since: float) -> list[int]:
    """Machines with a counted failure at or after ``since``, plus every banned machine. Ascending."""
    rows = await store._fetchall(
        "SELECT DISTINCT h.machine_id FROM hosts h LEFT JOIN host_marks m ON m.machine_id = h.machine_id"
        f" WHERE h.outcome = ? AND h.ts >= ? AND NOT {_FORGIVEN}"
        " UNION SELECT machine_id FROM host_marks WHERE banned = 1 ORDER BY 1",
        (HostOutcome.FAILED.value, since),
    )
    return [int(r[0]) for r in rows]


async def failure_counts(store: Store, machine_ids: Iterable[int]) -> dict[int, int]:
    """Counted failures (ever, since the last clear) of each machine that has any."""
    ids = sorted(set(machine_ids))
    out: dict[int, int] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = await store._fetchall(
            "SELECT h.machine_id, count(*) FROM hosts h LEFT JOIN host_marks m ON m.machine_id = h.machine_id"
            f" WHERE h.outcome = ? AND h.machine_id IN ({_placeholders(len(chunk))}) AND NOT {_FORGIVEN}"
            " GROUP BY h.machine_id",
            (HostOutcome.FAILED.value, *chunk),
        )
        out.update({int(m): int(n) for m, n in rows})
    return out


async def host_stats(store: Store, *, machine_id: int | None = None, limit: int = 100) -> list[HostStats]:
    """Per machine: outcome counts, the latest failure and its reason; most recent trouble first."""
    where, params = "", []
    if machine_id is not None:
        where, params = "WHERE h.machine_id = ?", [machine_id]
    rows = await store._fetchall(
        "SELECT h.machine_id, max(h.host_id), max(h.geolocation),"
        " sum(h.outcome = 'ok'), sum(h.outcome = 'degraded'),"
        f" sum(h.outcome = 'failed' AND NOT {_FORGIVEN}), max(h.ts),"
        f" max(CASE WHEN h.outcome = 'failed' AND NOT {_FORGIVEN} THEN h.ts END)"
        " FROM hosts h LEFT JOIN host_marks m ON m.machine_id = h.machine_id"
        f" {where} GROUP BY h.machine_id"
        " ORDER BY (max(CASE WHEN h.outcome = 'failed' THEN h.ts END) IS NULL), max(h.ts) DESC LIMIT ?",
        (*params, limit),
    )
    stats: list[HostStats] = []
    for mid, host_id, geo, ok, degraded, failed, last_ts, last_failed in rows:
        reason = None
        if last_failed is not None:
            found = await store._fetchone(
                "SELECT reason FROM hosts WHERE machine_id = ? AND outcome = 'failed' AND ts = ? ORDER BY id DESC",
                (mid, last_failed))
            reason = found[0] if found else None
        stats.append(HostStats(int(mid), None if host_id is None else int(host_id), geo, int(ok or 0),
                               int(degraded or 0), int(failed or 0), float(last_ts),
                               None if last_failed is None else float(last_failed), reason))
    return stats

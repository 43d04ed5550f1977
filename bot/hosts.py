"""Host reputation: which machines failed our rentals, whether they are left out of offers now
(HOST_AVOID_WINDOW after a failure, or banned), and an approver's clear or ban. No Discord here.

The machine history itself is written by the watch engine (``hosts`` table, one row per ended
rental); this module only reads it and keeps the approver's marks (``host_marks``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.db.guardrails import HostMark, failure_counts, host_marks, host_stats, set_host_mark
from bot.db.store import Store
from bot.vast.models import Offer


@dataclass(frozen=True, slots=True)
class HostView:
    """One machine as /hosts shows it."""

    machine_id: int
    host_id: int | None
    geolocation: str | None
    ok: int
    degraded: int
    failed: int
    last_failure_reason: str | None
    last_failed_ts: float | None
    banned: bool
    ban_reason: str | None
    marked_by: str | None
    avoided_until: float | None  # None: offered normally (or banned, which is for good)

    def status(self, now: float) -> str:
        if self.banned:
            return "banned"
        if self.avoided_until is not None and self.avoided_until > now:
            return "avoided"
        return "offered"


def trouble_note(failures: int | None) -> str:
    """What /rent shows beside an offer whose machine failed us before (outside the avoid window)."""
    if not failures:
        return ""
    return f" · ⚠️ failed us {failures} time{'s' if failures != 1 else ''}"


async def offer_trouble(store: Store, offers: Iterable[Offer]) -> dict[int, int]:
    """Counted failures per offer id, for offers whose machine has any."""
    offers = [o for o in offers if o.machine_id is not None]
    counts = await failure_counts(store, (o.machine_id for o in offers if o.machine_id is not None))
    return {o.id: counts[o.machine_id] for o in offers if o.machine_id in counts}


async def host_views(store: Store, *, window: float, machine_id: int | None = None,
                     limit: int = 50) -> list[HostView]:
    """Machines with a history or a mark, the troubled and banned first."""
    stats = await host_stats(store, machine_id=machine_id, limit=limit)
    marks = await host_marks(store, None if machine_id is None else [machine_id])
    views: list[HostView] = []
    for s in stats:
        mark = marks.pop(s.machine_id, None)
        views.append(_view(s.machine_id, mark, window, host_id=s.host_id, geolocation=s.geolocation, ok=s.ok,
                           degraded=s.degraded, failed=s.failed, reason=s.last_failure_reason,
                           last_failed=s.last_failed_ts))
    # A machine banned before we ever rented it has a mark and no history.
    views += [_view(m.machine_id, m, window) for m in marks.values() if m.banned]
    views.sort(key=lambda v: (not v.banned, v.failed == 0, -(v.last_failed_ts or 0.0), v.machine_id))
    return views[:limit]


def _view(machine_id: int, mark: HostMark | None, window: float, *, host_id: int | None = None,
          geolocation: str | None = None, ok: int = 0, degraded: int = 0, failed: int = 0,
          reason: str | None = None, last_failed: float | None = None) -> HostView:
    return HostView(
        machine_id=machine_id, host_id=host_id, geolocation=geolocation, ok=ok, degraded=degraded, failed=failed,
        last_failure_reason=reason, last_failed_ts=last_failed, banned=bool(mark and mark.banned),
        ban_reason=mark.reason if mark and mark.banned else None, marked_by=mark.by_name if mark else None,
        avoided_until=None if last_failed is None else last_failed + window,
    )


async def ban(store: Store, machine_id: int, *, by_id: int, by_name: str, reason: str | None,
              now: float) -> HostMark:
    """Leave the machine out of every offer from now on, whatever its history."""
    return await set_host_mark(store, machine_id, banned=True, clear=False, reason=reason, by_id=by_id,
                               by_name=by_name, now=now)


async def clear(store: Store, machine_id: int, *, by_id: int, by_name: str, now: float) -> HostMark:
    """Lift a ban and forgive the failures recorded so far: the machine is offered again."""
    return await set_host_mark(store, machine_id, banned=False, clear=True, reason=None, by_id=by_id,
                               by_name=by_name, now=now)

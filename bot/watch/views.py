"""The watch's read API for the faces of the bot (Discord cogs, the CLI): a rental's progress, its
cost to date, its log tail and the account as the last poll saw it. Nothing here writes, and no
caller needs to know the engine's live state or how the store keeps it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.db.models import Rental
from bot.vast.models import Instance
from bot.watch.cost import rental_cost
from bot.watch.logtail import LogTail, WatchView, log_tail

if TYPE_CHECKING:
    from bot.watch.engine import WatchEngine

# How old the engine's last instance list may be for /status to use it instead of asking Vast.
FRESH_LIST = 30.0


@dataclass
class Progress:
    """What the watch knows about a rental beyond its row."""

    milestones: dict[str, float] = field(default_factory=dict)
    noise: int = 0
    warnings: int = 0
    verdict: str | None = None


def progress_from(data: dict[str, Any] | None) -> Progress:
    """A Progress from a watch's memory (as stored in watch_state.data)."""
    data = data or {}
    findings = data.get("findings") or []
    noise = data.get("noise") or {}
    return Progress(
        milestones={str(k): float(v) for k, v in dict(data.get("milestones") or {}).items()},
        noise=sum(int(v) for v in noise.values()) if isinstance(noise, dict) else 0,
        warnings=sum(1 for f in findings if isinstance(f, dict) and f.get("severity") in ("warn", "error", "fatal")),
        verdict=data.get("verdict"),
    )


class WatchViews:
    """Reads for the cogs and the CLI, from the engine's live watches or, failing that, the store."""

    def __init__(self, engine: WatchEngine) -> None:
        self._engine = engine

    async def progress(self, rental: Rental) -> Progress:
        """From the live watch when there is one (no database work), else the stored watch state."""
        watch = self._engine.watches.get(rental.id)
        if watch is not None:
            return progress_from(watch.memory.to_json())
        state = await self._engine.store.get_watch_state(rental.id)
        return progress_from(state.data if state else None)

    def cost(self, rental: Rental, now: float | None = None) -> float:
        """What Vast has billed for the rental so far (the one cost function)."""
        return rental_cost(rental, self._engine.clock.now() if now is None else now)

    def live_log(self, rental_id: int) -> WatchView:
        """The watch's live SSH session and container-log tail, for a log tail read."""
        watch = self._engine.watches.get(rental_id)
        if watch is None:
            return WatchView()
        tail = watch.memory.fallback_tail
        return WatchView(reader=watch.session, path=self._engine.policy.log_path, end=watch.log_offset,
                         fallback_tail=[str(x) for x in tail] if tail else None)

    async def log_tail(self, rental_id: int, *, lines: int, errors_only: bool = False) -> LogTail:
        """The rental's last ``lines`` log lines through the watcher's own line pipeline and redaction."""
        return await log_tail(self.live_log(rental_id), self._engine.store, rental_id,
                              redactor=self._engine.redactor, classifier=self._engine.classifier,
                              lines=lines, errors_only=errors_only)

    def recent_instances(self, max_age: float = FRESH_LIST) -> list[Instance] | None:
        """The account's instances as the engine's last poll listed them, if that is fresh enough."""
        at = self._engine.last_list_at
        if at is None or self._engine.clock.now() - at > max_age:
            return None
        return sorted(self._engine.last_list.values(), key=lambda i: i.id)

    def watched(self) -> Iterable[int]:
        """Ids of the rentals the engine is watching now."""
        return tuple(self._engine.watches)

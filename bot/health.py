"""The running bot's liveness signal: a heartbeat file rewritten after every watch poll.

``python -m bot run`` writes it (its path is ``HEARTBEAT_PATH``, by default next to the database)
each time the watch engine finishes a poll, with the clock's time, the poll count and the state of
the Discord connection. ``python -m bot check --running`` reads it, so a monitor (cron, a systemd
timer, a container health check) learns whether billing rentals are still being watched, whether or
not Discord is reachable. Only the watcher's progress counts: a bot connected to Discord whose
engine stopped polling is not healthy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bot.clock import Clock

log = logging.getLogger(__name__)

# A heartbeat older than this many poll intervals means the watcher is stuck or gone. One poll can
# take a while (SSH timeouts on several rentals), hence the margin and the floor.
STALE_POLLS = 3
STALE_FLOOR_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    time: float  # the bot's clock when the poll finished (seconds since the epoch)
    ticks: int  # watch polls done since the process started
    pid: int
    discord: str  # "connected", "connecting", or what the last attempt hit and when the next is due


def stale_after(poll_interval: float) -> float:
    """Age in seconds past which a heartbeat means the watcher is not running."""
    return max(STALE_POLLS * poll_interval, STALE_FLOOR_SECONDS)


def write_heartbeat(path: Path, beat: Heartbeat) -> None:
    """Replace the file atomically: a reader never sees half a heartbeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(beat)) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The heartbeat at ``path``; None when there is none. ValueError when the file is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a vastops heartbeat file ({exc})") from None
    try:
        return Heartbeat(time=float(data["time"]), ticks=int(data["ticks"]), pid=int(data["pid"]),
                         discord=str(data["discord"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} is not a vastops heartbeat file") from None


def running_verdict(path: Path, now: float, max_age: float) -> tuple[int, str]:
    """(exit code, one line) for ``check --running``: 0 fresh, 1 stale, missing or unreadable."""
    try:
        beat = read_heartbeat(path)
    except ValueError as exc:
        return 1, f"NOT RUNNING: {exc}"
    if beat is None:
        return 1, (f"NOT RUNNING: no heartbeat at {path} (the bot has not completed a watch poll there; "
                   "is `python -m bot run` running with the same DATABASE_PATH/HEARTBEAT_PATH?)")
    age = now - beat.time
    if age > max_age:
        return 1, (f"NOT RUNNING: the last watch poll was {age:.0f}s ago (limit {max_age:.0f}s, pid {beat.pid}); "
                   "billing rentals may be unwatched: look at the bot's log and restart it")
    return 0, (f"running: last watch poll {max(age, 0.0):.0f}s ago, {beat.ticks} polls, pid {beat.pid}, "
               f"Discord {beat.discord}")


async def beat_while_watching(path: Path, clock: Clock, ticks: Callable[[], int], discord: Callable[[], str],
                              *, check_every: float = 5.0) -> None:
    """Write a heartbeat whenever the watch engine's poll count moved; runs until cancelled."""
    seen = ticks()
    while True:
        await clock.sleep(check_every)
        now_ticks = ticks()
        if now_ticks == seen:
            continue
        seen = now_ticks
        beat = Heartbeat(time=clock.now(), ticks=now_ticks, pid=os.getpid(), discord=discord())
        try:
            await asyncio.to_thread(write_heartbeat, path, beat)
        except OSError as exc:  # a full disk must not stop the bot; the monitor will see it stale
            log.warning("could not write the heartbeat %s: %s", path, exc)

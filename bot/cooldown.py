"""Per-user cooldowns for commands, measured on the injected clock (no Discord in here).

A user who runs the same command again within ``seconds`` is told how long to wait instead of
having it run: a burst of /status or /rent must not crowd the Vast API the watcher depends on.
"""

from __future__ import annotations

from bot.clock import Clock

MAX_TRACKED = 10_000  # beyond this many (command, user) pairs, the expired ones are forgotten


class Cooldown:
    """``try_start(command, user_id)``: 0 when the user may run it now (its cooldown starts), else
    the seconds left. Each command has its own cooldown per user."""

    def __init__(self, clock: Clock, seconds: float, *, per_command: dict[str, float] | None = None) -> None:
        if seconds < 0:
            raise ValueError("a cooldown cannot be negative")
        self.clock = clock
        self.seconds = float(seconds)
        self.per_command = {name: max(0.0, float(s)) for name, s in (per_command or {}).items()}
        self._last: dict[tuple[str, int], float] = {}

    def seconds_for(self, command: str) -> float:
        return self.per_command.get(command, self.seconds)

    def try_start(self, command: str, user_id: int) -> float:
        seconds = self.seconds_for(command)
        if seconds <= 0:
            return 0.0
        now = self.clock.now()
        key = (command, user_id)
        last = self._last.get(key)
        if last is not None and last <= now < last + seconds:
            return last + seconds - now
        # Not run yet, the cooldown is over, or the clock went back (then the older start is moot).
        self._last[key] = now
        if len(self._last) > MAX_TRACKED:
            self._forget_expired(now)
        return 0.0

    def _forget_expired(self, now: float) -> None:
        self._last = {key: t for key, t in self._last.items() if now < t + self.seconds_for(key[0])}


__all__ = ["Cooldown"]

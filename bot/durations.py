"""Parse durations such as ``90s``, ``10m``, ``1h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)


def parse_duration(value: str | float | int) -> float:
    """Return seconds for ``value``; raise ``ValueError`` with a readable message otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 10m, 1h or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if not text:
            raise ValueError("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2).lower()]
                pos = match.end()
            if pos != len(text) or pos == 0:
                raise ValueError(
                    f"invalid duration {value!r}: use 90s, 10m, 1h, 1h30m or a number of seconds"
                ) from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative number")
    return seconds


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``42`` -> ``42s``."""
    seconds = round(max(0.0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"

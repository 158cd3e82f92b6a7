"""Times on the command line: ISO-8601, Unix seconds, or relative (-10m, -2h, now)."""

from __future__ import annotations

import datetime as dt
import re
import time

_REL = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$")
_UNITS = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_DUR = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$")


class TimeError(ValueError):
    pass


def parse_time(text: str, now_ns: int | None = None) -> int:
    """-> Unix epoch ns.  '2025-01-05T12:00:00Z' (naive = local time), '1736078400', '-10m', 'now'."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    s = text.strip()
    if s.lower() == "now":
        return now_ns
    m = _REL.match(s)
    if m:
        return now_ns - int(float(m.group(1)) * _UNITS[m.group(2)] * 1e9)
    try:
        v = float(s)
    except ValueError:
        pass
    else:
        if v > 1e17:  # already ns: parsed as an int, since a float keeps only ~16 of its 19 digits
            return int(s) if s.isdigit() else int(v)
        return int(round(v * 1e9))
    try:
        d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise TimeError(f"cannot read time {text!r}: use ISO-8601 (2025-01-05T12:00:00Z), Unix seconds or relative (-10m, -2h, now)") from None
    if d.tzinfo is None:
        d = d.astimezone()
    return int(round(d.timestamp() * 1e9))


def parse_duration(text: str) -> float:
    """'60', '60s', '5m', '1h' -> seconds."""
    m = _DUR.match(text.strip())
    if not m:
        raise TimeError(f"cannot read duration {text!r}: use e.g. 60, 60s, 5m, 1h")
    v = float(m.group(1)) * _UNITS[m.group(2)]
    if v <= 0:
        raise TimeError(f"duration {text!r} must be positive")
    return v


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

"""Persistence and hysteresis: one open observation per condition.

A condition is tracked from first_seen.  While it lasts its observation is
updated in place (duration, band, severity); it closes only after it has been
clear for clear_after_s, and a condition that returns within reopen_within_s
of closing reopens the same observation, so a flapping or stuck signal yields
one observation, not a flood.

Persistence bands (docs/design.md, "Temporal persistence tracking"):
    transient   < 1 min      log, don't alert
    short-lived 1-5 min      monitor for recurrence
    persistent  5-15 min     investigate actively
    systemic    > 15 min     urgent attention
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .rules import SEVERITIES

BANDS = (("transient", 60), ("short-lived", 300), ("persistent", 900), ("systemic", float("inf")))
BAND_WORDS = {
    "transient": "transient, likely a brief spike",
    "short-lived": "short-lived issue; watch for recurrence",
    "persistent": "persistent problem; investigate actively",
    "systemic": "systemic issue; urgent attention required",
}


def band(duration_s: float) -> str:
    for name, limit in BANDS:
        if duration_s < limit:
            return name
    return "systemic"  # pragma: no cover


def escalate(base: str, band_name: str) -> str:
    """A problem that lasts is worse than one that passes: one step up when
    persistent, two when systemic; a transient one never above its base."""
    steps = {"transient": 0, "short-lived": 0, "persistent": 1, "systemic": 2}[band_name]
    return SEVERITIES[min(len(SEVERITIES) - 1, SEVERITIES.index(base) + steps)]


@dataclass
class Finding:
    """One condition seen this interval, with its evidence."""

    key: str
    rule_id: str
    label: str
    category: str
    observation_type: str
    severity: str
    metric: str
    value: float | None
    baseline_mean: float | None = None
    zscore: float | None = None
    trend: str = "unknown"
    summary: str = ""
    hints: list[str] = field(default_factory=list)
    correlated: list[str] = field(default_factory=list)
    processes: list[dict] = field(default_factory=list)
    forecast: dict | None = None  # observation_type forecast: scope, risk, seconds_to_exhaustion, ...


@dataclass
class Tracked:
    key: str
    finding: Finding
    first_seen: float
    last_seen: float
    clear_since: float | None = None
    closed_at: float | None = None
    obs_id: int | None = None  # row id in the store
    updates: int = 0
    peak_severity: str = "low"
    onset_processes: list[dict] = field(default_factory=list)  # the suspects when it opened

    def duration(self, now: float) -> float:
        end = self.closed_at if self.closed_at is not None else now
        return max(0.0, end - self.first_seen)


@dataclass
class Change:
    kind: str  # "opened" | "updated" | "closed" | "reopened"
    tracked: Tracked


class Tracker:
    def __init__(self, clear_after_s: float, reopen_within_s: float):
        self.clear_after_s = clear_after_s
        self.reopen_within_s = reopen_within_s
        self.open: dict[str, Tracked] = {}
        self.recently_closed: dict[str, Tracked] = {}

    def is_open(self, key: str) -> bool:
        return key in self.open

    def update(self, now: float, findings: list[Finding]) -> list[Change]:
        changes: list[Change] = []
        seen = set()
        for f in findings:
            seen.add(f.key)
            t = self.open.get(f.key)
            if t is None:
                old = self.recently_closed.pop(f.key, None)
                if old is not None and old.closed_at is not None and now - old.closed_at <= self.reopen_within_s:
                    t = old  # flapping: the same observation goes on
                    t.closed_at = None
                    kind = "reopened"
                else:
                    t = Tracked(f.key, f, first_seen=now, last_seen=now, onset_processes=list(f.processes))
                    kind = "opened"
                self.open[f.key] = t
            else:
                kind = "updated"
            t.finding = f
            t.last_seen = now
            t.clear_since = None
            t.updates += 1
            sev = escalate(f.severity, band(t.duration(now)))
            if SEVERITIES.index(sev) > SEVERITIES.index(t.peak_severity):
                t.peak_severity = sev
            changes.append(Change(kind, t))
        for key in list(self.open):
            if key in seen:
                continue
            t = self.open[key]
            if t.clear_since is None:
                t.clear_since = now
            if now - t.clear_since >= self.clear_after_s:
                t.closed_at = t.clear_since
                del self.open[key]
                self.recently_closed[key] = t
                changes.append(Change("closed", t))
        for key in [k for k, t in self.recently_closed.items() if now - (t.closed_at or now) > self.reopen_within_s]:
            del self.recently_closed[key]
        return changes

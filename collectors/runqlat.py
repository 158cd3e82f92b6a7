"""runqlat: run-queue (scheduler) latency histogram, one event per interval.

The tool attaches to tp_btf sched_wakeup / sched_wakeup_new / sched_switch
(raw tracepoints if BTF-typed ones are missing), so it works without kprobes.
It is started as `runqlat INTERVAL` (microsecond histogram); its map is
cleared after each print, so every event covers one interval.
"""

from __future__ import annotations

import re

from .base import CollectorSpec, Parser
from .hist import HistError, Log2Hist, parse_header, parse_row

TIME_RE = re.compile(r"^\d\d:\d\d:\d\d$")


class HistStreamParser(Parser):
    """A stream of log2 histograms, one per interval.

    The end of a histogram is not marked (the blank line comes *before* each
    one), so a histogram is emitted when the next thing starts, when the tool
    has been quiet for a moment (idle), or at a clean EOF.  A histogram cut
    off by the tool dying mid-line is dropped with a warning: its percentiles
    would be wrong.
    """

    event_type = "runqlat"
    banners = ("Tracing",)

    def __init__(self, interval_s: int = 1) -> None:
        super().__init__(interval_s)
        self.cur: Log2Hist | None = None

    def _emit(self, now_ns: int) -> list[dict]:
        h, self.cur = self.cur, None
        if h is None or not h.counts:
            return []
        try:
            return [self.make_event(h, now_ns)]
        except HistError as e:
            self.warn(f"histogram dropped: {e}")
            return []

    def make_event(self, h: Log2Hist, now_ns: int) -> dict:
        return {
            "type": self.event_type,
            "ts": now_ns,
            "interval_s": self.interval_s,
            "samples": h.total,
            "p50_us": h.percentile_us(0.50),
            "p95_us": h.percentile_us(0.95),
            "p99_us": h.percentile_us(0.99),
            "max_us": h.max_us(),
            "bucket_low_us": h.lows_us(),
            "counts": list(h.counts),
        }

    def feed(self, line: str, now_ns: int) -> list[dict]:
        row = parse_row(line)
        if row is not None:
            if self.cur is None:
                self.warn(f"histogram row without a header: {line.strip()!r}")
                self.skipped += 1
                return []
            try:
                self.cur.add_row(*row)
            except HistError as e:
                self.warn(f"histogram dropped: {e}")
                self.cur = None
            return []
        unit = parse_header(line)
        if unit is not None:
            out = self._emit(now_ns)
            self.cur = Log2Hist(unit)
            return out
        s = line.strip()
        out = self._emit(now_ns)
        if not s or TIME_RE.match(s) or s.startswith(self.banners):
            return out
        self.skipped += 1
        self.warn(f"unexpected line: {s[:120]!r}")
        return out

    def idle(self, now_ns: int) -> list[dict]:
        return self._emit(now_ns)

    def finish(self, now_ns: int, clean: bool = True) -> list[dict]:
        if not clean and self.cur is not None and self.cur.counts:
            self.warn("tool stopped in the middle of a histogram; last interval dropped")
            self.cur = None
            return []
        return self._emit(now_ns)


SPEC = CollectorSpec(
    name="runqlat",
    tool="runqlat",
    doc="run-queue latency histogram per interval (CPU saturation)",
    args=lambda interval: [str(interval)],
    parser=HistStreamParser,
    event_types=("runqlat",),
    attach="tp_btf sched_wakeup, sched_wakeup_new, sched_switch",
)

"""biopattern: per disk and interval, the share of random vs sequential I/O.

Attaches to the block:block_rq_complete tracepoint.  Run as
`biopattern INTERVAL`; a request counts as sequential when it starts where
the previous one on the same disk ended.  Counters are cleared after every
print, so each event covers one interval; disks with no I/O print nothing.
"""

from __future__ import annotations

from .base import CollectorSpec, Parser


class BiopatternParser(Parser):
    def __init__(self, interval_s: int = 1) -> None:
        super().__init__(interval_s)
        self.cols: list[str] | None = None

    def feed(self, line: str, now_ns: int) -> list[dict]:
        toks = line.split()
        if not toks:
            return []
        if "DISK" in toks and "%RND" in toks:
            self.cols = toks
            return []
        if self.cols is None or len(toks) != len(self.cols):
            if not line.startswith("Tracing"):
                self.skipped += 1
                self.warn(f"unparsable line: {line.strip()[:160]!r}")
            return []
        r = dict(zip(self.cols, toks))
        try:
            return [{
                "type": "bio_pattern",
                "ts": now_ns,
                "interval_s": self.interval_s,
                "disk": r["DISK"],
                "random_pct": int(r["%RND"]),
                "sequential_pct": int(r["%SEQ"]),
                "requests": int(r["COUNT"]),
                "kbytes": int(r["KBYTES"]),
            }]
        except (KeyError, ValueError):
            self.skipped += 1
            self.warn(f"unparsable line: {line.strip()[:160]!r}")
            return []


SPEC = CollectorSpec(
    name="biopattern",
    tool="biopattern",
    doc="random vs sequential block I/O per disk and interval",
    args=lambda interval: [str(interval)],
    parser=BiopatternParser,
    event_types=("bio_pattern",),
    attach="tracepoint block:block_rq_complete",
)

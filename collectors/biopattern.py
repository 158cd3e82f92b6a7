"""biopattern: per disk and interval, the share of random vs sequential I/O.

Attaches to the block:block_rq_complete tracepoint.  Run as
`biopattern INTERVAL`; a request counts as sequential when it starts where
the previous one on the same disk ended.  Counters are cleared after every
print, so each event covers one interval; disks with no I/O print nothing.
"""

from __future__ import annotations

from .base import CollectorSpec, TableParser


class BiopatternParser(TableParser):
    header_first = ("DISK", "TIME")
    comm_col = None

    def make_event(self, row: dict[str, str], now_ns: int) -> dict:
        return {
            "type": "bio_pattern",
            "ts": now_ns,
            "interval_s": self.interval_s,
            "disk": row["DISK"],
            "random_pct": int(row["%RND"]),
            "sequential_pct": int(row["%SEQ"]),
            "requests": int(row["COUNT"]),
            "kbytes": int(row["KBYTES"]),
        }


SPEC = CollectorSpec(
    name="biopattern",
    tool="biopattern",
    doc="random vs sequential block I/O per disk and interval",
    args=lambda interval: [str(interval)],
    parser=BiopatternParser,
    event_types=("bio_pattern",),
    attach="tracepoint block:block_rq_complete",
)

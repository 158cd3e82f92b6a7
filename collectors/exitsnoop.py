"""exitsnoop: one event per process exit, with age and exit status.

Attaches to the sched:sched_process_exit tracepoint.  Run with no options
(process exits only, not every thread).  The status column reads `0`,
`code N`, `signal N (NAME)` or `signal N (NAME), core dumped`.
"""

from __future__ import annotations

import re

from .base import CollectorSpec, Parser

# printf("%-16s %-7d %-7d %-7d %-7.2f ", comm, pid, ppid, tid, age) then the status.
ROW_RE = re.compile(
    r"^(?P<comm>.{16}) (?P<pid>\d+)\s+(?P<ppid>\d+)\s+(?P<tid>\d+)\s+(?P<age>\d+(?:\.\d+)?)\s+(?P<status>.+?)\s*$"
)
STATUS_RE = re.compile(r"^(?:(?P<zero>0)|code (?P<code>\d+)|signal (?P<sig>\d+)(?: \([^)]*\))?(?P<core>, core dumped)?)$")


class ExitsnoopParser(Parser):
    def __init__(self, interval_s: int = 1) -> None:
        super().__init__(interval_s)
        self.seen_header = False

    def feed(self, line: str, now_ns: int) -> list[dict]:
        if not self.seen_header:
            if line.startswith("PCOMM"):
                self.seen_header = True
            elif line.strip():
                self.skipped += 1
            return []
        if not line.strip():
            return []
        m = ROW_RE.match(line)
        s = STATUS_RE.match(m["status"]) if m else None
        if not m or not s:
            self.skipped += 1
            self.warn(f"unparsable line: {line.strip()[:160]!r}")
            return []
        code = 0 if s["zero"] else (int(s["code"]) if s["code"] else None)
        return [{
            "type": "process_exit",
            "ts": now_ns,
            "comm": m["comm"].rstrip(),
            "pid": int(m["pid"]),
            "ppid": int(m["ppid"]),
            "tid": int(m["tid"]),
            "age_s": float(m["age"]),
            "exit_code": code,
            "signal": int(s["sig"]) if s["sig"] else None,
            "core_dumped": int(bool(s["core"])),
        }]


SPEC = CollectorSpec(
    name="exitsnoop",
    tool="exitsnoop",
    doc="every process exit with its age and exit code or signal",
    args=lambda interval: [],
    parser=ExitsnoopParser,
    event_types=("process_exit",),
    attach="tracepoint sched:sched_process_exit",
)

"""exitsnoop: one event per process exit, with age and exit status.

Attaches to the sched:sched_process_exit tracepoint.  Run with no options
(process exits only, not every thread).  The status column reads `0`,
`code N`, `signal N (NAME)` or `signal N (NAME), core dumped`.
"""

from __future__ import annotations

import re

from .base import CollectorSpec, RegexRowParser

# printf("%-16s %-7d %-7d %-7d %-7.2f ", comm, pid, ppid, tid, age) then the status.
ROW_RE = re.compile(
    r"^(?P<comm>.{16}) (?P<pid>\d+)\s+(?P<ppid>\d+)\s+(?P<tid>\d+)\s+(?P<age>\d+(?:\.\d+)?)\s+(?P<status>.+?)\s*$"
)
STATUS_RE = re.compile(r"^(?:(?P<zero>0)|code (?P<code>\d+)|signal (?P<sig>\d+)(?: \([^)]*\))?(?P<core>, core dumped)?)$")


class ExitsnoopParser(RegexRowParser):
    row_re = ROW_RE

    def make_event(self, m: re.Match[str], now_ns: int) -> dict | None:
        s = STATUS_RE.match(m["status"])
        if not s:
            return None
        code = 0 if s["zero"] else (int(s["code"]) if s["code"] else None)
        return {
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
        }


SPEC = CollectorSpec(
    name="exitsnoop",
    tool="exitsnoop",
    doc="every process exit with its age and exit code or signal",
    args=lambda interval: [],
    parser=ExitsnoopParser,
    event_types=("process_exit",),
    attach="tracepoint sched:sched_process_exit",
    perf_poll_ms=100,  # libbpf-tools' PERF_POLL_TIMEOUT_MS: only there to look at its exit flag
)

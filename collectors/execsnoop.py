"""execsnoop: one event per exec() (process spawn rate, what is being run).

Attaches to the syscalls:sys_enter_execve / sys_exit_execve tracepoints.
Run as `execsnoop -x -q`: failed exec()s too (ret < 0 is -errno), each
argument in double quotes so arguments with spaces stay readable.
"""

from __future__ import annotations

import re

from .base import CollectorSpec, Parser, clip

# printf("%-16s %-6d %-6d %3d ", comm, pid, ppid, ret) then the arguments.
ROW_RE = re.compile(r"^(?P<comm>.{16}) (?P<pid>\d+)\s+(?P<ppid>\d+)\s+(?P<ret>-?\d+) ?(?P<args>.*)$")
ARGS_MAX = 2048


class ExecsnoopParser(Parser):
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
        if not m:
            self.skipped += 1
            self.warn(f"unparsable line: {line.strip()[:160]!r}")
            return []
        return [{
            "type": "exec",
            "ts": now_ns,
            "comm": m["comm"].rstrip(),
            "pid": int(m["pid"]),
            "ppid": int(m["ppid"]),
            "ret": int(m["ret"]),
            "args": clip(m["args"].rstrip(), ARGS_MAX),
        }]


SPEC = CollectorSpec(
    name="execsnoop",
    tool="execsnoop",
    doc="every exec() with its arguments and result",
    args=lambda interval: ["-x", "-q"],
    parser=ExecsnoopParser,
    event_types=("exec",),
    attach="tracepoints syscalls:sys_enter_execve, syscalls:sys_exit_execve",
)

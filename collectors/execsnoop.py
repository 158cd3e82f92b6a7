"""execsnoop: one event per exec() (process spawn rate, what is being run).

Attaches to the syscalls:sys_enter_execve / sys_exit_execve tracepoints.
Run as `execsnoop -x -q`: failed exec()s too (ret < 0 is -errno), each
argument in double quotes so arguments with spaces stay readable.
"""

from __future__ import annotations

import re

from .base import CollectorSpec, RegexRowParser, clip

# printf("%-16s %-6d %-6d %3d ", comm, pid, ppid, ret) then the arguments.
ROW_RE = re.compile(r"^(?P<comm>.{16}) (?P<pid>\d+)\s+(?P<ppid>\d+)\s+(?P<ret>-?\d+) ?(?P<args>.*)$")
ARGS_MAX = 2048


class ExecsnoopParser(RegexRowParser):
    row_re = ROW_RE

    def make_event(self, m: re.Match[str], now_ns: int) -> dict:
        return {
            "type": "exec",
            "ts": now_ns,
            "comm": m["comm"].rstrip(),
            "pid": int(m["pid"]),
            "ppid": int(m["ppid"]),
            "ret": int(m["ret"]),
            "args": clip(m["args"].rstrip(), ARGS_MAX),
        }


SPEC = CollectorSpec(
    name="execsnoop",
    tool="execsnoop",
    doc="every exec() with its arguments and result",
    args=lambda interval: ["-x", "-q"],
    parser=ExecsnoopParser,
    event_types=("exec",),
    attach="tracepoints syscalls:sys_enter_execve, syscalls:sys_exit_execve",
)

"""Scheduling thrash: a context-switch storm from stress-ng --switch (pipe
ping-pong between task pairs), at a bounded switch frequency so the storm is
clearly above 50k switches/s without burning every cycle.

    python -m kernelsight.scenarios.ctxswitch --seconds 40
"""

from __future__ import annotations

import shutil
import sys

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, log, onset, parser, run_tool


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    # One pair, as perf bench sched pipe: two pairs fill both CPUs of this VM, and a ping-pong in
    # another session that fills every CPU leaves the pipeline's processes seconds on the run
    # queue (ks-scraper waited 10.6 s, /proc/PID/schedstat; a plain sleeper was not delayed), which
    # measures the scheduler between sessions, not the switch storm (see docs/scenarios.md).
    p.add_argument("--workers", type=int, default=1, help="stress-ng --switch workers (ping-pong pairs)")
    p.add_argument("--freq", type=int, default=150_000, help="context switches per second per worker (target)")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 1 <= a.workers <= 8 or not 1000 <= a.freq <= 2_000_000:
        p.error("--workers must be 1..8 and --freq 1000..2000000")
    if shutil.which("stress-ng") is None:
        log("ctxswitch", "stress-ng is not installed (apt-get install stress-ng)")
        return 2
    die_with_parent()
    stop = Stop(a.seconds)
    log("ctxswitch", f"{a.workers} switch workers at ~{a.freq}/s each for {a.seconds:.0f} s")
    onset(f"stress-ng --switch {a.workers}")
    run_tool(["stress-ng", "--switch", str(a.workers), "--switch-freq", str(a.freq), "--switch-method", "pipe",
              "--timeout", f"{int(a.seconds)}s", "--quiet"], stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

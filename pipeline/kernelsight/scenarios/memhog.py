"""Hold memory so that a given share of RAM stays available, for a bounded time.

stress-ng fills anonymous memory at ~0.6 GB/s on this VM, so pushing 24 GB to
under 10 % available takes most of a minute; touching one byte per 2 MiB huge
page from two workers gets there several times faster.  Every worker gives its
memory back when the hold ends, on SIGTERM/SIGINT, or if its parent dies.

    python -m kernelsight.scenarios.memhog --leave-pct 7 --hold 30
"""

from __future__ import annotations

import argparse
import mmap
import os
import signal
import sys
import time

from ..procutil import die_with_parent
from ._common import meminfo_kb

HUGE = 2 << 20
CHUNK = 256 << 20


def worker(nbytes: int, hold_s: float, deadline: float) -> None:
    die_with_parent(signal.SIGTERM)  # never outlive the parent
    maps = []
    done = 0
    while done < nbytes and time.monotonic() < deadline:
        size = min(CHUNK, nbytes - done)
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)
        mv = memoryview(m)
        for off in range(0, size, 4096 if size < HUGE else HUGE):
            mv[off] = 1
        mv.release()
        maps.append(m)
        done += size
    end = time.monotonic() + hold_s
    while time.monotonic() < min(end, deadline):
        time.sleep(0.2)
    for m in maps:
        m.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--leave-pct", type=float, default=7.0, help="share of MemTotal to leave available")
    p.add_argument("--hold", type=float, default=30.0, help="seconds to hold once allocated")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=120.0, help="hard stop, whatever happens")
    a = p.parse_args(argv)
    if not 1 <= a.leave_pct <= 90 or a.hold <= 0 or a.workers < 1:
        p.error("--leave-pct must be 1..90, --hold > 0, --workers >= 1")
    total, avail = meminfo_kb("MemTotal"), meminfo_kb("MemAvailable")
    grab = (avail - total * a.leave_pct / 100) * 1024
    if grab <= 0:
        print(f"memhog: already under {a.leave_pct}% available; nothing to do", file=sys.stderr)
        return 0
    deadline = time.monotonic() + a.max_seconds
    pids = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:
            try:
                worker(int(grab // a.workers), a.hold, deadline)
            finally:
                os._exit(0)
        pids.append(pid)

    def stop(*_):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"memhog: holding {grab / 2**30:.1f} GiB in {a.workers} workers, leaving ~{a.leave_pct}% available "
          f"for {a.hold:.0f} s", file=sys.stderr)
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

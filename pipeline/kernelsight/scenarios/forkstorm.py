"""Process explosion: a fork/exec storm, short-lived /bin/true children
spawned at a bounded rate from a few spawner processes.  Each child exits at
once; the number alive at any time is capped.  Bounded by --seconds.

    python -m kernelsight.scenarios.forkstorm --seconds 30 --rate 600
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, log, onset, parser

MAX_ALIVE = 64


def spawner(rate: float, stop: Stop, prog: str) -> int:
    alive = 0
    n = 0
    t0 = time.monotonic()
    while not stop.now():
        if alive >= MAX_ALIVE:
            os.wait()
            alive -= 1
        os.posix_spawn(prog, [prog], {})
        alive += 1
        n += 1
        while alive:  # reap whatever has finished, without blocking
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            alive -= 1
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    while alive:
        os.wait()
        alive -= 1
    return n


def main(argv=None) -> int:
    p = parser(__doc__, 30.0)
    p.add_argument("--rate", type=float, default=600.0, help="processes spawned per second, all spawners")
    p.add_argument("--spawners", type=int, default=2)
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 1 <= a.rate <= 5000 or not 1 <= a.spawners <= 8:
        p.error("--rate must be 1..5000 and --spawners 1..8")
    prog = shutil.which("true") or "/bin/true"
    die_with_parent()
    stop = Stop(a.seconds)
    log("forkstorm", f"{a.spawners} spawners exec'ing {prog} at {a.rate:.0f}/s for {a.seconds:.0f} s")
    onset(f"fork/exec storm of {prog}")
    kids = []
    for _ in range(a.spawners):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                die_with_parent()
                spawner(a.rate / a.spawners, stop, prog)
            except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
                code = 1
            finally:
                os._exit(code)
        kids.append(pid)

    def forward():
        for pid in kids:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass

    while kids:
        if stop.now():
            forward()
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            kids.remove(pid)
        else:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""File-system issue: a storm of failing openat() calls (ENOENT on paths in a
directory that does not exist, and EACCES-free: nothing is created), at a
bounded rate.  Bounded by --seconds.

    python -m kernelsight.scenarios.fsfail --seconds 30 --rate 3000
"""

from __future__ import annotations

import errno
import os
import sys
import time

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, log, onset, parser

BATCH = 50


def main(argv=None) -> int:
    p = parser(__doc__, 30.0)
    p.add_argument("--rate", type=float, default=3000.0, help="failing openat() calls per second")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 10 <= a.rate <= 50000:
        p.error("--rate must be 10..50000")
    die_with_parent()
    stop = Stop(a.seconds)
    missing = f"/nonexistent-ks-scenario-{os.getpid()}"
    assert not os.path.exists(missing)
    log("fsfail", f"failing openat() at {a.rate:.0f}/s under {missing} for {a.seconds:.0f} s")
    onset(f"openat ENOENT storm under {missing}")
    t0 = time.monotonic()
    n = fails = 0
    while not stop.now():
        for i in range(BATCH):
            try:
                fd = os.open(f"{missing}/config-{(n + i) % 1000}.conf", os.O_RDONLY)
                os.close(fd)  # pragma: no cover - the path cannot exist
            except OSError as e:
                if e.errno == errno.ENOENT:
                    fails += 1
        n += BATCH
        delay = t0 + n / a.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    log("fsfail", f"{n} openat() calls, {fails} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

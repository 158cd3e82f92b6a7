"""CPU oversubscription: stress-ng CPU workers, 3 per core by default, so
load and runnable tasks go over 2x the cores.  Bounded by --seconds.

    python -m kernelsight.scenarios.cpuhog --seconds 40
"""

from __future__ import annotations

import os
import shutil
import sys

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, log, onset, parser, run_tool


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    p.add_argument("--per-core", type=int, default=3, help="CPU workers per core (3: load ~3x cores)")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 1 <= a.per_core <= 8:
        p.error("--per-core must be 1..8")
    if shutil.which("stress-ng") is None:
        log("cpuhog", "stress-ng is not installed (apt-get install stress-ng)")
        return 2
    die_with_parent()
    stop = Stop(a.seconds)
    n = a.per_core * (os.cpu_count() or 1)
    log("cpuhog", f"{n} CPU workers for {a.seconds:.0f} s")
    onset(f"stress-ng --cpu {n}")
    run_tool(["stress-ng", "--cpu", str(n), "--cpu-method", "int64", "--timeout", f"{int(a.seconds)}s",
              "--quiet"], stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

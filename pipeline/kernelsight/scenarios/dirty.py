"""Write-buffer saturation: big buffered writes without fsync to a file on the
real disk (not tmpfs), so dirty page cache climbs faster than writeback drains
it.  Writes up to --max-mb, then keeps re-dirtying the same file (no more disk
space is used); the file is deleted at the end, which drops what is still
dirty.  Bounded by --seconds and --max-mb.

    python -m kernelsight.scenarios.dirty --seconds 40 --rate-mb 400 --max-mb 3072
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, disk_dir, log, onset, parser

CHUNK = 16 << 20


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    p.add_argument("--rate-mb", type=float, default=400.0, help="MiB written per second")
    p.add_argument("--max-mb", type=int, default=3072, help="file size cap; after it the file is rewritten")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 16 <= a.rate_mb <= 4096 or not 64 <= a.max_mb <= 16384:
        p.error("--rate-mb must be 16..4096 and --max-mb 64..16384")
    free = shutil.disk_usage(os.environ.get("KS_SCENARIO_DIR") or "/var/tmp").free
    if free < 2 * a.max_mb * 2**20:
        log("dirty", f"only {free >> 20} MiB free on disk; need twice --max-mb")
        return 2
    die_with_parent()
    stop = Stop(a.seconds)
    d = disk_dir("ks-dirty-")
    path = os.path.join(d, "data")
    buf = os.urandom(1 << 20) * (CHUNK >> 20)
    written = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        log("dirty", f"buffered writes at {a.rate_mb:.0f} MiB/s into {path} (cap {a.max_mb} MiB), no fsync, "
                     f"for {a.seconds:.0f} s")
        onset(f"buffered writes {a.rate_mb:.0f} MiB/s")
        t0 = time.monotonic()
        while not stop.now():
            off = written % (a.max_mb << 20)
            os.pwrite(fd, buf, off)
            written += CHUNK
            delay = t0 + written / (a.rate_mb * 2**20) - time.monotonic()
            if delay > 0:
                stop.sleep(delay)
        os.close(fd)
    finally:
        shutil.rmtree(d, ignore_errors=True)  # unlink: dirty pages of the file are dropped, not written
    log("dirty", f"{written >> 20} MiB written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""I/O saturation / tail latency with fio against a file on the real disk (not
tmpfs), written first (real blocks, not a sparse hole) and removed at the end.
Two modes:
  - fsync-heavy writes (--fsync N): buffered random writes from several jobs,
    each job calling fsync every N writes, so writeback, journal commits and
    cache flushes queue up behind each other;
  - random O_DIRECT reads (or writes) at a deep queue (--fsync 0).
On this VM's virtio disk O_DIRECT reads complete in ~2 ms per 4 MiB request
whatever the queue depth (the guest keeps few large requests in flight), so the
suite uses the fsync-heavy mode.

    python -m kernelsight.scenarios.iosat --seconds 40 --fsync 8 --jobs 4 --rw randwrite --bs 1M
    python -m kernelsight.scenarios.iosat --seconds 40 --rw randread --bs 4M --iodepth 16
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, disk_dir, log, onset, parser, run_tool


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    p.add_argument("--size-mb", type=int, default=1024, help="size of the file the I/O goes to")
    p.add_argument("--bs", default="4M", help="fio block size")
    p.add_argument("--iodepth", type=int, default=16, help="O_DIRECT mode: requests in flight")
    p.add_argument("--rw", default="randread", choices=["randread", "randwrite", "randrw", "write"],
                   help="fio pattern; writes rewrite the same file, no disk space grows")
    p.add_argument("--fsync", type=int, default=0,
                   help="fsync-heavy mode: buffered writes with an fsync every N writes (0: O_DIRECT, no fsync)")
    p.add_argument("--jobs", type=int, default=1, help="fio jobs (processes), all on the same file")
    p.add_argument("--fresh", action="store_true",
                   help="do not lay the file out first: writes land on never-written blocks (the host must allocate)")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if a.fresh and a.rw not in ("randwrite", "write"):
        p.error("--fresh only makes sense with writes")
    if not 64 <= a.size_mb <= 8192 or not 1 <= a.iodepth <= 256 or not 1 <= a.jobs <= 8 or a.fsync < 0:
        p.error("--size-mb must be 64..8192, --iodepth 1..256, --jobs 1..8, --fsync >= 0")
    if shutil.which("fio") is None:
        log("iosat", "fio is not installed (apt-get install fio)")
        return 2
    die_with_parent()
    stop = Stop(a.seconds)
    d = disk_dir("ks-iosat-")
    path = os.path.join(d, "data")
    try:
        # Lay the file out with direct writes: real blocks on the device, nothing left dirty.
        if not a.fresh:
            subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={a.size_mb // 4}", "oflag=direct",
                            "status=none"], check=True, timeout=120)
        if stop.now():
            return 0
        if a.fsync:
            how = ["--direct=0", "--ioengine=psync", f"--fsync={a.fsync}"]
            what = f"{a.rw} {a.bs} buffered, fsync every {a.fsync} writes, {a.jobs} job(s)"
        else:
            how = ["--direct=1", "--ioengine=libaio", f"--iodepth={a.iodepth}"]
            what = f"{a.rw} {a.bs} O_DIRECT, iodepth {a.iodepth}, {a.jobs} job(s)"
        log("iosat", f"{what} over {a.size_mb} MiB for {stop.left():.0f} s")
        onset(f"fio {what}")
        run_tool(["fio", "--name=ks-iosat", f"--filename={path}", f"--size={a.size_mb}M", f"--rw={a.rw}",
                  f"--bs={a.bs}", *how, f"--numjobs={a.jobs}", "--time_based",
                  f"--runtime={max(1, int(stop.left()))}", "--output=/dev/null"], stop)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""I/O saturation / tail latency: fio random O_DIRECT reads of large blocks at
a deep queue against a file on the real disk (not tmpfs), so the device queue
holds far more than it completes and every request waits.  The file is written
first (real blocks, not a sparse hole) and removed at the end.

    python -m kernelsight.scenarios.iosat --seconds 40
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ._common import Stop, check_seconds, die_with_parent, disk_dir, log, onset, parser, run_tool


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    p.add_argument("--size-mb", type=int, default=1024, help="size of the file read at random")
    p.add_argument("--bs", default="4M", help="fio block size (4M: one request per read at max_sectors_kb 4096)")
    p.add_argument("--iodepth", type=int, default=16)
    p.add_argument("--rw", default="randread", choices=["randread", "randwrite", "randrw"],
                   help="fio pattern; writes are O_DIRECT too, rewriting the same file")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 64 <= a.size_mb <= 8192 or not 1 <= a.iodepth <= 256:
        p.error("--size-mb must be 64..8192 and --iodepth 1..256")
    if shutil.which("fio") is None:
        log("iosat", "fio is not installed (apt-get install fio)")
        return 2
    die_with_parent()
    stop = Stop(a.seconds)
    d = disk_dir("ks-iosat-")
    path = os.path.join(d, "data")
    try:
        # Lay the file out with direct writes: real blocks on the device, nothing left dirty.
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={a.size_mb // 4}", "oflag=direct",
                        "status=none"], check=True, timeout=120)
        if stop.now():
            return 0
        log("iosat", f"{a.rw} {a.bs} O_DIRECT, iodepth {a.iodepth}, over {a.size_mb} MiB for "
                     f"{stop.left():.0f} s")
        onset(f"fio {a.rw} bs={a.bs} iodepth={a.iodepth}")
        run_tool(["fio", "--name=ks-iosat", f"--filename={path}", f"--size={a.size_mb}M", f"--rw={a.rw}",
                  f"--bs={a.bs}", "--direct=1", "--ioengine=libaio", f"--iodepth={a.iodepth}", "--time_based",
                  f"--runtime={max(1, int(stop.left()))}", "--output=/dev/null"], stop)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Normal load: a real build, `make -j2`-style, bounded in time.  Builds this
project's native C/C++ code (CMake, no eBPF, no Python module) in a scratch
directory on disk, clean build after clean build, until --seconds are up; with
no source tree at hand it generates a small C project and builds that instead.

    python -m kernelsight.scenarios.build --seconds 100 [--src /work/main]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, disk_dir, log, onset, parser, run_tool


def find_src(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / "CMakeLists.txt").exists() and (d / "native").is_dir():
            return d
    return None


def generated_project(d: Path, files: int = 40) -> Path:
    src = d / "gen"
    src.mkdir()
    objs = []
    for i in range(files):
        (src / f"m{i}.c").write_text(
            "".join(f"static int f{i}_{k}(int x) {{ int a[64]; for (int j = 0; j < 64; j++) a[j] = x * j + {k};"
                      f" for (int j = 1; j < 64; j++) a[j] ^= a[j - 1] >> 3;"
                      f" return a[x & 63]; }}\n" for k in range(60))
            + f"int m{i}(int x) {{ return " + " + ".join(f"f{i}_{k}(x)" for k in range(60)) + "; }\n")
        objs.append(f"m{i}.o")
    (src / "Makefile").write_text(f"all: libgen.a\nlibgen.a: {' '.join(objs)}\n\tar rcs $@ $^\n"
                                  "%.o: %.c\n\t$(CC) -O2 -g -c $< -o $@\nclean:\n\trm -f *.o libgen.a\n")
    return src


def main(argv=None) -> int:
    p = parser(__doc__, 100.0)
    p.add_argument("--src", type=Path, default=None, help="source tree with CMakeLists.txt (default: found from cwd)")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    die_with_parent()
    stop = Stop(a.seconds)
    src = a.src or find_src(Path.cwd())
    d = Path(disk_dir("ks-build-"))
    rounds = 0
    try:
        onset("build")
        if src is not None and shutil.which("cmake"):
            log("build", f"building {src} (native code) with -j{a.jobs} for {a.seconds:.0f} s")
            while not stop.now():
                bdir = d / f"b{rounds}"
                sanitize = "ON" if rounds % 2 else "OFF"
                run_tool(["cmake", "-S", str(src), "-B", str(bdir), "-DKS_BUILD_TESTS=ON", "-DKS_BUILD_BPF=OFF",
                          "-DKS_BUILD_PYTHON=OFF", f"-DKS_SANITIZE={sanitize}", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
                         stop)
                run_tool(["cmake", "--build", str(bdir), f"-j{a.jobs}"], stop)
                shutil.rmtree(bdir, ignore_errors=True)
                rounds += 1
        else:
            gen = generated_project(d)
            log("build", f"no source tree found; building a generated C project with -j{a.jobs}")
            while not stop.now():
                run_tool(["make", "-s", "-C", str(gen), f"-j{a.jobs}"], stop)
                subprocess.run(["make", "-s", "-C", str(gen), "clean"], check=False, timeout=60)
                rounds += 1
    finally:
        shutil.rmtree(d, ignore_errors=True)
    log("build", f"{rounds} build round(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

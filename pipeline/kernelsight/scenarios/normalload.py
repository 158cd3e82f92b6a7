"""Normal load, the kind a busy but healthy machine carries, all at once for
--seconds: nothing here is a fault, and nothing of severity high or critical
should be raised for it.

  - a C/C++ build, clean build after clean build (the `build` injector, -j2);
  - a web service under steady moderate load: a keep-alive HTTP/1.1 server on
    127.0.0.1 and ApacheBench (`ab -k`, 2 connections) at ~100 requests/s;
  - compression: xz and gzip of a 48 MiB file, every minute;
  - a SQLite workload (the sqlite3 shell): a transaction of 2,000 inserts,
    an indexed query and a trim of old rows every second;
  - a process that grows to --grow-mb in 64 MiB steps, holds, frees, rests,
    and again.

Each part runs in its own process group and is stopped at the end; a part
whose tool is missing is left out (and said so).

    python -m kernelsight.scenarios.normalload --seconds 840
"""

from __future__ import annotations

import http.server
import mmap
import os
import shutil
import socketserver
import subprocess
import sys
import time

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, disk_dir, log, onset, parser, start_group, stop_groups

STEP = 64 << 20


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a healthy service, no connection churn
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    body = b"ok\n" * 300

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        if self.headers.get("Connection", "").lower() == "keep-alive":
            self.send_header("Connection", "keep-alive")  # ab -k speaks HTTP/1.0: it waits for this
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(port_file: str) -> int:
    die_with_parent()
    srv = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()
    return 0


def grow(grow_mb: int) -> int:
    """Grow in 64 MiB steps (one a second) to grow_mb, hold 20 s, free, rest 20 s; forever (killed by the parent)."""
    die_with_parent()
    while True:
        maps = []
        for _ in range(max(1, (grow_mb << 20) // STEP)):
            m = mmap.mmap(-1, STEP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            mv = memoryview(m)
            for off in range(0, STEP, 4096):
                mv[off] = 1
            mv.release()
            maps.append(m)
            time.sleep(1.0)
        time.sleep(20.0)
        for m in maps:
            m.close()
        time.sleep(20.0)


SQL = ("PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT); "
       "CREATE INDEX IF NOT EXISTS t_k ON t(k); BEGIN; "
       "INSERT INTO t(k, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000) "
       "SELECT abs(random()) % 100000, hex(randomblob(64)) FROM c; "
       "DELETE FROM t WHERE id < (SELECT max(id) - 200000 FROM t); COMMIT; "
       "SELECT count(*), avg(length(v)) FROM t WHERE k BETWEEN 1000 AND 2000;")


def parts(d: str, port: str | None, seconds: float, jobs: int, grow_mb: int) -> dict[str, list[str]]:
    py = sys.executable
    out: dict[str, list[str]] = {
        "build": [py, "-m", "kernelsight.scenarios.build", "--seconds", str(seconds), "--jobs", str(jobs)],
        "memory": [py, "-m", "kernelsight.scenarios.normalload", "--grow", str(grow_mb)],
    }
    if port and shutil.which("ab"):
        out["web"] = ["bash", "-c", f"while :; do ab -k -q -c 2 -n 100 http://127.0.0.1:{port}/ >/dev/null; "
                                    "sleep 1; done"]
    if shutil.which("xz") and shutil.which("gzip"):
        f = os.path.join(d, "corpus")
        out["compression"] = ["bash", "-c",
                              f"{{ for i in $(seq 1 24); do head -c 1M /dev/urandom | base64; "
                              f"seq 1 60000; done; }} > {f}; "
                              f"while :; do xz -T1 -6 -c {f} >/dev/null; gzip -6 -c {f} >/dev/null; sleep 60; done"]
    if shutil.which("sqlite3"):
        db = os.path.join(d, "load.sqlite")
        out["sqlite"] = ["bash", "-c", f"while :; do sqlite3 {db} \"{SQL}\" >/dev/null; sleep 1; done"]
    return out


def main(argv=None) -> int:
    p = parser(__doc__, 840.0)
    p.add_argument("--jobs", type=int, default=2, help="build parallelism")
    p.add_argument("--grow-mb", type=int, default=2048, help="the growing process's peak")
    p.add_argument("--serve", default=None, help=argparse_hidden())
    p.add_argument("--grow", type=int, default=None, help=argparse_hidden())
    a = p.parse_args(argv)
    if a.serve:
        return serve(a.serve)
    if a.grow is not None:
        return grow(a.grow)
    check_seconds(p, a.seconds, limit=3600.0)
    die_with_parent()
    stop = Stop(a.seconds)
    d = disk_dir("ks-normal-")
    procs: dict[str, subprocess.Popen] = {}
    try:
        port_file = os.path.join(d, "port")
        procs["web-server"] = start_group([sys.executable, "-m", "kernelsight.scenarios.normalload", "--serve",
                                           port_file], stdout=None)
        for _ in range(100):
            if os.path.exists(port_file):
                break
            time.sleep(0.1)
        port = None
        if os.path.exists(port_file):
            with open(port_file) as f:
                port = f.read().strip()
        todo = parts(d, port, a.seconds, a.jobs, a.grow_mb)
        missing = {"web", "compression", "sqlite"} - set(todo)
        if missing:
            log("normalload", f"left out (tool missing): {', '.join(sorted(missing))}")
        onset("normal load: " + ", ".join(todo))
        for name, argv_ in todo.items():
            log("normalload", f"{name}: {' '.join(argv_)[:160]}")
            procs[name] = start_group(argv_)
        while not stop.now():
            stop.sleep(1.0)
    finally:
        stop_groups(procs.values(), grace=10.0)
        shutil.rmtree(d, ignore_errors=True)
    log("normalload", "done")
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())

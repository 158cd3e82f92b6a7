"""Connection churn: thousands of short TCP connections on loopback, each
opened and closed at once (no keep-alive), so closed sockets pile up in
TIME_WAIT.  Server and client both live in this process, on 127.0.0.1 only.
Bounded by --seconds and --max-connections.  Note the kernel keeps each
TIME_WAIT socket for a fixed 60 s (TCP_TIMEWAIT_LEN), so the symptom outlives
the churn by about a minute.

    python -m kernelsight.scenarios.churn --seconds 30 --rate 400
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, log, onset, parser

LOOPBACK = "127.0.0.1"


def serve(lsock: socket.socket, stop: Stop, counts: dict) -> None:
    lsock.settimeout(0.2)
    while not stop.now():
        try:
            c, _ = lsock.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        counts["accepted"] += 1
        c.close()


def main(argv=None) -> int:
    p = parser(__doc__, 30.0)
    p.add_argument("--rate", type=float, default=400.0, help="connections per second")
    p.add_argument("--max-connections", type=int, default=12000, help="stop after this many")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 1 <= a.rate <= 5000 or not 1 <= a.max_connections <= 20000:
        p.error("--rate must be 1..5000 and --max-connections 1..20000 (ephemeral ports are finite)")
    die_with_parent()
    stop = Stop(a.seconds)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((LOOPBACK, 0))  # loopback only, an ephemeral port
    lsock.listen(4096)
    addr = lsock.getsockname()
    counts = {"accepted": 0, "made": 0, "failed": 0}
    t = threading.Thread(target=serve, args=(lsock, stop, counts), daemon=True)
    t.start()
    log("churn", f"short connections to {addr[0]}:{addr[1]} at {a.rate:.0f}/s for {a.seconds:.0f} s "
                 f"(at most {a.max_connections})")
    onset(f"connect/close to {addr[0]}:{addr[1]}")
    t0 = time.monotonic()
    while not stop.now() and counts["made"] < a.max_connections:
        due = t0 + counts["made"] / a.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(2.0)
            s.connect(addr)
            counts["made"] += 1
        except OSError:
            counts["failed"] += 1
            counts["made"] += 1  # keep the pacing; failures are counted apart
        finally:
            s.close()
    stop.flag = True
    t.join(timeout=2)
    lsock.close()
    log("churn", f"{counts['made'] - counts['failed']} connections made, {counts['failed']} failed, "
                 f"{counts['accepted']} accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())

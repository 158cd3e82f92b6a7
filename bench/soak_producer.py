"""A synthetic producer for the kill soak: `soak` lines at a steady rate, each
carrying (pid, seq), through the real LineWriter into the FIFO.

    python bench/soak_producer.py FIFO RATE_PER_S

Runs until SIGTERM, then writes its last producer_stats line and prints its
final counters as one JSON object on stdout.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import orjson

from kernelsight.fifo import LineWriter
from kernelsight.procutil import die_with_parent

TICK_S = 0.01
STATS_EVERY_S = 1.0


def main(argv: list[str]) -> int:
    fifo, rate_per_s = argv[0], float(argv[1])
    die_with_parent(signal.SIGTERM)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    w = LineWriter(fifo, producer="ks-soak", block_ms=0)
    pid = os.getpid()
    seq = stats_attempted = 0
    t0 = next_stats = time.monotonic()
    # Lines of this form differ only in their numbers: build them by hand (no dict per line).
    head = b'{"type":"soak","ts":'
    while not stop:
        now = time.monotonic()
        due = int((now - t0) * rate_per_s)
        ts = time.time_ns()
        while seq < due:
            w.write_line(head + b"%d,\"producer_pid\":%d,\"seq\":%d}\n" % (ts, pid, seq))
            seq += 1
        if now >= next_stats:
            stats_attempted += 1
            w.emit_stats()
            next_stats = now + STATS_EVERY_S
        time.sleep(TICK_S)
    stats_attempted += 1
    w.emit_stats()
    w.close()
    # Every line attempted was written or dropped with a cause; what was written
    # must be in the database (soak rows + producer_stats rows) or rejected.
    print(orjson.dumps({"pid": pid, "soak_lines_attempted": seq, "stats_lines_attempted": stats_attempted,
                        **vars(w.counters)}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

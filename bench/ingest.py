"""ks-ingest throughput through a real FIFO, next to the raw ceiling in the same run.

ceiling: orjson.loads + executemany into the same tables with the same batch
size, in one process, straight from memory: no FIFO, no validation, no counting.
pipeline: a separate writer process writes one line per write() into a real
FIFO; the real `ks-ingest` daemon reads, validates, routes, counts and stores.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from kernelsight import db
from kernelsight.schema import load_schema

N_LINES = int(os.environ.get("KS_BENCH_LINES", "1000000"))
BATCH = 2000
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
with open(sys.argv[2], "rb") as f:
    for line in f:
        os.write(fd, line)
"""


def _value(ftype: str, name: str, rnd: random.Random):
    if ftype == "int":
        return rnd.randrange(0, 10**9 if name.endswith(("_total", "_kb", "_ns")) else 10**4)
    if ftype == "float":
        return round(rnd.uniform(0, 10**4), 3)
    if ftype == "str":
        return rnd.choice(["vda", "eth0", "lo", "cpu", "memory", "io", "nginx", "postgres"])
    return [rnd.randrange(0, 10**5) for _ in range(24)]


def realistic_lines(n: int, seed: int = 1) -> list[bytes]:
    """Lines of every event type, values of realistic magnitude, types cycled."""
    schema = load_schema()
    rnd = random.Random(seed)
    specs = list(schema.events.values())
    ts = time.time_ns()
    templates = []
    for spec in specs:
        for _ in range(16):
            ev = {"type": spec.type, "ts": ts}
            ev.update({f.name: _value(f.type, f.name, rnd) for f in spec.fields})
            templates.append(ev)
    out = []
    for i in range(n):
        ev = templates[i % len(templates)]
        ev["ts"] = ts + i * 1000
        out.append(orjson.dumps(ev) + b"\n")
    return out


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def ceiling(lines: list[bytes], path: Path) -> tuple[float, float]:
    conn = db.connect(path)
    schema = load_schema()
    sql = {t: s.insert_sql() for t, s in schema.events.items()}
    batches: dict[str, list] = {t: [] for t in schema.events}
    # Arrays cannot be bound: serialise them, as any store would have to.
    arrays = {t: [i for i, f in enumerate(s.fields, 1) if f.type == "int_array"] for t, s in schema.events.items()}
    loads, dumps = orjson.loads, orjson.dumps
    t0 = time.perf_counter()
    c0 = time.process_time()
    for line in lines:
        vals = list(loads(line).values())
        t = vals[0]
        row = vals[1:]
        for i in arrays[t]:
            row[i] = dumps(row[i]).decode()
        b = batches[t]
        b.append(row)
        if len(b) >= BATCH:
            conn.execute("BEGIN")
            conn.executemany(sql[t], b)
            conn.execute("COMMIT")
            b.clear()
    conn.execute("BEGIN")
    for t, b in batches.items():
        if b:
            conn.executemany(sql[t], b)
    conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    conn.close()
    return len(lines) / dt, len(lines) / cpu


def pipeline(lines: list[bytes], work: Path) -> tuple[float, float, int]:
    data = work / "data"
    fifo = work / "fifo"
    cap = work / "capture.jsonl"
    cap.write_bytes(b"".join(lines))
    env = {**os.environ, "KS_DATA_DIR": str(data)}
    ing = subprocess.Popen([sys.executable, "-m", "kernelsight.ingest", "--fifo", str(fifo), "--data-dir", str(data),
                            "--batch-size", str(BATCH), "--stats-interval", "3600"],
                           env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (data / db.DB_NAME).exists() or not fifo.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("ks-ingest did not start")
        time.sleep(0.05)
    time.sleep(0.3)
    cpu0 = _cpu_s(ing.pid)  # start-up (imports, schema) is not ingestion
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", WRITER, str(fifo), str(cap)], check=True)
    ing.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(ing.pid, 0)
    ing.returncode = os.waitstatus_to_exitcode(status)
    dt = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    conn = sqlite3.connect(data / db.DB_NAME)
    stored = conn.execute("SELECT SUM(stored) FROM pipeline_stats WHERE id IN "
                          "(SELECT MAX(id) FROM pipeline_stats GROUP BY event_type)").fetchone()[0]
    conn.close()
    return len(lines) / dt, len(lines) / cpu, stored


def run() -> list[dict]:
    lines = realistic_lines(N_LINES)
    mean_len = sum(map(len, lines)) / len(lines)
    with tempfile.TemporaryDirectory(prefix="ks-bench-") as d:
        work = Path(d)
        ceil, ceil_cpu = ceiling(lines, work / "ceiling.db")
        rate, rate_cpu, stored = pipeline(lines, work)
    if stored != len(lines):
        raise RuntimeError(f"pipeline stored {stored} of {len(lines)} lines")
    note = f"{len(lines):,} lines, mean {mean_len:.0f} B, batch {BATCH}, every event type"
    return [
        {"name": "ingest_raw_ceiling_events_per_s", "value": ceil, "unit": "events/s", "ratio": None,
         "notes": "orjson.loads + executemany, no FIFO/validation; " + note},
        {"name": "ingest_fifo_to_sqlite_events_per_s", "value": rate, "unit": "events/s", "ratio": rate / ceil,
         "notes": "ks-ingest through a real FIFO, wall clock, ratio vs the ceiling (target >= 0.8); " + note},
        {"name": "ingest_events_per_cpu_s", "value": rate_cpu, "unit": "events/cpu-s", "ratio": rate_cpu / ceil_cpu,
         "notes": "ks-ingest events per CPU-second of its own process vs the ceiling's, robust to a busy machine; "
                  + note},
    ]

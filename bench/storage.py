"""Storage: bytes per day at full rate, thirty days simulated under housekeeping, prune hold times.

Data: the project's recorded minute (tests/fixtures/features/capture.jsonl.gz,
11,361 lines, every line validated by the schema) replayed minute after minute
with shifted timestamps by direct inserts (the rows ks-ingest would store);
cumulative *_total counters advance by their per-minute increase so rates stay
meaningful.  Feature vectors (the agent's, one per 5 s) are the engine's own
over the capture, replayed the same way; OOM forecasts one per 5 s.

1. Full rate, FULL_MIN minutes: raw bytes per day, rollup bytes per day (dbstat).
   db_bytes_per_day_default = the growth per day once raw rows have reached
   their 48 h horizon, at the defaults: rollups + thinned feature vectors and
   forecasts (per day, measured from their tables' bytes).
2. Thirty days under housekeeping with an accelerated clock (run every
   simulated HK_EVERY_MIN minutes, as ks-agent does every minute): raw rows are
   decimated (every DECIMATE-th second of each minute kept, so a month fits in a
   few minutes of inserts; rollups keep one row per key per minute), features
   and forecasts at full rate; default config.  Reports the DB size after 30
   days, the largest size seen against the cap, and checks that day 1 is still
   answered from rollups (ks-features over a day-1 window, SQL over
   memory_metrics_all).
3. A large prune: the longest write transaction of the batched deletes
   (target 100 ms), while a second connection inserts like ks-ingest.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from kernelsight import db
from kernelsight.config import Config, StorageConfig
from kernelsight.features.engine import compute_range
from kernelsight.features.store import write_matrix
from kernelsight.schema import RejectedLine, load_schema
from kernelsight.storage.housekeeping import Housekeeper, table_bytes
from kernelsight.storage.plan import plans
from kernelsight.storage.retention import file_bytes, used_bytes

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "fixtures" / "features" / "capture.jsonl.gz"
NS = 1_000_000_000
MIN = 60 * NS
DAY_MIN = 1440
FULL_MIN = int(os.environ.get("KS_BENCH_STORAGE_FULL_MIN", "60"))
DAYS = int(os.environ.get("KS_BENCH_STORAGE_DAYS", "30"))
DECIMATE = int(os.environ.get("KS_BENCH_STORAGE_DECIMATE", "10"))
HK_EVERY_MIN = int(os.environ.get("KS_BENCH_STORAGE_HK_MIN", "240"))
PRUNE_MIN = int(os.environ.get("KS_BENCH_STORAGE_PRUNE_MIN", "120"))
START = 1_800_000_000 * NS // MIN * MIN


class Capture:
    """The recorded minute as insertable rows: per table (insert sql, ts offsets, rows, counter increments)."""

    def __init__(self, decimate: int = 1):
        schema = load_schema()
        self.schema = schema
        by: dict[str, list] = {}
        t0 = None
        lines = gzip.open(CAPTURE).read().splitlines()
        self.skipped = 0
        for line in lines:
            try:
                t, row = schema.validate_line(line)
            except RejectedLine:
                # a field added to the schema after the recording: fill it as a producer would (0 or null)
                obj = orjson.loads(line)
                spec = schema.events.get(obj.get("type"))
                if spec is None:
                    self.skipped += 1
                    continue
                for f in spec.fields:
                    obj.setdefault(f.name, 0 if f.type == "int" else None)
                try:
                    t, row = schema.validate(obj)
                except RejectedLine:
                    self.skipped += 1
                    continue
            t0 = row[0] if t0 is None else min(t0, row[0])
            by.setdefault(t, []).append(row)
        self.tables = {}
        for t, rows in by.items():
            spec = schema.events[t]
            rows = [r for r in rows if r[0] - t0 < MIN and ((r[0] - t0) // NS) % decimate == 0]
            if not rows:
                continue
            off = np.array([r[0] - t0 for r in rows], dtype=np.int64)
            totals = [i for i, c in enumerate(spec.columns) if c.endswith("_total") and i > 0]
            inc = {}
            for i in totals:  # the counter's increase over the capture, per minute
                vals = [r[i] for r in rows if r[i] is not None]
                inc[i] = (max(vals) - min(vals)) if vals else 0
            self.tables[spec.table] = (spec.insert_sql(), off, rows, inc)
        self.rows_per_min = sum(len(v[2]) for v in self.tables.values())

    def minute_rows(self, table: str, minute: int, start_ns: int):
        sql, off, rows, inc = self.tables[table]
        base = start_ns + minute * MIN
        out = []
        for o, r in zip(off.tolist(), rows):
            r = list(r)
            r[0] = base + o
            for i, d in inc.items():
                if r[i] is not None:
                    r[i] += d * minute
            out.append(r)
        return out

    def insert(self, conn: sqlite3.Connection, start_ns: int, m0: int, m1: int) -> int:
        """Minutes [m0, m1) of replay into conn, one transaction."""
        n = 0
        conn.execute("BEGIN")
        for table, (sql, _, _, _) in self.tables.items():
            for m in range(m0, m1):
                rows = self.minute_rows(table, m, start_ns)
                conn.executemany(sql, rows)
                n += len(rows)
        conn.execute("COMMIT")
        return n


def feature_template(conn: sqlite3.Connection, start_ns: int) -> list[tuple]:
    """The agent's 12 vectors of one minute (window 15 s, step 5 s) over the replayed capture."""
    ends = start_ns + MIN + np.arange(1, 13) * 5 * NS
    m = compute_range(conn, ends, 15.0)
    write_matrix(conn, m)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(features)")]
    rows = conn.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM features ORDER BY ts").fetchall()
    conn.execute("DELETE FROM features")
    return cols, [(int(r[0] - ends[0]),) + tuple(r[1:]) for r in rows]


def insert_vectors(conn, cols, tmpl, start_ns: int, m0: int, m1: int) -> None:
    sql = f"INSERT OR REPLACE INTO features ({', '.join(chr(34) + c + chr(34) for c in cols)}) VALUES ({','.join('?' * len(cols))})"
    fc = "INSERT INTO oom_forecasts (ts, risk, headroom_pct, trend_kb_per_s, seconds_to_exhaustion, confidence, reason) " \
         "VALUES (?, 'low', 97.5, -1.25, NULL, 0.8, 'memory available is stable')"
    conn.execute("BEGIN")
    for m in range(m0, m1):
        base = start_ns + m * MIN + 5 * NS
        conn.executemany(sql, [(base + r[0],) + r[1:] for r in tmpl])
        conn.executemany(fc, [(base + k * 5 * NS,) for k in range(12)])
    conn.execute("COMMIT")


def _fresh(d: Path) -> sqlite3.Connection:
    conn = db.connect(db.db_path(d))
    from kernelsight.agent.store import ensure_tables

    ensure_tables(conn)
    return conn


def full_rate(tmp: Path) -> dict:
    """FULL_MIN minutes at full rate: bytes per day of raw rows, of rollups, of thinned vectors."""
    cap = Capture()
    conn = _fresh(tmp)
    cap.insert(conn, START, 0, 2)
    cols, tmpl = feature_template(conn, START)
    cap.insert(conn, START, 2, FULL_MIN)
    insert_vectors(conn, cols, tmpl, START, 0, FULL_MIN)
    hk = Housekeeper(conn, tmp, Config())
    t = time.perf_counter()
    hk.run(START + FULL_MIN * MIN + 31 * NS, rotate=False)
    rollup_s = time.perf_counter() - t
    sizes = table_bytes(conn)
    ps = plans()
    raw = sum(sizes.get(p.table, 0) for p in ps.values()) + sum(sizes.get(t, 0) for t in ("producer_stats", "pipeline_stats"))
    roll = sum(sizes.get(p.rollup, 0) for p in ps.values())
    feats, fc = sizes.get("features", 0), sizes.get("oom_forecasts", 0)
    biggest = sorted(((v, k) for k, v in sizes.items()), reverse=True)[:4]
    conn.close()
    per_day = DAY_MIN / FULL_MIN
    return {"raw_bytes_per_day": raw * per_day, "rollup_bytes_per_day": roll * per_day,
            "features_bytes_per_day": feats * per_day, "forecasts_bytes_per_day": fc * per_day,
            "rows_per_min": cap.rows_per_min, "rollup_s_per_hour": rollup_s * 60 / FULL_MIN,
            "biggest": [(k, round(v * per_day / 2**20, 1)) for v, k in biggest]}


def thirty_days(tmp: Path) -> dict:
    cfg = Config()
    cap = Capture(DECIMATE)
    conn = _fresh(tmp)
    cap.insert(conn, START, 0, 2)
    cols, tmpl = feature_template(conn, START)
    hk = Housekeeper(conn, tmp, cfg)
    max_used = max_file = 0
    daily = []
    hk_s = ins_s = 0.0
    txn_max = 0.0
    m = 2
    total_min = DAYS * DAY_MIN
    while m < total_min:
        m1 = min(m + HK_EVERY_MIN, total_min)
        t = time.perf_counter()
        cap.insert(conn, START, m, m1)
        insert_vectors(conn, cols, tmpl, START, m, m1)
        ins_s += time.perf_counter() - t
        t = time.perf_counter()
        st = hk.run(START + m1 * MIN + 31 * NS, rotate=False)
        hk_s += time.perf_counter() - t
        txn_max = max(txn_max, st.txn_max_ms)
        f, w = file_bytes(db.db_path(tmp))
        max_used = max(max_used, st.used_bytes)
        max_file = max(max_file, f + w)
        if m1 % DAY_MIN == 0:
            daily.append((m1 // DAY_MIN, used_bytes(conn, db.db_path(tmp)), f + w))
        m = m1
    end_ns = START + total_min * MIN
    # day 1 from rollups: a ks-features window and SQL over the _all view
    day1 = START + 12 * 3600 * NS
    v = compute_range(conn, [day1], 15.0).vector(0)
    got = sum(x is not None for x in v.values.values())
    sql_rows = conn.execute("SELECT COUNT(*), SUM(samples), AVG(mem_available_kb) FROM memory_metrics_all "
                            "WHERE ts > ? AND ts <= ?", (START, START + DAY_MIN * MIN)).fetchone()
    raw_lo = conn.execute("SELECT MIN(ts) FROM memory_metrics").fetchone()[0]
    roll_lo = conn.execute("SELECT MIN(ts) FROM memory_metrics_1m").fetchone()[0]
    sizes = table_bytes(conn)
    f, w = file_bytes(db.db_path(tmp))
    out = {"daily": daily, "max_used": max_used, "max_file": max_file, "final_file": f + w,
           "final_used": used_bytes(conn, db.db_path(tmp)), "cap": cfg.storage.max_db_mb * 2**20,
           "day1_features": got, "day1_sql": sql_rows, "raw_age_h": (end_ns - raw_lo) / 3600 / NS if raw_lo else None,
           "rollup_age_d": (end_ns - roll_lo) / 86400 / NS if roll_lo else None, "hk_s": hk_s, "ins_s": ins_s,
           "txn_max_ms": txn_max, "rows_per_min": cap.rows_per_min,
           "biggest": sorted(((round(v / 2**20, 1), k) for k, v in sizes.items()), reverse=True)[:4]}
    conn.close()
    return out


def big_prune(tmp: Path) -> dict:
    """PRUNE_MIN minutes at full rate, all past the raw horizon, pruned in one run
    while another connection keeps inserting, as ks-ingest would."""
    cap = Capture()
    conn = _fresh(tmp)
    cap.insert(conn, START, 0, PRUNE_MIN)
    hk = Housekeeper(conn, tmp, Config(storage=StorageConfig(raw_retention_h=1.0)))
    hk.run(START + PRUNE_MIN * MIN + 31 * NS, do_prune=False, rotate=False)  # roll up first: not timed here
    rows_before = sum(conn.execute(f"SELECT COUNT(*) FROM {p.table}").fetchone()[0] for p in plans().values())
    stop = threading.Event()
    waits: list[float] = []

    def writer():
        w = db.connect(db.db_path(tmp))
        sql = "INSERT INTO pipeline_stats (ts, stage, pid, event_type, received, stored, rejected, pending) " \
              "VALUES (?, 'ingest', 1, 'x', 0, 0, 0, 0)"
        while not stop.is_set():
            t = time.perf_counter()
            w.execute("BEGIN IMMEDIATE")
            w.executemany(sql, [(time.time_ns(),)] * 100)
            w.execute("COMMIT")
            waits.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.1)
        w.close()

    th = threading.Thread(target=writer)
    th.start()
    t = time.perf_counter()
    st = hk.run(START + (PRUNE_MIN + 3 * 60) * MIN, rotate=False)
    secs = time.perf_counter() - t
    stop.set()
    th.join()
    conn.close()
    ms = np.array(st.detail["prune_txn_ms"])
    return {"rows": st.deleted_rows, "rows_before": rows_before, "batches": st.batches, "txn_max_ms": st.txn_max_ms,
            "txn_p95_ms": float(np.percentile(ms, 95)) if len(ms) else 0.0, "seconds": secs,
            "writer_wait_max_ms": max(waits) if waits else 0.0, "vacuumed": st.vacuumed_pages}


def prune_row(pr: dict) -> dict:
    cfg = Config().storage
    return {"name": "storage_prune_txn_max_ms", "value": round(pr["txn_max_ms"], 1), "unit": "ms",
            "ratio": round(pr["txn_max_ms"] / cfg.prune_batch_target_ms, 2),
            "notes": f"longest write transaction while pruning {pr['rows']:,} rows ({PRUNE_MIN} min at full rate) in "
                     f"{pr['batches']} adaptive batches + vacuum of {pr['vacuumed']:,} pages, {pr['seconds']:.1f} s; p95 "
                     f"{pr['txn_p95_ms']:.1f} ms; ratio = max / {cfg.prune_batch_target_ms:g} ms target; a concurrent "
                     f"writer (100 rows every 100 ms, SQLite's busy wait) waited at most {pr['writer_wait_max_ms']:.0f} "
                     f"ms for its insert"}


def run() -> list[dict]:
    only = os.environ.get("KS_BENCH_STORAGE_ONLY")  # "prune": just the pruning row (the month takes ~30 min)
    with tempfile.TemporaryDirectory(prefix="ks-bench-storage-") as d:
        root = Path(d)
        for sub in ("full", "month", "prune"):
            (root / sub).mkdir(mode=0o700)
        if only == "prune":
            return [prune_row(big_prune(root / "prune"))]
        fr = full_rate(root / "full")
        pr = big_prune(root / "prune")
        mo = thirty_days(root / "month")
    mib = 2**20
    cfg = Config().storage
    growth = fr["rollup_bytes_per_day"] + (fr["features_bytes_per_day"] + fr["forecasts_bytes_per_day"]) / 17280 * 288
    steady = fr["raw_bytes_per_day"] * cfg.raw_retention_h / 24 + fr["rollup_bytes_per_day"] * cfg.rollup_retention_d
    day30 = mo["daily"][-1] if mo["daily"] else (DAYS, mo["final_used"], mo["final_file"])
    return [
        {"name": "storage_raw_bytes_per_day", "value": round(fr["raw_bytes_per_day"] / mib, 1), "unit": "MiB/day",
         "ratio": None,
         "notes": f"raw event rows at the capture's full rate ({fr['rows_per_min']:,} rows/min), {FULL_MIN} min replayed, "
                  f"dbstat bytes incl. indexes; largest {fr['biggest']} MiB/day"},
        {"name": "storage_rollup_bytes_per_day", "value": round(fr["rollup_bytes_per_day"] / mib, 1), "unit": "MiB/day",
         "ratio": round(fr["rollup_bytes_per_day"] / fr["raw_bytes_per_day"], 4),
         "notes": f"<table>_1m rollups of the same data; ratio = rollup / raw; rolling up costs "
                  f"{fr['rollup_s_per_hour']:.2f} s of CPU per hour of data"},
        {"name": "db_bytes_per_day_default", "value": round(growth), "unit": "B/day", "ratio": None,
         "notes": f"= {growth / mib:.1f} MiB/day: steady-state growth at the defaults once raw rows reach their "
                  f"{cfg.raw_retention_h:g} h horizon (rollups + one feature vector and forecast per 5 min), measured "
                  f"at full rate; the full-rate steady state would be {steady / mib:,.0f} MiB "
                  f"(48 h raw + 30 d rollups), so the {cfg.max_db_mb:g} MiB cap binds on this workload"},
        {"name": "storage_30d_db_mb", "value": round(day30[2] / mib, 1), "unit": "MiB",
         "ratio": round(mo["max_file"] / mo["cap"], 3),
         "notes": f"file + WAL after {DAYS} simulated days under housekeeping every {HK_EVERY_MIN} min (defaults, "
                  f"raw rows decimated 1:{DECIMATE}, {mo['rows_per_min']:,} rows/min; vectors full rate); ratio = largest "
                  f"file + WAL seen / cap; raw kept {mo['raw_age_h']:.1f} h, rollups {mo['rollup_age_d']:.1f} d; day 1: "
                  f"{mo['day1_features']} features from rollups, memory_metrics_all {mo['day1_sql'][0]} rows; "
                  f"largest tables {mo['biggest']}; inserts {mo['ins_s']:.0f} s, housekeeping {mo['hk_s']:.0f} s"},
        prune_row(pr),
    ]


if __name__ == "__main__":
    import sys

    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    with tempfile.TemporaryDirectory(prefix="ks-bench-storage-") as d:
        p = Path(d) / "x"
        p.mkdir(mode=0o700)
        fn = {"full": full_rate, "prune": big_prune, "month": thirty_days}.get(which)
        if fn:
            t = time.perf_counter()
            print(orjson.dumps(fn(p), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode())
            print(f"{time.perf_counter() - t:.1f} s")
        else:
            for r in run():
                print(r)

"""Rollups, retention, the size cap, reads across the raw horizon, config and rotation."""

from __future__ import annotations

import json
import os
import random
import sqlite3

import numpy as np
import pytest

from kernelsight import config as kconfig, db
from kernelsight.features.engine import compute_range
from kernelsight.log import rotate_data_logs, rotate_if_needed
from kernelsight.schema import load_schema
from kernelsight.storage import storage_status
from kernelsight.storage.housekeeping import Housekeeper
from kernelsight.storage.plan import default_agg, plans
from kernelsight.storage.rollup import aggregate

NS = 10**9
MIN = 60 * NS
T0 = 1_800_000_000 * NS  # a minute boundary


def cfg(**storage) -> kconfig.Config:
    return kconfig.Config(storage=kconfig.StorageConfig(**storage))


def insert(conn, table: str, rows: list[dict]) -> None:
    spec = next(s for s in load_schema().events.values() if s.table == table)
    conn.executemany(spec.insert_sql(), [tuple(r.get(c) for c in spec.columns) for r in rows])


# ---------------------------------------------------------------------------- rollup correctness

SYNTH = {
    "producer": "test",
    "events": {"synth": {"table": "synth_stats", "nullable": True, "fields": {
        "dev": {"type": "str"},
        "cpu": {"type": "int", "agg": "key"},
        "interval_s": {"type": "float"},
        "g": {"type": "float"},
        "c_total": {"type": "int"},
        "n": {"type": "int", "agg": "sum"},
        "m": {"type": "int", "agg": "max"},
        "lo": {"type": "float", "agg": "min"},
        "tag": {"type": "str", "agg": "last"},
        "h": {"type": "int_array"},
    }}},
}


@pytest.fixture
def synth_plan(tmp_path):
    d = tmp_path / "schema" / "events"
    d.mkdir(parents=True)
    (d / "synth.json").write_text(json.dumps(SYNTH))
    (d.parent / "base.sql").write_text("")
    return plans(load_schema(d))["synth_stats"]


def synth_rows(n_rows: int, seed: int = 7) -> list[tuple]:
    rnd = random.Random(seed)
    rows, c = [], {}
    for i in range(n_rows):
        ts = T0 + rnd.randrange(0, 5 * MIN) + 1
        dev = rnd.choice(["sda", "sdb", None])
        cpu = rnd.choice([0, 1])
        c[(dev, cpu)] = c.get((dev, cpu), 0) + rnd.randrange(0, 100)
        width = rnd.choice([3, 5])
        rows.append((i + 1, ts, dev, cpu, 1.0, rnd.choice([None, rnd.uniform(0, 50)]), c[(dev, cpu)],
                     rnd.randrange(0, 10), rnd.randrange(0, 1000), rnd.uniform(-5, 5), rnd.choice(["a", "b"]),
                     json.dumps([rnd.randrange(0, 9) for _ in range(width)]) if rnd.random() > 0.1 else None))
    return rows


def trim(h: list[int]) -> list[int]:
    while h and h[-1] == 0:
        h = h[:-1]
    return h


def oracle(rows: list[tuple]) -> dict:
    """Plain-Python rollup of synth rows: {(bucket, dev, cpu): {...}}."""
    groups: dict = {}
    for r in sorted(rows, key=lambda r: (r[1], r[0])):
        b = -(-r[1] // MIN) * MIN
        groups.setdefault((b, r[2], r[3]), []).append(r)
    covered = {}
    for r in rows:
        b = -(-r[1] // MIN) * MIN
        covered.setdefault(b, {})[r[1]] = r[4]
    out = {}
    for k, rs in groups.items():
        g = [r[5] for r in rs if r[5] is not None]
        hs = [json.loads(r[11]) for r in rs if r[11] is not None]
        width = max((len(h) for h in hs), default=0)
        out[k] = {
            "samples": len(rs),
            "interval_s": min(sum(covered[k[0]].values()), 60.0),
            "g": float(np.mean(g)) if g else None, "g_min": min(g) if g else None, "g_max": max(g) if g else None,
            "c_total": rs[-1][6], "n": sum(r[7] for r in rs), "m": max(r[8] for r in rs),
            "lo": min(r[9] for r in rs), "tag": rs[-1][10],
            "h": trim([sum(h[i] if i < len(h) else 0 for h in hs) for i in range(width)]) if hs else None,
        }
    return out


def test_default_aggregations():
    assert default_agg("device", "str") == "key"
    assert default_agg("hist_log2_ns", "int_array") == "hist"
    assert default_agg("rx_bytes_total", "int") == "last"
    assert default_agg("interval_s", "float") == "interval"
    assert default_agg("mem_free_kb", "int") == "gauge"


def test_rollup_matches_oracle(synth_plan):
    rows = synth_rows(600)
    got = aggregate(synth_plan, rows, MIN)
    cols = [c for c, _ in synth_plan.columns()]
    want = oracle(rows)
    assert len(got) == len(want)
    for row in got:
        r = dict(zip(cols, row))
        w = want[(r["ts"], r["dev"], r["cpu"])]
        for k, v in w.items():
            if k == "h":
                assert (json.loads(r[k]) if r[k] is not None else None) == v
            elif isinstance(v, float):
                assert r[k] == pytest.approx(v, rel=1e-12), k
            else:
                assert r[k] == v, k


def test_rollup_tables_cover_every_stats_table():
    ps = plans()
    for t in ("syscall_stats", "io_latency_stats", "page_fault_stats", "sched_stats", "sched_events", "tracer_stats",
              "memory_metrics", "block_stats", "network_interface_stats", "psi_metrics", "runqlat_hist",
              "syscall_events", "exec_events", "tcp_state_events", "page_fault_events"):
        assert t in ps
    assert "producer_stats" not in ps
    assert ps["runqlat_hist"].samples == "rollup_samples"  # the table has a field named samples
    f = {x.name: x.agg for x in ps["syscall_stats"].fields}
    assert (f["syscall"], f["count"], f["hist_log2_ns"], f["max_ns"], f["p95_ns"]) == ("key", "sum", "hist", "max", "max")
    assert {x.name: x.agg for x in ps["io_latency_stats"].fields}["p95_ms"] == "gauge"
    assert {x.name: x.agg for x in ps["psi_metrics"].fields}["some_total_us"] == "last"


# ---------------------------------------------------------------------------- housekeeping on a real database

def scraper_rows(start: int, minutes: int, seed: int = 1):
    """memory/cpu/vmstat/block rows every second, syscall_stats with histograms every second."""
    rnd = random.Random(seed)
    mem, cpu, vm, blk, sys_ = [], [], [], [], []
    ctxt = intr = pgf = 10**6
    reads = 1000
    for i in range(minutes * 60):
        ts = start + i * NS + 1000
        avail = 8_000_000 + 200_000 * np.sin(i / 300) + rnd.uniform(-5000, 5000)
        mem.append({"ts": ts, "mem_total_kb": 16_000_000, "mem_free_kb": int(avail * 0.8), "mem_available_kb": int(avail),
                    "cached_kb": 2_000_000, "buffers_kb": 100_000, "anon_pages_kb": 3_000_000, "commit_limit_kb": 9_000_000,
                    "committed_as_kb": 4_000_000, "swap_total_kb": 0, "swap_free_kb": 0, "dirty_kb": rnd.randrange(0, 5000)})
        ctxt += rnd.randrange(4000, 6000)
        intr += rnd.randrange(2000, 3000)
        cpu.append({"ts": ts, "cpu_count": 2, "user_pct": 20 + rnd.uniform(-5, 5), "nice_pct": 0.0,
                    "system_pct": 10 + rnd.uniform(-2, 2), "idle_pct": 65.0, "iowait_pct": 5 + rnd.uniform(-1, 1),
                    "irq_pct": 0.0, "softirq_pct": 0.0, "steal_pct": 0.0, "ctxt_total": ctxt, "intr_total": intr,
                    "forks_total": 500 + i // 3, "procs_running": rnd.randrange(1, 5), "procs_blocked": rnd.randrange(0, 2)})
        pgf += rnd.randrange(10000, 30000)
        vm.append({"ts": ts, "pgfault_total": pgf, "pgmajfault_total": i // 10, "pswpin_total": 0, "pswpout_total": 0,
                   "pgscan_kswapd_total": 0, "pgscan_direct_total": 0, "oom_kill_total": 0})
        reads += rnd.randrange(50, 150)
        blk.append({"ts": ts, "device": "vda", "reads_completed_total": reads, "read_time_ms_total": reads // 4,
                    "writes_completed_total": i * 3, "write_time_ms_total": i, "sectors_read_total": reads * 8,
                    "sectors_written_total": i * 24, "weighted_io_time_ms_total": i * 50,
                    "util_pct": rnd.uniform(0, 100), "in_flight": rnd.randrange(0, 8)})
        for name in ("read", "write", "futex"):
            hist = [0] * 32
            for _ in range(50):
                hist[rnd.randrange(8, 20)] += 1
            count = sum(hist)
            sys_.append({"ts": ts, "syscall_nr": {"read": 0, "write": 1, "futex": 202}[name], "syscall": name,
                         "interval_s": 1.0, "count": count, "errors": rnd.randrange(0, 5),
                         "total_ns": count * rnd.randrange(1000, 5000), "max_ns": rnd.randrange(10**5, 10**7),
                         "p95_ns": rnd.uniform(1e4, 1e5), "hist_log2_ns": hist})
    return {"memory_metrics": mem, "cpu_metrics": cpu, "vmstat_metrics": vm, "block_stats": blk, "syscall_stats": sys_}


def fill(conn, start: int, minutes: int, seed: int = 1) -> None:
    conn.execute("BEGIN")
    for t, rows in scraper_rows(start, minutes, seed).items():
        for r in rows:
            for k, v in list(r.items()):
                if isinstance(v, list):
                    r[k] = json.dumps(v)
        insert(conn, t, rows)
    conn.execute("COMMIT")


@pytest.fixture
def store(tmp_path):
    conn = db.connect(db.db_path(tmp_path))
    yield tmp_path, conn
    conn.close()


def rollup_rows(conn, table: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM {table}_1m ORDER BY ts, id").fetchall()


def strip_id(rows):
    return sorted(r[1:] for r in rows)


def test_rollup_idempotent_and_restart_safe(store):
    d, conn = store
    fill(conn, T0, 10)
    now = T0 + 10 * MIN + 31 * NS
    st = Housekeeper(conn, d, cfg()).run(now, do_prune=False, rotate=False)
    assert st.rollup_rows > 0
    first = {t: strip_id(rollup_rows(conn, t)) for t in ("memory_metrics", "syscall_stats", "block_stats")}
    assert len(first["memory_metrics"]) == 10 and len(first["syscall_stats"]) == 30
    assert conn.execute("SELECT SUM(samples) FROM memory_metrics_1m").fetchone()[0] == 600
    # again: nothing new, nothing changed
    assert Housekeeper(conn, d, cfg()).run(now, do_prune=False, rotate=False).rollup_rows == 0
    # a row arriving late for a rolled-up minute does not change it: a minute is rolled up once
    insert(conn, "memory_metrics", [{"ts": T0 + 30 * NS, "mem_total_kb": 1}])
    Housekeeper(conn, d, cfg()).run(now, do_prune=False, rotate=False)
    assert {t: strip_id(rollup_rows(conn, t)) for t in first} == first
    conn.execute("DELETE FROM memory_metrics WHERE mem_total_kb = 1")
    # the watermarks lost (a crash before they were written): redoing the chunks gives the same rows
    conn.execute("DELETE FROM storage_state WHERE key LIKE 'rollup:%'")
    Housekeeper(conn, d, cfg()).run(now, do_prune=False, rotate=False)
    assert {t: strip_id(rollup_rows(conn, t)) for t in first} == first
    # a run stopped early (budget spent) and continued by a new process ends with the same rows
    conn.execute("DELETE FROM storage_state WHERE key LIKE 'rollup:%'")
    for t in first:
        conn.execute(f"DELETE FROM {t}_1m")
    Housekeeper(conn, d, cfg()).run(now, budget_s=0.0, do_prune=False, rotate=False)
    Housekeeper(conn, d, cfg()).run(now, do_prune=False, rotate=False)
    assert {t: strip_id(rollup_rows(conn, t)) for t in first} == first


def test_agent_runs_roll_up_in_five_minute_batches(store):
    """maybe_run (the agent's, once a minute) rolls up every ROLLUP_EVERY_S, all closed minutes at
    once; the minutes in between stay raw until then, and nothing is skipped."""
    from kernelsight.storage.housekeeping import ROLLUP_EVERY_S

    d, conn = store
    fill(conn, T0, 12)
    hk = Housekeeper(conn, d, cfg())

    def minutes_rolled():
        return conn.execute("SELECT COUNT(DISTINCT ts) FROM memory_metrics_1m").fetchone()[0]

    hk.maybe_run(T0 + 2 * MIN + 31 * NS)
    assert minutes_rolled() == 2
    for k in range(3, ROLLUP_EVERY_S // 60 + 2):  # once a minute: retention runs, rollups wait
        assert hk.maybe_run(T0 + k * MIN + 31 * NS).rollup_rows == 0
    assert minutes_rolled() == 2
    hk.maybe_run(T0 + (ROLLUP_EVERY_S // 60 + 2) * MIN + 31 * NS)
    assert minutes_rolled() == ROLLUP_EVERY_S // 60 + 2


def test_open_minutes_are_not_rolled_up(store):
    d, conn = store
    fill(conn, T0, 3)
    Housekeeper(conn, d, cfg()).run(T0 + 3 * MIN + 10 * NS, do_prune=False, rotate=False)
    # the minute ending at T0 + 3 min is still within the grace period
    assert [r[0] for r in conn.execute("SELECT DISTINCT ts FROM memory_metrics_1m ORDER BY ts")] == [T0 + MIN, T0 + 2 * MIN]


def test_time_retention(store):
    d, conn = store
    fill(conn, T0, 4 * 60)  # four hours
    from kernelsight.agent.store import ensure_tables
    from kernelsight.features.store import ensure_table

    ensure_tables(conn)
    ensure_table(conn)
    conn.executemany("INSERT INTO features (ts, window_s, computed_ts, reasons) VALUES (?, 15, 0, '{}')",
                     [(T0 + i * 5 * NS,) for i in range(4 * 720)])
    conn.executemany("INSERT INTO pipeline_stats (ts, stage, pid, event_type, received, stored, rejected, pending) "
                     "VALUES (?, 'ingest', 1, 'memory', 0, 0, 0, 0)", [(T0 + i * MIN,) for i in range(240)])
    obs = ("INSERT INTO observations (rule, key, label, status, severity, signal_category, observation_type, persistence,"
           " first_seen, last_seen, updates, summary, observation, processes) VALUES (?, 'k', 'l', ?, 'low', 'c', 't', 'p',"
           " ?, ?, 1, 's', '{}', '[]')")
    conn.execute(obs, ("old_closed", "closed", T0 // NS - 2 * 86400, T0 // NS - 2 * 86400))
    conn.execute(obs, ("old_open", "open", T0 // NS, T0 // NS))
    conn.execute(obs, ("recent", "closed", T0 // NS + 3 * 86400, T0 // NS + 3 * 86400))
    # raw kept one hour, rollups two hours, observations one day
    c = cfg(raw_retention_h=1.0, rollup_retention_d=2 / 24, observation_retention_d=1.0)
    now = T0 + 4 * 3600 * NS + 31 * NS
    hk = Housekeeper(conn, d, c)
    hk.run(now)
    raw_lo = conn.execute("SELECT MIN(ts) FROM memory_metrics").fetchone()[0]
    assert raw_lo > now - 3600 * NS - MIN and raw_lo <= now - 3600 * NS + MIN
    roll_lo = conn.execute("SELECT MIN(ts) FROM memory_metrics_1m").fetchone()[0]
    assert roll_lo > now - 2 * 3600 * NS
    assert conn.execute("SELECT MIN(ts) FROM pipeline_stats").fetchone()[0] > now - 3600 * NS
    # features older than the raw horizon: one vector per 5 minutes (the last of them)
    old = conn.execute("SELECT ts FROM features WHERE ts <= ? ORDER BY ts", (raw_lo,)).fetchall()
    assert old and all((t - 1) // (5 * MIN) != (u - 1) // (5 * MIN) for (t,), (u,) in zip(old, old[1:]))
    assert all(t % (5 * MIN) == 0 for (t,) in old)
    assert conn.execute("SELECT COUNT(*) FROM features WHERE ts > ?", (now - 3600 * NS + MIN,)).fetchone()[0] >= 700
    # closed observations past their retention go; open ones and recent ones stay
    rules = {r[0] for r in conn.execute("SELECT rule FROM observations")}
    assert rules == {"old_open", "recent"}
    # raw rows never go before their minute is rolled up
    fill(conn, now, 5, seed=2)
    later = now + 3 * 3600 * NS
    Housekeeper(conn, d, cfg(raw_retention_h=1.0)).run(later, do_prune=False)
    conn.execute("UPDATE storage_state SET value = ? WHERE key = 'rollup:cpu_metrics'", (str(now),))
    Housekeeper(conn, d, cfg(raw_retention_h=1.0)).run(later, do_rollup=False)
    assert conn.execute("SELECT COUNT(*) FROM cpu_metrics WHERE ts > ?", (now,)).fetchone()[0] == 300
    assert conn.execute("SELECT COUNT(*) FROM memory_metrics WHERE ts > ?", (now,)).fetchone()[0] < 300


def test_size_cap_keeps_recent_raw_then_prunes_oldest_rollups(store):
    d, conn = store
    fill(conn, T0, 3 * 60)
    now = T0 + 3 * 3600 * NS + 31 * NS
    Housekeeper(conn, d, cfg()).run(now)
    n_roll = conn.execute("SELECT COUNT(*) FROM memory_metrics_1m").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    used = Housekeeper(conn, d, cfg()).run(now).used_bytes
    # the rollups are a small part: the cap needs more than the raw rows older than 2 h, so after
    # those the oldest rollups go before the last 2 h of raw rows
    st = Housekeeper(conn, d, cfg(max_db_mb=used * 0.3 / 2**20, raw_min_h=2.0)).run(now)
    assert st.cap_pruned
    assert conn.execute("SELECT MIN(ts) FROM memory_metrics").fetchone()[0] > now - 2 * 3600 * NS - 11 * MIN
    assert conn.execute("SELECT COUNT(*) FROM memory_metrics_1m").fetchone()[0] < n_roll


def test_size_cap_prunes_oldest_raw_then_oldest_rollups(store):
    d, conn = store
    fill(conn, T0, 3 * 60)
    now = T0 + 3 * 3600 * NS + 31 * NS
    hk = Housekeeper(conn, d, cfg())
    hk.run(now)  # roll everything up, nothing deleted: all within 48 h
    roll_before = conn.execute("SELECT COUNT(*), MIN(ts) FROM memory_metrics_1m").fetchone()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw_used = hk.run(now).used_bytes
    # a cap below the data: the oldest raw rows go, rollups stay whole
    cap_mb = raw_used * 0.6 / 2**20
    st = Housekeeper(conn, d, cfg(max_db_mb=cap_mb, raw_min_h=1.0)).run(now)
    assert st.cap_pruned and st.used_bytes <= cap_mb * 2**20
    assert conn.execute("SELECT COUNT(*), MIN(ts) FROM memory_metrics_1m").fetchone() == roll_before
    lo = conn.execute("SELECT MIN(ts) FROM memory_metrics").fetchone()[0]
    assert lo > T0 + 30 * MIN
    newest = conn.execute("SELECT MAX(ts) FROM memory_metrics").fetchone()[0]
    assert newest == T0 + (3 * 3600 - 1) * NS + 1000  # the newest raw data is untouched
    # a cap below what the rollups alone take: raw rows down to the last hour, then the rollups, then
    # the raw rows of that hour that are rolled up
    raw_free = Housekeeper(conn, d, cfg(max_db_mb=0.01, raw_min_h=1.0)).run(now)
    assert conn.execute("SELECT COUNT(*) FROM memory_metrics WHERE ts <= ?", (now - 31 * NS,)).fetchone()[0] == 0
    roll_lo = conn.execute("SELECT MIN(ts) FROM memory_metrics_1m").fetchone()[0]
    assert roll_lo is None or roll_lo > roll_before[1]
    assert raw_free.cap_pruned


def test_pruner_batches(store):
    from kernelsight.storage.retention import Pruner

    d, conn = store
    fill(conn, T0, 10)
    pr = Pruner(conn, batch_rows=100, target_ms=100.0)
    n = pr.delete_upto("memory_metrics", T0 + 5 * MIN)
    assert n == 300 and pr.batches >= 2
    assert conn.execute("SELECT MIN(ts) FROM memory_metrics").fetchone()[0] > T0 + 5 * MIN


# ---------------------------------------------------------------------------- reads across the raw horizon

def test_features_over_rollups_close_to_raw(store):
    d, conn = store
    fill(conn, T0, 40)
    ends = T0 + np.arange(10, 41, 5) * MIN
    raw = compute_range(conn, ends, 300.0)
    now = T0 + 40 * MIN + 3 * 86400 * NS  # three days on: raw rows are past the 48 h horizon
    Housekeeper(conn, d, cfg()).run(now)
    assert conn.execute("SELECT COUNT(*) FROM memory_metrics").fetchone()[0] == 0
    rolled = compute_range(conn, ends, 300.0)
    compared = 0
    for j, name in enumerate(raw.names):
        a, b = raw.values[:, j], rolled.values[:, j]
        if np.isnan(a).all():
            continue
        if name in ("memory_available_trend_mb_per_min", "memory_exhaustion_eta_s", "cpu_memory_correlation"):
            continue  # a trend or correlation over 5 rollup rows is not that over 300 raw rows
        assert not np.isnan(b).any(), (name, rolled.reasons_at(0).get(name))
        tol = 0.25 if name in ("memory_dirty_mb",) else 0.05
        np.testing.assert_allclose(b, a, rtol=tol, atol=1e-6, err_msg=name)
        compared += 1
    assert compared >= 30
    # a 15 s window over rollup data is widened to the rollup step, so it has values
    v = compute_range(conn, [T0 + 20 * MIN + 20 * NS], 15.0).vector(0)
    assert v.values["memory_available_pct"] is not None and v.values["syscall_rate_per_sec"] is not None
    assert v.values["disk_read_iops"] is not None


def test_all_view_joins_rollups_and_raw(store):
    d, conn = store
    fill(conn, T0, 20)
    Housekeeper(conn, d, cfg()).run(T0 + 20 * MIN + 31 * NS, do_prune=False)
    # raw rows of the first ten minutes go: the view shows their rollups, then raw rows
    conn.execute("DELETE FROM memory_metrics WHERE ts <= ?", (T0 + 10 * MIN,))
    rows = conn.execute("SELECT ts, samples, mem_available_kb_max FROM memory_metrics_all ORDER BY ts").fetchall()
    assert [r[1] for r in rows[:10]] == [60] * 10 and rows[10][1] == 1
    assert len(rows) == 10 + 600
    assert conn.execute("SELECT SUM(samples) FROM memory_metrics_all").fetchone()[0] == 1200
    ro = __import__("kernelsight.agent.readonly_sql", fromlist=["ReadOnlyDB"]).ReadOnlyDB(db.db_path(d))
    try:
        got = ro.query("SELECT COUNT(*) FROM syscall_stats_all WHERE ts <= ?".replace("?", str(T0 + 10 * MIN)))
    finally:
        ro.close()
    assert got["rows"][0][0] == 1800  # raw syscall rows are all still there


def test_storage_status(store):
    d, conn = store
    fill(conn, T0, 5)
    Housekeeper(conn, d, cfg()).run(T0 + 5 * MIN + 31 * NS)
    assert storage_status(d, cfg())["bytes_per_day_estimated"] is None  # 5 min of data: too little to judge
    fill(conn, T0 + 5 * MIN, 60, seed=4)
    Housekeeper(conn, d, cfg()).run(T0 + 65 * MIN + 31 * NS)
    st = storage_status(d, cfg())
    assert st["total_bytes"] == st["db_bytes"] + st["wal_bytes"] > 0
    assert st["raw_oldest_ts"] == T0 + NS + 1000 - NS and st["raw_newest_ts"] >= T0 + 4 * MIN
    assert st["rollup_oldest_ts"] == T0 + MIN
    assert st["bytes_per_day_measured"] > 0  # two size samples an hour apart
    assert st["bytes_per_day_estimated"]["raw_bytes_per_day"] > 0


def test_measured_bytes_per_day():
    from kernelsight.storage import measured_bytes_per_day

    samples = [[i * 600, 1000 + i * 600 * 10] for i in range(300)]  # 10 bytes a second
    assert measured_bytes_per_day(samples) == pytest.approx(864_000)
    assert measured_bytes_per_day(samples[:2]) is None


# ---------------------------------------------------------------------------- config

def test_config_defaults_and_file(tmp_path, monkeypatch):
    monkeypatch.delenv("KS_CONFIG", raising=False)
    monkeypatch.setattr(kconfig, "SYSTEM_PATH", tmp_path / "absent.toml")
    c = kconfig.load()
    assert c.storage.raw_retention_h == 48 and c.storage.rollup_retention_d == 30 and c.storage.rollup_step_s == 60
    f = tmp_path / "ks.toml"
    f.write_text("[storage]\nraw_retention_h = 12\nmax_db_mb = 256\n[logs]\nkeep = 5\n")
    c = kconfig.load(f)
    assert (c.storage.raw_retention_h, c.storage.max_db_mb, c.logs.keep) == (12.0, 256.0, 5)
    assert c.storage.rollup_retention_d == 30  # untouched keys keep their defaults
    monkeypatch.setenv("KS_CONFIG", str(f))
    assert kconfig.load().logs.keep == 5
    sysf = tmp_path / "etc.toml"
    sysf.write_text("[logs]\nkeep = 9\n")
    monkeypatch.delenv("KS_CONFIG")
    monkeypatch.setattr(kconfig, "SYSTEM_PATH", sysf)
    assert kconfig.load().logs.keep == 9
    assert kconfig.from_dict(__import__("tomllib").loads(kconfig.to_toml(c))) == c


@pytest.mark.parametrize("text, words", [
    ("[storage]\nraw_retention = 1\n", ["unknown key 'raw_retention' in [storage]", "raw_retention_h"]),
    ("[nonsense]\naddress = 'x'\n", ["unknown section [nonsense]"]),
    ("[storage]\nprune_batch_rows = 1.5\n", ["prune_batch_rows must be int"]),
    ("[storage]\nmax_db_mb = 0\n", ["max_db_mb must be positive"]),
    ("[storage\n", ["not valid TOML"]),
])
def test_config_errors(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(kconfig.ConfigError) as e:
        kconfig.load(f)
    for w in words:
        assert w in str(e.value)
    assert str(f) in str(e.value)


def test_config_markdown_documents_every_key():
    md = kconfig.markdown()
    import dataclasses

    for sec in dataclasses.fields(kconfig.Config):
        assert f"[{sec.name}]" in md
        for f in dataclasses.fields(getattr(kconfig.Config(), sec.name)):
            assert f"`{f.name}`" in md and f.metadata["doc"]


# ---------------------------------------------------------------------------- rotation

def test_rotate_if_needed(tmp_path):
    p = tmp_path / "x.log"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # a writer that keeps its descriptor
    try:
        for gen in range(5):
            os.write(fd, f"gen{gen} ".encode() * 100)
            assert rotate_if_needed(p, 100, keep=3)
        assert not rotate_if_needed(p, 100, keep=3)  # empty now
        os.write(fd, b"after")
        assert p.read_bytes() == b"after"  # O_APPEND: the writer goes on at the start
    finally:
        os.close(fd)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["x.log", "x.log.1", "x.log.2", "x.log.3"]
    assert (tmp_path / "x.log.1").read_bytes().startswith(b"gen4")
    assert (tmp_path / "x.log.3").read_bytes().startswith(b"gen2")
    assert (tmp_path / "x.log.1").stat().st_mode & 0o777 == 0o600


def test_rotate_data_logs(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "stream").mkdir()
    for rel in ("logs/ks-ingest.log", "observations.jsonl", "stream/memory.jsonl", "logs/small.log"):
        (tmp_path / rel).write_bytes(b"x" * (10 if "small" in rel else 1000))
    done = rotate_data_logs(tmp_path, 100, 2)
    assert sorted(done) == ["logs/ks-ingest.log", "observations.jsonl", "stream/memory.jsonl"]
    assert (tmp_path / "observations.jsonl.1").stat().st_size == 1000


def test_agent_runs_housekeeping(tmp_path):
    from kernelsight.agent.engine import Agent

    conn = db.connect(db.db_path(tmp_path))
    fill(conn, T0, 5)
    conn.close()
    agent = Agent(tmp_path, stream=False, config=cfg())
    try:
        agent.step(T0 + 5 * MIN + 31 * NS)
        n = agent.rw.execute("SELECT COUNT(*) FROM memory_metrics_1m").fetchone()[0]
        assert n == 5
        agent.step(T0 + 5 * MIN + 36 * NS)  # within the minute: no second run
        assert agent.housekeeper.last_run_ns == T0 + 5 * MIN + 31 * NS
    finally:
        agent.close()
    assert isinstance(sqlite3.connect(db.db_path(tmp_path)).execute("SELECT 1").fetchone(), tuple)


def test_count_rows_across_the_raw_horizon(store):
    from kernelsight.storage.reads import count_rows

    d, conn = store
    insert(conn, "exec_events", [{"ts": T0 + i * NS + 1, "comm": "make" if i % 3 else "cc1", "pid": i, "ppid": 1,
                                  "ret": 0, "args": f'"x{i}"'} for i in range(600)])
    Housekeeper(conn, d, cfg()).run(T0 + 10 * MIN + 31 * NS, do_prune=False)
    assert conn.execute("SELECT COUNT(*) FROM exec_events_1m").fetchone()[0] == 20  # two comms a minute
    conn.execute("DELETE FROM exec_events WHERE ts <= ?", (T0 + 5 * MIN,))
    assert count_rows(conn, "exec_events", T0) == 600
    assert count_rows(conn, "exec_events", T0 + 2 * MIN, T0 + 7 * MIN) == 300
    assert count_rows(conn, "no_such_table", T0) is None


def test_rows_older_than_rollup_retention_are_not_rolled_up(store):
    d, conn = store
    fill(conn, T0, 30)  # a database that grew before housekeeping: 30 min of data, 40 days old
    now = T0 + 40 * 86400 * NS
    fill(conn, now - 10 * MIN, 5, seed=3)
    Housekeeper(conn, d, cfg()).run(now)
    assert conn.execute("SELECT MIN(ts) FROM memory_metrics_1m").fetchone()[0] > now - 11 * MIN
    assert conn.execute("SELECT COUNT(*) FROM memory_metrics WHERE ts < ?", (now - 86400 * NS,)).fetchone()[0] == 0


def test_cli_storage_and_config(store, tmp_path):
    import subprocess

    from conftest import tool

    import time

    d, conn = store
    start = (time.time_ns() - 10 * MIN) // MIN * MIN  # the commands run at the real now
    fill(conn, start, 3)
    conn.close()
    ks = tool("ks")
    r = subprocess.run([ks, "storage", "rollup", "--data-dir", str(d), "--json"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "KS_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rollup_rows"] > 0
    r = subprocess.run([ks, "storage", "status", "--data-dir", str(d), "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["rollup_oldest_ts"] == start + MIN
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nraw_retention_hours = 1\n")
    r = subprocess.run([ks, "config", "show", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown key 'raw_retention_hours' in [storage]" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text("[storage]\nraw_retention_h = 12\n")
    r = subprocess.run([ks, "config", "show"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "KS_CONFIG": str(good)})
    assert r.returncode == 0 and "raw_retention_h = 12.0" in r.stdout and str(good) in r.stdout

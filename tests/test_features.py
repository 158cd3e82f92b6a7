"""Feature engine: every group against hand-computed values on a small fixture DB.

Rows are written every 10 s at T0 + k*10 s, k = 0..7; the window is
(T0, T0 + 60 s], so k = 1..6 are inside, k = 0 is only the previous sample
for counter deltas and k = 7 lies after the window end.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from kernelsight import db
from kernelsight.features import FEATURES, NAMES, compute_range, compute_vector
from kernelsight.features import catalog as C
from kernelsight.features.engine import hist_quantile

FIXTURES = Path(__file__).parent / "fixtures"

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
END = T0 + 60 * NS
K = range(8)


def ts(k: int) -> int:
    return T0 + k * 10 * NS


def put(conn, table: str, rows: list[dict]) -> None:
    for r in rows:
        r = {k: (orjson.dumps(v).decode() if isinstance(v, list) else v) for k, v in r.items()}
        cols = ", ".join(r)
        conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({','.join('?' * len(r))})", tuple(r.values()))


def build(conn) -> None:
    put(conn, "load_metrics", [dict(ts=ts(k), load_1min=99.0 if k in (0, 7) else 0.5 * k, runnable_tasks=k,
                                     total_tasks=100 + k) for k in K])
    put(conn, "cpu_metrics", [dict(ts=ts(k), cpu_count=4, idle_pct=50.0 - k, iowait_pct=10.0, user_pct=20.0, nice_pct=5.0,
                                    procs_running=8 if k == 6 else 2, procs_blocked=1, ctxt_total=1000 * k, forks_total=10 * k,
                                    intr_total=[1000, 2000, 3000, 10, 1010, 2010, 3010, 4010][k]) for k in K])
    put(conn, "memory_metrics", [dict(ts=ts(k), mem_total_kb=1_000_000, mem_available_kb=600_000 - 10240 * k,
                                       swap_total_kb=0, swap_free_kb=0, dirty_kb=2048) for k in K])
    put(conn, "vmstat_metrics", [dict(ts=ts(k), pgfault_total=1000 * k, pgmajfault_total=10 * k, pswpout_total=0,
                                       pgscan_kswapd_total=0, pgscan_direct_total=0, oom_kill_total=1 if k >= 6 else 0) for k in K])
    for dev, reads, rtime, sect, util in (("sda", 100, 200, 1000, 30.0), ("sdb", 50, 400_000, None, 10.0)):
        put(conn, "block_stats", [dict(ts=ts(k), device=dev, reads_completed_total=reads * k, read_time_ms_total=rtime * k,
                                        writes_completed_total=7, write_time_ms_total=0,
                                        sectors_read_total=None if sect is None else sect * k,
                                        weighted_io_time_ms_total=5000 * k if dev == "sda" else None,
                                        util_pct=70.0 if (dev == "sdb" and k == 6) else util, in_flight=k) for k in K])
    for iface, rx in (("eth0", 1000), ("lo", 1_000_000)):
        put(conn, "network_interface_stats", [dict(ts=ts(k), interface=iface, rx_bytes_total=rx * k,
                                                    rx_errors_total=10 * k if iface == "lo" else 0, tx_errors_total=0) for k in K])
    put(conn, "tcp_stats", [dict(ts=ts(k), established=5, time_wait=k, syn_recv=0) for k in K])
    put(conn, "tcp_retransmit_stats", [dict(ts=ts(k), retrans_segs_total=2 * k, out_segs_total=100 * k) for k in K])
    for res, some in (("cpu", 50_000), ("memory", 100_000), ("io", 2_500_000)):
        put(conn, "psi_metrics", [dict(ts=ts(k), resource=res, some_total_us=some * k, full_total_us=None,
                                        some_avg10=0.5 if k == 6 else 0.1) for k in K])
    hist = [0] * 32
    hist[2], hist[10] = 9, 1
    put(conn, "io_latency_stats", [dict(ts=ts(k), device="sda", op="read", interval_s=10.0, count=10, issued=10,
                                         queue_depth_avg=2.0, hist_log2_us=hist) for k in range(1, 7)])
    h_read, h_futex = [0] * 32, [0] * 32
    h_read[10], h_futex[12] = 100, 300
    for k in range(1, 7):
        put(conn, "syscall_stats", [
            dict(ts=ts(k), syscall="read", interval_s=10.0, count=100, errors=0, total_ns=100 * 1000, hist_log2_ns=h_read),
            dict(ts=ts(k), syscall="futex", interval_s=10.0, count=300, errors=30, total_ns=300 * 5000, hist_log2_ns=h_futex),
        ])
    put(conn, "syscall_events", [dict(ts=ts(k) - NS, syscall="read", latency_ns=lat) for k, lat in ((2, 20_000_000), (3, 30_000_000), (5, 50_000_000))])
    put(conn, "runqlat_hist", [dict(ts=ts(k), interval_s=10.0, samples=100, bucket_low_us=[0, 2, 4, 8], counts=[0, 50, 40, 10]) for k in (3, 4)])
    conn.execute("DROP TABLE page_fault_stats")


@pytest.fixture(scope="module")
def vec(tmp_path_factory):
    path = tmp_path_factory.mktemp("feat") / "kernelsight.db"
    conn = db.connect(path)
    build(conn)
    v = compute_vector(conn, END, 60)
    conn.close()
    return v


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def check(v, expected: dict):
    for name, want in expected.items():
        got = v.values[name]
        if want is None:
            assert got is None, f"{name}: expected null, got {got}"
        else:
            assert got == approx(want), f"{name}: {got} != {want} ({v.reasons.get(name)})"


def test_catalog_shape():
    groups = {g: sum(1 for f in FEATURES if f.group == g) for g in C.GROUPS}
    assert len(FEATURES) >= 60 and len(set(NAMES)) == len(NAMES)
    assert groups["load"] >= 6 and groups["memory"] >= 12 and groups["disk"] >= 15 and groups["network"] >= 10
    assert groups["syscall"] >= 8 and groups["page_fault"] >= 4 and groups["derived"] >= 5
    assert groups["scheduler"] >= 5 and groups["psi"] >= 3
    for f in FEATURES:
        assert f.unit and f.description and f.sources and f.how_text()


def test_load_and_cpu(vec):
    check(vec, {"load_avg_1m": 3.0, "tasks_total": 106, "tasks_runnable_avg": 3.5, "cpu_count": 4,
                "load_per_cpu_ratio": 0.75, "cpu_utilization_pct": 43.5, "cpu_user_pct": 25.0, "cpu_iowait_pct": 10.0,
                # intr_total resets between k=2 and k=3: that delta is dropped, 5 x 1000 over 50 s remain
                "interrupts_per_sec": 100.0})


def test_memory(vec):
    avail = [600_000 - 10240 * k for k in range(1, 7)]
    check(vec, {"memory_available_pct": sum(avail) / 6 / 1e4, "memory_dirty_mb": 2.0,
                "memory_available_trend_mb_per_min": -60.0, "memory_available_mb": avail[-1] / 1024,
                "swap_out_pages_per_sec": 0.0, "memory_reclaim_scan_pages_per_sec": 0.0, "oom_kills_per_min": 1.0,
                "swap_used_pct": None})
    assert vec.reasons["swap_used_pct"] == "no swap configured (SwapTotal is 0)"
    assert vec.values["swap_in_pages_per_sec"] is None  # column never written: null, not 0
    assert "no counter deltas" in vec.reasons["swap_in_pages_per_sec"]


def test_disk(vec):
    check(vec, {"disk_read_iops": 15.0, "disk_read_await_ms": (200 + 400_000) / (100 + 50),  # pooled over devices per 10 s
                "disk_write_iops": 0.0, "disk_read_bytes_per_sec": 100 * 512.0, "disk_queue_depth_avg": 0.5,
                "disk_util_max_pct": 70.0, "disk_in_flight_max": 6, "disk_write_await_ms": None,
                "io_read_latency_p50_ms": (4 + 4 * 30 / 54) / 1000, "io_read_latency_p95_ms": 1.536,
                "io_read_latency_p99_ms": 1.9456, "io_traced_iops": 1.0, "io_queue_depth_at_issue_avg": 2.0,
                "io_write_latency_p95_ms": None})
    assert vec.reasons["disk_write_await_ms"] == "no writes completed in window"
    assert vec.reasons["io_write_latency_p95_ms"] == "no rows in io_latency_stats (op == 'write') in window"


def test_network(vec):
    check(vec, {"net_rx_bytes_per_sec": 100.0, "net_errors_per_sec": 1.0, "tcp_retransmit_pct": 2.0,
                "tcp_established": 5, "tcp_time_wait": 6, "tcp_syn_recv": 0.0})


def test_syscalls(vec):
    check(vec, {"syscall_rate_per_sec": 40.0, "syscall_errors_per_sec": 3.0, "syscall_error_pct": 7.5,
                "syscall_latency_avg_us": 4.0, "syscall_latency_p95_us": (4096 + 4096 * 1680 / 1800) / 1000,
                "syscall_latency_p99_us": (4096 + 4096 * 1776 / 1800) / 1000,
                "syscall_read_latency_p95_us": 1.9968, "syscall_slow_calls_per_sec": 3 / 60,
                "syscall_slow_latency_max_ms": 50.0})


def test_page_faults_and_missing_sources(vec):
    check(vec, {"page_faults_per_sec": 100.0, "page_faults_major_per_sec": 1.0, "page_faults_minor_per_sec": 99.0,
                "page_fault_write_pct": None})
    assert vec.reasons["page_fault_write_pct"] == "table page_fault_stats absent"
    assert vec.reasons["runq_latency_p95_us"] == "no rows in sched_stats in window"


def test_scheduler_and_psi(vec):
    check(vec, {"ctx_switches_per_sec": 100.0, "forks_per_sec": 1.0, "procs_running_avg": 3.0, "procs_blocked_avg": 1.0,
                "runqlat_tool_p95_us": 12.0, "psi_cpu_some_pct": 0.5, "psi_memory_some_pct": 1.0, "psi_io_some_pct": 25.0,
                "psi_memory_some_avg10_pct": 0.5, "psi_io_full_pct": None})
    assert "no counter deltas" in vec.reasons["psi_io_full_pct"]


def test_derived(vec):
    check(vec, {"cpu_memory_correlation": 1.0, "cpu_saturation_ratio": 0.75, "io_blocked_task_pct": 25.0,
                # util 70/100, iowait 10/25, PSI io 25/25, await 2668/50 capped at 1
                "io_bottleneck_score": 100 * (0.7 + 0.4 + 1.0 + 1.0) / 4,
                "memory_pressure_score": 100 * 0.1 / 4, "memory_exhaustion_eta_s": (600_000 - 61_440) / 1024 / 60 * 60})


def test_every_null_has_a_reason_and_no_silent_zero(tmp_path):
    conn = db.connect(tmp_path / "kernelsight.db")
    v = compute_vector(conn, END, 60)
    assert all(x is None for x in v.values.values())
    assert set(v.reasons) == set(NAMES)
    assert v.reasons["memory_available_pct"] == "no rows in memory_metrics in window"
    assert v.reasons["load_per_cpu_ratio"].startswith("input load_avg_1m missing: no rows in load_metrics")


def test_range_equals_single_vectors(tmp_path):
    conn = db.connect(tmp_path / "kernelsight.db")
    build(conn)
    ends = [T0 + s * NS for s in range(0, 80, 7)]
    m = compute_range(conn, ends, 60)
    for i, e in enumerate(ends):
        single = compute_vector(conn, e, 60)
        for j, n in enumerate(m.names):
            a, b = m.values[i, j], single.values[n]
            assert (math.isnan(a) and b is None) or a == approx(b), (n, e)
            assert m.reasons[j][i] == single.reasons.get(n)


def test_hist_quantile_matches_tracer_rule():
    import numpy as np

    h = np.zeros((1, 32))
    h[0, 0], h[0, 3] = 1, 3  # [0, 2): 1 sample, [8, 16): 3 samples
    assert hist_quantile(h, 0.25)[0] == approx(2.0)  # rank 1: top of bucket 0
    assert hist_quantile(h, 0.5)[0] == approx(8 + 8 * (2 - 1) / 3)
    assert math.isnan(hist_quantile(np.zeros((1, 32)), 0.5)[0])


def test_table_schema_is_kept_until_the_database_schema_changes(tmp_path):
    """The engine keeps each database file's table info between vectors (the agent computes one
    every step) and reads it again once the schema changes (a column added by a newer schema)."""
    import sqlite3
    from types import SimpleNamespace

    from kernelsight.features import engine as fe

    conn = sqlite3.connect(tmp_path / "k.db")
    conn.execute("CREATE TABLE memory_metrics (id INTEGER PRIMARY KEY, ts INTEGER, mem_available_kb INTEGER)")
    conn.commit()
    eng = SimpleNamespace(conn=conn)
    first = fe._Engine._schema(eng)[0]
    assert fe._Engine._schema(eng)[0] is first  # kept
    conn.execute("ALTER TABLE memory_metrics ADD COLUMN swap_used_kb INTEGER")
    conn.commit()
    again = fe._Engine._schema(eng)[0]
    assert again is not first and again["memory_metrics"]["swap_used_kb"] == "INTEGER"
    mem = sqlite3.connect(":memory:")  # no file: never kept (another in-memory database may follow)
    mem.execute("CREATE TABLE t (ts INTEGER)")
    assert fe._Engine._schema(SimpleNamespace(conn=mem))[0] is not fe._Engine._schema(SimpleNamespace(conn=mem))[0]
    conn.close()
    mem.close()


def test_row_cache_gives_the_vectors_a_full_read_gives(tmp_path):
    """The agent's RowCache against a full read at every step, on the recorded capture stored as
    the pipeline stores it: 5 s of lines at a time, each vector at the end of what is stored.
    Every 7th line arrives one step late (a line read after its batch), some of them older than
    the window by then; a step back in time and a jump past the window read everything again."""
    import gzip

    import numpy as np

    from kernelsight.features.engine import RowCache, compute_range
    from kernelsight.ingest import make_ingestor

    lines = gzip.decompress((FIXTURES / "features" / "capture.jsonl.gz").read_bytes()).splitlines()
    stamps = [orjson.loads(x)["ts"] for x in lines]
    ing = make_ingestor(tmp_path)
    conn = db.connect_readonly(db.db_path(tmp_path))
    cache = RowCache()
    late: list[bytes] = []
    start, stop = min(stamps), max(stamps)
    ends = list(range(start + 5 * NS, stop + 5 * NS, 5 * NS))
    fed = len(ends)
    ends += [ends[3], ends[-1] + 60 * NS]  # back in time; past the window
    for step, end in enumerate(ends):
        now = [x for x, t in zip(lines, stamps) if end - 5 * NS < t <= end] if step < fed else []
        ing.feed_lines(late + [x for k, x in enumerate(now) if k % 7])
        late = [x for k, x in enumerate(now) if k % 7 == 0]
        ing.flush(force=True)
        got = compute_range(conn, [end], 15, cache=cache)
        want = compute_range(conn, [end], 15)
        assert got.names == want.names
        np.testing.assert_array_equal(got.values, want.values, err_msg=f"step {step}")
        assert got.reasons == want.reasons, step
    assert sum(v is not None and not np.isnan(v) for v in want.values[0]) == 0  # the last: nothing in its window
    assert sum(len(t[4]["ts"]) for t in cache.tables.values()) == 0
    conn.close()
    ing.close()

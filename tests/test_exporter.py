"""ks-exporter and ks-alerts without Prometheus: names and units, histogram buckets, the
collector on a database, the alert sender against a local HTTP receiver."""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import re
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for
from kernelsight import alerts, db, exporter
from kernelsight.config import AlertsConfig
from kernelsight.features import catalog

NAME = re.compile(r"^kernelsight_[a-z0-9_]+$")


def test_every_feature_has_one_prometheus_name_in_base_units():
    names = {}
    for e in exporter.FEATURE_METRICS:
        f = catalog.BY_NAME[e.feature]
        assert NAME.match(e.metric), e.metric
        assert not e.metric.endswith("_total"), f"{e.metric}: _total is for counters; features are gauges"
        assert e.metric not in names, f"{e.feature} and {names.get(e.metric)} both map to {e.metric}"
        names[e.metric] = e.feature
        if f.unit == "%":
            assert e.metric.endswith("_ratio") and e.scale == 0.01
        elif f.unit in ("ms", "us", "s"):
            assert e.metric.endswith("_seconds") and e.scale == {"ms": 1e-3, "us": 1e-6, "s": 1.0}[f.unit]
        elif f.unit == "MiB":
            assert e.metric.endswith("_bytes") and e.scale == 1024 * 1024
        elif f.unit.endswith("/s") or f.unit.endswith("/min"):
            assert e.metric.endswith(("_per_second", "_iops")), e.metric
        # no feature keeps a non-base unit in its exported name
        assert not re.search(r"_(pct|ms|us|mb|sec|min|s)$", e.metric), e.metric
    assert len(names) == len(catalog.FEATURES)


@pytest.mark.parametrize("name,unit,want,scale", [
    ("memory_available_mb", "MiB", "kernelsight_memory_available_bytes", 1048576.0),
    ("memory_available_pct", "%", "kernelsight_memory_available_ratio", 0.01),
    ("disk_read_await_ms", "ms", "kernelsight_disk_read_await_seconds", 1e-3),
    ("syscall_latency_p95_us", "us", "kernelsight_syscall_latency_p95_seconds", 1e-6),
    ("memory_available_trend_mb_per_min", "MiB/min", "kernelsight_memory_available_trend_bytes_per_second",
     1048576.0 / 60),
    ("oom_kills_per_min", "kills/min", "kernelsight_oom_kills_per_second", 1 / 60),
    ("forks_per_sec", "forks/s", "kernelsight_forks_per_second", 1.0),
    ("disk_read_iops", "ios/s", "kernelsight_disk_read_iops", 1.0),
    ("tasks_total", "tasks", "kernelsight_tasks", 1.0),
])
def test_unit_mapping(name, unit, want, scale):
    f = catalog.Feature(name, "g", unit, "d", None)
    assert exporter.metric_name(f) == want
    assert math.isclose(exporter.conv_for(unit).scale, scale)


def test_a_time_feature_without_its_unit_suffix_is_refused():
    with pytest.raises(ValueError):
        exporter.metric_name(catalog.Feature("disk_read_await", "g", "ms", "d", None))


def test_bucket_bounds_are_the_kernel_log2_upper_bounds():
    le = exporter.bucket_bounds(1e6)
    assert len(le) == 32 and le[-1] == "+Inf"
    assert [float(x) for x in le[:3]] == [2e-6, 4e-6, 8e-6]  # bucket 0 = [0, 2) us, bucket 1 = [2, 4) ...
    assert float(le[30]) == 2 ** 31 / 1e6


def _db(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    data = tmp_path / "data"
    db.ensure_data_dir(data)
    return data, db.connect(db.db_path(data))


def _scrape(reg: CollectorRegistry) -> dict:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_collector_features_histograms_and_observations(tmp_path):
    from kernelsight.agent.store import ensure_tables

    data, conn = _db(tmp_path)
    ensure_tables(conn)
    from kernelsight.features.store import ensure_table

    ensure_table(conn)
    conn.execute("INSERT INTO features(ts, window_s, computed_ts, reasons, memory_available_mb, memory_available_pct) "
                 "VALUES (?,?,?,?,?,?)", (time.time_ns(), 15.0, time.time_ns(), "{}", 1500.5, 42.0))
    reg, col = exporter.registry_for(data)
    first = _scrape(reg)  # sets the histogram cursors: rows present now are not counted
    assert first[("kernelsight_memory_available_bytes", ())] == 1500.5 * 1048576
    assert first[("kernelsight_memory_available_ratio", ())] == 0.42
    assert ("kernelsight_cpu_utilization_ratio", ()) not in first  # null: absent, never 0
    # two rows of block I/O: 3 requests in bucket 3 ([8, 16) us), 1 in bucket 10, 1 in the last one
    h1, h2 = [0, 0, 0, 3], [0] * 32
    h2[10], h2[31] = 1, 1
    for h, avg_ms, n in ((h1, 0.01, 3), (h2, 1.0, 2)):
        conn.execute("INSERT INTO io_latency_stats(ts, device, op, count, avg_ms, hist_log2_us) VALUES (?,?,?,?,?,?)",
                     (time.time_ns(), "vda", "write", n, avg_ms, json.dumps(h)))
    conn.execute("INSERT INTO observations(rule, key, label, status, severity, signal_category, observation_type, "
                 "persistence, first_seen, last_seen, updates, summary, observation, processes) "
                 "VALUES ('r','k','Process Explosion','open','high','load','symptom','transient',1,1,1,'s','{}','[]')")
    conn.commit()
    got = _scrape(reg)
    lab = (("device", "vda"), ("op", "write"))
    b = {le: got[("kernelsight_block_io_latency_seconds_bucket", tuple(sorted((*lab, ("le", le)))))]
         for le in ("8e-06", "1.6e-05", "0.002048", "2147.483648", "+Inf")}
    assert b == {"8e-06": 0, "1.6e-05": 3, "0.002048": 4, "2147.483648": 4, "+Inf": 5}
    assert got[("kernelsight_block_io_latency_seconds_count", lab)] == 5
    assert math.isclose(got[("kernelsight_block_io_latency_seconds_sum", lab)], (0.01 * 3 + 1.0 * 2) / 1000)
    key = (("category", "load"), ("label", "Process Explosion"), ("severity", "high"))
    assert got[("kernelsight_observation_open", key)] == 1
    assert got[("kernelsight_exporter_database_up", ())] == 1
    conn.close()


def test_alertname():
    assert alerts.alertname("Process Explosion") == "ProcessExplosion"
    assert alerts.alertname("OOM Kill") == "OOMKill"
    assert alerts.alertname("telemetry-loss") == "TelemetryLoss"


class _Hook(http.server.BaseHTTPRequestHandler):
    got: list
    status = 200

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((self.path, json.loads(body)))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def hook():
    _Hook.got, _Hook.status = [], 200
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, _Hook
    srv.shutdown()
    srv.server_close()


def _obs_db(tmp_path):
    from kernelsight.agent.store import ObservationStore

    data, conn = _db(tmp_path)
    store = ObservationStore(conn, data / "observations.jsonl")
    return data, conn, store


def _obs(sev="high", ts=None):
    t = int(ts or time.time())
    return {"timestamp": t, "observation_type": "symptom", "severity": sev, "signal_category": "load",
            "summary": "Processes being created at 900/s", "details": {"first_seen": t - 5},
            "reasoning_hints": ["Fork bomb or runaway spawning", "Identify the top spawners"]}


@contextlib.contextmanager
def running_sender(data, cfg, store, conn):
    """An alerts.Sender on its own thread, with one Process Explosion observation opened."""
    stop = threading.Event()
    sender = alerts.Sender(data, cfg, host="h1")
    t = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    t.start()
    try:
        o = _obs()
        oid = store.insert("process_explosion", "k", "Process Explosion", o, "transient", "high", [])
        conn.commit()
        store.stream("opened", oid, o)
        yield sender, oid, o
    finally:
        stop.set()
        t.join(timeout=10)


def test_sender_fires_changes_and_resolves(tmp_path, hook):
    srv, h = hook
    data, conn, store = _obs_db(tmp_path)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    cfg = replace(AlertsConfig(), alertmanager_url=url + "/am", webhook_url=url + "/hook", poll_interval_s=0.05,
                  backoff_start_s=0.05)
    with running_sender(data, cfg, store, conn) as (sender, oid, o):

        def posted(path, pred):
            return [a for p, body in h.got if p.startswith(path)
                    for a in (body if isinstance(body, list) else body["alerts"]) if pred(a)]

        fired = wait_for(lambda: posted("/am/api/v2/alerts", lambda a: a["labels"]["severity"] == "high"),
                         what="the firing alert")[0]
        assert fired["labels"] == {"alertname": "ProcessExplosion", "host": "h1", "label": "Process Explosion",
                                   "severity": "high", "category": "load", "observation_id": str(oid)}
        assert fired["annotations"]["report"] == f"ks agent explain {oid}"
        assert "Identify the top spawners" in fired["annotations"]["hints"]
        assert alerts._ends(fired) > time.time()
        # severity up: the high one ends, a critical one fires
        o2 = _obs("critical")
        store.update(oid, o2, "short-lived", "critical", "open", o2["timestamp"], None, 2, [])
        conn.commit()
        store.stream("changed", oid, o2)
        wait_for(lambda: posted("/am/api/v2/alerts", lambda a: a["labels"]["severity"] == "critical"),
                 what="the critical alert")
        assert posted("/am/api/v2/alerts", lambda a: a["labels"]["severity"] == "high"
                      and alerts._ends(a) <= time.time())
        # closed: resolved, endsAt = closed_at
        closed_at = int(time.time())
        store.update(oid, o2, "short-lived", "critical", "closed", closed_at, closed_at, 3, [])
        conn.commit()
        store.stream("closed", oid, o2)
        res = wait_for(lambda: posted("/hook", lambda a: a["status"] == "resolved"
                                      and a["labels"]["severity"] == "critical"), what="the resolved webhook")
        assert alerts._ends(res[0]) == closed_at
        wait_for(lambda: not sender.firing, what="nothing firing")
    st = alerts.read_status(data)
    assert st["receivers"]["alertmanager"]["sent_alerts"] >= 3 and st["receivers"]["webhook"]["failed_attempts"] == 0
    conn.close()


def test_sender_retries_with_backoff_then_counts_the_drop(tmp_path, hook):
    srv, h = hook
    h.status = 503
    data, conn, store = _obs_db(tmp_path)
    cfg = replace(AlertsConfig(), alertmanager_url=f"http://127.0.0.1:{srv.server_address[1]}", max_attempts=3,
                  backoff_start_s=0.05, poll_interval_s=0.05, resend_interval_s=0.5)
    with running_sender(data, cfg, store, conn) as (sender, oid, o):
        wait_for(lambda: sender.receivers[0].snapshot()["dropped_batches"] >= 1, what="the batch dropped")
        snap = sender.receivers[0].snapshot()
        assert snap["failed_attempts"] >= 3 and "HTTP 503" in snap["last_error"] and snap["sent_batches"] == 0
        # the receiver comes back: a resend delivers the firing alert
        h.status = 200
        wait_for(lambda: sender.receivers[0].snapshot()["sent_batches"] >= 1, what="delivered after recovery")
    conn.close()


def test_sender_follows_a_rotated_stream_from_its_saved_offset(tmp_path, hook):
    from kernelsight.log import rotate_if_needed

    srv, h = hook
    data, conn, store = _obs_db(tmp_path)
    cfg = replace(AlertsConfig(), webhook_url=f"http://127.0.0.1:{srv.server_address[1]}/hook")
    s = alerts.Sender(data, cfg, host="h1")
    assert s._lines() == []  # running before the agent's first line: that line is news, not history
    ids = []
    for i in range(3):
        o = _obs()
        ids.append(store.insert("r", f"k{i}", f"Rule {i}", o, "transient", "high", []))
        conn.commit()
        if i == 1:
            with contextlib.closing(db.connect_readonly(db.db_path(data))) as ro:
                s.follow(ro, time.time())  # reads line 0
            s.save()
            rotate_if_needed(data / "observations.jsonl", 1, 3)  # copy then truncate, as the agent's rotation
        store.stream("opened", ids[-1], o)
    s2 = alerts.Sender(data, cfg, host="h1")  # a restart: offset from alerts.json
    with contextlib.closing(db.connect_readonly(db.db_path(data))) as ro:
        s2.follow(ro, time.time())
    assert sorted(s2.firing) == [str(i) for i in ids]
    conn.close()

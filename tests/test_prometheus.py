"""The real thing: Debian's prometheus and prometheus-alertmanager against `ks run`.

One stack for the module: an Alertmanager (temp config and storage, free port,
a webhook receiver in this process), `ks run` with ks-exporter on a free port
and ks-alerts pointed at that Alertmanager (and at the same local receiver as
its generic webhook), and a Prometheus scraping the exporter every second with
deploy/prometheus/kernelsight.rules.yml loaded.  Asserts go through the
Prometheus and Alertmanager HTTP APIs; waits are generous liveness bounds.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from conftest import REPO, query, tool, wait_for
from prom_util import ALERTMANAGER, PROMETHEUS, PROMTOOL, Stack, free_port, get_json, ready

RULES = REPO / "deploy" / "prometheus" / "kernelsight.rules.yml"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
needs_stack = pytest.mark.skipif(
    os.geteuid() != 0 or PROMETHEUS is None or ALERTMANAGER is None or tool("ks-scraper") is None,
    reason="needs root (eBPF tracers), ks-scraper built, and the Debian packages prometheus and "
           "prometheus-alertmanager (make apt)")


class Hook(http.server.BaseHTTPRequestHandler):
    """Alertmanager's webhook notifications (/am) and ks-alerts' own webhook (/ks)."""

    got: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((self.path, time.time(), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("promstack")
    st = Stack(tmp)
    am_port = free_port()
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hook.server_address[1]}"
    st.am = f"http://127.0.0.1:{am_port}"
    try:
        (tmp / "am").mkdir()
        (tmp / "alertmanager.yml").write_text(f"""
route:
  receiver: hook
  group_by: [alertname, observation_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook_url}/am
        send_resolved: true
""")
        st.spawn("alertmanager", [ALERTMANAGER, f"--config.file={tmp / 'alertmanager.yml'}",
                                  f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                                  "--cluster.listen-address="])
        wait_for(lambda: ready(f"{st.am}/-/ready"), 60, 0.2, "alertmanager ready")

        st.start_pipeline(config=f"""
[alerts]
alertmanager_url = "{st.am}"
webhook_url = "{hook_url}/ks"
resend_interval_s = 10.0
""")
        st.start_prometheus(rules=RULES)
        yield st
    finally:
        st.stop()
        hook.shutdown()
        hook.server_close()


@needs_promtool
def test_promtool_accepts_the_rules_file():
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def _feature_at(db, ts_s: float, column: str):
    rows = query(db, f"SELECT ts, {column} FROM features WHERE ts BETWEEN ? AND ?",
                 (int((ts_s - 0.001) * 1e9), int((ts_s + 0.001) * 1e9)))
    return rows[0] if rows else None


@needs_stack
@pytest.mark.bpf
@pytest.mark.slow
def test_memory_available_in_prometheus_is_the_databases_latest_feature(stack):
    def sample():
        # one instant query: both series come from the same scrape
        r = stack.promql('{__name__=~"kernelsight_memory_available_bytes|kernelsight_features_timestamp_seconds"}')
        got = {s["metric"]["__name__"]: float(s["value"][1]) for s in r["data"]["result"]}
        return got if len(got) == 2 else None

    got = wait_for(sample, 120, 0.5, "memory available in prometheus")
    ts = got["kernelsight_features_timestamp_seconds"]
    row = _feature_at(stack.db, ts, "memory_available_mb")
    assert row is not None, f"no feature row at {ts}"
    assert math.isclose(got["kernelsight_memory_available_bytes"], row[1] * 1024 * 1024, rel_tol=1e-12)
    # within one scrape of the database: Prometheus' row is the newest or, if one came since, the one before
    newest = [r[0] for r in query(stack.db, "SELECT ts FROM features ORDER BY ts DESC LIMIT 2")]
    assert row[0] in newest
    print(f"\nmemory available: prometheus {got['kernelsight_memory_available_bytes']:.0f} B = "
          f"database {row[1]:.3f} MiB at feature ts {ts:.3f}")


@needs_stack
@pytest.mark.bpf
@pytest.mark.slow
def test_block_io_histogram_quantile_agrees_with_the_pipelines_p99(stack, tmp_path):
    """Between two of Prometheus' own scrapes, the exported block-write buckets grew by exactly the
    counts of a run of stored io_latency_stats rows, and Prometheus' histogram_quantile over that
    growth equals the pipeline's quantile (features.engine.hist_quantile) over the same counts.
    Both sides see the same counts, so this does not depend on what the kernel timed."""
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed (make apt)")
    from kernelsight.features.engine import hist_quantile
    metric = 'kernelsight_block_io_latency_seconds_bucket{op="write"}'
    # Steady direct writes to a file on the root disk, rate-limited (the machine is shared).
    fio = subprocess.Popen(["fio", "--name=ks-prom", f"--filename={tmp_path / 'fio.dat'}", "--rw=randwrite",
                            "--bs=4k", "--size=32m", "--direct=1", "--ioengine=psync", "--time_based",
                            "--runtime=30", "--rate_iops=400", "--output=/dev/null"])
    try:
        time.sleep(20)
        # raw samples of every write bucket series over the last 15 s, at Prometheus' scrape times
        series = stack.promql(f"{metric}[15s]")["data"]["result"]
    finally:
        fio.wait(timeout=120)
    assert series, f"no {metric} samples in prometheus"
    stamps = set.intersection(*({float(t) for t, _ in s["values"]} for s in series))
    assert len(stamps) >= 2, "fewer than two scrapes common to every series"
    t1, t2 = min(stamps), max(stamps)
    le_s = sorted({s["metric"]["le"] for s in series}, key=float)
    cum = dict.fromkeys(le_s, 0.0)
    for s in series:
        v = {float(t): float(x) for t, x in s["values"]}
        cum[s["metric"]["le"]] += v[t2] - v[t1]
    counts = np.diff([0.0] + [cum[le] for le in le_s])  # per bucket, the kernel's log2 buckets in order
    assert len(counts) == 32 and counts.sum() > 100, counts  # fio alone did ~400 writes a second

    # The growth is exactly the summed buckets of consecutive stored write rows (the exporter's cursor).
    rows = query(stack.db, "SELECT id, hist_log2_us FROM io_latency_stats WHERE op='write' "
                           "AND hist_log2_us IS NOT NULL ORDER BY id")
    prefix = np.zeros((len(rows) + 1, 32))
    for k, (_, text) in enumerate(rows):
        h = json.loads(text)
        prefix[k + 1] = prefix[k]
        prefix[k + 1, :min(len(h), 32)] += h[:32]
        prefix[k + 1, 31] += sum(h[32:])
    seen = {tuple(p): k for k, p in enumerate(prefix)}
    runs = [(seen[tuple(p - counts)], b) for b, p in enumerate(prefix) if tuple(p - counts) in seen]
    assert runs, "the exported growth is not the sum of any run of stored rows"

    pipe_s = float(hist_quantile(counts[None, :], 0.99)[0]) / 1e6
    expr = f"histogram_quantile(0.99, sum by (le) ({metric} @ {t2!r} - {metric} @ {t1!r}))"
    prom_s = stack.scalar(expr)
    print(f"\nblock write p99 between scrapes {t2 - t1:.0f} s apart ({int(counts.sum())} writes, rows "
          f"{rows[runs[0][0]][0]}..{rows[runs[0][1] - 1][0]}): prometheus {prom_s * 1e3:.4f} ms, "
          f"pipeline {pipe_s * 1e3:.4f} ms")
    assert prom_s == pytest.approx(pipe_s, rel=1e-9)

@needs_stack
@pytest.mark.slow
def test_every_rule_expression_runs_on_prometheus(stack):
    """Prometheus loaded the rules file: each rule's expression is run through the query API
    (a vector, empty allowed) and Prometheus' own evaluation of each reports health ok."""
    n = int(subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
            .stdout.split("SUCCESS: ")[1].split()[0])

    def evaluated():
        got = [x for g in get_json(f"{stack.prom}/api/v1/rules")["data"]["groups"] for x in g["rules"]]
        return len(got) == n and all(x["health"] == "ok" and x.get("lastEvaluation", "").startswith("20")
                                     for x in got) and got
    got = wait_for(evaluated, 60, 0.5, "every rule evaluated with health ok")
    for r in got:
        res = stack.promql(r["query"])
        assert res["status"] == "success" and res["data"]["resultType"] == "vector", (r["name"], res)
    print(f"\n{len(got)} rules evaluated ok: " + ", ".join(x["name"] for x in got))


@needs_stack
@pytest.mark.bpf
@pytest.mark.slow
def test_fork_storm_fires_in_alertmanager_and_resolves_when_the_observation_closes(stack):
    t0 = time.time()
    storm = subprocess.Popen([sys.executable, "-m", "kernelsight.scenarios.forkstorm", "--seconds", "30",
                              "--rate", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        obs = wait_for(lambda: query(stack.db, "SELECT id, first_seen FROM observations WHERE label=? AND "
                                               "first_seen >= ? ORDER BY id LIMIT 1",
                                     ("Process Explosion", int(t0) - 15)), 120, 0.5, "Process Explosion observed")
        oid = obs[0][0]
        t_open = time.time()
        firing = wait_for(lambda: [a for a in stack.am_alerts(alertname="ProcessExplosion", observation_id=oid)
                                   if a["status"]["state"] == "active"], 120, 0.5, "alert firing in alertmanager")
        t_firing = time.time()
        a = firing[0]
        assert a["labels"]["label"] == "Process Explosion" and a["labels"]["category"] == "load"
        assert a["labels"]["host"] == socket.gethostname() and a["labels"]["severity"] in ("high", "critical")
        assert a["annotations"]["report"] == f"ks agent explain {oid}" and a["annotations"]["summary"]
        # Prometheus sees it too, through the exporter
        wait_for(lambda: (stack.scalar('sum(kernelsight_observation_open{label="Process Explosion"})') or 0) >= 1,
                 60, 0.5, "kernelsight_observation_open in prometheus")
    finally:
        storm.wait(timeout=120)
    closed = wait_for(lambda: query(stack.db, "SELECT closed_at FROM observations WHERE id=? AND status='closed'",
                                    (oid,)), 180, 0.5, "the observation closed")
    t_closed_seen = time.time()
    wait_for(lambda: not [a for a in stack.am_alerts(alertname="ProcessExplosion", observation_id=oid)
                          if a["status"]["state"] == "active"], 120, 0.5, "alert no longer active")
    # Alertmanager's own notification says resolved (send_resolved), for this observation
    note = wait_for(lambda: [(t, n) for p, t, n in Hook.got if p == "/am" and n["status"] == "resolved"
                             and any(x["labels"].get("observation_id") == str(oid) for x in n["alerts"])],
                    120, 0.5, "alertmanager's resolved notification")
    fired_note = [t for p, t, n in Hook.got if p == "/am" and n["status"] == "firing"
                  and any(x["labels"].get("observation_id") == str(oid) for x in n["alerts"])]
    assert fired_note, "alertmanager never notified the firing alert"
    # ks-alerts' generic webhook got both states as well
    ks = [x["status"] for p, _, n in Hook.got if p == "/ks" for x in n["alerts"]
          if x["labels"]["observation_id"] == str(oid)]
    assert "firing" in ks and "resolved" in ks
    print(f"\nProcess Explosion #{oid}: observation seen {t_open - t0:.1f} s after the storm began; "
          f"alertmanager active {t_firing - t_open:.1f} s after the observation was seen "
          f"(first_seen -> active {t_firing - obs[0][1]:.1f} s); closed_at -> resolved notification "
          f"{note[0][0] - closed[0][0]:.1f} s (closed seen by the test at +{t_closed_seen - closed[0][0]:.1f} s)")
    st = json.loads(subprocess.run([tool("ks"), "status", "--json", "--data-dir", str(stack.data)],
                                   capture_output=True, text=True, check=True).stdout)
    am = st["alerts"]["receivers"]["alertmanager"]
    assert am["sent_alerts"] >= 2 and am["dropped_batches"] == 0


@needs_stack
@pytest.mark.slow
def test_series_budget_and_exporter_cost(stack):
    wait_for(lambda: (stack.scalar('count(kernelsight_exporter_scrapes_total)') or 0) == 1, 30, 0.5, "scrapes")
    time.sleep(31)  # a 30 s window of 1 s scrapes
    # What the product serves, read directly: the series budget of one scrape.
    with urllib.request.urlopen(f"{stack.exporter}/metrics", timeout=60) as r:
        served = [ln for ln in r.read().decode().splitlines() if ln and not ln.startswith("#")]
    assert len(served) > 100
    # Prometheus' view of the same, as information: on a loaded machine a 1 s scrape can time out,
    # and then some of these are missing (None) rather than wrong.
    series = stack.scalar('scrape_samples_scraped{job="kernelsight"}')
    per_s = stack.scalar('sum_over_time(scrape_samples_scraped{job="kernelsight"}[30s]) / 30')
    scrapes = stack.scalar('increase(kernelsight_exporter_scrapes_total[30s])')
    cpu = stack.scalar('increase(process_cpu_seconds_total{job="kernelsight"}[30s])')
    dur = stack.scalar('avg_over_time(scrape_duration_seconds{job="kernelsight"}[30s])')
    collect = stack.scalar('avg_over_time(kernelsight_exporter_collect_duration_seconds[30s])')

    def fmt(v, scale=1.0, spec=".1f"):
        return "n/a" if v is None else format(v * scale, spec)

    print(f"\nseries budget: {len(served)} series served, {fmt(series, spec='.0f')} scraped; at a 1 s scrape "
          f"{fmt(per_s, spec='.0f')} samples/s; exporter CPU "
          f"{fmt(cpu / scrapes if cpu is not None and scrapes else None, 1000)} ms per scrape "
          f"({fmt(cpu, 100 / 30)} % of one core); scrape duration {fmt(dur, 1000)} ms, collect {fmt(collect, 1000)} ms")

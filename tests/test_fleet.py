"""`ks fleet` against a real Prometheus fed by remote-write (ks-remote-write's own encoder).

Six hosts' last 30 minutes are written at a 15 s step: web-5 stopped 10 minutes ago
(silent); web-2's CPU utilisation jumps at the end (deviates most); Connection Churning
opens on web-0, web-1 and web-3 within 40 s of each other (one coincidence of three
hosts), and on web-4 twenty minutes earlier (not part of it); db-0 has Memory Pressure.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
import urllib.request

import orjson
import pytest

from conftest import tool, wait_for
from prom_util import PROMETHEUS, Stack
from test_remote_write import Prom

from kernelsight import fleet
from kernelsight import remote_write as rw

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (make apt)")

STEP = 15.0
SPAN = 1800.0


class S:
    def __init__(self, name, labels, value, timestamp):
        self.name, self.labels, self.value, self.timestamp = name, labels, value, timestamp


class Fam:
    def __init__(self, samples):
        self.samples = samples


def _history(host: str, now: float) -> list[S]:
    rnd = random.Random(host)
    out = []
    churn_at = {"web-0": now - 300, "web-1": now - 280, "web-3": now - 260, "web-4": now - 1500}.get(host)
    t = now - SPAN
    while t <= now - 1:
        if host == "web-5" and t > now - 600:
            break
        out.append(S("kernelsight_exporter_database_up", {}, 1.0, t))
        cpu = 0.2 + rnd.uniform(-0.02, 0.02) + (0.7 if host == "web-2" and t > now - 45 else 0.0)
        out.append(S("kernelsight_cpu_utilization_ratio", {}, cpu, t))
        out.append(S("kernelsight_memory_available_ratio", {}, 0.5 + rnd.uniform(-0.02, 0.02), t))
        if churn_at is not None and t >= churn_at and not (host == "web-4" and t > now - 1200):
            out.append(S("kernelsight_observation_open", {"label": "Connection Churning", "severity": "medium",
                                                          "category": "network"}, 1.0, t))
        if host == "db-0" and t > now - 200:
            out.append(S("kernelsight_observation_open", {"label": "Memory Pressure", "severity": "high",
                                                          "category": "memory"}, 1.0, t))
        t += STEP
    return out


def _push(url: str, host: str, samples: list[S]) -> None:
    body, _ = rw.encode([Fam(samples)], {"host": host, "dc": "eu1"}, 0)
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - our own local server
        assert r.status // 100 == 2


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    st = Stack(tmp)
    p = Prom(st)
    try:
        p.start()
        now = time.time()
        for h in ("web-0", "web-1", "web-2", "web-3", "web-4", "web-5", "db-0"):
            _push(p.write_url, h, _history(h, now))
        wait_for(lambda: len(st.promql('kernelsight_exporter_database_up[1h]')["data"]["result"]) == 7, 30, 0.2,
                 "history in prometheus")
        yield p, now
    finally:
        st.stop()


def test_fleet_report(prom):
    p, now = prom
    rep = fleet.report(fleet.Prom(p.url), now)
    by = {h["host"]: h for h in rep["hosts"]}
    assert set(by) == {"web-0", "web-1", "web-2", "web-3", "web-4", "web-5", "db-0"}
    assert [h for h in by if not by[h]["reporting"]] == ["web-5"]
    assert by["web-0"]["labels"] == {"dc": "eu1"}
    assert {(o["host"], o["label"]) for o in rep["open"]} == {
        ("web-0", "Connection Churning"), ("web-1", "Connection Churning"), ("web-3", "Connection Churning"),
        ("db-0", "Memory Pressure")}
    assert rep["deviating"][0]["host"] == "web-2"
    assert rep["deviating"][0]["feature"] == "kernelsight_cpu_utilization_ratio"
    co = {c["label"]: c for c in rep["coincidences"]}
    assert set(co) == {"Connection Churning"}
    assert co["Connection Churning"]["hosts"] == ["web-0", "web-1", "web-3"]
    assert co["Connection Churning"]["spread_s"] <= 60
    text = fleet.render(rep)
    assert "Connection Churning on 3 hosts within 60 s" in text
    assert "SILENT web-5" in text


def test_ks_fleet_cli(prom):
    p, _ = prom
    out = subprocess.run([tool("ks"), "fleet", "--prometheus", p.url, "--json"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    rep = orjson.loads(out.stdout)
    assert len(rep["hosts"]) == 7
    bad = subprocess.run([tool("ks"), "fleet", "--prometheus", "http://127.0.0.1:1"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "ks fleet:" in bad.stderr


def test_run_without_scraper_starts_no_scraper(monkeypatch, tmp_path):
    from kernelsight.children import RunOptions, default_children

    monkeypatch.setenv("KS_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    names = {s.name for s in default_children(RunOptions(fifo="x", tracers=False, collectors=False, scraper=False))}
    assert "ks-scraper" not in names and "ks-ingest" in names
    names = {s.name for s in default_children(RunOptions(fifo="x", tracers=False, collectors=False))}
    assert "ks-scraper" in names


def test_ks_top_fleet_panel(prom, tmp_path):
    from kernelsight import db
    from kernelsight.agent.store import ensure_tables

    p, _ = prom
    d = tmp_path / "data"
    conn = db.connect(d / db.DB_NAME)
    ensure_tables(conn)
    conn.close()
    out = subprocess.run([tool("ks"), "top", "--once", "--width", "200", "--height", "60", "--data-dir", str(d),
                          "--fleet", p.url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fleet (7 hosts, 1 silent, 4 with open observations)" in out.stdout
    assert "Connection Churning on 3 hosts within 60 s: web-0, web-1, web-3" in out.stdout
    assert "silent: web-5" in out.stdout and "web-2 |z|" in out.stdout

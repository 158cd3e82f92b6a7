"""ks-remote-write against a real Prometheus (Debian's, --web.enable-remote-write-receiver).

Unit part: the WriteRequest round-trips through protobuf + snappy; the queue's bound
drops the oldest batches and counts them; a restart continues the queue and the
counters.  Real part: `ks run` with [remote_write] url set starts ks-remote-write,
whose series (host label, config labels) are queryable in Prometheus; Prometheus
stopped and started again: the queue drains and every sample sent is in Prometheus
(counted with count_over_time).  Waits are liveness bounds, not timing assertions.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time

import pytest

from conftest import tool, wait_for
from prom_util import PROMETHEUS, Stack, free_port, ready

from kernelsight import remote_write as rw
from kernelsight.config import RemoteWriteConfig

needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (make apt)")


class Fam:
    def __init__(self, samples):
        self.samples = samples


class S:
    def __init__(self, name, labels, value, timestamp=None):
        self.name, self.labels, self.value, self.timestamp = name, labels, value, timestamp


def test_encode_round_trip():
    fams = [Fam([S("a_total", {"x": "1"}, 3.0), S("a_created", {}, 1.0), S("b", {}, 0.5, 12.5)])]
    body, n = rw.encode(fams, {"host": "h1", "dc": "eu"}, 1000)
    assert n == 2
    req = rw.decode(body)
    got = {tuple((lab.name, lab.value) for lab in ts.labels): [(s.value, s.timestamp) for s in ts.samples]
           for ts in req.timeseries}
    assert got == {(("__name__", "a_total"), ("dc", "eu"), ("host", "h1"), ("x", "1")): [(3.0, 1000)],
                   (("__name__", "b"), ("dc", "eu"), ("host", "h1")): [(0.5, 12500)]}


def test_parse_labels():
    assert rw.parse_labels(" dc=eu1, role=db ,") == {"dc": "eu1", "role": "db"}
    for bad in ("dc", "1x=2", "__name__=x"):
        with pytest.raises(ValueError):
            rw.parse_labels(bad)


def _cfg(url: str, **kw) -> RemoteWriteConfig:
    return RemoteWriteConfig(**{"url": url, "hostname": "testhost", "labels": "dc=t1", "timeout_s": 5.0, **kw})


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/api/v1/write"  # nothing listens there


def test_bound_drops_oldest_and_counts(tmp_path):
    w = rw.RemoteWriter(tmp_path, _cfg(_dead_url(), queue_max_mb=0.02))
    per = w.collect_once()
    while w.stats["samples_dropped"] == 0:
        w.collect_once()
        assert w.queue.disk_bytes() <= w.queue.max_bytes
    st = w.state()
    assert st["segments_dropped"] >= 1 and st["samples_dropped"] >= per
    assert st["samples_queued"] == st["queue_samples"] + st["samples_dropped"]
    assert w.send_one() is False and w.stats["failed_attempts"] == 1
    q = tmp_path / rw.QUEUE_DIR
    assert stat.S_IMODE(q.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in q.iterdir())
    w.save()
    assert stat.S_IMODE((tmp_path / "run" / rw.STATUS_NAME).stat().st_mode) == 0o600


# ---- a real Prometheus -----------------------------------------------------------------------

class Prom:
    """A Prometheus receiving remote-write only (no scrape targets), restartable on its port and storage."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = f"{self.url}/api/v1/write"
        (stack.tmp / "rwprom").mkdir()
        (stack.tmp / "rwprom.yml").write_text("global:\n  scrape_interval: 15s\n")
        self.proc = None

    def start(self):
        self.proc = self.stack.spawn("rwprom", [
            PROMETHEUS, f"--config.file={self.stack.tmp / 'rwprom.yml'}", "--web.enable-remote-write-receiver",
            f"--storage.tsdb.path={self.stack.tmp / 'rwprom'}", f"--web.listen-address=127.0.0.1:{self.port}"])
        self.stack.prom = self.url
        wait_for(lambda: ready(f"{self.url}/-/ready"), 60, 0.2, "prometheus ready")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def samples_in_prometheus(st: Stack, host: str) -> int:
    """Every sample Prometheus holds for the host (a range selector returns them all, counted here:
    count_over_time over many metric names would collide once __name__ is dropped)."""
    res = st.promql(f'{{host="{host}"}}[1h]')["data"]["result"]
    return sum(len(r["values"]) for r in res)


@needs_prometheus
def test_restart_keeps_queue_and_counters(tmp_path):
    st = Stack(tmp_path)
    prom = Prom(st)
    try:
        a = rw.RemoteWriter(tmp_path / "data", _cfg(_dead_url(), hostname="restarthost"))
        for _ in range(3):
            a.collect_once()
        assert a.send_one() is False
        a.save()
        queued = a.stats["samples_queued"]
        prom.start()
        b = rw.RemoteWriter(tmp_path / "data", _cfg(prom.write_url, hostname="restarthost"))
        assert b.stats["samples_queued"] == queued and b.stats["failed_attempts"] == 1
        deadline = time.monotonic() + 30
        while (sent := b.send_one()) is not None and time.monotonic() < deadline:
            if sent is False:  # a transient failure (the receiver just started): retried, as the daemon does
                time.sleep(0.5)
        rejects = {k: v for k, v in b.stats.items() if "reject" in k or "error" in k}
        assert b.stats["samples_sent"] == queued and b.state()["queue_segments"] == 0, rejects
        wait_for(lambda: samples_in_prometheus(st, "restarthost") == queued, 30, 0.5,
                 "every queued sample in prometheus")
    finally:
        st.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if PROMETHEUS is None or tool("ks-scraper") is None:
        pytest.skip("needs prometheus (make apt) and ks-scraper built (make build)")
    tmp = tmp_path_factory.mktemp("rwstack")
    st = Stack(tmp)
    prom = Prom(st)
    try:
        prom.start()
        st.start_pipeline(f'[remote_write]\nurl = "{prom.write_url}"\ninterval_s = 0.5\nhostname = "livehost"\n'
                          'labels = "dc=test1,role=ci"\nbackoff_start_s = 0.2\nbackoff_max_s = 1.0\n',
                          args=("--no-collectors", "--no-tracers"))
        yield st, prom
    finally:
        st.stop()


def _status(st: Stack) -> dict:
    return rw.read_status(st.data) or {}


@needs_prometheus
def test_series_queryable_with_host_labels(live):
    st, _ = live
    wait_for(lambda: st.scalar('kernelsight_exporter_database_up{host="livehost",dc="test1",role="ci"}') == 1,
             120, 0.5, "remote-written series in prometheus")
    names = st.promql('count by (__name__) ({host="livehost"})')["data"]["result"]
    assert len(names) >= 10 and {"process_cpu_seconds_total", "kernelsight_exporter_scrapes_total"} <= {
        r["metric"]["__name__"] for r in names}
    out = subprocess.run([tool("ks"), "status", "--data-dir", str(st.data)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "KS_DATA_DIR": str(st.data)})
    assert "remote-write -> " in out.stdout, out.stdout + out.stderr


@needs_prometheus
def test_outage_then_drain_loses_nothing(live):
    st, prom = live
    wait_for(lambda: _status(st).get("samples_sent", 0) > 0, 120, 0.5, "first samples sent")
    prom.stop()
    before = _status(st).get("failed_attempts", 0)
    wait_for(lambda: _status(st).get("failed_attempts", 0) > before and _status(st).get("queue_segments", 0) >= 5,
             120, 0.5, "batches queued while the receiver is down")
    prom.start()
    wait_for(lambda: _status(st).get("queue_segments", 99) <= 1 and _status(st).get("failed_attempts", 0) > before,
             120, 0.5, "queue drained")
    # stop ks run: the last counters are saved; what it sent is all in Prometheus
    ks = next(p for p in st.procs if p.args[1:2] == ["run"])
    ks.send_signal(signal.SIGTERM)
    ks.wait(timeout=120)
    s = _status(st)
    assert s["samples_dropped"] == 0 and s["samples_rejected"] == 0
    assert s["samples_queued"] == s["samples_sent"] + s["queue_samples"]
    assert s["queue_bytes"] <= s["queue_max_bytes"]
    wait_for(lambda: samples_in_prometheus(st, "livehost") == s["samples_sent"], 60, 0.5,
             "every sent sample in prometheus")


def test_threads_do_not_leak():
    assert not [t for t in threading.enumerate() if t.name == "remote-write-send"]

"""ks-exporter: the pipeline's state as Prometheus metrics on /metrics.

One process (started by `ks run`, address in [exporter] of the config file,
default 127.0.0.1:9863) serving one custom collector.  Every scrape opens the
database read-only and runs cheap queries only (the latest row of a table by
its primary key, rows newer than a cursor, open observations by an index):

* every feature of the latest `features` row as a gauge, named
  kernelsight_<feature> with the unit turned into Prometheus' base unit and
  suffix (UNITS below, derived from the catalog's units: % -> _ratio 0-1,
  ms/us/s -> _seconds, MiB -> _bytes, .../s -> _per_second; `_total` only on
  counters).  A null feature is absent, never 0.
* the eBPF log2 histograms as Prometheus histograms (block I/O latency per
  device and op, syscall latency over all syscalls, run-queue latency and
  timeslice): running totals kept by the exporter.  Each scrape adds the rows
  stored since the last one (rows with id > cursor), so `_bucket`, `_count`
  and `_sum` are real counters; the exporter starts counting from the rows
  present at its first scrape (a restart is a counter reset, which rate() and
  increase() handle).  Kernel bucket i holds [2^i, 2^(i+1)) (bucket 0 also 0,
  the last everything above): le = 2^(i+1) of the unit in seconds for every
  bucket but the last, which is +Inf; the lower bound Prometheus interpolates
  from is the previous le (0 for the first), exactly the pipeline's rule, so
  histogram_quantile(q, sum by (le) (rate(..._bucket[W]))) is the pipeline's
  p-quantile over the same W.
* the pipeline's own counters: ks-ingest's per-type received/stored/rejected
  (pipeline_stats) and per producer written/stored/rejected/dropped by cause
  (kernelsight.accounting.account, gc=False, at most every ACCOUNTING_EVERY_S);
* open observations (kernelsight_observation_open{label,severity,category})
  and the latest OOM forecast;
* ks-alerts' delivery counters (DATA_DIR/run/alerts.json) when it runs.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import db
from .features import catalog

PREFIX = "kernelsight_"
STATUS_NAME = "exporter.json"  # in DATA_DIR/run: where we listen, or why we cannot
SERVE_POLL_S = 2.0  # how soon a stop is seen; a scrape is answered at once
MIB = 1024.0 * 1024.0
# The producers' line accounting is reconciled at most this often (it reads every producer's
# counters file; producers report every few seconds): scrapes in between reuse the last result.
ACCOUNTING_EVERY_S = 5.0
MAX_ROWS_PER_SCRAPE = 50_000  # a backlog (no scrape for hours) is worked off over several scrapes
RISK_VALUE = {"NORMAL": 0, "ELEVATED": 1, "WARNING": 2, "CRITICAL": 3}
SEVERITY_VALUE = {"low": 1, "medium": 2, "high": 3, "critical": 4}


# ---- feature names and units ----------------------------------------------------

@dataclass(frozen=True)
class Conv:
    """How a catalog unit becomes a Prometheus base unit: multiply by scale; the
    feature name's unit suffix (one of `strip`) is replaced by `suffix`."""

    scale: float
    strip: tuple[str, ...]
    suffix: str
    required: bool = True  # the feature name must end with one of `strip`


# The one mapping, keyed by the catalog's unit strings.  Units ending in "/s"
# (events per second) and plain counts are handled by rule in conv_for().
UNITS: dict[str, Conv] = {
    "%": Conv(0.01, ("_pct",), "_ratio"),
    "ratio": Conv(1.0, ("_ratio",), "_ratio"),
    "ms": Conv(1e-3, ("_ms",), "_seconds"),
    "us": Conv(1e-6, ("_us",), "_seconds"),
    "s": Conv(1.0, ("_s",), "_seconds"),
    "MiB": Conv(MIB, ("_mb",), "_bytes"),
    "MiB/min": Conv(MIB / 60.0, ("_mb_per_min",), "_bytes_per_second"),
    "B/s": Conv(1.0, ("_bytes_per_sec",), "_bytes_per_second"),
    "kills/min": Conv(1.0 / 60.0, ("_per_min",), "_per_second"),
}
PER_SECOND = Conv(1.0, ("_per_sec",), "_per_second", required=False)  # "ios/s" etc.; *_iops stays
# Counts and scores: no unit suffix; a gauge never ends in _total (that is for counters).
COUNT = Conv(1.0, ("_total",), "", required=False)

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


AGGREGATIONS = ("_max", "_min", "_avg", "_worst")  # after the unit in a feature name (fs_used_pct_max)


def conv_for(unit: str) -> Conv:
    if unit in UNITS:
        return UNITS[unit]
    if unit.endswith("/s"):
        return PER_SECOND
    return COUNT


def metric_name(feature: catalog.Feature) -> str:
    """kernelsight_<name with its unit suffix turned into the Prometheus one>."""
    c = conv_for(feature.unit)
    name = feature.name
    for s in c.strip:
        if name.endswith(s):
            name = name[: -len(s)] + c.suffix
            break
        agg = next((a for a in AGGREGATIONS if name.endswith(s + a)), None)
        if agg:  # fs_used_pct_max -> fs_used_max_ratio: the unit goes last
            name = name[: -len(s + agg)] + agg + c.suffix
            break
    else:
        if c.required:
            raise ValueError(f"feature {feature.name} (unit {feature.unit}) does not end with {c.strip}")
        # else the name says its unit another way (disk_read_iops) or is a count: kept as it is
    out = PREFIX + name
    if not _NAME_RE.match(out):
        raise ValueError(f"{out} is not a valid Prometheus metric name")
    return out


@dataclass(frozen=True)
class ExportedFeature:
    feature: str
    metric: str
    scale: float
    help: str


def feature_metrics() -> list[ExportedFeature]:
    out = []
    for f in catalog.FEATURES:
        c = conv_for(f.unit)
        unit = f" (catalog unit {f.unit}" + (f", x {c.scale:g} here" if c.scale != 1.0 else "") + ")"
        out.append(ExportedFeature(f.name, metric_name(f), c.scale,
                                   f"{f.description}{unit}; over the last {catalog.FEATURE_WINDOW_S:g} s"))
    names = [e.metric for e in out]
    if len(set(names)) != len(names):  # pragma: no cover - caught by the tests
        raise RuntimeError("two features map to one metric name")
    return out


FEATURE_METRICS = feature_metrics()


# ---- histograms ---------------------------------------------------------------

N_BUCKETS = 32  # the tracers' log2 histograms


@dataclass(frozen=True)
class HistSpec:
    metric: str          # without _bucket/_count/_sum
    help: str
    table: str
    column: str          # JSON array of per-bucket counts
    per_s: float         # histogram units per second (1e6 for us, 1e9 for ns)
    labels: tuple[str, ...]
    sum_expr: str        # SQL: the row's summed value, in histogram units (null: estimated from buckets)


HISTOGRAMS = (
    HistSpec("kernelsight_block_io_latency_seconds", "block request latency (eBPF ks-io-latency), per device and op",
             "io_latency_stats", "hist_log2_us", 1e6, ("device", "op"), "avg_ms * 1000.0 * count"),
    HistSpec("kernelsight_syscall_latency_seconds", "system call latency (eBPF ks-syscall), all syscalls",
             "syscall_stats", "hist_log2_ns", 1e9, (), "total_ns"),
    HistSpec("kernelsight_runqueue_latency_seconds", "wait from wakeup or preemption to running (eBPF ks-sched)",
             "sched_stats", "runq_hist_log2_us", 1e6, (), "runq_avg_us * runq_count"),
    HistSpec("kernelsight_timeslice_seconds", "time on CPU from switch-in to switch-out (eBPF ks-sched)",
             "sched_stats", "slice_hist_log2_us", 1e6, (), "slice_avg_us * slice_count"),
)


def bucket_bounds(per_s: float, n: int = N_BUCKETS) -> list[str]:
    """le of each kernel bucket: 2^(i+1) units in seconds; the last one is +Inf."""
    return [repr(2 ** (i + 1) / per_s) if i < n - 1 else "+Inf" for i in range(n)]


def midpoint_sum(counts: list[int]) -> float:
    """A histogram's sum estimated from its buckets (for rows without an exact sum)."""
    return sum(c * (1.0 if i == 0 else 1.5 * 2 ** i) for i, c in enumerate(counts))


class HistTotals:
    """Running totals of one histogram family, per label values."""

    def __init__(self, spec: HistSpec):
        self.spec = spec
        self.cursor: int | None = None  # id of the last row added; None until the first scrape
        self.totals: dict[tuple, tuple[list[int], float]] = {}
        self.le = bucket_bounds(spec.per_s)

    def reset(self) -> None:
        self.cursor = None
        self.totals.clear()

    def update(self, conn: sqlite3.Connection) -> None:
        s = self.spec
        if self.cursor is None:
            # Count from the rows present now: a counter starts at 0 with its process.
            row = conn.execute(f"SELECT MAX(id) FROM {s.table}").fetchone()
            self.cursor = row[0] or 0
            return
        cols = ", ".join(("id", s.column, f"({s.sum_expr})") + s.labels)
        rows = conn.execute(f"SELECT {cols} FROM {s.table} WHERE id > ? ORDER BY id LIMIT ?",
                            (self.cursor, MAX_ROWS_PER_SCRAPE)).fetchall()
        for r in rows:
            self.cursor = r[0]
            if not r[1]:
                continue
            try:
                counts = orjson.loads(r[1])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(counts, list) or not counts:
                continue
            key = tuple("" if v is None else str(v) for v in r[3:])
            acc, total = self.totals.get(key) or ([0] * N_BUCKETS, 0.0)
            for i, c in enumerate(counts[:N_BUCKETS]):
                acc[i] += int(c)
            for c in counts[N_BUCKETS:]:  # a longer array than ours: the rest is "above"
                acc[-1] += int(c)
            exact = r[2]
            add = float(exact) if exact is not None and math.isfinite(exact) else midpoint_sum(counts)
            self.totals[key] = (acc, total + add)

    def family(self) -> HistogramMetricFamily:
        s = self.spec
        fam = HistogramMetricFamily(s.metric, s.help + "; running totals since ks-exporter started", labels=s.labels)
        for key, (acc, total) in sorted(self.totals.items()):
            cum, buckets = 0, []
            for le, c in zip(self.le, acc):
                cum += c
                buckets.append((le, cum))
            fam.add_metric(list(key), buckets, total / s.per_s)
        return fam


# ---- the collector ----------------------------------------------------------------

class KernelSightCollector:
    """Reads the database on every collect(); keeps only the histogram totals between scrapes."""

    def __init__(self, data_dir: Path, *, accounting: bool = True):
        self.data_dir = Path(data_dir)
        self.accounting = accounting
        self.hists = [HistTotals(h) for h in HISTOGRAMS]
        self.db_identity: str | None = None
        self.scrapes = 0
        self.errors = 0
        self.last_duration_s = 0.0
        self.conn: sqlite3.Connection | None = None
        self.conn_ino: int | None = None
        self._acct: tuple[float, list] | None = None  # (monotonic time, families) of the last reconcile

    def _connection(self) -> sqlite3.Connection | None:
        """The read-only connection, kept between scrapes (no schema parse per scrape);
        reopened when the database file is replaced."""
        path = db.db_path(self.data_dir)
        try:
            ino = os.stat(path).st_ino
        except OSError:
            self._close()
            return None
        if self.conn is not None and ino == self.conn_ino:
            return self.conn
        self._close()
        try:
            self.conn = db.connect_readonly(path)
            self.conn_ino = ino
        except (db.StoreError, sqlite3.Error):
            self.conn = None
        return self.conn

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def describe(self):  # no description up front: collect() must not run at registration
        return []

    def collect(self):
        t0 = time.perf_counter()
        up = GaugeMetricFamily("kernelsight_exporter_database_up", "1 when the database could be read at this scrape")
        fams: list = []
        conn = self._connection()
        if conn is not None:
            try:
                conn.execute("BEGIN")  # one snapshot for every query of this scrape
                fams = self._collect_db(conn)
                up.add_metric([], 1.0)
            except sqlite3.Error:
                self.errors += 1
                up.add_metric([], 0.0)
                self._close()
            finally:
                if self.conn is not None and self.conn.in_transaction:
                    self.conn.rollback()
        else:
            up.add_metric([], 0.0)
        fams += self._alerts()
        fams += self._remote_write()
        self.scrapes += 1
        yield from fams
        yield up
        yield CounterMetricFamily("kernelsight_exporter_scrapes", "scrapes served", value=self.scrapes)
        yield CounterMetricFamily("kernelsight_exporter_scrape_errors", "scrapes whose database read failed",
                                  value=self.errors)
        self.last_duration_s = time.perf_counter() - t0
        yield GaugeMetricFamily("kernelsight_exporter_collect_duration_seconds",
                                "time this scrape's collect took (reading the database)", value=self.last_duration_s)

    def _collect_db(self, conn: sqlite3.Connection) -> list:
        ident = db.db_identity(conn)
        if ident != self.db_identity:  # a new database: the totals of the old one do not continue
            for h in self.hists:
                h.reset()
            self.db_identity = ident
        out = self._features(conn)
        for h in self.hists:
            try:
                h.update(conn)
            except sqlite3.OperationalError:  # table absent (no tracer schema in this build)
                continue
            out.append(h.family())
        out += self._ingest(conn)
        out += self._accounting(conn)
        out += self._observations(conn)
        return out

    def _features(self, conn: sqlite3.Connection) -> list:
        try:
            cur = conn.execute("SELECT * FROM features ORDER BY ts DESC LIMIT 1")
        except sqlite3.OperationalError:
            return []
        row = cur.fetchone()
        if row is None:
            return []
        rec = dict(zip([d[0] for d in cur.description], row))
        out = [GaugeMetricFamily("kernelsight_features_timestamp_seconds",
                                 "end of the window of the latest feature vector (Unix seconds)",
                                 value=rec["ts"] / 1e9)]
        if rec.get("window_s") is not None:
            out.append(GaugeMetricFamily("kernelsight_features_window_seconds", "length of that window",
                                         value=float(rec["window_s"])))
        for e in FEATURE_METRICS:
            v = rec.get(e.feature)
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue  # null: unknown, not 0
            out.append(GaugeMetricFamily(e.metric, e.help, value=float(v) * e.scale))
        return out

    def _ingest(self, conn: sqlite3.Connection) -> list:
        last = conn.execute("SELECT ts, pid FROM pipeline_stats WHERE stage='ingest' ORDER BY id DESC LIMIT 1").fetchone()
        if last is None:
            return []
        rows = conn.execute("SELECT event_type, received, stored, rejected, pending FROM pipeline_stats "
                            "WHERE ts=? AND pid=? AND stage='ingest'", last).fetchall()
        fams = {k: CounterMetricFamily(f"kernelsight_ingest_lines_{k}", f"lines {k} by ks-ingest, per event type "
                                       "(since that ks-ingest started)", labels=["type"])
                for k in ("received", "stored", "rejected")}
        pending = GaugeMetricFamily("kernelsight_ingest_lines_pending", "lines read, not yet stored, per event type",
                                    labels=["type"])
        for t, rec, sto, rej, pend in rows:
            fams["received"].add_metric([t], rec)
            fams["stored"].add_metric([t], sto)
            fams["rejected"].add_metric([t], rej)
            pending.add_metric([t], pend)
        return [*fams.values(), pending]

    def _accounting(self, conn: sqlite3.Connection) -> list:
        if not self.accounting:
            return []
        now = time.monotonic()
        if self._acct is not None and now - self._acct[0] < ACCOUNTING_EVERY_S:
            return self._acct[1]
        fams = self._account(conn)
        self._acct = (now, fams)
        return fams

    def _account(self, conn: sqlite3.Connection) -> list:
        from . import accounting

        try:
            a = accounting.account(self.data_dir, conn, gc=False)
        except (OSError, sqlite3.Error, ValueError):
            return []
        lab = ["producer"]
        c = {k: CounterMetricFamily(f"kernelsight_producer_lines_{k}", doc, labels=lab) for k, doc in (
            ("written", "lines a producer wrote to the FIFO (all its processes, every restart)"),
            ("stored", "lines of that producer stored in the database"),
            ("rejected", "lines of that producer ks-ingest rejected (quarantined)"))}
        dropped = CounterMetricFamily("kernelsight_producer_lines_dropped", "lines a producer dropped, by cause",
                                      labels=["producer", "cause"])
        g = {k: GaugeMetricFamily(f"kernelsight_producer_lines_{k}", doc, labels=lab) for k, doc in (
            ("in_flight", "lines written, not yet due in the database"),
            ("unaccounted", "lines due but neither stored, rejected nor dropped (telemetry loss)"))}
        ok = GaugeMetricFamily("kernelsight_producer_status", "1 for the producer's accounting status "
                               "(ok, dropping, silent, unaccounted)", labels=["producer", "status"])
        for p in a.producers:
            c["written"].add_metric([p.producer], p.written)
            c["stored"].add_metric([p.producer], p.stored)
            c["rejected"].add_metric([p.producer], p.rejected)
            for cause, n in p.dropped.items():
                dropped.add_metric([p.producer, cause], n)
            g["in_flight"].add_metric([p.producer], p.in_flight)
            g["unaccounted"].add_metric([p.producer], p.unaccounted)
            ok.add_metric([p.producer, p.status], 1)
        return [*c.values(), dropped, *g.values(), ok]

    def _observations(self, conn: sqlite3.Connection) -> list:
        try:
            rows = conn.execute("SELECT label, severity, signal_category, COUNT(*) FROM observations "
                                "WHERE status='open' GROUP BY label, severity, signal_category").fetchall()
            fc = conn.execute("SELECT ts, risk, headroom_pct, seconds_to_exhaustion, confidence FROM oom_forecasts "
                              "ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:  # no agent has run on this database yet
            return []
        obs = GaugeMetricFamily("kernelsight_observation_open", "open observations (ks observations), by label, "
                                "severity (low, medium, high, critical) and category",
                                labels=["label", "severity", "category"])
        for label, sev, cat, n in rows:
            obs.add_metric([label, sev, cat], n)
        out = [obs]
        if fc is not None:
            ts, risk, headroom, eta, conf = fc
            out.append(GaugeMetricFamily("kernelsight_oom_forecast_risk", "latest OOM forecast risk: 0 NORMAL, "
                                         "1 ELEVATED, 2 WARNING, 3 CRITICAL", value=RISK_VALUE.get(risk, 0)))
            out.append(GaugeMetricFamily("kernelsight_oom_forecast_confidence", "its confidence, 0-1",
                                         value=float(conf)))
            out.append(GaugeMetricFamily("kernelsight_oom_forecast_timestamp_seconds", "when it was made",
                                         value=ts / 1e9))
            if eta is not None:
                out.append(GaugeMetricFamily("kernelsight_oom_forecast_exhaustion_seconds",
                                             "seconds until memory runs out at the trend (absent: not declining)",
                                             value=float(eta)))
            if headroom is not None:
                out.append(GaugeMetricFamily("kernelsight_oom_forecast_headroom_ratio",
                                             "memory headroom the forecast starts from, 0-1", value=headroom / 100.0))
        return out

    def _alerts(self) -> list:
        from .alerts import read_status

        st = read_status(self.data_dir)
        if not st:
            return []
        lab = ["receiver"]
        fams = {k: CounterMetricFamily(f"kernelsight_alerts_{k}", doc, labels=lab) for k, doc in (
            ("sent_batches", "batches of alerts a receiver accepted"),
            ("sent_alerts", "alerts (firing or resolved) a receiver accepted"),
            ("failed_attempts", "HTTP attempts that failed (each retry counts)"),
            ("dropped_batches", "batches given up after max_attempts"))}
        for name, r in st.get("receivers", {}).items():
            fams["sent_batches"].add_metric([name], r.get("sent_batches", 0))
            fams["sent_alerts"].add_metric([name], r.get("sent_alerts", 0))
            fams["failed_attempts"].add_metric([name], r.get("failed_attempts", 0))
            fams["dropped_batches"].add_metric([name], r.get("dropped_batches", 0))
        firing = GaugeMetricFamily("kernelsight_alerts_firing", "alerts ks-alerts holds as firing",
                                   value=len(st.get("firing", {})))
        return [*fams.values(), firing]

    def _remote_write(self) -> list:
        from .remote_write import read_status

        st = read_status(self.data_dir)
        if not st:
            return []
        out = [CounterMetricFamily(f"kernelsight_remote_write_{k}", doc, value=st.get(k, 0)) for k, doc in (
            ("samples_sent", "samples a remote-write receiver accepted"),
            ("samples_dropped", "samples dropped when the on-disk queue hit its bound"),
            ("samples_rejected", "samples a receiver refused for good (HTTP 4xx)"),
            ("failed_attempts", "remote-write HTTP attempts that failed (each retry counts)"),
            ("bytes_sent", "compressed bytes remote-write sent (request bodies)"))]
        out.append(GaugeMetricFamily("kernelsight_remote_write_queue_bytes", "disk used by the remote-write queue",
                                     value=st.get("queue_bytes", 0)))
        out.append(GaugeMetricFamily("kernelsight_remote_write_queue_samples", "samples waiting in the queue",
                                     value=st.get("queue_samples", 0)))
        return out




# ---- serving ----------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per scrape would flood the log
        pass


def registry_for(data_dir: Path) -> tuple[CollectorRegistry, KernelSightCollector]:
    reg = CollectorRegistry(auto_describe=False)
    col = KernelSightCollector(data_dir)
    reg.register(col)
    ProcessCollector(registry=reg)  # process_cpu_seconds_total etc.: what the exporter itself costs
    return reg, col


def _write_status(data_dir: Path, doc: dict) -> None:
    from .supervisor import RUN_DIR, write_atomic

    run = data_dir / RUN_DIR
    try:
        run.mkdir(mode=0o700, exist_ok=True)
        write_atomic(run / STATUS_NAME, orjson.dumps({**doc, "pid": os.getpid(), "updated_at": time.time()}))
    except OSError:
        pass


def read_status(data_dir: Path) -> dict | None:
    from .supervisor import RUN_DIR

    try:
        return orjson.loads((Path(data_dir) / RUN_DIR / STATUS_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _bind(app, data_dir: Path, address: str, port: int, log, stop: threading.Event) -> WSGIServer | None:
    """The listening server; an address in use is retried every 5 s (saying why in
    DATA_DIR/run/exporter.json and the log); None on another error or once stop is set."""
    logged = None
    while not stop.is_set():
        try:
            return make_server(address, port, app, server_class=WSGIServer, handler_class=_QuietHandler)
        except OSError as e:
            why = f"cannot listen on {address}:{port}: {e.strerror or e}"
            if why != logged:
                log.error("exporter not serving; retrying every 5 s", error=why)
                logged = why
            _write_status(data_dir, {"listening": None, "error": why})
            if e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                return None
            stop.wait(5)
    return None


def _serve_until(data_dir: Path, address: str, port: int, log, stop: threading.Event) -> int:
    """Bind (see _bind), then answer scrapes until stop is set, looking at it at least every
    SERVE_POLL_S; 1 when the address cannot be used, else 0.  One request at a time, as
    serve_forever would, but with no shutdown() handshake: that one blocks for good when called
    before serve_forever has started."""
    reg, _ = registry_for(data_dir)
    httpd = _bind(make_wsgi_app(reg), data_dir, address, port, log, stop)
    if httpd is None:
        return 0 if stop.is_set() else 1
    try:
        url = f"http://{address}:{port}/metrics"
        _write_status(data_dir, {"listening": url, "error": None})
        log.info("serving", url=url)
        httpd.timeout = SERVE_POLL_S
        while not stop.is_set():
            httpd.handle_request()
    finally:
        httpd.server_close()
    return 0


def serve(data_dir: Path, address: str, port: int, log) -> int:
    """Serve /metrics until SIGTERM (ks-exporter on its own)."""

    def _stop(*_a):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        rc = _serve_until(data_dir, address, port, log, threading.Event())
    except KeyboardInterrupt:
        rc = 0
    if rc:
        return rc
    _write_status(data_dir, {"listening": None, "error": "stopped"})
    log.info("stopped")
    return 0


class MetricsThread:
    """/metrics served from a thread of another process (ks-agent under `ks run`): the same
    registry and status file as ks-exporter; close() stops it within SERVE_POLL_S."""

    def __init__(self, data_dir: Path, address: str, port: int, log):
        self.data_dir, self.address, self.port, self.log = Path(data_dir), address, port, log
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ks-exporter", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            _serve_until(self.data_dir, self.address, self.port, self.log, self.stop)
        except Exception:  # noqa: BLE001 - the agent goes on; ks status shows the exporter is down
            self.log.exception("exporter thread failed")
            _write_status(self.data_dir, {"listening": None, "error": "exporter thread failed (see ks-agent.log)"})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=SERVE_POLL_S + 5)
        _write_status(self.data_dir, {"listening": None, "error": "stopped"})
        self.log.info("exporter stopped")


def main(argv: list[str] | None = None) -> int:
    from . import log as klog
    from . import servicecli
    from .completion import add_completion

    p = servicecli.parser("ks-exporter", "Serve the pipeline's state as Prometheus metrics "
                          "on /metrics (address from [exporter] in the config file).")
    p.add_argument("--address", default=None, help="bind address (default [exporter] address, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default [exporter] port, 9863)")
    p.add_argument("--once", action="store_true", help="print one scrape to stdout and exit")
    add_completion(p)
    a = p.parse_args(argv)
    cfg = servicecli.config_section("ks-exporter", a, "exporter")
    if cfg is None:
        return 2
    data_dir = servicecli.data_dir(a)
    if a.once:
        from prometheus_client import generate_latest

        reg, _ = registry_for(data_dir)
        generate_latest(reg)  # the first scrape sets the histogram cursors
        sys.stdout.write(generate_latest(reg).decode())
        return 0
    port = a.port if a.port is not None else cfg.port
    if not 0 < port < 65536:
        print(f"ks-exporter: port must be 1-65535, got {port}", file=sys.stderr)
        return 2
    log = klog.configure("ks-exporter")
    return serve(data_dir, a.address or cfg.address, port, log)


if __name__ == "__main__":
    sys.exit(main())

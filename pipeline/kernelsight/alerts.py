"""ks-alerts: observations as alerts, to Alertmanager (API v2) and/or a JSON webhook.

A process of its own (started by `ks run` when [alerts] alertmanager_url or
webhook_url is set), so a slow or dead receiver never holds up the agent.  It
follows the agent's stream DATA_DIR/observations.jsonl (one line per
observation opened, reopened, changed or closed) from an offset persisted in
DATA_DIR/run/alerts.json, and takes each named observation's current state
from the database (read-only): the row is the truth, the stream line the
prompt.  Every resend_interval_s it also reconciles with the database's open
observations (so a stream line lost in a rotation costs at most one interval)
and sends every firing alert again, as Alertmanager expects: a firing alert
carries endsAt = now + ends_at_factor x resend_interval_s, so the alerts of a
sender that died resolve by themselves; a closed observation is sent with
endsAt = its closed_at (resolved).

One alert per observation and severity:
    labels      alertname (the label without spaces, e.g. ProcessExplosion), host, label,
                severity, category, observation_id; plus the host's identity labels
                ([remote_write] hostname for host, and its labels), as on its series
Across a fleet, `label` is the same on every host for the same kind of observation,
so an Alertmanager route with group_by: [alertname, label] makes one group (one
notification) of every host with it (deploy/alertmanager/fleet.yml, docs/fleet.md).
    annotations summary, hints (reasoning hints, one per line), report
                (`ks agent explain N`), description (observation type and persistence)
A severity change resolves the alert of the old severity and fires the new one.

Each receiver has its own thread and a pending set (latest state per alert);
a batch is POSTed with a timeout and retried with exponential backoff
(backoff_start_s doubling to backoff_max_s) up to max_attempts, then dropped
(counted; a firing alert is sent again at the next resend anyway).  Counters
(sent, failed attempts, dropped, last error) and the pending sets are in
DATA_DIR/run/alerts.json, which `ks status` and ks-exporter read.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import orjson

from . import db

STATE_NAME = "alerts.json"   # in DATA_DIR/run
STREAM_NAME = "observations.jsonl"
DEFER_MAX_S = 30.0           # a stream line whose row never appears is skipped after this long
MISSING_GRACE_S = 60.0
HEAD_BYTES = 64              # the stream's first bytes, to recognise a rotated (truncated, rewritten) file       # a firing alert whose row is gone (a new database) is resolved after this long


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertname(label: str) -> str:
    """'Process Explosion' -> 'ProcessExplosion' (a valid label value either way; this reads like one)."""
    out = "".join(w[:1].upper() + w[1:] for w in label.replace("-", " ").replace("_", " ").split())
    return "".join(c for c in out if c.isalnum()) or "KernelSightObservation"


def _run_dir(data_dir: Path) -> Path:
    from .supervisor import RUN_DIR

    return Path(data_dir) / RUN_DIR


def read_status(data_dir: Path) -> dict | None:
    """DATA_DIR/run/alerts.json, or None when ks-alerts never ran here."""
    try:
        return orjson.loads((_run_dir(data_dir) / STATE_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


ROW_SQL = ("SELECT id, label, status, severity, signal_category, observation_type, persistence, first_seen, "
           "closed_at, summary, observation FROM observations")


class Receiver:
    """One destination: a thread POSTing the pending alerts as one batch, with retries."""

    def __init__(self, name: str, url: str, cfg, host: str, saved: dict | None):
        self.name, self.url, self.cfg, self.host = name, url, cfg, host
        saved = saved or {}
        self.stats = {k: int(saved.get(k, 0)) for k in ("sent_batches", "sent_alerts", "failed_attempts",
                                                         "dropped_batches")}
        self.stats.update({k: saved.get(k) for k in ("last_error", "last_error_at", "last_ok_at")})
        self.pending: dict[str, dict] = dict(saved.get("pending") or {})
        self.inflight: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"send-{name}", daemon=True)

    def put(self, key: str, alert: dict) -> None:
        with self.lock:
            self.pending[key] = alert
        self.wake.set()

    def snapshot(self) -> dict:
        with self.lock:
            return {"url": self.url, **self.stats, "pending": {**self.inflight, **self.pending}}

    def _body(self, alerts: list[dict]) -> bytes:
        if self.name == "alertmanager":
            return orjson.dumps(alerts)
        now = time.time()
        return orjson.dumps({"version": "kernelsight/1", "host": self.host, "alerts": [
            {**a, "status": "resolved" if _ends(a) <= now else "firing"} for a in alerts]})

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:  # noqa: S310 - configured URL
            r.read()

    def _run(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            with self.lock:
                if not self.inflight:
                    self.inflight, self.pending = self.pending, {}
                    attempt = 0
                batch = dict(self.inflight)
            if not batch:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self._post(self._body(list(batch.values())))
            except (OSError, urllib.error.URLError, ValueError) as e:
                attempt += 1
                why = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else str(getattr(e, "reason", e))
                with self.lock:
                    self.stats["failed_attempts"] += 1
                    self.stats["last_error"] = f"{self.url}: {why}"
                    self.stats["last_error_at"] = time.time()
                    # newer states of the same alerts replace the batch's
                    for k in list(self.inflight):
                        if k in self.pending:
                            self.inflight[k] = self.pending.pop(k)
                    if attempt >= self.cfg.max_attempts:
                        self.stats["dropped_batches"] += 1
                        self.inflight = {}
                        continue
                delay = min(self.cfg.backoff_max_s, self.cfg.backoff_start_s * 2 ** (attempt - 1))
                self.stop.wait(delay)
                continue
            with self.lock:
                self.stats["sent_batches"] += 1
                self.stats["sent_alerts"] += len(batch)
                self.stats["last_ok_at"] = time.time()
                self.inflight = {}


def _ends(a: dict) -> float:
    return datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00")).timestamp()


class Sender:
    def __init__(self, data_dir: Path, cfg, log=None, host: str | None = None,
                 extra_labels: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.cfg = cfg
        self.log = log
        self.host = host or socket.gethostname()
        self.extra_labels = dict(extra_labels or {})  # the host's identity labels ([remote_write] labels)
        self.stream_path = self.data_dir / STREAM_NAME
        self.state_path = _run_dir(self.data_dir) / STATE_NAME
        st = read_status(self.data_dir) or {}
        self.stream = st.get("stream")  # {"ino", "offset"}; None: start at the end of the stream
        self.firing: dict[str, dict] = st.get("firing") or {}   # observation id -> {"key", "alert", "updated"}
        saved = st.get("receivers") or {}
        self.receivers: list[Receiver] = []
        if cfg.alertmanager_url:
            self.receivers.append(Receiver("alertmanager", cfg.alertmanager_url.rstrip("/") + "/api/v2/alerts",
                                           cfg, self.host, saved.get("alertmanager")))
        if cfg.webhook_url:
            self.receivers.append(Receiver("webhook", cfg.webhook_url, cfg, self.host, saved.get("webhook")))
        self.deferred_since: float | None = None
        self.events = {"lines": 0, "skipped": 0}

    # -- alerts ------------------------------------------------------------------
    def build(self, row: tuple, now: float) -> tuple[str, dict]:
        (oid, label, status, severity, category, otype, band, first_seen, closed_at, summary, obs_json) = row
        try:
            obs = orjson.loads(obs_json)
        except orjson.JSONDecodeError:
            obs = {}
        hints = obs.get("reasoning_hints") or []
        ends = (closed_at or now) if status == "closed" else now + self.cfg.ends_at_factor * self.cfg.resend_interval_s
        alert = {
            "labels": {**self.extra_labels, "alertname": alertname(label), "host": self.host, "label": label,
                       "severity": severity, "category": category, "observation_id": str(oid)},
            "annotations": {"summary": summary, "hints": "\n".join(hints), "report": f"ks agent explain {oid}",
                            "description": f"{otype} observation #{oid}, {band}; {status}"},
            "startsAt": iso(first_seen),
            "endsAt": iso(max(ends, first_seen + 0.001)),
        }
        if self.cfg.generator_url:
            alert["generatorURL"] = self.cfg.generator_url.replace("{id}", str(oid))
        return f"{oid}/{severity}", alert

    def _send(self, key: str, alert: dict) -> None:
        for r in self.receivers:
            r.put(key, alert)

    def apply(self, row: tuple, now: float) -> None:
        """Bring one observation's alert in line with its row."""
        oid = str(row[0])
        key, alert = self.build(row, now)
        old = self.firing.get(oid)
        if old is not None and old["key"] != key:  # severity changed: the old alert ends now
            prev = {**old["alert"], "endsAt": iso(now)}
            self._send(old["key"], prev)
        if row[2] == "closed":
            self.firing.pop(oid, None)
        else:
            self.firing[oid] = {"key": key, "alert": alert, "updated": now}
        self._send(key, alert)

    def resolve_missing(self, oid: str, now: float) -> None:
        old = self.firing.pop(oid)
        self._send(old["key"], {**old["alert"], "endsAt": iso(now)})

    # -- the stream --------------------------------------------------------------
    def _lines(self) -> list[tuple[int, bytes]]:
        """New complete lines of the stream as (offset after the line, line).  The agent's
        rotation copies the file to NAME.1 and truncates it (same inode): the file's first
        bytes, remembered with the offset, tell a rotated file from a grown one."""
        try:
            f = open(self.stream_path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            if self.stream is None:  # no stream yet: its first line will be news
                self.stream = {"offset": 0, "head": ""}
            return []
        out: list[tuple[int, bytes]] = []
        with f:
            size = os.fstat(f.fileno()).st_size
            if self.stream is None:  # first start: what is in the stream already is history
                self.stream = {"offset": size, "head": f.read(HEAD_BYTES).hex()}
            off, head = self.stream["offset"], bytes.fromhex(self.stream.get("head") or "")
            f.seek(0)
            if size < off or f.read(len(head)) != head:
                # Rotated: the rest of what we had not read is in NAME.1 (if it is that file).
                rotated = self.stream_path.with_name(self.stream_path.name + ".1")
                try:
                    with open(rotated, "rb") as r:
                        if r.read(len(head)) == head:
                            r.seek(off)
                            out += [(0, line) for line in r.read().splitlines(keepends=True) if line.endswith(b"\n")]
                except OSError:
                    pass
                off = self.stream["offset"] = 0
            if off == 0:
                f.seek(0)
                self.stream["head"] = f.read(HEAD_BYTES).hex()
            f.seek(off)
            data = f.read(4 << 20)
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a line being written: next time
            off += len(line)
            out.append((off, line))
        return out

    def _refresh_head(self) -> None:
        try:
            with open(self.stream_path, "rb") as f:
                self.stream["head"] = f.read(min(HEAD_BYTES, self.stream["offset"])).hex()
        except OSError:
            pass

    def follow(self, conn: sqlite3.Connection | None, now: float) -> bool:
        """Apply the stream's new lines; True when something changed."""
        changed = False
        for off, line in self._lines():
            try:
                ev = orjson.loads(line)
                oid = int(ev["id"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                ev = None
            if ev is not None:
                row = conn.execute(ROW_SQL + " WHERE id=?", (oid,)).fetchone() if conn is not None else None
                if row is None:
                    # The agent streams inside its transaction: the row may not be committed yet.
                    if self.deferred_since is None:
                        self.deferred_since = now
                    if now - self.deferred_since < DEFER_MAX_S:
                        return changed
                    self.events["skipped"] += 1
                else:
                    self.apply(row, now)
                    self.events["lines"] += 1
                    if self.log is not None:
                        self.log.info("alert", kind=ev.get("event"), id=oid, label=row[1], severity=row[3],
                                      status=row[2])
            self.deferred_since = None
            if off:
                self.stream["offset"] = off
                if len(self.stream.get("head") or "") < 2 * HEAD_BYTES:
                    self._refresh_head()
            changed = True
        return changed

    def reconcile(self, conn: sqlite3.Connection, now: float) -> None:
        """Open observations the stream did not tell us about fire; firing ones the database closed
        resolve; then every firing alert is sent again with a fresh endsAt."""
        ids = [int(i) for i in self.firing]
        rows = conn.execute(ROW_SQL + " WHERE status='open'").fetchall()
        seen = {str(r[0]) for r in rows}
        if ids:
            marks = ",".join("?" * len(ids))
            rows += conn.execute(ROW_SQL + f" WHERE status!='open' AND id IN ({marks})", ids).fetchall()
        for r in rows:
            self.apply(r, now)
            seen.add(str(r[0]))
        for oid in [o for o in self.firing if o not in seen]:
            if now - self.firing[oid]["updated"] > MISSING_GRACE_S:
                self.resolve_missing(oid, now)

    # -- state -------------------------------------------------------------------
    def state(self) -> dict:
        return {"pid": os.getpid(), "updated_at": time.time(), "stream": self.stream, "firing": self.firing,
                "events": self.events, "receivers": {r.name: r.snapshot() for r in self.receivers}}

    def save(self) -> None:
        from .supervisor import write_atomic

        try:
            self.state_path.parent.mkdir(mode=0o700, exist_ok=True)
            write_atomic(self.state_path, orjson.dumps(self.state()))
        except OSError as e:
            if self.log is not None:
                self.log.warning("cannot write alerts state", error=str(e))

    def run(self, stop: threading.Event) -> int:
        for r in self.receivers:
            r.thread.start()
        next_resend = 0.0
        next_save = 0.0
        conn = None
        while not stop.is_set():
            now = time.time()
            if conn is None:
                try:
                    conn = db.connect_readonly(db.db_path(self.data_dir))
                except db.StoreError:
                    conn = None
            try:
                self.follow(conn, now)
                if conn is not None and now >= next_resend:
                    self.reconcile(conn, now)
                    next_resend = now + self.cfg.resend_interval_s
            except sqlite3.Error as e:
                if self.log is not None:
                    self.log.warning("database read failed", error=str(e))
                if conn is not None:
                    conn.close()
                conn = None
            if now >= next_save:
                self.save()
                next_save = now + 1.0
            stop.wait(self.cfg.poll_interval_s)
        for r in self.receivers:
            r.stop.set()
            r.wake.set()
        for r in self.receivers:
            r.thread.join(timeout=self.cfg.timeout_s + 1)
        self.save()
        if conn is not None:
            conn.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    from . import log as klog
    from . import servicecli
    from .completion import add_completion

    p = servicecli.parser("ks-alerts", "Send observations as alerts to Alertmanager "
                          "(API v2) and/or a JSON webhook ([alerts] in the config file).")
    add_completion(p)
    a = p.parse_args(argv)
    cfg = servicecli.config_section("ks-alerts", a, "alerts")
    if cfg is None:
        return 2
    if not (cfg.alertmanager_url or cfg.webhook_url):
        print("ks-alerts: nothing to send to: set [alerts] alertmanager_url or webhook_url in the config file",
              file=sys.stderr)
        return 2
    data_dir = servicecli.data_dir(a)
    log = klog.configure("ks-alerts")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # One host identity for the fleet: [remote_write] hostname and labels, when set, name this host in its
    # alerts as in its series (docs/fleet.md), so Alertmanager and Prometheus agree on who it is.
    from .config import load
    from .remote_write import parse_labels

    rwc = load(a.config).remote_write
    try:
        extra = parse_labels(rwc.labels)
    except ValueError as e:
        print(f"ks-alerts: {e}", file=sys.stderr)
        return 2
    log.info("sending", receivers=[r for r in (cfg.alertmanager_url, cfg.webhook_url) if r])
    return Sender(data_dir, cfg, log, host=rwc.hostname or None, extra_labels=extra).run(stop)


if __name__ == "__main__":
    sys.exit(main())

"""ks-remote-write: the samples ks-exporter serves, pushed to a Prometheus remote-write 1.0 receiver.

Started by `ks run` when [remote_write] url is set.  Every interval_s it collects
the same registry ks-exporter serves (exporter.registry_for(): one definition of
every metric), adds the host identity labels (host = hostname, plus the config's
labels) to every series, encodes one WriteRequest (protobuf, the remote-write 1.0
message) compressed with snappy's block format, and appends it as one segment to
an on-disk queue, DATA_DIR/remote_write/queue (directory 0700, files 0600).  The
sender POSTs segments oldest first (so a series' samples arrive in order) and
deletes a segment once the receiver answered 2xx.  A connection error, a timeout,
HTTP 429 or 5xx is retried with exponential backoff (backoff_start_s doubling to
backoff_max_s) for as long as it takes: the queue survives receiver outages and
restarts of this process.  A 4xx other than 429 means the receiver will never take
that segment: it is dropped and counted as rejected.  When a new segment would take
the queue past queue_max_mb, the oldest segments are dropped first and counted.

Counters (collections, samples queued, sent, dropped, rejected, queue bytes, last
error) are in DATA_DIR/run/remote_write.json, which `ks status` and ks-exporter
read; they persist across restarts.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cramjam
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

STATUS_NAME = "remote_write.json"   # in DATA_DIR/run
QUEUE_DIR = "remote_write/queue"    # in DATA_DIR
SEG_RE = re.compile(r"^(\d{20})-(\d+)\.seg$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
USER_AGENT = "kernelsight-remote-write/1"
COUNTERS = ("collections", "samples_queued", "samples_sent", "samples_dropped", "samples_rejected",
            "segments_sent", "segments_dropped", "segments_rejected", "failed_attempts", "bytes_sent")


# ---- the remote-write 1.0 message (prometheus/prompb/types.proto + remote.proto) ----------------

def _message_classes():
    """WriteRequest, built from its descriptor at run time (no generated code, no protoc):
    message WriteRequest { repeated TimeSeries timeseries = 1; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }"""
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="kernelsight_prompb.proto", package="prometheus", syntax="proto3")

    def msg(name, *fields):
        m = fd.message_type.add(name=name)
        for fname, num, typ, label, tname in fields:
            f = m.field.add(name=fname, number=num, type=typ, label=label)
            if tname:
                f.type_name = tname

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("Label", ("name", 1, F.TYPE_STRING, opt, None), ("value", 2, F.TYPE_STRING, opt, None))
    msg("Sample", ("value", 1, F.TYPE_DOUBLE, opt, None), ("timestamp", 2, F.TYPE_INT64, opt, None))
    msg("TimeSeries", ("labels", 1, F.TYPE_MESSAGE, rep, ".prometheus.Label"),
        ("samples", 2, F.TYPE_MESSAGE, rep, ".prometheus.Sample"))
    msg("WriteRequest", ("timeseries", 1, F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest = _message_classes()


def parse_labels(text: str) -> dict[str, str]:
    """'dc=eu1, role=db' -> {'dc': 'eu1', 'role': 'db'}; ValueError names a bad pair."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not LABEL_RE.match(name) or name.startswith("__"):
            raise ValueError(f"[remote_write] labels: {part!r} is not name=value with a valid label name")
        out[name] = value.strip()
    return out


def identity(cfg) -> dict[str, str]:
    """The labels every series of this host carries: host, then the config's labels."""
    return {"host": cfg.hostname or socket.gethostname(), **parse_labels(cfg.labels)}


def encode(families, extra: dict[str, str], ts_ms: int) -> tuple[bytes, int]:
    """One snappy-compressed WriteRequest of every sample of `families` (prometheus-client
    Metric objects) at ts_ms, each series with `extra` labels; (body, number of samples)."""
    req = WriteRequest()
    n = 0
    for fam in families:
        for s in fam.samples:
            if s.name.endswith("_created"):  # prometheus-client's creation timestamps: not data
                continue
            labels = {**s.labels, **extra, "__name__": s.name}
            ts = req.timeseries.add()
            for k in sorted(labels):
                ts.labels.add(name=k, value=str(labels[k]))
            v = float(s.value)
            t = int(s.timestamp * 1000) if s.timestamp is not None else ts_ms
            ts.samples.add(value=v, timestamp=t)
            n += 1
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString())), n


def decode(body: bytes):
    """The WriteRequest in a segment (tests, `ks remote-write --dump`)."""
    req = WriteRequest()
    req.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    return req


# ---- the on-disk queue ------------------------------------------------------------------------

class Queue:
    """Segments NNNNNNNNNNNNNNNNNNNN-SAMPLES.seg, oldest first; bounded in bytes."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        for p in root.glob(".*.tmp"):  # a write cut short by a crash
            p.unlink(missing_ok=True)
        segs = self.segments()
        self.next_seq = (segs[-1][0] + 1) if segs else 1

    def segments(self) -> list[tuple[int, int, Path]]:
        out = []
        for p in self.root.iterdir():
            m = SEG_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), p))
        out.sort()
        return out

    def disk_bytes(self) -> int:
        total = 0
        for _, _, p in self.segments():
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def put(self, body: bytes, samples: int) -> tuple[int, int]:
        """Append one segment, dropping the oldest first while the bound would be passed;
        returns (segments dropped, samples dropped)."""
        dropped_segs = dropped_samples = 0
        segs = self.segments()
        used = sum(p.stat().st_size for _, _, p in segs)
        while segs and used + len(body) > self.max_bytes:
            _, n, p = segs.pop(0)
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            used -= size
            dropped_segs += 1
            dropped_samples += n
        if len(body) > self.max_bytes:  # a segment that alone passes the bound is not kept
            return dropped_segs + 1, dropped_samples + samples
        name = f"{self.next_seq:020d}-{samples}.seg"
        tmp = self.root / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.next_seq += 1
        return dropped_segs, dropped_samples


# ---- the process ------------------------------------------------------------------------------

def _run_dir(data_dir: Path) -> Path:
    from .supervisor import RUN_DIR

    return Path(data_dir) / RUN_DIR


def read_status(data_dir: Path) -> dict | None:
    """DATA_DIR/run/remote_write.json, or None when ks-remote-write never ran here."""
    try:
        return orjson.loads((_run_dir(data_dir) / STATUS_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


class RemoteWriter:
    def __init__(self, data_dir: Path, cfg, log=None, registry=None):
        from .exporter import registry_for

        self.data_dir = Path(data_dir)
        self.cfg, self.log = cfg, log
        self.labels = identity(cfg)
        self.registry = registry if registry is not None else registry_for(self.data_dir)[0]
        self.queue = Queue(self.data_dir / QUEUE_DIR, int(cfg.queue_max_mb * 1024 * 1024))
        saved = read_status(self.data_dir) or {}
        self.stats = {k: int(saved.get(k, 0)) for k in COUNTERS}
        self.stats.update({"last_error": saved.get("last_error"), "last_error_at": saved.get("last_error_at"),
                           "last_ok_at": saved.get("last_ok_at")})
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.attempt = 0
        self.last_ts_ms = 0

    # collection
    def collect_once(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        # Strictly increasing: two collections in one millisecond (a flush right after a tick)
        # would send different values at one timestamp, which Prometheus rejects as duplicates.
        ts_ms = self.last_ts_ms = max(int(now * 1000), self.last_ts_ms + 1)
        body, n = encode(self.registry.collect(), self.labels, ts_ms)
        with self.lock:
            dsegs, dsamples = self.queue.put(body, n)
            self.stats["collections"] += 1
            self.stats["samples_queued"] += n
            self.stats["segments_dropped"] += dsegs
            self.stats["samples_dropped"] += dsamples
        if dsegs and self.log is not None:
            self.log.warning("queue bound hit: oldest batches dropped", segments=dsegs, samples=dsamples,
                             queue_max_mb=self.cfg.queue_max_mb)
        self.wake.set()
        return n

    # sending
    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.cfg.url, data=body, method="POST", headers={
            "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:  # noqa: S310 - configured URL
            r.read()

    def send_one(self) -> bool | None:
        """Send the oldest segment: True sent (or rejected for good), False failed (retry later),
        None when the queue is empty."""
        with self.lock:
            segs = self.queue.segments()
            if not segs:
                return None
            _, n, path = segs[0]
            try:
                body = path.read_bytes()
            except OSError:  # dropped by the bound meanwhile
                return True
        try:
            self._post(body)
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 and e.code != 429:  # the receiver will never take it
                detail = e.read(300).decode("utf-8", "replace").strip()
                with self.lock:
                    path.unlink(missing_ok=True)
                    self.stats["segments_rejected"] += 1
                    self.stats["samples_rejected"] += n
                    self._error(f"HTTP {e.code}: {detail}")
                if self.log is not None:
                    self.log.error("batch rejected", status=e.code, samples=n, detail=detail)
                return True
            self._failed(f"HTTP {e.code}")
            return False
        except (OSError, urllib.error.URLError, ValueError) as e:
            self._failed(str(getattr(e, "reason", e)))
            return False
        with self.lock:
            path.unlink(missing_ok=True)
            self.stats["segments_sent"] += 1
            self.stats["samples_sent"] += n
            self.stats["bytes_sent"] += len(body)
            self.stats["last_ok_at"] = time.time()
        self.attempt = 0
        return True

    def _error(self, why: str) -> None:
        self.stats["last_error"] = why
        self.stats["last_error_at"] = time.time()

    def _failed(self, why: str) -> None:
        with self.lock:
            self.stats["failed_attempts"] += 1
            self._error(why)
        if self.attempt == 0 and self.log is not None:
            self.log.warning("receiver unavailable; retrying with backoff", error=why)
        self.attempt += 1

    def backoff_s(self) -> float:
        """Exponential, with jitter (75-100 %) so a fleet whose receiver comes back does not retry in step."""
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_start_s * 2 ** max(0, self.attempt - 1))
        return base * random.uniform(0.75, 1.0)

    def state(self) -> dict:
        with self.lock:
            segs = self.queue.segments()
            return {"url": self.cfg.url, "labels": self.labels, **self.stats,
                    "queue_segments": len(segs), "queue_samples": sum(n for _, n, _ in segs),
                    "queue_bytes": self.queue.disk_bytes(), "queue_max_bytes": self.queue.max_bytes}

    def save(self) -> None:
        from .supervisor import write_atomic

        run = _run_dir(self.data_dir)
        try:
            run.mkdir(mode=0o700, exist_ok=True)
            write_atomic(run / STATUS_NAME, orjson.dumps({**self.state(), "pid": os.getpid(),
                                                          "updated_at": time.time()}))
        except OSError:
            pass

    def _sender(self, stop: threading.Event) -> None:
        while not stop.is_set():
            r = self.send_one()
            if r is None:
                self.wake.wait(1.0)
                self.wake.clear()
            elif r is False:
                stop.wait(self.backoff_s())

    def run(self, stop: threading.Event) -> int:
        sender = threading.Thread(target=self._sender, args=(stop,), name="remote-write-send", daemon=True)
        sender.start()
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                self.collect_once()
            except OSError as e:  # a full disk: this collection is lost (counted as dropped)
                with self.lock:
                    self.stats["segments_dropped"] += 1
                    self._error(f"queue write failed: {e.strerror or e}")
            self.save()
            next_at += self.cfg.interval_s
            stop.wait(max(0.0, next_at - time.monotonic()))
        sender.join(timeout=self.cfg.timeout_s + 1)
        self.save()
        return 0


def main(argv: list[str] | None = None) -> int:
    from . import log as klog
    from . import servicecli
    from .completion import add_completion

    p = servicecli.parser("ks-remote-write", "Push the samples ks-exporter serves to a Prometheus remote-write "
                          "receiver through a bounded on-disk queue ([remote_write] in the config file).")
    p.add_argument("--url", default=None, help="receiver URL (default [remote_write] url)")
    add_completion(p)
    a = p.parse_args(argv)
    cfg = servicecli.config_section("ks-remote-write", a, "remote_write")
    if cfg is None:
        return 2
    if a.url:
        import dataclasses

        cfg = dataclasses.replace(cfg, url=a.url)
    if not cfg.url:
        print("ks-remote-write: no receiver: set [remote_write] url in the config file or --url", file=sys.stderr)
        return 2
    try:
        parse_labels(cfg.labels)
    except ValueError as e:
        print(f"ks-remote-write: {e}", file=sys.stderr)
        return 2
    log = klog.configure("ks-remote-write")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w = RemoteWriter(servicecli.data_dir(a), cfg, log)
    log.info("started", url=cfg.url, labels=w.labels, interval_s=cfg.interval_s, queue_max_mb=cfg.queue_max_mb)
    return w.run(stop)


if __name__ == "__main__":
    sys.exit(main())

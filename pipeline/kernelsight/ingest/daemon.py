"""ks-ingest: JSON lines from the FIFO (or a recorded file) into SQLite.

Each line is validated against the event contract, routed by type to its
table and inserted in batches (flush on N rows or T ms).  A bad line is never
fatal: it is quarantined in rejected_events with the reason.  Counters per
type make every line accountable: received = stored + rejected + pending.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import orjson

from .. import db
from ..fifo import open_reader
from ..schema import LINE_MAX, RejectedLine, Schema, load_schema

INVALID = "_invalid"  # bucket for lines whose type could not be read
UNKNOWN = "_unknown"  # bucket for well-formed lines of an unknown type (bounded cardinality)
READ_CHUNK = 1 << 20


@dataclass
class Counts:
    received: int = 0
    stored: int = 0
    rejected: int = 0


class Ingestor:
    def __init__(
        self,
        conn: sqlite3.Connection,
        schema: Schema,
        *,
        batch_size: int = 2000,
        flush_ms: int = 200,
        mirror_dir: Path | None = None,
        log=None,
    ):
        self.conn = conn
        self.schema = schema
        self.batch_size = batch_size
        self.flush_s = flush_ms / 1000.0
        self.log = log
        self.pending: dict[str, list[tuple]] = {t: [] for t in schema.events}
        self.n_pending = 0
        self.rejects: list[tuple] = []
        self.counts: dict[str, Counts] = defaultdict(Counts)
        self.insert_sql = {t: s.insert_sql() for t, s in schema.events.items()}
        self.validators = {t: s.validate for t, s in schema.events.items()}
        self.last_flush = time.monotonic()
        self.mirror_dir = mirror_dir
        self.mirrors: dict[str, object] = {}
        self.mirror_errors = 0
        if mirror_dir is not None:
            mirror_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- the hot path -------------------------------------------------------
    def feed_lines(self, lines) -> None:
        """Take many lines (without newlines; empty ones are skipped).

        Valid lines are only appended to their type's batch here: `received`
        for them is counted when the batch is flushed (pending until then),
        which keeps per-line work to parse, validate, append.
        """
        loads, validators, pending = orjson.loads, self.validators, self.pending
        errors = (orjson.JSONDecodeError, KeyError, TypeError, RejectedLine)
        appended = 0
        for line in lines:
            if not line:
                continue
            try:
                if len(line) > LINE_MAX:
                    raise RejectedLine("oversize")  # reason worded by the schema, below
                obj = loads(line)
                t = obj["type"]
                row = validators[t](obj)
            except errors as e:
                self._reject_reason(line, e)
                continue
            pending[t].append(row)
            appended += 1
            if self.mirror_dir is not None:
                self._mirror(t, line)
        self.n_pending += appended
        if self.n_pending >= self.batch_size:
            self.flush()

    def _reject_reason(self, line: bytes, e: Exception) -> None:
        # Work out the precise reason off the hot path, with the same checks.
        try:
            self.schema.validate_line(line)
            reason, etype = f"rejected: {e!r}", None  # pragma: no cover - defensive
        except RejectedLine as r:
            reason, etype = r.reason, r.event_type
        if etype is None and reason.startswith("unknown event type"):
            etype = UNKNOWN
        self.reject(line, reason, etype)

    def reject(self, line: bytes, reason: str, etype: str | None) -> None:
        key = etype or INVALID
        self.counts[key].received += 1
        self.rejects.append((time.time_ns(), etype, reason, len(line), bytes(line[:LINE_MAX])))
        if self.log is not None and self.counts[key].rejected < 20:
            self.log.warning("line rejected", event_type=key, reason=reason, size_bytes=len(line))
        if len(self.rejects) >= self.batch_size:
            self.flush()

    def _mirror(self, t: str, line: bytes) -> None:
        # Best effort: the database is the source of truth.
        try:
            f = self.mirrors.get(t)
            if f is None:
                path = self.mirror_dir / f"{t}.jsonl"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
                f = self.mirrors[t] = os.fdopen(fd, "ab", buffering=1 << 16)
            f.write(line + b"\n")
        except OSError:
            self.mirror_errors += 1

    # -- batching -----------------------------------------------------------
    def due(self) -> bool:
        return (self.n_pending or self.rejects) and time.monotonic() - self.last_flush >= self.flush_s

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.n_pending and not self.rejects:
            return
        conn = self.conn
        conn.execute("BEGIN")
        try:
            for t, rows in self.pending.items():
                if not rows:
                    continue
                self.counts[t].received += len(rows)
                try:
                    conn.execute("SAVEPOINT batch")
                    conn.executemany(self.insert_sql[t], rows)
                    conn.execute("RELEASE batch")
                    self.counts[t].stored += len(rows)
                except (sqlite3.Error, OverflowError):
                    # One bad row must not cost the batch: redo it row by row.
                    conn.execute("ROLLBACK TO batch")
                    conn.execute("RELEASE batch")
                    self._insert_one_by_one(t, rows)
                rows.clear()
            self.n_pending = 0
            if self.rejects:
                conn.executemany(
                    "INSERT INTO rejected_events(ts, event_type, reason, size_bytes, raw) VALUES (?,?,?,?,?)",
                    self.rejects,
                )
                for r in self.rejects:
                    self.counts[r[1] or INVALID].rejected += 1
                self.rejects.clear()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for f in self.mirrors.values():
            try:
                f.flush()
            except OSError:
                self.mirror_errors += 1

    def _insert_one_by_one(self, t: str, rows: list[tuple]) -> None:
        sql = self.insert_sql[t]
        for row in rows:
            try:
                self.conn.execute(sql, row)
                self.counts[t].stored += 1
            except (sqlite3.Error, OverflowError) as e:
                self.counts[t].received -= 1  # reject() counts it again, under the same type
                self.reject(orjson.dumps(dict(zip(self.schema.events[t].columns, row), type=t)),
                            f"database refused the row: {e}", t)

    # -- accounting ---------------------------------------------------------
    def write_stats(self) -> None:
        now = time.time_ns()
        pid = os.getpid()
        pend = {t: len(r) for t, r in self.pending.items()}
        types = sorted(set(self.counts) | {t for t, n in pend.items() if n})
        rows = [
            (now, "ingest", pid, t, self.counts[t].received + pend.get(t, 0), self.counts[t].stored,
             self.counts[t].rejected, pend.get(t, 0))
            for t in types
        ]
        if rows:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO pipeline_stats(ts, stage, pid, event_type, received, stored, rejected, pending)"
                " VALUES (?,?,?,?,?,?,?,?)",
                rows,
            )
            self.conn.execute("COMMIT")

    def totals(self) -> Counts:
        tot = Counts(received=self.n_pending)
        for c in self.counts.values():
            tot.received += c.received
            tot.stored += c.stored
            tot.rejected += c.rejected
        return tot

    def close(self) -> None:
        self.flush()
        self.write_stats()
        for f in self.mirrors.values():
            try:
                f.close()
            except OSError:
                pass


class LineSplitter:
    """Cut a byte stream into lines; a line that grows past LINE_MAX without a
    newline is reported once (its first LINE_MAX bytes) and skipped to its end,
    so junk without newlines cannot make the buffer grow without bound."""

    def __init__(self, ingestor: Ingestor):
        self.ing = ingestor
        self.buf = b""
        self.discarding = False

    def push(self, chunk: bytes) -> None:
        data = self.buf + chunk if self.buf else chunk
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                self.buf = b""
                return
            data = data[nl + 1 :]
            self.discarding = False
        lines = data.split(b"\n")
        self.buf = lines.pop()
        self.ing.feed_lines(lines)
        if len(self.buf) > LINE_MAX:
            self.ing.reject(self.buf[:LINE_MAX], f"line over the {LINE_MAX}-byte limit (no newline within it)", None)
            self.buf = b""
            self.discarding = True

    def finish(self) -> None:
        """End of input: a last line without a newline is still a line."""
        if self.buf and not self.discarding:
            self.ing.feed_lines((self.buf,))
        self.buf = b""


def replay(path: Path, ing: Ingestor) -> None:
    split = LineSplitter(ing)
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            split.push(chunk)
    split.finish()
    ing.flush()


class Daemon:
    def __init__(self, fifo_path: str, ing: Ingestor, *, stats_interval_s: float = 5.0, log=None):
        self.fifo_path = fifo_path
        self.ing = ing
        self.stats_interval_s = stats_interval_s
        self.log = log
        self.stopping = False

    def _stop(self, signum, _frame) -> None:
        self.stopping = True
        if self.log is not None:
            self.log.info("stopping", signal=signal.Signals(signum).name)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        rfd, keepalive = open_reader(self.fifo_path)
        split = LineSplitter(self.ing)
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        next_stats = time.monotonic() + self.stats_interval_s
        if self.log is not None:
            self.log.info("ingesting", fifo=self.fifo_path)
        try:
            while not self.stopping:
                try:
                    ready = poller.poll(int(self.ing.flush_s * 1000))
                except InterruptedError:  # pragma: no cover - PEP 475 retries poll
                    ready = []
                if ready:
                    self._drain(rfd, split)
                if self.ing.due():
                    self.ing.flush()
                if time.monotonic() >= next_stats:
                    self.ing.flush()
                    self.ing.write_stats()
                    next_stats = time.monotonic() + self.stats_interval_s
            # Producers are stopped before us: whatever they wrote is in the pipe now.
            self._drain(rfd, split)
            split.finish()
        finally:
            self.ing.close()
            os.close(rfd)
            os.close(keepalive)
            if self.log is not None:
                t = self.ing.totals()
                self.log.info("stopped", received=t.received, stored=t.stored, rejected=t.rejected)

    def _drain(self, rfd: int, split: LineSplitter) -> None:
        while True:
            try:
                chunk = os.read(rfd, READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:  # cannot happen while we hold the keep-alive writer
                return
            split.push(chunk)
            if len(chunk) < READ_CHUNK:
                return


def make_ingestor(data_dir: Path, *, batch_size=2000, flush_ms=200, mirror=False, log=None) -> Ingestor:
    schema = load_schema()
    conn = db.connect(db.db_path(data_dir), schema)
    mirror_dir = data_dir / "stream" if mirror else None
    return Ingestor(conn, schema, batch_size=batch_size, flush_ms=flush_ms, mirror_dir=mirror_dir, log=log)

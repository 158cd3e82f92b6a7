"""ks-ingest: JSON lines from the FIFO (or a recorded file) into SQLite.

Each line is validated against the event contract, routed by type to its
table and inserted in batches (flush on N rows or T ms).  A bad line is never
fatal: it is quarantined in rejected_events with the reason.  Counters per
type make every line accountable: received = stored + rejected + pending,
and stored and rejected move only once the COMMIT that holds those rows has
returned, so they never count a row the database does not have.

When the database cannot take a batch for a reason that is not the rows'
(locked past the busy timeout, disk full, I/O error), the batch stays in
memory, is rolled back cleanly and retried with a doubling backoff; reading
goes on until the pending lines reach a memory bound, then stops, so the pipe
fills and the producers count their drops.  DATA_DIR/ingest_status.json says
so (status.py).

The daemon takes the FIFO's bytes through DATA_DIR/run/ingest.spool (spool.py)
and each COMMIT records how far the spool is committed, so lines read and not
yet committed outlive a kill -9: the next start replays them first.
"""

from __future__ import annotations

import errno
import math
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
from ..bell import OOM_TABLES, Bell
from ..fifo import open_reader
from ..procutil import SignalWakeup, pipe_size
from ..schema import LINE_MAX, RejectedLine, Schema, load_schema
from . import spool as ks_spool
from . import status as ks_status

INVALID = "_invalid"  # bucket for lines whose type could not be read
UNKNOWN = "_unknown"  # bucket for well-formed lines of an unknown type (bounded cardinality)
READ_CHUNK = 1 << 20
# PEP 475 resumes poll() after the SIGTERM handler: where no signal wake-up pipe could be
# set (procutil.SignalWakeup), stopping is seen only once it returns, so it never waits
# longer than this, whatever --flush-ms says.
POLL_MAX_MS = 500
# Commit what is pending at least this often.  Producers write once a second, so one
# transaction a second writes each table's last pages once instead of five times (a
# fifth of the WAL traffic and page writes of 200 ms at idle); a full batch
# (batch_size rows) is committed at once whatever the time.
FLUSH_MS = 1000
# While the FIFO brings little, it is read on a cadence instead of as each line lands: ~15
# producers write once a second each, at their own phases, so reading on readiness woke
# ks-ingest ~11 times a second for a line or two, and a wake-up costs more than those lines.
# The cadence is the commit's (FLUSH_MS) where the pipe holds QUIET_BURST_BYTES_PER_S for that
# long, so one wake-up a second reads and commits, and lines wait in the pipe rather than in
# memory, committed at the same moments; a smaller pipe (fifo.PIPE_SIZE could not be set) is
# read more often.  A read of more than QUIET_MAX_BYTES_PER_S over the cadence goes back to
# reading on readiness.
# 3x the busiest second measured on this 2-CPU VM: a 5,000/s forkstorm (2,074 execs/s got
# through) brought ~0.6 MB/s from all producers.  A 1 MiB pipe is read every 0.5 s, 4 MiB every 1 s.
QUIET_BURST_BYTES_PER_S = 2 << 20
QUIET_MAX_BYTES_PER_S = 256 << 10
QUIET_READ_MIN_S = 0.05


def quiet_read_every_s(pipe_bytes: int, flush_s: float) -> float:
    """Seconds between quiet reads: at most the commit interval, and short enough that the pipe
    holds QUIET_BURST_BYTES_PER_S of lines arriving just after a read."""
    return max(QUIET_READ_MIN_S, min(flush_s, pipe_bytes / QUIET_BURST_BYTES_PER_S))


# Below the supervisor's stop timeout, so a locked database cannot hold a
# stopping ks-ingest past it; a longer lock is a retry, not a lost batch.
INGEST_BUSY_TIMEOUT_MS = 5_000
# At exit, once the database has failed, the last flush and the final stats
# row wait this long each at most: after SIGTERM ks-ingest takes at most an
# attempt in progress (INGEST_BUSY_TIMEOUT_MS) plus twice this, plus the drain.
CLOSE_BUSY_TIMEOUT_MS = 1_000
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
# Lines (JSON bytes) kept while the database refuses them; as parsed rows they
# take two to three times this in memory.
PENDING_MAX_BYTES = 64 << 20
REJECT_OVERHEAD_BYTES = 128  # the tuple, its ints and reason beside each quarantined line
REJECTS_LOGGED_PER_TYPE = 20


class _Oversize(Exception):
    """A line over LINE_MAX, raised on the hot path; the schema words the reason."""

REJECT_SQL = "INSERT INTO rejected_events(ts, event_type, reason, size_bytes, raw) VALUES (?,?,?,?,?)"
STATS_SQL = ("INSERT INTO pipeline_stats(ts, stage, pid, event_type, received, stored, rejected, pending)"
             " VALUES (?,?,?,?,?,?,?,?)")

# SQLite primary result codes that describe the database, not the row: the
# batch is kept and retried.  Any other code met while inserting a row
# (CONSTRAINT, MISMATCH, TOOBIG, RANGE, ERROR...) quarantines that row.
SQLITE_FULL = 13
_DATABASE_STATE_CODES = {
    5,  # BUSY
    6,  # LOCKED
    7,  # NOMEM
    8,  # READONLY
    9,  # INTERRUPT
    10,  # IOERR
    11,  # CORRUPT
    SQLITE_FULL,
    14,  # CANTOPEN
    15,  # PROTOCOL
    22,  # NOLFS
    26,  # NOTADB
}
# The same, for an error that carries no code (raised by a wrapper, say).
_DATABASE_STATE_WORDS = ("locked", "busy", "disk", "full", "i/o", "unable to open", "readonly", "read-only",
                         "out of memory", "malformed", "not a database", "interrupted")


def _sqlite_code(e: BaseException) -> int | None:
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if type(code) is int else None


def is_row_error(e: BaseException) -> bool:
    """True when e is about the row being stored (a constraint, range or type,
    or a value Python cannot bind): that row alone is quarantined.  False when
    it is about the database (locked, full, I/O): the whole batch is kept."""
    if isinstance(e, OSError):
        return False
    if not isinstance(e, sqlite3.Error):
        return True  # OverflowError, UnicodeEncodeError, TypeError: binding this row's values
    code = _sqlite_code(e)
    if code is not None:
        return code not in _DATABASE_STATE_CODES
    msg = str(e).lower()
    return not any(w in msg for w in _DATABASE_STATE_WORDS)


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return _sqlite_code(e) == SQLITE_FULL or "is full" in str(e).lower()


def _safe_text(s: str) -> str:
    # Reasons end up in a TEXT column and in logs: never a lone surrogate.
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


class StoreUnavailable(Exception):
    """The database cannot take the batch now (locked, full, I/O): keep it and retry."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error
        self.disk_full = is_disk_full(error)


@dataclass
class Counts:
    received: int = 0
    stored: int = 0
    rejected: int = 0
    pending: int = 0


class Ingestor:
    def __init__(
        self,
        conn: sqlite3.Connection,
        schema: Schema,
        *,
        batch_size: int = 2000,
        flush_ms: int = FLUSH_MS,
        mirror_dir: Path | None = None,
        log=None,
        status_file: Path | None = None,
        max_pending_bytes: int = PENDING_MAX_BYTES,
        busy_timeout_ms: int | None = None,
    ):
        self.conn = conn
        self.schema = schema
        self.batch_size = batch_size
        self.flush_s = flush_ms / 1000.0
        self.log = log
        # Parsed rows and quarantined lines not yet committed: the counts below
        # take them in only once their COMMIT has returned.
        self.pending: dict[str, list[tuple]] = {t: [] for t in schema.events}
        self.n_pending = 0
        self.rejects: list[tuple] = []
        self.pending_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        self.counts: dict[str, Counts] = defaultdict(Counts)
        self.rejects_logged: dict[str, int] = defaultdict(int)
        self.insert_sql = {t: s.insert_sql() for t, s in schema.events.items()}
        self.oom_types = frozenset(t for t, s in schema.events.items() if s.table in OOM_TABLES)
        self.validators = {t: s.validate for t, s in schema.events.items()}
        self.clock = time.monotonic  # flush timing and backoff (tests replace it)
        self.last_flush = self.clock()
        self.mirror_dir = mirror_dir
        self.mirrors: dict[str, object] = {}
        self.mirror_errors = 0
        if mirror_dir is not None:
            mirror_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Health, for the status file.  Times named *_at / *_since are Unix epoch seconds.
        self.status_writer = ks_status.StatusWriter(status_file) if status_file is not None else None
        self.busy_timeout_ms = busy_timeout_ms
        self.retries_total = 0
        self.failures_in_row = 0
        self.retry_at_monotonic = 0.0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failing_since: float | None = None
        self.disk_full_since: float | None = None
        self.last_commit_at: float | None = None
        self.reading_paused_since: float | None = None
        self.stats_write_errors_total = 0
        self.stats_write_failed = False  # the last pipeline_stats write failed
        self.status_write_errors_total = 0
        # Set by the daemon: each COMMIT then records how far the spool is committed.
        self.spool: ks_spool.Spool | None = None
        self.bell: Bell | None = None  # rung after each commit that stored rows (the daemon's)

    # -- the hot path -------------------------------------------------------
    def feed_lines(self, lines) -> None:
        """Take many lines (without newlines; empty ones are skipped).

        Valid lines are only appended to their type's batch here: they are
        pending until their batch is committed, which keeps per-line work to
        parse, validate, append.
        """
        loads, validators, pending = orjson.loads, self.validators, self.pending
        mirror = self.mirror_dir is not None
        appended = 0
        size_bytes = 0
        for line in lines:
            if not line:
                continue
            try:
                n = len(line)
                if n > LINE_MAX:
                    raise _Oversize
                obj = loads(line)
                t = obj["type"]
                row = validators[t](obj)
            except Exception as e:  # whatever a line does costs that line only
                self._reject_reason(line, e)
                continue
            pending[t].append(row)
            appended += 1
            size_bytes += n
            if mirror:
                self._mirror(t, line)
        self.n_pending += appended
        self.pending_bytes += size_bytes
        self.flush_if_full()

    def _reject_reason(self, line: bytes, e: Exception) -> None:
        # Work out the precise reason off the hot path, with the same checks; a
        # JSON error or a validator's own RejectedLine already carries it.
        if type(e) is RejectedLine:
            reason, etype = e.reason, e.event_type
        elif type(e) is orjson.JSONDecodeError:
            reason, etype = f"invalid JSON: {e}", None
        else:
            try:
                self.schema.validate_line(line)
                reason, etype = f"rejected: {e!r}", None  # pragma: no cover - defensive
            except RejectedLine as r:
                reason, etype = r.reason, r.event_type
            except Exception as x:  # pragma: no cover - a validator bug costs the line, not the daemon
                reason, etype = f"validator failed: {x!r}", None
        if etype is None and reason.startswith("unknown event type"):
            etype = UNKNOWN
        self.reject(line, reason, etype)

    def reject(self, line: bytes, reason: str, etype: str | None) -> None:
        """Queue a line for rejected_events; it is stored with the next batch.
        Never flushes: the callers do, after the line they are on."""
        key = etype or INVALID
        raw = bytes(line[:LINE_MAX])
        reason = _safe_text(reason)
        self.rejects.append((time.time_ns(), etype, reason, len(line), raw))
        self.pending_bytes += len(raw) + REJECT_OVERHEAD_BYTES
        if self.log is not None and self.rejects_logged[key] < REJECTS_LOGGED_PER_TYPE:
            self.rejects_logged[key] += 1
            self.log.warning("line rejected", event_type=key, reason=reason, size_bytes=len(line))

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
    def flush_if_full(self) -> None:
        if self.n_pending + len(self.rejects) >= self.batch_size:
            self.flush()

    def due(self) -> bool:
        if not self.n_pending and not self.rejects:
            return False
        now = self.clock()
        return now - self.last_flush >= self.flush_s and now >= self.retry_at_monotonic

    def flush_in_s(self) -> float:
        """Seconds until due() (0 when due; flush_s when nothing is pending)."""
        if not self.n_pending and not self.rejects:
            return self.flush_s
        now = self.clock()
        return max(0.0, self.last_flush + self.flush_s - now, self.retry_at_monotonic - now)

    def retry_in_s(self) -> float:
        return max(0.0, self.retry_at_monotonic - self.clock())

    def backlogged(self) -> bool:
        """Pending lines at the memory bound: stop taking more until a commit."""
        return self.pending_bytes >= self.max_pending_bytes

    def flush(self, *, force: bool = False) -> bool:
        """Store what is pending in one transaction.  True when nothing is left
        pending.  While the database is failing, a call before the backoff has
        run out does nothing (force: try anyway, as at exit)."""
        now = self.clock()
        if not self.n_pending and not self.rejects:
            self.last_flush = now
            return True
        if not force and now < self.retry_at_monotonic:
            return False
        self.last_flush = now
        try:
            stored, refused = self._store_batch()
        except StoreUnavailable as e:
            self._failed(e)
            return False
        self._committed(stored, refused)
        if self.bell is not None and stored:
            self.bell.ring(oom=not self.oom_types.isdisjoint(stored))
        return True

    def _store_batch(self) -> tuple[dict[str, int], list[tuple]]:
        """One transaction for every pending row and quarantined line; nothing in
        self changes here, so a failure leaves the batch exactly as it was."""
        conn = self.conn
        stored: dict[str, int] = {}
        refused: list[tuple] = []  # rows SQLite would not take, quarantined in the same transaction
        try:
            # IMMEDIATE takes the write lock first: a busy database fails here, before any work.
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Every table in one go: a savepoint per table cost two statements per table
                # per commit (~50 a second at idle), for the rare batch with a row SQLite refuses.
                for t, rows in self.pending.items():
                    if rows:
                        conn.executemany(self.insert_sql[t], rows)
                        stored[t] = len(rows)
            except Exception as e:
                if not is_row_error(e):
                    raise StoreUnavailable(e) from e
                # That batch again, table by table, each under a savepoint that takes back the
                # table's rows when one is refused, then row by row (_insert_rows).
                conn.execute("ROLLBACK")
                stored.clear()
                conn.execute("BEGIN IMMEDIATE")
                for t, rows in self.pending.items():
                    if rows:
                        stored[t] = self._insert_rows(t, rows, refused)
            rejects = self.rejects + refused if refused else self.rejects
            if rejects:
                conn.executemany(REJECT_SQL, rejects)
            if self.spool is not None:
                conn.executemany(ks_spool.STATE_SQL, self.spool.state_rows())
            conn.execute("COMMIT")
        except BaseException as e:
            self._rollback()
            if isinstance(e, StoreUnavailable):
                raise
            if isinstance(e, (sqlite3.Error, OSError)):
                raise StoreUnavailable(e) from e
            raise
        return stored, refused

    def _insert_rows(self, t: str, rows: list[tuple], refused: list[tuple]) -> int:
        conn = self.conn
        sql = self.insert_sql[t]
        try:
            conn.execute("SAVEPOINT batch")
            conn.executemany(sql, rows)
            conn.execute("RELEASE batch")
            return len(rows)
        except Exception as e:
            if not is_row_error(e):
                raise StoreUnavailable(e) from e
        # One bad row must not cost the batch: redo it row by row.
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        n_stored = 0
        for row in rows:
            try:
                conn.execute(sql, row)
                n_stored += 1
            except Exception as e:
                if not is_row_error(e):
                    raise StoreUnavailable(e) from e
                refused.append(self._refused_row(t, row, e))
        return n_stored

    def _refused_row(self, t: str, row: tuple, e: Exception) -> tuple:
        ev = dict(zip(self.schema.events[t].columns, row), type=t)
        try:
            raw = orjson.dumps(ev)
        except TypeError:  # a value orjson cannot write either (beyond 64 bits, a lone surrogate)
            raw = repr(ev).encode("utf-8", "backslashreplace")
        return (time.time_ns(), t, _safe_text(f"database refused the row: {e}"), len(raw), raw[:LINE_MAX])

    def _rollback(self) -> None:
        # After FULL or IOERR SQLite may already have rolled back: only roll back
        # a transaction that is still open, and never let this hide the first error.
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            if self.log is not None:
                self.log.error("rollback failed", error=_safe_text(str(e)))

    def _committed(self, stored: dict[str, int], refused: list[tuple]) -> None:
        # The COMMIT has returned: only now do the rows count as stored.
        counts = self.counts
        for t, n in stored.items():
            c = counts[t]
            c.received += len(self.pending[t])
            c.stored += n
            self.pending[t].clear()
        for r in self.rejects:
            c = counts[r[1] or INVALID]
            c.received += 1
            c.rejected += 1
        for r in refused:  # received already, with the rows of its type
            counts[r[1]].rejected += 1
        self.rejects = []
        self.n_pending = 0
        self.pending_bytes = 0
        self.last_commit_at = time.time()
        self.failures_in_row = 0
        self.retry_at_monotonic = 0.0
        if self.failing_since is not None:
            if self.log is not None:
                self.log.info("storing again", failed_for_s=round(time.time() - self.failing_since, 1),
                              retries_total=self.retries_total)
            self.failing_since = None
            self.disk_full_since = None
            self.write_status()
        for f in self.mirrors.values():
            try:
                f.flush()
            except OSError:
                self.mirror_errors += 1

    def _failed(self, e: StoreUnavailable) -> None:
        now = time.time()
        self.retries_total += 1
        self.failures_in_row += 1
        delay_s = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(self.failures_in_row - 1, 16))
        self.retry_at_monotonic = self.clock() + delay_s
        changed = self.failing_since is None or e.disk_full != (self.disk_full_since is not None)
        if self.failing_since is None:
            self.failing_since = now
        if not e.disk_full:
            self.disk_full_since = None
        elif self.disk_full_since is None:
            self.disk_full_since = now
        self.last_error = _safe_text(f"{type(e.error).__name__}: {e.error}")
        self.last_error_at = now
        if self.log is not None:
            self.log.warning("cannot store the batch; kept for a retry", error=self.last_error,
                             retry_in_s=round(delay_s, 2), pending_rows=self.n_pending + len(self.rejects),
                             pending_bytes=self.pending_bytes, retries_total=self.retries_total)
        if changed:
            self.write_status()

    def set_reading_paused(self, paused: bool) -> None:
        if paused == (self.reading_paused_since is not None):
            return
        self.reading_paused_since = time.time() if paused else None
        if self.log is not None:
            if paused:
                self.log.warning("pending lines at the memory bound; FIFO reading paused",
                                 pending_bytes=self.pending_bytes, max_pending_bytes=self.max_pending_bytes)
            else:
                self.log.info("FIFO reading resumed")
        self.write_status()

    def _shorten_busy_timeout(self) -> None:
        # A database that has just failed is unlikely to free up within a whole
        # busy timeout, and the supervisor's stop timeout is running.
        try:
            self.conn.execute(f"PRAGMA busy_timeout={CLOSE_BUSY_TIMEOUT_MS}")
        except sqlite3.Error:
            pass

    # -- accounting ---------------------------------------------------------
    def pending_by_type(self) -> dict[str, int]:
        pend = {t: len(r) for t, r in self.pending.items() if r}
        for r in self.rejects:
            key = r[1] or INVALID
            pend[key] = pend.get(key, 0) + 1
        return pend

    def write_stats(self, *, final: bool = False) -> bool:
        """One pipeline_stats row per type; True when written.  While the
        database is failing only the status file is written (final: try anyway)."""
        try:
            if self.failing_since is not None and not final:
                return False
            now = time.time_ns()
            pid = os.getpid()
            pend = self.pending_by_type()
            rows = []
            for t in sorted(set(self.counts) | set(pend)):
                c, p = self.counts[t], pend.get(t, 0)
                rows.append((now, "ingest", pid, t, c.received + p, c.stored, c.rejected, p))
            if not rows:
                return True
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(STATS_SQL, rows)
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as e:
                self._rollback()
                self.stats_write_failed = True
                self.stats_write_errors_total += 1
                self.last_error = _safe_text(f"{type(e).__name__}: {e}")
                self.last_error_at = time.time()
                if self.log is not None:
                    self.log.warning("pipeline_stats row not written", error=self.last_error)
                return False
            self.stats_write_failed = False
            return True
        finally:
            self.write_status()

    def status(self) -> dict:
        t = self.totals()
        if self.reading_paused_since is not None:
            state = "paused"
        elif self.failing_since is not None:
            state = "retrying"
        else:
            state = "storing"
        return {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "state": state,
            "received": t.received,
            "stored": t.stored,
            "rejected": t.rejected,
            "pending_rows": t.pending,
            "pending_bytes": self.pending_bytes,
            "max_pending_bytes": self.max_pending_bytes,
            "retries_total": self.retries_total,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "failing_since": self.failing_since,
            "disk_full": self.disk_full_since is not None,
            "disk_full_since": self.disk_full_since,
            "reading_paused": self.reading_paused_since is not None,
            "reading_paused_since": self.reading_paused_since,
            "last_commit_at": self.last_commit_at,
            "busy_timeout_ms": self.busy_timeout_ms,
            "stats_write_errors_total": self.stats_write_errors_total,
            "mirror_errors_total": self.mirror_errors,
            "spool_errors_total": self.spool.errors_total if self.spool is not None else 0,
            "spool_bytes": self.spool.size_bytes if self.spool is not None else 0,
        }

    def write_status(self) -> None:
        if self.status_writer is None:
            return
        try:
            self.status_writer.write(self.status())
        except OSError as e:
            self.status_write_errors_total += 1
            if self.log is not None and self.status_write_errors_total == 1:
                self.log.warning("status file not written", path=str(self.status_writer.path), error=str(e))

    def totals(self) -> Counts:
        pending = self.n_pending + len(self.rejects)
        tot = Counts(received=pending, pending=pending)
        for c in self.counts.values():
            tot.received += c.received
            tot.stored += c.stored
            tot.rejected += c.rejected
        return tot

    def close(self) -> None:
        """Last flush and the final stats row, each tried even if the other fails."""
        try:
            if self.failing_since is not None or self.stats_write_failed:
                self._shorten_busy_timeout()
            if not self.flush(force=True):
                self._shorten_busy_timeout()
        finally:
            written = self.write_stats(final=True)
            t = self.totals()
            if self.log is not None:
                if not written:
                    self.log.error("final pipeline_stats row not written", received=t.received, stored=t.stored,
                                   rejected=t.rejected, pending=t.pending, last_error=self.last_error)
                if t.pending:
                    self.log.error("rows not stored at exit", pending=t.pending, last_error=self.last_error)
            for f in self.mirrors.values():
                try:
                    f.close()
                except OSError:
                    pass


class LineSplitter:
    """Cut a byte stream into lines; a line that grows past LINE_MAX without a
    newline is reported once (its first LINE_MAX bytes) and skipped to its end,
    so junk without newlines cannot make the buffer grow without bound."""

    def __init__(self, ingestor: Ingestor, spool: ks_spool.Spool | None = None):
        self.ing = ingestor
        self.buf = b""
        self.discarding = False
        self.spool = spool

    def _fed(self) -> None:
        # Before anything fed can be flushed: the spool offset the flush records.
        if self.spool is not None:
            self.spool.fed(len(self.buf), self.discarding)

    def push(self, chunk: bytes) -> None:
        data = self.buf + chunk if self.buf else chunk
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                self.buf = b""
                self._fed()
                return
            data = data[nl + 1 :]
            self.discarding = False
        lines = data.split(b"\n")
        self.buf = lines.pop()
        self._fed()
        self.ing.feed_lines(lines)
        if len(self.buf) > LINE_MAX:
            self.ing.reject(self.buf[:LINE_MAX], f"line over the {LINE_MAX}-byte limit (no newline within it)", None)
            self.buf = b""
            self.discarding = True
            self._fed()
            self.ing.flush_if_full()

    def finish(self) -> None:
        """End of input: a last line without a newline is still a line."""
        last, self.buf = self.buf, b""
        self._fed()
        if last and not self.discarding:
            self.ing.feed_lines((last,))


def replay(path: Path, ing: Ingestor) -> None:
    split = LineSplitter(ing)
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            wait_for_room(ing)
            split.push(chunk)
    split.finish()
    ing.flush(force=True)


def wait_for_room(ing: Ingestor) -> None:
    """Hold the reader while the pending lines are at the memory bound, retrying
    the batch on its backoff; a database that stays unwritable holds it here,
    logging each retry."""
    while ing.backlogged():
        time.sleep(max(ing.retry_in_s(), 0.01))
        ing.flush()


class Daemon:
    def __init__(self, fifo_path: str, ing: Ingestor, *, stats_interval_s: float = 5.0, log=None,
                 spool: ks_spool.Spool | None = None, bell: Bell | None = None):
        self.fifo_path = fifo_path
        self.ing = ing
        self.stats_interval_s = stats_interval_s
        self.log = log
        self.stopping = False
        self.spool = spool  # planned already (open_spool): read_end is where its uncommitted bytes start
        ing.spool = spool
        ing.bell = bell

    def _stop(self, signum, _frame) -> None:
        self.stopping = True
        if self.log is not None:
            self.log.info("stopping", signal=signal.Signals(signum).name)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        rfd, keepalive = open_reader(self.fifo_path)
        spool = self.spool
        split = LineSplitter(self.ing, spool)
        wake = SignalWakeup.open()  # a stop ends any wait at once
        poller, quiet_poller = select.poll(), select.poll()
        poller.register(rfd, select.POLLIN)
        if wake is not None:
            poller.register(wake.fd, select.POLLIN)
            quiet_poller.register(wake.fd, select.POLLIN)
        quiet, next_read = False, 0.0
        ing = self.ing
        pipe_bytes = pipe_size(rfd)
        read_every_s = quiet_read_every_s(pipe_bytes, ing.flush_s)
        quiet_max_bytes = int(QUIET_MAX_BYTES_PER_S * read_every_s)
        if self.log is not None:
            self.log.info("ingesting", fifo=self.fifo_path, pipe_size_bytes=pipe_bytes, quiet_read_every_s=read_every_s,
                          busy_timeout_ms=ing.busy_timeout_ms,
                          max_pending_bytes=ing.max_pending_bytes, spool=spool is not None)
        ing.write_status()
        try:
            # The FIFO is open (writers are not refused) but not read until the
            # spool's lines, which were read from it earlier, are back in.
            recovered = spool is None or self._recover(split)
            next_stats = time.monotonic() + self.stats_interval_s
            spool_errors_reported = 0
            while recovered and not self.stopping:
                read = False
                if ing.backlogged():
                    # Not reading: the pipe fills and the producers count their drops,
                    # while memory stays bounded.  Short sleeps keep SIGTERM prompt.
                    ing.set_reading_paused(True)
                    time.sleep(min(ing.flush_s, max(ing.retry_in_s(), 0.01)))
                else:
                    ing.set_reading_paused(False)
                    limit_s = POLL_MAX_MS / 1000 if wake is None else ing.flush_s
                    if quiet:  # read when the cadence or a commit says so
                        wait_s = min(next_read - time.monotonic(), ing.flush_in_s(), limit_s)
                        # rounded up: a wake-up a little early would find the commit not yet due
                        ready = quiet_poller.poll(max(0, math.ceil(wait_s * 1000)))
                    else:
                        ready = poller.poll(int(min(ing.flush_in_s(), limit_s) * 1000))
                    if wake is not None and any(fd == wake.fd for fd, _ in ready):
                        wake.drain()
                    if self.stopping:
                        break  # the drain after the loop reads what is left
                    if quiet or any(fd == rfd for fd, _ in ready):
                        read = True
                        quiet = self._drain(rfd, split) <= quiet_max_bytes
                if ing.due():
                    ing.flush()
                if read:
                    # from after the commit: the next quiet read finds the next commit due
                    next_read = time.monotonic() + read_every_s
                if time.monotonic() >= next_stats:
                    ing.flush()
                    ing.write_stats()
                    next_stats = time.monotonic() + self.stats_interval_s
                if spool is not None:
                    if not ing.n_pending and not ing.rejects:
                        spool.maybe_reset(split)
                    if spool.errors_total != spool_errors_reported:
                        spool_errors_reported = spool.errors_total
                        ing.write_status()
            if recovered:
                # Producers are stopped before us: whatever they wrote is in the pipe now
                # (unless the pending lines are at their bound: then it stays there).
                self._drain(rfd, split)
                split.finish()
        finally:
            ing.close()
            if spool is not None:
                if not ing.n_pending and not ing.rejects:
                    spool.maybe_reset(split, force=True)  # a clean stop leaves it empty
                spool.close()
            os.close(rfd)
            os.close(keepalive)
            if wake is not None:
                wake.close()
            if self.log is not None:
                t = ing.totals()
                self.log.info("stopped", received=t.received, stored=t.stored, rejected=t.rejected,
                              pending=t.pending, retries_total=ing.retries_total)

    def _recover(self, split: LineSplitter) -> bool:
        """Replay the spool's bytes past the committed offset: lines a killed
        ks-ingest had read and not committed.  False when stopped before the end
        (then the FIFO is not read: its bytes would land past unreplayed ones)."""
        spool, ing = self.spool, self.ing
        split.discarding = spool.fed_discarding
        pending_bytes = spool.size_bytes - spool.read_end
        if pending_bytes > 0:
            received_before = ing.totals().received
            while spool.read_end < spool.size_bytes:
                while ing.backlogged() and not self.stopping:  # wait_for_room, but SIGTERM ends it
                    time.sleep(max(ing.retry_in_s(), 0.01))
                    ing.flush()
                if self.stopping:
                    return False
                chunk = spool.replay_chunk(READ_CHUNK)
                if not chunk:  # unreadable: left in the spool for a later start
                    break
                split.push(chunk)
            ing.flush()
            if self.log is not None:
                self.log.info("recovered lines from the spool", lines=ing.totals().received - received_before,
                              bytes=pending_bytes, committed=not ing.n_pending and not ing.rejects,
                              partial_line_bytes=len(split.buf))
        if not ing.n_pending and not ing.rejects:
            spool.maybe_reset(split, force=True)
        return True

    def _drain(self, rfd: int, split: LineSplitter) -> int:
        """Read what the pipe holds (until pending lines reach their bound); the bytes read."""
        read = self.spool.read if self.spool is not None else os.read
        got = 0
        while not self.ing.backlogged():
            try:
                chunk = read(rfd, READ_CHUNK)
            except BlockingIOError:
                break
            if not chunk:  # cannot happen while we hold the keep-alive writer
                break
            got += len(chunk)
            split.push(chunk)
            if len(chunk) < READ_CHUNK:
                break
        return got


def connect_store(data_dir: Path, schema: Schema, *, busy_timeout_ms: int = INGEST_BUSY_TIMEOUT_MS,
                  wait: bool = False, log=None) -> sqlite3.Connection:
    """db.connect; with wait, a locked, full or failing database is retried on
    the same backoff as a batch instead of ending the process (a crash loop
    under the supervisor).  A StoreError (unsafe path) is never retried."""
    return _retrying(lambda: db.connect(db.db_path(data_dir), schema, busy_timeout_ms=busy_timeout_ms),
                     "cannot open the database; retrying", wait=wait, log=log)


def _retrying(fn, what: str, *, wait: bool, log=None):
    failures = 0
    while True:
        try:
            return fn()
        except (sqlite3.Error, OSError) as e:
            retry = is_disk_full(e) if isinstance(e, OSError) else not is_row_error(e)
            if not wait or not retry:
                raise
            failures += 1
            delay_s = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(failures - 1, 16))
            if log is not None:
                log.warning(what, error=_safe_text(f"{type(e).__name__}: {e}"), retry_in_s=round(delay_s, 2),
                            disk_full=is_disk_full(e))
            time.sleep(delay_s)


def read_spool_state(conn: sqlite3.Connection) -> dict[str, int]:
    """ingest_state (created here: the table is ks-ingest's own)."""
    conn.execute(ks_spool.STATE_TABLE_SQL)
    rows = conn.execute("SELECT key, value FROM ingest_state").fetchall()
    return {k: v for k, v in rows if k in ks_spool.STATE_KEYS and type(v) is int}


def open_spool(data_dir: Path, conn: sqlite3.Connection, *, log=None) -> ks_spool.Spool | None:
    """The daemon's spool, with the bytes a killed ks-ingest left uncommitted
    located (read_end); None, logged, when there can be none: ks-ingest then
    runs as without it.  A locked or full database is waited out."""
    try:
        spool = ks_spool.Spool.open(data_dir, log)
    except (OSError, ks_spool.SpoolBusy) as e:
        return _without_spool(e, log)
    try:
        state = _retrying(lambda: read_spool_state(conn), "cannot read the spool state; retrying", wait=True,
                          log=log)
        spool.plan_recovery(state)
    except OSError as e:  # the spool's own read failed: left untouched for a later start
        spool.close()
        return _without_spool(e, log)
    except BaseException:
        spool.close()
        raise
    return spool


def _without_spool(e: Exception, log) -> None:
    if log is not None:
        log.warning("running without a spool: a kill -9 loses the lines read and not committed",
                    error=_safe_text(str(e)))


def make_ingestor(data_dir: Path, *, batch_size=2000, flush_ms=FLUSH_MS, mirror=False, log=None,
                  max_pending_bytes: int = PENDING_MAX_BYTES, busy_timeout_ms: int = INGEST_BUSY_TIMEOUT_MS,
                  wait_for_db: bool = False) -> Ingestor:
    schema = load_schema()
    conn = connect_store(data_dir, schema, busy_timeout_ms=busy_timeout_ms, wait=wait_for_db, log=log)
    mirror_dir = data_dir / "stream" if mirror else None
    return Ingestor(conn, schema, batch_size=batch_size, flush_ms=flush_ms, mirror_dir=mirror_dir, log=log,
                    status_file=ks_status.status_path(data_dir), max_pending_bytes=max_pending_bytes,
                    busy_timeout_ms=busy_timeout_ms)

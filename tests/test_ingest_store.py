"""ks-ingest's batches against a database that fails: counts move only after COMMIT,
refused rows are quarantined, a locked, full or failing database keeps the batch."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from kernelsight import db
from kernelsight.ingest import daemon as ingest
from kernelsight.ingest import read_status
from kernelsight.ingest.daemon import Ingestor, LineSplitter
from kernelsight.ingest.status import STATUS_SIZE_BYTES, status_path
from kernelsight.schema import LINE_MAX, example_event, load_schema

SCHEMA = load_schema()
TS = 1_700_000_000_000_000_000
REFUSED_MARK = 424242  # a value the wrapper's "SQLite" refuses to store


def line(etype: str = "load", i: int = 0, **over) -> bytes:
    ev = example_event(SCHEMA.events[etype], TS + i)
    ev.update(over)
    return orjson.dumps(ev)


class FlakyConn:
    """A sqlite3 connection that fails on cue, as SQLite does.

    commit_failures: that many COMMITs raise `commit_error` without committing
    (a full disk at commit time); insert_failures: that many data INSERT
    statements raise `insert_error` (locked, I/O); a row holding REFUSED_MARK
    raises `refuse_error` whenever it is inserted (a row SQLite will not take).
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.commit_failures = 0
        self.commit_error: BaseException = sqlite3.OperationalError("database or disk is full")
        self.insert_failures = 0
        self.insert_error: BaseException = sqlite3.OperationalError("database is locked")
        self.refuse_error: BaseException | None = None
        self.auto_rollback = False  # SQLite rolls back by itself after FULL/IOERR

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def _data_insert(self, sql: str) -> bool:
        return sql.startswith("INSERT INTO") and "pipeline_stats" not in sql

    def _fail(self, error: BaseException):
        if self.auto_rollback and self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        raise error

    def execute(self, sql: str, params=()):
        if sql == "COMMIT" and self.commit_failures:
            self.commit_failures -= 1
            self._fail(self.commit_error)
        if self._data_insert(sql):
            if self.insert_failures:
                self.insert_failures -= 1
                self._fail(self.insert_error)
            if self.refuse_error is not None and REFUSED_MARK in params:
                raise self.refuse_error
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows):
        rows = list(rows)
        if self._data_insert(sql):
            if self.insert_failures:
                self.insert_failures -= 1
                self._fail(self.insert_error)
            if self.refuse_error is not None and any(REFUSED_MARK in r for r in rows):
                raise self.refuse_error
        return self.conn.executemany(sql, rows)


class Log:
    """Collects structlog-style calls."""

    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda msg, **kw: self.events.append((level, msg, kw))

    def messages(self, level: str) -> list[str]:
        return [m for lv, m, _ in self.events if lv == level]


def make(tmp_path: Path, batch_size: int = 2000, **kw) -> tuple[Ingestor, FlakyConn, Path]:
    data = tmp_path / "data"
    path = db.db_path(data)
    flaky = FlakyConn(db.connect(path, SCHEMA, busy_timeout_ms=ingest.INGEST_BUSY_TIMEOUT_MS))
    ing = Ingestor(flaky, SCHEMA, batch_size=batch_size, status_file=status_path(data), **kw)
    return ing, flaky, path


def db_counts(path: Path) -> tuple[int, int]:
    """(rows in the event tables, rows in rejected_events), through a separate connection."""
    conn = db.connect_readonly(path)
    try:
        stored = sum(conn.execute(f"SELECT COUNT(*) FROM {s.table}").fetchone()[0] for s in SCHEMA.events.values())
        return stored, conn.execute("SELECT COUNT(*) FROM rejected_events").fetchone()[0]
    finally:
        conn.close()


def final_stats(path: Path) -> dict[str, tuple]:
    conn = db.connect_readonly(path)
    try:
        rows = conn.execute(
            "SELECT event_type, received, stored, rejected, pending FROM pipeline_stats "
            "WHERE id IN (SELECT MAX(id) FROM pipeline_stats GROUP BY event_type)").fetchall()
    finally:
        conn.close()
    return {r[0]: r[1:] for r in rows}


def assert_reconciles(ing: Ingestor, path: Path, received: int) -> None:
    t = ing.totals()
    stored, rejected = db_counts(path)
    assert (t.stored, t.rejected) == (stored, rejected), "counts say stored or rejected what the DB lacks"
    assert t.received == received == t.stored + t.rejected + t.pending


@pytest.fixture
def no_backoff(monkeypatch):
    """A retry is due at once, so which flush retries does not depend on the clock."""
    monkeypatch.setattr(ingest, "RETRY_MIN_S", 0.0)
    monkeypatch.setattr(ingest, "RETRY_MAX_S", 0.0)


def test_failed_commit_counts_nothing_and_keeps_the_batch(tmp_path, no_backoff):
    ing, flaky, path = make(tmp_path, batch_size=500)
    flaky.commit_failures = 3
    lines = [line("load", i) for i in range(2500)] + [b"not json"] * 10
    ing.feed_lines(lines[:1000])  # batch full: the first flush fails
    t = ing.totals()
    assert (t.stored, t.rejected, t.pending) == (0, 0, 1000)
    assert db_counts(path) == (0, 0)
    assert ing.retries_total == 1 and "disk is full" in ing.last_error
    st = read_status(path.parent)
    assert st["disk_full"] and st["disk_full_since"] and st["state"] == "retrying" and st["pending_rows"] == 1000
    assert "disk full since" in ingest.ks_status.describe(st)
    assert len(path.parent.joinpath("ingest_status.json").read_bytes()) == STATUS_SIZE_BYTES
    ing.feed_lines(lines[1000:2000])  # two more failures while more lines arrive
    ing.feed_lines(lines[2000:2200])
    assert ing.retries_total == 3
    assert_reconciles(ing, path, 2200)
    assert ing.totals().stored == 0
    ing.feed_lines(lines[2200:])  # space is back: everything pending goes in one commit
    assert ing.flush()
    assert_reconciles(ing, path, len(lines))
    assert ing.totals().pending == 0 and db_counts(path) == (2500, 10)
    st = read_status(path.parent)
    assert not st["disk_full"] and st["state"] == "storing" and st["retries_total"] == 3
    ing.close()
    stats = final_stats(path)
    assert stats["load"] == (2500, 2500, 0, 0) and stats["_invalid"] == (10, 0, 10, 0)


@pytest.mark.parametrize("message", ["database is locked", "database or disk is full", "disk I/O error"])
@pytest.mark.parametrize("auto_rollback", [False, True], ids=["open", "rolled-back"])
def test_database_state_errors_keep_the_batch_and_roll_back_cleanly(tmp_path, no_backoff, message, auto_rollback):
    log = Log()
    ing, flaky, path = make(tmp_path, batch_size=100, log=log)
    flaky.auto_rollback = auto_rollback
    flaky.insert_failures = 2
    flaky.insert_error = sqlite3.OperationalError(message)
    ing.feed_lines([line("memory", i) for i in range(150)] + [b"\xff junk"])
    ing.feed_lines([line("memory", i) for i in range(150, 300)])
    assert ing.retries_total == 2 and not ing.conn.in_transaction
    assert ing.last_error == f"OperationalError: {message}"
    assert not any("rollback failed" in m for m in log.messages("error"))
    assert ing.flush()
    assert db_counts(path) == (300, 1)  # kept, not quarantined
    assert_reconciles(ing, path, 301)


def test_real_sqlite_errors_are_classified():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER NOT NULL, b INTEGER CHECK (b < 10))")
    row_errors = []
    for sql, args in [("INSERT INTO t VALUES (?, 1)", (None,)), ("INSERT INTO t VALUES (1, ?)", (11,)),
                      ("INSERT INTO t VALUES (?, 1)", (2**63,)), ("INSERT INTO t VALUES (?, 1)", ("\ud800",))]:
        with pytest.raises(Exception) as e:
            conn.execute(sql, args)
        row_errors.append(e.value)
    assert all(ingest.is_row_error(e) for e in row_errors)
    other = sqlite3.connect(":memory:")
    other.execute("PRAGMA max_page_count=2")  # this database is full at 2 pages
    with pytest.raises(sqlite3.OperationalError) as full:
        other.execute("CREATE TABLE big AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                      "WHERE i < 5000) SELECT i, hex(randomblob(100)) FROM n")
    assert not ingest.is_row_error(full.value) and ingest.is_disk_full(full.value)
    for msg in ["database is locked", "database table is locked", "disk I/O error", "database or disk is full",
                "unable to open database file", "attempt to write a readonly database"]:
        assert not ingest.is_row_error(sqlite3.OperationalError(msg)), msg
    for err in [sqlite3.IntegrityError("NOT NULL constraint failed"), sqlite3.IntegrityError("datatype mismatch"),
                sqlite3.DataError("string or blob too big"), OverflowError("Python int too large")]:
        assert ingest.is_row_error(err), err


@pytest.mark.parametrize("error", [
    sqlite3.IntegrityError("datatype mismatch"),
    sqlite3.DataError("string or blob too big"),
    OverflowError("Python int too large to convert to SQLite INTEGER"),
], ids=["mismatch", "toobig", "overflow"])
def test_2500_rows_refused_by_sqlite_in_one_flush_are_quarantined(tmp_path, error):
    """More refused rows than a batch in one flush: no flush from inside the flush."""
    log = Log()
    ing, flaky, path = make(tmp_path, batch_size=5000, log=log)
    flaky.refuse_error = error
    lines = [line("tcp", i, established=REFUSED_MARK) for i in range(2500)] + [line("tcp", i) for i in range(100)]
    ing.feed_lines(lines[:2600])
    assert ing.totals().pending == 2600
    assert ing.flush()
    ing.close()
    assert db_counts(path) == (100, 2500)
    assert final_stats(path)["tcp"] == (2600, 100, 2500, 0)
    assert_reconciles(ing, path, 2600)
    conn = db.connect_readonly(path)
    reason, raw = conn.execute("SELECT reason, raw FROM rejected_events LIMIT 1").fetchone()
    conn.close()
    assert reason == f"database refused the row: {error}"
    assert orjson.loads(raw)["established"] == REFUSED_MARK and orjson.loads(raw)["type"] == "tcp"
    assert not log.messages("error")


def test_2500_integers_beyond_64_bits_in_one_flush_are_rejected_by_the_validator(tmp_path):
    ing, _, path = make(tmp_path, batch_size=2000)
    huge = [2**63, 2**64 - 1, -(2**63) - 1, 10**30]

    def json_line(i, v):  # the stdlib writes any integer; orjson stops at 64 bits
        ev = example_event(SCHEMA.events["memory"], TS + i)
        ev["mem_free_kb"] = v
        return json.dumps(ev).encode()

    lines = [json_line(i, huge[i % 4]) for i in range(2500)]
    lines += [json_line(i, v) for i, v in enumerate([2**63 - 1, -(2**63)])]
    ing.feed_lines(lines)
    ing.close()
    assert db_counts(path) == (2, 2500)
    assert final_stats(path)["memory"] == (2502, 2, 2500, 0)
    conn = db.connect_readonly(path)
    reasons = {r[0] for r in conn.execute("SELECT reason FROM rejected_events")}
    conn.close()
    assert reasons == {
        "field 'mem_free_kb' must be a 64-bit integer (from -2^63 to 2^63-1), got 9223372036854775808",
        "field 'mem_free_kb' must be a 64-bit integer (from -2^63 to 2^63-1), got 18446744073709551615",
        "field 'mem_free_kb' must be an integer, got float",  # orjson reads what is beyond its range as a float
    }


def test_reject_only_queues(tmp_path):
    ing, flaky, path = make(tmp_path, batch_size=100)
    for i in range(5000):
        ing.reject(b"x%d" % i, "test", None)
    assert not flaky.in_transaction and db_counts(path) == (0, 0)
    assert ing.totals().pending == 5000 and ing.totals().rejected == 0
    ing.flush_if_full()
    assert db_counts(path) == (0, 5000)


def test_final_stats_row_is_written_when_the_last_flush_fails(tmp_path, no_backoff):
    log = Log()
    ing, flaky, path = make(tmp_path, batch_size=10, log=log)
    ing.feed_lines([line("psi", i) for i in range(5)])
    assert ing.flush()
    flaky.insert_failures = 1000  # the data tables stay locked; pipeline_stats does not
    ing.feed_lines([line("psi", i) for i in range(5, 25)])
    ing.close()
    assert final_stats(path)["psi"] == (25, 5, 0, 20)  # what was lost is in the record
    assert "rows not stored at exit" in log.messages("error")
    assert db_counts(path) == (5, 0)


def test_final_stats_row_that_cannot_be_written_is_logged_with_the_counts(tmp_path, no_backoff):
    log = Log()
    ing, flaky, path = make(tmp_path, batch_size=10, log=log)
    ing.feed_lines([line("psi", i) for i in range(20)])
    flaky.commit_failures = 1000
    ing.feed_lines([line("psi", i) for i in range(20, 30)])
    ing.close()
    kw = next(e[2] for e in log.events if e[1] == "final pipeline_stats row not written")
    assert (kw["received"], kw["stored"], kw["pending"]) == (30, 20, 10)
    assert "disk is full" in kw["last_error"]
    assert db_counts(path) == (20, 0)
    assert read_status(path.parent)["pending_rows"] == 10


def test_pending_memory_is_bounded_and_reading_waits(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "RETRY_MIN_S", 3600.0)  # no retry comes due during this test
    ing, flaky, path = make(tmp_path, batch_size=100, max_pending_bytes=64 * 1024)
    flaky.insert_failures = 1
    split = LineSplitter(ing)
    chunk = b"".join(line("load", i) + b"\n" for i in range(200))
    fed = 0
    while not ing.backlogged():
        split.push(chunk)
        fed += 200
    assert ing.pending_bytes < 64 * 1024 + len(chunk)
    ing.set_reading_paused(True)
    st = read_status(path.parent)
    assert st["reading_paused"] and st["state"] == "paused" and "FIFO reading paused" in ingest.ks_status.describe(st)
    ing.retry_at_monotonic = 0.0  # the retry is due
    ingest.wait_for_room(ing)
    assert not ing.backlogged() and db_counts(path) == (fed, 0)
    ing.set_reading_paused(False)
    assert read_status(path.parent)["state"] == "storing"


def test_non_utf8_bytes_are_quarantined_or_stored_safely(tmp_path):
    ing, _, path = make(tmp_path, batch_size=50)
    good = orjson.loads(line("net_dev"))
    bad = [
        b'{"type":"net_dev","interface":"\xff\xfe"}',
        line("net_dev").replace(b'"x"', b'"\xc3\x28"'),  # invalid continuation byte
        line("net_dev").replace(b'"x"', b'"\xed\xa0\x80"'),  # an encoded surrogate
        line("net_dev").replace(b'"x"', b'"\\ud800"'),  # a lone surrogate escape
        line("net_dev").replace(b'"x"', b'"\xc0\xaf"'),  # overlong
        b"\x80\x81\x82",
        bytes(range(256)).replace(b"\n", b""),
        b'{"type":"\xff"}',
        b'{"\xff":1}',
    ]
    fine = [orjson.dumps({**good, "interface": s}) for s in ["\u00e9th0", "\U0001f4a5", "a\u0000b", "\u2028"]]
    split = LineSplitter(ing)
    split.push(b"\n".join(bad + fine) + b"\n" + b"\xff" * (LINE_MAX + 10))  # and a long unterminated line
    split.push(b"\n")
    split.finish()
    ing.close()
    assert db_counts(path) == (len(fine), len(bad) + 1)
    conn = db.connect_readonly(path)
    rows = conn.execute("SELECT reason, raw, typeof(reason), typeof(raw) FROM rejected_events ORDER BY id").fetchall()
    names = [r[0] for r in conn.execute(f"SELECT interface FROM {SCHEMA.events['net_dev'].table} ORDER BY id")]
    conn.close()
    assert [r[1] for r in rows[: len(bad)]] == bad  # raw bytes as received
    assert all(r[2:] == ("text", "blob") for r in rows)
    assert names == ["\u00e9th0", "\U0001f4a5", "a\u0000b", "\u2028"]
    assert_reconciles(ing, path, len(bad) + len(fine) + 1)


def test_backoff_doubles_to_its_cap(tmp_path):
    ing, flaky, _ = make(tmp_path, batch_size=1)
    flaky.insert_failures = 100
    delays = []
    now = [1000.0]
    ing.clock = lambda: now[0]
    ing.feed_lines([line("load")])
    for _ in range(9):
        delays.append(round(ing.retry_at_monotonic - now[0], 3))
        assert not ing.flush()  # not due yet: no attempt
        now[0] = ing.retry_at_monotonic
        assert not ing.flush()  # due: attempted, failed again
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert ing.retries_total == 10


def test_ingest_busy_timeout_is_below_the_supervisor_stop_timeout(tmp_path):
    from kernelsight import supervisor

    ing = ingest.make_ingestor(tmp_path / "data")
    assert ing.conn.execute("PRAGMA busy_timeout").fetchone()[0] == ingest.INGEST_BUSY_TIMEOUT_MS == 5000
    assert ingest.INGEST_BUSY_TIMEOUT_MS < supervisor.STOP_TIMEOUT_S * 1000
    ing.close()


def test_status_file_is_replaced_atomically_with_mode_0600(tmp_path):
    ing, _, path = make(tmp_path)
    sp = status_path(path.parent)
    inodes = set()
    for i in range(4):
        ing.feed_lines([line("load", i)])
        ing.write_stats()
        assert sp.stat().st_mode & 0o777 == 0o600
        inodes.add(sp.stat().st_ino)
        assert read_status(path.parent)["received"] == i + 1
    assert len(inodes) == 2  # two slots by turns, each written in place
    before = time.time()
    st = read_status(path.parent)
    assert st["alive"] and st["updated_at"] <= before

"""Deleting old rows without holding the writer for long.

Every delete goes through Pruner.delete_upto: batches of
    DELETE FROM t WHERE rowid IN (SELECT rowid FROM t WHERE ts <= ? ORDER BY ts LIMIT n)
each in its own transaction, n adapted after every batch so one transaction
lasts about target_ms (ks-ingest waits for the writer lock meanwhile).  Free
pages go back to the file system with PRAGMA incremental_vacuum in chunks
sized the same way (only where the database has auto_vacuum=INCREMENTAL;
elsewhere they are reused by later inserts), and a checkpoint keeps the WAL
bounded.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from ..db import transaction

MIN_BATCH = 100
MAX_BATCH = 1_000_000
VACUUM_PAGES_START = 256
CHECKPOINT_EVERY_TXN = 4


class Pruner:
    def __init__(self, conn: sqlite3.Connection, batch_rows: int, target_ms: float, deadline: float | None = None):
        self.conn = conn
        self.batch_start = max(MIN_BATCH, int(batch_rows))
        # per table: a row of syscall_stats costs several of memory_metrics to delete
        self.batch: dict[str, int] = {}
        self.target_ms = float(target_ms)
        self.deadline = deadline
        self.vacuum_pages = VACUUM_PAGES_START
        self.deleted = 0
        self.batches = 0
        self.txn_max_ms = 0.0
        self.txn_ms: list[float] = []
        self.vacuumed_pages = 0
        self._txn_since_checkpoint = 0
        # An automatic checkpoint runs inside COMMIT once the WAL passes 1000 pages and
        # would be timed as holding the writer, which it does not: checkpoint between
        # batches instead (PASSIVE: ks-ingest keeps writing meanwhile).
        self.autocheckpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        conn.execute("PRAGMA wal_autocheckpoint=0")

    def close(self) -> None:
        self.conn.execute(f"PRAGMA wal_autocheckpoint={int(self.autocheckpoint)}")

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _yield(self, held_ms: float) -> None:
        """Leave the writer lock free as long as we held it (at most the target).  A
        writer waiting on it (ks-ingest) polls from SQLite's busy handler, every 100 ms
        once it has waited a while: back-to-back batches would starve it."""
        time.sleep(min(held_ms, self.target_ms) / 1e3)

    def _adapt(self, n: int, done: int, elapsed_ms: float) -> int:
        """Next batch size from the last one's time per row, aiming a little under the
        target; grown at most 2x per batch, cut as far as the last batch says."""
        if done <= 0 or elapsed_ms <= 0:
            return n
        want = 0.6 * self.target_ms * done / elapsed_ms  # headroom: equal batches vary by 2x
        return int(min(MAX_BATCH, max(MIN_BATCH, min(want, n * 2))))

    def _timed(self, sql: str, args: tuple) -> tuple[int, float]:
        t0 = time.perf_counter()
        with transaction(self.conn):
            n = self.conn.execute(sql, args).rowcount
        ms = (time.perf_counter() - t0) * 1e3
        self.txn_max_ms = max(self.txn_max_ms, ms)
        self.txn_ms.append(ms)
        self._yield(ms)
        self._txn_since_checkpoint += 1
        if self._txn_since_checkpoint >= CHECKPOINT_EVERY_TXN:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._txn_since_checkpoint = 0
        return n, ms

    def delete_upto(self, table: str, ts_max: int, where: str = "", args: tuple = ()) -> int:
        """Delete rows of table with ts <= ts_max (and `where`), oldest first; returns rows deleted.
        Stops early at the deadline (the rest goes next run)."""
        extra = f" AND ({where})" if where else ""
        sql = (f"DELETE FROM {table} WHERE rowid IN "
               f"(SELECT rowid FROM {table} WHERE ts <= ?{extra} ORDER BY ts LIMIT ?)")
        return self._batches(table, sql, (ts_max, *args))

    def _batches(self, table: str, sql: str, args: tuple) -> int:
        total = 0
        while not self.out_of_time():
            n_ask = self.batch.get(table, self.batch_start)
            n, ms = self._timed(sql, (*args, n_ask))
            self.batches += 1
            total += n
            self.batch[table] = self._adapt(n_ask, n, ms)
            if n < n_ask:
                break
        self.deleted += total
        return total

    def delete_where(self, table: str, where: str, args: tuple, order: str = "rowid") -> int:
        """Batched delete of the rows matching `where` (for tables keyed otherwise than by ts)."""
        sql = f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {where} ORDER BY {order} LIMIT ?)"
        return self._batches(table, sql, args)

    def vacuum(self) -> int:
        """Give free pages back to the file system (auto_vacuum=INCREMENTAL databases only)."""
        if self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0
        done = 0
        while not self.out_of_time():
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            if free <= 0:
                break
            n = min(free, self.vacuum_pages)
            t0 = time.perf_counter()
            # sqlite3's execute() steps a row-less PRAGMA once, which frees one page;
            # executescript steps it to the end.
            try:
                self.conn.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(n)}); COMMIT;")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            ms = (time.perf_counter() - t0) * 1e3
            self.txn_max_ms = max(self.txn_max_ms, ms)
            self.txn_ms.append(ms)
            self._yield(ms)
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            left = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            done += free - left
            if left >= free:
                break
            self.vacuum_pages = self._adapt(self.vacuum_pages, free - left, ms)
        self.vacuumed_pages += done
        return done


def checkpoint(conn: sqlite3.Connection, truncate: bool) -> tuple | None:
    """Checkpoint the WAL; TRUNCATE also shrinks the file to zero.  A short busy
    wait: with a reader in the way it is simply tried again next run."""
    busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout=1000")
    try:
        return conn.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy)}")


def file_bytes(db_file: Path) -> tuple[int, int]:
    """(database file, WAL) sizes in bytes."""
    def size(p: Path) -> int:
        try:
            return os.stat(p).st_size
        except FileNotFoundError:
            return 0
    return size(db_file), size(Path(str(db_file) + "-wal"))


def used_bytes(conn: sqlite3.Connection, db_file: Path | None) -> int:
    """What the size cap compares: pages in use (free pages are reused before the
    file grows, whether or not they go back to the file system) plus the WAL
    (left out when db_file is None)."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (count - free) * page + (file_bytes(db_file)[1] if db_file is not None else 0)

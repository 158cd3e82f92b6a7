"""query_database(sql): SQL offered to the agent (or an LLM) is strictly read-only.

Two independent locks: the connection is opened read-only (mode=ro, and
PRAGMA query_only), and an authorizer refuses every action that is not a
read — writes, schema changes, ATTACH/DETACH, transactions and any PRAGMA
that is not a known read-only one.  A progress handler bounds run time and
results are capped, so a careless query cannot hang the agent.

Raw rows are kept [storage] raw_retention_h (48 h); older data is in the
per-minute rollups `<table>_1m` (ts = end of the minute, `samples` = raw rows
in it, gauges as avg with <col>_min/<col>_max).  The views `<table>_all` join
both: raw rows (samples = 1) from the oldest one still present, rollup rows
before it, so `SELECT ... FROM memory_metrics_all WHERE ts > ...` reads any
range; SUM(samples) counts events of event tables (docs/storage.md).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .. import db

MAX_ROWS = 1000
TIMEOUT_S = 5.0
# PRAGMAs whose argument is only a table or index name: always reads.
TABLE_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
# PRAGMAs that read in their no-argument form and *set* with one.
READ_PRAGMAS = {"table_list", "database_list", "compile_options", "journal_mode", "page_count", "page_size",
                "user_version", "schema_version", "freelist_count"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


class QueryRefused(Exception):
    """The query would change something, or is not allowed; the message says why."""


def _authorizer(action, arg1, arg2, _db, _trigger):
    if action in _ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1:
        name = arg1.lower()
        if name in TABLE_PRAGMAS or (name in READ_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _refusal(sql: str) -> str:
    verb = (sql.strip().split(None, 1) or ["?"])[0].upper()
    return (f"refused: query_database is read-only ({verb} is not allowed); "
            "use SELECT, WITH ... SELECT or a read-only PRAGMA such as table_info")


class ReadOnlyDB:
    def __init__(self, path: Path, timeout_s: float = TIMEOUT_S, max_rows: int = MAX_ROWS):
        self.conn = db.connect_readonly(Path(path))  # StoreError when there is no database
        self.conn.execute("PRAGMA query_only=1")
        self.conn.set_authorizer(_authorizer)
        self.timeout_s = timeout_s
        self.max_rows = max_rows

    def query(self, sql: str, params=()) -> dict:
        """Run one read-only statement; returns {columns, rows, truncated}."""
        deadline = time.monotonic() + self.timeout_s
        self.conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        try:
            cur = self.conn.execute(sql, params)
            rows = cur.fetchmany(self.max_rows + 1)
        except sqlite3.DatabaseError as e:
            msg = str(e)
            if "one statement at a time" in msg:
                raise QueryRefused("refused: one statement at a time") from None
            if "not authorized" in msg or "authorization denied" in msg or "readonly" in msg:
                raise QueryRefused(_refusal(sql)) from None
            if "interrupted" in msg:
                raise QueryRefused(f"refused: query ran longer than {self.timeout_s:g} s") from None
            raise QueryRefused(f"query failed: {msg}") from None
        finally:
            self.conn.set_progress_handler(None, 0)
        cols = [d[0] for d in cur.description or []]
        return {"columns": cols, "rows": [list(r) for r in rows[: self.max_rows]],
                "truncated": len(rows) > self.max_rows}

    def connection(self) -> sqlite3.Connection:
        """The same read-only connection for our own code (features), with the
        authorizer still on: it refuses writes, which is all our code needs."""
        return self.conn

    def close(self) -> None:
        self.conn.close()

"""query_database(sql): SQL offered to the agent (or an LLM) is strictly read-only.

Two independent locks: the connection is opened read-only (mode=ro, and
PRAGMA query_only), and an authorizer refuses every action that is not a
read — writes, schema changes, ATTACH/DETACH, transactions and any PRAGMA
that is not a known read-only one.  For the caller's SQL (query()) the
authorizer also allows only the functions in SQL_FUNCTIONS: fts3_tokenizer
hands out a heap pointer, printf('%.*c', 999999999, 'x') and zeroblob(4e8)
run one opcode for seconds and gigabytes, so they and anything unlisted are
refused.  SQLite's own limits (conn.setlimit: string length, columns,
expression depth, ...) refuse oversized values early, a progress handler
bounds run time between opcodes, and results are capped in rows and in bytes
while they are fetched.  The hard bound is the tools' forked child
(bounded.py): this module keeps the common cases fast and the errors clear.

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
MAX_RESULT_BYTES = 256 * 1024  # of values fetched, counted as they come (a row cap does not cap bytes)
TIMEOUT_S = 5.0
# sqlite3.SQLITE_LIMIT_* -> value while the caller's SQL runs (our own queries run with the defaults).
QUERY_LIMITS = {
    sqlite3.SQLITE_LIMIT_LENGTH: 1_000_000,  # bytes of one string or blob: zeroblob(4e8) is refused at once
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
    sqlite3.SQLITE_LIMIT_COLUMN: 200,  # the widest stored table has far fewer
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 8,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1000,
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 32,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 1,
}
# Functions the caller's SQL may use: aggregates, window functions, arithmetic, text and dates whose
# output is bounded by SQLITE_LIMIT_LENGTH and whose work is linear in their input.  Not listed on
# purpose: printf/format (unbounded width), zeroblob/randomblob (size chosen by the caller),
# fts3_tokenizer (a pointer), load_extension, sqlite_compileoption_*, and whatever a build adds.
SQL_FUNCTIONS = frozenset("""
    count sum total avg min max group_concat string_agg
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    abs round sign ceil ceiling floor trunc sqrt pow power exp ln log log10 log2 mod pi
    coalesce ifnull nullif iif typeof likely unlikely likelihood
    length octet_length lower upper substr substring instr trim ltrim rtrim replace hex unhex quote
    char unicode like glob
    date time datetime julianday unixepoch strftime
    json json_extract json_type json_valid json_array_length json_array json_object
""".split())
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


class _QueryAuthorizer:
    """The authorizer for the caller's SQL: _authorizer plus the function allow-list and, when given,
    a column policy (LLM mode, egress.column_allowed); remembers the first function or column it
    refused so the error can name it."""

    def __init__(self, column_policy=None, decltypes: dict | None = None):
        self.refused_function: str | None = None
        self.refused_column: str | None = None
        self.column_policy = column_policy
        self.decltypes = decltypes or {}

    def __call__(self, action, arg1, arg2, _db, view):
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in SQL_FUNCTIONS:
            self.refused_function = self.refused_function or arg2
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_READ and self.column_policy is not None:
            decltype = self._decltype(arg1 or "", arg2 or "")
            if not self.column_policy(arg1 or "", arg2 or "", decltype):
                if view:  # a view reads every column of its tables: the withheld ones read as NULL
                    return sqlite3.SQLITE_IGNORE
                self.refused_column = self.refused_column or f"{arg1}.{arg2}" if arg2 else arg1
                return sqlite3.SQLITE_DENY
        return _authorizer(action, arg1, arg2, _db, view)

    def _decltype(self, table: str, column: str) -> str:
        # a view <t>_all has no declared types: its columns are those of <t> and <t>_1m
        for name in (table, table[:-4], table[:-4] + "_1m") if table.endswith("_all") else (table,):
            t = self.decltypes.get(name, {}).get(column)
            if t is not None:
                return t
        return ""


def _value_bytes(v) -> int:
    return len(v) if isinstance(v, (str, bytes)) else 8


def _refusal(sql: str) -> str:
    verb = (sql.strip().split(None, 1) or ["?"])[0].upper()
    return (f"refused: query_database is read-only ({verb} is not allowed); "
            "use SELECT, WITH ... SELECT or a read-only PRAGMA such as table_info")


class ReadOnlyDB:
    def __init__(self, path: Path, timeout_s: float = TIMEOUT_S, max_rows: int = MAX_ROWS,
                 max_result_bytes: int = MAX_RESULT_BYTES, column_policy=None):
        """column_policy(table, column, decltype) -> bool: what query() may read (None: everything)."""
        self.conn = db.connect_readonly(Path(path))  # StoreError when there is no database
        self.conn.execute("PRAGMA query_only=1")
        self.column_policy = column_policy
        self.decltypes: dict[str, dict[str, str]] = {}
        if column_policy is not None:
            for (table,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                self.decltypes[table] = {r[1]: r[2] or "" for r in self.conn.execute(
                    "SELECT * FROM pragma_table_info(?)", (table,))}
        self.conn.set_authorizer(_authorizer)
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self.max_result_bytes = max_result_bytes

    def query(self, sql: str, params=()) -> dict:
        """Run one read-only statement; returns {columns, rows, truncated} (and a note when cut)."""
        deadline = time.monotonic() + self.timeout_s
        auth = _QueryAuthorizer(self.column_policy, self.decltypes)
        saved = {k: self.conn.setlimit(k, v) for k, v in QUERY_LIMITS.items()}
        self.conn.set_authorizer(auth)
        self.conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        rows, size, note = [], 0, None
        try:
            cur = self.conn.execute(sql, params)
            while note is None:
                batch = cur.fetchmany(100)
                if not batch:
                    break
                for r in batch:
                    if len(rows) == self.max_rows:
                        note = f"more than {self.max_rows} rows: cut"
                        break
                    size += sum(_value_bytes(v) for v in r)
                    if size > self.max_result_bytes:
                        note = f"more than {self.max_result_bytes} bytes of values: cut after {len(rows)} rows"
                        break
                    rows.append(list(r))
        except sqlite3.DatabaseError as e:
            msg = str(e)
            if auth.refused_function:
                raise QueryRefused(f"refused: the SQL function {auth.refused_function}() is not allowed; "
                                   "allowed: " + ", ".join(sorted(SQL_FUNCTIONS))) from None
            if auth.refused_column:
                raise QueryRefused(f"refused: {auth.refused_column} is withheld from the model (command lines, "
                                   "addresses, paths and host names do not leave the host); name other "
                                   "columns instead of *") from None
            if "one statement at a time" in msg:
                raise QueryRefused("refused: one statement at a time") from None
            if "not authorized" in msg or "authorization denied" in msg or "readonly" in msg:
                raise QueryRefused(_refusal(sql)) from None
            if "interrupted" in msg:
                raise QueryRefused(f"cut off: query ran longer than {self.timeout_s:g} s") from None
            if "too big" in msg or "too many" in msg or "too long" in msg or "too large" in msg:
                raise QueryRefused(f"refused: {msg} (a limit of query_database; ask for less)") from None
            if "out of memory" in msg:
                raise QueryRefused("cut off: the query needed more memory than its bound") from None
            raise QueryRefused(f"query failed: {msg}") from None
        finally:
            self.conn.set_progress_handler(None, 0)
            self.conn.set_authorizer(_authorizer)
            for k, v in saved.items():
                self.conn.setlimit(k, v)
        cols = [d[0] for d in cur.description or []]
        out = {"columns": cols, "rows": rows, "truncated": note is not None}
        if note:
            out["note"] = note
        return out

    def connection(self) -> sqlite3.Connection:
        """The same read-only connection for our own code (features), with the
        authorizer still on: it refuses writes, which is all our code needs."""
        return self.conn

    def close(self) -> None:
        self.conn.close()

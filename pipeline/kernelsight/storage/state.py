"""storage_state: the few values housekeeping must remember across restarts
(rollup watermarks, thinning watermarks, size samples)."""

from __future__ import annotations

import sqlite3

import orjson

DDL = """CREATE TABLE IF NOT EXISTS storage_state (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
)"""


def ensure(conn: sqlite3.Connection) -> None:
    conn.execute(DDL)


def get(conn: sqlite3.Connection, key: str, default=None):
    try:
        row = conn.execute("SELECT value FROM storage_state WHERE key=?", (key,)).fetchone()
    except sqlite3.OperationalError:  # no table yet (a read-only reader of a fresh database)
        return default
    return orjson.loads(row[0]) if row else default


def get_int(conn: sqlite3.Connection, key: str) -> int | None:
    v = get(conn, key)
    return None if v is None else int(v)


def put(conn: sqlite3.Connection, key: str, value) -> None:
    conn.execute("INSERT OR REPLACE INTO storage_state(key, value) VALUES (?, ?)", (key, orjson.dumps(value).decode()))

"""The SQLite store: created with tight modes, checked, WAL, schema applied."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time
from pathlib import Path

from .schema import SCHEMA_VERSION, SQL_TYPES, Schema, load_schema

DB_NAME = "kernelsight.db"


class StoreError(Exception):
    """A data dir or database path that must not be used; the message says why."""


def data_dir() -> Path:
    return Path(os.environ.get("KS_DATA_DIR", "data")).absolute()


def db_path(directory: Path | None = None) -> Path:
    return (directory or data_dir()) / DB_NAME


def _check_owned(path: Path, st: os.stat_result, what: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{what} {path} is a symlink; refusing to follow it")
    if st.st_uid != os.geteuid():
        raise StoreError(f"{what} {path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")


def ensure_data_dir(directory: Path) -> Path:
    """Create the data dir 0700 if absent; refuse a symlink or someone else's dir."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(directory)
    _check_owned(directory, st, "data dir")
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"data dir {directory} is not a directory")
    return directory


def _ensure_db_file(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        # Create it 0600 ourselves; SQLite gives -wal and -shm the same mode.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            pass
        st = os.lstat(path)
    _check_owned(path, st, "database")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"database {path} is not a regular file")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


def connect(path: Path, schema: Schema | None = None, *, create: bool = True) -> sqlite3.Connection:
    """Open the store for writing, creating and migrating it as needed."""
    schema = schema or load_schema()
    if create:
        ensure_data_dir(path.parent)
        _ensure_db_file(path)
    elif not path.exists():
        raise StoreError(f"no database at {path}; start the pipeline first (make run)")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across application crashes in WAL mode; only an OS crash
    # can lose the last commits, which is the right trade for telemetry.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(schema.create_sql())
    _add_missing_columns(conn, schema)
    _write_meta(conn, schema)
    return conn


def _add_missing_columns(conn: sqlite3.Connection, schema: Schema) -> None:
    """A field added to the schema becomes a new nullable column in an old database."""
    for spec in schema.events.values():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({spec.table})")}
        for f in spec.fields:
            if f.name not in have:
                conn.execute(f"ALTER TABLE {spec.table} ADD COLUMN {f.name} {SQL_TYPES[f.type]}")


def _write_meta(conn: sqlite3.Connection, schema: Schema) -> None:
    meta = {
        "host": socket.gethostname(),
        "kernel": os.uname().release,
        "schema_version": str(SCHEMA_VERSION),
        "schema_digest": schema.digest,
    }
    conn.execute("BEGIN")
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_ts', ?)", (str(time.time_ns()),))
    conn.execute("COMMIT")


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (mode=ro): for status, features and the agent."""
    if not path.exists():
        raise StoreError(f"no database at {path}; start the pipeline first (make run)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn

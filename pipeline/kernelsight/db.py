"""The SQLite store: created with tight modes, checked, WAL, schema applied."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .schema import SCHEMA_VERSION, SQL_TYPES, Schema, load_schema

DB_NAME = "kernelsight.db"
DATA_DIR_MODE = 0o700
DB_FILE_MODE = 0o600
# Busy wait for connections that do not say otherwise (readers, features, agent).
DEFAULT_BUSY_TIMEOUT_MS = 30_000
# The WAL is truncated back to this size after a checkpoint resets it.
JOURNAL_SIZE_LIMIT_BYTES = 64 << 20
# SQLite's default: checkpoint once the WAL holds this many pages.
WAL_AUTOCHECKPOINT_PAGES = 1000


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


def _open_path(path: Path, what: str) -> int:
    """An O_PATH fd for the object at path itself (a symlink is not followed):
    checks and chmod then apply to the very object opened, whatever its mode."""
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise StoreError(f"cannot open {what} {path}: {e.strerror}") from None


def _set_mode(fd: int, path: Path, st: os.stat_result, mode: int) -> None:
    """Exactly `mode`: looser lets others read, tighter can lock us out."""
    if stat.S_IMODE(st.st_mode) == mode:
        return
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)  # an O_PATH fd has no fchmod
    except FileNotFoundError:  # no /proc: by name, just checked
        os.chmod(path, mode)


def ensure_data_dir(directory: Path) -> Path:
    """Create the data dir 0700 if absent, set exactly 0700 on ours; refuse a
    symlink, someone else's dir or a shared (sticky or world-writable) one."""
    if not os.path.lexists(directory):
        directory.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    fd = _open_path(directory, "data dir")
    try:
        st = os.fstat(fd)
        _check_owned(directory, st, "data dir")
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"data dir {directory} is not a directory")
        if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
            # Such a dir (/tmp, say) is shared by design: making it 0700 would break
            # everyone else's use of it, and leaving it open would expose the database.
            raise StoreError(f"data dir {directory} is a shared directory (mode {stat.S_IMODE(st.st_mode):o}); "
                             "use a directory of its own")
        _set_mode(fd, directory, st, DATA_DIR_MODE)
    finally:
        os.close(fd)
    return directory


def _ensure_db_file(path: Path) -> None:
    if not os.path.lexists(path):
        # Create it 0600 ourselves; SQLite gives -wal and -shm the same mode.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             DB_FILE_MODE))
        except FileExistsError:
            pass
    # The database and, when present, its WAL, index and rollback journal hold the same data.
    for p in (path, *(path.with_name(path.name + sfx) for sfx in ("-wal", "-shm", "-journal"))):
        if p is not path and not os.path.lexists(p):
            continue
        fd = _open_path(p, "database")
        try:
            st = os.fstat(fd)
            _check_owned(p, st, "database")
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"database {p} is not a regular file")
            _set_mode(fd, p, st, DB_FILE_MODE)
        finally:
            os.close(fd)


def uri(path: Path, **params: str) -> str:
    """A file: URI for SQLite with the path percent-encoded, so a '?' or '#' in a
    directory name stays part of the path instead of starting the query."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return Path(path).absolute().as_uri() + (f"?{query}" if query else "")


def connect(path: Path, schema: Schema | None = None, *, create: bool = True,
            busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Open the store for writing, creating and migrating it as needed."""
    schema = schema or load_schema()
    if create:
        ensure_data_dir(path.parent)
        _ensure_db_file(path)
    elif not path.exists():
        raise StoreError(f"no database at {path}; start the pipeline first (make run)")
    # The URI with mode=rw: the file exists by now, and a vanished one is an error, not a new database.
    conn = sqlite3.connect(uri(path, mode="rw"), uri=True, isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # Only takes effect on a new (empty) database, so it comes before the first
        # table; an existing database keeps the mode it was created with.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash
        # can lose the last commits, which is the right trade for telemetry.
        conn.execute("PRAGMA synchronous=NORMAL")
        # Bound the WAL: checkpoint every N pages, and truncate it after a reset.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        conn.executescript(schema.create_sql())
        _add_missing_columns(conn, schema)
        _write_meta(conn, schema)
    except BaseException:
        conn.close()
        raise
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
    with transaction(conn, "BEGIN"):
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_ts', ?)", (str(time.time_ns()),))


@contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection: COMMIT at the end, ROLLBACK
    on any error, but never after a COMMIT that failed (SQLite has already rolled
    back then, e.g. on a full disk, and a second error would hide the first)."""
    conn.execute(begin)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def db_identity(conn: sqlite3.Connection) -> str | None:
    """The database's creation stamp (meta created_ts): counts kept for one database do not carry
    over to a new one at the same path."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='created_ts'").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def query_once(path: Path, sql: str, args=()) -> list[tuple]:
    """One read-only query on its own connection: [] while the database or the table does not exist
    yet (a pipeline starting up), for watchers that poll (tests, benchmarks)."""
    if not Path(path).exists():
        return []
    conn = sqlite3.connect(uri(Path(path), mode="ro"), uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (mode=ro): for status, features and the agent."""
    if not path.exists():
        raise StoreError(f"no database at {path}; start the pipeline first (make run)")
    conn = sqlite3.connect(uri(path, mode="ro"), uri=True, check_same_thread=False,
                           timeout=DEFAULT_BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={DEFAULT_BUSY_TIMEOUT_MS}")
    return conn

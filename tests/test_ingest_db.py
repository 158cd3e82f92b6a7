"""The store's files: exact modes, paths SQLite cannot misread, a bounded WAL."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from kernelsight import db
from kernelsight.schema import load_schema

SCHEMA = load_schema()


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize("name", ["d?mode=rwc#x", "a#b?c", "q?", "%3F", os.fsdecode(b"non-utf8-\xff?#")])
def test_data_dir_with_uri_characters_opens_that_database_read_only(tmp_path, name):
    data = tmp_path / name / "data"
    rw = db.connect(db.db_path(data), SCHEMA)
    rw.execute("INSERT INTO meta(key, value) VALUES ('marker', 'here')")
    rw.close()
    before = sorted(tmp_path.rglob("*"))
    ro = db.connect_readonly(db.db_path(data))
    try:
        assert ro.execute("SELECT value FROM meta WHERE key='marker'").fetchone() == ("here",)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.execute("INSERT INTO meta(key, value) VALUES ('w', 'x')")
    finally:
        ro.close()
    after = sorted(tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.name.endswith(("-wal", "-shm"))] == []


def test_uri_quotes_the_path():
    assert db.uri(Path("/a b/c?d#e%f/k.db"), mode="ro") == "file:///a%20b/c%3Fd%23e%25f/k.db?mode=ro"


@pytest.mark.parametrize("start_mode", [0o755, 0o750, 0o711, 0o500, 0o300, 0o000], ids=oct)
def test_own_data_dir_is_set_to_exactly_0700(tmp_path, start_mode):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, start_mode)
    db.connect(db.db_path(data), SCHEMA).close()
    assert mode(data) == 0o700


def test_new_data_dir_is_0700_whatever_the_umask(tmp_path):
    old = os.umask(0o277)
    try:
        db.ensure_data_dir(tmp_path / "new" / "data")
    finally:
        os.umask(old)
    assert mode(tmp_path / "new" / "data") == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_someone_elses_data_dir_is_refused_untouched(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chown(data, 65534, 65534)
    with pytest.raises(db.StoreError, match="owned by uid 65534"):
        db.connect(db.db_path(data), SCHEMA)
    assert mode(data) == 0o755 and not db.db_path(data).exists()


@pytest.mark.parametrize("extra", [stat.S_ISVTX, 0o002], ids=["sticky", "world-writable"])
def test_shared_data_dir_is_refused_untouched(tmp_path, extra):
    data = tmp_path / "shared"
    data.mkdir()
    os.chmod(data, 0o755 | extra)
    with pytest.raises(db.StoreError, match="shared directory"):
        db.ensure_data_dir(data)
    assert mode(data) == 0o755 | extra


def test_symlinked_data_dir_and_database_are_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(db.StoreError, match="symlink"):
        db.ensure_data_dir(tmp_path / "link")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (tmp_path / "other.db").touch()
    db.db_path(data).symlink_to(tmp_path / "other.db")
    with pytest.raises(db.StoreError, match="symlink"):
        db.connect(db.db_path(data), SCHEMA)


@pytest.mark.parametrize("start_mode", [0o644, 0o640, 0o400, 0o200, 0o000], ids=oct)
def test_database_and_its_wal_are_exactly_0600(tmp_path, start_mode):
    path = db.db_path(tmp_path / "data")
    db.connect(path, SCHEMA).close()
    keep = db.connect(path, SCHEMA)  # holds -wal and -shm open
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            os.chmod(p, start_mode)
    db.connect(path, SCHEMA).close()
    keep.close()
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            assert mode(p) == 0o600, p


def test_new_database_has_incremental_auto_vacuum_and_a_bounded_wal(tmp_path):
    conn = db.connect(db.db_path(tmp_path / "data"), SCHEMA)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == db.JOURNAL_SIZE_LIMIT_BYTES
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == db.WAL_AUTOCHECKPOINT_PAGES
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_existing_database_keeps_its_auto_vacuum_mode(tmp_path):
    path = db.db_path(tmp_path / "data")
    db.ensure_data_dir(path.parent)
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE legacy (x)")
    old.close()
    os.chmod(path, 0o600)
    conn = db.connect(path, SCHEMA)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # NONE, as created
    conn.close()


def test_busy_timeout_is_per_connection(tmp_path):
    path = db.db_path(tmp_path / "data")
    fast = db.connect(path, SCHEMA, busy_timeout_ms=5000)
    default = db.connect(path, SCHEMA)
    assert fast.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert default.execute("PRAGMA busy_timeout").fetchone()[0] == db.DEFAULT_BUSY_TIMEOUT_MS
    fast.close()
    default.close()

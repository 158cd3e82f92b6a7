"""ks-ingest with its data dir on a small tmpfs that fills up, then frees: a real
SQLITE_FULL, the status file, the memory bound and the producers' drops."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import has_reader, query, wait_for
from kernelsight.fifo import LineWriter
from kernelsight.ingest import describe_status, read_status
from kernelsight.schema import example_event, load_schema

SCHEMA = load_schema()
LOAD_TABLE = SCHEMA.events["load"].table

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (needs root)")


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # 16 MB: once the filler goes, room for every line the bound and the pipe can hold.
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(fs: Path, leave_bytes: int) -> Path:
    """Write a file until the filesystem is full, then give back leave_bytes."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 4096
        size = 0
        while True:
            try:
                size += os.write(fd, block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        os.ftruncate(fd, max(0, size - leave_bytes))
    finally:
        os.close(fd)
    return filler


def load_line(i: int) -> bytes:
    return orjson.dumps(example_event(SCHEMA.events["load"], time.time_ns() + i)) + b"\n"


def stored_rows(db: Path) -> int:
    return sum(query(db, f"SELECT COUNT(*) FROM {s.table}")[0][0] for s in SCHEMA.events.values())


def test_full_disk_keeps_the_lines_counts_stay_true_and_all_is_stored_once_space_returns(ks_env, tiny_fs):
    data = tiny_fs / "data"
    db = data / "kernelsight.db"
    log_file = ks_env.tmp / "ingest.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelsight.ingest", "--fifo", ks_env.fifo, "--data-dir", str(data),
         "--flush-ms", "50", "--stats-interval", "0.2", "--batch-size", "500", "--max-pending-mib", "1",
         "--log-file", str(log_file)],
        env={**ks_env.env, "KS_DATA_DIR": str(data)},
    )
    try:
        wait_for(lambda: has_reader(ks_env.fifo), what="ks-ingest reading the FIFO")
        w = LineWriter(ks_env.fifo, producer="test", block_ms=0)
        for i in range(200):
            assert w.write_line(load_line(i))
        wait_for(lambda: query(db, f"SELECT COUNT(*) FROM {LOAD_TABLE}") == [(200,)], what="200 rows stored")
        wait_for(lambda: (read_status(data) or {}).get("stored") == 200, what="status with 200 stored")

        filler = fill(tiny_fs, leave_bytes=8192)  # less than a 500-row batch needs
        for i in range(30_000):  # ~6.6 MB: more than the 1 MiB bound, a read chunk and the pipe hold
            w.write_line(load_line(i))
        st = wait_for(lambda: (s := read_status(data)) and s["disk_full"] and s["reading_paused"] and s,
                      what="status: disk full, reading paused")
        assert w.counters.dropped_full_total > 0, "the pipe never filled"
        assert st["pending_bytes"] < 2 << 20 and st["retries_total"] >= 1
        assert "disk is full" in st["last_error"] and describe_status(st).startswith("disk full since")
        # The counts never claim a row the database does not hold.
        for _ in range(5):
            claimed = read_status(data)["stored"]
            stats = query(db, "SELECT SUM(stored) FROM pipeline_stats WHERE id IN "
                              "(SELECT MAX(id) FROM pipeline_stats GROUP BY event_type)")[0][0]
            rows = stored_rows(db)
            assert claimed <= rows and stats <= rows
            time.sleep(0.1)
        assert proc.poll() is None

        os.unlink(filler)  # space is back
        written = w.counters.lines_written_total
        wait_for(lambda: stored_rows(db) == written, what="every written line stored")
        wait_for(lambda: (s := read_status(data)) and s["state"] == "storing" and not s["disk_full"],
                 what="status: storing again")
        w.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0, log_file.read_text()[-4000:]
    pid = query(db, "SELECT pid FROM pipeline_stats ORDER BY id DESC LIMIT 1")[0][0]
    final = query(db, "SELECT SUM(received), SUM(stored), SUM(rejected), SUM(pending) FROM pipeline_stats "
                      "WHERE id IN (SELECT MAX(id) FROM pipeline_stats WHERE pid=? GROUP BY event_type)", (pid,))[0]
    assert final == (written, written, 0, 0)
    assert query(db, "SELECT COUNT(*) FROM rejected_events") == [(0,)]
    st = read_status(data)
    assert st["received"] == st["stored"] == written and st["retries_total"] >= 1 and not st["alive"]
    assert os.stat(data / "ingest_status.json").st_mode & 0o777 == 0o600

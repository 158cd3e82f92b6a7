"""ks-ingest over a real FIFO into a real database, including every bad-input class."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import orjson
import pytest

from conftest import has_reader, query, tool, wait_for
from kernelsight.fifo import FifoError, LineWriter, ensure_fifo
from kernelsight.ingest import read_status
from kernelsight.schema import RejectedLine, example_event, load_schema

SCHEMA = load_schema()
ARCHITECTURE_TABLES = {
    "syscall_events", "page_fault_events", "io_latency_stats", "sched_events", "memory_metrics",
    "load_metrics", "block_stats", "network_interface_stats", "tcp_stats", "tcp_retransmit_stats",
}


def good_line(etype: str = "load", **over) -> bytes:
    ev = example_event(SCHEMA.events[etype], time.time_ns())
    ev.update(over)
    return orjson.dumps(ev) + b"\n"


BAD_LINES = {
    "truncated JSON": (b'{"type":"load","ts":17000000000000', "invalid JSON"),
    "10 kB line": (b'{"type":"load","pad":"' + b"x" * 10_000 + b'"}', "over the 4096-byte limit"),
    "unknown type": (b'{"type":"no_such_event","ts":1800000000000000000}', "unknown event type 'no_such_event'"),
    "missing ts": (orjson.dumps({k: v for k, v in orjson.loads(good_line()).items() if k != "ts"}), "missing field 'ts'"),
    "string for number": (good_line(total_tasks="12").rstrip(b"\n"), "field 'total_tasks' must be an integer, got str"),
    "binary junk": (bytes(range(256)).replace(b"\n", b""), "invalid JSON"),
}


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_ingest():
    """A failed test must not leave its ks-ingest running."""
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def start_ingest(ks_env, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelsight.ingest", "--fifo", ks_env.fifo, "--data-dir", str(ks_env.data),
         "--flush-ms", "50", "--stats-interval", "0.2", *extra],
        env=ks_env.env, stderr=subprocess.PIPE,
    )
    _STARTED.append(proc)
    wait_for(lambda: has_reader(ks_env.fifo), what="ks-ingest reading the FIFO")
    return proc


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.decode()


def last_stats(db):
    pid = query(db, "SELECT pid FROM pipeline_stats ORDER BY id DESC LIMIT 1")[0][0]
    rows = query(db, "SELECT event_type, received, stored, rejected, pending FROM pipeline_stats "
                     "WHERE id IN (SELECT MAX(id) FROM pipeline_stats WHERE pid=? GROUP BY event_type)", (pid,))
    return {r[0]: r[1:] for r in rows}


def table_rows(db, etype):
    return query(db, f"SELECT COUNT(*) FROM {SCHEMA.events[etype].table}")[0][0]


def test_schema_has_the_architecture_tables_and_the_added_ones():
    tables = {e.table for e in SCHEMA.events.values()}
    assert {"vmstat_metrics", "cpu_metrics", "psi_metrics", "producer_stats"} <= tables
    missing = ARCHITECTURE_TABLES - tables
    if missing:
        pytest.fail(f"tables of architecture.md missing from schema/events: {sorted(missing)}")


def test_every_field_has_type_and_unit_documented():
    for spec in SCHEMA.events.values():
        for f in spec.fields:
            assert f.desc, f"{spec.type}.{f.name} has no description"


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_validator_rejects_with_reason(name):
    line, reason = BAD_LINES[name]
    with pytest.raises(RejectedLine) as e:
        SCHEMA.validate_line(line)
    assert reason in e.value.reason


def test_validator_accepts_every_example_and_ints_for_floats():
    for etype, spec in SCHEMA.events.items():
        t, row = SCHEMA.validate_line(good_line(etype).rstrip(b"\n"))
        assert t == etype and len(row) == len(spec.columns)
    SCHEMA.validate_line(good_line("load", load_1min=2).rstrip())
    with pytest.raises(RejectedLine, match="must be a number, got bool"):
        SCHEMA.validate_line(good_line("load", load_1min=True).rstrip())
    with pytest.raises(RejectedLine, match="unexpected field 'surprise'"):
        SCHEMA.validate_line(good_line("load", surprise=1).rstrip())


def test_bad_inputs_are_quarantined_and_counts_reconcile(ks_env):
    proc = start_ingest(ks_env)
    fd = os.open(ks_env.fifo, os.O_WRONLY)
    for _ in range(100):
        os.write(fd, good_line("memory"))
    for line, _ in BAD_LINES.values():
        os.write(fd, line + b"\n")
    for _ in range(100):
        os.write(fd, good_line("load"))
    os.close(fd)
    rows = wait_for(lambda: query(ks_env.db, "SELECT reason FROM rejected_events") if
                    len(query(ks_env.db, "SELECT reason FROM rejected_events")) >= 6 else None,
                    what="six rejected lines")
    reasons = " | ".join(r[0] for r in rows)
    for _, want in BAD_LINES.values():
        assert want in reasons
    assert proc.poll() is None, "ks-ingest died on bad input"
    rc, err = stop(proc)
    assert rc == 0, err
    stats = last_stats(ks_env.db)
    received = sum(s[0] for s in stats.values())
    stored = sum(s[1] for s in stats.values())
    rejected = sum(s[2] for s in stats.values())
    assert (received, stored, rejected) == (206, 200, 6)
    assert all(s[3] == 0 for s in stats.values()), "pending rows left at exit"
    assert table_rows(ks_env.db, "memory") == 100 and table_rows(ks_env.db, "load") == 100


def test_writers_coming_and_going_cause_no_eof(ks_env):
    proc = start_ingest(ks_env)
    for i in range(20):
        w = LineWriter(ks_env.fifo, producer="test", block_ms=1000)
        for _ in range(10):
            assert w.write_line(good_line("load"))
        w.close()
    wait_for(lambda: table_rows(ks_env.db, "load") == 200, what="200 stored rows")
    assert proc.poll() is None
    rc, _ = stop(proc)
    assert rc == 0


def _writer_proc(fifo: str, n: int, size: int, tag: int) -> None:
    # Lines of varying size up to `size`: if writes interleaved, JSON would break.
    # The long wait on a full pipe is a liveness bound for a loaded machine, not a speed check.
    w = LineWriter(fifo, producer=f"w{tag}", block_ms=60_000)
    base = orjson.loads(good_line("net_dev"))
    for i in range(n):
        base["interface"] = f"if{tag}-" + "p" * (i % size)
        assert w.emit(base)
    w.close()


def test_concurrent_writers_do_not_interleave(ks_env):
    proc = start_ingest(ks_env)
    n, writers = 3000, 4
    code = ("import sys; sys.path.insert(0, %r); from test_ingest import _writer_proc; "
            "_writer_proc(%r, %d, 3500, int(sys.argv[1]))")
    ps = [subprocess.Popen([sys.executable, "-c", code % (os.path.dirname(__file__), ks_env.fifo, n), str(t)],
                           env=ks_env.env) for t in range(writers)]
    assert all(p.wait(timeout=120) == 0 for p in ps)
    wait_for(lambda: table_rows(ks_env.db, "net_dev") == n * writers, what="all lines stored")
    rc, _ = stop(proc)
    assert rc == 0
    assert query(ks_env.db, "SELECT COUNT(*) FROM rejected_events")[0][0] == 0


def test_replay_goes_through_the_same_path(ks_env):
    cap = ks_env.tmp / "capture.jsonl"
    with open(cap, "wb") as f:
        for et in SCHEMA.events:
            f.write(good_line(et))
        f.write(BAD_LINES["unknown type"][0] + b"\n")
        f.write(good_line("psi").rstrip(b"\n"))  # last line without newline still counts
    out = subprocess.run([tool("ks-ingest"), "--replay", str(cap), "--data-dir", str(ks_env.data)],
                         env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n = len(SCHEMA.events)
    assert f"received {n + 2}, stored {n + 1}, rejected 1" in out.stderr
    assert table_rows(ks_env.db, "psi") == 2


def test_replay_of_missing_file_is_a_clear_error(ks_env):
    out = subprocess.run([tool("ks-ingest"), "--replay", "/nonexistent.jsonl", "--data-dir", str(ks_env.data)],
                         env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "no such file" in out.stderr


def test_mirror_writes_per_type_jsonl(ks_env):
    proc = start_ingest(ks_env, "--mirror")
    fd = os.open(ks_env.fifo, os.O_WRONLY)
    os.write(fd, good_line("tcp") + good_line("tcp"))
    os.close(fd)
    wait_for(lambda: table_rows(ks_env.db, "tcp") == 2, what="2 tcp rows")
    stop(proc)
    lines = (ks_env.data / "stream" / "tcp.jsonl").read_bytes().splitlines()
    assert len(lines) == 2 and orjson.loads(lines[0])["type"] == "tcp"


def test_database_and_data_dir_have_tight_modes(ks_env):
    proc = start_ingest(ks_env)
    stop(proc)
    assert stat.S_IMODE(os.stat(ks_env.db).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ks_env.data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ks_env.fifo).st_mode) == 0o600
    meta = dict(query(ks_env.db, "SELECT key, value FROM meta"))
    assert meta["kernel"] == os.uname().release and meta["schema_version"] == "1" and meta["host"]
    assert query(ks_env.db, "PRAGMA journal_mode")[0][0] == "wal"


@pytest.mark.parametrize("kind", ["symlink", "regular file", "open mode"])
def test_unsafe_fifo_paths_are_refused(ks_env, kind):
    path = ks_env.tmp / "bad"
    if kind == "symlink":
        os.mkfifo(ks_env.tmp / "target", 0o600)
        os.symlink(ks_env.tmp / "target", path)
        want = "is a symlink"
    elif kind == "regular file":
        path.write_text("not a fifo")
        want = "is not a FIFO"
    else:
        os.mkfifo(path)
        os.chmod(path, 0o666)
        want = "open to others"
    with pytest.raises(FifoError, match=want):
        ensure_fifo(str(path))
    out = subprocess.run([tool("ks"), "run", "--fifo", str(path), "--data-dir", str(ks_env.data)],
                         env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and want in out.stderr
    assert "remove it" in out.stderr.lower() or "chmod 600" in out.stderr


def test_line_writer_without_reader_counts_drops_and_never_blocks(ks_env):
    w = LineWriter(ks_env.fifo, producer="test", block_ms=100)
    for _ in range(1000):
        assert not w.write_line(good_line("load"))
    assert w.counters.dropped_no_reader_total == 1000 and w.counters.lines_written_total == 0
    assert not w.write_line(b"x" * 5000 + b"\n")
    assert w.counters.dropped_oversize_total == 1


def _hold_write_lock(db):
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_locked_database_keeps_the_lines_until_it_is_released(ks_env):
    proc = start_ingest(ks_env)
    wait_for(lambda: read_status(ks_env.data), what="status file")
    lock = _hold_write_lock(ks_env.db)
    try:
        fd = os.open(ks_env.fifo, os.O_WRONLY)
        for _ in range(100):
            os.write(fd, good_line("load"))
        os.close(fd)
        st = wait_for(lambda: (s := read_status(ks_env.data)) and s["state"] == "retrying" and s["pending_rows"] == 100
                      and s, what="100 rows kept after a failed flush (each attempt waits the busy timeout)")
        assert "locked" in st["last_error"] and not st["disk_full"]
        assert st["stored"] == 0 and table_rows(ks_env.db, "load") == 0
    finally:
        lock.rollback()
        lock.close()
    wait_for(lambda: table_rows(ks_env.db, "load") == 100, what="100 rows stored after the lock")
    rc, err = stop(proc)
    assert rc == 0, err
    stats = last_stats(ks_env.db)
    assert stats["load"] == (100, 100, 0, 0)


def test_stop_while_locked_exits_and_claims_nothing(ks_env):
    proc = start_ingest(ks_env)
    wait_for(lambda: read_status(ks_env.data), what="status file")
    lock = _hold_write_lock(ks_env.db)
    try:
        fd = os.open(ks_env.fifo, os.O_WRONLY)
        for _ in range(50):
            os.write(fd, good_line("psi"))
        os.close(fd)
        wait_for(lambda: (s := read_status(ks_env.data)) and s["state"] == "retrying", what="a failed flush")
        rc, err = stop(proc)  # the final flush and stats row give up after their busy timeouts
    finally:
        lock.rollback()
        lock.close()
    assert rc == 0, err
    assert "rows not stored at exit" in err and "final pipeline_stats row not written" in err
    final = next(orjson.loads(ln) for ln in err.splitlines() if "final pipeline_stats row not written" in ln)
    assert (final["received"], final["stored"], final["pending"]) == (50, 0, 50)
    assert table_rows(ks_env.db, "psi") == 0
    assert not [r for r in query(ks_env.db, "SELECT stored FROM pipeline_stats WHERE event_type='psi'") if r[0]]


def test_a_field_added_later_may_be_absent_but_nothing_else_may():
    """Schema evolution: a field with `since` (tcp_retrans netns, added when the scraper began
    reading every network namespace) may be missing from older lines (recordings, a binary still
    running through an upgrade) and is stored NULL; any other missing or extra field is refused."""
    schema = load_schema()
    spec = schema.events["tcp_retrans"]
    assert {f.name for f in spec.fields if f.since} == {"netns", "interfaces"}
    full = example_event(spec)
    old = {k: v for k, v in full.items() if k not in ("netns", "interfaces")}
    _, row = schema.validate(old)
    cols = dict(zip(spec.columns, row))
    assert cols["netns"] is None and cols["interfaces"] is None and cols["out_segs_total"] == 1
    assert schema.validate(full)[1] != row
    with pytest.raises(RejectedLine, match="unexpected field 'bogus'"):
        schema.validate({**old, "bogus": 1})           # the absent field's slot is not free for another
    with pytest.raises(RejectedLine, match="missing field 'out_segs_total'"):
        schema.validate({k: v for k, v in full.items() if k != "out_segs_total"})


def test_quiet_reads_come_with_the_commit_where_the_pipe_holds_the_burst_that_long():
    from kernelsight.ingest.daemon import QUIET_BURST_BYTES_PER_S, QUIET_READ_MIN_S, quiet_read_every_s

    assert quiet_read_every_s(4 << 20, 1.0) == 1.0  # the 4 MiB pipe: one wake-up a second reads and commits
    assert quiet_read_every_s(1 << 20, 1.0) == 0.5  # the 1 MiB one (no CAP_SYS_RESOURCE)
    assert quiet_read_every_s(1 << 18, 1.0) == 0.125
    assert quiet_read_every_s(4096, 1.0) == QUIET_READ_MIN_S
    assert quiet_read_every_s(4 << 20, 0.2) == 0.2  # never later than a commit falls due
    for size in (1 << 18, 1 << 20, 4 << 20):
        assert quiet_read_every_s(size, 1.0) * QUIET_BURST_BYTES_PER_S <= size

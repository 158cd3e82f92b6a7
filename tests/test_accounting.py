"""Counters files and line accounting, without the whole pipeline: the file layout
both writers share, liveness by flock, attribution of event types to producers,
and the fold of finished processes into the persisted totals."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import has_reader, query, tool, wait_for
from kernelsight import accounting as acc
from kernelsight.fifo import FifoError, LineWriter, ensure_fifo


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    fifo = str(tmp_path / "ks.fifo")
    monkeypatch.setenv("KS_DATA_DIR", str(data))
    return data, fifo


def test_line_writer_keeps_its_counters_in_the_file(data_env):
    data, fifo = data_env
    ensure_fifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = LineWriter(fifo, producer="ks-unit", block_ms=0)
        path = data / "run" / "producers" / f"ks-unit.{os.getpid()}.cnt"
        assert w.counter_file is not None and w.counter_file.path == str(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "run").stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "run" / "producers").stat().st_mode) == 0o700
        for i in range(5):
            assert w.emit({"type": "x", "i": i})
        assert not w.write_line(b"no newline")
        w.count_tool_lost(9)
        f = acc.read_counter_file(path)
        assert f is not None and f.live, "a living writer holds its file"
        assert (f.producer, f.pid, f.start_ticks) == ("ks-unit", os.getpid(), acc.proc_start_ticks(os.getpid()))
        assert f.counters == {"lines_written_total": 5, "dropped_no_reader_total": 0, "dropped_full_total": 0,
                              "dropped_oversize_total": 1, "write_errors_total": 0, "dropped_tool_lost_total": 9}
        assert f.write_in_progress == 0 and f.last_drop_ns >= f.created_ns > 0
        # A second writer of the same producer in this process gets its own file.
        w2 = LineWriter(fifo, producer="ks-unit", block_ms=0)
        assert w2.counter_file.path != w.counter_file.path
        w2.emit({"type": "x"})
        w2.close()
        w.close()
        f = acc.read_counter_file(path)
        assert not f.live and f.counters["lines_written_total"] == 5
        assert sorted(x.counters["lines_written_total"] for x in acc.read_counter_files(data)) == [1, 5]
        assert w.stats_event()["dropped_tool_lost_total"] == 9
    finally:
        os.close(rfd)


def test_no_file_without_a_data_dir_on_stdout_or_with_a_bad_name(data_env, monkeypatch):
    data, fifo = data_env
    assert LineWriter("-", producer="ks-unit").counter_file is None
    w = LineWriter(fifo, producer="../escape")
    assert w.counter_file is None
    w.close()
    monkeypatch.delenv("KS_DATA_DIR")
    w = LineWriter(fifo, producer="ks-unit")
    assert w.counter_file is None and w.emit({"type": "x"}) is False  # no reader: counted as before
    assert w.counters.dropped_no_reader_total == 1
    w.close()
    assert acc.read_counter_files(data) == []


def test_fifo_open_to_the_group_is_refused(tmp_path):
    fifo = tmp_path / "ks.fifo"
    os.mkfifo(fifo, 0o600)
    os.chmod(fifo, 0o620)
    with pytest.raises(FifoError, match=r"0620.*chmod 600"):
        LineWriter(str(fifo))


def test_scraper_file_matches_what_reached_the_pipe(data_env):
    """ks_out.c writes the same layout: its count is exactly the lines in the pipe."""
    data, fifo = data_env
    if tool("ks-scraper") is None:
        pytest.skip("ks-scraper is not built (make build)")
    ensure_fifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = subprocess.run([tool("ks-scraper"), "--output", fifo, "--interval", "0.05", "--count", "3"],
                           capture_output=True, timeout=60, env={**os.environ, "KS_DATA_DIR": str(data)})
        assert r.returncode == 0, r.stderr
        got = b""
        while True:
            try:
                chunk = os.read(rfd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(rfd)
    (f,) = acc.read_counter_files(data)
    assert f.producer == "ks-scraper" and not f.live and f.write_in_progress == 0
    assert f.counters["lines_written_total"] == got.count(b"\n") > 3
    assert b'"dropped_tool_lost_total":0' in got.splitlines()[-1]


def test_event_types_belong_to_the_producers_their_schema_names():
    pm = acc.producer_map()
    assert pm.by_type["memory"] == "ks-scraper"
    assert pm.by_type["syscall"] == "ks-syscall"
    assert pm.by_type["tcp_state"] == "ks-collectors"
    assert pm.by_field["producer_stats"][0] == "producer"
    field, tracers = pm.by_field["tracer_stats"]
    assert field == "tracer" and tracers["io_latency"] == "ks-io-latency"
    # `run NAME` writes as ks-collector-NAME: the same account as the run-all host.
    assert pm.canonical("ks-collector-tcpstates") == "ks-collectors"
    assert pm.canonical("ks-scraper") == "ks-scraper"


WRITER = """
import os, sys
from kernelsight.fifo import LineWriter
w = LineWriter(sys.argv[1], producer="ks-scraper", block_ms=0)
for i in range(int(sys.argv[2])):
    w.emit({"type": "load", "ts": 1_800_000_000_000_000_000 + i, "load_1min": 0.0, "load_5min": 0.0,
            "load_15min": 0.0, "runnable_tasks": 1, "total_tasks": 1, "last_pid": 1})
if sys.argv[3] == "stats":
    w.emit_stats()
    w.close()
    sys.exit(0)
sys.stdout.write("written\\n"); sys.stdout.flush()
os.kill(os.getpid(), 9)
"""


def _ingest(data, fifo, env):
    p = subprocess.Popen([sys.executable, "-m", "kernelsight.ingest", "--fifo", fifo, "--data-dir", str(data),
                          "--stats-interval", "0.2"], env=env)
    wait_for(lambda: has_reader(fifo), what="ks-ingest reading the FIFO")
    return p


def test_finished_processes_fold_into_the_totals_once(data_env, tmp_path):
    """Two writers (one exits in order, one is killed -9 without a last stats line):
    their files are folded into run/accounting.json and removed, and the totals do
    not change on the next call."""
    data, fifo = data_env
    env = {**os.environ, "KS_DATA_DIR": str(data), "KS_FIFO": fifo}
    from kernelsight import db

    ensure_fifo(fifo)
    ing = _ingest(data, fifo, env)
    try:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        subprocess.run([sys.executable, str(script), fifo, "40", "stats"], env=env, check=True, timeout=60)
        killed = subprocess.run([sys.executable, str(script), fifo, "25", "kill"], env=env, timeout=60,
                                capture_output=True)
        assert killed.returncode == -signal.SIGKILL and killed.stdout == b"written\n"
        # A stats line written after the killed writer's last line (later by more than the
        # accounting's clock margin): once it is stored, ks-ingest has read past that line.
        time.sleep(2 * acc.WATERMARK_SLACK_NS / 1e9)
        marker = LineWriter(fifo, producer="ks-marker")
        marker.emit_stats()
        marker.close()
        wait_for(lambda: query(data / "kernelsight.db", "SELECT COUNT(*) FROM producer_stats "
                                                         "WHERE producer='ks-marker'") == [(1,)], what="marker")
    finally:
        ing.send_signal(signal.SIGTERM)
        assert ing.wait(timeout=60) == 0
    conn = db.connect_readonly(db.db_path(data))
    try:
        first = {a.producer: a for a in acc.reconcile(data, conn)}
        sc = first["ks-scraper"]
        assert (sc.written, sc.stored, sc.rejected, sc.in_flight, sc.unaccounted) == (40 + 1 + 25, 66, 0, 0, 0)
        assert sc.processes == 2 and sc.status == "ok" and sc.running_pids == []
        assert first["ks-marker"].written == first["ks-marker"].stored == 1
        assert acc.read_counter_files(data) == [], "finished files are folded and removed"
        state = data / "run" / acc.STATE_FILE
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        again = {a.producer: a for a in acc.reconcile(data, conn)}
        assert {p: (a.written, a.stored, a.processes) for p, a in again.items()} == \
               {p: (a.written, a.stored, a.processes) for p, a in first.items()}
    finally:
        conn.close()


def test_a_process_without_a_counters_file_is_counted_from_its_stats_line(data_env, tmp_path):
    data, fifo = data_env
    from kernelsight import db

    env = {k: v for k, v in os.environ.items() if k != "KS_DATA_DIR"}  # no file for it
    ensure_fifo(fifo)
    ing = _ingest(data, fifo, {**env, "KS_FIFO": fifo})
    try:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        subprocess.run([sys.executable, str(script), fifo, "30", "stats"], env=env, check=True, timeout=60)
        wait_for(lambda: query(data / "kernelsight.db", "SELECT COUNT(*) FROM producer_stats") == [(1,)],
                 what="its stats line")
    finally:
        ing.send_signal(signal.SIGTERM)
        assert ing.wait(timeout=60) == 0
    assert acc.read_counter_files(data) == []
    conn = db.connect_readonly(db.db_path(data))
    try:
        (a,) = acc.reconcile(data, conn)
    finally:
        conn.close()
    assert (a.producer, a.written_from, a.written, a.stored, a.unaccounted) == ("ks-scraper", "producer_stats",
                                                                               31, 31, 0)


def test_dropping_and_silent(data_env):
    """A running writer that drops is "dropping"; one whose counters stood still for
    three intervals is "silent"."""
    data, fifo = data_env
    from kernelsight import db

    conn = db.connect(db.db_path(data))
    w = LineWriter(fifo, producer="ks-unit")  # no reader: every line is dropped
    try:
        w.emit({"type": "x"})
        (a,) = acc.reconcile(data, conn, interval_s=1.0)
        assert a.status == "dropping" and a.dropped["no_reader"] == 1 and a.running_pids == [os.getpid()]
        later = time.time_ns() + 10 * 10**9
        (a,) = acc.reconcile(data, conn, interval_s=1.0, now_ns=later)
        assert a.status == "silent"
    finally:
        w.close()
        conn.close()
    assert acc.read_counter_files(data)[0].live is False

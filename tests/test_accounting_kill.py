"""kill -9 with real processes, real FIFO, real ks-ingest: every line is stored or counted.

A load generator (fifo.LineWriter, producer ks-loadgen) numbers every line it
tries to write (`seq`), so the database shows exactly which lines arrived; its
event type lives in a schema directory made for the test (the real files plus
loadgen.json), which ks-ingest and the accounting both read (KS_SCHEMA_DIR).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest

from conftest import REPO, has_reader, query, tool, wait_for
from kernelsight import accounting as acc
from kernelsight import db

LOADGEN_SCHEMA = {
    "producer": "ks-loadgen",
    "doc": "Test load: one line per attempt, numbered.",
    "events": {"loadgen": {"table": "loadgen_events", "source": "tests/test_accounting_kill.py", "nullable": False,
                           "fields": {"seq": {"type": "int", "unit": "", "desc": "attempt number, from 0"}}}},
}

# argv: fifo, stats_every (0 = one stats line after the first line only), pause_s
LOADGEN = """
import signal, sys, time
from kernelsight.fifo import LineWriter
fifo, stats_every, pause_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
w = LineWriter(fifo, producer="ks-loadgen", block_ms=100)
seq = 0
while not stop:
    w.emit({"type": "loadgen", "ts": time.time_ns(), "seq": seq})
    seq += 1
    if (stats_every and seq % stats_every == 0) or (not stats_every and seq == 1):
        w.emit_stats()
    if pause_s:
        time.sleep(pause_s)
w.emit_stats()
w.close()
"""


@pytest.fixture
def env(ks_env, monkeypatch):
    schema = ks_env.tmp / "schema"
    events = schema / "events"
    shutil.copytree(REPO / "schema" / "events", events)
    shutil.copy(REPO / "schema" / "base.sql", schema / "base.sql")
    (events / "loadgen.json").write_text(json.dumps(LOADGEN_SCHEMA))
    script = ks_env.tmp / "loadgen.py"
    script.write_text(LOADGEN)
    ks_env.schema = events
    ks_env.loadgen = script
    ks_env.env = {**ks_env.env, "KS_SCHEMA_DIR": str(events)}
    monkeypatch.setenv("KS_DATA_DIR", str(ks_env.data))
    monkeypatch.setenv("KS_SCHEMA_DIR", str(events))
    return ks_env


def loadgen(env, stats_every: int, pause_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(env.loadgen), env.fifo, str(stats_every), str(pause_s)],
                            env=env.env)


def ingest(env) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "kernelsight.ingest", "--fifo", env.fifo, "--data-dir",
                          str(env.data), "--stats-interval", "0.2"], env=env.env)
    wait_for(lambda: has_reader(env.fifo), what="ks-ingest reading the FIFO")
    return p


def rows(env, sql: str, args=()) -> int:
    r = query(env.db, sql, args)
    return r[0][0] if r and r[0][0] is not None else 0


def accounts(env) -> dict[str, acc.ProducerAccount]:
    conn = db.connect_readonly(db.db_path(env.data))
    try:
        return {a.producer: a for a in acc.reconcile(env.data, conn, schema_directory=env.schema)}
    finally:
        conn.close()


def marker_stats_line(env) -> None:
    """A producer_stats line written after everything else (past the accounting's clock
    margin): once ks-ingest stored it, it has read every line written before it."""
    from kernelsight.fifo import LineWriter

    time.sleep(2 * acc.WATERMARK_SLACK_NS / 1e9)
    w = LineWriter(env.fifo, producer="ks-marker")
    assert w.emit_stats()
    pid = os.getpid()
    w.close()
    wait_for(lambda: rows(env, "SELECT COUNT(*) FROM producer_stats WHERE producer='ks-marker' AND pid=?",
                          (pid,)) > 0, what="the marker line stored")


def seqs(env) -> list[int]:
    return [r[0] for r in query(env.db, "SELECT seq FROM loadgen_events ORDER BY seq")]


def ks_status(env) -> dict:
    out = subprocess.run([tool("ks"), "status", "--json", "--data-dir", str(env.data)], env=env.env,
                         capture_output=True, timeout=60)
    return orjson.loads(out.stdout)


def child(st: dict, name: str) -> dict:
    return next(c for c in st["children"] if c["name"] == name)


@contextlib.contextmanager
def ks_run(env, interval: str, *extra: subprocess.Popen):
    """`ks run` (scraper, ingest, agent; no tracers or collectors) for the block; the list it
    yields takes the test's own processes, killed if still running at the end."""
    if tool("ks-scraper") is None:
        pytest.skip("ks-scraper is not built (make build)")
    procs: list[subprocess.Popen] = []
    with open(env.tmp / "ks-run.log", "wb") as log:
        run = subprocess.Popen([tool("ks"), "run", "--data-dir", str(env.data), "--fifo", env.fifo, "--interval",
                                interval, "--no-tracers", "--no-collectors"], env=env.env, stderr=log)
        procs.append(run)
        try:
            yield run, procs
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.kill()
                    p.wait()


def test_line_writer_killed_9_counts_are_exact(env):
    """The loadgen writes one producer_stats line at its start and is then killed -9
    mid-stream: only its counters file knows how many lines it wrote."""
    ing = ingest(env)
    try:
        lg = loadgen(env, stats_every=0, pause_s=0.0002)
        wait_for(lambda: rows(env, "SELECT COUNT(*) FROM loadgen_events") >= 2000, what="2,000 rows")
        lg.send_signal(signal.SIGKILL)
        assert lg.wait(timeout=30) == -signal.SIGKILL
        marker_stats_line(env)
        wait_for(lambda: accounts(env)["ks-loadgen"].in_flight == 0, 120, what="everything written stored")
    finally:
        ing.send_signal(signal.SIGTERM)
        assert ing.wait(timeout=60) == 0
    a = accounts(env)["ks-loadgen"]
    stats = query(env.db, "SELECT MAX(lines_written_total) FROM producer_stats WHERE producer='ks-loadgen'")[0][0]
    got = seqs(env)
    assert a.written_from == "counters files" and a.processes == 1 and a.running_pids == []
    assert stats == 1 and a.written > 2000, "the stats line knew 2 lines; the file knows them all"
    assert a.written == a.stored + a.rejected and a.in_flight == 0 and a.unaccounted == 0 and a.status == "ok"
    # What the file says was written is exactly what arrived: every attempt, in order,
    # but for the ones counted as dropped.
    n_loadgen = len(got)
    assert len(set(got)) == n_loadgen == a.stored - 1  # its one producer_stats line is stored too
    assert got[-1] + 1 - n_loadgen <= a.dropped_total
    assert acc.read_counter_files(env.data) == [], "the dead writer's file is folded into the totals"


def test_scraper_killed_9_with_a_full_pipe_counts_are_exact(env):
    """ks-ingest is stopped (SIGSTOP) until the 1 MiB pipe is full and ks-scraper drops
    lines (its stats lines among them), then ks-scraper is killed -9: its counters
    file knows the lines and drops no stored producer_stats line shows."""
    if tool("ks-scraper") is None:
        pytest.skip("ks-scraper is not built (make build)")
    ing = ingest(env)
    sc = None
    try:
        sc = subprocess.Popen([tool("ks-scraper"), "--output", env.fifo, "--interval", "0.01"], env=env.env,
                              stderr=subprocess.DEVNULL)
        wait_for(lambda: rows(env, "SELECT COUNT(*) FROM load_metrics") >= 5, what="scraper rows")
        ing.send_signal(signal.SIGSTOP)
        path = env.data / "run" / "producers" / f"ks-scraper.{sc.pid}.cnt"
        wait_for(lambda: (f := acc.read_counter_file(path)) and f.counters["dropped_full_total"] >= 20,
                 timeout=120, what="the scraper dropping on a full pipe")
        sc.send_signal(signal.SIGKILL)
        assert sc.wait(timeout=30) == -signal.SIGKILL
        ing.send_signal(signal.SIGCONT)
        marker_stats_line(env)
        wait_for(lambda: accounts(env)["ks-scraper"].in_flight == 0, 120, what="the pipe drained")
    finally:
        ing.send_signal(signal.SIGCONT)
        ing.send_signal(signal.SIGTERM)
        assert ing.wait(timeout=60) == 0
        if sc is not None and sc.poll() is None:
            sc.kill()
    a = accounts(env)["ks-scraper"]
    last = query(env.db, "SELECT MAX(lines_written_total), MAX(dropped_full_total) FROM producer_stats "
                         "WHERE producer='ks-scraper'")[0]
    assert a.written == a.stored + a.rejected and a.in_flight == 0 and a.unaccounted == 0, a
    assert a.dropped["full"] >= 20 and a.dropped_total == a.dropped["full"]
    assert last[1] < a.dropped["full"], "no stored stats line saw these drops; the file did"
    assert last[0] + 1 <= a.written


def test_kill_9_ingest_under_the_supervisor_loses_no_line_uncounted(env):
    """`ks run` with ks-scraper, plus a loadgen writing ~2,000 lines/s: kill -9 of
    ks-ingest.  The supervisor holds the pipe, so writers never see EPIPE, lines
    written while ks-ingest is down wait in the pipe and are stored by the next one;
    the only lines lost are the batch the killed ks-ingest had read and not
    committed, and the accounting counts exactly those, per producer."""
    with ks_run(env, "0.2") as (run, procs):
        st = wait_for(lambda: (s := ks_status(env))["supervisor"] == "running" and child(s, "ks-ingest")["pid"] and s,
                      what="pipeline running")
        old_ingest = child(st, "ks-ingest")["pid"]
        lg = loadgen(env, stats_every=200, pause_s=0.0005)
        procs.append(lg)
        wait_for(lambda: rows(env, "SELECT COUNT(*) FROM loadgen_events") >= 1000, what="1,000 rows")
        os.kill(old_ingest, signal.SIGKILL)
        st = wait_for(lambda: (s := ks_status(env)) and child(s, "ks-ingest")["restarts"] == 1
                      and child(s, "ks-ingest")["state"] == "running" and s, what="ks-ingest restarted")
        new_ingest = child(st, "ks-ingest")["pid"]
        pids = (env.data / "run" / "pipeline.pids").read_text().split()
        assert str(new_ingest) in pids and str(old_ingest) not in pids and str(run.pid) in pids
        n = rows(env, "SELECT COUNT(*) FROM loadgen_events")
        wait_for(lambda: rows(env, "SELECT COUNT(*) FROM loadgen_events") >= n + 1000, what="rows after restart")
        lg.send_signal(signal.SIGTERM)
        assert lg.wait(timeout=30) == 0
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0
    assert not (env.data / "run" / "pipeline.pids").exists()
    accts = accounts(env)
    a = accts["ks-loadgen"]
    got = seqs(env)
    missing = sorted(set(range(got[-1] + 1)) - set(got))
    figures = {p: (x.written, x.stored, x.rejected, x.dropped_total, x.unaccounted) for p, x in accts.items()}
    print("written, stored, rejected, dropped, unaccounted:", figures)
    # Writers never met a closed pipe, and the pipe never filled while ks-ingest was away.
    assert a.dropped_total == 0 and a.dropped["no_reader"] == 0, figures
    # Every line the loadgen wrote is stored, or among the unaccounted lines the
    # accounting reports: exactly the missing sequence numbers (one run of consecutive
    # lines: the batch the killed ks-ingest held) and any of its stats lines in that batch.
    events_written = got[-1] + 1  # no drops, and its last lines were stored after the restart
    stats_stored = rows(env, "SELECT COUNT(*) FROM producer_stats WHERE producer='ks-loadgen'")
    stats_missing = (a.written - events_written) - stats_stored
    assert len(missing) + stats_missing == a.unaccounted == a.in_flight, (missing[:5], stats_missing, figures)
    assert not missing or missing[-1] - missing[0] + 1 == len(missing), missing
    for p, x in accts.items():
        assert x.written == x.stored + x.rejected + x.unaccounted and x.in_flight == x.unaccounted, (p, figures)
        assert x.running_pids == [] and x.dropped["no_reader"] == 0, (p, figures)
    assert accts["ks-scraper"].written > 0 and accts["ks-scraper"].processes == 1
    assert acc.read_counter_files(env.data) == [], "every finished writer folded"


def test_agent_raises_a_stalled_ingest_and_a_silent_producer(env):
    """`ks run` with ks-scraper and the agent, plus a loadgen.  SIGSTOP of ks-ingest fills the pipe:
    the writers count "pipe full" drops and, once ks-ingest runs again and stores their stats, the
    agent opens one Telemetry Loss observation naming them.  SIGSTOP of ks-scraper: a running
    producer that writes nothing opens Silent Producer naming it.  Both close once the stall ends."""
    def child_pid(st, name):
        return child(st, name)["pid"]

    def observation(label, status=None):
        sql = "SELECT id, status, summary, processes FROM observations WHERE label=?"
        r = query(env.db, sql + (" AND status=?" if status else "") + " ORDER BY id",
                  (label, status) if status else (label,)) if env.db.exists() else []
        return r[-1] if r else None

    with ks_run(env, "1") as (run, procs):
        st = wait_for(lambda: (s := ks_status(env))["supervisor"] == "running" and all(
            child_pid(s, n) for n in ("ks-ingest", "ks-agent", "ks-scraper")) and s, what="pipeline running")
        lg = loadgen(env, stats_every=100, pause_s=0.0002)
        procs.append(lg)
        wait_for(lambda: rows(env, "SELECT COUNT(*) FROM features") >= 4, timeout=90, what="the agent past warm-up")
        ingest_pid = child_pid(st, "ks-ingest")
        os.kill(ingest_pid, signal.SIGSTOP)
        try:
            wait_for(lambda: any(a.dropped["full"] for a in accounts(env).values()), timeout=60,
                     what="a writer counting pipe-full drops")
        finally:
            os.kill(ingest_pid, signal.SIGCONT)
        loss = wait_for(lambda: observation("Telemetry Loss", "open"), timeout=90, what="Telemetry Loss opened")
        print("Telemetry Loss:", loss[2])
        assert "ks-loadgen" in loss[2] and "full" in loss[2], loss[2]
        scraper_pid = child_pid(st, "ks-scraper")
        os.kill(scraper_pid, signal.SIGSTOP)
        try:
            silent = wait_for(lambda: observation("Silent Producer", "open"), timeout=90, what="Silent Producer")
        finally:
            os.kill(scraper_pid, signal.SIGCONT)
        print("Silent Producer:", silent[2])
        assert f"ks-scraper (pid {scraper_pid})" in silent[2], silent[2]
        assert wait_for(lambda: (o := observation("Silent Producer")) and o[1] == "closed", timeout=120,
                        what="Silent Producer closed")
        lg.send_signal(signal.SIGTERM)
        assert lg.wait(timeout=30) == 0
        assert wait_for(lambda: (o := observation("Telemetry Loss")) and o[1] == "closed", timeout=120,
                        what="Telemetry Loss closed")
        assert len(query(env.db, "SELECT id FROM observations WHERE label='Telemetry Loss'")) >= 1
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 0

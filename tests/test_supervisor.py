"""`ks run` end to end: real scraper -> real FIFO -> real ks-ingest -> real DB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import orjson
import pytest

from conftest import has_reader, query, tool, wait_for

SCRAPER_TABLES = ["memory_metrics", "load_metrics", "cpu_metrics", "vmstat_metrics", "block_stats",
                  "network_interface_stats", "tcp_stats", "tcp_retransmit_stats", "psi_metrics"]


def status(ks_env) -> dict:
    out = subprocess.run([tool("ks"), "status", "--json", "--data-dir", str(ks_env.data)],
                         env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def child(st: dict, name: str) -> dict:
    return next(c for c in st["children"] if c["name"] == name)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def pipeline(ks_env):
    if tool("ks-scraper") is None:
        pytest.skip("ks-scraper is not built (make build)")
    log = open(ks_env.tmp / "ks-run.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([tool("ks"), "run", "--data-dir", str(ks_env.data), "--fifo", ks_env.fifo,
                             "--interval", "0.2", "--no-tracers", "--no-collectors"],
                            env=ks_env.env, stderr=log)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log.close()


def test_kill_9_child_is_restarted_and_counts_reconcile(ks_env, pipeline):
    st = wait_for(lambda: (s := status(ks_env))["supervisor"] == "running"
                  and all(c["state"] == "running" for c in s["children"]) and s,
                  what="all children running")
    for table in SCRAPER_TABLES:
        wait_for(lambda: query(ks_env.db, f"SELECT COUNT(*) FROM {table}") not in ([], [(0,)]),
                 what=f"rows in {table}")
    old = child(st, "ks-scraper")["pid"]
    ingest_pid = child(st, "ks-ingest")["pid"]
    os.kill(old, signal.SIGKILL)
    st = wait_for(lambda: (s := status(ks_env)) and child(s, "ks-scraper")["restarts"] == 1
                  and child(s, "ks-scraper")["state"] == "running" and s, what="scraper restarted")
    new = child(st, "ks-scraper")["pid"]
    assert new != old and alive(new)
    # The new scraper's lines keep arriving.
    n0 = query(ks_env.db, "SELECT COUNT(*) FROM load_metrics")[0][0]
    wait_for(lambda: query(ks_env.db, "SELECT COUNT(*) FROM load_metrics")[0][0] > n0 + 2, what="new rows")

    pipeline.send_signal(signal.SIGTERM)
    assert pipeline.wait(timeout=60) == 0
    assert not alive(new) and not alive(ingest_pid), "a child outlived the supervisor"

    # Ingest's last accounting: nothing pending, received = stored + rejected,
    # and what it says it stored is what the tables hold.
    rows = query(ks_env.db, "SELECT event_type, received, stored, rejected, pending FROM pipeline_stats "
                            "WHERE id IN (SELECT MAX(id) FROM pipeline_stats WHERE pid=? GROUP BY event_type)",
                 (ingest_pid,))
    assert rows
    from kernelsight.schema import load_schema

    events = load_schema().events
    for etype, received, stored, rejected, pending in rows:
        assert pending == 0 and received == stored + rejected, etype
        if etype in events:
            assert query(ks_env.db, f"SELECT COUNT(*) FROM {events[etype].table}")[0][0] == stored, etype
    # The surviving scraper said goodbye: its last producer_stats accounts for every
    # line it wrote, and it dropped nothing.
    last = query(ks_env.db, "SELECT lines_written_total, dropped_no_reader_total, dropped_full_total, "
                            "dropped_oversize_total, write_errors_total FROM producer_stats WHERE pid=? "
                            "ORDER BY lines_written_total DESC LIMIT 1", (new,))
    assert last and last[0][1:] == (0, 0, 0, 0)


def test_status_lists_children_and_counters(ks_env, pipeline):
    wait_for(lambda: status(ks_env)["counters"].get("memory", {}).get("stored", 0) > 0, what="memory rows counted")
    out = subprocess.run([tool("ks"), "status", "--data-dir", str(ks_env.data)], env=ks_env.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "ks-ingest" in out.stdout and "ks-scraper" in out.stdout and "running" in out.stdout
    assert "memory" in out.stdout


def test_status_without_a_pipeline_says_so(ks_env):
    out = subprocess.run([tool("ks"), "status", "--data-dir", str(ks_env.data)], env=ks_env.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "not running" in out.stdout


def test_producer_and_ingest_counts_reconcile_exactly(ks_env):
    """What ks-scraper says it wrote is exactly what ks-ingest says it received."""
    import sys

    if tool("ks-scraper") is None:
        pytest.skip("ks-scraper is not built (make build)")
    ing = subprocess.Popen([sys.executable, "-m", "kernelsight.ingest", "--fifo", ks_env.fifo,
                            "--data-dir", str(ks_env.data), "--stats-interval", "0.2"], env=ks_env.env)
    wait_for(lambda: has_reader(ks_env.fifo), what="ks-ingest reading the FIFO")
    sc = subprocess.run([tool("ks-scraper"), "--output", ks_env.fifo, "--interval", "0.1", "--count", "10"],
                        env=ks_env.env, capture_output=True, timeout=60)
    assert sc.returncode == 0, sc.stderr
    ing.send_signal(signal.SIGTERM)
    assert ing.wait(timeout=60) == 0
    written = query(ks_env.db, "SELECT MAX(lines_written_total) + 1, MAX(dropped_no_reader_total + "
                               "dropped_full_total + dropped_oversize_total + write_errors_total) "
                               "FROM producer_stats WHERE producer='ks-scraper'")[0]
    received = query(ks_env.db, "SELECT SUM(received), SUM(rejected) FROM pipeline_stats WHERE id IN "
                                "(SELECT MAX(id) FROM pipeline_stats GROUP BY event_type)")[0]
    assert written[1] == 0 and received[1] == 0
    assert received[0] == written[0]


def test_second_pipeline_on_the_same_data_dir_exits_naming_the_holder(ks_env, pipeline):
    st = wait_for(lambda: (s := status(ks_env))["supervisor"] == "running" and s, what="supervisor running")
    assert st["pipeline_lock_pid"] == pipeline.pid
    assert (ks_env.data / "run" / "lock").read_text().split() == [str(pipeline.pid)]
    second = subprocess.run([tool("ks"), "run", "--data-dir", str(ks_env.data), "--fifo", str(ks_env.tmp / "other"),
                             "--no-tracers", "--no-collectors"], env=ks_env.env, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1
    assert f"pid {pipeline.pid}" in second.stderr and "already running" in second.stderr, second.stderr
    # Another data dir on the same FIFO would split the lines between two ks-ingest.
    third = subprocess.run([tool("ks"), "run", "--data-dir", str(ks_env.tmp / "data2"), "--fifo", ks_env.fifo,
                            "--no-tracers", "--no-collectors"], env=ks_env.env, capture_output=True, text=True,
                           timeout=60)
    assert third.returncode == 1 and f"pid {pipeline.pid}" in third.stderr, third.stderr
    out = subprocess.run([tool("ks"), "status", "--data-dir", str(ks_env.data)], env=ks_env.env,
                         capture_output=True, text=True, timeout=60).stdout
    assert f"pipeline lock held by pid {pipeline.pid}" in out
    # The first pipeline is untouched, and its lock goes with it.
    assert pipeline.poll() is None
    pipeline.send_signal(signal.SIGTERM)
    assert pipeline.wait(timeout=60) == 0
    assert status(ks_env)["pipeline_lock_pid"] is None


def test_fifo_open_to_the_group_is_refused(ks_env):
    os.mkfifo(ks_env.fifo, 0o600)
    os.chmod(ks_env.fifo, 0o620)
    r = subprocess.run([tool("ks"), "run", "--data-dir", str(ks_env.data), "--fifo", ks_env.fifo,
                        "--no-tracers", "--no-collectors"], env=ks_env.env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "0620" in r.stderr and f"chmod 600 {ks_env.fifo}" in r.stderr, r.stderr


def test_status_shows_the_line_accounting(ks_env, pipeline):
    def scraper_account():
        acct = status(ks_env)["accounting"] or {"producers": []}
        return next((p for p in acct["producers"] if p["producer"] == "ks-scraper" and p["stored"] > 0), None)

    a = wait_for(scraper_account, what="ks-scraper in the accounting")
    assert a["running_pids"] and a["written_from"] == "counters files" and a["status"] in ("ok", "silent")
    out = subprocess.run([tool("ks"), "status", "--data-dir", str(ks_env.data)], env=ks_env.env,
                         capture_output=True, text=True, timeout=60).stdout
    assert "unaccounted" in out and "ks-scraper" in out.split("producer ", 1)[1]
    pids = (ks_env.data / "run" / "pipeline.pids").read_text().split()
    assert str(pipeline.pid) in pids and str(a["running_pids"][0]) in pids


def test_ingest_gets_longer_than_its_busy_timeout_to_stop():
    from kernelsight.children import RunOptions, default_children
    from kernelsight.supervisor import INGEST_STOP_TIMEOUT_S, STOP_TIMEOUT_S

    specs = {s.name: s for s in default_children(RunOptions(fifo="/nonexistent", tracers=False, collectors=False))}
    assert specs["ks-ingest"].stop_timeout_s == INGEST_STOP_TIMEOUT_S >= 5 + 10
    assert specs["ks-scraper"].stop_timeout_s == STOP_TIMEOUT_S


def test_tracers_exclude_every_pipeline_process(tmp_path):
    from kernelsight.children import RunOptions, default_children

    specs = default_children(RunOptions(fifo="/nonexistent", collectors=False, data_dir=tmp_path))
    tracers = [s for s in specs if "--exclude-pids-file" in s.argv]
    assert tracers and all(s.argv[s.argv.index("--exclude-pids-file") + 1] == str(tmp_path / "run" / "pipeline.pids")
                           and "--exclude-pid" in s.argv for s in tracers)


def test_descendants_from_children_files_match_psutil_and_the_proc_scan():
    """The supervisor finds the pipeline's processes through /proc/PID/task/TID/children (a few
    reads); the full scan of /proc it falls back to and psutil (the oracle) find the same tree."""
    import psutil

    from kernelsight import proctree, supervisor

    # a tree three levels deep, one child started from a second thread
    code = ("import subprocess, sys, threading; "
            "a = subprocess.Popen(['sh', '-c', 'sleep 60 & sleep 60 & wait']); "
            "t = threading.Thread(target=lambda: subprocess.Popen(['sleep', '60'])); t.start(); t.join(); "
            "print('ready', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        wait_for(lambda: len({c.pid for c in psutil.Process(p.pid).children(recursive=True)}) == 4, 30, 0.05,
                 "both sleeps under sh")
        want = {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
        assert supervisor.descendants(p.pid) == want
        kids = proctree._children_map()
        scan, todo = set(), [p.pid]
        while todo:
            for k in kids.get(todo.pop(), ()):
                scan.add(k)
                todo.append(k)
        assert scan == want
        assert supervisor.descendants(2**22 + 1) == set()  # no such pid
    finally:
        for c in psutil.Process(p.pid).children(recursive=True):
            c.kill()
        p.stdin.close()
        p.wait()
        p.stdout.close()

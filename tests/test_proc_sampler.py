"""The agent's /proc sampler on hostile input: names that are not UTF-8, files
that do not parse, processes that vanish.  It must never raise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kernelsight.agent.attribution import ProcessSampler, parse_proc_sample

STAT = b"4242 (memhog) R 1 4242 4242 0 -1 4194304 1500 0 2 0 120 30 0 0 20 0 1 0 9000 1000000 2560 0 0"
STATUS = b"Name:\tmemhog\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t3\n"


def test_parses_a_real_shaped_sample():
    s = parse_proc_sample(STAT, STATUS)
    assert s is not None
    assert (s.comm, s.state, s.minflt, s.majflt, s.cpu_ticks, s.start_ticks) == ("memhog", "R", 1500, 2, 150, 9000)
    assert (s.ctxt, s.nonvol_ctxt) == (10, 3)


def test_name_that_is_not_utf8_is_escaped_not_fatal():
    s = parse_proc_sample(STAT.replace(b"(memhog)", b"(\xff\xfe) x)"), STATUS)
    assert s is not None and s.comm == "\\xff\\xfe) x"


def test_truncated_or_junk_files_give_none():
    assert parse_proc_sample(b"", b"") is None
    assert parse_proc_sample(STAT[:40], STATUS) is None
    assert parse_proc_sample(STAT.replace(b" 1500 ", b" many "), STATUS) is None
    assert parse_proc_sample(STAT, b"voluntary_ctxt_switches:\n") is None


@settings(max_examples=3000, deadline=None)
@given(stat=st.binary(max_size=400), status=st.binary(max_size=200))
def test_random_bytes_never_raise(stat, status):
    parse_proc_sample(stat, status)


@settings(max_examples=2000, deadline=None)
@given(cut=st.integers(0, len(STAT)), junk=st.binary(max_size=16), pos=st.integers(0, len(STAT)))
def test_mutated_stat_never_raises(cut, junk, pos):
    parse_proc_sample(STAT[:pos] + junk + STAT[pos:cut] if cut > pos else STAT[:cut] + junk, STATUS)


def test_live_process_with_a_non_utf8_name(tmp_path: Path):
    """A real process renames itself to bytes that are not UTF-8 (any local user
    can); the sampler and every ranking over it keep working."""
    code = ("import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'\\xff\\xfe\\x80evil', 0, 0, 0); "
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(30)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        assert Path(f"/proc/{p.pid}/comm").read_bytes().startswith(b"\xff\xfe\x80")
        sampler = ProcessSampler()
        sampler.sample(1.0)
        sampler.sample(1.0)
        assert sampler.cur[p.pid].comm.startswith("\\xff\\xfe\\x80")
        for rank in (sampler.cpu_users, sampler.memory_growers, sampler.context_switchers,
                     sampler.faulters, sampler.blocked_on_io):
            rank()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()



def _thread_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_bytes().splitlines():
            if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def test_switches_of_every_thread_count(tmp_path: Path):
    """`perf bench sched pipe -T` ping-pongs between two threads of one process; /proc/PID/status
    counts its main thread only.  The sampler sums the threads; oracle: the threads' own status."""
    import shutil
    import time

    import pytest

    if shutil.which("perf") is None:
        pytest.skip("perf is not installed (apt-get install linux-perf)")
    p = subprocess.Popen(["perf", "bench", "sched", "pipe", "-T", "-l", "100000000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(list(Path(f"/proc/{p.pid}/task").iterdir())) < 3:
            time.sleep(0.05)
        sampler = ProcessSampler(window_s=15.0)
        sampler.sample(1.0)
        time.sleep(1.0)
        sampler.sample(1.0)
        time.sleep(1.0)
        before = _thread_switches(p.pid)
        sampler.sample(1.0)
        after = _thread_switches(p.pid)
        s = sampler.cur[p.pid]
        assert s.threads >= 3 and before <= s.ctxt <= after  # the threads' sum, read between the two
        main_only = parse_proc_sample(Path(f"/proc/{p.pid}/stat").read_bytes(),
                                      Path(f"/proc/{p.pid}/status").read_bytes())
        assert s.ctxt > 10 * main_only.ctxt  # the main thread only waits for the workers
        top = sampler.context_switchers()[0]
        assert top["pid"] == p.pid  # named by its process, whatever perf calls its threads
    finally:
        p.kill()
        p.wait()


def test_a_fork_storm_that_never_execs_is_named_by_its_parent():
    """Children forked and left to sleep, no exec: no exec event exists, the sampler's new
    processes by parent name the forker."""
    code = ("import os, sys, time\n"
            "sys.stdin.readline()\n"
            "for _ in range(40):\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(20); os._exit(0)\n"
            "sys.stdout.write('forked\\n'); sys.stdout.flush(); time.sleep(20)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        sampler = ProcessSampler()
        sampler.sample(1.0)
        p.stdin.write(b"go\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"forked\n"
        sampler.sample(1.0)
        top = sampler.forkers()[0]
        assert top["pid"] == p.pid and top["new_children"] == 40
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(p.pid)], check=False)
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


def test_event_loop_threads_and_their_run_queue_delay(epoll_loop_child):
    """A thread blocked in epoll is an event loop; the sampler follows its schedstat run_delay
    (time runnable, waiting for a CPU).  Oracle: the thread's own schedstat around the sample."""
    import time

    p, tid = epoll_loop_child
    sampler = ProcessSampler()
    sampler.sample(1.0)                         # seen in epoll: now an event loop
    assert tid in sampler.loop_threads and sampler.loop_delay_pct() is None
    p.stdin.write(b"go\n")
    p.stdin.flush()                             # now busy: often runnable, rarely in epoll
    time.sleep(1.0)
    sched = Path(f"/proc/{p.pid}/task/{tid}/schedstat")
    before = int(sched.read_bytes().split()[1])
    sampler.sample(1.0)
    after = int(sched.read_bytes().split()[1])
    _clock, seen = sampler.loop_threads[tid]
    assert before <= seen <= after
    top = sampler.event_loops()[0]
    assert (top["pid"], top["tid"]) == (p.pid, tid) and top["runq_delay_pct"] >= 0.0
    assert sampler.loop_delay_pct() == top["runq_delay_pct"]


def test_dropping_interfaces_names_the_interface_by_its_drops_in_the_window():
    import sqlite3

    from kernelsight.agent.attribution import dropping_interfaces
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE network_interface_stats (ts INTEGER, interface TEXT, rx_drops_total INTEGER, "
               "tx_drops_total INTEGER, rx_errors_total INTEGER, tx_errors_total INTEGER)")
    rows = [(1, "eth0", 5, 0, 0, 0), (2, "eth0", 5, 0, 0, 0),  # old drops, none in the window
            (1, "ks-loss0", 0, 100, 0, 0), (2, "ks-loss0", 0, 2100, 0, 3),
            (1, "lo", 0, 0, 0, 0), (2, "lo", 0, 0, 0, 0)]
    db.executemany("INSERT INTO network_interface_stats VALUES (?, ?, ?, ?, ?, ?)", rows)
    assert dropping_interfaces(db, since_ns=0) == [
        {"comm": "interface ks-loss0", "interface": "ks-loss0", "rx_drops": 0, "tx_drops": 2000, "rx_errors": 0, "tx_errors": 3}]
    assert dropping_interfaces(sqlite3.connect(":memory:"), since_ns=0) == []  # no table yet: nobody named


def test_a_thread_sum_is_never_compared_with_a_main_thread_count():
    """A 13-thread process read as its main thread at first sight and summed when busy later:
    its rate is the main thread's delta for that step, not every thread's lifetime switches."""
    from kernelsight.agent.attribution import ProcSample

    sp = ProcessSampler(window_s=15.0)
    main_only = ProcSample("init", "S", 0, 0, 0, 0, 500, 0, 1, threads=13)
    summed = ProcSample("init", "S", 0, 0, 0, 0, 900_000, 0, 1, threads=13, threads_summed=True, main_ctxt=510)
    sp.prev, sp.cur, sp.dt_s = {1: main_only}, {1: summed}, 5.0
    assert sp.context_switchers()[0]["ctx_switches_per_sec"] == 2  # (510 - 500) / 5 s
    later = ProcSample("init", "S", 0, 0, 0, 0, 900_050, 0, 1, threads=13, threads_summed=True, main_ctxt=520)
    sp.prev, sp.cur = {1: summed}, {1: later}
    assert sp.context_switchers()[0]["ctx_switches_per_sec"] == 10  # a sum against a sum


def test_kernel_threads_are_not_searched_for_event_loops(monkeypatch):
    """kthreadd (pid 2) and its children never wait in epoll: only other processes' task
    directories are listed for event-loop threads."""
    from types import SimpleNamespace

    from kernelsight.agent import attribution as A

    asked = []
    monkeypatch.setattr(A, "_native", SimpleNamespace(
        loop_threads=lambda root, pids, known, budget: asked.extend(pids) or []))
    cur = {1: A.ProcSample("systemd", "S", 0, 0, 0, 0, 0, 0, 1, ppid=0),
           2: A.ProcSample("kthreadd", "S", 0, 0, 0, 0, 0, 0, 1, ppid=0),
           40: A.ProcSample("kworker/0:1", "I", 0, 0, 0, 0, 0, 0, 1, ppid=2),
           700: A.ProcSample("nginx", "S", 0, 0, 0, 0, 0, 0, 1, ppid=1)}
    ProcessSampler(window_s=15.0)._sample_loops(cur)
    assert asked == [1, 700]

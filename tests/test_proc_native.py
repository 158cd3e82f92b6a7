"""The agent's per-process reading in kernelsight._scraper (read_procs, ctxt_of_threads,
loop_threads) against the Python readers it replaces: on this machine's /proc, and on fake proc
roots with hostile files, where the native path and the pure-Python fallback must give the same
values (the native reader parses the plain case and hands everything else back to the Python
parsers)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelsight.agent import attribution
from kernelsight.agent.attribution import (THREAD_READS_MAX, ProcessSampler, ProcSample, _ctxt_of_processes,
                                           _ctxt_of_threads, parse_proc_io, parse_proc_sample, read_procs)
from kernelsight.agent.exhaustion import WriterSampler

native = pytest.importorskip("kernelsight._scraper")
if not hasattr(native, "read_procs"):
    pytest.skip("kernelsight._scraper built without the process readers", allow_module_level=True)

STAT = b"4242 (memhog) R 1 4242 4242 0 -1 4194304 1500 0 2 0 120 30 0 0 20 0 1 0 9000 1000000 2560 0 0\n"
STATUS = b"Name:\tmemhog\nState:\tR\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t3\n"
IO = b"rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n"
BIG = 2**64 + 5  # does not fit in 64 bits


def with_python(monkeypatch, fn, *args, **kw):
    """fn(*args) with the pure-Python fallback (as when kernelsight._scraper is not built)."""
    with monkeypatch.context() as m:
        m.setattr(attribution, "_native", None)
        return fn(*args, **kw)


def stat_line(pid=4242, comm=b"memhog", state=b"R", ppid=1, minflt=1500, majflt=2, utime=120, stime=30,
              threads=1, start=9000, rss=2560) -> bytes:
    f = [state, ppid, pid, pid, 0, -1, 4194304, minflt, 0, majflt, 0, utime, stime, 0, 0, 20, 0, threads, 0,
         start, 1000000, rss, 0, 0]
    return b"%d (%s) " % (pid, comm) + b" ".join(x if isinstance(x, bytes) else str(x).encode() for x in f) + b"\n"


def status_text(vol=7, nonvol=3) -> bytes:
    return b"Name:\tx\nvoluntary_ctxt_switches:\t%s\nnonvoluntary_ctxt_switches:\t%s\n" % (
        str(vol).encode(), str(nonvol).encode())


def make_proc(root: Path, pid: int | str, stat: bytes | None = None, status: bytes | None = None,
              io: bytes | None = None, threads: dict | None = None) -> Path:
    """One PID directory; threads: tid -> {file name: bytes} under task/."""
    d = root / str(pid)
    d.mkdir(parents=True)
    for name, text in (("stat", stat), ("status", status), ("io", io)):
        if text is not None:
            (d / name).write_bytes(text)
    for tid, files in (threads or {}).items():
        t = d / "task" / str(tid)
        t.mkdir(parents=True)
        for name, text in files.items():
            (t / name).write_bytes(text)
    return d


def hostile_root(root: Path) -> Path:
    make_proc(root, 100, stat_line(100), status_text(), IO,
              threads={100: {"status": status_text(1, 1), "wchan": b"do_epoll_wait", "schedstat": b"5 1000 3\n"}})
    # not UTF-8, with ')' and spaces in the name
    make_proc(root, 101, stat_line(101, comm=b"\xff\xfe) x y"), status_text(), IO)
    make_proc(root, 102, stat_line(102, comm=b"a\nb"), status_text(), IO)  # a newline in the name
    # numbers that do not fit in 64 bits, everywhere
    make_proc(root, 103, stat_line(103, utime=BIG, rss=BIG, start=BIG), status_text(BIG, BIG),
              b"wchar: %d\nread_bytes: %d\nwrite_bytes: 1\n" % (BIG, BIG),
              threads={103: {"status": status_text(BIG, 1), "wchan": b"do_epoll_wait",
                             "schedstat": b"1 %d 1\n" % BIG}})
    make_proc(root, 104, stat_line(104), status_text())          # no io file
    make_proc(root, 105, stat_line(105), None, IO)               # no status: io only
    make_proc(root, 106, b"", b"", b"")                          # empty files
    make_proc(root, 107, stat_line(107), status_text(), b"wchar: 1\nread_bytes: 2\n")  # io lacks a key
    os.symlink(root / "gone", root / "108")                      # listed, then vanished
    (root / "109").write_bytes(b"not a directory")
    for name in ("self", "abc", "12a", "thread-self"):
        (root / name).mkdir()
    # int() accepts these; the native reader hands them back to it
    make_proc(root, 110, stat_line(110, ppid="+1"), b"voluntary_ctxt_switches:\t1_000\n", b"wchar: 0_1\nread_bytes: 2\nwrite_bytes: 3\n")
    make_proc(root, 111, stat_line(111, ppid=-5), status_text(-1, 2), b"wchar: -1\nread_bytes: 2\nwrite_bytes: 3\n")
    make_proc(root, 112, stat_line(112), b"voluntary_ctxt_switches: \t 007 \r\n", b"wchar: 1\r\nread_bytes: 2\r\nwrite_bytes: 3\r\n")
    make_proc(root, 113, stat_line(113, state=b"\xc3\xa9"), status_text(), IO)  # a state that is not ASCII
    make_proc(root, 114, stat_line(114), b"voluntary_ctxt_switches:\t12x\n", b"wchar: x\nread_bytes: 2\nwrite_bytes: 3\n")
    make_proc(root, 115, stat_line(115)[:40], status_text(), IO)  # truncated stat
    make_proc(root, 116, stat_line(116, ppid="1\x00"), status_text(), b"wchar: 1\x00\nread_bytes: 2\nwrite_bytes: 3\n")
    make_proc(root, 117, b"117 (x)\tS\x0b1 " + stat_line(117).split(b") ", 1)[1][2:].replace(b" ", b"\x0c"),
              status_text(), IO)
    make_proc(root, "0118", stat_line(118), status_text(), IO)   # a name with a leading zero
    make_proc(root, 118, stat_line(118, comm=b"other"), status_text(), IO)
    # the same pid twice, its io plain under one name and handed to Python under the other
    make_proc(root, "0119", stat_line(119), status_text(), b"wchar: +5\nread_bytes: 1\nwrite_bytes: 1\n")
    make_proc(root, 119, stat_line(119), status_text(), IO)
    make_proc(root, "00119", stat_line(119), status_text(), b"wchar: 1_0\n")
    # a multi-threaded process: a thread gone (no status), loops, a schedstat that does not parse
    make_proc(root, 120, stat_line(120, threads=4), status_text(2, 1), IO, threads={
        120: {"status": status_text(2, 1), "wchan": b"do_epoll_wait", "schedstat": b"9 100 2\n"},
        121: {"wchan": b"do_epoll_wait"},                         # gone: no status, no schedstat
        122: {"status": status_text(40, 4), "wchan": b"do_epoll_wait\n", "schedstat": b"junk\n"},
        123: {"status": status_text(50, 5), "wchan": b"do_epoll_wait", "schedstat": b"1 +77 0\n"},
        124: {"status": status_text(60, 6), "wchan": b"0", "schedstat": b"1 2 3\n"},
        125: {"status": b"", "wchan": b"do_epoll_wait", "schedstat": b"1\n"},
    })
    make_proc(root, 130, stat_line(130, threads=2), status_text(), IO,
              threads={130: {"status": status_text(1, 1)}, 131: {"status": b"voluntary_ctxt_switches: 9z\n"}})
    make_proc(root, 140, stat_line(140, threads=3), status_text(), IO)  # no task directory
    return root


def sampled(proc: Path, monkeypatch=None, steps: int = 2):
    """A ProcessSampler's state after steps samples of proc (with the fallback when monkeypatch)."""
    def run():
        s = ProcessSampler(str(proc))
        w = WriterSampler(str(proc))
        for i in range(steps):
            if i:
                # make every multi-threaded process busy, so its threads are summed
                for d in proc.iterdir():
                    if (d / "stat").is_file() and not d.is_symlink():
                        b = (d / "stat").read_bytes()
                        (d / "stat").write_bytes(b.replace(b" 120 30 ", b" 121 30 ", 1))
            s.sample(1.0, io=True)
            w.sample(s.io, s.io_t)
        alone = WriterSampler(str(proc))
        alone.sample()
        return s, w, alone
    if monkeypatch is None:
        return run()
    return with_python(monkeypatch, run)


def test_hostile_root_native_equals_python(tmp_path, monkeypatch):
    a, b = hostile_root(tmp_path / "a"), hostile_root(tmp_path / "b")
    (ns, nw, nalone), (ps, pw, palone) = sampled(a), sampled(b, monkeypatch)
    assert ns.cur == ps.cur and list(ns.cur) == list(ps.cur)  # same values, same (directory) order
    assert ns.io == ps.io and nw.prev == pw.prev and nalone.prev == palone.prev
    assert ns.loop_threads == ps.loop_threads and ns.loops == ps.loops
    assert ns.first == ps.first and ns.new_children == ps.new_children
    # what the fixture is for, spelled out
    assert ns.cur[101].comm == "\\xff\\xfe) x y" and ns.cur[102].comm == "a\nb"
    assert (ns.cur[103].cpu_ticks, ns.cur[103].rss_kb, ns.cur[103].start_ticks) == (
        BIG + 30, BIG * attribution.PAGE_KB, BIG)
    assert ns.io[103] == (BIG, BIG, 1) and 103 in {t for t in ns.loop_threads}
    assert ns.loop_threads[103][1] == BIG
    assert 104 in ns.cur and 104 not in ns.io
    assert 105 not in ns.cur and ns.io[105] == (20, 4096, 8192)
    assert not {106, 108, 109, 114, 115, 116} & set(ns.cur)
    assert not {106, 107, 108, 109, 114, 116} & set(ns.io)
    assert ns.cur[110].ppid == 1 and ns.cur[110].ctxt == 1000 and ns.io[110] == (1, 2, 3)
    assert ns.cur[111].ppid == -5 and ns.io[111] == (-1, 2, 3)
    assert ns.cur[112].ctxt == 7 and ns.io[112] == (1, 2, 3)
    assert ns.cur[113].state == "\ufffd\ufffd"
    assert ns.cur[117].state == "S" and ns.cur[117].ppid == 1
    assert ns.cur[118].comm == "other"                       # stat read under the pid's own decimal text
    assert ns.io[119] in ((5, 1, 1), (20, 4096, 8192))       # the last that parsed, in directory order
    # threads summed once the process ran (second step); a thread without status is skipped
    assert (ns.cur[120].ctxt, ns.cur[120].nonvol_ctxt) == (3 + 44 + 55 + 66, 1 + 4 + 5 + 6)
    assert (ns.cur[130].ctxt, ns.cur[130].nonvol_ctxt) == (10, 3)  # 131 does not parse: main thread kept
    assert set(ns.loop_threads) == {100, 103, 120, 123}  # 122: "do_epoll_wait\n" is not it; 124 is not in epoll
    assert ns.loop_threads[123][1] == 77


def test_hostile_root_helpers_native_equals_python(tmp_path, monkeypatch):
    root = str(hostile_root(tmp_path))
    pids = [100, 103, 120, 130, 140, 999]
    assert _ctxt_of_processes(root, pids) == with_python(monkeypatch, _ctxt_of_processes, root, pids)
    assert _ctxt_of_processes(root, pids) == [_ctxt_of_threads(f"{root}/{p}/task") for p in pids]
    assert native.ctxt_of_threads(root, [103, 130, 140]) == [..., ..., None]  # odd: left to Python
    handed: list[bytes] = []

    def parse(stat, status):
        handed.append(stat)
        return parse_proc_sample(stat, status)

    native.read_procs(root, attribution.PAGE_KB, ProcSample, parse, None)
    assert {int(b.split()[0]) for b in handed if b} == {103, 110, 111, 113, 114, 115, 116} and b"" in handed
    for budget in (0, 1, 2, 3, 5, THREAD_READS_MAX):
        for known in ({}, {122: (0.0, 0), 124: (0.0, 0), 121: (0.0, 0)}):
            s = ProcessSampler(root)
            s.loop_threads = dict(known)
            cur = read_procs(root)[0]
            monkeypatch.setattr(attribution, "THREAD_READS_MAX", budget)
            n = s._loop_run_delays(root, cur)
            p = with_python(monkeypatch, s._loop_run_delays, root, cur)
            assert n == p, (budget, known)


def test_unlistable_root(tmp_path, monkeypatch):
    gone = str(tmp_path / "nothing")
    for run in (lambda f, *a: f(*a), lambda f, *a: with_python(monkeypatch, f, *a)):
        with pytest.raises(FileNotFoundError):
            run(ProcessSampler(gone).sample, 1.0)
        w = WriterSampler(gone)
        run(w.sample)
        assert w.prev == {}


PY_SPACE = st.sampled_from([b" ", b" ", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"  "])
PLAIN = st.one_of(st.integers(0, 10**6), st.integers(0, 10**12), st.integers(0, 2**64 + 10),
                  st.sampled_from([0, 2**62, 2**63, 2**64 - 1, 2**64])).map(lambda n: str(n).encode())
ODD = st.one_of(st.integers(-5, 2**70).map(lambda n: str(n).encode()),
                st.sampled_from([b"", b"+1", b"1_0", b"_1", b"0x10", b"007", b"1\x00", b"\xff", b"-0",
                                 b"99999999999999999999999", b"\xd9\xa3"]))


@st.composite
def number(draw):
    """Mostly a number the native reader parses (near 2**64 included), now and then one it hands back."""
    return draw(ODD) if draw(st.integers(0, 29)) == 0 else draw(PLAIN)


@st.composite
def stat_bytes(draw):
    comm = draw(st.binary(max_size=20))
    fields = [draw(st.sampled_from([b"R", b"S", b"S", b"D", b"\xc3\xa9", b"RR"]))]
    fields += [draw(number()) for _ in range(draw(st.sampled_from([21, 22, 24, 50])))]
    out = b"%d (%s)" % (draw(st.integers(0, 99)), comm) + draw(st.sampled_from([b" ", b" ", b"", b"x", b"  "]))
    for f in fields:
        out += f + draw(PY_SPACE)
    return out


@st.composite
def status_bytes(draw):
    lines = [b"Name:\tx"]
    keys = [b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:", b"Threads:"]
    for key in draw(st.one_of(st.just(keys), st.lists(st.sampled_from(keys), max_size=4))):
        lines.append(key + draw(st.sampled_from([b"\t", b"\t", b" ", b"", b"\r"])) + draw(number())
                     + draw(st.sampled_from([b"", b"", b" ", b"\r", b"\x0c"])))
    return draw(st.sampled_from([b"\n", b"\n", b"\r\n"])).join(lines) + draw(st.sampled_from([b"", b"\n"]))


@st.composite
def io_bytes(draw):
    keys = [b"rchar", b"wchar", b"syscr", b"read_bytes", b"write_bytes"]
    keys = draw(st.one_of(st.just(keys), st.lists(st.sampled_from(keys + [b"wchar ", b""]), max_size=6)))
    sep = draw(st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r"]))
    return sep.join(k + draw(st.sampled_from([b": ", b": ", b":", b" "])) + draw(number()) for k in keys) + sep


def _compare(monkeypatch, stat, status, io, extra_status):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        make_proc(root, 7, stat, status, io, threads={7: {"status": status, "wchan": b"do_epoll_wait",
                                                           "schedstat": extra_status},
                                                      8: {"status": extra_status}})
        r = str(root)
        assert read_procs(r, io=True) == with_python(monkeypatch, read_procs, r, io=True)
        assert read_procs(r, stat=False, io=True) == with_python(monkeypatch, read_procs, r, stat=False, io=True)
        assert _ctxt_of_processes(r, [7]) == with_python(monkeypatch, _ctxt_of_processes, r, [7])
        s = ProcessSampler(r)
        cur = {7: ProcSample("x", "S", 0, 0, 0, 0, 0, 0, 0)}
        assert s._loop_run_delays(r, cur) == with_python(monkeypatch, s._loop_run_delays, r, cur)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stat=stat_bytes(), status=status_bytes(), io=io_bytes(), extra=st.one_of(status_bytes(), stat_bytes()))
def test_shaped_junk_native_equals_python(monkeypatch, stat, status, io, extra):
    _compare(monkeypatch, stat, status, io, extra)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stat=st.binary(max_size=300), status=st.binary(max_size=120), io=st.binary(max_size=120),
       extra=st.binary(max_size=60))
def test_random_bytes_native_equals_python(monkeypatch, stat, status, io, extra):
    _compare(monkeypatch, stat, status, io, extra)


# ---- the live /proc ----

def test_live_proc_native_against_python(monkeypatch):
    """Python, native, Python again: the same processes (those alive throughout) with the same
    identity; every counter of the native read between the two Python reads."""
    before = with_python(monkeypatch, read_procs, "/proc", io=True)
    cur, io = read_procs("/proc", io=True)
    after = with_python(monkeypatch, read_procs, "/proc", io=True)
    both = set(before[0]) & set(after[0])
    assert len(cur) > 10 and both <= set(cur) | (set(before[0]) - set(after[0]))
    assert os.getpid() in cur and cur[os.getpid()].comm == before[0][os.getpid()].comm
    steady = 0
    for pid in both & set(cur):
        b, n, a = before[0][pid], cur[pid], after[0][pid]
        if b.start_ticks != a.start_ticks:
            continue  # pid reused meanwhile
        assert n.start_ticks == b.start_ticks and n.ppid == b.ppid
        if (b.comm, b.threads) == (a.comm, a.threads):
            assert (n.comm, n.threads) == (b.comm, b.threads)
            steady += 1
        for f in ("cpu_ticks", "minflt", "majflt", "nonvol_ctxt", "ctxt"):
            assert getattr(b, f) <= getattr(n, f) <= getattr(a, f), (pid, f)
    assert steady > 10
    assert os.getpid() in io
    for pid in set(before[1]) & set(after[1]) & set(io):
        if pid in both and before[0][pid].start_ticks != after[0][pid].start_ticks:
            continue
        assert all(x <= y <= z for x, y, z in zip(before[1][pid], io[pid], after[1][pid])), pid


def test_live_thread_sums_native_against_python(monkeypatch):
    """Switches summed over each process's threads: between two Python reads around it, for every
    process whose threads stayed the same (a thread that exits takes its switches along)."""
    pids = sorted(read_procs("/proc")[0])

    def tasks():
        out = {}
        for pid in pids:
            try:
                out[pid] = sorted(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
        return out

    t0 = tasks()
    before = with_python(monkeypatch, _ctxt_of_processes, "/proc", pids)
    got = _ctxt_of_processes("/proc", pids)
    after = with_python(monkeypatch, _ctxt_of_processes, "/proc", pids)
    t1 = tasks()
    checked = 0
    for pid, b, n, a in zip(pids, before, got, after):
        if b is None or a is None or t0.get(pid) != t1.get(pid):
            continue  # gone, or threads came and went, meanwhile
        assert n is not None and b[0] <= n[0] <= a[0] and b[1] <= n[1] <= a[1], pid
        checked += 1
    assert checked > 10


def test_live_loop_threads_native_against_python(monkeypatch, epoll_loop_child):
    p, tid = epoll_loop_child
    s = ProcessSampler()
    cur = read_procs("/proc")[0]
    n = s._loop_run_delays("/proc", {p.pid: cur[p.pid]})
    py = with_python(monkeypatch, s._loop_run_delays, "/proc", {p.pid: cur[p.pid]})
    assert [(pid, t) for pid, t, _ in n] == [(pid, t) for pid, t, _ in py] == [(p.pid, tid)]
    assert n[0][2] <= py[0][2]
    # every process: the loops found are the same, but for threads that came or went meanwhile
    n_all = {t for _, t, _ in s._loop_run_delays("/proc", cur)}
    py_all = {t for _, t, _ in with_python(monkeypatch, s._loop_run_delays, "/proc", cur)}
    assert tid in n_all and tid in py_all and len(n_all ^ py_all) <= 2


def test_parsers_kept_for_the_fallback():
    """The Python parsers stay: the fallback and the native reader's odd cases use them."""
    assert parse_proc_sample(STAT, STATUS).cpu_ticks == 150
    assert parse_proc_io(IO) == (20, 4096, 8192)

"""Name the processes behind a symptom, where the data allows.

Two sources:
  - the agent's own light /proc sampler (every interval: RSS, CPU ticks,
    context switches, page faults and state of every process), which gives
    top memory growers, CPU users, context switchers, faulters and tasks
    blocked on I/O from deltas between two samples;
  - the tracers' and collectors' tables, when present: slowest syscalls by
    comm (syscall_events) and top spawners (exec events).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .signals import READ_CALLS, STORAGE_FD

# The reading of every process and thread each step is native when kernelsight._scraper is built
# (one pass for ProcessSampler and WriterSampler, no Python around each of the ~5 files a process).
# The module is optional (KS_BUILD_PYTHON=OFF builds none), hence the Python readers below: the
# fallback, and the definition the native reader hands back every file that is not plain digits
# to (so both give the same values).
try:
    from .. import _scraper as _native
except ImportError:
    _native = None
if not hasattr(_native, "read_procs"):  # a module built before the readers: Python's
    _native = None

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TOP_N = 5


@dataclass
class ProcSample:  # kernelsight._scraper.read_procs builds these with positional arguments: keep the order
    comm: str
    state: str
    rss_kb: int
    cpu_ticks: int
    minflt: int
    majflt: int
    ctxt: int
    nonvol_ctxt: int
    start_ticks: int  # clock ticks after boot
    ppid: int = 0
    threads: int = 1
    # ctxt/nonvol_ctxt are every thread's sum (read, or carried from a sample that was), not the
    # main thread's: a delta is only taken between two samples of the same kind
    threads_summed: bool = False
    main_ctxt: int = 0  # with threads_summed: the main thread's own count


def _status_int(status: bytes, key: bytes) -> int:
    """The number after key (b"\\nName:") in a /proc status text, 0 when the line is absent.  One
    find() instead of a loop over the ~55 lines: the agent reads every process each step."""
    text = b"\n" + status  # the first line is a line too
    i = text.find(key)
    if i < 0:
        return 0
    j = i + len(key)
    end = text.find(b"\n", j)
    return int(text[j:] if end < 0 else text[j:end])  # int() takes bytes and strips the tab


def parse_proc_sample(stat: bytes, status: bytes) -> ProcSample | None:
    """One process from its /proc/PID/stat and status, or None when they do not
    parse.  Both are bytes: a process name is whatever the process set with
    prctl(PR_SET_NAME) and need not be UTF-8 (shown with \\x escapes)."""
    lp, rp = stat.find(b"("), stat.rfind(b")")
    if lp < 0 or rp < lp:
        return None
    comm = stat[lp + 1 : rp].decode("utf-8", "backslashreplace")
    f = stat[rp + 2 :].split()
    try:
        vol = _status_int(status, b"\nvoluntary_ctxt_switches:")
        nonvol = _status_int(status, b"\nnonvoluntary_ctxt_switches:")
        # fields after comm: state(0) ppid(1) ... minflt(7) majflt(9) utime(11) stime(12) ... num_threads(17)
        # starttime(19) rss(21)
        return ProcSample(comm, f[0].decode("ascii", "replace"), int(f[21]) * PAGE_KB, int(f[11]) + int(f[12]),
                          int(f[7]), int(f[9]), vol + nonvol, nonvol, int(f[19]), int(f[1]), int(f[17]))
    except (IndexError, ValueError):
        return None


def parse_proc_io(text: bytes) -> tuple[int, int, int] | None:
    """(wchar, read_bytes, write_bytes) of a /proc/PID/io; None when one is missing or not a number."""
    got: dict[bytes, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"wchar", b"read_bytes", b"write_bytes"):
            try:
                got[key] = int(value)
            except ValueError:
                return None
    if len(got) != 3:
        return None
    return got[b"wchar"], got[b"read_bytes"], got[b"write_bytes"]


def slurp(path: str, size: int = 16384) -> bytes:
    """A small /proc file in one read (stat, status, wchan, schedstat: well under size).
    os.open/os.read on a str path: every process and thread each step, so no pathlib
    objects and no buffered file (they were most of the sampler's cost in cProfile)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_proc(proc: Path | str, pid: int) -> ProcSample | None:
    try:
        stat = slurp(f"{proc}/{pid}/stat")
        status = slurp(f"{proc}/{pid}/status")
    except OSError:
        return None  # gone between listing and reading: normal
    return parse_proc_sample(stat, status)


def _ctxt_of_threads(task_dir: Path | str) -> tuple[int, int] | None:
    """Context switches summed over a process's threads: /proc/PID/status counts its main thread only."""
    vol = nonvol = 0
    try:
        with os.scandir(task_dir) as entries:  # closed on a status that does not parse too
            for entry in entries:
                try:
                    status = slurp(f"{entry.path}/status")
                except OSError:
                    continue  # a thread gone meanwhile
                vol += _status_int(status, b"\nvoluntary_ctxt_switches:")
                nonvol += _status_int(status, b"\nnonvoluntary_ctxt_switches:")
    except (OSError, ValueError, IndexError):
        return None
    return vol + nonvol, nonvol


def read_procs(root: str, stat: bool = True, io: bool = False
               ) -> tuple[dict[int, ProcSample], dict[int, tuple[int, int, int]]]:
    """Every process under root, in directory order, in one pass: its ProcSample from stat and
    status (with stat), its /proc/PID/io values (with io).  A process gone between listing and
    reading, or whose files do not parse, is left out; OSError when root cannot be listed."""
    if _native is not None:  # files that are not plain digits: the Python parsers decide, on the bytes read
        return _native.read_procs(root, PAGE_KB, ProcSample if stat else None, parse_proc_sample,
                                  parse_proc_io if io else None)
    cur = {}
    ios = {}
    for name in [e.name for e in os.scandir(root) if e.name.isdigit()]:
        if stat:
            s = _read_proc(root, int(name))
            if s is not None:
                cur[int(name)] = s
        if io:
            try:  # every process each step: a str path and one read, no pathlib or buffered file
                v = parse_proc_io(slurp(f"{root}/{name}/io"))
            except OSError:
                continue
            if v is not None:
                ios[int(name)] = v
    return cur, ios


def _ctxt_of_processes(root: str, pids: list[int]) -> list[tuple[int, int] | None]:
    """_ctxt_of_threads of each pid's task directory."""
    if _native is None or not pids:
        return [_ctxt_of_threads(f"{root}/{pid}/task") for pid in pids]
    return [_ctxt_of_threads(f"{root}/{pid}/task") if c is ... else c  # ...: not plain digits somewhere
            for pid, c in zip(pids, _native.ctxt_of_threads(root, pids))]


KTHREADD_PID = 2  # the parent of every kernel thread (in the initial pid namespace)
# Threads whose status is read per sample, at most: the busiest multi-threaded processes first.
THREAD_READS_MAX = 2000


class ProcessSampler:
    """Every process each agent step; rates over the feature window (the oldest sample kept
    that is at most window_s old), not over the process's lifetime."""

    def __init__(self, proc_root: str = "/proc", window_s: float = 15.0):
        self.proc = Path(proc_root)
        self.window_s = window_s
        self.prev: dict[int, ProcSample] = {}  # the sample rates are taken against (about window_s ago)
        self.cur: dict[int, ProcSample] = {}
        self.history: list[tuple[float, dict[int, ProcSample]]] = []
        self.first: dict[int, ProcSample] = {}  # first sight of each pid
        self.dt_s = 0.0
        self.clock = 0.0
        self.new_children: dict[int, int] = {}  # parent pid -> children first seen this step
        self.loop_threads: dict[int, tuple[float, int]] = {}  # tid -> (clock, run_delay_ns) at the last step
        self.loops: list[dict] = []
        # With sample(io=True): pid -> /proc/PID/io (wchar, read_bytes, write_bytes), read in the same
        # pass as the samples, and time.monotonic() then (for WriterSampler.sample).
        self.io: dict[int, tuple[int, int, int]] = {}
        self.io_t: float | None = None

    def sample(self, dt_s: float, io: bool = False) -> None:
        """Read every process; io: also their /proc/PID/io, into self.io and self.io_t."""
        root = str(self.proc)
        t = time.monotonic()
        cur, ios = read_procs(root, io=io)
        if io:
            self.io, self.io_t = ios, t
        # Multi-threaded processes that ran since the last step: switches of all their threads.
        # Processes seen for the first time are summed too (budget allowing), so that a later
        # busy step compares a sum with a sum, not with the main thread alone.
        busy = sorted((pid for pid, s in cur.items() if s.threads > 1 and (
            pid not in self.cur or s.cpu_ticks > self.cur[pid].cpu_ticks)), key=lambda pid: -cur[pid].threads)
        budget = THREAD_READS_MAX
        chosen = []
        for pid in busy:
            if cur[pid].threads > budget:
                continue
            budget -= cur[pid].threads
            chosen.append(pid)
        for pid, c in zip(chosen, _ctxt_of_processes(root, chosen)):
            if c is not None:
                cur[pid].main_ctxt = cur[pid].ctxt
                cur[pid].ctxt, cur[pid].nonvol_ctxt = c
                cur[pid].threads_summed = True
        # Carry the thread sums of processes not re-read this step, so deltas never go negative.
        for pid, s in cur.items():
            old = self.cur.get(pid)
            if old is not None and s.threads > 1 and s.ctxt < old.ctxt:
                s.main_ctxt = s.ctxt
                s.ctxt, s.nonvol_ctxt = old.ctxt, old.nonvol_ctxt
                s.threads_summed = old.threads_summed
        self.new_children = {}
        if self.cur:
            for pid, s in cur.items():
                if pid not in self.cur:
                    self.new_children[s.ppid] = self.new_children.get(s.ppid, 0) + 1
        self.clock += dt_s
        self._sample_loops(cur)
        self.history.append((self.clock, cur))
        while len(self.history) > 2 and self.history[1][0] <= self.clock - self.window_s:
            self.history.pop(0)
        t_prev, prev = self.history[0] if len(self.history) > 1 else (self.clock - dt_s, self.cur)
        self.prev, self.cur, self.dt_s = prev, cur, max(self.clock - t_prev, dt_s)
        self.first = {pid: self.first.get(pid, s) for pid, s in cur.items()}

    def _top(self, key, label: str, unit: str) -> list[dict]:
        """Rank by key(sample, previous sample, seconds between them).  A process born
        since the last sample is rated over its own lifetime, so a short-lived storm
        of new processes is not missed."""
        rows = []
        hz = os.sysconf("SC_CLK_TCK")
        uptime_ticks = self._uptime_s() * hz
        for pid, s in self.cur.items():
            p = self.prev.get(pid)
            if p is None or p.comm != s.comm:
                age_s = max((uptime_ticks - s.start_ticks) / hz, 0.01)
                if age_s > max(self.dt_s, 1.0) + 1:
                    continue  # not new: it came into view otherwise (comm change); skip one round
                # counted from zero, in the same kind of count as s (a thread sum or not)
                p, dt = ProcSample(s.comm, s.state, 0, 0, 0, 0, 0, 0, s.start_ticks,
                                   threads_summed=s.threads_summed), age_s
            else:
                dt = max(self.dt_s, 1e-3)
            d = key(s, p, dt)
            if d > 0:
                rows.append({"pid": pid, "comm": s.comm, label: d, "unit": unit})
        rows.sort(key=lambda r: r[label], reverse=True)
        return rows[:TOP_N]

    def _sample_loops(self, cur: dict[int, ProcSample]) -> None:
        """Event-loop threads: any thread ever seen blocked in epoll (wchan do_epoll_wait) is one,
        while it lives.  For each, the time it spent runnable but waiting for a CPU (schedstat's
        run_delay) since the last step: a loop that cannot get a CPU answers late, whatever
        epoll_wait's own duration says (a long epoll_wait is an idle loop)."""
        root = str(self.proc)
        rows = []
        loops: dict[int, tuple[float, int]] = {}
        for pid, tid, run_delay_ns in self._loop_run_delays(root, cur):
            comm = cur[pid].comm
            loops[tid] = (self.clock, run_delay_ns)
            prev = self.loop_threads.get(tid)
            if prev is not None and self.clock > prev[0]:
                pct = 100.0 * (run_delay_ns - prev[1]) / 1e9 / (self.clock - prev[0])
                rows.append({"pid": pid, "tid": tid, "comm": comm, "runq_delay_pct": round(max(pct, 0.0), 1)})
        self.loop_threads = loops
        rows.sort(key=lambda r: r["runq_delay_pct"], reverse=True)
        self.loops = rows

    def _loop_run_delays(self, root: str, cur: dict[int, ProcSample]) -> list[tuple[int, int, int]]:
        """(pid, tid, run_delay_ns) of every event-loop thread in order of first sight: the threads
        of cur's processes, THREAD_READS_MAX listed at most, that are known loops or in epoll now;
        a thread whose schedstat cannot be read or parsed is left out.  Kernel threads (kthreadd,
        pid 2, and its children) never wait in epoll: their task directories are not listed (on an
        idle VM they were 58 of 84 processes, ~300 of the agent's syscalls a step)."""
        pids = [pid for pid, s in cur.items() if pid != KTHREADD_PID and s.ppid != KTHREADD_PID]
        if _native is not None:
            out = []
            for pid, tid, run_delay in _native.loop_threads(root, pids, self.loop_threads, THREAD_READS_MAX):
                if type(run_delay) is bytes:  # not plain digits: as Python reads it
                    try:
                        run_delay = int(run_delay.split()[1])
                    except (ValueError, IndexError):
                        continue
                out.append((pid, tid, run_delay))
            return out
        budget = THREAD_READS_MAX
        seen: dict[int, int] = {}
        for pid in pids:
            task_dir = f"{root}/{pid}/task"
            try:
                tids = os.listdir(task_dir)
            except OSError:
                continue
            for name in tids:
                if budget <= 0:
                    break
                budget -= 1
                tid = int(name)
                if tid not in self.loop_threads:
                    try:
                        if slurp(f"{task_dir}/{name}/wchan") != b"do_epoll_wait":
                            continue
                    except OSError:
                        continue
                seen[tid] = pid
        out = []
        for tid, pid in seen.items():
            try:
                run_delay_ns = int(slurp(f"{root}/{pid}/task/{tid}/schedstat").split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.append((pid, tid, run_delay_ns))
        return out

    def event_loops(self) -> list[dict]:
        """Event-loop threads by the share of the last step they spent waiting for a CPU."""
        return self.loops[:TOP_N]

    def loop_delay_pct(self) -> float | None:
        """The worst event-loop thread's run-queue delay, % of the last step; None with no loop known."""
        return self.loops[0]["runq_delay_pct"] if self.loops else None

    def memory_growers(self) -> list[dict]:
        """Growth over the window (prev); a process born inside it, over its life."""
        rows = []
        for pid, s in self.cur.items():
            f = self.prev.get(pid)
            base = f.rss_kb if f is not None and f.start_ticks == s.start_ticks else 0
            if s.rss_kb - base > 0:
                rows.append({"pid": pid, "comm": s.comm, "rss_growth_mb": round((s.rss_kb - base) / 1024, 1),
                             "rss_mb": round(s.rss_kb / 1024, 1)})
        rows.sort(key=lambda r: r["rss_growth_mb"], reverse=True)
        if rows and rows[0]["rss_growth_mb"] >= 1.0:
            return rows[:TOP_N]
        # Nothing grew in the window: the biggest are the next best suspects.
        big = sorted(self.cur.items(), key=lambda kv: kv[1].rss_kb, reverse=True)[:TOP_N]
        return [{"pid": pid, "comm": s.comm, "rss_mb": round(s.rss_kb / 1024, 1)} for pid, s in big]

    def forkers(self) -> list[dict]:
        """Parents of the processes that appeared since the last step (a fork bomb that never
        execs is seen here, not in exec events), most children first."""
        rows = []
        for ppid, n in sorted(self.new_children.items(), key=lambda kv: -kv[1])[:TOP_N]:
            parent = self.cur.get(ppid)
            rows.append({"pid": ppid, "comm": parent.comm if parent else "?", "new_children": n})
        return rows

    def _uptime_s(self) -> float:
        with open(self.proc / "uptime") as f:
            return float(f.read().split()[0])

    def context_switchers(self) -> list[dict]:
        # A sum of every thread's switches is never compared with a main thread's count: the
        # difference is the other threads' lifetime switches, read as a burst (the sandbox's
        # 13-thread pid 1, idle at first sight and busy later, outranked perf bench's ping-pong).
        def main(x: ProcSample) -> int:
            return x.main_ctxt if x.threads_summed else x.ctxt

        return self._top(lambda s, p, dt: round((s.ctxt - p.ctxt) / dt)
                         if s.threads_summed == p.threads_summed
                         else round((main(s) - main(p)) / dt),  # the main threads' alone, like with like
                         "ctx_switches_per_sec", "1/s")

    def cpu_users(self) -> list[dict]:
        hz = os.sysconf("SC_CLK_TCK")
        return self._top(lambda s, p, dt: round(100 * (s.cpu_ticks - p.cpu_ticks) / hz / dt, 1), "cpu_pct", "%")

    def faulters(self) -> list[dict]:
        return self._top(lambda s, p, dt: round((s.minflt - p.minflt + s.majflt - p.majflt) / dt),
                         "faults_per_sec", "1/s")

    def blocked_on_io(self) -> list[dict]:
        return [{"pid": pid, "comm": s.comm, "state": "D"} for pid, s in self.cur.items() if s.state == "D"][:TOP_N]

    def process_count(self) -> int:
        return len(self.cur)


def slow_syscalls(conn: sqlite3.Connection, since_ns: int, storage_reads: bool = False) -> list[dict]:
    """Slowest calls by comm and syscall; storage_reads: only read() calls on regular files and block
    devices (the I/O Bottleneck's, see signals.STORAGE_FD), not waits on pipes and sockets."""
    where = f" AND syscall IN {READ_CALLS} AND {STORAGE_FD}" if storage_reads else ""
    try:
        rows = conn.execute(
            f"SELECT comm, syscall, COUNT(*), MAX(latency_ns) FROM syscall_events WHERE ts >= ?{where} "
            "GROUP BY comm, syscall ORDER BY MAX(latency_ns) DESC LIMIT ?", (since_ns, TOP_N)).fetchall()
    except sqlite3.OperationalError:
        return []
    return [{"comm": c, "syscall": s, "slow_calls": n, "max_latency_ms": round(m / 1e6, 1)} for c, s, n, m in rows]


def spawners(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    """Parents by execs of their children (the execsnoop collector's table), each with the
    commands it ran."""
    try:
        rows = conn.execute(
            "SELECT ppid, COUNT(*), GROUP_CONCAT(DISTINCT comm) FROM exec_events WHERE ts >= ? "
            "GROUP BY ppid ORDER BY COUNT(*) DESC LIMIT ?", (since_ns, TOP_N)).fetchall()
    except sqlite3.OperationalError:
        return []
    out = []
    for ppid, n, comms in rows:
        name = _parent_name(conn, ppid)
        out.append({"pid": ppid, "comm": name or "?", "execs": n, "running": (comms or "")[:120]})
    return out


def _parent_name(conn: sqlite3.Connection, pid: int) -> str | None:
    """A parent's name: its live /proc comm, else (it is gone too) its own last exec or exit line."""
    name = read_comm(pid)
    for sql in ("SELECT comm FROM exec_events WHERE pid = ? ORDER BY ts DESC LIMIT 1",
                "SELECT comm FROM process_exit_events WHERE pid = ? ORDER BY ts DESC LIMIT 1"):
        if name is not None:
            break
        try:
            r = conn.execute(sql, (pid,)).fetchone()
        except sqlite3.OperationalError:
            r = None
        name = r[0] if r else None
    return name


def read_comm(pid: int, proc_root: str | Path = "/proc") -> str | None:
    """pid's name, None when it is gone; a name that is not UTF-8 is escaped, never fatal."""
    try:
        return (Path(proc_root) / str(pid) / "comm").read_bytes().rstrip(b"\n").decode("utf-8", "backslashreplace")
    except OSError:
        return None


def connection_makers(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    """Processes behind TCP state changes (tcpstates collector), most active first."""
    try:
        rows = conn.execute(
            "SELECT comm, pid, COUNT(*), SUM(time_wait) FROM tcp_state_events WHERE ts >= ? "
            "GROUP BY comm, pid ORDER BY COUNT(*) DESC LIMIT ?", (since_ns, TOP_N)).fetchall()
    except sqlite3.OperationalError:
        return []
    return [{"comm": c, "pid": p, "state_changes": n, "time_waits": tw or 0} for c, p, n, tw in rows]


def retransmitters(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    """Network namespaces by TCP segments retransmitted since since_ns, with their interfaces
    (the scraper reads every namespace's counters).  Which socket or process retransmits would
    need a per-socket tracer (tcp:tcp_retransmit_skb); the namespace and its interfaces name
    where the loss is."""
    try:
        rows = conn.execute(
            "SELECT netns, MAX(retrans_segs_total) - MIN(retrans_segs_total), "
            "MAX(out_segs_total) - MIN(out_segs_total), MAX(interfaces) FROM tcp_retransmit_stats "
            "WHERE ts >= ? GROUP BY netns ORDER BY 2 DESC LIMIT ?", (since_ns, TOP_N)).fetchall()
    except sqlite3.OperationalError:
        return []
    out = []
    for ns, retrans, sent, ifaces in rows:
        if not retrans:
            continue
        out.append({"comm": f"netns {ns}" if ns is not None else "host", "interfaces": ifaces or "lo only",
                    "retransmitted_segments": retrans,
                    "retransmit_pct": round(100.0 * retrans / sent, 2) if sent else None})
    return out


def dropping_interfaces(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    """Interfaces by packets dropped plus errors since since_ns (/proc/net/dev deltas, every
    namespace the scraper reads): a NIC, a veth end or a bridge is where such loss happens,
    not a process."""
    try:
        rows = conn.execute(
            "SELECT interface, MAX(rx_drops_total) - MIN(rx_drops_total), MAX(tx_drops_total) - MIN(tx_drops_total), "
            "MAX(rx_errors_total) - MIN(rx_errors_total), MAX(tx_errors_total) - MIN(tx_errors_total) "
            "FROM network_interface_stats WHERE ts >= ? GROUP BY interface", (since_ns,)).fetchall()
    except sqlite3.OperationalError:
        return []
    counted = [(i, *(n or 0 for n in ns)) for i, *ns in rows]
    counted = sorted((c for c in counted if sum(c[1:]) > 0), key=lambda c: -sum(c[1:]))
    return [{"comm": f"interface {i}", "interface": i, "rx_drops": rd, "tx_drops": td, "rx_errors": re,
             "tx_errors": te} for i, rd, td, re, te in counted[:TOP_N]]


CGROUP_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "name=systemd")


def cgroup_of(pid: int, proc_root: str = "/proc") -> str | None:
    """The cgroup a process runs in, for naming it beside the process: its cgroup v2 path when
    that is not the root, else its path under the first v1 controller of CGROUP_CONTROLLERS that
    places it below the root; None in the root everywhere (or gone)."""
    try:
        raw = Path(f"{proc_root}/{pid}/cgroup").read_bytes()
    except OSError:
        return None
    v1: dict[str, str] = {}
    for line in raw.decode("utf-8", "backslashreplace").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "" and path not in ("/", ""):
            return path
        for c in controllers.split(","):
            v1[c] = path
    for c in CGROUP_CONTROLLERS:
        if v1.get(c) not in (None, "", "/"):
            return v1[c]
    return None


SHORT_LIVED_S = 5.0  # children that lived less than this are the product of a storm, not services


def short_lived_children(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    """Parents by children that came and went since since_ns (the exitsnoop collector's exits):
    a fork storm, with or without exec, whose children are gone before any sampler sees them."""
    try:
        rows = conn.execute(
            "SELECT ppid, COUNT(*), GROUP_CONCAT(DISTINCT comm) FROM process_exit_events WHERE ts >= ? "
            "AND age_s < ? GROUP BY ppid ORDER BY COUNT(*) DESC LIMIT ?", (since_ns, SHORT_LIVED_S, TOP_N)).fetchall()
    except sqlite3.OperationalError:
        return []
    out = []
    for ppid, n, comms in rows:
        name = _parent_name(conn, ppid)
        out.append({"pid": ppid, "comm": name or "?", "short_lived_children": n, "children": (comms or "")[:120]})
    return out

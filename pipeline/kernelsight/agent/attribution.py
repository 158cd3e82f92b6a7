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
from dataclasses import dataclass
from pathlib import Path

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TOP_N = 5


@dataclass
class ProcSample:
    comm: str
    state: str
    rss_kb: int
    cpu_ticks: int
    minflt: int
    majflt: int
    ctxt: int
    nonvol_ctxt: int
    start_ticks: int  # clock ticks after boot


def parse_proc_sample(stat: bytes, status: bytes) -> ProcSample | None:
    """One process from its /proc/PID/stat and status, or None when they do not
    parse.  Both are bytes: a process name is whatever the process set with
    prctl(PR_SET_NAME) and need not be UTF-8 (shown with \\x escapes)."""
    lp, rp = stat.find(b"("), stat.rfind(b")")
    if lp < 0 or rp < lp:
        return None
    comm = stat[lp + 1 : rp].decode("utf-8", "backslashreplace")
    f = stat[rp + 2 :].split()
    vol = nonvol = 0
    try:
        for line in status.splitlines():
            if line.startswith(b"voluntary_ctxt_switches:"):
                vol = int(line.split()[1])
            elif line.startswith(b"nonvoluntary_ctxt_switches:"):
                nonvol = int(line.split()[1])
        # fields after comm: state(0) ... minflt(7) majflt(9) utime(11) stime(12) ... starttime(19) rss(21)
        return ProcSample(comm, f[0].decode("ascii", "replace"), int(f[21]) * PAGE_KB, int(f[11]) + int(f[12]),
                          int(f[7]), int(f[9]), vol + nonvol, nonvol, int(f[19]))
    except (IndexError, ValueError):
        return None


def _read_proc(proc: Path, pid: int) -> ProcSample | None:
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
        status = (proc / str(pid) / "status").read_bytes()
    except OSError:
        return None  # gone between listing and reading: normal
    return parse_proc_sample(stat, status)


class ProcessSampler:
    def __init__(self, proc_root: str = "/proc"):
        self.proc = Path(proc_root)
        self.prev: dict[int, ProcSample] = {}
        self.cur: dict[int, ProcSample] = {}
        self.first: dict[int, ProcSample] = {}  # first sight of each pid, for growth over a longer span
        self.dt_s = 0.0

    def sample(self, dt_s: float) -> None:
        cur = {}
        for entry in os.scandir(self.proc):
            if entry.name.isdigit():
                s = _read_proc(self.proc, int(entry.name))
                if s is not None:
                    cur[int(entry.name)] = s
        self.prev, self.cur, self.dt_s = self.cur, cur, dt_s
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
                p, dt = ProcSample(s.comm, s.state, 0, 0, 0, 0, 0, 0, s.start_ticks), age_s
            else:
                dt = max(self.dt_s, 1e-3)
            d = key(s, p, dt)
            if d > 0:
                rows.append({"pid": pid, "comm": s.comm, label: d, "unit": unit})
        rows.sort(key=lambda r: r[label], reverse=True)
        return rows[:TOP_N]

    def memory_growers(self) -> list[dict]:
        rows = []
        for pid, s in self.cur.items():
            f = self.first.get(pid)
            if f is not None and s.rss_kb - f.rss_kb > 0:
                rows.append({"pid": pid, "comm": s.comm, "rss_growth_mb": round((s.rss_kb - f.rss_kb) / 1024, 1),
                             "rss_mb": round(s.rss_kb / 1024, 1)})
        rows.sort(key=lambda r: r["rss_growth_mb"], reverse=True)
        if rows:
            return rows[:TOP_N]
        # Nothing grew since we first saw it: the biggest are the next best suspects.
        big = sorted(self.cur.items(), key=lambda kv: kv[1].rss_kb, reverse=True)[:TOP_N]
        return [{"pid": pid, "comm": s.comm, "rss_mb": round(s.rss_kb / 1024, 1)} for pid, s in big]

    def _uptime_s(self) -> float:
        with open(self.proc / "uptime") as f:
            return float(f.read().split()[0])

    def context_switchers(self) -> list[dict]:
        return self._top(lambda s, p, dt: round((s.ctxt - p.ctxt) / dt), "ctx_switches_per_sec", "1/s")

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


def slow_syscalls(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    try:
        rows = conn.execute(
            "SELECT comm, syscall, COUNT(*), MAX(latency_ns) FROM syscall_events WHERE ts >= ? "
            "GROUP BY comm, syscall ORDER BY MAX(latency_ns) DESC LIMIT ?", (since_ns, TOP_N)).fetchall()
    except sqlite3.OperationalError:
        return []
    return [{"comm": c, "syscall": s, "slow_calls": n, "max_latency_ms": round(m / 1e6, 1)} for c, s, n, m in rows]


def spawners(conn: sqlite3.Connection, since_ns: int) -> list[dict]:
    """Parents with the most execs, from the execsnoop collector's table when it exists."""
    for table, parent_col in (("exec_events", "ppid"),):
        try:
            rows = conn.execute(
                f"SELECT comm, COUNT(*) FROM {table} WHERE ts >= ? GROUP BY comm ORDER BY COUNT(*) DESC LIMIT ?",
                (since_ns, TOP_N)).fetchall()
        except sqlite3.OperationalError:
            continue
        return [{"comm": c, "execs": n} for c, n in rows]
    return []


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

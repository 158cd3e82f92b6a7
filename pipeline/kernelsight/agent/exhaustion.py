"""Resources that run out besides memory: filesystem space and inodes, file handles, a process's
descriptors, PIDs (host and pids cgroups), conntrack entries and ephemeral ports.

The scraper writes what each stands at (filesystem_stats: one row per real filesystem;
limit_stats: one row per read, the process and the pids cgroup nearest their limits among them).
This module gives the agent, each step:

  - signals(): the worst filesystem's values, for rules.toml (fs_near_full, fs_full,
    fs_inodes_near_full): its available %, its available MiB and the minutes that lasts at its
    current fill rate (the absolute floors), how many filesystems are full;
  - forecasts(): a `forecast` observation for every resource whose headroom a confident fit
    (forecast.best_fit: several windows, the most pessimistic confident one) says runs out soon,
    naming what fills it: the writer to that filesystem, the process, the pids cgroup;
  - rows(kind): the suspects rules name (attribution kinds fs_writers, fd_holders, pids_cgroup).

Writers: the processes with the largest write rate (wchar deltas of /proc/PID/io between two
steps: bytes passed to write(), so tmpfs counts too) that hold a file open for writing on that
filesystem (the st_dev of an fd's target).  The last writer seen on a filesystem is kept for a
while: a filesystem that is full has usually stopped its writer.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from .attribution import read_comm, read_procs
from .forecast import CONFIDENT, RISK_LEVELS, OomForecast, best_fit, may_warn
from .tracker import Finding

FS_HORIZONS_S = (30.0, 120.0, 600.0)   # a filesystem fills over minutes to hours: a longer last window
FS_WINDOW_S = max(FS_HORIZONS_S)
COUNT_HORIZONS_S = (10.0, 30.0, 120.0)
FILL_RATE_SPAN_S = 60.0                # fs_avail_minutes_worst: the fill rate over this long
FULL_FLOOR_BYTES = 1 << 20             # full: less than this available ...
FULL_FLOOR_FRAC = 0.001                # ... and less than this share of the filesystem
WRITER_MEMORY_S = 600.0                # the last writer to a filesystem is named this long after it stops
KINDS = ("fs_writers", "fs_inode_users", "disk_users", "fd_holders", "pids_cgroup")
# The values signals() adds to the agent's vector (none is a catalog feature).
EXHAUSTION_SIGNALS = ("fs_avail_pct_worst", "fs_avail_mb_worst", "fs_avail_minutes_worst", "fs_full_count",
                      "fs_inodes_avail_pct_worst")


def _rows(conn: sqlite3.Connection, sql: str, args) -> list[tuple]:
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the table does not exist yet (no scraper line of that type)
        return []


def is_full(avail_bytes: float, size_bytes: float) -> bool:
    return avail_bytes < FULL_FLOOR_BYTES and avail_bytes < FULL_FLOOR_FRAC * size_bytes


_FS_COLS = "ts, size_bytes, free_bytes, avail_bytes, inodes_total, inodes_free"
_FS_RW = "COALESCE(readonly, 0) = 0 AND size_bytes > 0"


def _by_mount(rows) -> dict[str, np.ndarray]:
    by: dict[str, list] = {}
    for m, *r in rows:
        by.setdefault(m, []).append([np.nan if v is None else v for v in r])
    return {m: np.array(v, dtype=float) for m, v in by.items()}


def _fs_series(conn: sqlite3.Connection, end_ns: int, window_s: float) -> dict[str, np.ndarray]:
    """mountpoint -> rows (ts, size, free, avail, inodes_total, inodes_free) of read-write filesystems."""
    return _by_mount(_rows(conn, f"SELECT mountpoint, {_FS_COLS} FROM filesystem_stats WHERE ts > ? AND ts <= ? "
                                 f"AND {_FS_RW} ORDER BY mountpoint, ts", (end_ns - int(window_s * 1e9), end_ns)))


class FsSeries:
    """_fs_series for a window ending at or after the last one asked, from rows kept between calls:
    each call reads only the rows stored since the last (by id), per mount point, for up to
    keep_s.  The forecasts read 600 s every step: ~2,400 rows converted each time on a host with
    four filesystems, the largest share of an idle agent's step.  A window that ends earlier than
    the last one, or is longer than keep_s, is read from the database as before."""

    def __init__(self, keep_s: float = 0.0):
        self.keep_ns = int(keep_s * 1e9)
        self.by: dict[str, np.ndarray] = {}
        self.last_id = 0
        self.end_ns: int | None = None

    def __call__(self, conn: sqlite3.Connection, end_ns: int, window_s: float) -> dict[str, np.ndarray]:
        if window_s * 1e9 > self.keep_ns or (self.end_ns is not None and end_ns < self.end_ns):
            return _fs_series(conn, end_ns, window_s)
        self.end_ns = end_ns
        keep_from = end_ns - self.keep_ns
        new = _rows(conn, f"SELECT id, mountpoint, {_FS_COLS} FROM filesystem_stats WHERE id > ? AND ts > ? "
                          f"AND {_FS_RW} ORDER BY id", (self.last_id, keep_from))
        if new:
            self.last_id = new[-1][0]
        for m, a in _by_mount(r[1:] for r in new).items():
            old = self.by.get(m)
            a = a if old is None else np.concatenate([old, a])
            if len(a) > 1 and (np.diff(a[:, 0]) < 0).any():
                a = a[np.argsort(a[:, 0], kind="stable")]  # stored out of ts order: as ORDER BY ts reads them
            self.by[m] = a
        out = {}
        for m in list(self.by):
            a = self.by[m] = self.by[m][self.by[m][:, 0] > keep_from]
            if not len(a):
                del self.by[m]
                continue
            lo, hi = np.searchsorted(a[:, 0], [end_ns - int(window_s * 1e9), end_ns], side="right")
            if hi > lo:
                out[m] = a[lo:hi]
        return dict(sorted(out.items()))  # mount point order, as ORDER BY mountpoint


def _avail_pct(size: float, free: float, avail: float) -> float:
    used = size - free
    return 100.0 * avail / (used + avail) if used + avail > 0 else 0.0


def _inodes_left_ratio(row) -> float:
    """Free inodes / inodes of one _fs_series row; 1.0 where the filesystem does not count them."""
    total, free = row[4], row[5]
    return float(free / total) if total > 0 and free == free else 1.0


def fs_signals(conn: sqlite3.Connection, end_ns: int, window_s: float, read=_fs_series) -> dict[str, float | None]:
    """The worst read-write filesystem (lowest available %, df's Use% complement) over the window:
    its available %, MiB and minutes at its fill rate (None while it is not filling); filesystems
    full; the lowest available inode %."""
    out: dict[str, float | None] = {"fs_avail_pct_worst": None, "fs_avail_mb_worst": None,
                                    "fs_avail_minutes_worst": None, "fs_full_count": None,
                                    "fs_inodes_avail_pct_worst": None}
    series = read(conn, end_ns, max(window_s, FILL_RATE_SPAN_S))
    lo = end_ns - window_s * 1e9
    worst = None
    full = 0
    for m, a in series.items():
        last = a[-1]
        if last[0] <= lo:
            continue  # not seen in the window: unmounted
        ts, size, free, avail, itot, ifree = last
        pct = _avail_pct(size, free, avail)
        if worst is None or pct < worst[0]:
            worst = (pct, m, a)
        inode_full = itot > 0 and ifree == 0
        full += int(is_full(avail, size) or bool(inode_full))
        if itot > 0 and not np.isnan(ifree):
            ipct = 100.0 * ifree / itot
            cur = out["fs_inodes_avail_pct_worst"]
            out["fs_inodes_avail_pct_worst"] = ipct if cur is None else min(cur, ipct)
    if worst is None:
        return out
    pct, m, a = worst
    out["fs_avail_pct_worst"] = pct
    out["fs_avail_mb_worst"] = a[-1, 3] / 1048576
    out["fs_full_count"] = float(full)
    span = a[a[:, 0] > a[-1, 0] - FILL_RATE_SPAN_S * 1e9]
    dt = (span[-1, 0] - span[0, 0]) / 1e9
    if dt > 0:
        rate = (span[0, 3] - span[-1, 3]) / dt   # available bytes lost per second
        if rate > 0:
            out["fs_avail_minutes_worst"] = span[-1, 3] / rate / 60.0
    return out


def limit_series(conn: sqlite3.Connection, end_ns: int, window_s: float) -> list[tuple]:
    return _rows(conn, "SELECT ts, file_handles, file_max, tasks, pid_max, threads_max, pids_cgroup_path, "
                       "pids_cgroup_current, pids_cgroup_max, nofile_top_pid, nofile_top_comm, nofile_top_fds, "
                       "nofile_top_limit, conntrack_entries, conntrack_max FROM limit_stats "
                       "WHERE ts > ? AND ts <= ? ORDER BY ts", (end_ns - int(window_s * 1e9), end_ns))


class WriterSampler:
    """Per process, from /proc/PID/io deltas between two samples: write rates (wchar: what it asks
    to write, page cache included) and block I/O rates (read_bytes + write_bytes: what reaches a
    device, O_DIRECT included); on demand, which of the busiest writers hold a file open for
    writing on a given filesystem, and who moves the most bytes to and from the disks."""

    def __init__(self, proc_root: str = "/proc"):
        self.proc = Path(proc_root)
        self.prev: dict[int, tuple[int, int, int]] = {}
        self.prev_t: float | None = None
        self.rates: dict[int, float] = {}
        self.disk_rates: dict[int, tuple[float, float]] = {}  # pid -> (read, write) B/s reaching a device
        self.last_writer: dict[str, tuple[float, dict]] = {}  # mount point -> (when, row)

    def sample(self, io: dict[int, tuple[int, int, int]] | None = None, now: float | None = None) -> None:
        """Every process's /proc/PID/io.  io, now: a pass already made (ProcessSampler.sample(io=True):
        its .io and .io_t), so the agent reads each process once a step; by default, read here."""
        if io is not None:
            cur = io
            now = time.monotonic() if now is None else now
        else:
            now = time.monotonic()
            try:
                _, cur = read_procs(str(self.proc), stat=False, io=True)
            except OSError:
                cur = {}
        if self.prev_t is not None and now > self.prev_t:
            dt = now - self.prev_t
            was = self.prev
            self.rates = {p: (v[0] - was[p][0]) / dt for p, v in cur.items() if p in was and v[0] >= was[p][0]}
            self.disk_rates = {p: ((v[1] - was[p][1]) / dt, (v[2] - was[p][2]) / dt) for p, v in cur.items()
                               if p in was and v[1] >= was[p][1] and v[2] >= was[p][2]}
        self.prev, self.prev_t = cur, now

    def disk_users(self, limit: int = 3) -> list[dict]:
        """Processes by bytes read from and written to block devices per second since the last
        sample (a thread pool or an O_DIRECT reader is named though it is rarely blocked in D)."""
        top = sorted(self.disk_rates.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
        out = []
        for pid, (rd, wr) in top:
            if rd + wr <= 0 or len(out) >= limit:
                break
            comm = read_comm(pid, self.proc)
            if comm is None:
                continue
            out.append({"pid": pid, "comm": comm, "read_rate": f"{rd / 1048576:.1f} MiB/s",
                        "write_rate": f"{wr / 1048576:.1f} MiB/s"})
        return out

    def _writes_on(self, pid: int, dev: int) -> bool:
        fd_dir = self.proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return False
        for fd in fds[:4096]:
            try:
                st = os.stat(fd_dir / fd)
                if st.st_dev != dev or not (st.st_mode & 0o170000) == 0o100000:  # a regular file there
                    continue
                with open(self.proc / str(pid) / "fdinfo" / fd) as f:
                    flags = next((int(ln.split()[1], 8) for ln in f if ln.startswith("flags:")), 0)
                if flags & 0o3:  # O_WRONLY or O_RDWR
                    return True
            except (OSError, ValueError):
                continue
        return False

    def writers_to(self, mountpoint: str, limit: int = 3) -> list[dict]:
        try:
            # Unmounted since (the rows outlive it by a window): the directory left behind belongs to
            # the filesystem above it, whose writers are not this one's; only the last writer is named.
            dev = os.stat(mountpoint).st_dev if os.path.ismount(mountpoint) else None
        except OSError:
            dev = None
        out = []
        for pid, rate in sorted(self.rates.items(), key=lambda kv: -kv[1])[:20] if dev is not None else []:
            if rate <= 0 or len(out) >= limit:
                break
            if not self._writes_on(pid, dev):
                continue
            comm = read_comm(pid, self.proc)
            if comm is None:
                continue
            out.append({"pid": pid, "comm": comm, "mount": mountpoint,
                        "write_rate": f"{rate / 1048576:.2f} MiB/s"})
        now = time.monotonic()
        if out:
            self.last_writer[mountpoint] = (now, out[0])
            return out
        seen = self.last_writer.get(mountpoint)
        if seen and now - seen[0] < WRITER_MEMORY_S:
            return [{**seen[1], "write_rate": f"stopped; last seen writing {now - seen[0]:.0f} s ago at "
                                              f"{seen[1]['write_rate']}"}]
        return []


def _pids_cgroup_root(sys_root: str = "/sys") -> Path | None:
    base = Path(sys_root) / "fs" / "cgroup"
    if (base / "pids").is_dir():
        return base / "pids"
    for v2 in (base, base / "unified"):
        try:
            if "pids" in (v2 / "cgroup.controllers").read_text().split():
                return v2
        except OSError:
            continue
    return None


def pids_cgroup_leader(path: str, proc_root: str = "/proc", sys_root: str = "/sys") -> dict | None:
    """The process of a pids cgroup with the most children inside it (a fork loop's parent), else
    its first process."""
    root = _pids_cgroup_root(sys_root)
    if root is None:
        return None
    try:
        pids = [int(x) for x in (root / path.lstrip("/") / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return None
    inside = set(pids)
    children: dict[int, int] = {}
    for pid in pids[:4096]:
        try:
            stat = Path(f"{proc_root}/{pid}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in inside:
            children[ppid] = children.get(ppid, 0) + 1
    lead = max(children, key=children.get) if children else (pids[0] if pids else None)
    if lead is None:
        return None
    return {"pid": lead, "comm": read_comm(lead, proc_root) or "?", "children_in_cgroup": children.get(lead, 0)}


class ExhaustionWatch:
    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys"):
        self.proc_root, self.sys_root = proc_root, sys_root
        self.writers = WriterSampler(proc_root)
        self.fs_series = FsSeries(keep_s=FS_WINDOW_S)  # every window the agent asks for, incrementally

    def sample(self, io: dict[int, tuple[int, int, int]] | None = None, now: float | None = None) -> None:
        """io, now: see WriterSampler.sample."""
        self.writers.sample(io, now)

    def signals(self, conn: sqlite3.Connection, end_ns: int, window_s: float) -> dict[str, float | None]:
        return fs_signals(conn, end_ns, window_s, self.fs_series)

    # -- suspects ---------------------------------------------------------------
    def rows(self, kind: str, conn: sqlite3.Connection, now_ns: int, window_s: float = 15.0) -> list[dict]:
        if kind == "disk_users":
            return self.writers.disk_users()
        if kind in ("fs_writers", "fs_inode_users"):
            series = self.fs_series(conn, now_ns, window_s)
            if not series:
                return []
            if kind == "fs_writers":  # the filesystem with the least space left
                m = min(series, key=lambda k: _avail_pct(*series[k][-1, 1:4]))
            else:  # the one with the fewest inodes left (its space may be nearly all free)
                m = min(series, key=lambda k: _inodes_left_ratio(series[k][-1]))
            a = series[m][-1]
            rows = self.writers.writers_to(m)
            fs = {"mount": m, "avail": f"{a[3] / 1048576:.1f} MiB of {a[1] / 1048576:.0f} MiB"}
            return [{**r, **fs} for r in rows] or [{"comm": f"filesystem {m}", **fs,
                                                    "writer": "none found holding a file open for writing"}]
        lim = limit_series(conn, now_ns, window_s)
        if not lim:
            return []
        last = lim[-1]
        if kind == "fd_holders":
            if last[9] is None:
                return []
            return [{"pid": int(last[9]), "comm": last[10] or "?", "fds": last[11], "limit": last[12],
                     "used": f"{100.0 * (last[11] or 0) / (last[12] or 1):.0f}% of its RLIMIT_NOFILE"}]
        if kind == "pids_cgroup":
            if last[6] is None:
                return []
            lead = pids_cgroup_leader(last[6], self.proc_root, self.sys_root) or {"comm": "?"}
            return [{**lead, "cgroup": last[6], "tasks": f"{last[7]} of pids.max {last[8]}"}]
        return []

    # -- forecasts --------------------------------------------------------------
    def _resource_fits(self, conn: sqlite3.Connection, end_ns: int) -> list[tuple[str, str, OomForecast | None]]:
        """(scope, what, forecast) for every resource with a limit; forecast None where it cannot be a WARNING."""
        out = []

        def fit(ts, head, total, what, horizons, unit):
            # best_fit only where it could be a WARNING: forecasts() keeps nothing less
            return best_fit(ts, head, total, what, horizons, unit) if may_warn(ts, head, total) else None

        for m, a in self.fs_series(conn, end_ns, FS_WINDOW_S).items():
            if a[-1, 0] <= end_ns - 15e9:
                continue
            used_plus_avail = a[-1, 1] - a[-1, 2] + a[-1, 3]
            out.append((f"fs:{m}", "filesystem space",
                        fit(a[:, 0], a[:, 3] / 1024, used_plus_avail / 1024, "filesystem", FS_HORIZONS_S, "kB")))
            ok = ~np.isnan(a[:, 5]) & (a[:, 4] > 0)
            if ok.any():
                b = a[ok]
                out.append((f"inodes:{m}", "filesystem inodes",
                            fit(b[:, 0], b[:, 5], float(b[-1, 4]), "inode", FS_HORIZONS_S, "inodes")))
        lim = limit_series(conn, end_ns, max(COUNT_HORIZONS_S))
        if lim:
            a = np.array([[r[0], *(np.nan if v is None else v for v in (r[1], r[2], r[3], r[4]))] for r in lim],
                         dtype=float)
            ok = ~np.isnan(a[:, 1]) & ~np.isnan(a[:, 2])
            if ok.any():
                b = a[ok]
                out.append(("file_handles", "file handles",
                            fit(b[:, 0], b[:, 2] - b[:, 1], float(b[-1, 2]), "file handle", COUNT_HORIZONS_S,
                                "handles")))
            ok = ~np.isnan(a[:, 3]) & ~np.isnan(a[:, 4])
            if ok.any():
                b = a[ok]
                out.append(("pids", "PIDs", fit(b[:, 0], b[:, 4] - b[:, 3], float(b[-1, 4]), "task",
                                                COUNT_HORIZONS_S, "tasks")))
            cg = lim[-1][6]
            s = [(r[0], r[8] - r[7], r[8]) for r in lim if r[6] == cg and r[7] is not None and r[8]]
            if cg is not None and s:
                b = np.array(s, dtype=float)
                out.append((f"pids_cgroup:{cg}", "pids cgroup",
                            fit(b[:, 0], b[:, 1], float(b[-1, 2]), "cgroup task", COUNT_HORIZONS_S, "tasks")))
            pid = lim[-1][9]
            s = [(r[0], r[12] - r[11], r[12]) for r in lim if r[9] == pid and r[11] is not None and r[12]]
            if pid is not None and s:
                b = np.array(s, dtype=float)
                out.append((f"nofile:{int(pid)}", "process descriptors",
                            fit(b[:, 0], b[:, 1], float(b[-1, 2]), "descriptor", COUNT_HORIZONS_S,
                                "descriptors")))
        return out

    def forecasts(self, conn: sqlite3.Connection, end_ns: int) -> list[Finding]:
        """A forecast observation for each resource a confident trend exhausts soon (WARNING or
        above by forecast.classify: within 5 minutes).  A resource that is merely near its limit
        without a trend is the near-limit rules' business, not a forecast."""
        out = []
        for scope, what, fc in self._resource_fits(conn, end_ns):
            if (fc is None or fc.seconds_to_exhaustion is None or fc.confidence < CONFIDENT
                    or RISK_LEVELS.index(fc.risk) < RISK_LEVELS.index("WARNING")):
                continue
            fc.scope = scope
            name = scope.split(":", 1)[1] if ":" in scope else ""
            procs: list[dict] = []
            if scope.startswith(("fs:", "inodes:")):
                procs = [{"kind": "fs_writers", **r} for r in self.writers.writers_to(name)]
                target = f"{what} on {name}"
            elif scope.startswith("pids_cgroup:"):
                lead = pids_cgroup_leader(name, self.proc_root, self.sys_root)
                procs = [{"kind": "pids_cgroup", **lead, "cgroup": name}] if lead else []
                target = f"{what} {name}"
            elif scope.startswith("nofile:"):
                procs = [{"kind": "fd_holders", **r} for r in self.rows("fd_holders", conn, end_ns)]
                target = f"descriptors of pid {name}"
            else:
                target = what
            who = f"; filled by {procs[0]['comm']} (pid {procs[0]['pid']})" if procs and "pid" in procs[0] else ""
            summary = (f"Forecast: {target} runs out in ~{fc.seconds_to_exhaustion:.0f} s "
                       f"({fc.headroom_pct:.1f}% left, fit over {fc.horizon_s:.0f} s, confidence "
                       f"{fc.confidence:.2f}){who}")
            out.append(Finding(
                key=f"forecast:{scope}", rule_id="exhaustion_forecast", label="Resource Exhaustion Forecast",
                category="io" if scope.startswith(("fs:", "inodes:")) else "load", observation_type="forecast",
                severity="critical" if fc.risk == "CRITICAL" else "high", metric="seconds_to_exhaustion",
                value=fc.seconds_to_exhaustion, trend="declining", summary=summary,
                hints=[f"At this rate {target} is exhausted: writes fail with ENOSPC, opens with EMFILE/ENFILE, "
                       "forks with EAGAIN", fc.reason],
                processes=procs,
                forecast={"scope": scope, "resource": what, "risk": fc.risk,
                          "seconds_to_exhaustion": fc.seconds_to_exhaustion, "confidence": fc.confidence,
                          "horizon_s": fc.horizon_s, "headroom_pct": fc.headroom_pct},
            ))
        return out

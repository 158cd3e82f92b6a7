"""`ks top`: a live terminal view of the host, the open observations and the
processes, refreshed every --interval seconds.

Three sources, all read-only:
  - the database (db.connect_readonly): the scraper's raw rows for the host
    gauges, read incrementally (rows newer than the last one seen, by the ts
    index; at start the last HISTORY_S seconds), and the open observations
    (the status index; the JSON is parsed again only when a row changed);
  - /proc, sampled once per refresh by a light sampler (one read of
    /proc/PID/stat and one of /proc/PID/io per process): top processes by CPU,
    memory and disk I/O, the process tree, one watched pid and its threads;
  - the keyboard, read without blocking (cbreak mode, select on stdin).

Rendering is pure: render(View, width, height) -> a Rich renderable built from
Text lines (no auto-sized tables: their measuring pass dominates the cost of a
frame), so tests render a frame from a small database without a terminal.
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.segment import Segment
from rich.text import Span, Text

from . import db

HISTORY_S = 120.0  # what the sparklines span
SPARK = "▁▂▃▄▅▆▇█"
NS = 1_000_000_000
HZ = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
PF_KTHREAD = 0x00200000
KTHREAD_EVERY = 5
SEV_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
SEV_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}


# ---------------------------------------------------------------- host gauges from the database

SPARK_W = 60  # characters per sparkline at full width
SLOT_S = HISTORY_S / SPARK_W  # seconds per character


class Series:
    """A gauge's recent values, kept as per-SLOT_S sums (one sparkline character each), so a
    frame costs SPARK_W lookups whatever the row rate."""

    def __init__(self) -> None:
        self.slots: dict[int, list] = {}  # slot number (ts // SLOT_S) -> [sum, count]
        self.last_v: float | None = None
        self.last_t: float | None = None

    def add(self, ts_s: float, v: float | None) -> None:
        if v is None:
            return
        k = int(ts_s // SLOT_S)
        cell = self.slots.get(k)
        if cell is None:
            self.slots[k] = [v, 1]
        else:
            cell[0] += v
            cell[1] += 1
        if self.last_t is None or ts_s >= self.last_t:
            self.last_t, self.last_v = ts_s, v

    def trim(self, now_s: float) -> None:
        oldest = int((now_s - HISTORY_S) // SLOT_S) - 1
        if len(self.slots) > SPARK_W + 2:
            for k in [k for k in self.slots if k < oldest]:
                del self.slots[k]

    def last(self) -> float | None:
        return self.last_v

    def values(self, end_s: float, width: int) -> list[float | None]:
        """The means of the `width` slots up to end_s, oldest first (None: no data)."""
        end = int(end_s // SLOT_S)
        out = []
        for k in range(end - width + 1, end + 1):
            c = self.slots.get(k)
            out.append(c[0] / c[1] if c else None)
        return out


# Single-row-per-read tables: (table, columns).  Multi-entity tables are handled below.
_CPU_COLS = ("cpu_count", "user_pct", "nice_pct", "system_pct", "idle_pct", "iowait_pct", "irq_pct",
             "softirq_pct", "steal_pct", "ctxt_per_sec", "forks_total", "procs_running", "procs_blocked")
_MEM_COLS = ("mem_total_kb", "mem_available_kb", "swap_total_kb", "swap_free_kb", "dirty_kb")
_LOAD_COLS = ("load_1min", "load_5min", "load_15min", "runnable_tasks", "total_tasks")
_BLK_COLS = ("device", "reads_completed_total", "writes_completed_total", "read_time_ms_total",
             "write_time_ms_total", "sectors_read_total", "sectors_written_total", "util_pct")
_NET_COLS = ("interface", "rx_bytes_total", "tx_bytes_total")
_PSI_COLS = ("resource", "some_avg10", "full_avg10")
GAUGES = ("cpu", "mem", "load", "forks", "disk_util", "disk_await", "disk_bw", "net_rx", "net_tx",
          "psi_cpu", "psi_mem", "psi_io")
FETCH_LIMIT = 5000  # rows per table per poll, at most (a poll after a long pause catches up over several)


class HostHistory:
    """The host gauges' recent history, fed from the scraper's tables a few new rows at a time."""

    def __init__(self) -> None:
        self.series: dict[str, Series] = {g: Series() for g in GAUGES}
        self.latest: dict[str, dict] = {}  # table -> last row as a dict
        self.last_ts: dict[str, int] = {}  # table -> newest ts consumed
        self.prev: dict[tuple[str, str], tuple] = {}  # (table, entity) -> previous counters row
        self.pending: dict[str, list] = {}  # multi-entity rows of the newest ts, held until the next one
        self.data_ts: float | None = None  # newest row seen, seconds
        self.cpus = os.cpu_count() or 1
        self.missing: set[str] = set()

    def _fetch(self, conn: sqlite3.Connection, table: str, cols: tuple) -> list[tuple]:
        last = self.last_ts.get(table)
        try:
            if last is None:
                row = conn.execute(f"SELECT MAX(ts) FROM {table}").fetchone()
                if row is None or row[0] is None:
                    return []
                last = int(row[0] - HISTORY_S * NS) - 1
            rows = conn.execute(f"SELECT ts, {', '.join(cols)} FROM {table} WHERE ts > ? ORDER BY ts LIMIT ?",
                                (last, FETCH_LIMIT)).fetchall()
        except sqlite3.OperationalError:  # table absent (no scraper yet) or busy: try again next time
            self.missing.add(table)
            return []
        self.missing.discard(table)
        self.last_ts[table] = rows[-1][0] if rows else last
        if rows:
            self.data_ts = max(self.data_ts or 0.0, rows[-1][0] / NS)
        return rows

    def poll(self, conn: sqlite3.Connection) -> None:
        for r in self._fetch(conn, "cpu_metrics", _CPU_COLS):
            d = dict(zip(("ts",) + _CPU_COLS, r))
            t = d["ts"] / NS
            if d["idle_pct"] is not None:
                self.series["cpu"].add(t, 100.0 - d["idle_pct"] - (d["iowait_pct"] or 0.0))
            if d["cpu_count"]:
                self.cpus = d["cpu_count"]
            p = self.latest.get("cpu_metrics")
            if p and d["forks_total"] is not None and p["forks_total"] is not None and d["ts"] > p["ts"]:
                df = d["forks_total"] - p["forks_total"]
                if df >= 0:
                    self.series["forks"].add(t, df / ((d["ts"] - p["ts"]) / NS))
            self.latest["cpu_metrics"] = d
        for r in self._fetch(conn, "memory_metrics", _MEM_COLS):
            d = dict(zip(("ts",) + _MEM_COLS, r))
            if d["mem_total_kb"] and d["mem_available_kb"] is not None:
                self.series["mem"].add(d["ts"] / NS, 100.0 * d["mem_available_kb"] / d["mem_total_kb"])
            self.latest["memory_metrics"] = d
        for r in self._fetch(conn, "load_metrics", _LOAD_COLS):
            d = dict(zip(("ts",) + _LOAD_COLS, r))
            if d["load_1min"] is not None:
                self.series["load"].add(d["ts"] / NS, d["load_1min"] / max(self.cpus, 1))
            self.latest["load_metrics"] = d
        for r in self._fetch(conn, "psi_metrics", _PSI_COLS):
            res = r[1]
            if res in ("cpu", "memory", "io") and r[2] is not None:
                self.series["psi_" + ("mem" if res == "memory" else res)].add(r[0] / NS, r[2])
                self.latest[f"psi_{res}"] = dict(zip(("ts",) + _PSI_COLS, r))
        self._by_ts(self._fetch(conn, "block_stats", _BLK_COLS), "block_stats", self._disk_point)
        self._by_ts(self._fetch(conn, "network_interface_stats", _NET_COLS), "network_interface_stats",
                    self._net_point)
        if self.data_ts is not None:
            for s in self.series.values():
                s.trim(self.data_ts)

    def _by_ts(self, rows: list, table: str, point) -> None:
        """Rows of several entities per read: one point per ts.  The newest ts waits for the next
        poll (a batch commit may have split it), unless it is the only one and 3 s old."""
        rows = self.pending.pop(table, []) + rows
        if not rows:
            return
        newest = rows[-1][0]
        hold = [r for r in rows if r[0] == newest]
        done = rows[: len(rows) - len(hold)]
        if not done and time.time() - newest / NS > 3.0:
            done, hold = hold, []
        if hold:
            self.pending[table] = hold
        group: list = []
        for r in done:
            if group and r[0] != group[0][0]:
                point(group)
                group = []
            group.append(r)
        if group:
            point(group)

    def _deltas(self, table: str, rows: list, idx: tuple[int, ...]):
        """Per entity: (dt seconds, deltas of the columns at idx) against its previous row."""
        for r in rows:
            p = self.prev.get((table, r[1]))
            self.prev[(table, r[1])] = r
            if p is None or r[0] <= p[0]:
                continue
            ds = []
            for i in idx:
                if r[i] is None or p[i] is None or r[i] < p[i]:
                    ds.append(None)
                else:
                    ds.append(r[i] - p[i])
            yield (r[0] - p[0]) / NS, ds, r

    def _disk_point(self, rows: list) -> None:
        t = rows[0][0] / NS
        utils = [r[8] for r in rows if r[8] is not None]
        if utils:
            self.series["disk_util"].add(t, max(utils))
        ios = ms = bw = 0.0
        dt_max = 0.0
        for dt, (rd, wr, rt, wt, sr, sw), _r in self._deltas("block_stats", rows, (2, 3, 4, 5, 6, 7)):
            if rd is not None and wr is not None and rt is not None and wt is not None:
                ios += rd + wr
                ms += rt + wt
            bw += ((sr or 0) + (sw or 0)) * 512 / dt
            dt_max = max(dt_max, dt)
        if dt_max:
            self.series["disk_await"].add(t, ms / ios if ios else 0.0)
            self.series["disk_bw"].add(t, bw)
        self.latest["block_stats"] = {"ts": rows[0][0], "devices": len(rows)}

    def _net_point(self, rows: list) -> None:
        t = rows[0][0] / NS
        rx = tx = 0.0
        seen = False
        for dt, (drx, dtx), r in self._deltas("network_interface_stats", rows, (2, 3)):
            if r[1] == "lo":
                continue
            rx += (drx or 0) / dt
            tx += (dtx or 0) / dt
            seen = True
        if seen:
            self.series["net_rx"].add(t, rx)
            self.series["net_tx"].add(t, tx)


# ---------------------------------------------------------------- observations

class Observations:
    """The open observations; a row's JSON is parsed again only when the row changed."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._cache: dict[int, tuple[int, int, dict]] = {}
        self.error: str | None = None

    def poll(self, conn: sqlite3.Connection, limit: int = 30) -> None:
        try:
            rows = conn.execute(
                "SELECT id, updates, last_seen, label, severity, persistence, first_seen, summary, observation, "
                "processes FROM observations WHERE status = 'open' ORDER BY first_seen DESC LIMIT ?",
                (limit,)).fetchall()
        except sqlite3.OperationalError as e:  # no agent has run on this database yet
            self.items, self.error = [], None if "no such table" in str(e) else str(e)
            return
        self.error = None
        items, cache = [], {}
        for oid, updates, last_seen, label, sev, band, first, summary, obs_json, procs_json in rows:
            c = self._cache.get(oid)
            if c is None or c[0] != updates or c[1] != last_seen:
                try:
                    obs = orjson.loads(obs_json)
                    procs = orjson.loads(procs_json)
                except orjson.JSONDecodeError:
                    obs, procs = {}, []
                ctx = obs.get("context") or {}
                d = {"id": oid, "label": label, "severity": sev, "persistence": band, "first_seen": first,
                     "last_seen": last_seen, "summary": summary,
                     "evidence": list(ctx.get("correlated_signals") or []),
                     "changes": list(ctx.get("recent_changes") or []),
                     "hints": list(obs.get("reasoning_hints") or []),
                     "processes": procs if isinstance(procs, list) else []}
                c = (updates, last_seen, d)
            cache[oid] = c
            items.append(c[2])
        self._cache = cache
        items.sort(key=lambda o: (SEV_RANK.get(o["severity"], 9), -o["first_seen"]))
        self.items = items


# ---------------------------------------------------------------- processes from /proc

@dataclass
class Proc:
    pid: int
    comm: str
    state: str
    ppid: int
    ticks: int
    rss_kb: int
    threads: int
    start: int
    kthread: bool
    io_r: int | None = None  # read_bytes / write_bytes of /proc/PID/io (storage, not page cache)
    io_w: int | None = None
    seen: float = 0.0  # monotonic time of this sample
    cpu_pct: float = 0.0
    r_bps: float = 0.0
    w_bps: float = 0.0


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_stat(pid: int, raw: bytes) -> Proc | None:
    lp, rp = raw.find(b"("), raw.rfind(b")")
    if lp < 0 or rp < lp:
        return None
    f = raw[rp + 2:].split()
    try:
        return Proc(pid, raw[lp + 1: rp].decode("utf-8", "backslashreplace"), f[0].decode("ascii", "replace"),
                    int(f[1]), int(f[11]) + int(f[12]), int(f[21]) * PAGE_KB, int(f[17]), int(f[19]),
                    bool(int(f[6]) & PF_KTHREAD))
    except (IndexError, ValueError):
        return None


def parse_io(raw: bytes | None) -> tuple[int | None, int | None]:
    if not raw:
        return None, None
    r = w = None
    for line in raw.splitlines():
        if line.startswith(b"read_bytes:"):
            r = int(line.split()[1])
        elif line.startswith(b"write_bytes:"):
            w = int(line.split()[1])
    return r, w


class ProcSampler:
    """Every process once per call: CPU %, RSS and disk I/O rates since the previous call.
    /proc/PID/io is read only for processes that used CPU since the previous call, and a kernel
    thread idle at its last read is read again every KTHREAD_EVERY calls (on this VM 60 % of the
    processes are kernel threads, nearly all idle)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.root = proc_root
        self.procs: dict[int, Proc] = {}
        self._args: dict[tuple[int, int], str] = {}
        self.n = 0
        self.t: float | None = None
        self.dt = 0.0

    def sample(self) -> None:
        now = time.monotonic()
        dt = now - self.t if self.t is not None else 0.0
        self.n += 1
        cur: dict[int, Proc] = {}
        for name in os.listdir(self.root):
            if not name.isdigit():
                continue
            pid = int(name)
            old = self.procs.get(pid)
            if old is not None and old.kthread and old.cpu_pct == 0 and (self.n + pid) % KTHREAD_EVERY:
                cur[pid] = old  # an idle kernel thread: read again in turn (a busy one, every time)
                continue
            base = f"{self.root}/{name}/"
            raw = _read(base + "stat")
            p = parse_stat(pid, raw) if raw else None
            if p is None:
                continue
            p.seen = now
            same = old is not None and old.start == p.start
            if p.kthread:
                pass
            elif same and p.ticks == old.ticks and old.io_r is not None:
                # No CPU tick since the last sample: no I/O issued to speak of either; most
                # processes are idle, so this skips most /proc/PID/io reads.
                p.io_r, p.io_w = old.io_r, old.io_w
            else:
                p.io_r, p.io_w = parse_io(_read(base + "io"))
            pdt = now - old.seen if same else 0.0
            if pdt > 0:
                p.cpu_pct = 100.0 * max(p.ticks - old.ticks, 0) / HZ / pdt
                if p.io_r is not None and old.io_r is not None:
                    p.r_bps = max(p.io_r - old.io_r, 0) / pdt
                    p.w_bps = max(p.io_w - old.io_w, 0) / pdt
            cur[pid] = p
        self.procs, self.t, self.dt = cur, now, dt

    def args(self, p: Proc) -> str:
        """The arguments after argv[0] (what tells one python from another); read once per process,
        only for the processes shown."""
        key = (p.pid, p.start)
        a = self._args.get(key)
        if a is None:
            raw = _read(f"{self.root}/{p.pid}/cmdline") or b""
            parts = raw.rstrip(b"\0").split(b"\0")[1:]
            a = b" ".join(parts).decode("utf-8", "backslashreplace")[:200]
            if len(self._args) > 4 * len(self.procs) + 100:
                self._args = {k: v for k, v in self._args.items() if k[0] in self.procs}
            self._args[key] = a
        return a

    def top(self, key: str, n: int) -> list[Proc]:
        if key == "io":
            rows = [p for p in self.procs.values() if p.r_bps + p.w_bps > 0]
            rows.sort(key=lambda p: -(p.r_bps + p.w_bps))
        elif key == "mem":
            rows = sorted(self.procs.values(), key=lambda p: -p.rss_kb)
        else:
            rows = sorted(self.procs.values(), key=lambda p: (-p.cpu_pct, -p.ticks))
        return rows[:n]


class PidWatch:
    """One process in detail and its threads (CPU % per thread between two calls)."""

    MAX_THREADS = 1000

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid, self.root = pid, proc_root
        self.threads: dict[int, Proc] = {}
        self.t: float | None = None
        self.info: dict = {}

    def sample(self) -> None:
        now = time.monotonic()
        dt = now - self.t if self.t is not None else 0.0
        base = f"{self.root}/{self.pid}"
        info: dict = {"alive": os.path.isdir(base)}
        if info["alive"]:
            raw = _read(base + "/cmdline")
            info["cmdline"] = (raw or b"").replace(b"\0", b" ").strip().decode("utf-8", "backslashreplace")
            status = _read(base + "/status") or b""
            for line in status.splitlines():
                k, _, v = line.partition(b":")
                if k in (b"VmRSS", b"VmSize", b"VmSwap", b"VmHWM", b"voluntary_ctxt_switches",
                         b"nonvoluntary_ctxt_switches", b"Uid"):
                    info[k.decode()] = v.split()[0].decode() if v.split() else ""
            try:
                info["fds"] = len(os.listdir(base + "/fd"))
            except OSError:
                info["fds"] = None
            from .agent.attribution import cgroup_of  # read-only reuse
            info["cgroup"] = cgroup_of(self.pid, self.root)
        cur: dict[int, Proc] = {}
        try:
            tids = os.listdir(base + "/task")[: self.MAX_THREADS]
        except OSError:
            tids = []
        for name in tids:
            raw = _read(f"{base}/task/{name}/stat")
            p = parse_stat(int(name), raw) if raw else None
            if p is None:
                continue
            old = self.threads.get(p.pid)
            if old is not None and dt > 0:
                p.cpu_pct = 100.0 * max(p.ticks - old.ticks, 0) / HZ / dt
            cur[p.pid] = p
        self.threads, self.t, self.info = cur, now, info


# ---------------------------------------------------------------- rendering (pure)

@dataclass
class View:
    host: HostHistory
    obs: Observations
    procs: ProcSampler
    watch: PidWatch | None = None
    tree: bool = False
    now: float = 0.0
    message: str = ""
    hostname: str = ""
    fleet: "FleetPanel | None" = None  # --fleet: the central Prometheus's view of every host


def sparkline(vals: list[float | None], lo: float | None, hi: float | None) -> str:
    """One character per value, blank where None; lo/hi None: scaled to the data (0 .. max)."""
    present = [v for v in vals if v is not None]
    if not present:
        return " " * len(vals)
    lo = 0.0 if lo is None else lo
    hi = max(present) if hi is None else hi
    span = hi - lo if hi > lo else 1.0
    top = len(SPARK) - 1
    return "".join(" " if v is None else SPARK[int((min(max(v, lo), hi) - lo) / span * top + 0.5)] for v in vals)


def line(*pieces: tuple[str, str]) -> Text:
    """A Text from (text, style) pieces in one go (Text.append per piece costs several times more)."""
    plain, spans, pos = [], [], 0
    for text, style in pieces:
        n = len(text)
        if style and n:
            spans.append(Span(pos, pos + n, style))
        plain.append(text)
        pos += n
    return Text("".join(plain), spans=spans, no_wrap=True, end="")


def human_bytes(v: float | None, suffix: str = "") -> str:
    if v is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(v) < 1024 or unit == "T":
            return f"{v:.0f}{unit}{suffix}" if unit == "B" else f"{v:.1f}{unit}{suffix}"
        v /= 1024
    return f"{v:.1f}T{suffix}"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _gauge_rows(h: HostHistory) -> list[tuple[str, str, str, tuple, str]]:
    """(label, value, style, (series, lo, hi), detail) per gauge."""
    s = h.series
    c, m, lo = h.latest.get("cpu_metrics", {}), h.latest.get("memory_metrics", {}), h.latest.get("load_metrics", {})
    cpu = s["cpu"].last()
    mem = s["mem"].last()
    load = s["load"].last()

    def style(v, warn, bad, reverse=False):
        if v is None:
            return "dim"
        if reverse:
            return "bold red" if v <= bad else "yellow" if v <= warn else "green"
        return "bold red" if v >= bad else "yellow" if v >= warn else "green"

    cpu_detail = ""
    if c:
        cpu_detail = (f"usr {_fmt((c.get('user_pct') or 0) + (c.get('nice_pct') or 0), '.0f')}  "
                      f"sys {_fmt((c.get('system_pct') or 0) + (c.get('irq_pct') or 0) + (c.get('softirq_pct') or 0), '.0f')}  "
                      f"iowait {_fmt(c.get('iowait_pct'), '.0f')}  steal {_fmt(c.get('steal_pct'), '.0f')}  "
                      f"run {c.get('procs_running', '-')} blk {c.get('procs_blocked', '-')}")
    mem_detail = ""
    if m.get("mem_total_kb"):
        mem_detail = (f"{human_bytes((m.get('mem_available_kb') or 0) * 1024)} of "
                      f"{human_bytes(m['mem_total_kb'] * 1024)} avail")
        if m.get("swap_total_kb"):
            mem_detail += (f"  swap used {human_bytes((m['swap_total_kb'] - (m.get('swap_free_kb') or 0)) * 1024)}"
                           f" of {human_bytes(m['swap_total_kb'] * 1024)}")
        if m.get("dirty_kb") is not None:
            mem_detail += f"  dirty {human_bytes(m['dirty_kb'] * 1024)}"
    load_detail = ""
    if lo:
        load_detail = (f"{_fmt(lo.get('load_1min'), '.2f')} {_fmt(lo.get('load_5min'), '.2f')} "
                       f"{_fmt(lo.get('load_15min'), '.2f')} on {h.cpus} CPUs  tasks {lo.get('total_tasks', '-')}")
    forks = s["forks"].last()
    dutil, daw, dbw = s["disk_util"].last(), s["disk_await"].last(), s["disk_bw"].last()
    rx, tx = s["net_rx"].last(), s["net_tx"].last()
    pc, pm, pi = s["psi_cpu"].last(), s["psi_mem"].last(), s["psi_io"].last()
    return [
        ("CPU busy", f"{_fmt(cpu, '5.1f')} %", style(cpu, 70, 90), (s["cpu"], 0, 100), cpu_detail),
        ("mem avail", f"{_fmt(mem, '5.1f')} %", style(mem, 20, 10, True), (s["mem"], 0, 100), mem_detail),
        ("load/CPU", f"{_fmt(load, '5.2f')}  ", style(load, 1.0, 2.0), (s["load"], 0, None), load_detail),
        ("forks", f"{_fmt(forks, '5.0f')} /s", style(forks, 100 * h.cpus, 150 * h.cpus),
         (s["forks"], 0, None), "processes created per second"),
        ("disk util", f"{_fmt(dutil, '5.1f')} %", style(dutil, 60, 90), (s["disk_util"], 0, 100),
         "busiest device"),
        ("disk await", f"{_fmt(daw, '5.1f')} ms", style(daw, 20, 100), (s["disk_await"], 0, None),
         f"per I/O, all devices  {human_bytes(dbw, '/s')}"),
        ("net rx", f"{human_bytes(rx, '/s'):>8}", "green" if rx is not None else "dim", (s["net_rx"], 0, None),
         "all interfaces but lo"),
        ("net tx", f"{human_bytes(tx, '/s'):>8}", "green" if tx is not None else "dim", (s["net_tx"], 0, None), ""),
        ("PSI cpu", f"{_fmt(pc, '5.1f')} %", style(pc, 10, 40), (s["psi_cpu"], 0, 100), "some, avg10"),
        ("PSI mem", f"{_fmt(pm, '5.1f')} %", style(pm, 5, 20), (s["psi_mem"], 0, 100), "some, avg10"),
        ("PSI io", f"{_fmt(pi, '5.1f')} %", style(pi, 10, 40), (s["psi_io"], 0, 100), "some, avg10"),
    ]


def host_lines(h: HostHistory, width: int) -> list[Text]:
    # The sparklines end now, so a stopped pipeline shows as data scrolling off; a database
    # that stopped long ago is shown as it ended.
    now = time.time()
    end = now if h.data_ts is None or now - h.data_ts < HISTORY_S else h.data_ts
    spark_w = max(10, min(SPARK_W, width - 12 - 10 - 4 - 30))
    out = []
    for label, value, sty, (series, lo, hi), detail in _gauge_rows(h):
        head = f"{label:<11}{value:>9} "
        room = width - 4 - len(head) - spark_w
        out.append(line((head[:11], "bold"), (head[11:], sty), (sparkline(series.values(end, spark_w), lo, hi), sty),
                        (_cut(f"  {detail}", room), "dim")))
    if h.missing:
        out.append(Text(f"no table yet: {', '.join(sorted(h.missing))}", "dim"))
    return out


def _ago(now: float, ts: float) -> str:
    s = max(0, int(now - ts))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def observation_lines(obs: Observations, now: float, width: int, max_lines: int) -> list[Text]:
    w = width - 4
    if obs.error:
        return [Text(f"cannot read observations: {obs.error}", "red")]
    if not obs.items:
        return [Text("no open observations", "green")]
    out: list[Text] = []
    for shown, o in enumerate(obs.items):
        block: list[Text] = []
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f" {o['severity'].upper():<8} ", SEV_STYLE.get(o["severity"], ""))
        t.append(f" #{o['id']} ", "dim")
        t.append(o["label"], "bold")
        t.append(f"  {o['persistence']}, open {_ago(now, o['first_seen'])}, "
                 f"since {time.strftime('%H:%M:%S', time.localtime(o['first_seen']))}", "dim")
        block.append(t)
        block.append(Text(f"    {o['summary']}", no_wrap=True, overflow="ellipsis"))
        for e in o["evidence"][:2]:
            block.append(Text.assemble(("    evidence ", "cyan"), e, no_wrap=True, overflow="ellipsis"))
        procs = [p for p in o["processes"] if isinstance(p, dict) and "pid" in p][:3]
        if procs:
            block.append(Text.assemble(("    processes ", "cyan"),
                                       ", ".join(f"{p.get('comm', '?')} ({p['pid']})" for p in procs),
                                       no_wrap=True, overflow="ellipsis"))
        for hint in o["hints"][:2]:
            block.append(Text.assemble(("    hint ", "magenta"), hint, no_wrap=True, overflow="ellipsis"))
        for t in block:
            t.truncate(w, overflow="ellipsis")
        if out and len(out) + len(block) > max_lines - 1:
            # the label line at least, while there is room; then how many are left
            if len(out) < max_lines - 1:
                out.append(block[0])
                shown += 1
            if len(obs.items) > shown:
                out.append(Text(f"  … {len(obs.items) - shown} more (ks observations)", "dim"))
            break
        out.extend(block[: max(max_lines - len(out), 1)])
    return out[:max_lines]


def _proc_cell(p: Proc, key: str, cw: int, args: str = "") -> tuple:
    """The pieces of one process cell, exactly cw cells wide."""
    if key == "cpu":
        val = f"{p.cpu_pct:5.1f}%"
    elif key == "mem":
        val = f"{human_bytes(p.rss_kb * 1024):>7}"
    else:
        val = f"r {human_bytes(p.r_bps):>6} w {human_bytes(p.w_bps):>6}"
    name_w = max(cw - 8 - len(val) - 3, 1)
    comm = _cut(p.comm, name_w)
    rest = _cut(f" {args}", name_w - cell_len(comm)) if args and cell_len(comm) < name_w else ""
    rest += " " * (name_w - cell_len(comm) - cell_len(rest))
    return ((f"{p.pid:>7} ", "dim"), (comm, "bold" if p.state == "R" else ""), (rest, "dim"),
            (f" {p.state} ", "red" if p.state == "D" else "dim"), (val, "cyan"))


def _cut(s: str, n: int) -> str:
    """s in at most n cells, an ellipsis marking a cut."""
    if n <= 0:
        return ""
    if s.isascii():
        return s if len(s) <= n else s[: n - 1] + "…"
    if cell_len(s) <= n:
        return s
    return set_cell_size(s, n - 1) + "…"


def process_lines(ps: ProcSampler, width: int, rows: int) -> list[Text]:
    w = width - 4
    if rows <= 1:
        return []
    cols = (("cpu", "top CPU"), ("mem", "top memory (RSS)"), ("io", "top disk I/O (B/s)"))
    if w >= 3 * 36:
        cw = (w - 4) // 3
        tops = [ps.top(k, rows - 1) for k, _ in cols]
        out = [Text.assemble(*[(f"{title:<{cw}}" + ("  " if j < 2 else ""), "bold underline")
                               for j, (_, title) in enumerate(cols)], no_wrap=True)]
        for i in range(rows - 1):
            pieces: list = []
            for j, (k, _) in enumerate(cols):
                if i < len(tops[j]):
                    pieces.extend(_proc_cell(tops[j][i], k, cw, ps.args(tops[j][i])))
                else:
                    pieces.append((" " * cw, ""))
                if j < 2:
                    pieces.append(("  ", ""))
            out.append(line(*pieces))
        return out
    # narrow: the three lists one below the other
    per = max((rows - 3) // 3, 1)
    out = []
    for k, title in cols:
        out.append(Text(title, "bold underline"))
        for p in ps.top(k, per):
            out.append(line(*_proc_cell(p, k, w, ps.args(p))))
    return out[:rows]


def tree_lines(ps: ProcSampler, width: int, rows: int) -> list[Text]:
    """The process tree, pruned to fit: the busiest processes (CPU, then RSS) and their ancestors;
    kernel threads only when busy."""
    w = width - 4
    procs = ps.procs
    if not procs or rows <= 1:
        return []
    budget = rows - 1
    keep: set[int] = set()
    ranked = sorted(procs.values(), key=lambda p: (-p.cpu_pct, -(p.r_bps + p.w_bps), -p.rss_kb))
    for p in ranked:
        if p.kthread and p.cpu_pct == 0:
            continue
        chain = []
        q: Proc | None = p
        while q is not None and q.pid not in keep:
            chain.append(q.pid)
            q = procs.get(q.ppid)
        if len(keep) + len(chain) > budget:
            break
        keep.update(chain)
    children: dict[int, list[Proc]] = {}
    roots = []
    for pid in keep:
        p = procs[pid]
        if p.ppid in keep:
            children.setdefault(p.ppid, []).append(p)
        else:
            roots.append(p)
    out = [Text.assemble(("    PID  CPU%     RSS  disk r/w       S  ", "bold underline"),
                         ("tree (busiest processes and their ancestors)", "bold underline"), no_wrap=True)]

    def walk(p: Proc, prefix: str, last: bool, top: bool) -> None:
        if len(out) > budget:
            return
        branch = "" if top else ("└─ " if last else "├─ ")
        io_s = f"{human_bytes(p.r_bps)}/{human_bytes(p.w_bps)}" if p.r_bps + p.w_bps else ""
        t = Text.assemble((f"{p.pid:>7} ", "dim"), (f"{p.cpu_pct:5.1f} ", "cyan" if p.cpu_pct else "dim"),
                          (f"{human_bytes(p.rss_kb * 1024):>7} ", ""), (f"{io_s:<14} ", "dim"),
                          (f"{p.state}  ", "red" if p.state == "D" else "dim"), (prefix + branch, "dim"),
                          (p.comm, "bold" if p.cpu_pct >= 1 else ""), no_wrap=True)
        hidden = p.threads
        if hidden > 1:
            t.append(f" [{hidden} threads]", "dim")
        t.truncate(w)
        out.append(t)
        kids = sorted(children.get(p.pid, []), key=lambda c: (-c.cpu_pct, c.pid))
        for i, c in enumerate(kids):
            walk(c, prefix + ("" if top else ("   " if last else "│  ")), i == len(kids) - 1, False)

    for r in sorted(roots, key=lambda p: p.pid):
        walk(r, "", True, True)
    return out[:rows]


def watch_lines(wt: PidWatch, ps: ProcSampler, width: int, rows: int) -> list[Text]:
    w = width - 4
    info = wt.info
    if not info.get("alive"):
        return [Text(f"pid {wt.pid}: no such process (exited?)", "red")]
    p = ps.procs.get(wt.pid)
    out = []
    head = Text(no_wrap=True)
    head.append(f"pid {wt.pid} ", "bold")
    if p is not None:
        head.append(f"{p.comm}  state {p.state}  ppid {p.ppid}  CPU {p.cpu_pct:.1f}%  "
                    f"RSS {human_bytes(p.rss_kb * 1024)}  disk r {human_bytes(p.r_bps, '/s')} "
                    f"w {human_bytes(p.w_bps, '/s')}  threads {p.threads}")
    head.truncate(w)
    out.append(head)
    out.append(Text(f"cmd: {info.get('cmdline') or '[kernel thread]'}", "dim", no_wrap=True, overflow="ellipsis"))
    kb = lambda k: human_bytes(int(info[k]) * 1024) if info.get(k, "").isdigit() else "-"  # noqa: E731
    out.append(Text(f"VmSize {kb('VmSize')}  VmHWM {kb('VmHWM')}  VmSwap {kb('VmSwap')}  fds {info.get('fds', '-')}  "
                    f"ctx vol {info.get('voluntary_ctxt_switches', '-')} invol "
                    f"{info.get('nonvoluntary_ctxt_switches', '-')}  uid {info.get('Uid', '-')}  "
                    f"cgroup {info.get('cgroup') or '/'}", no_wrap=True, overflow="ellipsis"))
    out.append(Text("    TID  CPU%  S  thread", "bold underline"))
    threads = sorted(wt.threads.values(), key=lambda t: (-t.cpu_pct, t.pid))
    room = rows - len(out)
    for t in threads[: max(room - 1, 0) if len(threads) > room else room]:
        out.append(Text.assemble((f"{t.pid:>7} ", "dim"), (f"{t.cpu_pct:5.1f} ", "cyan"),
                                 (f" {t.state}  ", "red" if t.state == "D" else "dim"), t.comm, no_wrap=True))
    if len(threads) > room:
        out.append(Text(f"… {len(threads) - room + 1} more threads", "dim"))
    for t in out:
        t.truncate(w, overflow="ellipsis")
    return out[:rows]


def render(v: View, width: int, height: int):
    """One frame, sized to width x height."""
    now = v.now or time.time()
    h = v.host
    age = f"data {now - h.data_ts:.0f} s old" if h.data_ts is not None else "no host data yet"
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(" KernelSight top ", "bold reverse")
    head.append(f"  {v.hostname}  {time.strftime('%H:%M:%S', time.localtime(now))}  {age}  ", "")
    n_open = len(v.obs.items)
    head.append(f"{n_open} open observation{'s' if n_open != 1 else ''}", "bold red" if n_open else "green")
    head.append("   q quit  t tree  s snapshot", "dim")
    if v.message:
        head.append(f"   {v.message}", "yellow")
    head.truncate(width, overflow="ellipsis")

    hl = host_lines(h, width)
    # Height budget: header 1, host panel len+2, observations >= 3 rows, processes the rest (>= 8 rows).
    rest = height - 1 - (len(hl) + 2)
    obs_max = max(3, min(len(v.obs.items) * 6 + 1, rest - 2 - 10))
    ol = observation_lines(v.obs, now, width, obs_max)
    fl = v.fleet.lines() if v.fleet is not None else None
    proc_rows = max(rest - (len(ol) + 2) - 2 - (len(fl) + 2 if fl is not None else 0), 3)
    if v.watch is not None:
        pl, title = watch_lines(v.watch, v.procs, width, proc_rows), f"watching pid {v.watch.pid}"
    elif v.tree:
        pl, title = tree_lines(v.procs, width, proc_rows), "process tree"
    else:
        pl, title = process_lines(v.procs, width, proc_rows), "processes"
    title += f" ({len(v.procs.procs)})"
    lines = [head]
    lines += box("host, last 2 min", hl, width, "blue")
    lines += box(f"open observations ({n_open})", ol, width, "red" if n_open else "green")
    if fl is not None:
        lines += box(v.fleet.title(), fl, width, "magenta")
    lines += box(title, pl, width, "blue")
    return Frame(lines[:height])


def box(title: str, body: list[Text], width: int, style: str) -> list[Text]:
    """A titled box drawn with Text lines (what rich.Panel draws, at a fraction of the cost)."""
    inner = width - 4
    title = title if len(title) <= inner - 2 else title[: inner - 3] + "…"
    out = [Text.assemble(("╭─ ", style), (title, "bold"), (" " + "─" * max(inner - len(title) - 1, 0) + "╮", style),
                         no_wrap=True)]
    for ln in body:  # the body's lines are this frame's own: cut in place
        plain = ln.plain
        n = len(plain) if plain.isascii() else cell_len(plain)
        if n > inner:
            ln.truncate(inner, overflow="ellipsis")
            plain, n = ln.plain, cell_len(ln.plain)
        end = 2 + len(plain) + (inner - n)
        spans = [Span(0, 2, style)] + [Span(sp.start + 2, sp.end + 2, sp.style) for sp in ln.spans]
        spans.append(Span(end, end + 2, style))
        out.append(Text(f"│ {plain}{' ' * (inner - n)} │", spans=spans, no_wrap=True, end=""))
    out.append(Text("╰" + "─" * (width - 2) + "╯", style, no_wrap=True))
    return out


class Frame:
    """Lines already cut to the width, rendered through a per-line segment cache: most lines of a
    frame (observations, titles, boxes) are the same as in the previous one."""

    _cache: dict = {}

    def __init__(self, lines: list[Text]) -> None:
        self.lines = lines

    def __rich_console__(self, console, options):
        cache = Frame._cache
        if len(cache) > 4000:
            cache.clear()
        nl = Segment.line()
        for line in self.lines:
            key = (line.plain, line.style, tuple(line.spans), options.max_width)
            segs = cache.get(key)
            if segs is None:
                if line.cell_len > options.max_width:
                    line = line.copy()
                    line.truncate(options.max_width, overflow="ellipsis")
                segs = cache[key] = list(line.render(console, end=""))
            yield from segs
            yield nl


class TermScreen:
    """Frames on the terminal's alternate screen, rewriting only the lines that changed.

    Rich turns each line into ANSI (a line's codes are cached while it stays the same); the
    frame is not pushed through rich.live.Live, whose per-frame pass over every segment (cell
    widths, cropping, padding) cost about as much as everything else ks top does."""

    def __init__(self, console: Console) -> None:
        from rich.color import ColorSystem

        self.console = console
        self.out = console.file
        self.color = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT,
                      "truecolor": ColorSystem.TRUECOLOR}.get(console.color_system or "", None)
        self.prev: list[str] = []
        self.size: tuple[int, int] | None = None
        self._ansi: dict = {}

    def __enter__(self) -> "TermScreen":
        self.out.write("\x1b[?1049h\x1b[?25l\x1b[2J")  # alternate screen, hide the cursor, clear
        self.out.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.out.write("\x1b[0m\x1b[?25h\x1b[?1049l")  # back to the normal screen, cursor shown
        self.out.flush()

    def ansi(self, line: Text) -> str:
        key = (line.plain, str(line.style), tuple(line.spans))
        a = self._ansi.get(key)
        if a is None:
            if len(self._ansi) > 4000:
                self._ansi.clear()
            parts = []
            for seg in line.render(self.console, end=""):
                st = seg.style
                parts.append(st.render(seg.text, color_system=self.color) if st and self.color else seg.text)
            a = self._ansi[key] = "".join(parts)
        return a

    def draw(self, lines: list[Text], size: tuple[int, int]) -> None:
        if size != self.size:  # resized: everything again
            self.size, self.prev = size, []
            self.out.write("\x1b[2J")
        width, height = size
        rows = [self.ansi(line) for line in lines[:height]]  # render() cut them to the width
        buf = []
        for i, a in enumerate(rows):
            if i >= len(self.prev) or self.prev[i] != a:
                buf.append(f"\x1b[{i + 1};1H{a}\x1b[0m\x1b[K")
        for i in range(len(rows), len(self.prev)):
            buf.append(f"\x1b[{i + 1};1H\x1b[K")
        self.prev = rows
        if buf:
            self.out.write("".join(buf))
            self.out.flush()


def render_text(v: View, width: int = 160, height: int = 50) -> str:
    """A frame as plain text (snapshots, --once)."""
    buf = io.StringIO()
    con = Console(file=buf, width=width, height=height, color_system=None, force_terminal=False,
                  legacy_windows=False, soft_wrap=False, emoji=False)
    con.print(render(v, width, height))
    return buf.getvalue()


# ---------------------------------------------------------------- the fleet panel

class FleetPanel:
    """`ks top --fleet URL`: a few lines of `ks fleet` (kernelsight.fleet), refreshed every
    refresh_s in a thread of its own so a slow Prometheus never holds up the frame."""

    MAX_LINES = 5

    def __init__(self, url: str, refresh_s: float = 15.0) -> None:
        from .fleet import Prom

        self.prom = Prom(url, timeout_s=10.0)
        self.refresh_s = refresh_s
        self.rep: dict | None = None
        self.error: str | None = None
        self.stop = None

    def poll(self) -> None:
        from .fleet import PromError, report

        try:
            self.rep, self.error = report(self.prom, top=3), None
        except PromError as e:
            self.error = str(e)

    def start(self) -> None:
        import threading

        self.stop = threading.Event()

        def loop():
            while not self.stop.is_set():
                self.poll()
                self.stop.wait(self.refresh_s)

        threading.Thread(target=loop, name="fleet-panel", daemon=True).start()

    def title(self) -> str:
        r = self.rep
        if r is None:
            return f"fleet: {self.prom.url}"
        silent = sum(1 for h in r["hosts"] if not h["reporting"])
        return (f"fleet ({len(r['hosts'])} hosts, {silent} silent, "
                f"{len({o['host'] for o in r['open']})} with open observations)")

    def lines(self) -> list[Text]:
        if self.error:
            return [Text(f"{self.prom.url}: {self.error}", "yellow")]
        r = self.rep
        if r is None:
            return [Text("waiting for the central Prometheus ...", "dim")]
        out = []
        silent = [h["host"] for h in r["hosts"] if not h["reporting"]]
        if silent:
            out.append(line(("silent: ", "bold red"), (", ".join(silent), "")))
        w = r["params"]["within_s"]
        for c in r["coincidences"][:2]:
            out.append(line((f"{c['label']} on {c['n_hosts']} hosts within {w:.0f} s: ", "bold"),
                            (", ".join(c["hosts"]), "")))
        if r["deviating"]:
            out.append(line(("deviating: ", "bold"), ("  ".join(f"{d['host']} |z| {d['z']:.1f} {d['feature']}"
                                                                for d in r["deviating"][:3]), "")))
        return out[: self.MAX_LINES] or [Text("every host reporting; no coincidence", "green")]


# ---------------------------------------------------------------- the loop

class Top:
    def __init__(self, db_file: Path, interval: float = 1.0, pid: int | None = None, tree: bool = False,
                 proc_root: str = "/proc", fleet_url: str | None = None) -> None:
        self.conn = db.connect_readonly(db_file)
        self.interval = interval
        self.view = View(HostHistory(), Observations(), ProcSampler(proc_root),
                         PidWatch(pid, proc_root) if pid is not None else None, tree,
                         hostname=socket.gethostname(), fleet=FleetPanel(fleet_url) if fleet_url else None)
        self.message_until = 0.0

    def close(self) -> None:
        if self.view.fleet is not None and self.view.fleet.stop is not None:
            self.view.fleet.stop.set()
        self.conn.close()

    def tick(self) -> None:
        v = self.view
        v.host.poll(self.conn)
        v.obs.poll(self.conn)
        v.procs.sample()
        if v.watch is not None:
            v.watch.sample()
        v.now = time.time()
        if v.message and time.monotonic() > self.message_until:
            v.message = ""

    def warm(self, seconds: float = 0.5) -> None:
        """Two samples: process and thread rates need an interval (and one fleet poll)."""
        if self.view.fleet is not None:
            self.view.fleet.poll()
        self.tick()
        time.sleep(seconds)
        self.tick()

    def snapshot(self, path: Path, width: int = 160, height: int = 50) -> Path:
        path.write_text(render_text(self.view, width, height))
        return path

    def say(self, msg: str, seconds: float = 5.0) -> None:
        self.view.message = msg
        self.message_until = time.monotonic() + seconds


class _Terminate(Exception):
    pass


def _on_signal(signum, _frame):
    raise _Terminate(signum)


def run_live(top: Top, snapshot_dir: Path) -> int:
    """Full screen until q (or SIGTERM/SIGHUP/SIGINT); the terminal is restored on every way out."""
    stdin = sys.stdin
    fd = stdin.fileno() if stdin is not None and stdin.isatty() else None
    saved = None
    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    console = Console()
    rc = 0
    try:
        if fd is not None:
            import termios
            import tty

            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys one at a time, no echo; Ctrl-C still interrupts
        top.tick()
        with TermScreen(console) as screen:
            next_t = time.monotonic()
            while True:
                size = console.size
                screen.draw(render(top.view, size.width, size.height).lines, (size.width, size.height))
                next_t += top.interval
                quit_ = False
                while True:
                    wait = next_t - time.monotonic()
                    if wait <= 0:
                        break
                    if fd is None:
                        time.sleep(wait)
                        break
                    r, _, _ = select.select([fd], [], [], wait)
                    if not r:
                        break
                    keys = os.read(fd, 64)
                    if not keys:  # stdin closed
                        quit_ = True
                        break
                    redraw = False
                    for k in keys.decode("utf-8", "ignore").lower():
                        if k == "q":
                            quit_ = True
                        elif k == "t":
                            top.view.tree = not top.view.tree
                            redraw = True
                        elif k == "s":
                            p = snapshot_dir / time.strftime("ks-top-%Y%m%d-%H%M%S.txt")
                            try:
                                top.snapshot(p, size.width, size.height)
                                top.say(f"snapshot written to {p}")
                            except OSError as e:
                                top.say(f"snapshot failed: {e.strerror}")
                            redraw = True
                    if quit_:
                        break
                    if redraw:
                        screen.draw(render(top.view, size.width, size.height).lines, (size.width, size.height))
                if quit_:
                    break
                if next_t < time.monotonic() - top.interval:  # fell behind (suspended?): no catch-up burst
                    next_t = time.monotonic()
                top.tick()
    except KeyboardInterrupt:
        rc = 130
    except _Terminate as e:
        rc = 128 + e.args[0]
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        top.close()
    return rc

"""`ks cgroups`: the cgroups of the scraper's latest read, closest to their memory limit first.

Reads `cgroup_stats` (the scraper's `cgroup` lines): the rows of the newest
timestamp, and for rates the same cgroup (by cgroup_id) about RATE_SPAN_S
earlier.  Open observations whose summary or processes mention a cgroup's
path are listed beside it.
"""

from __future__ import annotations

import sqlite3

# Rates (CPU use, throttling) over about this span: the newest earlier row at
# least this old, else the oldest one there is.
RATE_SPAN_S = 10
NS = 1_000_000_000


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _earlier(conn: sqlite3.Connection, cgroup_id: int, ts: int) -> dict | None:
    cols = "ts, cpu_usage_usec_total, cpu_nr_periods_total, cpu_nr_throttled_total"
    row = conn.execute(f"SELECT {cols} FROM cgroup_stats WHERE cgroup_id = ? AND ts <= ? ORDER BY ts DESC LIMIT 1",
                       (cgroup_id, ts - RATE_SPAN_S * NS)).fetchone()
    if row is None:
        row = conn.execute(f"SELECT {cols} FROM cgroup_stats WHERE cgroup_id = ? AND ts < ? ORDER BY ts LIMIT 1",
                           (cgroup_id, ts)).fetchone()
    return dict(zip(("ts", "cpu", "periods", "throttled"), row)) if row else None


def _delta(cur, prev):
    if cur is None or prev is None or cur < prev:  # missing, or a counter reset
        return None
    return cur - prev


def _open_observations(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(label, text to search) of each open observation."""
    if not _table_exists(conn, "observations"):
        return []
    return [(label, f"{summary or ''}\n{processes or ''}") for label, summary, processes in
            conn.execute("SELECT label, summary, processes FROM observations WHERE status = 'open' ORDER BY id")]


def latest_cgroups(conn: sqlite3.Connection) -> list[dict]:
    """One dict per cgroup of the latest read, sorted by closeness to the limit."""
    if not _table_exists(conn, "cgroup_stats"):
        return []
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(
            "SELECT * FROM cgroup_stats WHERE ts = (SELECT MAX(ts) FROM cgroup_stats)")]
    finally:
        conn.row_factory = None
    observations = _open_observations(conn)
    out = []
    for r in rows:
        limit = r["memory_limit_effective_bytes"]
        mem = r["memory_bytes"]
        prev = _earlier(conn, r["cgroup_id"], r["ts"])
        cpu_pct = throttled_pct = None
        if prev:
            dt_us = (r["ts"] - prev["ts"]) / 1000
            d_cpu = _delta(r["cpu_usage_usec_total"], prev["cpu"])
            if d_cpu is not None and dt_us > 0:
                cpu_pct = 100.0 * d_cpu / dt_us
            d_periods = _delta(r["cpu_nr_periods_total"], prev["periods"])
            d_thr = _delta(r["cpu_nr_throttled_total"], prev["throttled"])
            if d_periods and d_thr is not None:
                throttled_pct = 100.0 * d_thr / d_periods
        path = r["path"]
        labels = [label for label, text in observations if path != "/" and path in text]
        out.append({
            "ts": r["ts"],
            "path": path,
            "version": r["version"],
            "cgroup_id": r["cgroup_id"],
            "cgroup2_id": r["cgroup2_id"],
            "unit": r["unit"],
            "container_id": r["container_id"],
            "memory_bytes": mem,
            "memory_limit_bytes": r["memory_limit_bytes"],
            "memory_limit_effective_bytes": limit,
            "memory_limit_pct": 100.0 * mem / limit if mem is not None and limit else None,
            "swap_bytes": r["swap_bytes"],
            "mem_pressure_some_avg10": r["mem_pressure_some_avg10"],
            "mem_pressure_full_avg10": r["mem_pressure_full_avg10"],
            "oom_kill_total": r["oom_kill_total"],
            "cpu_pct": cpu_pct,
            "cpu_throttled_pct": throttled_pct,
            "observations": labels,
        })
    out.sort(key=lambda c: (c["memory_limit_pct"] is None, -(c["memory_limit_pct"] or 0), -(c["memory_bytes"] or 0),
                            c["path"]))
    return out


def _size(b) -> str:
    if b is None:
        return "-"
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= div:
            return f"{b / div:.1f}{unit}"
    return f"{b}B"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else "..." + s[-(n - 3):]


def render_table(cgroups: list[dict]) -> str:
    head = f"{'PATH':<44} {'UNIT/CONTAINER':<24} {'MEM':>8} {'LIMIT':>8} {'%LIM':>6} {'SWAP':>8} " \
           f"{'PSI10':>6} {'THR%':>6}  OBSERVATIONS"
    lines = [head]
    for c in cgroups:
        who = f"ctr {c['container_id'][:12]}" if c["container_id"] else (c["unit"] or "-")
        lines.append(f"{_cut(c['path'], 44):<44} {_cut(who, 24):<24} {_size(c['memory_bytes']):>8} "
                     f"{_size(c['memory_limit_effective_bytes']):>8} {_pct(c['memory_limit_pct']):>6} "
                     f"{_size(c['swap_bytes']):>8} {_pct(c['mem_pressure_some_avg10']):>6} "
                     f"{_pct(c['cpu_throttled_pct']):>6}  {', '.join(c['observations']) or '-'}")
    return "\n".join(lines)

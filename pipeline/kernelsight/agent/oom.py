"""OOM kills as observations: one per cgroup (or the host) per incident, critical.

Victims come from ks-oom-kill (oom_victim_events: victim pid, comm, memory
figures, its memory cgroup's id and name) and, where that tracer cannot run,
the collectors' oom:mark_victim fallback (oom_kill_events); a pid in both is
one kill.  The cgroup's path, limit and peak usage are read from the cgroup
filesystem when the kill is seen (v1 memory controller or v2), found by the
cgroup id the tracer reports (the directory's inode number).

Between its steps the agent looks for new victims (new_victims()) when ks-ingest
rings that a commit stored one (bell.py), so an observation opens as soon as the
kill is stored.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from ..bell import OOM_TABLES
from .tracker import Finding

OOM_WINDOW_S = 30.0  # a kill keeps its observation open this long; kills within it are one incident
CGROUP_ROOTS = ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
UNLIMITED = 1 << 62
MAX_DIRS = 20000  # a cgroup tree walked at most this far to find one id
HISTORY_S = 60  # the cgroup's memory this long before a kill goes into the observation


def _read_int(path: Path) -> int | None:
    try:
        raw = path.read_bytes().strip()
    except OSError:
        return None
    if raw == b"max":
        return None
    try:
        v = int(raw)
    except ValueError:
        return None
    return None if v >= UNLIMITED else v


@dataclass
class CgroupInfo:
    path: str                      # relative to its hierarchy root, "/" for the root
    version: int
    limit_bytes: int | None
    peak_bytes: int | None
    usage_bytes: int | None


def find_cgroup(cgroup_id: int, roots: tuple[str, ...] = CGROUP_ROOTS) -> CgroupInfo | None:
    """The memory cgroup whose directory has inode cgroup_id, with its limit and usage now."""
    for root in roots:
        base = Path(root)
        v1 = (base / "memory.limit_in_bytes").exists()
        v2 = (base / "cgroup.controllers").exists()
        if not (v1 or v2):
            continue
        seen = 0
        for dirpath, dirnames, _files in os.walk(base):
            seen += 1
            if seen > MAX_DIRS:
                break
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            if ino != cgroup_id:
                continue
            d = Path(dirpath)
            rel = "/" + str(d.relative_to(base)) if d != base else "/"
            if v1:
                return CgroupInfo(rel, 1, _read_int(d / "memory.limit_in_bytes"),
                                  _read_int(d / "memory.max_usage_in_bytes"), _read_int(d / "memory.usage_in_bytes"))
            return CgroupInfo(rel, 2, _read_int(d / "memory.max"), _read_int(d / "memory.peak"),
                              _read_int(d / "memory.current"))
    return None


@dataclass
class OomWatch:
    roots: tuple[str, ...] = CGROUP_ROOTS
    last_rowids: dict[str, int] = field(default_factory=dict)
    cgroups: dict[int, CgroupInfo | None] = field(default_factory=dict)  # id -> info at first sight

    def new_victims(self, conn: sqlite3.Connection) -> bool:
        """True when a victim was stored since the last call (a cheap rowid check)."""
        new = False
        for table in OOM_TABLES:
            try:
                (rowid,) = conn.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()
            except sqlite3.OperationalError:
                continue
            prev = self.last_rowids.get(table)
            if prev is not None and rowid > prev:
                new = True
            self.last_rowids[table] = rowid
        return new

    def victims(self, conn: sqlite3.Connection, now_ns: int) -> list[dict]:
        lo = now_ns - int(OOM_WINDOW_S * 1e9)
        out: dict[int, dict] = {}
        try:
            for ts, pid, comm, anon, memcg_id, memcg in conn.execute(
                    "SELECT ts, pid, comm, anon_rss_kb, memcg_id, memcg FROM oom_victim_events "
                    "WHERE ts > ? AND ts <= ? ORDER BY ts", (lo, now_ns)):
                out[pid] = {"ts": ts, "pid": pid, "comm": comm, "anon_rss_kb": anon, "memcg_id": memcg_id,
                            "memcg": memcg}
        except sqlite3.OperationalError:
            pass
        try:
            for ts, pid, comm, anon in conn.execute(
                    "SELECT ts, victim_pid, victim_comm, anon_rss_kb FROM oom_kill_events "
                    "WHERE ts > ? AND ts <= ? ORDER BY ts", (lo, now_ns)):
                out.setdefault(pid, {"ts": ts, "pid": pid, "comm": comm, "anon_rss_kb": anon, "memcg_id": None,
                                     "memcg": None})
        except sqlite3.OperationalError:
            pass
        return sorted(out.values(), key=lambda v: v["ts"])

    def _cgroup(self, cgroup_id: int | None) -> CgroupInfo | None:
        if cgroup_id is None:
            return None
        if cgroup_id not in self.cgroups:
            if len(self.cgroups) > 1000:
                self.cgroups.clear()
            self.cgroups[cgroup_id] = find_cgroup(cgroup_id, self.roots)
        return self.cgroups[cgroup_id]

    @staticmethod
    def _history(conn: sqlite3.Connection, v: dict) -> str | None:
        """The victim cgroup's memory in the minute before the kill (the scraper's cgroup_stats)."""
        if v.get("memcg_id") is None:
            return None
        try:
            rows = conn.execute(
                "SELECT ts, memory_bytes, memory_limit_effective_bytes FROM cgroup_stats WHERE cgroup_id = ? "
                "AND ts > ? AND ts <= ? AND memory_bytes IS NOT NULL ORDER BY ts",
                (v["memcg_id"], v["ts"] - HISTORY_S * 1_000_000_000, v["ts"])).fetchall()
        except sqlite3.OperationalError:
            return None
        if len(rows) < 2 or not rows[-1][1]:
            return None  # too fast for a 1 s sampler to have seen it grow
        (t0, first, _), (t1, last, limit) = rows[0], rows[-1]
        span = (t1 - t0) / 1e9
        rate = (last - first) / span / 2**20 if span > 0 else 0.0
        of = f" of its {limit / 2**20:.0f} MiB limit" if limit else ""
        return (f"Memory before the kill: {first / 2**20:.0f} MiB {span:.0f} s earlier, {last / 2**20:.0f} MiB{of} "
                f"at the last sample ({rate:+.1f} MiB/s)")

    def findings(self, conn: sqlite3.Connection, now_ns: int) -> list[Finding]:
        groups: dict[str, list[tuple[dict, CgroupInfo | None]]] = {}
        for v in self.victims(conn, now_ns):
            cg = self._cgroup(v["memcg_id"])
            # The path when the cgroup still exists; else its directory name (it may be gone already).
            where = cg.path if cg is not None and cg.path != "/" else (
                v["memcg"] if v["memcg"] not in (None, "", "/") else "host")
            groups.setdefault(where, []).append((v, cg))
        out = []
        for where, kills in groups.items():
            v, cg = kills[-1]
            ago = (now_ns - v["ts"]) / 1e9
            anon = f"{v['anon_rss_kb'] / 1024:.0f} MiB anon RSS" if v.get("anon_rss_kb") is not None else ""
            scope = "the host" if where == "host" else f"memory cgroup {where}"
            limit = ""
            if cg is not None and cg.limit_bytes is not None:
                limit = f" (limit {cg.limit_bytes / 2**20:.0f} MiB" + (
                    f", peak usage {cg.peak_bytes / 2**20:.0f} MiB)" if cg.peak_bytes is not None else ")")
            more = f"; {len(kills)} kills in the last {OOM_WINDOW_S:.0f} s" if len(kills) > 1 else ""
            summary = (f"OOM killer killed {v['comm']} (pid {v['pid']}) in {scope}{limit}, {ago:.0f} s ago"
                       + (f", {anon}" if anon else "") + more)
            history = self._history(conn, v)
            hints = ["The kernel killed a process to free memory: the victim's work was lost",
                     *([history] if history else []),
                     "Raise the cgroup's memory limit or find why the victim grew (its usage before the kill)"
                     if where != "host" else "Find what grew before the kill (memory growers, the OOM forecast)"]
            out.append(Finding(
                key=f"oom_kill:{where}", rule_id="oom_kill", label="OOM Kill", category="memory",
                observation_type="symptom", severity="critical", metric="oom_victims",
                value=float(len(kills)), summary=summary, hints=hints,
                processes=[{"kind": "oom_victim", "comm": k["comm"], "pid": k["pid"], "cgroup": where,
                            **({"anon_rss_mb": round(k["anon_rss_kb"] / 1024, 1)}
                               if k.get("anon_rss_kb") is not None else {})}
                           for k, _ in reversed(kills[-5:])],
            ))
        return out

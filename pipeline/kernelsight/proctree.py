"""CPU and memory of a process tree, from /proc: what the pipeline costs.

CPU = the growth of utime+stime+cutime+cstime summed over the live tree.  A
process that exits is reaped into its parent's cutime/cstime, so the tree's sum
loses nothing as processes come and go (one that is never reaped, or whose
parent is outside the tree, is not counted).  Memory = PSS and RSS from
/proc/PID/smaps_rollup (kernel 4.14+), summed over the tree at each sample.

    m = TreeMeter([root_pid], name_of)   # t0
    ... m.sample() now and then ...       # memory samples
    cost = m.finish()                     # {"cpu_pct", "pss_mib", "pss_mib_max", "per_process", ...}

Used by bench/overhead.py (idle cost beside node_exporter + Prometheus) and the
scenario runner (cost while a fault is being detected).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")

Proc = tuple[int, str, int]  # (ppid, comm, cpu ticks incl. reaped children)


def read_stat(pid: int, proc: str = "/proc") -> Proc | None:
    """(ppid, comm, utime+stime+cutime+cstime in ticks) of pid; None once it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    head, _, rest = raw.rpartition(b")")  # comm may hold ")" and spaces: split at the last one
    f = rest.split()
    # after ") ": state(0) ppid(1) pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime cutime cstime
    try:
        return int(f[1]), head.split(b"(", 1)[1].decode(errors="replace"), sum(int(x) for x in f[11:15])
    except (IndexError, ValueError):
        return None


def _children_map(proc: str = "/proc") -> dict[int, list[int]]:
    """ppid -> pids from every PID/stat: the fallback for kernels without
    /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN, on in distribution kernels)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir(proc):
        if name.isdigit():
            s = read_stat(int(name), proc)
            if s is not None:
                kids.setdefault(s[0], []).append(int(name))
    return kids


def _children_of(pid: int, proc: str = "/proc") -> list[int] | None:
    """pid's children from its threads' children files (a few reads instead of one per
    process on the host); None when the kernel has no such file, [] when pid is gone."""
    try:
        tids = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return None if os.path.isdir(f"{proc}/{pid}") else []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"{proc}/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"{proc}/{pid}/task/{tid}"):
                continue  # the thread exited meanwhile
            return None
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int, proc: str = "/proc") -> set[int]:
    """Every live process below pid (children, their children, ...).  A process forked
    while we read may be missed: callers look again."""
    out: set[int] = set()
    todo = [pid]
    kids_map: dict[int, list[int]] | None = None
    while todo:
        p = todo.pop()
        kids = _children_of(p, proc) if kids_map is None else kids_map.get(p, [])
        if kids is None:  # no children files: one scan of /proc, then walk it
            kids_map = _children_map(proc)
            kids = kids_map.get(p, [])
        for k in kids:
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def tree(roots: list[int], proc: str = "/proc") -> dict[int, Proc]:
    """Every live process at or below roots."""
    out: dict[int, Proc] = {}
    for root in roots:
        for pid in {root} | descendants(root, proc):
            s = read_stat(pid, proc)
            if s is not None:
                out[pid] = s
    return out


def memory_kb(pid: int, proc: str = "/proc") -> tuple[int, int]:
    """(PSS, RSS) in kB; (0, 0) for a kernel thread or a process that is gone."""
    pss = rss = 0
    try:
        with open(f"{proc}/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pss, rss


def names_below(names: dict[int, str]) -> Callable[[int, dict[int, Proc]], str]:
    """Name a process by its nearest named ancestor: "NAME" itself, "NAME/comm" below it."""
    def name_of(pid: int, t: dict[int, Proc]) -> str:
        p, hops = pid, 0
        while p in t and p not in names:
            p, hops = t[p][0], hops + 1
        base = names.get(p, "?")
        return base if hops == 0 else f"{base}/{t[pid][1]}"
    return name_of


def pipeline_names(sup_pid: int, data_dir) -> Callable[[int, dict[int, Proc]], str]:
    """name_of for `ks run`'s tree: the supervisor and its children by the names in its
    DATA_DIR/status.json (ks-agent, ks-ingest...), "NAME/comm" below them."""
    from .accounting import read_supervisor_status  # here: the scenario runner and bench need no more

    children = read_supervisor_status(data_dir).get("children")  # none yet: named by comm below us
    names = {c["pid"]: c["name"] for c in children or [] if isinstance(c, dict) and c.get("pid") and c.get("name")}
    return names_below({sup_pid: "supervisor (ks run)", **names})


class TreeMeter:
    """CPU over [construction, finish()], memory as the mean (and max) of the samples taken."""

    def __init__(self, roots: list[int], name_of: Callable[[int, dict[int, Proc]], str] | None = None,
                 proc: str = "/proc"):
        self.roots, self.proc = roots, proc
        self.name_of = name_of or (lambda pid, t: t[pid][1])
        self.names: dict[int, str] = {}
        self.mem: dict[str, list[tuple[int, int]]] = {}
        self.totals: list[tuple[int, int]] = []
        self.t0, self.w0 = tree(roots, proc), time.monotonic()

    def _name(self, pid: int, t: dict[int, Proc]) -> str:
        if pid not in self.names:  # named once: a later rename (exec) keeps the process in its row
            self.names[pid] = self.name_of(pid, t)
        return self.names[pid]

    def sample(self) -> None:
        snap = tree(self.roots, self.proc)
        per: dict[str, tuple[int, int]] = {}
        for pid in snap:
            n = self._name(pid, snap)
            p, r = memory_kb(pid, self.proc)
            a, b = per.get(n, (0, 0))
            per[n] = (a + p, b + r)
        for n, v in per.items():
            self.mem.setdefault(n, []).append(v)
        self.totals.append((sum(v[0] for v in per.values()), sum(v[1] for v in per.values())))

    def finish(self) -> dict:
        if not self.totals:
            self.sample()
        t1, wall = tree(self.roots, self.proc), max(time.monotonic() - self.w0, 1e-9)
        cpu: dict[str, int] = {}
        for pid, (_, _, ticks) in t1.items():
            n = self._name(pid, t1)
            cpu[n] = cpu.get(n, 0) + ticks - (self.t0[pid][2] if pid in self.t0 else 0)
        total = sum(v[2] for v in t1.values()) - sum(v[2] for v in self.t0.values())

        def pct(ticks: float) -> float:
            return 100.0 * ticks / CLK_TCK / wall

        def mean_mib(n: str, i: int) -> float:
            return statistics.fmean(v[i] for v in self.mem.get(n, [(0, 0)])) / 1024
        rows = [{"process": n, "cpu_pct": round(pct(cpu.get(n, 0)), 2), "pss_mib": round(mean_mib(n, 0), 1),
                 "rss_mib": round(mean_mib(n, 1), 1)} for n in sorted(set(cpu) | set(self.mem))]
        rows.sort(key=lambda r: (-r["cpu_pct"], -r["pss_mib"]))
        return {"cpu_pct": pct(total), "wall_s": wall, "processes": len(t1),
                "pss_mib": statistics.fmean(p for p, _ in self.totals) / 1024,
                "pss_mib_max": max(p for p, _ in self.totals) / 1024,
                "rss_mib": statistics.fmean(r for _, r in self.totals) / 1024,
                "samples": len(self.totals), "per_process": rows}

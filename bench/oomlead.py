"""OOM lead time: a process leaks at a steady rate inside a memory-limited cgroup
until the kernel OOM-kills it, under the whole pipeline (`ks run`).  For each
run: did a forecast observation for that cgroup (Memory Exhaustion Forecast,
WARNING or above) open at least 5 s before the kill, and how long before.

    python -m bench oomlead                      (root; 10 runs per rate, ~20 min)
    KS_OOMLEAD_RUNS=2 python -m bench oomlead    (a quick look)

Three rates, by the time the leak takes to fill the limit: slow (60 s), medium
(30 s), fast (15 s).  The kill time is the kernel's own (ks-oom-kill's victim
line), the warning time the observation's first_seen (whole seconds).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ._pipeline import Pipeline, query, wait

LIMIT_MB = 512
FILL_S = {"slow": 60.0, "medium": 30.0, "fast": 15.0}
LEAD_GOAL_S = 5.0
LEAK = """
import sys, time
rate = float(sys.argv[1])            # MiB/s
held, n, t0 = [], 0, time.monotonic()
while True:
    due = int((time.monotonic() - t0) * rate)
    while n < due:
        held.append(b"\\x01" * (1 << 20))   # written, so every page is really charged
        n += 1
    time.sleep(0.02)
"""


def _memcg_root() -> Path:
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, fstype, opts = line.split()[:4]
            if fstype == "cgroup" and "memory" in opts.split(","):
                return Path(mnt)
    raise RuntimeError("no cgroup v1 memory hierarchy mounted (this bench uses the v1 controller)")


def one_run(db: Path, root: Path, name: str, rate_mb_s: float) -> dict:
    cg = root / name
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(LIMIT_MB << 20))
    if (cg / "memory.memsw.limit_in_bytes").exists():
        (cg / "memory.memsw.limit_in_bytes").write_text(str(LIMIT_MB << 20))
    (cg / "memory.swappiness").write_text("0")
    try:
        p = subprocess.Popen(["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$0" -c "$1" "$2"',
                              sys.executable, LEAK, str(rate_mb_s)])
        p.wait(timeout=LIMIT_MB / rate_mb_s * 4 + 60)
        killed = p.returncode == -signal.SIGKILL
        kill = wait(lambda: query(db, "SELECT ts FROM oom_victim_events WHERE pid = ?", (p.pid,)), 30)
        kill_s = kill[0][0] / 1e9 if kill else time.time()
        warn = wait(lambda: query(db, "SELECT MIN(first_seen) FROM observations WHERE rule = 'oom_forecast' "
                                        "AND key = ? HAVING COUNT(*) > 0", (f"forecast:/{name}",)), 10)
        warn_s = float(warn[0][0]) if warn else None
        lead = round(kill_s - warn_s, 1) if warn_s is not None else None
        return {"cgroup": name, "rate_mb_s": round(rate_mb_s, 1), "killed": killed, "lead_s": lead,
                "warned_5s": lead is not None and lead >= LEAD_GOAL_S}
    finally:
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def run_oomlead(runs: int, log=print) -> dict:
    root = _memcg_root()
    pipe = Pipeline("ks-oomlead-")
    db = pipe.db
    rows = []
    try:
        pipe.wait_vectors()
        for i in range(runs):
            for rate_name, fill_s in FILL_S.items():
                r = one_run(db, root, f"ks_lead_{os.getpid()}_{rate_name}_{i}", LIMIT_MB / fill_s)
                r["rate"] = rate_name
                rows.append(r)
                log(f"oomlead: {rate_name:6} run {i + 1}/{runs}: killed={r['killed']} lead={r['lead_s']} s")
                time.sleep(3)
    finally:
        pipe.stop()
    killed = [r for r in rows if r["killed"]]
    out = {"runs": rows, "limit_mb": LIMIT_MB,
           "warned_5s_fraction": round(sum(r["warned_5s"] for r in killed) / len(killed), 3) if killed else None,
           "median_lead_s": {}}
    for rate_name in FILL_S:
        leads = [r["lead_s"] for r in killed if r["rate"] == rate_name and r["lead_s"] is not None]
        out["median_lead_s"][rate_name] = statistics.median(leads) if leads else None
    return out


def run() -> list[dict]:
    runs = int(os.environ.get("KS_OOMLEAD_RUNS", "10"))
    r = run_oomlead(runs, log=lambda m: print(m, file=sys.stderr))
    n = len([x for x in r["runs"] if x["killed"]])
    rates = ", ".join(f"{k} {LIMIT_MB / v:.0f} MiB/s" for k, v in FILL_S.items())
    rows = [{"name": "oom_warned_5s_fraction", "value": r["warned_5s_fraction"], "unit": "fraction", "ratio": None,
             "notes": f"{n} OOM kills in a {LIMIT_MB} MiB v1 memory cgroup ({runs} per rate: {rates}); warned = a "
                      f"Memory Exhaustion Forecast for that cgroup opened >= {LEAD_GOAL_S:.0f} s before the kernel's "
                      f"kill; goal >= 0.8"}]
    for k, v in r["median_lead_s"].items():
        rows.append({"name": f"oom_median_lead_{k}_s", "value": v, "unit": "s", "ratio": None,
                     "notes": f"median seconds from the first forecast to the kill, leak filling {LIMIT_MB} MiB in "
                              f"{FILL_S[k]:.0f} s"})
    return rows

"""Resources running out, under the whole pipeline (`ks run`, one run):

  1. normal: for QUIET_S the scenario suite's normal load runs (kernelsight.scenarios.normalload:
     a C build, a web service under ab, xz/gzip, SQLite, a process growing and freeing memory;
     KS_FSFILL_NORMALLOAD=0: nothing at all); every observation the exhaustion rules or the
     Resource Exhaustion Forecast open then is a false alarm;
  2. filesystem: a FS_MB tmpfs filled by one steady writer (comm "fsfiller", FILL_MB_S) until it
     gets ENOSPC; the lead is the time from the first forecast observation for that filesystem
     to the writer's first ENOSPC; the forecast must name the writer; a Filesystem Full
     observation must open once it is full;
  3. descriptors: a process (comm "fdleaker") opening descriptors under RLIMIT_NOFILE 1024 until
     it holds 1000: Process Near Its Descriptor Limit must name it;
  4. PIDs: a fork loop (comm "forkloop") in a v1 pids cgroup with pids.max 200: Cgroup Near Its PID
     Limit must name the cgroup and the loop.

    python -m bench fsfill          (root: mounts a tmpfs, makes a pids cgroup; ~12 min)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from ._pipeline import Pipeline, query, wait

QUIET_S = float(os.environ.get("KS_FSFILL_QUIET_S", "300"))
NORMALLOAD = os.environ.get("KS_FSFILL_NORMALLOAD", "1") != "0"
FS_MB = 300
FILL_MB_S = 1.5
LEAD_GOAL_S = 60.0
MY_RULES = ("exhaustion_forecast", "fs_near_full", "fs_full", "fs_inodes_near_full", "file_handles_near_limit",
            "process_fd_near_limit", "pids_near_limit", "pids_cgroup_near_limit", "conntrack_near_full",
            "ephemeral_ports_near_exhaustion")

FILLER = """
import os, sys, time
open("/proc/self/comm", "w").write("fsfiller")
path, rate, status = sys.argv[1], float(sys.argv[2]) * (1 << 20), sys.argv[3]
chunk = b"\\x01" * 65536
f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
t0, n, full = time.monotonic(), 0, False
while True:
    due = (time.monotonic() - t0) * rate
    while n < due:
        try:
            n += os.write(f, chunk)
        except OSError:
            if not full:
                full = True
                open(status, "w").write(repr(time.time()))
            break
    time.sleep(0.05)
"""

FD_LEAKER = """
import os, resource, time
open("/proc/self/comm", "w").write("fdleaker")
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
fds = []
while len(fds) < 1000:
    fds.append(os.open("/dev/null", os.O_RDONLY))
    time.sleep(0.05)
time.sleep(3600)
"""

FORK_LOOP = """
import os, subprocess, sys, time
open("/proc/self/comm", "w").write("forkloop")
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
kids = []
while True:
    try:
        kids.append(subprocess.Popen(["sleep", "3600"]))
    except OSError:
        pass
    time.sleep(0.1)
"""


def _mine(db: Path, since_s: float, until_s: float | None = None) -> list[tuple]:
    q = ("SELECT rule, key, first_seen, summary FROM observations WHERE rule IN (%s) AND first_seen >= ?"
         % ",".join("?" * len(MY_RULES)))
    args = [*MY_RULES, int(since_s)]
    if until_s is not None:
        q += " AND first_seen <= ?"
        args.append(int(until_s))
    return query(db, q, args)


def _obs(db: Path, rule: str, key_like: str = "%") -> tuple | None:
    r = query(db, "SELECT first_seen, summary, processes, observation FROM observations WHERE rule = ? AND key LIKE ? "
                   "ORDER BY first_seen LIMIT 1", (rule, key_like))
    return r[0] if r else None


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    p.wait()


def run_fsfill(log=print) -> dict:
    pipe = Pipeline("ks-fsfill-")
    tmp, db = pipe.tmp, pipe.db
    env = {**os.environ, "KS_DATA_DIR": str(pipe.data), "KS_FIFO": pipe.fifo}
    mnt = tmp / "fs"
    cg = Path("/sys/fs/cgroup/pids") / f"ks_fsfill_{os.getpid()}"
    out: dict = {"fs_mb": FS_MB, "fill_mb_s": FILL_MB_S}
    procs: list[subprocess.Popen] = []
    try:
        pipe.wait_vectors(timeout_s=180)
        # 1. quiet
        q0 = time.time()
        log(f"fsfill: {'normal load' if NORMALLOAD else 'quiet'} for {QUIET_S:.0f} s")
        if NORMALLOAD:
            nl = subprocess.run([sys.executable, "-m", "kernelsight.scenarios.normalload", "--seconds",
                                 str(int(QUIET_S))], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=QUIET_S + 300)
            out["normalload_rc"] = nl.returncode
        else:
            time.sleep(QUIET_S)
        q1 = time.time()
        out["quiet_kind"] = "normalload" if NORMALLOAD else "idle"
        quiet = _mine(db, q0, q1)
        out["quiet_s"] = round(q1 - q0)
        out["quiet_observations"] = [list(r) for r in quiet]
        log(f"fsfill: {len(quiet)} observation(s) from the exhaustion rules in the quiet phase: {quiet}")

        # 2. filesystem
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m", "tmpfs", str(mnt)], check=True)
        status = tmp / "full_at"
        t_fill = time.time()
        filler = subprocess.Popen([sys.executable, "-c", FILLER, str(mnt / "data"), str(FILL_MB_S), str(status)],
                                  start_new_session=True)
        procs.append(filler)
        log(f"fsfill: filling {FS_MB} MiB at {FILL_MB_S} MiB/s (pid {filler.pid})")
        if not wait(status.exists, FS_MB / FILL_MB_S * 2 + 60, 0.2):
            raise RuntimeError("the filesystem never filled")
        full_s = float(status.read_text())
        fc = wait(lambda: _obs(db, "exhaustion_forecast", f"forecast:fs:{mnt}"), 10)
        full_obs = wait(lambda: _obs(db, "fs_full"), 60)
        out["fill_s"] = round(full_s - t_fill, 1)
        out["fs_forecast_lead_s"] = round(full_s - fc[0], 1) if fc else None
        out["fs_forecast_summary"] = fc[1] if fc else None
        out["fs_forecast_names_writer"] = bool(fc) and f"fsfiller (pid {filler.pid})" in fc[1] and \
            any(p.get("pid") == filler.pid for p in orjson.loads(fc[2] or "[]"))
        out["fs_full_observation_after_s"] = round(full_obs[0] - full_s, 1) if full_obs else None
        out["fs_full_summary"] = full_obs[1] if full_obs else None
        out["fs_full_names_writer"] = bool(full_obs) and any(
            p.get("pid") == filler.pid and p.get("mount") == str(mnt) for p in orjson.loads(full_obs[2] or "[]"))
        log(f"fsfill: full after {out['fill_s']} s; forecast lead {out['fs_forecast_lead_s']} s: "
            f"{out['fs_forecast_summary']}; full observation: {out['fs_full_summary']} "
            f"(processes {full_obs[2] if full_obs else None})")
        _kill_group(filler)
        subprocess.run(["umount", str(mnt)], check=False)

        # 3. descriptors
        t_fd = time.time()
        leaker = subprocess.Popen([sys.executable, "-c", FD_LEAKER], start_new_session=True)
        procs.append(leaker)
        fd_obs = wait(lambda: _obs(db, "process_fd_near_limit"), 120)
        out["fd_observation_after_s"] = round(fd_obs[0] - t_fd, 1) if fd_obs else None
        out["fd_summary"] = fd_obs[1] if fd_obs else None
        out["fd_names_process"] = bool(fd_obs) and any(
            p.get("pid") == leaker.pid and p.get("comm") == "fdleaker" for p in orjson.loads(fd_obs[2] or "[]"))
        fd_fc = _obs(db, "exhaustion_forecast", f"forecast:nofile:{leaker.pid}")
        out["fd_forecast_summary"] = fd_fc[1] if fd_fc else None
        log(f"fsfill: descriptors: {out['fd_summary']} processes {fd_obs[2] if fd_obs else None}; "
            f"forecast: {out['fd_forecast_summary']}")
        _kill_group(leaker)

        # 4. PIDs
        if Path("/sys/fs/cgroup/pids").is_dir():
            cg.mkdir()
            (cg / "pids.max").write_text("200")
            t_pid = time.time()
            loop = subprocess.Popen([sys.executable, "-c", FORK_LOOP, str(cg)], start_new_session=True)
            procs.append(loop)
            p_obs = wait(lambda: _obs(db, "pids_cgroup_near_limit"), 120)
            out["pids_observation_after_s"] = round(p_obs[0] - t_pid, 1) if p_obs else None
            out["pids_summary"] = p_obs[1] if p_obs else None
            out["pids_names_process"] = bool(p_obs) and any(
                p.get("pid") == loop.pid and p.get("cgroup") == "/" + cg.name for p in orjson.loads(p_obs[2] or "[]"))
            p_fc = _obs(db, "exhaustion_forecast", f"forecast:pids_cgroup:/{cg.name}")
            out["pids_forecast_summary"] = p_fc[1] if p_fc else None
            log(f"fsfill: pids: {out['pids_summary']} processes {p_obs[2] if p_obs else None}; "
                f"forecast: {out['pids_forecast_summary']}")
            _kill_group(loop)
            for f in (cg / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(f), signal.SIGKILL)
                except OSError:
                    pass
        # Forecasts during the active phases for anything but what the bench filled.
        expected = (f"forecast:fs:{mnt}", f"forecast:inodes:{mnt}", "forecast:nofile:", "forecast:pids_cgroup:/ks_fsfill")
        stray = [r for r in _mine(db, q1) if r[0] == "exhaustion_forecast" and not r[1].startswith(expected)]
        out["active_stray_forecasts"] = [list(r) for r in stray]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
        subprocess.run(["umount", str(mnt)], check=False, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if cg.exists():
                    cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        pipe.stop()
    (Path(__file__).with_name("fsfill_last.json")).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    return out


def run() -> list[dict]:
    r = run_fsfill(log=lambda m: print(m, file=sys.stderr))
    fc = [x for x in r["quiet_observations"] if x[0] == "exhaustion_forecast"]
    return [
        {"name": "exhaustion_forecast_lead_s_fs", "value": r["fs_forecast_lead_s"], "unit": "s",
         "notes": f"{FS_MB} MiB tmpfs filled by one writer at {FILL_MB_S} MiB/s (full after {r['fill_s']} s) under "
                  f"`ks run`: seconds from the first Resource Exhaustion Forecast for it to the writer's first "
                  f"ENOSPC (goal >= {LEAD_GOAL_S:.0f}); names the writer: {r['fs_forecast_names_writer']}; "
                  f"Filesystem Full observation {r['fs_full_observation_after_s']} s after full, names the writer: "
                  f"{r['fs_full_names_writer']}"},
        {"name": "exhaustion_forecast_false_alarms", "value": len(fc), "unit": "observations",
         "notes": f"Resource Exhaustion Forecast observations over {r['quiet_s']} s of "
                  + ("the scenario suite's normal load (normalload: C build, web service, xz/gzip, SQLite, memory "
                     "grow/free)" if r["quiet_kind"] == "normalload" else "an idle host (nothing started)")
                  + f" in the same run, before the fills; all exhaustion-rule observations "
                  f"then: {len(r['quiet_observations'])}; stray forecasts during the fill/fd/pids phases: "
                  f"{len(r['active_stray_forecasts'])}"},
        {"name": "exhaustion_fd_named", "value": int(bool(r.get("fd_names_process"))), "unit": "bool",
         "notes": f"a process opening descriptors to 1000 of RLIMIT_NOFILE 1024: Process Near Its Descriptor Limit "
                  f"opened {r.get('fd_observation_after_s')} s after it started, naming it"},
        {"name": "exhaustion_pids_named", "value": int(bool(r.get("pids_names_process"))), "unit": "bool",
         "notes": f"a fork loop in a v1 pids cgroup with pids.max 200: Cgroup Near Its PID Limit opened "
                  f"{r.get('pids_observation_after_s')} s after it started, naming the cgroup and the loop"},
    ]

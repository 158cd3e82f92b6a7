"""The scenario suite: real faults on this machine, with the whole pipeline up,
checked against what ks-agent says (`make scenarios`).

    python -m kernelsight.scenarios [--fast] [--only NAME,...] [--json OUT] [--data-dir DIR]

Starts `ks run` once (own data dir and FIFO under a temp dir, --interval 1),
waits until the agent is warm (>= 20 s of data), then for each scenario:
injects the fault (a bounded subprocess), polls the observations table, and
records whether the expected label opened within 30 s of onset, seconds to
detect, whether it closed after the fault ended, seconds to clear, every label
seen and any other high/critical observation not plausibly caused by the
fault (a false positive).  Then a normal-load phase (idle, then a real build)
that must raise nothing of severity high or critical.

Onset: when the injector says the fault begins (it prints `ONSET <unix time>`
after any preparation, e.g. fio's file layout); for memory pressure, the first
memory_metrics sample after the injector started in which MemAvailable is
under 10 % of MemTotal (the fault as the interpretation table defines it).
Fault end: when the injector has exited (its load is gone).
Seconds to detect: poll time (0.5 s polling) at which the observation was
first seen open, minus onset.  Seconds to clear: the agent's closed_at (the
first evaluation at which the condition no longer held; the row is closed
clear_after_s later) minus fault end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DETECT_WITHIN_S = 30.0  # the goal, reported per scenario
GIVE_UP_S = 2 * DETECT_WITHIN_S  # a late detection is still measured (and fails the goal), not lost
WARM_S = 20.0
POLL_S = 0.5
SEVERE = ("high", "critical")
IO_LABELS = ("I/O Tail Latency", "I/O Saturation", "I/O Queue Congestion", "I/O Wait Dominates", "I/O Bottleneck",
             "Read Amplification", "I/O Bottleneck Causing Scheduling Churn")
CPU_LABELS = ("Oversubscription", "CPU Saturation", "CPU Starvation", "Scheduling Thrash", "Serialization Bottleneck",
              "Steady Demand Growth", "Lock Contention", "Event Loop Starvation")


@dataclass
class Scenario:
    name: str
    module: str
    args: list[str]
    expected: tuple[str, ...]  # any of these labels counts as detected
    related: tuple[str, ...] = ()  # plausibly caused by the fault: not false positives
    fast_args: list[str] | None = None
    fast: bool = False  # in the fast subset (make test)
    onset: str = "start"  # "start" (ONSET line / injector start) or "memory" (MemAvailable < 10 %)
    max_inject_s: float = 45.0  # the runner stops the injector by then, whatever happens
    hold_s: float = 8.0  # keep the fault up this long after detection
    clear_wait_s: float = 60.0  # how long to wait for the observation to close after the fault ends
    note: str = ""


SCENARIOS = [
    Scenario("file_system_issue", "fsfail", ["--seconds", "40", "--rate", "3000"], ("File System Issue",),
             fast=True, note="failing openat() storm (ENOENT), 3000/s"),
    Scenario("process_explosion", "forkstorm", ["--seconds", "40", "--rate", "600"], ("Process Explosion",),
             related=CPU_LABELS, fast=True, note="fork/exec storm of /bin/true, 600/s"),
    Scenario("scheduling_thrash", "ctxswitch", ["--seconds", "40"], ("Scheduling Thrash",), related=CPU_LABELS,
             fast=True, note="stress-ng --switch (pipe ping-pong), ~150k switches/s per worker"),
    Scenario("cpu_oversubscription", "cpuhog", ["--seconds", "45"], ("Oversubscription",), related=CPU_LABELS,
             note="stress-ng --cpu 3 x cores"),
    Scenario("io_saturation", "iosat", ["--seconds", "45", "--rw", "write", "--bs", "4M", "--fsync", "32", "--jobs", "2", "--fresh", "--size-mb", "4096"], ("I/O Saturation", "I/O Tail Latency"),
             related=IO_LABELS + ("Scheduling Thrash",),
             note="fio random 4 MiB O_DIRECT reads, iodepth 16, on the real disk"),
    Scenario("write_buffer_saturation", "dirty", ["--seconds", "45"], ("Write Buffer Saturation",),
             related=IO_LABELS, note="buffered writes 400 MiB/s, no fsync, on the real disk"),
    Scenario("memory_pressure", "memhog", ["--leave-pct", "7", "--hold", "40", "--max-seconds", "100"],
             ("Memory Pressure",), related=("Approaching OOM", "Memory Overflow", "Disk Thrashing") + CPU_LABELS,
             onset="memory", max_inject_s=90.0,
             note="memhog leaves ~7 % available; onset = first sample under 10 % available"),
    Scenario("connection_churn", "churn", ["--seconds", "25", "--rate", "400"], ("Connection Churning",),
             related=("SYN Flood",), fast=True, clear_wait_s=100.0,
             note="short TCP connections on 127.0.0.1, 400/s; TIME_WAIT lasts 60 s by kernel design, "
                  "so clearing takes about a minute after the churn stops"),
]
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Result:
    scenario: str
    expected: list[str]
    detected: bool = False
    label: str | None = None
    observation_id: int | None = None
    severity: str | None = None
    seconds_to_detect: float | None = None
    cleared: bool = False
    seconds_to_clear: float | None = None
    closed_seen_after_s: float | None = None
    false_positives: list[dict] = field(default_factory=list)
    labels_seen: list[dict] = field(default_factory=list)
    onset_unix: float | None = None
    fault_end_unix: float | None = None
    injector_rc: int | None = None
    note: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (self.detected and self.seconds_to_detect is not None and self.seconds_to_detect <= DETECT_WITHIN_S
                and self.cleared and not self.false_positives)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ pipeline
class Pipeline:
    """`ks run` as a subprocess with its own data dir and FIFO."""

    def __init__(self, data_dir: Path, fifo: str, log_path: Path, interval: float = 1.0):
        self.data_dir = data_dir
        self.db = data_dir / "kernelsight.db"
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "KS_DATA_DIR": str(data_dir), "KS_FIFO": fifo}
        self.proc = subprocess.Popen([sys.executable, "-m", "kernelsight.cli", "run", "--data-dir", str(data_dir),
                                      "--fifo", fifo, "--interval", str(interval)],
                                     env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        self.started = time.time()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def conn(self) -> sqlite3.Connection | None:
        if not self.db.exists():
            return None
        c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        c.row_factory = sqlite3.Row
        return c

    def query(self, sql: str, args=()) -> list:
        c = self.conn()
        if c is None:
            return []
        try:
            return c.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            c.close()

    def status(self) -> dict:
        from ..cli import read_status

        try:
            return read_status(self.data_dir)
        except Exception as e:  # noqa: BLE001 - status is informative only
            return {"error": str(e), "children": []}

    def wait_warm(self, warm_s: float = WARM_S, timeout: float = 180.0) -> dict:
        """Until the agent runs and the DB holds >= warm_s of samples (and the agent has
        judged at least once after its own warm-up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"ks run exited with {self.proc.returncode}; see its log")
            st = self.status()
            agent = next((c for c in st.get("children", []) if c["name"] == "ks-agent"), None)
            span = self.query("SELECT (MAX(ts) - MIN(ts)) / 1e9 FROM memory_metrics")
            fc = self.query("SELECT COUNT(*) FROM oom_forecasts")
            if (agent and agent["state"] == "running" and span and span[0][0] is not None
                    and span[0][0] >= warm_s and fc and fc[0][0] >= 3
                    and time.time() - self.started >= warm_s + 5):
                return st
            time.sleep(1.0)
        raise RuntimeError("the pipeline did not warm up in time")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ observations
def snapshot(p: Pipeline) -> dict[int, tuple[str, int]]:
    return {r["id"]: (r["status"], r["last_seen"]) for r in p.query("SELECT id, status, last_seen FROM observations")}


def new_or_reopened(p: Pipeline, before: dict[int, tuple[str, int]], since: float) -> list[sqlite3.Row]:
    """Observations that opened after `before` was taken, or were closed then and came back."""
    rows = p.query("SELECT id, rule, label, status, severity, signal_category, first_seen, last_seen, closed_at, "
                   "summary, processes FROM observations WHERE last_seen >= ? ORDER BY id", (int(since) - 1,))
    out = []
    for r in rows:
        old = before.get(r["id"])
        if old is None or (old[0] == "closed" and (r["status"] == "open" or r["last_seen"] > old[1])):
            out.append(r)
    return out


def _item(r: sqlite3.Row, severity: str) -> dict:
    """One observation for the report, with the processes the agent named behind it
    (so a reader can tell the injected fault from another user's load)."""
    try:
        procs = json.loads(r["processes"] or "[]")
    except ValueError:
        procs = []
    names = []
    for pr in procs:
        if pr.get("comm") and pr["comm"] not in names:
            names.append(pr["comm"])
    return {"id": r["id"], "label": r["label"], "severity": severity, "category": r["signal_category"],
            "first_seen": r["first_seen"], "summary": r["summary"], "processes": names[:5]}


def open_labels(p: Pipeline, labels) -> list[sqlite3.Row]:
    q = ",".join("?" * len(labels))
    return p.query(f"SELECT id, label FROM observations WHERE status='open' AND label IN ({q})", tuple(labels))


def memory_onset(p: Pipeline, since: float, pct: float = 10.0) -> float | None:
    r = p.query("SELECT MIN(ts) FROM memory_metrics WHERE ts >= ? AND mem_total_kb > 0 AND "
                "100.0 * mem_available_kb < ? * mem_total_kb", (int(since * 1e9), pct))
    return r[0][0] / 1e9 if r and r[0][0] is not None else None


# ------------------------------------------------------------------ injectors
class Injector:
    def __init__(self, module: str, args: list[str], log_path: Path):
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.log.write(f"\n=== {module} {' '.join(args)} at {time.strftime('%H:%M:%S')}\n".encode())
        self.log.flush()
        self.started = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", f"kernelsight.scenarios.{module}", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, start_new_session=True, text=True)
        self.onset: float | None = None
        self.ended: float | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("ONSET ") and self.onset is None:
                try:
                    self.onset = float(line.split()[1])
                except (IndexError, ValueError):
                    self.onset = time.time()
            self.log.write(line.encode())

    def running(self) -> bool:
        if self.proc.poll() is None:
            return True
        if self.ended is None:
            self.ended = time.time()
        return False

    def stop(self, grace: float = 20.0) -> int:
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.ended is None:
            self.ended = time.time()
        _killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group (nothing, normally)
        self.reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


# ------------------------------------------------------------------ one scenario
def run_scenario(p: Pipeline, sc: Scenario, fast: bool, log_path: Path) -> Result:
    res = Result(sc.name, list(sc.expected), note=sc.note)
    # Start from a clean slate: nothing with the expected label still open.
    t_wait = time.monotonic()
    while open_labels(p, sc.expected) and time.monotonic() - t_wait < 90:
        time.sleep(1.0)
    time.sleep(2.0)
    before = snapshot(p)
    args = sc.fast_args if fast and sc.fast_args else sc.args
    say(f"{sc.name}: starting {sc.module} {' '.join(args)}")
    inj = Injector(sc.module, args, log_path)
    t0 = inj.started
    onset = None
    hit = None
    detect_seen = None
    while True:
        now = time.time()
        if onset is None:
            if sc.onset == "memory":
                onset = memory_onset(p, t0)
            elif inj.onset is not None:
                onset = inj.onset
            elif not inj.running():
                onset = inj.started  # it never said: its start is the onset
        if hit is None:
            rows = [r for r in new_or_reopened(p, before, t0) if r["label"] in sc.expected and r["status"] == "open"]
            if rows:
                hit = rows[0]
                detect_seen = now
                say(f"{sc.name}: {hit['label']} opened (#{hit['id']}, {hit['severity']})")
        if hit is not None and onset is not None and now - detect_seen >= sc.hold_s:
            break
        if onset is not None and now - onset > GIVE_UP_S and hit is None:
            break
        if now - t0 > sc.max_inject_s:
            break
        if not inj.running() and hit is None and inj.proc.returncode not in (0, -signal.SIGTERM):
            res.error = f"the injector failed (exit {inj.proc.returncode}); see its log"
            break
        if not inj.running() and (onset is None or hit is not None or now - onset > GIVE_UP_S):
            break
        time.sleep(POLL_S)
    res.injector_rc = inj.stop()
    res.fault_end_unix = inj.ended
    if onset is None:
        onset = memory_onset(p, t0) if sc.onset == "memory" else (inj.onset or t0)
    res.onset_unix = onset
    if onset is None and res.error is None:
        res.error = "the fault never reached its onset (memory never went under 10 % available)"
    if hit is not None:
        res.detected = True
        res.label = hit["label"]
        res.observation_id = hit["id"]
        if onset is not None:
            res.seconds_to_detect = round(detect_seen - onset, 1)
        # Wait for it to close.
        deadline = time.time() + sc.clear_wait_s
        while time.time() < deadline:
            r = p.query("SELECT status, closed_at, severity FROM observations WHERE id=?", (hit["id"],))
            if r and r[0]["status"] == "closed":
                res.cleared = True
                res.closed_seen_after_s = round(time.time() - res.fault_end_unix, 1)
                res.seconds_to_clear = round(max(0.0, r[0]["closed_at"] - res.fault_end_unix), 1)
                break
            time.sleep(POLL_S)
        say(f"{sc.name}: " + (f"closed, {res.seconds_to_clear} s after the fault ended" if res.cleared
                               else f"still open {sc.clear_wait_s:.0f} s after the fault ended"))
    else:
        say(f"{sc.name}: NOT detected")
        time.sleep(10.0)
    seen = new_or_reopened(p, before, t0)
    allowed = set(sc.expected) | set(sc.related)
    for r in seen:
        sev = p.query("SELECT severity FROM observations WHERE id=?", (r["id"],))
        severity = sev[0][0] if sev else r["severity"]
        item = _item(r, severity)
        res.labels_seen.append(item)
        if severity in SEVERE and r["label"] not in allowed:
            res.false_positives.append(item)
    if hit is not None:
        sev = p.query("SELECT severity FROM observations WHERE id=?", (hit["id"],))
        res.severity = sev[0][0] if sev else hit["severity"]
    return res


def run_normal(p: Pipeline, idle_s: float, build_s: float, log_path: Path) -> dict:
    """Idle, then a real build: nothing of severity high or critical may open."""
    before = snapshot(p)
    t0 = time.time()
    say(f"normal: idle {idle_s:.0f} s")
    time.sleep(idle_s)
    say(f"normal: build for up to {build_s:.0f} s")
    inj = Injector("build", ["--seconds", str(build_s)], log_path)
    while inj.running() and time.time() - inj.started < build_s + 30:
        time.sleep(1.0)
    rc = inj.stop()
    time.sleep(10.0)  # anything the build's tail would raise
    seen = new_or_reopened(p, before, t0)
    labels, fps = [], []
    for r in seen:
        item = _item(r, r["severity"])
        labels.append(item)
        if r["severity"] in SEVERE:
            fps.append(item)
    out = {"idle_s": idle_s, "build_s": round(inj.ended - inj.started, 1), "build_rc": rc,
           "labels_seen": labels, "false_positives": fps, "ok": not fps}
    say(f"normal: {len(labels)} observation(s), {len(fps)} of severity high/critical")
    return out


# ------------------------------------------------------------------ output
def table(results: list[Result], normal: dict | None) -> str:
    head = ("scenario", "detected", "label", "s to detect", "s to clear", "false positives")
    rows = []
    for r in results:
        rows.append((r.scenario, "yes" if r.detected else "NO", r.label or "-",
                     "-" if r.seconds_to_detect is None else f"{r.seconds_to_detect:.1f}",
                     ("-" if r.seconds_to_clear is None else f"{r.seconds_to_clear:.1f}") if r.cleared
                     else ("not closed" if r.detected else "-"),
                     ", ".join(f"{f['label']} ({f['severity']})" for f in r.false_positives) or "none"))
    if normal is not None:
        rows.append(("normal load (idle + build)", "-", "-", "-", "-",
                     ", ".join(f"{f['label']} ({f['severity']})" for f in normal["false_positives"]) or "none"))
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def check_tools(names: list[str]) -> list[str]:
    need = {"cpuhog": "stress-ng", "ctxswitch": "stress-ng", "iosat": "fio"}
    return sorted({need[BY_NAME[n].module] for n in names if BY_NAME[n].module in need
                   and shutil.which(need[BY_NAME[n].module]) is None})


def run_suite(names: list[str], fast: bool = False, normal: bool = True, data_dir: Path | None = None,
              idle_s: float = 60.0, build_s: float = 100.0) -> dict:
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ks-scenarios-"))
    keep = data_dir is not None
    data = data_dir.absolute() if data_dir else tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    fifo = str(tmp / "ks.fifo")
    logs = tmp if not keep else data
    inj_log = logs / "scenario-injectors.log"
    p = Pipeline(data, fifo, logs / "ks-run.log")
    results: list[Result] = []
    normal_out = None
    pipeline_status = {}
    try:
        say(f"ks run started (data {data}); waiting for >= {WARM_S:.0f} s of data")
        st = p.wait_warm()
        pipeline_status = {c["name"]: c.get("attach") or c["state"] for c in st.get("children", [])}
        say("pipeline warm: " + ", ".join(f"{k}={v}" for k, v in pipeline_status.items()))
        for name in names:
            if not p.alive():
                raise RuntimeError("ks run exited during the suite")
            results.append(run_scenario(p, BY_NAME[name], fast, inj_log))
        if normal:
            normal_out = run_normal(p, idle_s, build_s, inj_log)
    finally:
        rc = p.stop()
        say(f"ks run stopped (rc {rc})")
        shutil.rmtree(tmp, ignore_errors=True)  # the FIFO (and logs, unless kept in data_dir)
    ok = all(r.ok for r in results) and (normal_out is None or normal_out["ok"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": {"kernel": platform.release(), "cores": os.cpu_count(),
                 "mem_total_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)},
        "mode": "fast" if fast else "full",
        "detect_within_s": DETECT_WITHIN_S,
        "duration_s": round(time.time() - start, 1),
        "pipeline": pipeline_status,
        "data_dir": str(data) if keep else None,
        "scenarios": [{**asdict(r), "ok": r.ok} for r in results],
        "normal": normal_out,
        "ok": ok,
        "table": table(results, normal_out),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the fast scenarios, and no normal-load phase")
    ap.add_argument("--only", default=None, help="comma-separated scenario names (and `normal` for the normal-load phase): "
                    + ",".join(BY_NAME))
    ap.add_argument("--json", type=Path, default=None, help="write the results here (e.g. bench/scenarios.json)")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the pipeline's data here (default: a temp dir)")
    ap.add_argument("--no-normal", action="store_true", help="skip the normal-load phase")
    ap.add_argument("--idle", type=float, default=60.0, help="normal phase: idle seconds")
    ap.add_argument("--build", type=float, default=100.0, help="normal phase: build seconds")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = ap.parse_args(argv)
    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:<26} {'fast ' if s.fast else '     '}{'/'.join(s.expected):<36} {s.note}")
        return 0
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        want_normal = "normal" in names
        names = [n for n in names if n != "normal"]
        bad = [n for n in names if n not in BY_NAME]
        if bad:
            ap.error(f"unknown scenario(s) {', '.join(bad)}; known: {', '.join(BY_NAME)}")
    else:
        names = [s.name for s in SCENARIOS if s.fast or not a.fast]
        want_normal = not a.fast
    if os.geteuid() != 0:
        print("scenarios: the pipeline's eBPF tracers need root; run as root", file=sys.stderr)
        return 2
    missing = check_tools(names)
    if missing:
        print(f"scenarios: missing tools {', '.join(missing)} (apt-get install {' '.join(missing)})", file=sys.stderr)
        return 2
    normal = want_normal and not a.no_normal
    out = run_suite(names, fast=a.fast, normal=normal, data_dir=a.data_dir, idle_s=a.idle, build_s=a.build)
    print(out["table"])
    print(f"\n{out['date']}: {'all passed' if out['ok'] else 'FAILED'} in {out['duration_s']:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {a.json}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

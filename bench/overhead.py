"""What KernelSight costs, side by side with what operators already run, in one run.

The reference: Debian's prometheus-node-exporter, and Debian's prometheus scraping it every
1 s (TSDB in a temp dir), both on free loopback ports.
The pipeline: everything as `make run` starts it (`ks run`: tracers, libbpf-tools collectors,
scraper, ingest, agent serving /metrics) at --interval 1 on a private data dir, FIFO and
exporter port.
The two alternate, reference first and last: R K R K R for ROUNDS=2 (each K a fresh `ks run`).
The idle ratio is the pipeline's mean over its phases against the reference's mean over its
own, and each K is also set against the mean of the two R around it (the spread).  One R K R
did not settle the question: the reference alone moved 1.13-1.50 % of a core between phases
of one run (a VM's neighbours, its clock), as much as the margin being measured.
Each phase: WARMUP_S of warm-up, then MEASURE_S measured on an otherwise idle machine:
- CPU, % of one core, over the whole process tree (kernelsight.proctree: utime+stime
  plus what exited children were reaped into);
- PSS and RSS summed over the tree, mean of samples every PSS_EVERY_S.
The per-process table names each pipeline process by its supervisor child name
(DATA_DIR/status.json) and a child's own children by "name/comm", the mean over the phases.
Tracing cost with the whole pipeline running (in the first K, untraced just before and just
after it): the getppid loop and `tar -cf - /usr/include | cat >/dev/null`, pinned to the last
CPU, median of RUNS each, as CPU time (see _cpu_s) with the wall-clock ratio beside it.
Each K also counts the exec events the pipeline stored while idle, by command and parent
command: an idle host should exec next to nothing, and the pipeline nothing.

run() -> rows for bench/results.json (see bench/__main__.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from kernelsight.proctree import TreeMeter, descendants, names_below, pipeline_names

from bench._pipeline import Pipeline, query, wait

WARMUP_S = float(os.environ.get("KS_BENCH_WARMUP_S", "90"))
MEASURE_S = float(os.environ.get("KS_BENCH_MEASURE_S", "60"))
PSS_EVERY_S = 10.0
RUNS = int(os.environ.get("KS_BENCH_RUNS", "3"))
ROUNDS = max(1, int(os.environ.get("KS_BENCH_ROUNDS", "2")))  # pipeline phases; the reference runs one more
LOOP = 3_000_000


def measure(roots: list[int], seconds: float, name_of=None) -> dict:
    """CPU and memory of the trees below roots over `seconds` (kernelsight.proctree)."""
    m = TreeMeter(roots, name_of)
    end = time.monotonic() + seconds
    while True:
        m.sample()
        left = end - time.monotonic()
        if left <= 0:
            return m.finish()
        time.sleep(min(PSS_EVERY_S, left))


def _du_bytes(path: Path) -> int:
    n = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                n += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# ------------------------------------------------------------------ phases
def reference(tmp: Path) -> dict:
    """node_exporter + Prometheus scraping it every 1 s."""
    ne_bin = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    prom_bin = shutil.which("prometheus")
    if not ne_bin or not prom_bin:
        raise RuntimeError("prometheus-node-exporter and prometheus are needed (make setup installs them)")
    ne_port, prom_port = _free_port(), _free_port()
    (tmp / "tsdb").mkdir(parents=True)
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{ne_port}']}}]\n")
    procs = []
    with open(tmp / "reference.log", "wb") as log:
        procs.append(subprocess.Popen([ne_bin, f"--web.listen-address=127.0.0.1:{ne_port}"],
                                      stdout=log, stderr=log, start_new_session=True))
        procs.append(subprocess.Popen([prom_bin, f"--config.file={tmp / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=log, stderr=log, start_new_session=True))
    try:
        if not wait(lambda: _ready(f"http://127.0.0.1:{prom_port}/-/ready"), 60, 0.5):
            raise RuntimeError(f"prometheus did not start (see {tmp / 'reference.log'})")
        time.sleep(WARMUP_S)
        m = measure([p.pid for p in procs], MEASURE_S,
                    names_below({procs[0].pid: "node_exporter", procs[1].pid: "prometheus"}))
        m["disk_bytes"] = _du_bytes(tmp / "tsdb")
        return m
    finally:
        _stop(procs)


def mean_of(ms: list[dict]) -> dict:
    """Measurements of the same processes as one: every figure the mean over them, per process too."""
    out = {k: statistics.fmean(m[k] for m in ms) for k in ("cpu_pct", "pss_mib", "rss_mib", "disk_bytes")}
    zero = {"cpu_pct": 0.0, "pss_mib": 0.0, "rss_mib": 0.0}
    per_run = [{r["process"]: r for r in m["per_process"]} for m in ms]
    names = dict.fromkeys(n for r in per_run for n in r)  # a process missing from a run counts 0 there
    per = [{"process": n, **{k: round(statistics.fmean(r.get(n, zero)[k] for r in per_run), 2) for k in zero}}
           for n in names]
    per.sort(key=lambda r: (-r["cpu_pct"], -r["pss_mib"]))
    return {**out, "processes": max(m["processes"] for m in ms), "per_process": per}


def pipeline(ks: Pipeline) -> dict:
    time.sleep(WARMUP_S)
    t_from = time.time_ns()
    m = measure([ks.sup.pid], MEASURE_S, pipeline_names(ks.sup.pid, ks.data))
    t_to = time.time_ns()
    m["disk_bytes"] = _du_bytes(ks.data)
    # the pipeline's processes now: one it started is in here, or its parent is (a short-lived one)
    own = descendants(ks.sup.pid) | {ks.sup.pid}
    execs = query(ks.db, "SELECT e.comm, e.pid, e.ppid, COALESCE(p.comm, '?') FROM exec_events e "
                         "LEFT JOIN (SELECT pid, comm FROM exec_events GROUP BY pid) p ON p.pid = e.ppid "
                         "WHERE e.ts BETWEEN ? AND ?", (t_from, t_to))
    m["execs_pipeline"] = sum(1 for _, pid, ppid, _ in execs if pid in own or ppid in own)
    m["execs"] = len(execs)
    m["exec_by_comm"] = Counter((c, pc) for c, _, _, pc in execs)  # (command, parent command) -> execs
    return m


def _cpu_s(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of cmd pinned to the last CPU.  CPU = utime + stime of the command and the
    children it waited for (wait4's rusage): a BPF program on a syscall tracepoint runs in the
    caller's context and is counted there, while the time the loop spent preempted by the
    pipeline's own processes on that CPU is not (it made the wall-clock ratio swing 1.85x-2.38x
    between two runs of the same code)."""
    from bench.tracers import _pinned

    t0 = time.perf_counter()
    p = subprocess.Popen(_pinned(cmd), stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{cmd} exited {p.returncode}")
    return wall, ru.ru_utime + ru.ru_stime


def _tracing(fns: dict) -> dict[str, list[tuple[float, float]]]:
    return {name: [fn() for _ in range(RUNS)] for name, fn in fns.items()}


WALL, CPU = 0, 1  # the fields of _cpu_s's result


def _median(runs: list[tuple[float, float]], field: int) -> float:
    return statistics.median(r[field] for r in runs)


def run() -> list[dict]:
    from bench.tracers import _cpu, _workload

    rows: list[dict] = []
    refs: list[dict] = []
    kss: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ks_overhead_") as td:
        tmp = Path(td)
        wl = _workload(tmp)
        src = "/usr/include" if Path("/usr/include").is_dir() else "/usr/lib"

        fns = {"getppid": lambda: _cpu_s([wl, "getppid", str(LOOP)]),
               "tar_pipe": lambda: _cpu_s(["sh", "-c", f"tar -cf - -C {src} . | cat > /dev/null"])}
        fns["tar_pipe"]()  # page cache warm for every tar run
        refs.append(reference(tmp / "ref0"))
        for i in range(ROUNDS):
            if i == 0:
                before = _tracing(fns)
            # everything on, as `make run` starts it; the exporter on a free port
            ks = Pipeline("ks-overhead-", collectors=True, config=f"[exporter]\nport = {_free_port()}\n")
            try:
                ks.wait_vectors(4, 180)
                kss.append(pipeline(ks))
                if i == 0:
                    traced = _tracing(fns)
            finally:
                ks.stop()
                shutil.rmtree(ks.tmp, ignore_errors=True)
            if i == 0:
                after = _tracing(fns)
            refs.append(reference(tmp / f"ref{i + 1}"))
    ref, ksm = mean_of(refs), mean_of(kss)

    def around(key: str) -> list[float]:
        """Each pipeline phase against the mean of the two reference phases around it."""
        return [k[key] / statistics.fmean((refs[i][key], refs[i + 1][key])) for i, k in enumerate(kss)]

    pair_cpu, pair_pss = around("cpu_pct"), around("pss_mib")

    load = os.getloadavg()
    table = "; ".join(f"{r['process']} {r['cpu_pct']:.2f} % / {r['pss_mib']:.0f} MiB" for r in ksm["per_process"]
                      if r["cpu_pct"] >= 0.05 or r["pss_mib"] >= 5)
    ref_table = "; ".join(f"{r['process']} {r['cpu_pct']:.2f} % / {r['pss_mib']:.0f} MiB" for r in ref["per_process"])
    execs = sum(k["execs"] for k in kss)
    execs_pipeline = sum(k["execs_pipeline"] for k in kss)
    by_comm = sum((k["exec_by_comm"] for k in kss), Counter())
    exec_top = [f"{c} (parent {pc}) x{n}" for (c, pc), n in by_comm.most_common(8)]

    def pct(ms: list[dict]) -> str:
        return ", ".join(f"{m['cpu_pct']:.2f}" for m in ms)

    def spread(xs: list[float]) -> str:
        return ", ".join(f"{x:.2f}x" for x in xs)

    common = (f"idle, --interval 1, {WARMUP_S:.0f} s warm-up then {MEASURE_S:.0f} s measured per phase, one run "
              f"of {2 * ROUNDS + 1} alternating phases (reference first and last), {os.cpu_count()} CPUs; load avg "
              f"at the end {load[0]:.2f}")
    rows.append({
        "name": "idle_cpu_ratio_vs_node_exporter_prometheus", "value": ksm["cpu_pct"] / ref["cpu_pct"],
        "unit": "x", "ratio": ksm["cpu_pct"] / ref["cpu_pct"],
        "notes": f"ks run (whole pipeline) {ksm['cpu_pct']:.2f} % of a core (phases: {pct(kss)}), "
                 f"{ksm['processes']} processes vs node_exporter + Prometheus (1 s scrapes) {ref['cpu_pct']:.2f} % "
                 f"(phases: {pct(refs)}), {ref['processes']} processes; each pipeline phase against the reference "
                 f"phases around it: {spread(pair_cpu)}; target <= 1.0; {common}. Per process, mean of the phases "
                 f"(CPU / PSS): {table}. Reference: {ref_table}. Exec events stored while idle: {execs_pipeline} "
                 f"started by the pipeline, {execs - execs_pipeline} by the rest of the host"
                 + (f" ({', '.join(exec_top)})" if exec_top else ""),
        "per_process": ksm["per_process"], "reference_per_process": ref["per_process"],
        "pipeline_cpu_pct_phases": [round(k["cpu_pct"], 3) for k in kss],
        "reference_cpu_pct_phases": [round(r["cpu_pct"], 3) for r in refs],
        "ratio_per_pipeline_phase": [round(x, 3) for x in pair_cpu], "execs_by_pipeline_while_idle": execs_pipeline})
    rows.append({
        "name": "idle_pss_ratio_vs_node_exporter_prometheus", "value": ksm["pss_mib"] / ref["pss_mib"],
        "unit": "x", "ratio": ksm["pss_mib"] / ref["pss_mib"],
        "notes": f"PSS ks run {ksm['pss_mib']:.0f} MiB (RSS {ksm['rss_mib']:.0f} MiB) vs node_exporter + Prometheus "
                 f"{ref['pss_mib']:.0f} MiB (RSS {ref['rss_mib']:.0f} MiB); each pipeline phase against the reference "
                 f"phases around it: {spread(pair_pss)}; target <= 1.5; disk after a phase: "
                 f"ks {ksm['disk_bytes'] / 1e6:.1f} MB, Prometheus TSDB {ref['disk_bytes'] / 1e6:.1f} MB; {common}"})
    for name, unit, target in (("getppid", "ns/call", 2.5), ("tar_pipe", "s", None)):
        untraced = before[name] + after[name]
        b, t = _median(untraced, CPU), _median(traced[name], CPU)
        wall_ratio = _median(traced[name], WALL) / _median(untraced, WALL)
        value = t * 1e9 / LOOP if name == "getppid" else t
        rows.append({
            "name": f"tracer_syscall_{name}_overhead_full_pipeline", "value": value, "unit": unit, "ratio": t / b,
            "wall_ratio": wall_ratio,
            "notes": f"CPU time (utime+stime) pinned to cpu {_cpu()}, untraced (before the first ks run) / traced "
                     f"(whole pipeline up, idle) / untraced (after it), median of {RUNS} each: before "
                     f"{_median(before[name], CPU):.4f} s, traced {t:.4f} s, after {_median(after[name], CPU):.4f} s; "
                     f"wall clock {wall_ratio:.2f}x"
                     + (f"; target ratio <= {target}" if target else f"; tar -cf - -C {src} . | cat >/dev/null")})
    return rows


if __name__ == "__main__":
    import json

    for r in run():
        print(json.dumps(r))

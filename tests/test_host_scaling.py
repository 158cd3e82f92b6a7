"""Rules normalised to the machine: the recorded real capture (a TIME_WAIT tail of a
connection churn, then memhog driving available memory under 10 %) replayed as if taken
on a 64-core, 1 TiB host with eight NVMe disks.

Scaled: every rate a host 32 times the size would do 32 times as often (context
switches, forks, interrupts, faults, packets, socket counts, load), memory sizes by
1 TiB / MemTotal, and the one disk copied to eight drives each as busy as it was
(per-device latency and queue depth are properties of a disk, not of the host's size).  The same incidents must
be labelled on both hosts and nothing more; and the small host's figures, replayed
unscaled on the big host, are no longer a connection churn there (6,000 TIME_WAIT
sockets is a fault on 2 CPUs, not on 64)."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from conftest import REPO, tool
from kernelsight import db
from kernelsight.agent.engine import Agent

CAPTURE = REPO / "tests" / "fixtures" / "agent" / "memory_pressure.jsonl"
CORES, MEM_GB = 64, 1024.0
K = 32  # the big host does K times the small one's work


def scale_line(e: dict, mem_factor: float) -> list[dict]:
    t = e["type"]
    if t == "memory":
        return [{k: (round(v * mem_factor) if k.endswith("_kb") and isinstance(v, int) else v) for k, v in e.items()}]
    if t == "cpu":
        return [{**e, "cpu_count": CORES, **{k: e[k] * K for k in ("ctxt_total", "forks_total", "intr_total")
                                            if e.get(k) is not None},
                 **{k: e[k] * K for k in ("procs_running", "procs_blocked") if e.get(k) is not None}}]
    if t == "load":
        return [{**e, **{k: e[k] * K for k in ("load_1min", "load_5min", "load_15min") if e.get(k) is not None},
                 "runnable_tasks": e["runnable_tasks"] * K, "total_tasks": e["total_tasks"] * K}]
    if t == "vmstat":
        return [{k: (v * K if k.endswith("_total") and k != "oom_kill_total" and isinstance(v, int) else v)
                 for k, v in e.items()}]
    if t == "block":  # one virtual disk -> eight drives, each as busy as it was: 8x the I/O on 8x the disks
        return [{**e, "device": f"nvme{i}n1"} for i in range(8)]
    if t in ("net_dev", "tcp_retrans"):
        return [{k: (v * K if (k.endswith("_total") or k == "curr_estab") and isinstance(v, int) else v)
                 for k, v in e.items()}]
    if t == "tcp":
        return [{k: (v * K if isinstance(v, int) and k != "ts" else v) for k, v in e.items()}]
    return [e]


def replay(tmp_path, name: str, lines: list[dict], cores: int, mem_gb: float):
    cap = tmp_path / f"{name}.jsonl"
    cap.write_bytes(b"\n".join(orjson.dumps(e) for e in lines) + b"\n")
    d = tmp_path / name
    out = subprocess.run([tool("ks-ingest"), "--replay", str(cap), "--data-dir", str(d)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    conn = db.connect_readonly(db.db_path(d))
    lo, hi = conn.execute("SELECT MIN(ts), MAX(ts) FROM memory_metrics").fetchone()
    conn.close()
    agent = Agent(d, stream=False, housekeeping=False)
    agent.cores, agent.mem_gb = cores, mem_gb  # the machine the capture is judged for
    opened = []
    for t in range(lo + 5 * 10**9, hi + 1, 5 * 10**9):
        opened += [(t, c.tracked.finding.label) for c in agent.step(t) if c.kind == "opened"]
    agent.close()
    return opened


@pytest.fixture(scope="module")
def capture():
    if tool("ks-ingest") is None:
        pytest.skip("ks-ingest is not installed")
    return [orjson.loads(x) for x in CAPTURE.read_bytes().splitlines() if x.strip()]


def test_the_same_incidents_on_a_host_32_times_the_size(capture, tmp_path):
    total_kb = next(e["mem_total_kb"] for e in capture if e["type"] == "memory")
    mem_factor = MEM_GB * 1024 * 1024 / total_kb
    small = replay(tmp_path, "small", capture, 2, total_kb / 1024 / 1024)
    big = replay(tmp_path, "big", [s for e in capture for s in scale_line(e, mem_factor)], CORES, MEM_GB)
    print("small host:", small)
    print("big host:  ", big)
    labels = lambda opened: sorted({label for _, label in opened})  # noqa: E731
    assert "Memory Pressure" in labels(small)
    assert labels(big) == labels(small), "a host 32 times the size doing 32 times the work: the same incidents"


def test_a_small_hosts_busy_day_is_nothing_on_a_big_host(capture, tmp_path):
    small_on_big = replay(tmp_path, "small_on_big", capture, CORES, MEM_GB)
    small_on_small = replay(tmp_path, "small_on_small", capture, 2, 23.5)
    print("on 2 CPUs:", small_on_small, "\non 64 CPUs:", small_on_big)
    assert "Connection Churning" in {label for _, label in small_on_small}
    assert "Connection Churning" not in {label for _, label in small_on_big}
    # Memory is judged as a share of the machine's own: still Memory Pressure.
    assert "Memory Pressure" in {label for _, label in small_on_big}

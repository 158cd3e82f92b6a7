"""ks-oom-kill, the first generic tracer (bpf/oom_kill.bpf.c + schema/events/oom_kill.json
only, printed by the generic loader), against a real OOM kill.

A Python child allocates inside a memory cgroup limited to 64 MiB (cgroup v1
memory controller, or v2 where it has the memory controller) until the kernel
OOM-kills it.  The test checks what the product does: an oom_victim line names
the pid the test saw die by SIGKILL, the line passes ks-ingest's own validator
and lands in its schema-generated table, and its figures are the ones the
kernel printed in its own "Killed process" report.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import tracer_bin
from kernelsight.schema import load_schema

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.bpf

LIMIT = 64 << 20
ALLOC = "a = []\nwhile True:\n    a.append(bytearray(8 << 20))\n"




@pytest.fixture(scope="module", autouse=True)
def bpf_capable():
    if os.geteuid() != 0:
        pytest.skip("loading eBPF programs and making cgroups needs root")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("kernel has no BTF (/sys/kernel/btf/vmlinux); CO-RE tracers cannot load")


def _mounts():
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            yield mnt, fstype, opts.split(",")


@pytest.fixture
def memcg():
    """A fresh memory cgroup limited to LIMIT, without swap: (dir, procs file)."""
    name = f"ks_test_oom_{os.getpid()}"
    cg = None
    for mnt, fstype, opts in _mounts():
        if fstype == "cgroup" and "memory" in opts:
            cg = Path(mnt) / name
            cg.mkdir()
            (cg / "memory.limit_in_bytes").write_text(str(LIMIT))
            if (cg / "memory.memsw.limit_in_bytes").exists():
                (cg / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
            (cg / "memory.swappiness").write_text("0")
            break
    else:
        for mnt, fstype, _ in _mounts():
            ctl = Path(mnt) / "cgroup.controllers"
            if fstype == "cgroup2" and ctl.exists() and "memory" in ctl.read_text().split():
                sub = Path(mnt) / "cgroup.subtree_control"
                if "memory" not in sub.read_text().split():
                    sub.write_text("+memory")
                cg = Path(mnt) / name
                cg.mkdir()
                (cg / "memory.max").write_text(str(LIMIT))
                if (cg / "memory.swap.max").exists():
                    (cg / "memory.swap.max").write_text("0")
                break
    if cg is None:
        pytest.skip("no cgroup v1 or v2 hierarchy with the memory controller")
    try:
        yield cg
    finally:
        for _ in range(100):  # a killed task leaves its cgroup once fully exited
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)
        assert not cg.exists(), f"could not remove {cg}"


def _kernel_report(pid: int) -> dict | None:
    """The kernel's own "Killed process PID (comm) total-vm:...kB ..." line."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    pat = (rf"Killed process {pid} \((?P<comm>.*?)\) total-vm:(?P<total_vm_kb>\d+)kB, anon-rss:(?P<anon_rss_kb>\d+)kB, "
           r"file-rss:(?P<file_rss_kb>\d+)kB, shmem-rss:(?P<shmem_rss_kb>\d+)kB, UID:(?P<uid>\d+) "
           r"pgtables:(?P<pgtables_kb>\d+)kB oom_score_adj:(?P<oom_score_adj>-?\d+)")
    m = None
    for m in re.finditer(pat, out):
        pass
    if not m:
        return None
    return {k: (v if k == "comm" else int(v)) for k, v in m.groupdict().items()}


@pytest.mark.parametrize("mode", ["tp_btf", "tracepoint"])
def test_oom_kill_reports_the_victim(memcg, mode, tmp_path):
    schema = load_schema()
    tracer = subprocess.Popen([tracer_bin("ks-oom-kill"), "--output", "-", "--attach", mode, "--interval", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        err = tracer.stderr.readline().decode()
        assert f"attached (attach_mode={mode}" in err, err + tracer.stderr.read().decode()
        # sh puts itself in the cgroup, then execs the allocator: same pid
        victim = subprocess.Popen(["sh", "-c", f'echo $$ > {memcg}/cgroup.procs && exec "$0" -c "$1"',
                                   sys.executable, ALLOC])
        victim.wait(timeout=120)  # guards a hang only; the OOM kill comes in seconds
        assert victim.returncode == -signal.SIGKILL, f"allocator ended with {victim.returncode}, not SIGKILL"
    finally:
        tracer.send_signal(signal.SIGINT)
        out, rest = tracer.communicate(timeout=30)
    assert tracer.returncode == 0, rest.decode()

    lines = out.splitlines()
    for line in lines:  # every line the tracer wrote meets the contract ks-ingest enforces
        schema.validate_line(line)
    events = [orjson.loads(line) for line in lines]
    mine = [e for e in events if e["type"] == "oom_victim" and e["pid"] == victim.pid]
    assert len(mine) == 1, f"no single oom_victim line for pid {victim.pid}: {events}"
    ev = mine[0]
    assert ev["comm"].startswith("python")
    assert ev["killer_pid"] == victim.pid  # the allocator itself ran the memcg OOM killer
    assert ev["anon_rss_kb"] > 0
    if mode == "tp_btf":
        assert ev["memcg"] == memcg.name
        assert ev["memcg_id"] == os.stat(memcg).st_ino
    else:  # the classic tracepoint has no task pointer: null, never a made-up cgroup
        assert ev["memcg"] is None and ev["memcg_id"] is None
    stats = [e for e in events if e["type"] == "tracer_stats"]
    assert stats and all(s["attach_mode"] == mode and s["tracer"] == "oom_kill" for s in stats)
    assert sum(s["events_emitted"] for s in stats) == len([e for e in events if e["type"] == "oom_victim"])

    kernel = _kernel_report(victim.pid)
    if kernel is not None:  # the kernel's own report is the oracle for every figure it prints
        assert {k: ev[k] for k in kernel} == kernel

    # ks-ingest stores it: the schema-generated table takes the validated row
    db = sqlite3.connect(tmp_path / "t.db")
    spec = schema.events["oom_victim"]
    db.executescript(spec.create_sql())
    _, row = schema.validate_line(orjson.dumps(ev))
    db.execute(spec.insert_sql(), row)
    assert db.execute("SELECT pid, comm, memcg FROM oom_victim_events").fetchall() == [(ev["pid"], ev["comm"],
                                                                                         ev["memcg"])]

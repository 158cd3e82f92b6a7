"""The four CO-RE eBPF tracers, loaded for real (root + kernel BTF).

Each test runs an installed ks-* binary with --output -, drives a deterministic C
workload (bench/ks_workload.c, compiled here with cc), stops the tracer with SIGINT
once the workload is done (Tracer.stop) and checks the JSON lines against
schema/events/*.json.  No test hopes a fixed --duration outlasts its workload.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {t: e for p in sorted((REPO / "schema/events").glob("*.json"))
          for t, e in json.loads(p.read_text())["events"].items()}

pytestmark = pytest.mark.bpf


def tracer_bin(name: str) -> str:
    return conftest.tracer_bin(name, required=True)


@pytest.fixture(scope="session", autouse=True)
def bpf_capable():
    if os.geteuid() != 0:
        pytest.skip("loading eBPF programs needs root (CAP_BPF + CAP_PERFMON)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("kernel has no BTF (/sys/kernel/btf/vmlinux); CO-RE tracers cannot load")


@pytest.fixture(scope="session")
def workload(tmp_path_factory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build bench/ks_workload.c")
    out = tmp_path_factory.mktemp("wl") / "ks_workload"
    subprocess.run([cc, "-O2", "-o", str(out), str(REPO / "bench/ks_workload.c")], check=True)
    return str(out)


def check_line(line: str) -> dict:
    assert len(line.encode()) + 1 <= 4096, "line longer than 4096 bytes"
    ev = json.loads(line)
    spec = SCHEMA.get(ev.get("type"))
    assert spec is not None, f"unknown type {ev.get('type')}"
    fields = spec["fields"]
    assert set(ev) == set(fields) | {"type", "ts"}, f"{ev['type']}: keys {sorted(set(ev) ^ (set(fields) | {'type', 'ts'}))}"
    assert isinstance(ev["ts"], int) and ev["ts"] > 1_600_000_000 * 10**9
    for k, f in fields.items():
        v = ev[k]
        if v is None:
            # a field added later ("since") is nullable, as schema/__init__.py reads it
            assert (spec.get("nullable") or f.get("since")) and not f.get("required"), f"{ev['type']}.{k} is null"
            continue
        t = f["type"]
        if t == "int":
            assert isinstance(v, int) and not isinstance(v, bool), (k, v)
        elif t == "float":
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (k, v)
        elif t == "str":
            assert isinstance(v, str), (k, v)
        elif t == "int_array":
            assert isinstance(v, list) and all(isinstance(x, int) for x in v), (k, v)
    return ev


def prog_ids_of(pid: int) -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]") if any(x.get("pid") == pid for x in p.get("pids", []))}


def live_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


class Tracer:
    """Start a tracer, wait until it says it is attached, collect its lines."""

    def __init__(self, name: str, *args: str):
        self.p = subprocess.Popen([tracer_bin(name), "--output", "-", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = ""
        while True:
            line = self.p.stderr.readline()
            if not line:
                out, err = self.p.communicate()
                pytest.fail(f"{name} exited before attaching (rc {self.p.returncode}): {self.stderr}{err}")
            self.stderr += line
            if "attached" in line:
                break
        m = re.search(r"attach_mode=(\w+)", line)
        self.mode = m.group(1) if m else None
        self.progs = prog_ids_of(self.p.pid)
        self.early: list[str] = []

    def wait_stats(self, pred) -> dict:
        """Read lines until a tracer_stats line satisfies pred (kept for finish())."""
        for line in self.p.stdout:
            self.early.append(line)
            ev = json.loads(line)
            if ev["type"] == "tracer_stats" and pred(ev):
                return ev
        pytest.fail(f"tracer ended before the awaited tracer_stats line: {self.p.stderr.read()}")

    def stop(self) -> list[dict]:
        """SIGINT (as Ctrl-C), then finish(): the tracer emits its last, partial interval and exits,
        so a test waits for its workload, not for a --duration it hoped was long enough."""
        self.p.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self, timeout: float = 30) -> list[dict]:
        out, err = self.p.communicate(timeout=timeout)
        self.stderr += err
        assert self.p.returncode == 0, self.stderr
        events = [check_line(l) for l in self.early + out.splitlines()]
        # programs are freed asynchronously (RCU): allow a moment
        deadline = time.monotonic() + 5
        while self.progs & live_prog_ids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (self.progs & live_prog_ids()), "BPF programs left behind"
        return events


def by_type(events, t):
    return [e for e in events if e["type"] == t]


def run_wl(workload: str, *args: str, cpu: int | None = None) -> str:
    cmd = [workload, *args] if cpu is None else ["taskset", "-c", str(cpu), workload, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def start_wl(workload: str, *args: str):
    p = subprocess.Popen([workload, "-w", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline().split()[1])
    return p, pid


def go(p):
    out, _ = p.communicate("go\n", timeout=60)
    assert p.returncode == 0
    return out


def common_checks(events, tracer):
    ts = by_type(events, "tracer_stats")
    assert ts and all(e["tracer"] == tracer for e in ts)
    assert ts[-1]["attach_mode"] in ("tp_btf", "tracepoint", "raw_tp")
    assert by_type(events, "producer_stats")
    return ts


# --------------------------------------------------------------------- syscall
def test_syscall_counts_getppid_for_pid(workload):
    n = 20000
    p, pid = start_wl(workload, "getppid", str(n))
    t = Tracer("ks-syscall", "--pid", str(pid))
    assert t.mode == "tp_btf"  # what this kernel offers
    go(p)
    ev = t.stop()
    stats = [e for e in by_type(ev, "syscall_stats") if e["syscall"] == "getppid"]
    assert sum(e["count"] for e in stats) >= n
    assert all(e["pid"] == pid for e in by_type(ev, "syscall_stats"))
    ts = common_checks(ev, "syscall")
    assert sum(e["ringbuf_drops"] for e in ts) == 0


SLEEPS = ("nanosleep", "clock_nanosleep")
# After "go": one read of a pipe that the test fills 30 ms after the read
# blocked (seen in /proc/PID/syscall), then a 20 ms sleep.
SLOW_READ_THEN_SLEEP = """
import os, sys, time
print(os.getpid(), flush=True)
sys.stdin.readline()
print("reading", flush=True)
os.read(0, 1)
time.sleep(0.02)
"""


@pytest.mark.parametrize("args, reported", [
    ((), {"read"}),                         # default: blocking waits left out
    (("--slow-exclude", ""), {"read", "sleep"}),
    (("--slow-exclude", "read, futex"), {"sleep"}),
])
def test_syscall_slow_calls_leave_out_waits(args, reported):
    p = subprocess.Popen([sys.executable, "-c", SLOW_READ_THEN_SLEEP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    pid = int(p.stdout.readline())
    t = Tracer("ks-syscall", "--pid", str(pid), *args)
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "reading"
    # the read has blocked (syscall 0 = read) before the 30 ms start
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/syscall").read_text().startswith("0 "):
        assert time.monotonic() < deadline, "workload never blocked in read"
        time.sleep(0.001)
    time.sleep(0.03)
    p.stdin.write("x")
    p.communicate(timeout=30)
    assert p.returncode == 0
    ev = t.stop()
    slow = [e for e in by_type(ev, "syscall") if e["pid"] == pid]
    reads = [e for e in slow if e["syscall"] == "read"]
    sleeps = [e for e in slow if e["syscall"] in SLEEPS]
    assert bool(reads) == ("read" in reported), slow
    assert bool(sleeps) == ("sleep" in reported), slow
    for e in reads + sleeps:
        assert 19_000_000 <= e["latency_ns"] < 2_000_000_000
    # the per-syscall aggregates still count the calls left out
    stats = by_type(ev, "syscall_stats")
    assert max(e["max_ns"] for e in stats if e["syscall"] in SLEEPS) >= 19_000_000
    assert max(e["max_ns"] for e in stats if e["syscall"] == "read") >= 29_000_000


# After "go": one read of each kind of descriptor, each with data already waiting (no timing
# involved: --min-latency 0 reports every call), a read of a closed descriptor and a getppid.
# Each descriptor's kind as fstat() sees it is printed first: the oracle.
READ_EACH_KIND = """
import json, os, socket, stat, sys
r, w = os.pipe(); os.write(w, b"x")
a, b = socket.socketpair(); b.send(b"y")
efd = os.eventfd(1)
reg = os.open(sys.argv[1], os.O_RDONLY)
null = os.open("/dev/null", os.O_RDONLY)
closed = os.dup(null); os.close(closed)
names = {stat.S_IFIFO: "pipe", stat.S_IFSOCK: "socket", stat.S_IFREG: "file", stat.S_IFCHR: "char", 0: "anon"}
print(os.getpid(), json.dumps({fd: names[stat.S_IFMT(os.fstat(fd).st_mode)] for fd in (r, a.fileno(), efd, reg, null)}),
      flush=True)
sys.stdin.readline()
for fd in (r, a.fileno(), efd, reg, null):
    os.read(fd, 8)
try:
    os.read(closed, 1)
except OSError:
    pass
os.getppid()
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("attach", ["tp_btf", "tracepoint"])
def test_syscall_slow_call_names_its_descriptors_kind(attach, tmp_path):
    if attach == "tracepoint" and not Path("/sys/kernel/tracing/events/raw_syscalls").exists():
        pytest.skip("tracefs not mounted: the classic tracepoint fallback cannot attach")
    (tmp_path / "f").write_bytes(b"data")
    p = subprocess.Popen([sys.executable, "-c", READ_EACH_KIND, str(tmp_path / "f")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    pid_s, kinds = p.stdout.readline().split(" ", 1)
    pid, kinds = int(pid_s), {int(k): v for k, v in json.loads(kinds).items()}
    t = Tracer("ks-syscall", "--pid", str(pid), "--min-latency", "0", "--attach", attach)
    assert t.mode == attach
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "done"
    p.stdin.write("\n")
    p.communicate(timeout=30)
    calls = [e for e in by_type(t.stop(), "syscall") if e["pid"] == pid]
    reads = {e["arg0"]: e for e in calls if e["syscall"] == "read" and e["arg0"] in kinds}
    assert {fd: e["fd_type"] for fd, e in reads.items()} == kinds  # fstat's kinds, eventfd's "anon" included
    assert set(kinds.values()) == {"pipe", "socket", "anon", "file", "char"}
    bad = [e for e in calls if e["syscall"] == "read" and e["ret"] == -9]  # EBADF: nothing to look up
    assert bad and all(e["fd_type"] is None for e in bad)
    assert [e["fd_type"] for e in calls if e["syscall"] == "getppid"] == [None]  # its argument is no descriptor


def test_syscall_help_lists_slow_exclude_default():
    out = subprocess.run([tracer_bin("ks-syscall"), "--help"], capture_output=True, text=True, check=True).stdout
    text = " ".join(out.split())
    for name in ("clock_nanosleep", "futex", "epoll_wait", "poll", "wait4", "accept4", "io_getevents"):
        assert name in text
    r = subprocess.run([tracer_bin("ks-syscall"), "--slow-exclude", "futex,nosuchcall"], capture_output=True, text=True)
    assert r.returncode == 2 and "nosuchcall" in r.stderr


def test_syscall_blocking_calls_are_timed(workload):
    # Blocking reads leave the CPU mid-syscall: their start is parked by the
    # sched_switch hook (the per-CPU slot is handed over), so every one must
    # still be counted and timed (the child waits 50 us before each reply).
    k = 300
    p, pid = start_wl(workload, "pingpong", str(k))
    t = Tracer("ks-syscall", "--pid", str(pid))
    go(p)
    ev = t.stop()
    reads = [e for e in by_type(ev, "syscall_stats") if e["syscall"] == "read"]
    assert sum(e["count"] for e in reads) >= k
    assert max(e["max_ns"] for e in reads) >= 40_000
    assert sum(e["map_full_errors"] for e in by_type(ev, "tracer_stats")) == 0


def test_syscall_tracepoint_fallback(workload):
    if not Path("/sys/kernel/tracing/events/raw_syscalls").exists():
        pytest.skip("tracefs not mounted: the classic tracepoint fallback cannot attach")
    p, pid = start_wl(workload, "getppid", "5000")
    t = Tracer("ks-syscall", "--pid", str(pid), "--attach", "tracepoint")
    assert t.mode == "tracepoint"
    go(p)
    ev = t.stop()
    assert sum(e["count"] for e in by_type(ev, "syscall_stats") if e["syscall"] == "getppid") >= 5000
    assert by_type(ev, "tracer_stats")[-1]["attach_mode"] == "tracepoint"


def test_bad_args_exit_2():
    r = subprocess.run([tracer_bin("ks-syscall"), "--interval", "abc"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ io_latency
def _disk_of(path: Path):
    st = os.stat(path)
    maj, mnr = os.major(st.st_dev), os.minor(st.st_dev)
    sysd = Path(f"/sys/dev/block/{maj}:{mnr}")
    if not sysd.exists():
        return None
    if (sysd / "partition").exists():
        sysd = sysd.resolve().parent
    return tuple(int(x) for x in (sysd / "dev").read_text().split(":"))


def _biolat_hist(text: str) -> list[int]:
    h = [0] * 32
    for m in re.finditer(r"^\s*(\d+) -> (\d+)\s*: (\d+)", text, re.M):
        lo, cnt = int(m.group(1)), int(m.group(3))
        h[0 if lo == 0 else lo.bit_length() - 1] += cnt
    return h


def _median_bucket(h):
    tot, cum = sum(h), 0
    for i, c in enumerate(h):
        cum += c
        if cum * 2 >= tot:
            return i
    return None


def test_io_latency_odirect_reads(workload, tmp_path):
    base = tmp_path
    if subprocess.run(["stat", "-f", "-c", "%T", str(base)], capture_output=True, text=True).stdout.strip() == "tmpfs":
        base = REPO / "build"
        base.mkdir(exist_ok=True)
    f = base / "ks_io_test.bin"
    with open(f, "wb") as fh:
        fh.write(os.urandom(32 << 20))
        os.fsync(fh.fileno())
    disk = _disk_of(f)
    if disk is None:
        pytest.skip(f"{f} is not on a block device")
    n = 1500
    biolat = shutil.which("biolatency") or ("/usr/sbin/biolatency" if Path("/usr/sbin/biolatency").exists() else None)
    try:
        # Until stopped: every read has completed once the workload returns (O_DIRECT, synchronous),
        # however long the disk took; a fixed --duration lost the last reads on a slow disk.
        t = Tracer("ks-io-latency")
        bl = subprocess.Popen([biolat, "-D", "3", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) if biolat else None
        time.sleep(1.0)
        run_wl(workload, "odirect", str(f), str(n))
        ev = t.stop()
        lines = [e for e in by_type(ev, "io_latency") if (e["dev_major"], e["dev_minor"]) == disk]
        assert sum(e["count"] for e in lines if e["op"] == "read") >= n
        common_checks(ev, "io_latency")
        for e in lines:
            if e["count"]:
                assert e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"]
        if bl:
            out, _ = bl.communicate(timeout=30)
            ours = [0] * 32
            for e in lines:
                ours = [a + b for a, b in zip(ours, e["hist_log2_us"])]
            theirs = _biolat_hist(out)
            if sum(theirs) >= n // 2:
                assert abs(_median_bucket(ours) - _median_bucket(theirs)) <= 1, (ours, theirs)
    finally:
        f.unlink(missing_ok=True)


# ------------------------------------------------------------------ page_fault
def test_page_fault_touch_pages(workload):
    m = 3000
    p, pid = start_wl(workload, "touch", str(m))
    t = Tracer("ks-page-fault", "--pid", str(pid))
    go(p)
    ev = t.stop()
    rows = [e for e in by_type(ev, "page_fault") if e["pid"] == pid]
    assert sum(e["faults"] for e in rows) >= m
    st = by_type(ev, "page_fault_stats")
    assert sum(e["faults"] for e in st) >= m
    assert all(e["latency_avg_ns"] is None for e in st)
    ts = common_checks(ev, "page_fault")
    assert "latency" in ts[-1]["notes"]


# ----------------------------------------------------------------------- sched
def test_sched_pingpong_voluntary(workload):
    k = 500
    p, pid = start_wl(workload, "pingpong", str(k))
    t = Tracer("ks-sched", "--pid", str(pid))
    go(p)
    ev = t.stop()
    assert sum(e["voluntary"] for e in by_type(ev, "sched_stats")) >= k
    common_checks(ev, "sched")


def test_sched_runqlat_agrees(workload):
    runqlat = shutil.which("runqlat") or ("/usr/sbin/runqlat" if Path("/usr/sbin/runqlat").exists() else None)
    if not runqlat:
        pytest.skip("libbpf-tools runqlat not installed")
    t = Tracer("ks-sched")
    rq = subprocess.Popen([runqlat, "2", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    run_wl(workload, "pingpong", "3000")
    out, _ = rq.communicate(timeout=30)
    ev = t.stop()
    ours = [0] * 32
    for e in by_type(ev, "sched_stats"):
        ours = [a + b for a, b in zip(ours, e["runq_hist_log2_us"])]
        assert e["nr_running_avg"] is None or e["nr_running_avg"] >= 0
    theirs = _biolat_hist(out)
    assert sum(theirs) > 1000 and sum(ours) > 1000
    assert abs(_median_bucket(ours) - _median_bucket(theirs)) <= 1, (ours, theirs)
    assert len(by_type(ev, "sched")) >= 1


# ------------------------------------------------------------ exclusion file
def write_pids(path: Path, lines) -> None:
    """As the supervisor does: write aside, then rename over the file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{x}\n" for x in lines))
    os.replace(tmp, path)


def excluded(n: int):
    return lambda e: f"exclude_pids_file: {n} pids" in e["notes"]


@pytest.mark.parametrize("tracer, args, work", [
    ("ks-syscall", ("--slow-exclude", ""), ("nanosleep", "20")),
    ("ks-page-fault", ("--top", "100"), ("touch", "20000")),
])
def test_exclude_pids_file_listed_after_start(workload, tmp_path, tracer, args, work):
    f = tmp_path / "pipeline.pids"   # missing at start: nothing excluded
    listed, lpid = start_wl(workload, *work)
    twin, tpid = start_wl(workload, *work)
    t = Tracer(tracer, "--exclude-pids-file", str(f), "--interval", "0.2", *args)
    t.wait_stats(excluded(0))
    # tpid + 4096 shares the twin's prefilter bit: the twin must still be traced
    write_pids(f, ["not-a-pid", lpid, lpid, tpid + 4096])
    t.wait_stats(excluded(2))
    go(listed)
    go(twin)
    ev = t.stop()
    if tracer == "ks-syscall":
        seen = {e["pid"] for e in by_type(ev, "syscall") if e["syscall"] in SLEEPS}
    else:  # faults of one process may be split over intervals
        seen = {e["pid"] for e in by_type(ev, "page_fault")}
        assert sum(e["faults"] for e in by_type(ev, "page_fault") if e["pid"] == tpid) >= 20000
    assert tpid in seen and lpid not in seen
    assert len(re.findall(r"warning: .*pipeline.pids: skipped 1 line", t.stderr)) == 1, t.stderr


def test_exclude_pids_file_sched_and_updates(workload, tmp_path):
    # sched lines carry no pid: one tracer per process with --pid shows the filter
    k = 300
    f = tmp_path / "pipeline.pids"
    write_pids(f, [])
    listed, lpid = start_wl(workload, "pingpong", str(k))
    twin, tpid = start_wl(workload, "pingpong", str(k))
    tl = Tracer("ks-sched", "--pid", str(lpid), "--exclude-pids-file", str(f), "--interval", "0.2", "-v")
    tt = Tracer("ks-sched", "--pid", str(tpid), "--exclude-pids-file", str(f), "--interval", "0.2")
    write_pids(f, [lpid])
    tl.wait_stats(excluded(1))
    tt.wait_stats(excluded(1))
    go(listed)
    go(twin)
    time.sleep(0.5)
    f.unlink()          # a missing file excludes nothing again
    tl.wait_stats(excluded(0))
    evl, evt = tl.stop(), tt.stop()
    assert sum(e["voluntary"] + e["wakeups"] for e in by_type(evl, "sched_stats")) == 0
    assert not by_type(evl, "sched")
    assert sum(e["voluntary"] for e in by_type(evt, "sched_stats")) >= k
    assert re.search(r"excluding 1 pid listed in .*pipeline.pids", tl.stderr)


# --------------------------------------------------------------- cgroup ids
CGROUP_WORK = """
import os, sys
print(os.getpid(), flush=True)
sys.stdin.readline()
for i in range(50):                      # 50 failed openat: a syscall_errors line (>= 10)
    try:
        open(f"/nonexistent/ks_cg_{i}")
    except OSError:
        pass
b = bytearray(8 << 20)                   # page faults
for i in range(0, len(b), 4096):
    b[i] = 1
print("reading", flush=True)
sys.stdin.read(1)                        # one slow read
"""


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype = line.split()[:3]
        if fstype == "cgroup2":
            return Path(mnt)
    return None


def test_cgroup_id_is_the_tasks_cgroup2_inode():
    """syscall, syscall_errors and page_fault lines carry bpf_get_current_cgroup_id(): the task's
    cgroup v2 id, which is the inode of its directory in the cgroup2 mount (on this hybrid host
    the unified hierarchy).  Oracle: os.stat of a cgroup made for the test."""
    mnt = _cgroup2_mount()
    if mnt is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup2 mount")
    cg = mnt / f"ks_test_tracer_cg_{os.getpid()}"
    cg.mkdir()
    p = None
    try:
        p = subprocess.Popen(["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$0" -c "$1"', sys.executable,
                              CGROUP_WORK], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pid = int(p.stdout.readline())
        sc = Tracer("ks-syscall", "--pid", str(pid))
        pf = Tracer("ks-page-fault", "--pid", str(pid))
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "reading"
        time.sleep(0.05)  # the read blocks past the 10 ms slow-call threshold
        p.stdin.write("x")
        p.communicate(timeout=30)
        ino = os.stat(cg).st_ino
        ev = sc.stop() + pf.stop()
        slow = [e for e in by_type(ev, "syscall") if e["pid"] == pid and e["syscall"] == "read"]
        errs = [e for e in by_type(ev, "syscall_errors") if e["pid"] == pid and e["syscall"] == "openat"]
        faults = [e for e in by_type(ev, "page_fault") if e["pid"] == pid]
        assert slow and errs and faults, (slow, errs, faults)
        assert {e["cgroup_id"] for e in slow + errs + faults} == {ino}
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)

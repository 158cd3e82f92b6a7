"""OOM kills: libbpf-tools oomkill when it attaches, else the oom:mark_victim tracepoint.

oomkill attaches a kprobe to oom_kill_process, so on a kernel without kprobes
it cannot run.  The fallback needs no BPF at all: a private tracefs instance
(instances/kernelsight_oom_<pid>) with only oom:mark_victim enabled, read
through its trace_pipe by a `cat` child that the runner owns like any tool.
Each victim line becomes one oom_kill event, stamped with the kernel's own
running count (/proc/vmstat oom_kill, which the scraper also reports as
oom_kill_total).
"""

from __future__ import annotations

import os
import re
import subprocess

from .base import CollectorSpec, Parser

TRACEFS = "/sys/kernel/tracing"
INSTANCE_PREFIX = "kernelsight_oom_"

# oomkill.c: "%s Triggered by PID %d (\"%s\"), OOM kill of PID %d (\"%s\"), %lld pages, loadavg: %s"
OOMKILL_RE = re.compile(
    r'Triggered by PID (?P<fpid>\d+) \("(?P<fcomm>.*?)"\), OOM kill of PID (?P<tpid>\d+) '
    r'\("(?P<tcomm>.*?)"\), (?P<pages>\d+) pages'
)
# trace_pipe: "<comm>-<pid>  [cpu] flags  secs: mark_victim: pid=N comm=X total-vm=NkB ..."
TRACE_RE = re.compile(r"^\s*(?P<tcomm>.*)-(?P<tpid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\].*?\bmark_victim:\s*(?P<rest>.*)$")
KV_RE = {
    "pid": re.compile(r"\bpid=(\d+)"),
    "comm": re.compile(r"\bcomm=(.*?)(?= total-vm=| uid=| oom_score_adj=|$)"),
    "total_vm_kb": re.compile(r"total-vm=(\d+)kB"),
    "anon_rss_kb": re.compile(r"anon-rss=(\d+)kB"),
    "file_rss_kb": re.compile(r"file-rss[:=](\d+)kB"),
    "shmem_rss_kb": re.compile(r"shmem-rss[:=](\d+)kB"),
    "uid": re.compile(r"\buid=(\d+)"),
    "pgtables_kb": re.compile(r"pgtables=(\d+)kB"),
    "oom_score_adj": re.compile(r"oom_score_adj=(-?\d+)"),
}


def read_oom_kill_total(path: str = "/proc/vmstat") -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _event(now_ns: int, source: str, **kw) -> dict:
    ev = {
        "type": "oom_kill",
        "ts": now_ns,
        "source": source,
        "victim_pid": None,
        "victim_comm": None,
        "trigger_pid": None,
        "trigger_comm": None,
        "pages": None,
        "total_vm_kb": None,
        "anon_rss_kb": None,
        "file_rss_kb": None,
        "shmem_rss_kb": None,
        "pgtables_kb": None,
        "uid": None,
        "oom_score_adj": None,
        "oom_kill_total": read_oom_kill_total(),
    }
    ev.update(kw)
    return ev


class OomkillParser(Parser):
    def feed(self, line: str, now_ns: int) -> list[dict]:
        m = OOMKILL_RE.search(line)
        if not m:
            if line.strip() and not line.startswith("Tracing"):
                self.skipped += 1
            return []
        return [_event(now_ns, "oomkill", victim_pid=int(m["tpid"]), victim_comm=m["tcomm"],
                       trigger_pid=int(m["fpid"]), trigger_comm=m["fcomm"], pages=int(m["pages"]))]


class MarkVictimParser(Parser):
    def feed(self, line: str, now_ns: int) -> list[dict]:
        m = TRACE_RE.match(line)
        if not m:
            if line.strip():
                self.skipped += 1
                self.warn(f"unparsable trace line: {line.strip()[:160]!r}")
            return []
        rest = m["rest"]
        kw: dict = {"trigger_pid": int(m["tpid"]), "trigger_comm": m["tcomm"].strip()}
        for key, rx in KV_RE.items():
            v = rx.search(rest)
            if v is None:
                continue
            if key == "comm":
                kw["victim_comm"] = v.group(1)
            elif key == "pid":
                kw["victim_pid"] = int(v.group(1))
            else:
                kw[key] = int(v.group(1))
        if "victim_pid" not in kw:
            self.skipped += 1
            self.warn(f"mark_victim line without pid: {line.strip()[:160]!r}")
            return []
        return [_event(now_ns, "tracefs:oom/mark_victim", **kw)]


def _instance_dir(pid: int | None = None) -> str:
    return os.path.join(TRACEFS, "instances", f"{INSTANCE_PREFIX}{pid or os.getpid()}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove_instance(d: str) -> None:
    try:
        _write(os.path.join(d, "events/oom/mark_victim/enable"), "0")
    except OSError:
        pass
    try:
        os.rmdir(d)
    except OSError:
        pass


def ensure_tracefs() -> None:
    """Mount tracefs if needed; raise OSError with a reason in words otherwise."""
    if os.path.isdir(os.path.join(TRACEFS, "instances")):
        return
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not os.path.isdir(os.path.join(TRACEFS, "instances")):
        raise OSError(f"tracefs is not mounted at {TRACEFS} and mounting it failed: {r.stderr.strip()}")


def tracepoint_available() -> str | None:
    """None when oom:mark_victim can be used, else the reason in words."""
    try:
        ensure_tracefs()
    except OSError as e:
        return str(e)
    if not os.path.isdir(os.path.join(TRACEFS, "events/oom/mark_victim")):
        return "kernel has no oom:mark_victim tracepoint"
    return None


def setup_tracepoint() -> list[str]:
    ensure_tracefs()
    # Instances left by runners that were killed -9 (their pid is gone).
    inst = os.path.join(TRACEFS, "instances")
    for name in os.listdir(inst):
        if name.startswith(INSTANCE_PREFIX):
            pid = name[len(INSTANCE_PREFIX):]
            if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                _remove_instance(os.path.join(inst, name))
    d = _instance_dir()
    os.makedirs(d, exist_ok=True)
    _write(os.path.join(d, "events/oom/mark_victim/enable"), "1")
    return ["cat", os.path.join(d, "trace_pipe")]


def teardown_tracepoint() -> None:
    _remove_instance(_instance_dir())


MARK_VICTIM = CollectorSpec(
    name="oomkill",
    tool="tracefs:oom/mark_victim",
    doc="OOM victims from the oom:mark_victim tracepoint (tracefs), with /proc/vmstat oom_kill",
    args=lambda interval: [],
    parser=MarkVictimParser,
    event_types=("oom_kill",),
    attach="tracepoint oom:mark_victim via a private tracefs instance (no BPF)",
    setup=setup_tracepoint,
    teardown=teardown_tracepoint,
    check=tracepoint_available,
    banner=False,
)

SPEC = CollectorSpec(
    name="oomkill",
    tool="oomkill",
    doc="OOM kills: who triggered, who was killed",
    args=lambda interval: [],
    parser=OomkillParser,
    event_types=("oom_kill",),
    attach="kprobe oom_kill_process",
    fallback=MARK_VICTIM,
)

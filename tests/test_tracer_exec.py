"""ks-exec (bpf/exec.bpf.c + bpf/exec.c), the default source of `exec` events, against
real execs made by the test: the line names the child's pid, the test process as its
parent, the new comm and the argv formatted as execsnoop -q prints it, also for hostile
arguments (quotes, a space, bytes that are not UTF-8, newline and control characters);
a huge argv is cut to a valid line of at most 4096 bytes; Debian's execsnoop, the
fallback, sees the same exec the same way.  Plus, without BPF: `ks run` leaves execsnoop
out of the collectors host when ks-exec attaches, and keeps it when it does not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from conftest import tracer_bin
from kernelsight.collectors.execsnoop import ExecsnoopParser
from kernelsight.schema import LINE_MAX, load_schema

REPO = Path(__file__).resolve().parents[1]
TRUE = "/bin/true"




@pytest.fixture(scope="module")
def bpf_capable():
    if os.geteuid() != 0:
        pytest.skip("loading eBPF programs needs root")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("kernel has no BTF (/sys/kernel/btf/vmlinux); CO-RE tracers cannot load")


class Tracer:
    """ks-exec writing to a pipe; lines() stops it and returns its parsed lines."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([tracer_bin("ks-exec"), "--output", "-", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline().decode(errors="replace")
        if "attached" not in line:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.skip(f"ks-exec cannot attach here: {line.strip()} {err.decode(errors='replace')[:300]}")

    def lines(self) -> list[bytes]:
        # An exec's record is in the ring buffer before the exec'd process can be waited for,
        # and on SIGINT the tracer consumes what is left before it exits: no wait needed.
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0
        return out.splitlines(keepends=True)


def _exec_line(raw: list[bytes], pid: int) -> dict:
    schema = load_schema()
    found = []
    for line in raw:
        assert len(line) <= LINE_MAX and line.endswith(b"\n") and line.count(b"\n") == 1
        etype, _ = schema.validate_line(line)  # what ks-ingest accepts
        obj = orjson.loads(line)
        if etype == "exec" and obj["pid"] == pid:
            found.append(obj)
    assert len(found) == 1, f"one exec line for pid {pid}: {found}"
    return found[0]


def _run(argv: list[bytes]) -> int:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    assert p.wait(timeout=10) == 0
    return p.pid


HOSTILE = [TRUE.encode(), b"a b", b'q"uote', b"x\xffy\xfe", "é€".encode(), b"nl\nx", b"tab\tctl\x01\x7f",
           b"back\\slash", b""]


@pytest.mark.bpf
def test_exec_line_hostile_argv(bpf_capable):
    t = Tracer()
    pid = _run(HOSTILE)
    e = _exec_line(t.lines(), pid)
    assert e["ppid"] == os.getpid()
    assert e["comm"] == "true"
    assert e["ret"] == 0
    assert e["uid"] == os.getuid()
    assert e["cgroup_id"] > 0
    assert e["args_truncated"] == 0
    # execsnoop -q: each argument in double quotes, a quote inside as \", one space between;
    # bytes that are not UTF-8 as U+FFFD (the execsnoop collector's decode("utf-8", "replace"))
    expected = " ".join('"' + a.decode("utf-8", "replace").replace('"', '\\"') + '"' for a in HOSTILE)
    assert e["args"] == expected
    assert e["args"] == '"/bin/true" "a b" "q\\"uote" "x\ufffdy\ufffd" "é€" "nl\nx" "tab\tctl\x01\x7f" ' \
                        '"back\\slash" ""'


@pytest.mark.bpf
def test_exec_line_cut(bpf_capable):
    t = Tracer()
    many = _run([TRUE.encode(), *[f"arg{i}".encode() for i in range(30)]])
    # argv beyond the 2048 bytes read, each byte escaped as \u00XX in JSON: the line must still fit
    huge = _run([TRUE.encode(), *[b"\x01" * 200 for _ in range(15)]])
    lines = t.lines()
    e = _exec_line(lines, many)
    assert e["args"] == " ".join(f'"{a}"' for a in [TRUE, *[f"arg{i}" for i in range(19)]]) + " ..."
    assert e["args_truncated"] == 1
    e = _exec_line(lines, huge)
    assert e["args_truncated"] == 1
    assert e["args"].startswith('"/bin/true" "\x01\x01') and e["args"].endswith("...")
    assert len(e["args"]) < 2048


@pytest.mark.bpf
def test_exec_pid_filter(bpf_capable):
    """--exclude-pid: the excluded process's own execs make no line (ks_filtered)."""
    child = subprocess.Popen(["/bin/sh", "-c", "read x; exec /bin/true excluded"], stdin=subprocess.PIPE)
    t = Tracer("--exclude-pid", str(child.pid))
    child.communicate(b"go\n", timeout=10)
    other = _run([TRUE.encode(), b"kept"])
    lines = t.lines()
    assert _exec_line(lines, other)["args"] == '"/bin/true" "kept"'
    assert child.returncode == 0  # it did exec /bin/true
    assert not [o for o in map(orjson.loads, lines) if o["type"] == "exec" and o["pid"] == child.pid]


@pytest.mark.bpf
def test_exec_oracle_execsnoop(bpf_capable):
    """Debian's execsnoop (the fallback) reports the same pid, parent, comm and arguments."""
    snoop = shutil.which("execsnoop") or ("/usr/sbin/execsnoop" if os.path.exists("/usr/sbin/execsnoop") else None)
    stdbuf = shutil.which("stdbuf")
    if not snoop or not stdbuf:
        pytest.skip("libbpf-tools execsnoop (or stdbuf) not installed")
    ex = subprocess.Popen([stdbuf, "-oL", snoop, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    header = ex.stdout.readline()  # printed once attached
    if not header.startswith(b"PCOMM"):
        ex.kill()
        _, err = ex.communicate()
        pytest.skip(f"execsnoop cannot attach here: {err.decode(errors='replace')[:300]}")
    t = Tracer()
    argv = [TRUE.encode(), b"a b", b'q"uote', b"x\xffy", b"plain"]
    pid = _run(argv)
    mine = _exec_line(t.lines(), pid)
    time.sleep(0.3)
    ex.send_signal(signal.SIGINT)
    out, _ = ex.communicate(timeout=10)
    parser = ExecsnoopParser(1)
    theirs = []
    for ln in (header + out).decode("utf-8", "replace").splitlines():
        theirs += [e for e in parser.feed(ln, 0) if e["pid"] == pid]
    assert len(theirs) == 1, out[-2000:]
    for k in ("pid", "ppid", "comm", "ret", "args"):
        assert mine[k] == theirs[0][k], k


def test_ks_run_leaves_execsnoop_out_when_ks_exec_attaches(monkeypatch):
    """children.py: collector:execsnoop not started, with the reason, when ks-exec attaches;
    hosted as before when it is not built or cannot attach, or when tracers are off."""
    from kernelsight import children
    from kernelsight.collectors import supervisor_specs

    probe = [{"name": n, "tool": n, "available": True, "reason": None, "attach": "x", "kind": "collector"}
             for n in ("runqlat", "execsnoop", "exitsnoop")]
    monkeypatch.setattr(children, "tracer_attaches", lambda exe, timeout_s=0: exe == "ks-exec")
    replaced = children.replaced_collectors(children.RunOptions(fifo="x"))
    assert replaced == {"execsnoop": "replaced by ks-exec (sched:sched_process_exec, no per-syscall cost)"}
    specs = supervisor_specs("/f", 1, probe=probe, replaced=replaced)
    host = specs[0]
    assert host["argv"][host["argv"].index("--only") + 1] == "runqlat,exitsnoop"
    assert "execsnoop" not in host["details"]["hosts"]
    [ex] = [s for s in specs if s["name"] == "collector:execsnoop"]
    assert not ex["available"] and ex["reason"].startswith("replaced by ks-exec")

    assert children.replaced_collectors(children.RunOptions(fifo="x", tracers=False)) == {}
    monkeypatch.setattr(children, "tracer_attaches", lambda exe, timeout_s=0: False)
    assert children.replaced_collectors(children.RunOptions(fifo="x")) == {}
    host = supervisor_specs("/f", 1, probe=probe, replaced={})[0]
    assert host["argv"][host["argv"].index("--only") + 1] == "runqlat,execsnoop,exitsnoop"


def test_tracer_attaches_needs_the_executable(monkeypatch):
    from kernelsight import children

    monkeypatch.setattr(children, "find_executable", lambda name: None)
    assert children.tracer_attaches("ks-exec") is False

"""The collector runner: restarts, backoff, unavailable tools, clean stop, no stray children.

Uses stand-in tools (KS_TOOLS_DIR) so each behaviour is deterministic; the
live tests use the real ones.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time

import pytest
from test_collectors_util import FIXTURES, CollectorProc


def _pid_gone(pid: int) -> bool:
    """True when pid no longer exists, not even as a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            f.read()
    except FileNotFoundError:
        return True
    return False  # alive, or a zombie nobody reaped: either way not gone


def _wait_gone(pids, timeout=5.0) -> list[int]:
    end = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < end:
        left = [p for p in left if not _pid_gone(p)]
        time.sleep(0.05)
    return left


def _tool(tmp_path, name: str, body: str) -> str:
    d = tmp_path / "tools"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text(f"#!{sys.executable}\n{body}")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(d)


LONG_RUNNING = """
import sys, time
print("Tracing run queue latency... Hit Ctrl-C to end.", flush=True)
try:
    while True:
        time.sleep(0.2)
except KeyboardInterrupt:
    sys.exit(0)
"""


def test_tool_dying_mid_stream_is_parsed_then_restarted(tmp_path):
    died = FIXTURES / "runqlat_1_died.txt"
    tools = _tool(tmp_path, "runqlat", f"""
import sys
sys.stdout.buffer.write(open({str(died)!r}, "rb").read()); sys.stdout.flush()
sys.stderr.write("simulated crash\\n"); sys.exit(1)
""")
    with CollectorProc("runqlat", env={"KS_TOOLS_DIR": tools}) as c:
        ok = c.wait_for(lambda evs: sum(e["type"] == "collector_status" and e["state"] == "exited" for e in evs) >= 2,
                        timeout=10)
        assert ok, c.stderr
        rc = c.stop()
    assert rc == 0
    st = c.status()
    exited = [s for s in st if s["state"] == "exited" and s["reason"] != "stopped by request"]
    assert exited[0]["reason"].startswith("exited with code 1: simulated crash; restart 1 in 0.5 s")
    assert exited[1]["reason"].endswith("restart 2 in 1.0 s")  # exponential backoff
    assert [s["restarts"] for s in exited[:2]] == [1, 2]
    # two complete histograms per run; the cut one is dropped, and counted as a warning
    runs = sum(1 for s in st if s["state"] == "running")
    assert len(c.of_type("runqlat")) == 2 * runs
    stats = c.of_type("producer_stats")
    assert stats and stats[-1]["warnings_total"] >= runs
    assert st[-1]["state"] == "exited" and st[-1]["reason"] == "stopped by request"


def test_killed_child_is_restarted_and_stop_leaves_no_child(tmp_path):
    tools = _tool(tmp_path, "runqlat", LONG_RUNNING)
    with CollectorProc("runqlat", env={"KS_TOOLS_DIR": tools}) as c:
        c.wait_running()
        first = c.status()[-1]
        assert first["state"] == "running" and first["pid"]
        os.kill(first["pid"], signal.SIGKILL)
        ok = c.wait_for(lambda evs: [e for e in evs if e["type"] == "collector_status" and e["state"] == "running"
                                     and e["pid"] != first["pid"]], timeout=10)
        assert ok, c.stderr
        second = [s for s in c.status() if s["state"] == "running"][-1]
        assert second["restarts"] == 1
        assert any(s["state"] == "exited" and "signal 9" in s["reason"] for s in c.status())
        assert _pid_gone(first["pid"]), "killed child left as a zombie"
        assert not _pid_gone(second["pid"])
        rc = c.stop()
    assert rc == 0
    assert _wait_gone([first["pid"], second["pid"]]) == []
    assert c.status()[-1]["reason"] == "stopped by request"
    assert c.of_type("producer_stats"), "no producer_stats line at exit"


def test_runner_killed_hard_takes_its_child_along(tmp_path):
    tools = _tool(tmp_path, "runqlat", LONG_RUNNING)
    with CollectorProc("runqlat", env={"KS_TOOLS_DIR": tools}) as c:
        c.wait_running()
        child = c.status()[-1]["pid"]
        c.proc.kill()  # SIGKILL: no chance to clean up; PR_SET_PDEATHSIG must do it
        c.proc.wait()
        assert _wait_gone([child]) == []


def test_tool_that_cannot_attach_is_unavailable_not_retried(tmp_path):
    tools = _tool(tmp_path, "tcpstates", """
import sys
sys.stderr.write("libbpf: failed to add legacy kprobe event for 'tcp_set_state+0x0': No such file or directory\\n")
sys.exit(1)
""")
    with CollectorProc("tcpstates", env={"KS_TOOLS_DIR": tools}) as c:
        rc = c.proc.wait(15)
        c.stop()
    assert rc == 2
    (st,) = c.status()
    assert st["state"] == "unavailable"
    if not os.path.exists("/sys/kernel/tracing/kprobe_events"):
        assert st["reason"].startswith("needs kprobes (tcp_set_state); this kernel has none")
    assert c.of_type("producer_stats")


def test_missing_tool_is_unavailable(tmp_path):
    (tmp_path / "empty").mkdir()
    with CollectorProc("execsnoop", env={"KS_TOOLS_DIR": str(tmp_path / "empty")}) as c:
        assert c.proc.wait(15) == 2
        c.stop()
    (st,) = c.status()
    assert st["state"] == "unavailable" and "not installed" in st["reason"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read tracefs")
def test_oomkill_falls_back_to_tracepoint_when_oomkill_cannot_attach(tmp_path):
    tools = _tool(tmp_path, "oomkill", """
import sys
sys.stderr.write("libbpf: failed to add legacy kprobe event for 'oom_kill_process+0x0': No such file or directory\\n")
sys.exit(1)
""")
    if not os.path.isdir("/sys/kernel/tracing/events/oom/mark_victim"):
        pytest.skip("kernel has no oom:mark_victim tracepoint")
    with CollectorProc("oomkill", env={"KS_TOOLS_DIR": tools}) as c:
        c.wait_for(lambda evs: any(e["type"] == "collector_status" and e["state"] == "running" for e in evs), 15)
        st = c.status()[-1]
        inst = f"/sys/kernel/tracing/instances/kernelsight_oom_{c.proc.pid}"
        assert os.path.isdir(inst)
        rc = c.stop()
    assert rc == 0
    assert st["tool"] == "tracefs:oom/mark_victim"
    assert "instead of oomkill, which needs kprobes" in st["reason"] or "instead of oomkill" in st["reason"]
    assert not os.path.exists(inst), "tracefs instance left behind"


# ---- events a tool says it lost -------------------------------------------------

LOST_FIXTURE = FIXTURES / "tcpstates_w_lost.txt"
LOST_STDERR = FIXTURES / "tcpstates_w_lost.stderr"


def test_lost_event_lines_of_the_tools_are_recognised():
    from kernelsight.collectors.runner import tool_lost_count

    # The printf formats in Debian's libbpf-tools 0.26 (strings of the binaries).
    assert tool_lost_count(b"lost 14341 events on CPU #0") == 14341
    assert tool_lost_count(b"Lost 12 events on CPU #3!") == 12
    assert tool_lost_count(b"\t/* lost 7 events */") == 7
    assert tool_lost_count(b"lost 1 events on CPU #1\r") == 1
    # Data rows that contain the words are rows, not losses.
    assert tool_lost_count(b"bash 1234 1 0 /bin/echo lost 5 events on CPU #1") is None
    assert tool_lost_count(b"lost events") is None
    assert tool_lost_count(b"") is None


def test_tool_lost_lines_are_counted_not_parsed(tmp_path):
    """tcpstates -w recorded with its perf buffer overrun (the tool stopped while
    3,000 loopback connections were made): its stderr says how many events it lost
    on each CPU; those go to dropped_tool_lost_total, the rows to events."""
    rows = LOST_FIXTURE.read_bytes().split(b"\n", 1)
    tools = _tool(tmp_path, "tcpstates", f"""
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
head, rest = open({str(LOST_FIXTURE)!r}, "rb").read().split(b"\\n", 1)
sys.stdout.buffer.write(head + b"\\n"); sys.stdout.flush()
sys.stderr.buffer.write(open({str(LOST_STDERR)!r}, "rb").read()); sys.stderr.flush()
sys.stdout.buffer.write(rest); sys.stdout.flush()
# runqslower and friends print theirs on stdout, with a '!'
sys.stdout.write("Lost 3 events on CPU #1!\\n"); sys.stdout.flush()
while True:
    time.sleep(0.2)
""")
    want_rows = len(rows[1].splitlines())
    recorded_lost = sum(int(line.split()[1]) for line in LOST_STDERR.read_text().splitlines())
    assert recorded_lost == 14341 + 14417
    with CollectorProc("tcpstates", env={"KS_TOOLS_DIR": tools}) as c:
        assert c.wait_for(lambda evs: sum(e["type"] == "tcp_state" for e in evs) >= want_rows
                          and any(e["type"] == "producer_stats" and e["dropped_tool_lost_total"] == recorded_lost + 3
                                  for e in evs)), c.stderr
        assert c.stop() == 0
    stats = c.of_type("producer_stats")
    assert stats[-1]["dropped_tool_lost_total"] == recorded_lost + 3
    assert stats[-1]["warnings_total"] == 0, "a lost line reached the parser"
    assert len(c.of_type("tcp_state")) == want_rows
    assert b"tool_lost_events" in c.stderr


class _Events:
    """A LineWriter stand-in: keeps what is emitted."""

    def __init__(self):
        self.events = []
        self.warnings_total = 0

    def emit(self, ev):
        self.events.append(ev)

    def count_tool_lost(self, n):
        pass


def _feeding(slot, data: bytes):
    """slot reads data as its child's stdout, through a real pipe."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    with os.fdopen(r, "rb") as stream:
        slot.on_readable(stream, "out")


def test_histogram_flush_waits_for_a_wakeup_and_keeps_the_time_it_was_read():
    """A histogram tool's block (its end is not marked) is complete once the output has been quiet
    idle_flush_s; it goes out at the next wake-up after that, stamped with the time its last line
    was read.  The host wakes for it only at idle_flush_max_s, and never for a tool whose parser
    has no idle step (an event tool)."""
    from types import SimpleNamespace

    from kernelsight.collectors import execsnoop, runqlat
    from kernelsight.collectors.runner import Host

    out = _Events()
    host = Host([runqlat.SPEC, execsnoop.SPEC], out, idle_flush_s=0.15, idle_flush_max_s=0.6)
    hist, lines = host.slots
    for slot in host.slots:
        slot.parser = slot.spec.parser(1)
        slot.child = SimpleNamespace(returncode=None, pid=0, poll=lambda: None)
        slot.attached = True
    block = (FIXTURES / "runqlat_1.txt").read_bytes().split(b"\n\n")
    _feeding(hist, block[1] + b"\n")  # one histogram, and nothing after it yet
    assert out.events == [] and hist.pending_idle and hist.idles and not lines.idles
    assert hist.next_deadline() == hist.last_out + 0.6
    _feeding(lines, (FIXTURES / "execsnoop_xq.txt").read_bytes())
    assert not lines.pending_idle and lines.next_deadline() is None
    out.events.clear()
    hist.tick(hist.last_out + 0.1)  # another wake-up, too soon: the block may go on
    assert out.events == []
    hist.tick(hist.last_out + 0.2)
    assert [(e["type"], e["ts"]) for e in out.events] == [("runqlat", hist.last_out_ns)]
    # The next block after a quiet spell: the previous one first, with its own time.
    _feeding(hist, block[2] + b"\n")
    first_ns = hist.last_out_ns
    hist.last_out -= 1.0  # as if read a second ago
    _feeding(hist, b"\n" + block[3] + b"\n")
    assert [e["ts"] for e in out.events[1:]] == [first_ns]
    assert host.idle_flush_max_s == 0.6 and Host([], out, idle_flush_s=1.0).idle_flush_max_s == 1.0

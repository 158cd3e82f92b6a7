"""run-all: one runner process hosting many collectors.

Each hosted tool keeps its own restarts and collector_status lines; killing one
tool restarts only it; stopping the runner leaves no child (checked by PID);
one LineWriter's producer_stats count exactly the lines written.  Stand-in
tools (KS_TOOLS_DIR) make it deterministic; the last test uses the real tools.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from test_collectors_util import CollectorProc, children_of, pid_gone, stand_in_tool, wait_gone

HIST_TOOL = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
print("Tracing run queue latency... Hit Ctrl-C to end.", flush=True)
while True:
    time.sleep(0.2)
"""

EXEC_TOOL = """
import os, signal, sys, time
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
print("PCOMM            PID    PPID   RET ARGS", flush=True)
i = 0
while True:
    i += 1
    print(f"{'standin':<16} {10000 + i:<6} {os.getpid():<6} {0:>3} \\"/bin/true\\" \\"{i}\\"", flush=True)
    time.sleep(0.05)
"""

TCPSTATES_KPROBE_FAIL = """
import sys
sys.stderr.write("libbpf: failed to add legacy kprobe event for 'tcp_set_state+0x0': No such file or directory\\n")
sys.exit(1)
"""


def _tools(tmp_path, **bodies) -> str:
    d = tmp_path / "tools"
    for name, body in bodies.items():
        stand_in_tool(d, name, body)
    return str(d)


def _running(c: CollectorProc, name: str) -> list[dict]:
    return [s for s in c.status() if s["collector"] == name and s["state"] == "running"]


def _wait_all_running(c: CollectorProc, names, timeout=15.0) -> dict[str, int]:
    ok = c.wait_for(lambda evs: all(any(e["type"] == "collector_status" and e["collector"] == n
                                        and e["state"] == "running" for e in evs) for n in names), timeout)
    assert ok, f"not all running: {c.status()}; stderr {c.stderr[-2000:]!r}"
    return {n: _running(c, n)[-1]["pid"] for n in names}


def test_run_all_hosts_several_kill_one_restarts_only_it_and_sigterm_leaves_no_child(tmp_path):
    tools = _tools(tmp_path, runqlat=HIST_TOOL, execsnoop=EXEC_TOOL, hardirqs=HIST_TOOL)
    names = ["runqlat", "execsnoop", "hardirqs"]
    with CollectorProc("all", env={"KS_TOOLS_DIR": tools}, cmd=["run-all", "--only", ",".join(names)]) as c:
        pids = _wait_all_running(c, names)
        assert len(set(pids.values())) == 3
        assert children_of(c.proc.pid) == set(pids.values()), "one process hosts all three tools"
        # kill one tool: only it is restarted
        os.kill(pids["runqlat"], signal.SIGKILL)
        ok = c.wait_for(lambda evs: any(e["type"] == "collector_status" and e["collector"] == "runqlat"
                                        and e["state"] == "running" and e["pid"] != pids["runqlat"]
                                        for e in evs), 10)
        assert ok, c.stderr[-2000:]
        new = _running(c, "runqlat")[-1]
        assert new["restarts"] == 1
        exited = [s for s in c.status() if s["collector"] == "runqlat" and s["state"] == "exited"]
        assert len(exited) == 1 and "signal 9" in exited[0]["reason"] and "restart 1 in 0.5 s" in exited[0]["reason"]
        assert pid_gone(pids["runqlat"]), "killed tool left as a zombie"
        time.sleep(0.5)
        for other in ("execsnoop", "hardirqs"):
            st = [s for s in c.status() if s["collector"] == other]
            assert [s["state"] for s in st] == ["running"], f"{other} was disturbed: {st}"
            assert st[0]["restarts"] == 0 and st[0]["pid"] == pids[other]
            assert not pid_gone(pids[other])
        assert children_of(c.proc.pid) == {new["pid"], pids["execsnoop"], pids["hardirqs"]}
        assert c.of_type("exec"), "events from the hosted execsnoop"
        # SIGTERM: every child stopped, reaped, exit 0
        c.proc.send_signal(signal.SIGTERM)
        rc = c.stop()
    assert rc == 0
    started = [pids["runqlat"], new["pid"], pids["execsnoop"], pids["hardirqs"]]
    assert wait_gone(started, timeout=1.0) == [], "a tool outlived the runner"
    for n in names:
        last = [s for s in c.status() if s["collector"] == n][-1]
        assert last["state"] == "exited" and last["reason"] == "stopped by request", last


def test_run_all_sigint_and_sigkill(tmp_path):
    tools = _tools(tmp_path, runqlat=HIST_TOOL, softirqs=HIST_TOOL)
    names = ["runqlat", "softirqs"]
    with CollectorProc("all", env={"KS_TOOLS_DIR": tools}, cmd=["run-all", "--only", ",".join(names)]) as c:
        pids = _wait_all_running(c, names)
        c.proc.send_signal(signal.SIGINT)
        assert c.proc.wait(10) == 0
    assert wait_gone(pids.values(), timeout=1.0) == []
    # killed -9, the runner cannot clean up: PR_SET_PDEATHSIG takes every tool along
    with CollectorProc("all", env={"KS_TOOLS_DIR": tools}, cmd=["run-all", "--only", ",".join(names)]) as c:
        pids = _wait_all_running(c, names)
        c.proc.kill()
        c.proc.wait()
        assert wait_gone(pids.values()) == []


def test_run_all_producer_stats_reconcile_with_lines_written(tmp_path):
    tools = _tools(tmp_path, runqlat=HIST_TOOL, execsnoop=EXEC_TOOL, exitsnoop=HIST_TOOL)
    names = ["runqlat", "execsnoop", "exitsnoop"]
    with CollectorProc("all", env={"KS_TOOLS_DIR": tools}, cmd=["run-all", "--only", ",".join(names)]) as c:
        _wait_all_running(c, names)
        assert c.wait_for(lambda evs: sum(e["type"] == "producer_stats" for e in evs) >= 3, 10)
        rc = c.stop()
    assert rc == 0
    evs = c.events
    stats = [(i, e) for i, e in enumerate(evs) if e["type"] == "producer_stats"]
    assert len(stats) >= 4 and stats[-1][0] == len(evs) - 1, "a producer_stats line at every interval and at exit"
    for i, s in stats:
        assert s["producer"] == "ks-collectors" and s["pid"] == c.proc.pid
        assert s["lines_written_total"] == i, "counts every line written before it, of every hosted tool"
        assert s["dropped_no_reader_total"] == s["dropped_full_total"] == s["dropped_oversize_total"] == 0
        assert s["write_errors_total"] == 0
    assert {e["collector"] for e in c.status()} == set(names)
    assert len(c.of_type("exec")) >= 5


def test_run_all_unavailable_tool_does_not_stop_the_others(tmp_path):
    tools = _tools(tmp_path, runqlat=HIST_TOOL, tcpstates=TCPSTATES_KPROBE_FAIL)  # execsnoop: not installed
    with CollectorProc("all", env={"KS_TOOLS_DIR": tools},
                       cmd=["run-all", "--only", "runqlat,tcpstates,execsnoop"]) as c:
        pid = _wait_all_running(c, ["runqlat"])["runqlat"]
        ok = c.wait_for(lambda evs: len([e for e in evs if e["type"] == "collector_status"
                                         and e["state"] == "unavailable"]) == 2, 10)
        assert ok, c.status()
        time.sleep(1.0)  # unavailable tools are not retried
        assert c.proc.poll() is None
        assert children_of(c.proc.pid) == {pid}
        rc = c.stop()
    assert rc == 0
    un = {s["collector"]: s["reason"] for s in c.status() if s["state"] == "unavailable"}
    assert "not installed" in un["execsnoop"]
    assert "tcp_set_state" in un["tcpstates"]
    assert sum(1 for s in c.status() if s["collector"] == "tcpstates") == 1


def test_run_all_exits_2_when_nothing_can_run_and_64_on_unknown_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with CollectorProc("all", env={"KS_TOOLS_DIR": str(tmp_path / "empty")},
                       cmd=["run-all", "--only", "runqlat,execsnoop"]) as c:
        assert c.proc.wait(15) == 2
        c.stop()
    assert sorted(s["collector"] for s in c.status() if s["state"] == "unavailable") == ["execsnoop", "runqlat"]
    assert c.of_type("producer_stats")
    r = subprocess.run([sys.executable, "-m", "kernelsight.collectors", "run-all", "--only", "runqlat,nosuch",
                        "--output", "-"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "nosuch" in r.stderr


def test_runner_path_does_not_load_heavy_modules():
    """structlog (and rich, asyncio with it), numpy, pandas: ~15-40 MB RSS each runner would carry."""
    code = (
        "import sys, kernelsight.collectors.__main__ as m, kernelsight.collectors.runner, "
        "kernelsight.collectors.registry, kernelsight.fifo\n"
        "heavy = sorted({n.split('.')[0] for n in sys.modules} & {'structlog', 'rich', 'numpy', 'pandas', "
        "'pyarrow', 'typer', 'asyncio', 'concurrent'})\n"
        "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
        "print(heavy, rss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]", out
    assert int(out[-1]) < 24 * 1024, f"runner imports take {out[-1]} kB RSS"


def test_supervisor_specs_shape():
    from kernelsight.collectors import supervisor_specs

    probe = [
        {"name": "runqlat", "tool": "runqlat", "available": True, "reason": "attached", "attach": "tp_btf sched"},
        {"name": "tcpstates", "tool": "tcpstates", "available": False, "attach": None,
         "reason": "needs kprobes (tcp_set_state); this kernel has none (CONFIG_KPROBES off)"},
        {"name": "oomkill", "tool": "tracefs:oom/mark_victim", "available": True, "attach": "tracepoint oom",
         "reason": "oomkill needs kprobes; using tracepoint instead"},
        {"name": "runqlen", "tool": "runqlen", "kind": "extra", "available": True, "reason": "attached",
         "attach": None},
    ]
    specs = supervisor_specs("/tmp/x.fifo", 2.5, probe=probe)
    assert [s["name"] for s in specs] == ["ks-collectors", "collector:tcpstates"]
    host, un = specs
    assert host["available"] is True and host["reason"] is None
    assert host["argv"][1:] == ["-m", "kernelsight.collectors", "run-all", "--only", "runqlat,oomkill",
                                "--output", "/tmp/x.fifo", "--interval", "2"]
    assert host["details"]["hosts"] == ["runqlat", "oomkill"]
    assert host["details"]["collectors"]["oomkill"]["tool"] == "tracefs:oom/mark_victim"
    assert "runqlat" in host["details"]["attach"]
    assert un["available"] is False and un["reason"].startswith("needs kprobes")
    assert un["argv"][3:5] == ["run", "tcpstates"]
    orjson.dumps(specs)  # plain data, for status.json
    nothing = supervisor_specs("/f", 1, probe=[dict(probe[1])])
    assert nothing[0]["name"] == "ks-collectors" and nothing[0]["available"] is False and nothing[0]["reason"]
    assert nothing[1]["name"] == "collector:tcpstates"


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="libbpf-tools need root")
def test_run_all_live_every_available_collector_in_one_process():
    from kernelsight.collectors import probe_all, supervisor_specs

    probe = probe_all(timeout_s=12)
    names = [p["name"] for p in probe if p["available"]]
    if not names:
        pytest.skip("no collector can attach here")
    host = supervisor_specs("-", 1, probe=probe)[0]
    assert host["details"]["hosts"] == names
    with CollectorProc("all", cmd=["run-all", "--only", ",".join(names)]) as c:
        pids = _wait_all_running(c, names, timeout=30)
        assert children_of(c.proc.pid) == set(pids.values())
        rc = c.stop()
    assert rc == 0
    assert wait_gone(pids.values(), timeout=1.0) == []
    assert all(s["state"] != "unavailable" for s in c.status())


CLOSES_OUTPUT_STAYS = """
import os, sys, time
print("Tracing run queue latency... Hit Ctrl-C to end.", flush=True)
time.sleep(0.3)
os.close(1); os.close(2)
while True:
    time.sleep(1)  # wedged: no output, no exit, ignores nothing
"""


def test_tool_that_closes_its_output_but_stays_is_killed_and_restarted_without_blocking_others(tmp_path):
    tools = _tools(tmp_path, runqlat=CLOSES_OUTPUT_STAYS, execsnoop=EXEC_TOOL)
    with CollectorProc("all", env={"KS_TOOLS_DIR": tools}, cmd=["run-all", "--only", "runqlat,execsnoop"]) as c:
        pids = _wait_all_running(c, ["runqlat", "execsnoop"])
        ok = c.wait_for(lambda evs: any(e["type"] == "collector_status" and e["collector"] == "runqlat"
                                        and e["state"] == "exited" for e in evs), 10)
        assert ok, c.stderr[-2000:]
        n_exec = len(c.of_type("exec"))
        time.sleep(0.5)
        assert len(c.of_type("exec")) > n_exec, "the other tool kept flowing meanwhile"
        assert "signal 9" in [s for s in c.status() if s["state"] == "exited"][0]["reason"]
        assert pid_gone(pids["runqlat"])
        rc = c.stop()
    assert rc == 0
    assert wait_gone([p for s in c.status() if (p := s["pid"])], timeout=1.0) == []

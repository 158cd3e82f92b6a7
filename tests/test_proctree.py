"""kernelsight.proctree: a process tree's CPU and memory, on recorded /proc files and against
the kernel's own per-process counters read by psutil."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
from kernelsight import proctree


def _stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    # the 52 fields of proc_pid_stat(5); the ones proctree reads are real, the rest plausible
    rest = [ppid, pid, pid, 0, -1, 4194560, 100, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, 1, 0, 1234]
    rest += [0] * (49 - len(rest))
    return f"{pid} ({comm}) S " + " ".join(str(x) for x in rest) + "\n"


def _write(proc: Path, pid: int, *args, pss_kb: int = 0, rss_kb: int = 0) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(_stat_line(pid, *args))
    (d / "smaps_rollup").write_text(f"00400000-7ffd [rollup]\nRss:  {rss_kb} kB\nPss:  {pss_kb} kB\n"
                                    f"Pss_Anon:  {pss_kb} kB\n")


def test_read_stat_takes_comm_up_to_the_last_parenthesis(tmp_path):
    # a hostile comm: parentheses, spaces and a fake field list inside it
    _write(tmp_path, 42, "a) S 1 2 (b c", 7, 30, 12)
    assert proctree.read_stat(42, str(tmp_path)) == (7, "a) S 1 2 (b c", 42)
    assert proctree.read_stat(43, str(tmp_path)) is None


def test_tree_follows_ppid_and_leaves_other_processes_out(tmp_path):
    _write(tmp_path, 1, "init", 0, 5, 5)
    _write(tmp_path, 100, "ks", 1, 1, 1)
    _write(tmp_path, 101, "ks-ingest", 100, 2, 2)
    _write(tmp_path, 102, "runqlat", 101, 3, 3)
    _write(tmp_path, 200, "other", 1, 9, 9)
    (tmp_path / "self").mkdir()  # not a pid
    assert sorted(proctree.tree([100], str(tmp_path))) == [100, 101, 102]


def test_an_exited_child_stays_counted_through_its_parents_cutime(tmp_path):
    _write(tmp_path, 100, "ks", 1, 10, 0, pss_kb=2048, rss_kb=4096)
    _write(tmp_path, 101, "ks-agent", 100, 50, 50, pss_kb=1024, rss_kb=2048)
    names = proctree.names_below({100: "supervisor", 101: "ks-agent"})
    m = proctree.TreeMeter([100], names, proc=str(tmp_path))
    m.sample()
    # the agent used 20 more ticks and exited; the supervisor reaped it (cutime+cstime += 120)
    # and used 5 ticks itself; a new collector child started and used 7
    (tmp_path / "101" / "stat").unlink()
    (tmp_path / "101" / "smaps_rollup").unlink()
    _write(tmp_path, 100, "ks", 1, 15, 0, 60, 60, pss_kb=2048, rss_kb=4096)
    _write(tmp_path, 103, "runqlat", 100, 4, 3, pss_kb=512, rss_kb=1024)
    m.sample()
    cost = m.finish()
    ticks = round(cost["cpu_pct"] / 100 * cost["wall_s"] * proctree.CLK_TCK)
    assert ticks == (15 + 120 + 7) - (10 + 100)  # 32: 5 + 20 (the agent's last) + 7
    by = {r["process"]: r for r in cost["per_process"]}
    assert set(by) == {"supervisor", "ks-agent", "supervisor/runqlat"}
    assert cost["samples"] == 2 and cost["pss_mib_max"] == 3.0 and cost["pss_mib"] == (3.0 + 2.5) / 2
    assert by["ks-agent"]["pss_mib"] == 1.0  # mean over the samples it was seen in


def test_cpu_of_a_live_tree_matches_the_kernels_counters():
    """A parent that runs a CPU-bound child to completion: the tree's CPU is the kernel's own
    utime+stime of the parent plus what it reaped (psutil reads the same counters by another path)."""
    code = ("import subprocess, sys; "
            "subprocess.run([sys.executable, '-c', 'sum(i * i for i in range(3_000_000))']); "
            "print('done', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        m = proctree.TreeMeter([p.pid])
        base = m.t0[p.pid][2]
        assert p.stdout.readline() == "done\n"
        m.sample()
        cost = m.finish()
        t = psutil.Process(p.pid).cpu_times()
        kernel_ticks = round((t.user + t.system + t.children_user + t.children_system) * proctree.CLK_TCK)
        ticks = round(cost["cpu_pct"] / 100 * cost["wall_s"] * proctree.CLK_TCK)
        assert abs(ticks - (kernel_ticks - base)) <= 1
        assert kernel_ticks - base > 0  # the child's work was there to count
        pss = sum(proctree.memory_kb(pid)[0] for pid in proctree.tree([p.pid]))
        assert pss > 0 and cost["processes"] == 1
    finally:
        p.stdin.close()
        p.wait()
        p.stdout.close()


def test_pipeline_names_are_the_supervisors_children(tmp_path):
    """bench overhead and the scenario suite name `ks run`'s tree from its status.json; before the
    supervisor has written one, every process is named by its comm below it."""
    import json

    t = {10: (1, "python", 0), 11: (10, "python", 0), 12: (11, "cat", 0)}
    assert proctree.pipeline_names(10, tmp_path)(12, t) == "supervisor (ks run)/cat"
    (tmp_path / "status.json").write_text(json.dumps({"children": [{"pid": 11, "name": "ks-agent"}, "junk",
                                                                   {"pid": None, "name": "gone"}]}))
    name_of = proctree.pipeline_names(10, tmp_path)
    assert [name_of(p, t) for p in (10, 11, 12)] == ["supervisor (ks run)", "ks-agent", "ks-agent/cat"]

"""`ks top`: pure rendering on a small database built here, the --once / --snapshot / --pid
command lines, and a real run in tmux against `ks run` with a fork storm."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import orjson
import pytest

from conftest import tool, wait_for
from kernelsight import db
from kernelsight import top as T
from kernelsight.agent.store import ensure_tables
from kernelsight.features.store import ensure_table

NS = 1_000_000_000


def put(conn, table: str, row: dict) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({','.join('?' * len(row))})", tuple(row.values()))


def add_observation(conn, label: str, status: str = "open", severity: str = "high", evidence=(), hints=("a hint",)):
    now = int(time.time())
    obs = {"summary": f"{label} summary", "reasoning_hints": list(hints),
           "context": {"recent_changes": [], "correlated_signals": list(evidence)}}
    put(conn, "observations", dict(rule=label.lower().replace(" ", "_"), key=label, label=label, status=status,
                                   severity=severity, signal_category="load", observation_type="symptom",
                                   persistence="transient", first_seen=now - 20, last_seen=now,
                                   closed_at=None if status == "open" else now, updates=3,
                                   summary=f"{label} summary", observation=orjson.dumps(obs).decode(),
                                   processes=orjson.dumps([{"pid": 4242, "comm": "spawner"}]).decode()))


@pytest.fixture
def data(tmp_path):
    """A data dir whose database has 30 s of scraper rows up to now and two observations."""
    d = tmp_path / "data"
    conn = db.connect(d / db.DB_NAME)
    ensure_tables(conn)
    ensure_table(conn)
    t0 = time.time_ns() - 30 * NS
    for k in range(31):
        ts = t0 + k * NS
        put(conn, "cpu_metrics", dict(ts=ts, cpu_count=2, user_pct=30.0, nice_pct=0.0, system_pct=10.0,
                                      idle_pct=55.0, iowait_pct=5.0, forks_total=1000 + 300 * k, procs_running=3,
                                      procs_blocked=0))
        put(conn, "memory_metrics", dict(ts=ts, mem_total_kb=4_000_000, mem_available_kb=1_000_000,
                                         swap_total_kb=0, swap_free_kb=0, dirty_kb=100))
        put(conn, "load_metrics", dict(ts=ts, load_1min=3.0, load_5min=2.0, load_15min=1.0, total_tasks=150))
        put(conn, "block_stats", dict(ts=ts, device="vda", reads_completed_total=10 * k, writes_completed_total=10 * k,
                                      read_time_ms_total=40 * k, write_time_ms_total=40 * k,
                                      sectors_read_total=2048 * k, sectors_written_total=0, util_pct=12.5))
        put(conn, "network_interface_stats", dict(ts=ts, interface="eth0", rx_bytes_total=1_048_576 * k,
                                                  tx_bytes_total=1024 * k))
        put(conn, "network_interface_stats", dict(ts=ts, interface="lo", rx_bytes_total=10**9 * k,
                                                  tx_bytes_total=10**9 * k))
        for res, v in (("cpu", 42.0), ("memory", 1.5), ("io", 0.5)):
            put(conn, "psi_metrics", dict(ts=ts, resource=res, some_avg10=v))
    add_observation(conn, "Process Explosion", evidence=["Baseline deviation: forks_per_sec z=30"],
                    hints=["Fork bomb or runaway spawning"])
    add_observation(conn, "Memory Pressure", status="closed")
    conn.close()
    return d


def frame(d, **kw) -> str:
    t = T.Top(d / db.DB_NAME, **kw)
    try:
        t.tick()
        t.tick()
        return T.render_text(t.view, 160, 50)
    finally:
        t.close()


def test_frame_shows_gauges_open_observation_evidence_and_hints(data):
    out = frame(data)
    print(out)
    assert "Process Explosion" in out and "Memory Pressure" not in out  # open ones only
    assert "1 open observation" in out and "HIGH" in out
    assert "evidence Baseline deviation: forks_per_sec z=30" in out
    assert "hint Fork bomb or runaway spawning" in out and "spawner (4242)" in out
    lines = {ln[2:13].strip(): ln[13:] for ln in out.splitlines() if ln.startswith("│ ")}
    assert "40.0 %" in lines["CPU busy"]  # 100 - idle - iowait
    assert "25.0 %" in lines["mem avail"]  # available / total
    assert "1.50" in lines["load/CPU"]  # load 3 on 2 CPUs
    assert "300 /s" in lines["forks"]
    assert "12.5 %" in lines["disk util"] and "4.0 ms" in lines["disk await"]  # 80 ms per 20 I/Os
    assert "1.0M/s" in lines["net rx"]  # eth0 only: lo is left out
    assert "42.0 %" in lines["PSI cpu"] and "1.5 %" in lines["PSI mem"]
    assert "processes (" in out and "top CPU" in out and "top memory" in out and "top disk I/O" in out
    assert all(len(ln) <= 160 for ln in out.splitlines())


def test_history_is_read_incrementally(data):
    conn = db.connect_readonly(data / db.DB_NAME)
    h = T.HostHistory()
    h.poll(conn)
    first = h.last_ts["cpu_metrics"]
    w = db.connect(data / db.DB_NAME)
    put(w, "cpu_metrics", dict(ts=first + NS, cpu_count=2, idle_pct=0.0, iowait_pct=0.0, forks_total=1000 + 300 * 31))
    w.close()
    h.poll(conn)
    assert h.last_ts["cpu_metrics"] == first + NS and h.series["cpu"].last() == 100.0
    h.poll(conn)  # nothing new: nothing changes
    assert h.series["cpu"].last() == 100.0
    conn.close()


def test_sparkline_scales_and_leaves_gaps():
    assert T.sparkline([0.0, 50.0, 100.0, None], 0, 100) == "▁▅█ "
    assert T.sparkline([None, None], 0, None) == "  "
    assert T.sparkline([2.0, 4.0], None, None) == "▅█"


def test_tree_and_pid_views(data):
    tree = frame(data, tree=True)
    assert "process tree" in tree and "busiest processes and their ancestors" in tree
    me = frame(data, pid=os.getpid())
    assert f"watching pid {os.getpid()}" in me and "TID" in me and str(os.getpid()) in me


def test_without_observations_table(tmp_path):
    d = tmp_path / "data"
    db.connect(d / db.DB_NAME).close()
    out = frame(d)
    assert "no open observations" in out and "CPU busy" in out


def run_ks(*args, timeout=120):
    return subprocess.run([tool("ks"), "top", *args], capture_output=True, text=True, timeout=timeout)


def test_once_and_snapshot_command_lines(data, tmp_path):
    r = run_ks("--once", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert "Process Explosion" in r.stdout and "CPU busy" in r.stdout
    snap = tmp_path / "snap.txt"
    r = run_ks("--snapshot", str(snap), "--data-dir", str(data), "--width", "120", "--height", "40")
    assert r.returncode == 0, r.stderr
    text = snap.read_text()
    assert "Process Explosion" in text and max(len(ln) for ln in text.splitlines()) == 120
    r = run_ks("--once", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "no database" in r.stderr


# ---------------------------------------------------------------- end to end, in tmux

def tmux(*args, check=True) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check, timeout=30).stdout


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the pipeline)")
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make test installs it)")
def test_live_in_tmux_shows_a_fork_storm_and_quits_cleanly(ks_env):
    if tool("ks-scraper") is None:
        pytest.skip("ks-scraper is not built (make build)")
    (ks_env.tmp / "config.toml").write_text("[exporter]\nenabled = false\n")  # no port shared with other runs
    env = {**ks_env.env, "KS_CONFIG": str(ks_env.tmp / "config.toml")}
    session = f"kstop{os.getpid()}"
    hz = os.sysconf("SC_CLK_TCK")
    with open(ks_env.tmp / "ks-run.log", "wb") as log:
        run = subprocess.Popen([tool("ks"), "run", "--data-dir", str(ks_env.data), "--fifo", ks_env.fifo,
                                "--no-tracers", "--no-collectors"], env=env, stderr=log)
    storm = None
    try:
        wait_for(lambda: ks_env.db.exists() and any(db.query_once(ks_env.db, "SELECT 1 FROM memory_metrics LIMIT 1")
                                                    if _has(ks_env.db, "memory_metrics") else []),
                 90, 0.5, "the scraper's first rows")
        # A shell in a fixed-size pane runs ks top, so the terminal can be checked after it quits.
        tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", "-c", str(ks_env.tmp),
             "bash --norc --noprofile")
        tmux("send-keys", "-t", session, f"{tool('ks')} top --data-dir {ks_env.data}; echo KS_TOP_EXIT=$?", "Enter")
        wait_for(lambda: "KernelSight top" in tmux("capture-pane", "-p", "-t", session), 60, 0.5, "the first frame")
        pid = int(subprocess.run(["pgrep", "-P", tmux("list-panes", "-t", session, "-F", "#{pane_pid}").strip(),
                                  "-f", "ks top"], capture_output=True, text=True).stdout.split()[0])
        t0, c0 = time.monotonic(), cpu_ticks(pid)
        storm = subprocess.Popen([sys.executable, "-m", "kernelsight.scenarios.forkstorm", "--seconds", "30",
                                  "--rate", "600"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        screen = wait_for(lambda: (lambda s: s if "Process Explosion" in s else None)(
            tmux("capture-pane", "-p", "-t", session)), 120, 1.0, "Process Explosion on the screen")
        print("\n" + "\n".join(ln.rstrip() for ln in screen.splitlines() if ln.strip()))
        # Keep watching to at least 60 s of measurement (the storm and after).
        while time.monotonic() - t0 < 60:
            time.sleep(1)
        c1, t1 = cpu_ticks(pid), time.monotonic()
        # t: the tree view, then s: a snapshot written to the pane's working directory.
        tmux("send-keys", "-t", session, "t")
        wait_for(lambda: "process tree" in tmux("capture-pane", "-p", "-t", session), 30, 0.5, "tree view")
        tmux("send-keys", "-t", session, "s")
        snap = wait_for(lambda: list(ks_env.tmp.glob("ks-top-*.txt")), 30, 0.5, "the snapshot file")
        assert "process tree" in snap[0].read_text() and "KernelSight top" in snap[0].read_text()
        tmux("send-keys", "-t", session, "q")
        wait_for(lambda: "KS_TOP_EXIT=0" in tmux("capture-pane", "-p", "-t", session), 30, 0.5, "ks top exited 0")
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        # The terminal is back: canonical mode and echo on, cursor shown, normal screen.
        tmux("send-keys", "-t", session, "stty -a | tr ' ' '\\n' | grep -xE 'icanon|echo' | sort | paste -sd, -",
             "Enter")
        wait_for(lambda: "echo,icanon" in tmux("capture-pane", "-p", "-t", session), 30, 0.5, "stty sane")
        assert tmux("display-message", "-p", "-t", session, "#{alternate_on}").strip() == "0"
        pct = 100.0 * (c1 - c0) / hz / (t1 - t0)
        print(f"ks top CPU over {t1 - t0:.0f} s at 1 s refresh with ks run and a fork storm: {pct:.2f} % of one core")
    finally:
        tmux("kill-session", "-t", session, check=False)
        for p in (storm, run):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _has(path, table: str) -> bool:
    try:
        return bool(db.query_once(path, "SELECT 1 FROM sqlite_master WHERE name=?", (table,)))
    except Exception:
        return False

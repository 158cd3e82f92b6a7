"""Resources that run out (agent/exhaustion.py): the worst filesystem's signals, the forecast
observations and who is named, on stored rows made here; the writer sampler on a live tmpfs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kernelsight import db
from kernelsight.agent.exhaustion import ExhaustionWatch, WriterSampler, fs_signals, is_full

SEC = 1_000_000_000
MIB = 1 << 20
T = 1_800_000_000 * SEC


def fs_row(conn, ts, mount, size, avail, readonly=0, itot=1000, ifree=900):
    conn.execute("INSERT INTO filesystem_stats (ts, mountpoint, device, fstype, readonly, size_bytes, free_bytes, "
                 "avail_bytes, reserved_bytes, inodes_total, inodes_free) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (ts, mount, "dev", "tmpfs", readonly, size, avail, avail, 0, itot, ifree))


@pytest.fixture
def conn(tmp_path):
    c = db.connect(tmp_path / "k.db")
    yield c
    c.close()


def filling(conn, seconds=120, start_avail=200 * MIB, rate=MIB):
    """/fill loses `rate` bytes a second; / stays put at 40 % used; /ro is full but read-only."""
    for k in range(seconds + 1):
        ts = T + k * SEC
        fs_row(conn, ts, "/fill", 300 * MIB, start_avail - k * rate)
        fs_row(conn, ts, "/", 100_000 * MIB, 60_000 * MIB)
        fs_row(conn, ts, "/ro", 50 * MIB, 0, readonly=1)
    conn.commit()
    return T + seconds * SEC


def test_signals_name_the_worst_filesystem_and_its_minutes_left(conn):
    end = filling(conn)
    s = fs_signals(conn, end, 15.0)
    left = 200 * MIB - 120 * MIB
    assert s["fs_avail_pct_worst"] == pytest.approx(100 * left / (300 * MIB))
    assert s["fs_avail_mb_worst"] == pytest.approx(left / MIB)
    assert s["fs_avail_minutes_worst"] == pytest.approx(left / MIB / 60)  # 1 MiB/s
    assert s["fs_full_count"] == 0  # the full read-only image does not count
    assert s["fs_inodes_avail_pct_worst"] == pytest.approx(90.0)


def test_full_counts_space_and_inodes(conn):
    fs_row(conn, T, "/a", 300 * MIB, 100 * 1024)     # 100 KiB left of 300 MiB: full
    fs_row(conn, T, "/b", 300 * MIB, 2 * MIB)        # 2 MiB left: not yet
    fs_row(conn, T, "/c", 300 * MIB, 200 * MIB, itot=100, ifree=0)  # out of inodes
    conn.commit()
    assert fs_signals(conn, T, 15.0)["fs_full_count"] == 2
    assert is_full(0, 4096 * MIB) and not is_full(2 * MIB, 300 * MIB) and not is_full(4096, 4096)


def test_forecast_for_the_filling_filesystem_only(conn):
    end = filling(conn)
    found = ExhaustionWatch().forecasts(conn, end)
    fs = [f for f in found if f.key.startswith("forecast:fs:")]
    assert [f.key for f in fs] == ["forecast:fs:/fill"]
    f = fs[0]
    assert f.observation_type == "forecast" and f.rule_id == "exhaustion_forecast"
    assert f.forecast["seconds_to_exhaustion"] == pytest.approx(80.0, rel=1e-6)  # 80 MiB at 1 MiB/s
    assert f.forecast["confidence"] == 1.0 and f.forecast["horizon_s"] in (30.0, 120.0, 600.0)
    assert "/fill" in f.summary and "runs out in ~80 s" in f.summary


def test_no_forecast_on_a_quiet_or_merely_full_filesystem(conn):
    for k in range(121):
        # 97 % full but not moving, and a small one that wobbles
        fs_row(conn, T + k * SEC, "/static", 300 * MIB, 9 * MIB)
        fs_row(conn, T + k * SEC, "/wobble", 300 * MIB, 150 * MIB + (k % 3) * 4096)
    conn.commit()
    assert ExhaustionWatch().forecasts(conn, T + 120 * SEC) == []


def test_pids_cgroup_forecast_from_limit_rows(conn):
    for k in range(31):
        conn.execute("INSERT INTO limit_stats (ts, tasks, pid_max, threads_max, pids_cgroup_path, pids_cgroup_current, "
                     "pids_cgroup_max, file_handles, file_max) VALUES (?,?,?,?,?,?,?,?,?)",
                     (T + k * SEC, 200, 32768, 190000, "/fork_loop", 10 + 5 * k, 400, 800, 2_000_000))
    conn.commit()
    found = {f.key: f for f in ExhaustionWatch().forecasts(conn, T + 30 * SEC)}
    assert set(found) == {"forecast:pids_cgroup:/fork_loop"}  # host PIDs and handles are flat
    assert found["forecast:pids_cgroup:/fork_loop"].forecast["seconds_to_exhaustion"] == pytest.approx(
        (400 - 160) / 5, rel=1e-6)


WRITER = """
import os, sys, time
with open(sys.argv[1], "wb") as f:
    print("ready", flush=True)
    while True:
        f.write(b"x" * 65536); f.flush(); time.sleep(0.01)
"""
NOISE = """
import time
with open("/dev/null", "wb") as f:
    while True:
        f.write(b"x" * (1 << 20)); time.sleep(0.005)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")
def test_writer_named_is_the_one_writing_to_that_filesystem(tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    procs = []
    try:
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / "out")], stdout=subprocess.PIPE, text=True)
        procs.append(w)
        assert w.stdout.readline().strip() == "ready"
        # writes more, but to /dev/null: not a writer to this filesystem
        procs.append(subprocess.Popen([sys.executable, "-c", NOISE]))
        s = WriterSampler()
        s.sample()
        time.sleep(1.0)
        s.sample()
        rows = s.writers_to(str(mnt))
        assert [r["pid"] for r in rows] == [w.pid]
        assert rows[0]["mount"] == str(mnt) and rows[0]["write_rate"].endswith("MiB/s")
        w.kill()
        w.wait()
        s.sample()
        # gone: the last writer is still named, as stopped
        again = s.writers_to(str(mnt))
        assert again[0]["pid"] == w.pid and again[0]["write_rate"].startswith("stopped")
        # Unmounted: the directory left is on the filesystem above, whose writers are not named for it.
        subprocess.run(["umount", str(mnt)], check=True)
        s.sample()
        assert [r["pid"] for r in s.writers_to(str(mnt))] == [w.pid]
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
        subprocess.run(["umount", str(mnt)], check=False)


def test_proc_io_parser_against_psutil_and_on_junk():
    import psutil

    from kernelsight.agent.attribution import parse_proc_io
    with open("/proc/self/io", "rb") as f:
        text = f.read()
    io = psutil.Process().io_counters()  # read back to back: this process writes nothing between
    assert parse_proc_io(text) == (io.write_chars, io.read_bytes, io.write_bytes)
    recorded = (b"rchar: 4096\nwchar: 123\nsyscr: 1\nsyscw: 2\nread_bytes: 8192\nwrite_bytes: 512\n"
                b"cancelled_write_bytes: 0\n")
    assert parse_proc_io(recorded) == (123, 8192, 512)
    assert parse_proc_io(b"") is None
    assert parse_proc_io(b"wchar: x\nread_bytes: 1\nwrite_bytes: 2\n") is None
    assert parse_proc_io(b"\xff\xfe wchar: 1") is None


def test_disk_users_names_the_process_moving_bytes(tmp_path):
    from kernelsight.agent.exhaustion import WriterSampler
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "comm").write_text("fio\n")
    io = proc / "42" / "io"
    io.write_bytes(b"wchar: 0\nread_bytes: 0\nwrite_bytes: 0\n")
    w = WriterSampler(str(proc))
    w.sample()
    io.write_bytes(b"wchar: 0\nread_bytes: 1073741824\nwrite_bytes: 0\n")
    w.prev_t -= 1.0  # as if a second had passed
    w.sample()
    (row,) = w.disk_users()
    assert row["pid"] == 42 and row["comm"] == "fio" and row["write_rate"] == "0.0 MiB/s"
    assert float(row["read_rate"].split()[0]) > 100


def test_disk_users_with_a_name_that_is_not_utf8(tmp_path):
    from kernelsight.agent.exhaustion import WriterSampler
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "comm").write_bytes(b"ev\xffil\n")
    (tmp_path / "7" / "io").write_bytes(b"wchar: 0\nread_bytes: 0\nwrite_bytes: 0\n")
    w = WriterSampler(str(tmp_path))
    w.sample()
    (tmp_path / "7" / "io").write_bytes(b"wchar: 0\nread_bytes: 0\nwrite_bytes: 4096\n")
    w.prev_t -= 1.0
    w.sample()
    assert [r["comm"] for r in w.disk_users()] == ["ev\\xffil"]  # escaped, not a crash


def test_a_pids_cgroup_leader_with_a_name_that_is_not_utf8_is_named_escaped(tmp_path):
    """The fork loop's parent is named from its comm like every other suspect: escaped, not a crash."""
    from kernelsight.agent.exhaustion import pids_cgroup_leader

    cg = tmp_path / "sys" / "fs" / "cgroup" / "pids" / "loop"
    cg.mkdir(parents=True)
    (cg / "cgroup.procs").write_text("7\n8\n9\n")
    for pid, ppid, comm in ((7, 1, b"fork\xffer"), (8, 7, b"child"), (9, 7, b"child")):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_bytes(b"%d (" % pid + comm + b") S %d 0 0" % ppid)
        (d / "comm").write_bytes(comm + b"\n")
    lead = pids_cgroup_leader("/loop", str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert lead == {"pid": 7, "comm": "fork\\xffer", "children_in_cgroup": 2}


def test_may_warn_never_skips_a_fit_that_would_warn():
    """may_warn lets the agent skip best_fit for resources that are not running out; over many
    series (steady, noisy, slow and fast leaks, steps, flat then falling) it never says no where
    best_fit gives a confident WARNING or worse, and it does say no on the quiet ones."""
    import numpy as np
    from kernelsight.agent.forecast import CONFIDENT, RISK_LEVELS, best_fit, may_warn

    rng = np.random.default_rng(7)
    skipped = warned = 0
    for k in range(3000):
        n = int(rng.integers(2, 130))
        ts = np.cumsum(rng.uniform(0.5, 1.5, n)) * 1e9 + 1.8e18
        total = 1e6
        start = rng.uniform(0.02, 0.9) * total
        rate = rng.choice([0.0, rng.uniform(0, 500), rng.uniform(0, 20000)])
        onset = int(rng.integers(0, n))
        y = start - rate * np.maximum(0, (ts - ts[onset]) / 1e9) + rng.normal(0, rng.choice([0, 50, 2000]), n)
        fc = best_fit(ts, y, total, "x", (10.0, 30.0, 120.0), "u")
        warns = (fc.seconds_to_exhaustion is not None and fc.confidence >= CONFIDENT
                 and RISK_LEVELS.index(fc.risk) >= RISK_LEVELS.index("WARNING"))
        if not may_warn(ts, y, total):
            skipped += 1
            assert not warns, (k, fc)
        warned += warns
    assert skipped > 1000 and warned > 100


def test_incremental_fs_series_equals_reading_the_window(conn):
    """FsSeries (rows kept between steps, only new ones read) gives what one query over the window
    gives, step after step: a mount that appears late and one that goes away, a read-only one, a
    null inode count, rows stored out of time order, and windows of 15, 60 and 600 s."""
    import numpy as np
    from kernelsight.agent.exhaustion import FsSeries, _fs_series

    kept = FsSeries(keep_s=600.0)
    for k in range(0, 900, 3):
        for j in range(3):
            ts = T + (k + j) * SEC
            fs_row(conn, ts, "/", 100_000 * MIB, 60_000 * MIB - k * MIB)
            fs_row(conn, ts, "/ro", 50 * MIB, 0, readonly=1)
            if k > 200:
                fs_row(conn, ts, "/late", 300 * MIB, 200 * MIB - k, ifree=None if k % 7 == 0 else 900)
            if k < 400:
                fs_row(conn, ts, "/gone", 300 * MIB, 100 * MIB)
        if k % 30 == 0:
            fs_row(conn, T + (k - 2) * SEC + 1, "/", 100_000 * MIB, 1)  # a row from the past, stored now
        conn.commit()
        end = T + (k + 2) * SEC
        for w in (15.0, 60.0, 600.0):
            want, got = _fs_series(conn, end, w), kept(conn, end, w)
            assert list(got) == list(want), (k, w)
            for m in want:
                np.testing.assert_array_equal(got[m], want[m])
    assert kept.by and all(len(a) <= 601 * 2 for a in kept.by.values())

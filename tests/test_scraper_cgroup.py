"""Per-cgroup telemetry: the scraper's `cgroup` lines and `ks cgroups`.

Fixtures: the cgroup v1 tree recorded on this VM in tests/fixtures/proc_tree{,_t1}/sys/fs/cgroup
(native/tests/record_cgroup_fixture.sh: memory, cpu, cpuacct, blkio and the hybrid v2 twin), and
the hand-made cgroup v2 tree in tests/fixtures/cgroup_v2 (kernel documentation formats, see its
README).  The live test makes a v1 memory cgroup with a limit, puts a process holding a known
amount of memory in it, and compares the scraper with the kernel's own files.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tool
from test_scraper import LINE_MAX, T0, T0_ROOT, T1_ROOT, check_against_schema

from kernelsight._scraper import Scraper

V2_ROOT = Path(__file__).resolve().parent / "fixtures" / "cgroup_v2"
SEC = 1_000_000_000
DOCKER_V1 = "4f1c0ffee0ddba11c0debeef5eed0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b"
CRI_V2 = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"


def cgroups_of(events) -> list[dict]:
    return [e for e in events if e["type"] == "cgroup"]


def by_path(events) -> dict[str, dict]:
    return {e["path"]: e for e in cgroups_of(events)}


def v2_scraper(root: Path = V2_ROOT, **kw) -> Scraper:
    return Scraper(str(T0_ROOT / "proc"), str(root / "sys"), **kw)


# ---- cgroup v2 (hand-made tree) ------------------------------------------------------------
def test_v2_fixture_values_and_order():
    ev = cgroups_of(v2_scraper().collect(now_ns=T0))
    for e in ev:
        check_against_schema(e)
    # Near the (effective) limit first, closest first; then by memory (first read: no CPU delta).
    assert [e["path"] for e in ev][:5] == [
        "/system.slice/nginx.service", "/user.slice", "/user.slice/user-1000.slice",
        "/user.slice/user-1000.slice/session-3.scope", "/system.slice"]
    assert len(ev) == 12 and ev[-1]["path"] == "/"
    cg = V2_ROOT / "sys/fs/cgroup"
    nginx = ev[0]
    ino = os.stat(cg / "system.slice/nginx.service").st_ino
    assert nginx == {
        "type": "cgroup", "ts": T0, "path": "/system.slice/nginx.service", "version": 2,
        "cgroup_id": ino, "cgroup2_id": ino, "unit": "nginx.service", "container_id": None,
        "memory_bytes": 524288000, "memory_limit_bytes": 536870912, "memory_limit_effective_bytes": 536870912,
        "swap_bytes": 33554432, "events_low_total": 0, "events_high_total": 0, "events_max_total": 40,
        "events_oom_total": 2, "oom_kill_total": 1, "failcnt_total": None, "under_oom": None,
        "mem_pressure_some_avg10": 3.15, "mem_pressure_full_avg10": 1.02,
        "mem_pressure_some_total_us": 1900000, "mem_pressure_full_total_us": 700000,
        "cpu_usage_usec_total": 61234567, "cpu_nr_periods_total": 0, "cpu_nr_throttled_total": 0,
        "cpu_throttled_usec_total": 0, "io_rbytes_total": 104857600, "io_wbytes_total": 52428800,
        "io_rios_total": 2500, "io_wios_total": 1200,
    }
    p = by_path(ev)
    session = p["/user.slice/user-1000.slice/session-3.scope"]
    assert session["memory_limit_bytes"] is None and session["memory_limit_effective_bytes"] == 1 << 30
    cri = [e for e in ev if e["container_id"] == CRI_V2]
    assert len(cri) == 1 and cri[0]["unit"] == f"cri-containerd-{CRI_V2}.scope"
    assert (cri[0]["cpu_nr_periods_total"], cri[0]["cpu_nr_throttled_total"],
            cri[0]["cpu_throttled_usec_total"]) == (5000, 700, 41000000)
    docker = [e for e in ev if e["path"].startswith("/system.slice/docker-")][0]
    assert len(docker["container_id"]) == 64 and docker["memory_limit_effective_bytes"] is None
    root = p["/"]
    assert root["memory_bytes"] is None and root["io_rbytes_total"] == 8417996800 + 1048576


def test_v2_bounded_and_cpu_delta_ranks(tmp_path):
    tree = tmp_path / "v2"
    shutil.copytree(V2_ROOT, tree)
    s = v2_scraper(tree, cgroups_max=6)
    assert s.cgroups_max == 6
    first = cgroups_of(s.collect(now_ns=T0))
    assert len(first) == 6
    # The Docker container burns CPU: after the near-limit ones it now leads, its memory notwithstanding.
    docker = next((tree / "sys/fs/cgroup/system.slice").glob("docker-*.scope"))
    stat = (docker / "cpu.stat").read_text().replace("usage_usec 701234567", "usage_usec 702234567")
    (docker / "cpu.stat").write_text(stat)
    second = cgroups_of(s.collect(now_ns=T0 + SEC))
    assert [e["path"] for e in second][4] == "/" + str(docker.relative_to(tree / "sys/fs/cgroup"))
    s.cgroups_max = 0
    assert cgroups_of(s.collect(now_ns=T0 + 2 * SEC)) == []


# ---- cgroup v1 (recorded on this VM) -------------------------------------------------------
def test_v1_recorded_fixture():
    s = Scraper(str(T0_ROOT / "proc"), str(T0_ROOT / "sys"))
    ev = cgroups_of(s.collect(now_ns=T0))
    assert s.warnings == []
    for e in ev:
        check_against_schema(e)
    mem = T0_ROOT / "sys/fs/cgroup/memory"
    ctr = f"/ks-fixture.slice/docker-{DOCKER_V1}.scope"
    d = ev[0]  # 86 % of its 64 MiB limit
    assert d["path"] == ctr and d["version"] == 1 and d["container_id"] == DOCKER_V1
    assert d["cgroup_id"] == os.stat(mem / ctr[1:]).st_ino
    assert d["cgroup2_id"] == os.stat(T0_ROOT / "sys/fs/cgroup/unified" / ctr[1:]).st_ino
    assert d["memory_bytes"] == int((mem / ctr[1:] / "memory.usage_in_bytes").read_text())
    assert d["memory_limit_bytes"] == d["memory_limit_effective_bytes"] == 64 << 20
    assert d["memory_bytes"] >= 0.8 * (64 << 20)
    assert d["events_oom_total"] is None and d["failcnt_total"] == 0 and d["under_oom"] == 0
    root = by_path(ev)["/"]
    # v1's "unlimited" (9223372036854771712) is null, never a number.
    assert (mem / "memory.limit_in_bytes").read_text().strip() == "9223372036854771712"
    assert root["memory_limit_bytes"] is None and root["memory_limit_effective_bytes"] is None


def test_v1_two_reads_cpu_and_throttling():
    s = Scraper(str(T0_ROOT / "proc"), str(T0_ROOT / "sys"))
    s.collect(now_ns=T0)
    s.proc_root, s.sys_root = str(T1_ROOT / "proc"), str(T1_ROOT / "sys")
    ev = cgroups_of(s.collect(now_ns=T0 + 2 * SEC))
    busy = by_path(ev)["/ks-fixture.slice/busy.service"]
    cg = T1_ROOT / "sys/fs/cgroup"
    usage_ns = int((cg / "cpuacct/ks-fixture.slice/busy.service/cpuacct.usage").read_text())
    stat = dict(l.split() for l in (cg / "cpu/ks-fixture.slice/busy.service/cpu.stat").read_text().splitlines())
    assert busy["cpu_usage_usec_total"] == usage_ns // 1000
    assert busy["cpu_nr_throttled_total"] == int(stat["nr_throttled"]) > 0
    assert busy["cpu_throttled_usec_total"] == int(stat["throttled_time"]) // 1000
    # After the near-limit container, by CPU used between the reads (hierarchical, so the root
    # and the slice come before the busy loop that dominates them).
    assert [e["path"] for e in ev][:4] == [f"/ks-fixture.slice/docker-{DOCKER_V1}.scope", "/",
                                           "/ks-fixture.slice", "/ks-fixture.slice/busy.service"]
    # blk-throttle listed no device ("Total 0"): unknown, not zero.
    assert busy["io_wbytes_total"] is None


# ---- hostile names -------------------------------------------------------------------------
def test_hostile_names_and_long_paths(tmp_path):
    cg = tmp_path / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("memory\n")
    bad = cg / os.fsdecode(b"caf\xe9-\xff\"q\\.service")  # not UTF-8
    bad.mkdir()
    (bad / "memory.current").write_text("4096\n")
    deep = cg
    for i in range(12):
        deep = deep / os.fsdecode(b"\xfe" * 200 + str(i).encode())
        try:
            deep.mkdir()
        except OSError:  # PATH_MAX
            break
    s = Scraper(str(tmp_path / "proc"), str(tmp_path / "sys"))
    dicts, lines = cgroups_of(s.collect(now_ns=T0)), [l for l in s.collect_json(now_ns=T0) if '"cgroup"' in l]
    assert len(dicts) == len(lines) >= 3
    for d, line in zip(dicts, lines):
        assert len(line.encode()) <= LINE_MAX and line.count("\n") == 1
        assert json.loads(line) == d  # one meaning from the dict and the line (bytes as \\u00XX)
        check_against_schema(d)
    named = [d for d in dicts if d["unit"] and d["unit"].endswith(".service")]
    assert named and named[0]["path"] == "/caf\xe9-\xff\"q\\.service" and named[0]["memory_bytes"] == 4096
    assert any(d["path"].startswith("...") for d in dicts), "a path over 1800 JSON characters is cut"


# ---- live: a v1 memory cgroup with a limit and a process of known size ----------------------
LIMIT = 80 << 20
HOLD = 72 << 20
HOLDER = ("import sys, time; b = b'x' * int(sys.argv[1]); sys.stdout.write('ready\\n'); sys.stdout.flush(); "
          "time.sleep(120)")


def _read_int(p: Path) -> int:
    return int(p.read_text())


def test_live_v1_memory_cgroup_matches_the_kernel():
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    mem_root = Path("/sys/fs/cgroup/memory")
    if not (mem_root / "memory.usage_in_bytes").exists() or (Path("/sys/fs/cgroup/cgroup.controllers")).exists():
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    name = f"ks_test_cg_{os.getpid()}"
    cg = mem_root / name
    twin = Path("/sys/fs/cgroup/unified") / name
    cg.mkdir()
    has_twin = (twin.parent / "cgroup.controllers").exists()
    if has_twin:
        twin.mkdir()
    holder = None
    try:
        (cg / "memory.limit_in_bytes").write_text(str(LIMIT))
        join = f"echo $$ > {cg}/cgroup.procs" + (f" && echo $$ > {twin}/cgroup.procs" if has_twin else "")
        holder = subprocess.Popen(["sh", "-c", f'{join} && exec "$0" -c "$1" "$2"', sys.executable, HOLDER,
                                   str(HOLD)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "ready\n"
        before = _read_int(cg / "memory.usage_in_bytes")
        ev = Scraper("/proc", "/sys").collect()
        after = _read_int(cg / "memory.usage_in_bytes")
        lines = cgroups_of(ev)
        mine = [e for e in lines if e["path"] == f"/{name}"]
        assert len(mine) == 1, [e["path"] for e in lines]
        e = mine[0]
        check_against_schema(e)
        print(f"\nscraper: usage {e['memory_bytes']} limit {e['memory_limit_bytes']}; kernel: usage "
              f"{before}..{after} limit {_read_int(cg / 'memory.limit_in_bytes')}; held {HOLD}")
        # The oracle: the kernel's own files, read just before and after the scraper's read
        # (an idle holder: they differ by the per-CPU charge batches at most).
        assert min(before, after) - (1 << 20) <= e["memory_bytes"] <= max(before, after) + (1 << 20)
        assert e["memory_bytes"] >= HOLD
        assert e["memory_limit_bytes"] == _read_int(cg / "memory.limit_in_bytes") == LIMIT
        assert e["memory_limit_effective_bytes"] == LIMIT
        assert e["cgroup_id"] == os.stat(cg).st_ino and e["version"] == 1
        assert e["failcnt_total"] == _read_int(cg / "memory.failcnt")
        assert e["cgroup2_id"] == (os.stat(twin).st_ino if has_twin else None)
        # At >= 80 % of its limit: among the near-limit cgroups listed before all others.
        limit_pct = [x["memory_bytes"] / x["memory_limit_effective_bytes"]
                     if x["memory_bytes"] is not None and x["memory_limit_effective_bytes"] else 0 for x in lines]
        at = lines.index(e)
        assert limit_pct[at] >= 0.8 and all(p >= 0.8 for p in limit_pct[:at])
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
            holder.stdout.close()
        for d in (twin, cg):
            for _ in range(100):
                try:
                    if d.exists():
                        d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


# ---- ks cgroups on a database built from fixture lines --------------------------------------
def test_ks_cgroups_from_fixture_lines(ks_env, tmp_path):
    tree = tmp_path / "v2"
    shutil.copytree(V2_ROOT, tree)
    s = v2_scraper(tree)
    cap = tmp_path / "capture.jsonl"
    cri = next((tree / "sys/fs/cgroup").rglob(f"cri-containerd-{CRI_V2}.scope"))
    cri_path = "/" + str(cri.relative_to(tree / "sys/fs/cgroup"))
    with open(cap, "w", encoding="latin-1") as f:
        f.writelines(l for l in s.collect_json(now_ns=T0) if '"type":"cgroup"' in l)
        # 10 s later: the CRI container throttled in 300 of 1000 more periods.
        stat = (cri / "cpu.stat").read_text().replace("nr_periods 5000", "nr_periods 6000") \
            .replace("nr_throttled 700", "nr_throttled 1000")
        (cri / "cpu.stat").write_text(stat)
        f.writelines(l for l in s.collect_json(now_ns=T0 + 10 * SEC) if '"type":"cgroup"' in l)
    out = subprocess.run([tool("ks-ingest"), "--replay", str(cap), "--data-dir", str(ks_env.data)],
                         env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "rejected 0" in out.stderr, out.stderr
    from kernelsight.agent.store import ensure_tables

    conn = sqlite3.connect(ks_env.db)
    ensure_tables(conn)
    obs = ("INSERT INTO observations (rule, key, label, status, severity, signal_category, observation_type, "
           "persistence, first_seen, last_seen, updates, summary, observation, processes) "
           "VALUES (?, ?, ?, ?, 'high', 'memory', 'symptom', 'transient', 1, 1, 1, ?, '{}', ?)")
    conn.execute(obs, ("memory_pressure", "memory_pressure", "Memory Pressure", "open",
                       "Available memory is 6%", '[{"pid": 1, "comm": "nginx", "cgroup": "/system.slice/nginx.service"}]'))
    conn.execute(obs, ("old", "old", "Old Thing", "closed", "about /system.slice/nginx.service", "[]"))
    conn.commit()
    conn.close()

    ks = [tool("ks"), "cgroups", "--data-dir", str(ks_env.data)]
    r = subprocess.run(ks + ["--json"], env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 12 and all(x["ts"] == T0 + 10 * SEC for x in rows)
    assert [x["path"] for x in rows][:4] == ["/system.slice/nginx.service", "/user.slice",
                                             "/user.slice/user-1000.slice", "/user.slice/user-1000.slice/session-3.scope"]
    nginx = rows[0]
    assert nginx["memory_limit_pct"] == pytest.approx(100 * 524288000 / 536870912)
    assert nginx["observations"] == ["Memory Pressure"]  # the open one only
    assert nginx["swap_bytes"] == 33554432 and nginx["mem_pressure_some_avg10"] == 3.15
    c = next(x for x in rows if x["path"] == cri_path)
    assert c["cpu_throttled_pct"] == pytest.approx(30.0) and c["memory_limit_pct"] == pytest.approx(75.0)
    assert c["container_id"] == CRI_V2 and c["observations"] == []
    assert rows[-1]["memory_limit_pct"] is None

    r = subprocess.run(ks, env=ks_env.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = r.stdout.splitlines()
    assert text[0].startswith("PATH") and "/system.slice/nginx.service" in text[1]
    assert "97.7" in text[1] and "Memory Pressure" in text[1]
    assert any(f"ctr {CRI_V2[:12]}" in l and "30.0" in l for l in text)


def test_ks_cgroups_without_data(ks_env):
    r = subprocess.run([tool("ks"), "cgroups", "--data-dir", str(ks_env.data)], env=ks_env.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no database" in r.stderr

"""The /proc + /sys scraper: kernelsight._scraper and ks-scraper, one C++ core.

Fixture values come from tests/fixtures/proc_tree{,_t1} (recorded on a live
machine ~2 s apart by native/tests/record_fixture.sh); the few per-interval
values the scraper derives (cpu shares, ctxt_per_sec, block util_pct) are
computed by hand from those files with an elapsed time of exactly 2 s handed
in as now_ns.  Rates of the other counters are the feature catalog's.
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

import psutil
import pytest

from kernelsight._scraper import Scraper

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
T0_ROOT, T1_ROOT = FIX / "proc_tree", FIX / "proc_tree_t1"
SCHEMA = json.loads((REPO / "schema" / "events" / "scraper.json").read_text())["events"]
PIPELINE_SCHEMA = json.loads((REPO / "schema" / "events" / "pipeline.json").read_text())["events"]
T0 = 1_795_289_985_000_000_000
SEC = 1_000_000_000
LINE_MAX = 4096


def ks_scraper() -> str:
    p = Path(sys.executable).parent / "ks-scraper"
    found = str(p) if p.exists() else shutil.which("ks-scraper")
    assert found, "ks-scraper not installed (make build)"
    return found


def fixture_scraper(root: Path = T0_ROOT) -> Scraper:
    return Scraper(str(root / "proc"), str(root / "sys"))


def by_type(events, etype, key=None, name=None):
    out = [e for e in events if e["type"] == etype and (key is None or e[key] == name)]
    return out


def one(events, etype, key=None, name=None):
    found = by_type(events, etype, key, name)
    assert len(found) == 1, f"{etype} {name}: {len(found)} events"
    return found[0]


TYPE_OK = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    # JSON has one number type: 0.0 is written as 0.
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
}


def check_against_schema(ev: dict) -> None:
    spec = SCHEMA.get(ev["type"]) or PIPELINE_SCHEMA.get(ev["type"])
    assert spec is not None, f"unknown type {ev['type']}"
    assert isinstance(ev["ts"], int) and ev["ts"] > 0
    assert set(ev) == {"type", "ts", *spec["fields"]}, f"{ev['type']}: keys differ from the schema"
    for name, f in spec["fields"].items():
        v = ev[name]
        if v is None:
            assert spec["nullable"] and not f.get("required"), f"{ev['type']}.{name} is null"
            continue
        assert TYPE_OK[f["type"]](v), f"{ev['type']}.{name}={v!r} is not {f['type']}"


# ---- the fixture tree ----------------------------------------------------------------


def test_fixture_exact_values():
    s = fixture_scraper()
    ev = s.collect(now_ns=T0)
    assert s.warnings == []
    # Sources run in the order of their names: block cgroup fs limits loadavg meminfo netdev psi
    # stat tcp tcp_retrans vmstat (the cgroup lines: tests/test_scraper_cgroup.py; filesystem and
    # limits: tests/test_scraper_limits.py).
    assert [e["type"] for e in ev] == [
        "block", "block", "cgroup", "cgroup", "cgroup", "cgroup", "filesystem", "limits", "load", "memory", "net_dev", "net_dev", "net_dev", "net_dev",
        "psi", "psi", "psi", "cpu", "tcp", "tcp_retrans", "vmstat",
    ]
    assert all(e["ts"] == T0 for e in ev)
    for e in ev:
        check_against_schema(e)

    mem = one(ev, "memory")
    assert mem["mem_total_kb"] == 24684084
    assert mem["mem_available_kb"] == 24167240
    assert mem["active_anon_kb"] == 1636
    assert mem["committed_as_kb"] == 170756
    assert mem["hugepages_total"] == 0

    assert one(ev, "load") == {
        "type": "load", "ts": T0, "load_1min": 0.17, "load_5min": 0.10, "load_15min": 0.03,
        "runnable_tasks": 1, "total_tasks": 134, "last_pid": 5334,
    }
    cpu = one(ev, "cpu")
    assert (cpu["cpu_count"], cpu["ctxt_total"], cpu["forks_total"], cpu["intr_total"]) == (
        2, 305957, 5336, 126628)
    assert (cpu["procs_running"], cpu["procs_blocked"]) == (1, 0)
    # First read: no interval yet, so every per-interval value is None.
    assert cpu["user_pct"] is None and cpu["ctxt_per_sec"] is None

    vm = one(ev, "vmstat")
    assert (vm["pgfault_total"], vm["pgmajfault_total"], vm["nr_dirty"], vm["oom_kill_total"]) == (
        1690534, 984, 766, 0)

    # loop* skipped, zram0 kept, sorted by name.
    assert [b["device"] for b in by_type(ev, "block")] == ["vda", "zram0"]
    vda = one(ev, "block", "device", "vda")
    assert (vda["reads_completed_total"], vda["sectors_read_total"], vda["io_time_ms_total"],
            vda["weighted_io_time_ms_total"]) == (30026, 2662010, 3428, 7830)
    assert vda["util_pct"] is None

    assert [n["interface"] for n in by_type(ev, "net_dev")] == ["lo", "ifb0", "ifb1", "eth0"]
    eth0 = one(ev, "net_dev", "interface", "eth0")
    assert (eth0["rx_bytes_total"], eth0["rx_packets_total"], eth0["tx_bytes_total"],
            eth0["tx_packets_total"]) == (56192927, 1814, 117376, 1156)

    tcp = one(ev, "tcp")
    assert (tcp["established"], tcp["time_wait"], tcp["listen"], tcp["total"]) == (2, 7, 2, 11)
    assert tcp["syn_recv"] == 0

    tr = one(ev, "tcp_retrans")
    assert (tr["active_opens_total"], tr["passive_opens_total"], tr["out_segs_total"],
            tr["in_segs_total"], tr["curr_estab"], tr["listen_drops_total"]) == (25, 9, 1203, 1868, 2, 0)

    assert [p["resource"] for p in by_type(ev, "psi")] == ["cpu", "memory", "io"]
    cpu_psi = one(ev, "psi", "resource", "cpu")
    assert (cpu_psi["some_avg10"], cpu_psi["some_avg60"], cpu_psi["some_avg300"],
            cpu_psi["some_total_us"]) == (0.07, 0.70, 0.54, 3787840)
    assert cpu_psi["full_total_us"] == 0
    io_psi = one(ev, "psi", "resource", "io")
    assert (io_psi["full_avg10"], io_psi["full_total_us"]) == (0.01, 2004721)


def test_two_snapshots_hand_computed_values():
    s = fixture_scraper(T0_ROOT)
    s.collect(now_ns=T0)
    s.proc_root, s.sys_root = str(T1_ROOT / "proc"), str(T1_ROOT / "sys")
    ev = s.collect(now_ns=T0 + 2 * SEC)
    assert s.warnings == []
    for e in ev:
        check_against_schema(e)
    approx = pytest.approx

    # cpu line deltas: user 326 nice 0 system 64 idle 14 iowait 3 irq 0 softirq 21 steal 1 -> 429
    cpu = one(ev, "cpu")
    assert cpu["user_pct"] == approx(100 * 326 / 429)
    assert cpu["system_pct"] == approx(100 * 64 / 429)
    assert cpu["idle_pct"] == approx(100 * 14 / 429)
    assert cpu["iowait_pct"] == approx(100 * 3 / 429)
    assert cpu["softirq_pct"] == approx(100 * 21 / 429)
    assert cpu["steal_pct"] == approx(100 * 1 / 429)
    assert cpu["nice_pct"] == 0 and cpu["irq_pct"] == 0
    assert sum(cpu[k] for k in cpu if k.endswith("_pct")) == approx(100)
    assert cpu["ctxt_per_sec"] == approx((354793 - 305957) / 2)
    assert (cpu["forks_total"], cpu["intr_total"], cpu["procs_blocked"]) == (5417, 152917, 1)

    vda = one(ev, "block", "device", "vda")
    assert vda["util_pct"] == approx((4484 - 3428) / 2000 * 100)
    assert (vda["reads_completed_total"], vda["in_flight"]) == (53954, 1)
    assert one(ev, "block", "device", "zram0")["util_pct"] == 0

    tcp = one(ev, "tcp")
    assert (tcp["time_wait"], tcp["total"]) == (9, 13)
    assert one(ev, "tcp_retrans")["out_segs_total"] == 1227
    assert one(ev, "psi", "resource", "cpu")["some_total_us"] == 5420133

    # Counters stay raw: the feature catalog derives their rates over its windows.
    assert {k for e in ev for k in e if k.endswith("_per_sec")} == {"ctxt_per_sec"}


def test_json_lines_match_dicts():
    a, b = fixture_scraper(), fixture_scraper()
    for t in (T0, T0 + 2 * SEC):
        dicts, lines = a.collect(now_ns=t), b.collect_json(now_ns=t)
        a.proc_root = b.proc_root = str(T1_ROOT / "proc")
        a.sys_root = b.sys_root = str(T1_ROOT / "sys")
        assert len(dicts) == len(lines)
        for d, line in zip(dicts, lines):
            assert line.endswith("\n") and line.count("\n") == 1 and len(line.encode()) <= LINE_MAX
            parsed = json.loads(line)
            assert list(parsed) == list(d)
            if d["type"] == "filesystem":
                # statvfs of the live "/" of the fixture's mount table: what is free moves between the
                # two scrapers' reads; its identity and size do not.
                assert all(parsed[k] == d[k] for k in ("mountpoint", "device", "fstype", "size_bytes", "inodes_total"))
                continue
            for k, v in d.items():
                if isinstance(v, float):  # %.10g in the line
                    assert parsed[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
                else:
                    assert parsed[k] == v and type(parsed[k]) is type(v), k


def test_path_like_roots():
    s = Scraper(T0_ROOT / "proc", T0_ROOT / "sys")
    assert s.proc_root == str(T0_ROOT / "proc")
    assert one(s.collect(), "memory")["mem_total_kb"] == 24684084


# ---- degradation: missing files and fields ---------------------------------------------


def copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(T0_ROOT, root)
    return root


def test_missing_field_gives_none_and_one_warning(tmp_path):
    root = copy_tree(tmp_path)
    meminfo = root / "proc" / "meminfo"
    meminfo.write_text("".join(l for l in meminfo.read_text().splitlines(True)
                               if not l.startswith("MemAvailable:")))
    vmstat = root / "proc" / "vmstat"
    vmstat.write_text("".join(l for l in vmstat.read_text().splitlines(True)
                              if not l.startswith("oom_kill ")))
    s = fixture_scraper(root)
    for i in range(3):
        ev = s.collect(now_ns=T0 + i * SEC)
        mem = one(ev, "memory")
        assert mem["mem_available_kb"] is None and mem["mem_total_kb"] == 24684084
        vm = one(ev, "vmstat")
        assert vm["oom_kill_total"] is None and vm["pgfault_total"] == 1690534
    assert s.warnings == [
        f"{root}/proc/meminfo: field MemAvailable missing",
        f"{root}/proc/vmstat: field oom_kill missing",
    ]


def test_missing_files_degrade_to_none(tmp_path):
    root = copy_tree(tmp_path)
    shutil.rmtree(root / "proc" / "pressure")
    (root / "proc" / "loadavg").unlink()
    (root / "proc" / "net" / "tcp6").unlink()
    # cpu pressure on a kernel before 5.13: no "full" line.
    (root / "proc" / "pressure").mkdir()
    (root / "proc" / "pressure" / "cpu").write_text(
        "some avg10=1.00 avg60=0.50 avg300=0.25 total=777\n")
    s = fixture_scraper(root)
    ev = s.collect(now_ns=T0)
    s.collect(now_ns=T0 + SEC)
    for e in ev:
        check_against_schema(e)
    load = one(ev, "load")
    assert all(load[k] is None for k in load if k not in ("type", "ts"))
    assert one(ev, "tcp")["total"] == 11  # IPv4 still counted
    cpu_psi = one(ev, "psi", "resource", "cpu")
    assert cpu_psi["some_total_us"] == 777 and cpu_psi["full_avg10"] is None
    mem_psi = one(ev, "psi", "resource", "memory")
    assert mem_psi["some_avg10"] is None and mem_psi["some_total_us"] is None
    w = s.warnings
    assert len(w) == 5, w
    assert sum(f"{root}/proc/loadavg: cannot read" in x for x in w) == 1
    assert sum(f"{root}/proc/net/tcp6: cannot read" in x for x in w) == 1
    assert sum(f"{root}/proc/pressure/cpu" in x and '"full" missing' in x for x in w) == 1
    assert sum(f"{root}/proc/pressure/memory: cannot read" in x for x in w) == 1
    assert sum(f"{root}/proc/pressure/io: cannot read" in x for x in w) == 1


def test_nonexistent_roots_never_crash(tmp_path):
    s = Scraper(str(tmp_path / "nope"), str(tmp_path / "nope-sys"))
    ev = s.collect()
    assert {e["type"] for e in ev} == {"memory", "load", "cpu", "vmstat", "tcp", "tcp_retrans", "psi", "limits"}
    n = len(s.warnings)
    assert n > 0
    s.collect()
    assert len(s.warnings) == n


def test_disk_and_interface_disappear(tmp_path):
    root = copy_tree(tmp_path)
    s = fixture_scraper(root)
    s.collect(now_ns=T0)
    shutil.rmtree(root / "sys" / "block" / "zram0")
    dev = root / "proc" / "net" / "dev"
    dev.write_text("".join(l for l in dev.read_text().splitlines(True) if "ifb1:" not in l))
    ev = s.collect(now_ns=T0 + SEC)
    assert [b["device"] for b in by_type(ev, "block")] == ["vda"]
    assert "ifb1" not in [n["interface"] for n in by_type(ev, "net_dev")]
    assert one(ev, "block", "device", "vda")["util_pct"] == 0
    # Back again: a first sighting, util_pct None.
    shutil.copytree(T0_ROOT / "sys" / "block" / "zram0", root / "sys" / "block" / "zram0")
    shutil.copy(T0_ROOT / "proc" / "net" / "dev", dev)
    ev = s.collect(now_ns=T0 + 2 * SEC)
    assert one(ev, "block", "device", "zram0")["util_pct"] is None
    assert one(ev, "block", "device", "vda")["util_pct"] == 0
    assert one(ev, "net_dev", "interface", "ifb1")["rx_bytes_total"] == 0
    assert s.warnings == []


def test_counter_reset_gives_none(tmp_path):
    root = copy_tree(tmp_path)
    stat, dev = root / "proc" / "stat", root / "proc" / "net" / "dev"
    s = fixture_scraper(root)
    s.collect(now_ns=T0)
    # ctxt and eth0 rx_bytes back to small numbers (a restored tree, a 32-bit
    # wrap or a driver reset): written as read, no rate against the old value.
    stat.write_text(stat.read_text().replace("ctxt 305957", "ctxt 1000"))
    dev.write_text(dev.read_text().replace("eth0: 56192927", "eth0:     1000"))
    ev = s.collect(now_ns=T0 + SEC)
    assert one(ev, "cpu")["ctxt_total"] == 1000 and one(ev, "cpu")["ctxt_per_sec"] is None
    assert one(ev, "net_dev", "interface", "eth0")["rx_bytes_total"] == 1000
    stat.write_text(stat.read_text().replace("ctxt 1000", "ctxt 1500"))
    assert one(s.collect(now_ns=T0 + 3 * SEC), "cpu")["ctxt_per_sec"] == 250


# ---- live machine, psutil as the oracle ------------------------------------------------


def test_live_memory_matches_proc():
    ev = Scraper().collect()
    meminfo = dict(l.split(":", 1) for l in Path("/proc/meminfo").read_text().splitlines())
    assert one(ev, "memory")["mem_total_kb"] == int(meminfo["MemTotal"].split()[0])
    assert one(ev, "cpu")["cpu_count"] == psutil.cpu_count()


def test_live_load_matches_psutil():
    load = one(Scraper().collect(), "load")
    want = psutil.getloadavg()
    for got, exp in zip((load["load_1min"], load["load_5min"], load["load_15min"]), want):
        assert abs(got - exp) <= 0.05


def test_live_net_dev_matches_psutil():
    ev = Scraper().collect()
    counters = psutil.net_io_counters(pernic=True)
    nets = [n for n in by_type(ev, "net_dev") if n["interface"] in counters]
    # psutil reads the same file a moment later; an interface created or
    # removed in between is not a disagreement.
    assert "lo" in {n["interface"] for n in nets}
    for n in nets:
        exp = counters[n["interface"]].bytes_recv
        assert abs(n["rx_bytes_total"] - exp) <= max(0.01 * exp, 1500), n["interface"]


def test_live_rates_are_sane():
    s = Scraper()
    s.collect()
    time.sleep(0.2)
    ev = s.collect()
    cpu = one(ev, "cpu")
    if cpu["user_pct"] is not None:  # None only if no jiffy passed
        assert sum(cpu[k] for k in cpu if k.endswith("_pct")) == pytest.approx(100)
    assert cpu["ctxt_per_sec"] is not None and cpu["ctxt_per_sec"] >= 0
    for b in by_type(ev, "block"):
        assert b["util_pct"] is not None and 0 <= b["util_pct"] <= 100


# ---- the ks-scraper binary -------------------------------------------------------------


def run_cli(*args, timeout=30):
    return subprocess.run([ks_scraper(), *args], capture_output=True, text=True, timeout=timeout)


def test_cli_lines_match_schema():
    t = time.monotonic()
    r = run_cli("--count", "2", "--interval", "0.2")
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines(True)
    events = []
    for line in lines:
        assert len(line.encode()) <= LINE_MAX
        assert line.endswith("\n")
        ev = json.loads(line)
        check_against_schema(ev)
        events.append(ev)
    types = [e["type"] for e in events]
    assert set(SCHEMA) <= set(types)  # every scraper event type appears
    assert types.count("producer_stats") == 3  # one per read, one at exit
    assert types.count("memory") == 2
    stats = [e for e in events if e["type"] == "producer_stats"]
    assert all(s["producer"] == "ks-scraper" and s["pid"] > 0 for s in stats)
    assert stats[-1]["lines_written_total"] == len(lines) - 1
    assert stats[-1]["warnings_total"] == len(
        [l for l in r.stderr.splitlines() if "warning" in l])
    mem_ts = [e["ts"] for e in events if e["type"] == "memory"]
    assert 0.15e9 <= mem_ts[1] - mem_ts[0] <= 0.5e9
    assert abs(mem_ts[0] - time.time_ns()) < 60 * SEC
    assert took < 10


def test_cli_keeps_to_the_interval_grid():
    # Ticks at start + k * interval: ten intervals take ten intervals, not
    # ten intervals plus ten read times.
    r = run_cli("--count", "11", "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    ts = [json.loads(l)["ts"] for l in r.stdout.splitlines() if l.startswith('{"type":"memory"')]
    assert len(ts) == 11
    assert ts[-1] - ts[0] == pytest.approx(1.0e9, abs=0.05e9)
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert all(0.02e9 < g < 0.2e9 for g in gaps), gaps


def test_cli_and_module_write_identical_lines():
    r = run_cli("--count", "1", "--proc-root", str(T0_ROOT / "proc"), "--sys-root", str(T0_ROOT / "sys"))
    assert r.returncode == 0 and r.stderr == ""
    cli = [l for l in r.stdout.splitlines(True) if '"producer_stats"' not in l]
    mod = fixture_scraper().collect_json()
    strip = lambda l: re.sub(r'"ts":\d+', '"ts":0', l)  # noqa: E731
    assert [strip(l) for l in cli] == [strip(l) for l in mod]


def test_cli_warns_once_on_stderr(tmp_path):
    root = copy_tree(tmp_path)
    (root / "proc" / "loadavg").unlink()
    r = run_cli("--count", "3", "--interval", "0.05", "--proc-root", str(root / "proc"),
                "--sys-root", str(root / "sys"))
    assert r.returncode == 0
    assert r.stderr.count("loadavg") == 1, r.stderr
    assert "loadavg" not in r.stdout
    stats = [json.loads(l) for l in r.stdout.splitlines() if '"producer_stats"' in l]
    assert stats[-1]["warnings_total"] == 1


@pytest.mark.parametrize("args", [
    ["--interval", "0"], ["--interval", "abc"], ["--interval", "-1"], ["--count", "-3"],
    ["--count", "x"], ["--bogus"], ["--interval"], ["extra"],
])
def test_cli_bad_arguments_exit_2(args):
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("ks-scraper: ")


def test_cli_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "--interval" in r.stdout


def test_cli_refuses_regular_file_and_symlink(tmp_path):
    reg = tmp_path / "regular"
    reg.write_text("")
    r = run_cli("--count", "1", "--output", str(reg))
    assert r.returncode == 1 and "not a FIFO" in r.stderr and r.stdout == ""
    assert reg.read_text() == ""

    target = tmp_path / "target"
    os.mkfifo(target, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    r = run_cli("--count", "1", "--output", str(link))
    assert r.returncode == 1 and "symlink" in r.stderr


def test_cli_fifo_without_reader_drops_and_counts(tmp_path):
    fifo = tmp_path / "ks.fifo"
    t = time.monotonic()
    r = run_cli("--count", "2", "--interval", "0.05", "--output", str(fifo))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t < 5  # no reader never blocks
    assert fifo.is_fifo()


def test_cli_fifo_with_reader(tmp_path):
    fifo = tmp_path / "ks.fifo"
    os.mkfifo(fifo, 0o600)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = run_cli("--count", "1", "--output", str(fifo))
        assert r.returncode == 0, r.stderr
        data = b""
        while chunk := os.read(rfd, 65536):
            data += chunk
    finally:
        os.close(rfd)
    lines = data.decode().splitlines()
    stats = json.loads(lines[-1])
    assert stats["type"] == "producer_stats"
    assert stats["lines_written_total"] == len(lines) - 1
    assert stats["dropped_no_reader_total"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_writes_final_stats(sig):
    p = subprocess.Popen([ks_scraper(), "--interval", "0.1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    p.send_signal(sig)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    last = json.loads(out.splitlines()[-1])
    assert last["type"] == "producer_stats"
    assert last["lines_written_total"] == len(out.splitlines()) - 1


def _snmp_tcp(path: Path) -> dict[str, int]:
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.startswith("Tcp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def test_every_network_namespace_has_its_own_tcp_line(tmp_path):
    """Traffic inside another network namespace (a container, one end of a veth pair) is
    invisible in the host's /proc/net/snmp: the scraper reads each namespace through one of
    its processes.  Oracle: that namespace's own /proc/PID/net/snmp, once its traffic is over."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    ns = f"kst{os.getpid()}"
    scraper = Scraper("/proc", "/sys")
    scraper.collect()  # every process's namespace read and kept, before this one exists
    subprocess.run(["ip", "netns", "add", ns], check=True)
    holder = None
    try:
        subprocess.run(["ip", "link", "add", f"{ns}a", "type", "veth", "peer", "name", f"{ns}b", "netns", ns],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # Some TCP inside the namespace, over its own loopback, then quiet.
        code = ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
                "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); "
                "c.sendall(b'x' * 100000); a.recv(1); c.close(); a.close()")
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True)
        holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
        wait = time.monotonic() + 10
        while time.monotonic() < wait and not Path(f"/proc/{holder.pid}/ns/net").exists():
            time.sleep(0.05)
        time.sleep(0.2)  # `ip netns exec` has entered the namespace and exec'd sleep
        ino = os.stat(f"/proc/{holder.pid}/ns/net").st_ino
        assert ino != os.stat("/proc/self/ns/net").st_ino
        oracle = _snmp_tcp(Path(f"/proc/{holder.pid}/net/snmp"))
        ev = scraper.collect()  # a new process's namespace is read at its first sight, not at the next re-read
        lines = {e["netns"]: e for e in ev if e["type"] == "tcp_retrans"}
        assert os.stat("/proc/self/ns/net").st_ino in lines, "the scraper's own namespace"
        mine = lines[ino]
        assert mine["interfaces"] == f"{ns}b"
        assert mine["out_segs_total"] == oracle["OutSegs"] > 0 and mine["in_segs_total"] == oracle["InSegs"]
        assert mine["active_opens_total"] == oracle["ActiveOpens"] == 1
        for e in lines.values():
            assert len(json.dumps(e)) < LINE_MAX
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)

"""Resources that run out: the scraper's `filesystem` and `limits` lines.

Fixtures: tests/fixtures/proc_tree{,_t1}/proc/self/mounts (pseudo filesystems, "/" twice, a
read-only squashfs image and a mount point that is gone: one filesystem line, for the live "/",
no warning) and the
proc/sys files recorded on this VM (file-nr, nr_open, pid_max, threads-max,
ip_local_port_range, nf_conntrack_{count,max}).  The live tests (root) mount a tmpfs, open
descriptors under a low RLIMIT_NOFILE and make a pids cgroup, and compare with an independent
oracle: os.statvfs, psutil, the kernel's own files.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_scraper import T0, T0_ROOT, T1_ROOT, check_against_schema, fixture_scraper, one

from kernelsight._scraper import Scraper

SEC = 1_000_000_000
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, cgroups)")


def ephemeral_oracle(proc: Path, lo: int, hi: int) -> int:
    ports = set()
    for f in ("tcp", "tcp6"):
        for line in (proc / "net" / f).read_text().splitlines()[1:]:
            w = line.split()
            port = int(w[1].rsplit(":", 1)[1], 16)
            if w[3] != "0A" and lo <= port <= hi:
                ports.add(port)
    return len(ports)


# ---- fixtures -----------------------------------------------------------------------------
def test_fixture_limits_line():
    s = fixture_scraper()
    ev = s.collect(now_ns=T0)
    assert s.warnings == []
    # Of the mount table only "/" (the live root: listed twice, one line), not the pseudo
    # filesystems, the read-only image or the mount point that is gone.
    fs = [e for e in ev if e["type"] == "filesystem"]
    assert [(e["mountpoint"], e["device"], e["fstype"]) for e in fs] == [("/", "/dev/vda", "ext4")]
    check_against_schema(fs[0])
    v = os.statvfs("/")
    assert (fs[0]["size_bytes"], fs[0]["inodes_total"]) == (v.f_blocks * v.f_frsize, v.f_files or None)
    lim = one(ev, "limits")
    check_against_schema(lim)
    proc = T0_ROOT / "proc"
    lo, hi = (int(x) for x in (proc / "sys/net/ipv4/ip_local_port_range").read_text().split())
    assert lim == {
        "type": "limits", "ts": T0, "file_handles": 832, "file_max": 2466174,
        "nr_open": int((proc / "sys/fs/nr_open").read_text()), "processes": 0,
        "nofile_top_pid": None, "nofile_top_comm": None, "nofile_top_fds": None, "nofile_top_limit": None,
        "tasks": 134,  # loadavg's thread count
        "pid_max": int((proc / "sys/kernel/pid_max").read_text()),
        "threads_max": int((proc / "sys/kernel/threads-max").read_text()),
        "pids_cgroup_path": None, "pids_cgroup_current": None, "pids_cgroup_max": None,
        "pids_cgroups_limited": None,  # the recorded tree has no pids controller
        "conntrack_entries": 3, "conntrack_max": 262144,
        "port_range_low": lo, "port_range_high": hi,
        "ephemeral_ports_used": ephemeral_oracle(proc, lo, hi),
    }
    assert lim["ephemeral_ports_used"] == 3  # 37443 (3 sockets), 40418 and 40424
    s.proc_root, s.sys_root = str(T1_ROOT / "proc"), str(T1_ROOT / "sys")
    lim1 = one(s.collect(now_ns=T0 + 2 * SEC), "limits")
    assert (lim1["file_handles"], lim1["conntrack_entries"]) == (841, 5)


def test_conntrack_absent_is_null_without_warning(tmp_path):
    import shutil
    root = tmp_path / "t"
    shutil.copytree(T0_ROOT, root)
    shutil.rmtree(root / "proc/sys/net/netfilter")
    s = Scraper(str(root / "proc"), str(root / "sys"))
    lim = one(s.collect(now_ns=T0), "limits")
    assert lim["conntrack_entries"] is None and lim["conntrack_max"] is None
    assert s.warnings == []


def test_mount_table_escapes_and_filters(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    d = tmp_path / "a b"
    d.mkdir()
    esc = str(d).replace(" ", "\\040")
    (proc / "self" / "mounts").write_text(
        f"proc /proc proc rw 0 0\n/dev/vdz {esc} ext4 ro,relatime 0 0\n/dev/vdz {esc} ext4 rw 0 0\n")
    s = Scraper(str(proc), str(tmp_path / "sys"))
    fs = [e for e in s.collect(now_ns=T0) if e["type"] == "filesystem"]
    # The escaped space decoded; the second line is the same device (st_dev): skipped.
    assert [(e["mountpoint"], e["device"], e["fstype"], e["readonly"]) for e in fs] == [(str(d), "/dev/vdz", "ext4", 1)]
    v = os.statvfs(d)
    assert fs[0]["size_bytes"] == v.f_blocks * v.f_frsize
    assert fs[0]["inodes_total"] == (v.f_files or None)


# ---- live -----------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "fill me"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=1000", "tmpfs", str(mnt)], check=True)
    bind = tmp_path / "bound"
    bind.mkdir()
    subprocess.run(["mount", "--bind", str(mnt), str(bind)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(bind)], check=False)
        subprocess.run(["umount", str(mnt)], check=False)


@root_only
def test_live_tmpfs_matches_statvfs(tmpfs):
    (tmpfs / "data").write_bytes(b"\1" * (3 << 20))
    for i in range(10):
        (tmpfs / f"f{i}").touch()
    ev = [e for e in Scraper().collect() if e["type"] == "filesystem"]
    for e in ev:
        check_against_schema(e)
    mine = [e for e in ev if e["mountpoint"] in (str(tmpfs), str(tmpfs.parent / "bound"))]
    assert [e["mountpoint"] for e in mine] == [str(tmpfs)]  # the bind mount is the same filesystem
    e, v = mine[0], os.statvfs(tmpfs)
    assert (e["fstype"], e["readonly"]) == ("tmpfs", 0)
    assert e["size_bytes"] == v.f_blocks * v.f_frsize == 8 << 20
    assert e["free_bytes"] == v.f_bfree * v.f_frsize and e["avail_bytes"] == v.f_bavail * v.f_frsize
    assert e["reserved_bytes"] == 0  # tmpfs reserves nothing for root
    assert (e["inodes_total"], e["inodes_free"]) == (v.f_files, v.f_ffree) == (1000, v.f_ffree)
    assert e["size_bytes"] - e["free_bytes"] >= 3 << 20
    # psutil's df agrees on what is available
    assert psutil.disk_usage(str(tmpfs)).free == e["avail_bytes"]
    assert not any(e["fstype"] in ("proc", "sysfs", "cgroup", "devpts", "devtmpfs") for e in ev)


HOLDER = """
import os, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(sys.argv[2]))]
print("ready", flush=True)
time.sleep(60)
"""


@root_only
def test_live_process_nearest_its_nofile_limit():
    p = subprocess.Popen([sys.executable, "-c", HOLDER, "300", "280"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        lim = one(Scraper().collect(), "limits")
        check_against_schema(lim)
        ps = psutil.Process(p.pid)
        assert lim["nofile_top_pid"] == p.pid
        assert lim["nofile_top_comm"] == ps.name()[:15]
        assert lim["nofile_top_fds"] == ps.num_fds()
        assert lim["nofile_top_limit"] == ps.rlimit(psutil.RLIMIT_NOFILE)[0] == 300
        assert lim["file_max"] == int(Path("/proc/sys/fs/file-max").read_text())
        assert lim["pid_max"] == int(Path("/proc/sys/kernel/pid_max").read_text())
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


@root_only
def test_live_pids_cgroup_nearest_its_limit():
    root = Path("/sys/fs/cgroup/pids")
    if not root.is_dir():
        pytest.skip("no v1 pids controller mounted")
    cg = root / f"ks_test_pids_{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "pids.max").write_text("3")
        p = subprocess.Popen(["sh", "-c", f"echo $$ > {cg}/cgroup.procs && exec sleep 60"])
        try:
            for _ in range(100):
                if (cg / "cgroup.procs").read_text().split():
                    break
                time.sleep(0.05)
            lim = one(Scraper().collect(), "limits")
            assert lim["pids_cgroup_path"] == "/" + cg.name
            assert (lim["pids_cgroup_current"], lim["pids_cgroup_max"]) == (
                int((cg / "pids.current").read_text()), 3)
            assert lim["pids_cgroups_limited"] >= 1
        finally:
            p.kill()
            p.wait()
    finally:
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.05)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)  # this process untouched


PORTS = """
import json, os, socket, subprocess
import psutil
from kernelsight._scraper import Scraper
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
open("/proc/sys/net/ipv4/ip_local_port_range", "w").write("40000 40099")  # per network namespace
srv = socket.socket()
srv.bind(("127.0.0.1", 8080))   # outside the range
srv.listen(200)
conns = [socket.create_connection(srv.getsockname()) for _ in range(90)]
accepted = [srv.accept()[0] for _ in range(90)]   # their local port is the listener's
oracle = len({c.laddr.port for c in psutil.net_connections("tcp")
              if c.status != "LISTEN" and 40000 <= c.laddr.port <= 40099})
lim = next(e for e in Scraper().collect() if e["type"] == "limits")
print(json.dumps({"limits": lim, "oracle": oracle}))
"""


@root_only
def test_live_ephemeral_ports_in_a_network_namespace():
    """90 loopback connections in a namespace of its own whose ephemeral range is 100 ports: the
    clients' ports are counted (not the listener's, which the accepted ends share), as psutil
    counts them."""
    import json

    out = subprocess.run(["unshare", "--net", sys.executable, "-c", PORTS], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    lim = r["limits"]
    assert (lim["port_range_low"], lim["port_range_high"]) == (40000, 40099)
    assert lim["ephemeral_ports_used"] == r["oracle"] == 90

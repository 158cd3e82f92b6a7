"""A fault from a real command line (a third-party tool such as stress-ng,
sysbench, perf bench, fio, dd, ab, wrk), run for a bounded time.

The command is a bash command line (so loops and redirections work), with
these fields filled in first:

    {seconds}        --seconds, as an integer
    {cores}          CPUs online            {cores3}  3 x CPUs
    {dir}            a scratch directory on the real disk (not tmpfs), removed at the end
    {port}           a free TCP port on 127.0.0.1 (for --server)
    {python}         this Python interpreter
    {grab_mb}        MiB to allocate so that --leave-pct of MemTotal stays available
    {grab_mb_half}   half of that (one of two workers)
    {missing}        a directory that does not exist
    {ns} {host_ip} {ns_ip}   with --veth: the network namespace and the two ends' addresses
    {fs}             with --tmpfs: a small tmpfs mounted for the fault (a filesystem to fill)

--server starts a companion first (e.g. a web server on {port}) and waits until
it accepts connections; --setup runs (to completion) before the fault.  The
line `ONSET <unix time>` is printed just before the command starts.  The
command and the server run in their own process groups; when --seconds are up
(or on SIGTERM/SIGINT) both groups get SIGTERM, then SIGKILL.  --loop reruns a
command that finishes early until the time is up.  --veth puts a network
namespace behind a veth pair first (netloss.py's), with --ns-nft rules loaded
inside it and --host-mtu on the host's end; all of it is removed at the end.

    python -m kernelsight.scenarios.cmd --seconds 40 -- 'sysbench cpu --threads={cores3} --time={seconds} run'
    python -m kernelsight.scenarios.cmd --seconds 25 --server '{python} -m http.server -b 127.0.0.1 {port}' \\
        -- 'ab -q -n 10000 -c 4 http://127.0.0.1:{port}/'
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

from ..procutil import die_with_parent, die_with_parent_preexec
from . import netloss
from ._common import Stop, check_seconds, disk_dir, log, meminfo_kb, onset, parser, start_group, stop_group


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, stop: Stop) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not stop.now():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


SHELL_WORDS = {"while", "until", "for", "if", "{", "(", "exec", "trap", "set", "ulimit", "cd"}


class Fields(dict):
    """Format fields, computed only when the command uses them."""

    def __init__(self, seconds: float, leave_pct: float):
        super().__init__()
        self.seconds = seconds
        self.leave_pct = leave_pct
        self.scratch: str | None = None

    def __missing__(self, key: str):
        if key == "seconds":
            v = str(max(1, int(self.seconds)))
        elif key == "cores":
            v = str(os.cpu_count() or 1)
        elif key == "cores3":
            v = str(3 * (os.cpu_count() or 1))
        elif key == "dir":
            self.scratch = disk_dir("ks-cmd-")
            v = self.scratch
        elif key == "python":
            v = sys.executable
        elif key == "port":
            v = str(free_port())
        elif key in ("grab_mb", "grab_mb_half"):
            total, avail = meminfo_kb("MemTotal"), meminfo_kb("MemAvailable")
            grab = max(0, int((avail - total * self.leave_pct / 100) / 1024))
            v = str(grab if key == "grab_mb" else grab // 2)
        elif key == "missing":
            v = f"/nonexistent-ks-scenario-{os.getpid()}"
        else:
            raise KeyError(key)
        self[key] = v
        return v


def start(line: str, quiet: bool, errors: bool = True) -> subprocess.Popen:
    """`line` under bash in its own process group; its stdout goes to our stderr (the injector log) unless quiet,
    its stderr too unless errors is False (a web server's access log)."""
    out = subprocess.DEVNULL if quiet else sys.stderr
    return start_group(["bash", "-c", line], stdout=out, stderr=sys.stderr if errors else subprocess.DEVNULL)


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    p.add_argument("--setup", default=None, help="a command line run to completion before the fault")
    p.add_argument("--server", default=None, help="a companion started first; with {port}, waited for")
    p.add_argument("--loop", action="store_true", help="rerun the command until the time is up")
    p.add_argument("--leave-pct", type=float, default=7.0, help="for {grab_mb}: share of MemTotal left available")
    p.add_argument("--show-output", action="store_true", help="pass the command's stdout to stderr")
    p.add_argument("--veth", action="store_true", help="a network namespace behind a veth pair ({ns}, {ns_ip})")
    p.add_argument("--ns-nft", default=None, help="with --veth: an nftables ruleset loaded inside the namespace")
    p.add_argument("--host-mtu", type=int, default=None, help="with --veth: MTU of the host's end")
    p.add_argument("--tmpfs", default=None, help="mount options of a tmpfs at {fs} (e.g. size=64m,nr_inodes=2048), "
                   "unmounted at the end")
    p.add_argument("command", nargs="+", help="the command line (after --)")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 1 <= a.leave_pct <= 90:
        p.error("--leave-pct must be 1..90")
    fields = Fields(a.seconds, a.leave_pct)
    if a.veth:
        fields.update(ns=netloss.NS, host_ip=netloss.HOST_IP, ns_ip=netloss.NS_IP)
    if a.tmpfs:
        fields["fs"] = os.path.join(fields["dir"], "fs")
    try:
        command = " ".join(a.command).format_map(fields)
        setup = a.setup.format_map(fields) if a.setup else None
        server = a.server.format_map(fields) if a.server else None
    except (KeyError, ValueError, IndexError) as e:
        p.error(f"bad field in the command line: {e}")
    tool = shlex.split(command)[0] if command.strip() else ""
    if tool and tool not in SHELL_WORDS and "=" not in tool and shutil.which(tool) is None:
        log("cmd", f"{tool} is not installed")
        return 2
    die_with_parent()
    stop = Stop(a.seconds)
    srv = proc = None
    failed = False
    runs = 0
    try:
        if a.veth:
            netloss.cleanup()
            netloss.setup()
            if a.host_mtu:
                netloss.sh("ip", "link", "set", netloss.VETH_HOST, "mtu", str(a.host_mtu))
            if a.ns_nft:
                subprocess.run(["ip", "netns", "exec", netloss.NS, "nft", "-f", "-"], input=a.ns_nft, text=True,
                               check=True, timeout=30)
        if a.tmpfs:
            os.mkdir(fields["fs"], 0o755)
            subprocess.run(["mount", "-t", "tmpfs", "-o", a.tmpfs, "ks-scenario", fields["fs"]], check=True, timeout=30)
        if setup:
            log("cmd", f"setup: {setup}")
            subprocess.run(["bash", "-c", setup], check=True, timeout=max(10.0, stop.left()),
                           stdout=subprocess.DEVNULL, preexec_fn=die_with_parent_preexec())
        if server:
            log("cmd", f"server: {server}")
            srv = start(server, quiet=True, errors=False)
            if "port" in fields and not wait_port(int(fields["port"]), 15.0, stop):
                log("cmd", "the server did not come up")
                return 3
        log("cmd", f"for {stop.left():.0f} s: {command}")
        onset(tool)
        while not stop.now():
            t = time.monotonic()
            proc = start(command, quiet=not a.show_output)
            runs += 1
            while proc.poll() is None and not stop.now():
                if srv is not None and srv.poll() is not None:
                    log("cmd", f"the server exited ({srv.returncode})")
                    stop.flag = True
                time.sleep(0.1)
            if proc.poll() is None:
                break  # time is up: stopped below
            if proc.returncode != 0:
                log("cmd", f"the command exited with {proc.returncode} after {time.monotonic() - t:.1f} s")
                failed = not a.loop or time.monotonic() - t < 1.0
            if not a.loop or failed:
                break
    finally:
        stop_group(proc)
        stop_group(srv)
        if a.veth:
            netloss.cleanup()
        if a.tmpfs:
            subprocess.run(["umount", "-l", fields["fs"]], stderr=subprocess.DEVNULL, timeout=30)
        if fields.scratch:
            shutil.rmtree(fields.scratch, ignore_errors=True)
    log("cmd", f"done ({runs} run(s))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Packet loss on a veth pair: a network namespace joined to the host by a veth
pair (10.213.7.1/30 on the host, 10.213.7.2/30 inside), an iperf3 server in
the namespace, an iperf3 bulk TCP transfer from the host to it, and an
nftables rule in the namespace that drops --loss-pct % of the packets arriving
there (`numgen random mod 100 < N drop`).  The sender is on the host, so the
retransmissions show in the host's /proc/net/snmp, which the scraper reads.

The nft table lives inside the namespace: deleting the namespace removes it
with the veth pair.  Leftovers of a crashed run (namespace, veth, a host table
of the same name) are removed at start, and everything is removed at the end
whatever happens.  Bounded by --seconds.

    python -m kernelsight.scenarios.netloss --seconds 40 --loss-pct 5
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from ..procutil import die_with_parent
from ._common import Stop, check_seconds, log, onset, parser, start_group, stop_group

NS = "ks-loss"
VETH_HOST = "ks-loss0"
VETH_NS = "ks-loss1"
HOST_IP = "10.213.7.1"
NS_IP = "10.213.7.2"
TABLE = "ks_loss"
PORT = 5201


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=30)


def cleanup() -> None:
    """Remove whatever a previous run left (idempotent; errors mean 'not there')."""
    r = sh("ip", "netns", "pids", NS, check=False)
    for pid in r.stdout.split():
        try:
            _kill(int(pid))
        except ValueError:
            pass
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", VETH_HOST, check=False)
    sh("nft", "delete", "table", "inet", TABLE, check=False)  # only ever ours, if a variant put it on the host


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def setup() -> None:
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS, "netns", NS)
    sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", VETH_HOST)
    sh("ip", "link", "set", VETH_HOST, "up")
    sh("ip", "-n", NS, "addr", "add", f"{NS_IP}/30", "dev", VETH_NS)
    sh("ip", "-n", NS, "link", "set", VETH_NS, "up")
    sh("ip", "-n", NS, "link", "set", "lo", "up")


def add_loss(loss_pct: int) -> None:
    rules = (f"table inet {TABLE} {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n"
             f"  tcp dport {PORT} numgen random mod 100 < {loss_pct} counter drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30)


def dropped() -> str:
    r = sh("ip", "netns", "exec", NS, "nft", "list", "table", "inet", TABLE, check=False)
    for line in r.stdout.splitlines():
        if "counter" in line:
            return line.strip()
    return "?"


def main(argv=None) -> int:
    p = parser(__doc__, 40.0)
    p.add_argument("--loss-pct", type=int, default=5, help="share of the packets into the namespace dropped")
    p.add_argument("--rate", default="200M", help="iperf3 -b (bits/s): keeps the transfer from eating every CPU")
    a = p.parse_args(argv)
    check_seconds(p, a.seconds)
    if not 1 <= a.loss_pct <= 50:
        p.error("--loss-pct must be 1..50")
    for tool in ("ip", "nft", "iperf3"):
        if shutil.which(tool) is None:
            log("netloss", f"{tool} is not installed (apt-get install iproute2 nftables iperf3)")
            return 2
    die_with_parent()
    stop = Stop(a.seconds)
    srv = cli = None
    try:
        cleanup()
        setup()
        srv = start_group(["ip", "netns", "exec", NS, "iperf3", "-s", "-B", NS_IP, "-p", str(PORT)])
        time.sleep(0.5)
        add_loss(a.loss_pct)
        log("netloss", f"iperf3 {HOST_IP} -> {NS_IP}:{PORT} at {a.rate}b/s, {a.loss_pct} % of packets dropped "
                       f"in namespace {NS}, for {stop.left():.0f} s")
        onset(f"iperf3 over veth, {a.loss_pct} % loss")
        while not stop.now():
            t = time.monotonic()
            cli = start_group(["iperf3", "-c", NS_IP, "-p", str(PORT), "-b", a.rate, "-t", str(max(1, int(stop.left()))),
                         "--connect-timeout", "2000"])
            while cli.poll() is None and not stop.now():
                time.sleep(0.1)
            if cli.poll() is None:
                break
            if time.monotonic() - t < 2.0:  # the server was not listening yet, or it refused: retry shortly
                log("netloss", f"iperf3 client exited with {cli.returncode}; retrying")
                stop.sleep(0.5)
        log("netloss", f"dropped: {dropped()}")
    finally:
        stop_group(cli)
        stop_group(srv)
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

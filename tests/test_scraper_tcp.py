"""The tcp line on the live host: sockets counted from a NETLINK_SOCK_DIAG dump
(native/scraper/src_tcp.cpp), the /proc/net/tcp{,6} text as the oracle.

The host has sockets of its own that come and go, so no count is known in
advance: a dump is compared with the text files read just before and just
after it, and a round counts once those two agree (retried a bounded number of
times; no timing thresholds).  The sockets made here, in known states on
loopback, make sure every interesting state is present and that a dump spans
several netlink datagrams.  Any proc root other than "/proc" itself (a
recorded tree, "/proc/.") is read through the text parser: the fallback path.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kernelsight._scraper import Scraper

FIX = Path(__file__).resolve().parent / "fixtures" / "proc_tree"

# include/net/tcp_states.h, as the tcp line names them.
STATES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
          7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "syn_recv"}
FIELDS = ["established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close",
          "close_wait", "last_ack", "listen", "closing", "total"]
N_TIME_WAIT = 300  # with the rest, more sockets than one 32 KiB datagram holds (~370)


def text_counts(root: str = "/proc") -> dict[str, int]:
    """Sockets per state from /proc/net/tcp{,6}, counted here in Python."""
    out = dict.fromkeys(FIELDS, 0)
    for name in ("tcp", "tcp6"):
        p = Path(root) / "net" / name
        if not p.exists():
            continue
        for line in p.read_text().splitlines()[1:]:
            st = int(line.split()[3], 16)
            out[STATES[st]] += 1
            out["total"] += 1
    return out


def port_states(ports: set[int]) -> dict[tuple[int, int], int]:
    """(local port, remote port) -> state of the loopback sockets made here."""
    found = {}
    for name in ("tcp", "tcp6"):
        p = Path("/proc/net") / name
        if not p.exists():
            continue
        for line in p.read_text().splitlines()[1:]:
            w = line.split()
            lport, rport = int(w[1].rsplit(":", 1)[1], 16), int(w[2].rsplit(":", 1)[1], 16)
            if lport in ports or rport in ports:
                found[(lport, rport)] = int(w[3], 16)
    return found


def tcp_line(s: Scraper) -> dict[str, int]:
    (e,) = [e for e in s.collect() if e["type"] == "tcp"]
    return {k: e[k] for k in FIELDS}


def sock_diag_works() -> bool:
    """An independent probe: does this kernel answer an inet_diag TCP dump?"""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)  # NETLINK_SOCK_DIAG
    except OSError:
        return False
    with s:
        # nlmsghdr (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP) + inet_diag_req_v2
        req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << 10) + bytes(48)
        s.send(struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0) + req)
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, typ = struct.unpack_from("=IH", data, off)
                if typ == 2:  # NLMSG_ERROR
                    return struct.unpack_from("=i", data, off + 16)[0] == 0
                if typ == 3:  # NLMSG_DONE
                    return True
                off += (length + 3) & ~3
                if length < 16:
                    return False


class Loopback:
    """TCP sockets in known states: listeners (IPv4, and IPv6 when there is
    ::1), established pairs, a CLOSE_WAIT (and its FIN_WAIT2 peer), TIME_WAITs."""

    def __init__(self):
        self.keep: list[socket.socket] = []
        self.ports: set[int] = set()
        self.want: dict[tuple[int, int], int] = {}
        lst4 = self._listener(socket.AF_INET, "127.0.0.1")
        lst6 = None
        try:
            lst6 = self._listener(socket.AF_INET6, "::1")
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise
        for lst in [lst4, lst4] + ([lst6] if lst6 else []):
            c, a = self._pair(lst)
            self.keep += [c, a]
            self.want[self._key(c)] = 1  # ESTABLISHED
            self.want[self._key(a)] = 1
        # The passive side of a close: CLOSE_WAIT; the active one FIN_WAIT2.
        c, a = self._pair(lst4)
        ck = self._key(c)
        self.keep.append(a)
        self.want[self._key(a)] = 8  # CLOSE_WAIT
        c.close()
        self.want[ck] = 5  # FIN_WAIT2 (orphaned)
        # The active side closed first, then the passive one: TIME_WAIT, no descriptor.
        for _ in range(N_TIME_WAIT):
            c, a = self._pair(lst4)
            self.want[self._key(c)] = 6
            c.close()
            a.close()

    def _listener(self, family, host):
        s = socket.socket(family, socket.SOCK_STREAM)
        self.keep.append(s)
        s.bind((host, 0))
        s.listen(64)
        self.ports.add(s.getsockname()[1])
        self.want[(s.getsockname()[1], 0)] = 10  # LISTEN
        return s

    @staticmethod
    def _pair(lst):
        c = socket.socket(lst.family, socket.SOCK_STREAM)
        c.connect(lst.getsockname()[:2])
        a, _ = lst.accept()
        return c, a

    @staticmethod
    def _key(s):
        return (s.getsockname()[1], s.getpeername()[1])

    def settled(self) -> bool:
        """The kernel shows each socket made here in its intended state."""
        now = port_states(self.ports)
        return all(now.get(k) == v for k, v in self.want.items())

    def close(self):
        for s in self.keep:
            s.close()


@pytest.fixture
def loopback():
    lb = Loopback()
    try:
        for _ in range(200):  # loopback FINs are handled at once; a few rounds at most
            if lb.settled():
                break
            time.sleep(0.01)
        assert lb.settled(), "loopback sockets never reached their states"
        yield lb
    finally:
        lb.close()


def agree(read_netlink, read_text, tries: int = 30):
    """(netlink, text) from the first round whose dump sits between two text
    reads that agree; else the last round's."""
    for _ in range(tries):
        before = read_text()
        got = read_netlink()
        after = read_text()
        if before == after and got == before:
            return got, before
    return got, before


def test_live_tcp_counts_match_proc_net_tcp(loopback):
    if not sock_diag_works():
        pytest.skip("this kernel has no inet_diag TCP dump: the text path is the only one")
    s = Scraper("/proc", "/sys")
    got, oracle = agree(lambda: tcp_line(s), text_counts)
    assert got == oracle
    # What was made here is in there (the host may hold more).
    assert got["listen"] >= sum(v == 10 for v in loopback.want.values())
    assert got["established"] >= 6 and got["close_wait"] >= 1 and got["fin_wait2"] >= 1
    assert got["time_wait"] >= N_TIME_WAIT and got["total"] >= N_TIME_WAIT + 11
    # Netlink was used: a fallback would have warned.
    assert not [w for w in s.warnings if "sock_diag" in w], s.warnings
    # Read after read on the same socket and buffer.
    for _ in range(5):
        assert tcp_line(s)["time_wait"] >= N_TIME_WAIT


def test_live_dump_reused_only_while_no_tcp_socket_moved():
    """A scraper reuses its last dump while PROC/net/snmp's Tcp values and sockstat's TCP line stand
    still.  Sockets that listen, connect and close between two reads of the same scraper change
    them, so its next read dumps again and agrees with /proc/net/tcp, not with its last dump."""
    if not sock_diag_works():
        pytest.skip("this kernel has no inet_diag TCP dump")
    s = Scraper("/proc", "/sys")
    tcp_line(s)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    try:
        got, oracle = agree(lambda: tcp_line(s), text_counts)
        assert got == oracle and got["listen"] >= 1 and got["established"] >= 2
    finally:
        for x in (cli, conn, srv):
            x.close()
    got, oracle = agree(lambda: tcp_line(s), text_counts)
    assert got == oracle


def test_live_ephemeral_ports_match_proc_net_tcp(loopback):
    """limits.ephemeral_ports_used comes from the same dump on the live host."""
    if not sock_diag_works():
        pytest.skip("this kernel has no inet_diag TCP dump")
    live, text = Scraper("/proc", "/sys"), Scraper("/proc/.", "/sys")

    def used(s):
        (e,) = [e for e in s.collect() if e["type"] == "limits"]
        return e["ephemeral_ports_used"]

    got, oracle = agree(lambda: used(live), lambda: used(text))
    assert got == oracle and got >= N_TIME_WAIT  # the TIME_WAITs' client ports


def test_text_path_for_any_other_proc_root(loopback):
    """The fallback: "/proc/." is the live files through the text parser, a
    recorded tree its own sockets only, whatever the host holds."""
    s = Scraper("/proc/.", "/sys")
    got, oracle = agree(lambda: tcp_line(s), lambda: text_counts("/proc/."))
    assert got == oracle and got["time_wait"] >= N_TIME_WAIT
    assert not [w for w in s.warnings if "sock_diag" in w]
    fx = Scraper(str(FIX / "proc"), str(FIX / "sys"))
    t = tcp_line(fx)
    assert (t["established"], t["time_wait"], t["listen"], t["total"]) == (2, 7, 2, 11)
    assert t == text_counts(str(FIX / "proc"))


SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <dlfcn.h>
#include <sys/socket.h>
int socket(int domain, int type, int protocol)
{
	static int (*real)(int, int, int);
	if (domain == AF_NETLINK && protocol == 4 /* NETLINK_SOCK_DIAG */) {
		errno = EPERM;
		return -1;
	}
	if (!real)
		real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	return real(domain, type, protocol);
}
"""


def test_cli_without_sock_diag_warns_once_and_reads_proc(tmp_path, loopback):
    """socket(AF_NETLINK, ..., NETLINK_SOCK_DIAG) refused (as a seccomp policy
    would): one warning naming it, and the counts from /proc/net/tcp{,6}."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the LD_PRELOAD shim")
    (tmp_path / "shim.c").write_text(SHIM)
    so = tmp_path / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(tmp_path / "shim.c"), "-ldl"], check=True)
    exe = Path(sys.executable).parent / "ks-scraper"
    r = subprocess.run([str(exe), "--count", "3", "--interval", "0.05"], capture_output=True, text=True,
                       env={**os.environ, "LD_PRELOAD": str(so)}, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "sock_diag" in ln]
    assert len(warned) == 1, r.stderr
    assert "Operation not permitted" in warned[0] and "/proc/net/tcp" in warned[0]
    tcp = [json.loads(ln) for ln in r.stdout.splitlines() if '"type":"tcp"' in ln]
    assert len(tcp) == 3
    for t in tcp:
        assert t["time_wait"] >= N_TIME_WAIT and t["listen"] >= 1 and t["close_wait"] >= 1

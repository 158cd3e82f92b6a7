"""tcpstates: every TCP state change (TIME_WAIT churn, SYN_RECV build-up).

Attaches to the sock:inet_sock_set_state tracepoint.  Run as `tcpstates -w`
(wide: full 16-character command names and an IP-version column).

The kernel never reports a full socket entering TIME_WAIT: when the active
closer gets the last FIN (FIN_WAIT2) or the ACK of its FIN (CLOSING), the
kernel hands the connection to a TIME_WAIT mini-socket and reports the full
socket as going to CLOSE.  So `time_wait` = 1 marks FIN_WAIT2 -> CLOSE and
CLOSING -> CLOSE (and TIME_WAIT itself, should a kernel ever report it): the
connection entered TIME_WAIT.  (A FIN_WAIT2 socket reset on timeout, or a
TIME_WAIT overflow, also shows as FIN_WAIT2 -> CLOSE; both are rare and are
counted by the kernel in TcpExt TCPTimeWaitOverflow / TCPAbortOnTimeout.)

pid/comm are those of the task running when the state changed, which for
transitions driven by incoming packets is whoever was interrupted, not the
socket's owner.
"""

from __future__ import annotations

from .base import CollectorSpec, TableParser, family_of

TIME_WAIT_FROM = ("FIN_WAIT2", "CLOSING")


class TcpStatesParser(TableParser):
    header_first = ("SKADDR", "TIME(s)", "TIME")

    def make_event(self, r: dict[str, str], now_ns: int) -> dict:
        old, new = r["OLDSTATE"], r["NEWSTATE"]
        if r.get("->") != "->":
            raise ValueError("no '->' between the states")
        tw = new == "TIME_WAIT" or (new == "CLOSE" and old in TIME_WAIT_FROM)
        laddr = r["LADDR"]
        return {
            "type": "tcp_state",
            "ts": now_ns,
            "skaddr": r["SKADDR"],
            "pid": int(r["PID"]),
            "comm": r["COMM"],
            "family": int(r["IP"]) if "IP" in r else family_of(laddr),
            "laddr": laddr,
            "lport": int(r["LPORT"]),
            "raddr": r["RADDR"],
            "rport": int(r["RPORT"]),
            "oldstate": old,
            "newstate": new,
            "duration_ms": float(r["MS"]),
            "time_wait": int(tw),
        }


SPEC = CollectorSpec(
    name="tcpstates",
    tool="tcpstates",
    doc="TCP state transitions with time spent in the old state",
    args=lambda interval: ["-w"],
    parser=TcpStatesParser,
    event_types=("tcp_state",),
    attach="tracepoint sock:inet_sock_set_state",
    perf_poll_ms=100,  # libbpf-tools' PERF_POLL_TIMEOUT_MS: only there to look at its exit flag
)

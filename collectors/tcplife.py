"""tcplife: one event per closed TCP session (bytes each way, lifetime).

Attaches to the sock:inet_sock_set_state tracepoint.  Run as `tcplife -w`.
"""

from __future__ import annotations

from .base import CollectorSpec, TableParser, family_of


class TcpLifeParser(TableParser):
    header_first = ("PID", "TIME(s)", "TIME")

    def make_event(self, r: dict[str, str], now_ns: int) -> dict:
        laddr = r["LADDR"]
        return {
            "type": "tcp_life",
            "ts": now_ns,
            "pid": int(r["PID"]),
            "comm": r["COMM"],
            "family": family_of(laddr),
            "laddr": laddr,
            "lport": int(r["LPORT"]),
            "raddr": r["RADDR"],
            "rport": int(r["RPORT"]),
            "tx_kb": float(r["TX_KB"]),
            "rx_kb": float(r["RX_KB"]),
            "duration_ms": float(r["MS"]),
        }


SPEC = CollectorSpec(
    name="tcplife",
    tool="tcplife",
    doc="TCP session lifetimes and bytes",
    args=lambda interval: ["-w"],
    parser=TcpLifeParser,
    event_types=("tcp_life",),
    attach="tracepoint sock:inet_sock_set_state",
    perf_poll_ms=100,  # libbpf-tools' PERF_POLL_TIMEOUT_MS: only there to look at its exit flag
)

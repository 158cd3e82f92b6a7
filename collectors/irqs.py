"""hardirqs / softirqs: time spent in each interrupt handler per interval.

hardirqs attaches to tp_btf irq_handler_entry/exit (raw tracepoints as a
fallback); softirqs to tp_btf softirq_entry/exit.  Run as `hardirqs INTERVAL`
/ `softirqs INTERVAL`: a table `NAME  TOTAL_usecs` per interval, cleared after
each print, so each event is the handler time in that interval.
"""

from __future__ import annotations

from .base import CollectorSpec, Parser


class IrqTimeParser(Parser):
    kind = "hardirq"

    def __init__(self, interval_s: int = 1) -> None:
        super().__init__(interval_s)
        self.in_table = False
        self.scale = 1.0

    def feed(self, line: str, now_ns: int) -> list[dict]:
        s = line.strip()
        if not s:
            self.in_table = False
            return []
        toks = s.split()
        if toks[0] in ("HARDIRQ", "SOFTIRQ") and len(toks) == 2:
            unit = toks[1].split("_")[-1]
            self.scale = {"usecs": 1.0, "nsecs": 0.001}.get(unit, 1.0)
            self.in_table = True
            return []
        if not self.in_table:
            if not s.startswith("Tracing"):
                self.skipped += 1
            return []
        name, _, total = s.rpartition(" ")
        try:
            total_us = int(round(int(total) * self.scale))
        except ValueError:
            self.skipped += 1
            self.warn(f"unparsable line: {s[:160]!r}")
            return []
        return [{
            "type": "irq_time",
            "ts": now_ns,
            "interval_s": self.interval_s,
            "kind": self.kind,
            "name": name.strip(),
            "total_us": total_us,
        }]


class SoftIrqTimeParser(IrqTimeParser):
    kind = "softirq"


HARDIRQS = CollectorSpec(
    name="hardirqs",
    tool="hardirqs",
    doc="hard interrupt handler time per IRQ and interval",
    args=lambda interval: [str(interval)],
    parser=IrqTimeParser,
    event_types=("irq_time",),
    attach="tp_btf irq_handler_entry, irq_handler_exit",
)

SOFTIRQS = CollectorSpec(
    name="softirqs",
    tool="softirqs",
    doc="soft interrupt time per softirq vector and interval",
    args=lambda interval: [str(interval)],
    parser=SoftIrqTimeParser,
    event_types=("irq_time",),
    attach="tp_btf softirq_entry, softirq_exit",
)

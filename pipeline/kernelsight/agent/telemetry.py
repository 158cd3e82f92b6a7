"""The pipeline watching itself: telemetry loss and silent producers as observations.

Every agent step reconciles each producer's written lines with what the
database holds (accounting.account) and turns what it finds into at most two
findings, one per incident rather than one per producer:

    Telemetry Loss    lines dropped since the last step (pipe full, no reader,
                      oversize, write errors, lost inside a wrapped tool), or
                      lines that must be stored by now and are not (unaccounted)
    Silent Producer   a running producer whose counters have stood still for
                      SILENT_INTERVALS of its interval

Drops are judged by their growth between two steps, so drops from before the
agent started do not open anything; unaccounted lines are judged by the
accounting's own "grew recently" status.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .. import accounting
from .tracker import Finding

CATEGORY = "pipeline"


@dataclass
class TelemetryWatch:
    data_dir: Path
    last_dropped: dict[str, int] | None = None  # producer -> dropped_total at the last step
    last: accounting.Accounting | None = None
    errors: int = 0
    last_error: str | None = None
    lost_by_producer: dict[str, int] = field(default_factory=dict)

    def findings(self, conn: sqlite3.Connection, now_ns: int) -> list[Finding]:
        try:
            acc = accounting.account(self.data_dir, conn, now_ns=now_ns)
        except (OSError, sqlite3.Error, ValueError) as e:
            # Accounting that cannot be read this step costs this step's check, nothing else.
            self.errors += 1
            self.last_error = str(e)
            return []
        self.last = acc
        dropped_now = {a.producer: a.dropped_total for a in acc.producers}
        first = self.last_dropped is None
        prev = self.last_dropped or {}
        self.last_dropped = dropped_now
        if first:
            return []
        out: list[Finding] = []
        lost = []
        for a in acc.producers:
            new_drops = max(0, a.dropped_total - prev.get(a.producer, a.dropped_total))
            unaccounted = a.unaccounted if a.status == "unaccounted" else 0
            if new_drops or unaccounted:
                causes = {c: n for c, n in a.dropped.items() if n}
                lost.append((a, new_drops, unaccounted, causes))
        if lost:
            lost.sort(key=lambda x: -(x[1] + x[2]))
            total = sum(n + u for _, n, u, _ in lost)
            parts = []
            for a, n, u, causes in lost[:4]:
                bits = []
                if n:
                    bits.append(f"{n} dropped ({', '.join(f'{c} {k}' for c, k in sorted(causes.items()))} in all)")
                if u:
                    bits.append(f"{u} written but not stored")
                parts.append(f"{a.producer}: {'; '.join(bits)}")
            more = f" and {len(lost) - 4} more" if len(lost) > 4 else ""
            unacc = any(u for _, _, u, _ in lost)
            full = any("full" in causes for _, _, _, causes in lost)
            hints = ["`ks status` shows the accounting per producer (written, stored, rejected, dropped by cause)"]
            if full:
                hints.append("Pipe full: ks-ingest is behind its producers (CPU-starved host, slow or full disk); "
                             "check ks-ingest's status line and the disk")
            if unacc:
                hints.append("Lines written but never stored point at ks-ingest or the database "
                             "(see ks-ingest's log and ingest_status.json)")
            out.append(Finding(
                key="telemetry_loss", rule_id="telemetry_loss", label="Telemetry Loss", category=CATEGORY,
                observation_type="symptom", severity="high" if unacc else "medium",
                metric="pipeline_lines_lost", value=float(total),
                summary=f"Telemetry lost: {total} lines since the last check; " + "; ".join(parts) + more,
                hints=hints,
                processes=[{"kind": "producer", "comm": a.producer, "lines_dropped": n, "lines_unaccounted": u}
                           for a, n, u, _ in lost[:5]],
            ))
        silent = [a for a in acc.producers if a.status == "silent"]
        if silent:
            names = ", ".join(f"{a.producer} (pid {', '.join(map(str, a.running_pids)) or '?'})" for a in silent)
            out.append(Finding(
                key="producer_silent", rule_id="producer_silent", label="Silent Producer", category=CATEGORY,
                observation_type="symptom", severity="medium", metric="pipeline_producers_silent",
                value=float(len(silent)),
                summary=f"{len(silent)} running producer(s) wrote nothing for {accounting.SILENT_INTERVALS} "
                        f"intervals: {names}",
                hints=["A tracer or collector stuck (blocked on a lock, a stopped process, a wedged tool): "
                       "its telemetry is missing while it runs",
                       "Check its log under DATA_DIR/logs and `ks status`; the supervisor restarts it only if it exits"],
                processes=[{"kind": "producer", "comm": a.producer, **({"pid": a.running_pids[0]}
                                                                       if a.running_pids else {})}
                           for a in silent[:5]],
            ))
        return out

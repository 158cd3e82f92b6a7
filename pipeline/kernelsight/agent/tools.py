"""The agent's tool interface (docs/design.md, "Tool interface"), for people,
scripts and an optional LLM alike.  Every tool only reads: SQL goes through
ReadOnlyDB, and nothing a tool returns is ever executed.

The data a tool reads can be shaped by any local user (process names, argv,
log lines), and its arguments by a model: windows are capped at
MAX_WINDOW_S, log search is linear-time (RE2: no backtracking, so
`(\\w+\\w*)*!` costs what a substring search costs), and BoundedTools runs
every call in a forked child with a wall-clock and a memory bound
(bounded.py), which is how the LLM loop and `ks agent tool` call them.

    query_database(sql)          read-only SQL (SELECT / WITH / read-only PRAGMA)
    get_current_features()       the latest feature vector with reasons for nulls (the agent's stored one)
    compare_baseline(window)     z-scores of the window's features vs the baseline, worst first
    correlate_events(window)     observations, events and co-moving features in the window
    analyze_logs(pattern)        an RE2 regex (linear time) over the pipeline's logs and rejected lines
    export_report(format)        md | json | html report of recent observations
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import re2
import structlog

from .. import db
from ..features.baseline import load_baseline, zscores
from ..features.catalog import FEATURE_STEP_S, FEATURE_WINDOW_S
from ..features.engine import compute_range, compute_vector
from ..features.store import read_matrix
from ..storage.reads import count_rows
from .bounded import BoundedRunner, Bounds, ToolCutOff
from .egress import column_allowed
from .readonly_sql import QueryRefused, ReadOnlyDB
from .store import list_observations

MAX_WINDOW_S = 24 * 3600.0  # compare_baseline / correlate_events read every row in the window
MAX_PATTERN_CHARS = 1000
MAX_LOG_BYTES_SCANNED = 32 * 1024 * 1024  # per analyze_logs call, newest files first

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ToolError(ValueError):
    pass


def parse_window(window: str | float | int) -> float:
    if isinstance(window, (int, float)):
        secs = float(window)
    else:
        m = _WINDOW.match(window)
        if not m:
            raise ToolError(f"window must be like 60, 90s, 5m, 2h; got {window!r}")
        secs = float(m.group(1)) * _UNIT_S[m.group(2)]
    if secs <= 0:
        raise ToolError("window must be positive")
    if secs > MAX_WINDOW_S:
        raise ToolError(f"refused: window {window!r} is longer than {MAX_WINDOW_S / 3600:g} h; "
                        "use query_database with a ts range on the rollup views (<table>_all) for older data")
    return secs


def compile_pattern(pattern: str):
    """A linear-time RE2 regex; RE2 has no backreferences or lookaround, which it says in the error."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ToolError(f"refused: pattern longer than {MAX_PATTERN_CHARS} characters")
    opts = re2.Options()
    opts.log_errors = False  # the error goes to the caller, not to stderr
    opts.max_mem = 8 << 20
    try:
        return re2.compile(pattern, opts)
    except re2.error as e:
        raise ToolError(f"bad pattern (RE2 syntax, linear time: no backreferences or lookaround): "
                        f"{e}") from None


class Tools:
    def __init__(self, data_dir: Path, llm_mode: bool = False):
        """llm_mode: query_database reads only what may leave the host (egress.column_allowed)."""
        self.data_dir = data_dir
        self.path = db.db_path(data_dir)
        self.sql = ReadOnlyDB(self.path, column_policy=column_allowed if llm_mode else None)

    def close(self) -> None:
        self.sql.close()

    def query_database(self, sql: str) -> dict:
        return self.sql.query(sql)

    def get_current_features(self, window_s: float = FEATURE_WINDOW_S) -> dict:
        """The vector the agent stored last (what its rules saw) when it is at most two steps old
        and over window_s; else one computed now."""
        conn = self.sql.connection()
        now = time.time_ns()
        fresh = read_matrix(conn, now - int(2 * FEATURE_STEP_S * 1e9), now, window_s=window_s)
        if len(fresh):
            return fresh.vector(len(fresh) - 1).to_dict()
        return compute_vector(conn, now, window_s).to_dict()

    def compare_baseline(self, window: str | float = "5m", top: int = 20) -> dict:
        secs = parse_window(window)
        conn = self.sql.connection()
        base = load_baseline(conn, path=self.data_dir / "baseline.json")
        vec = compute_vector(conn, time.time_ns(), secs)
        if base is None:
            return {"window_s": secs, "baseline": None,
                    "note": "no baseline learned yet: run `ks-features baseline learn`", "features": vec.values}
        z = zscores(vec, base)
        ranked = sorted(((n, r) for n, r in z.items() if r.get("robust_z") is not None or r.get("z") is not None),
                        key=lambda nr: -abs(nr[1].get("robust_z") or nr[1].get("z") or 0))
        return {"window_s": secs, "baseline": base.meta, "deviations": [{"feature": n, **r} for n, r in ranked[:top]]}

    def correlate_events(self, window: str | float = "10m") -> dict:
        secs = parse_window(window)
        now = time.time_ns()
        conn = self.sql.connection()
        obs = [o for o in list_observations(conn, since_s=int(now / 1e9 - secs), limit=200)]
        # The agent's stored vectors when they cover the range at its step, else the same grid computed now.
        ends = np.arange(now - int(secs * 1e9), now + 1, int(FEATURE_STEP_S * 1e9))
        m = read_matrix(conn, int(ends[0]), now, window_s=FEATURE_WINDOW_S)
        if len(m) < 0.5 * len(ends):
            m = compute_range(conn, ends, FEATURE_WINDOW_S)
        pairs = []
        vals = m.values
        ok = [j for j in range(vals.shape[1]) if np.isfinite(vals[:, j]).sum() >= 5 and np.nanstd(vals[:, j]) > 0]
        for a_i, a in enumerate(ok):
            for b in ok[a_i + 1:]:
                x, y = vals[:, a], vals[:, b]
                good = np.isfinite(x) & np.isfinite(y)
                if good.sum() >= 5 and np.std(x[good]) > 0 and np.std(y[good]) > 0:
                    r = float(np.corrcoef(x[good], y[good])[0, 1])
                    if abs(r) >= 0.9:
                        pairs.append({"a": m.names[a], "b": m.names[b], "r": round(r, 3)})
        pairs.sort(key=lambda p: -abs(p["r"]))
        # counted from the per-minute rollups where the window reaches past the raw rows
        events = {table: count_rows(conn, table, now - int(secs * 1e9) - 1)
                  for table in ("exec_events", "oom_kill_events", "syscall_events", "tcp_state_events")}
        return {"window_s": secs, "observations": [{k: o[k] for k in ("id", "label", "status", "severity",
                                                                       "first_seen", "summary")} for o in obs],
                "event_counts": events, "co_moving_features": pairs[:25]}

    def analyze_logs(self, pattern: str, limit: int = 50) -> dict:
        rx = compile_pattern(pattern)
        matches, counts, budget, skipped = [], {}, MAX_LOG_BYTES_SCANNED, []
        for path in sorted((self.data_dir / "logs").glob("*.log"), key=lambda p: -p.stat().st_mtime):
            n = 0
            with open(path, "rb") as f:
                for line in f:
                    budget -= len(line)
                    if budget < 0:
                        skipped.append(path.name)
                        break
                    text = line.decode("utf-8", "replace").rstrip("\n")
                    if rx.search(text):
                        n += 1
                        if len(matches) < limit:
                            matches.append({"file": path.name, "line": text[:500]})
            counts[path.name] = n
        rej = self.sql.connection().execute(
            "SELECT reason, COUNT(*) FROM rejected_events GROUP BY reason ORDER BY 2 DESC LIMIT 1000").fetchall()
        rejected = [{"reason": r, "count": c} for r, c in rej if rx.search(r)]
        out = {"pattern": pattern, "matches_per_file": counts, "matches": matches, "rejected_events": rejected}
        if skipped:
            out["note"] = (f"scanned the newest {MAX_LOG_BYTES_SCANNED // 2**20} MiB of logs; not past it in: "
                           + ", ".join(skipped))
        return out

    def export_report(self, fmt: str = "md", since_s: float | None = None) -> str:
        from ..report import render_report

        return render_report(self.data_dir, fmt, since_s=since_s)


class BoundedTools:
    """The tools as the LLM loop and `ks agent tool` call them: each call in a forked child with its own
    read-only connection, killed past bounds.wall_s and limited to bounds.memory_mb more memory
    (bounded.py).  A refusal or a cut-off is logged and raised with a message meant for the caller."""

    ERRORS = {"QueryRefused": QueryRefused, "ToolError": ToolError, "StoreError": db.StoreError}

    def __init__(self, data_dir: Path, bounds: Bounds = Bounds(), log=None, llm_mode: bool = False):
        self.data_dir = Path(data_dir)
        self.llm_mode = llm_mode
        db.connect_readonly(db.db_path(self.data_dir)).close()  # StoreError now, not in every child
        self.runner = BoundedRunner(bounds, self.ERRORS)
        self.log = log or structlog.get_logger().bind(component="ks-agent-tools")

    def call(self, name: str, *args):
        if name not in TOOL_NAMES:
            raise ToolError(f"unknown tool {name!r}: the tools are {', '.join(TOOL_NAMES)}")
        data_dir, llm_mode = self.data_dir, self.llm_mode

        def run():
            tools = Tools(data_dir, llm_mode)
            try:
                return getattr(tools, name)(*args)
            finally:
                tools.close()

        try:
            return self.runner.run(run)
        except (QueryRefused, ToolError, ToolCutOff) as e:
            st = self.runner.last
            self.log.warning("tool call refused" if not isinstance(e, ToolCutOff) else "tool call cut off",
                             tool=name, args=[str(a)[:200] for a in args], error=str(e),
                             elapsed_s=round(st.elapsed_s, 3) if st else None,
                             peak_rss_growth_mb=st.peak_rss_growth_mb and round(st.peak_rss_growth_mb, 1))
            raise


# The calls BoundedTools runs (export_report is the operator's, not the model's: it stays in-process).
TOOL_NAMES = ("query_database", "get_current_features", "compare_baseline", "correlate_events", "analyze_logs")

__all__ = ["Tools", "BoundedTools", "Bounds", "ToolCutOff", "ToolError", "QueryRefused", "parse_window",
           "MAX_WINDOW_S"]

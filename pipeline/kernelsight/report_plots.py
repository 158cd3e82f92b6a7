"""Plots for incident reports: each implicated feature around an observation.

For an observation, the implicated features are its evidence metric
(details.metric) first, then the other features its rule reads (the
conditions of rules.toml: Rule.features()).  Each is plotted from 2 min
before first_seen to 2 min after it closed (or was last seen), with

- the series: the stored `features` table when it covers the span densely
  enough with a window no longer than twice the agent's (or than the plot's
  step, for long spans), else computed from the raw tables (features.engine.compute_range,
  the agent's 15 s window at 5 s steps; the agent-only signals of
  agent/signals.py are computed the same way the agent does);
- the baseline band mean +/- 2 std (and the mean) when a baseline exists
  (features.baseline.load_baseline; the hour-of-day statistics when learned);
- the observation window shaded.

Rendered with matplotlib's Agg canvas (no display, no pyplot global state) to
PNG bytes; the HTML report inlines them base64, so it stays one file.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .agent.rules import load_rules
from .agent.signals import AGENT_SIGNALS, agent_signals, io_worst
from .features import catalog as C
from .features.baseline import JSON_NAME, load_baseline
from .features.engine import compute_range
from .features.store import read_matrix

PAD_S = 120.0
STEP_S = C.FEATURE_STEP_S
WINDOW_S = C.FEATURE_WINDOW_S  # the agent's window: plots show what it judged
MAX_POINTS = 400  # a longer span gets a coarser step, not a slower report
MAX_FEATURES = 6  # per observation
MAX_PLOTTED_OBSERVATIONS = 40
IO_WORST = ("io_p50_ms_max", "io_p95_ms_max", "io_p99_ms_max")
NS = 1_000_000_000


@dataclass
class Plot:
    feature: str
    png: bytes | None  # None when the feature has no data in the span
    note: str = ""

    @property
    def b64(self) -> str:
        return base64.b64encode(self.png or b"").decode()


@dataclass
class ObservationPlots:
    observation_id: int
    features: list[str]
    source: str = ""
    plots: list[Plot] = field(default_factory=list)


def implicated_features(rule_id: str | None, metric: str | None, rules=None) -> list[str]:
    """The observation's metric, then the other features its rule names (known ones only), at most MAX_FEATURES."""
    out: list[str] = [metric] if metric else []
    if rule_id:
        try:
            rule = (rules or load_rules()).by_id(rule_id)
        except StopIteration:  # baseline_deviation and other rule-less observations: the metric alone
            rule = None
        if rule is not None:
            out += sorted(rule.features() - {metric})
    known = set(C.NAMES) | set(AGENT_SIGNALS) | set(IO_WORST)
    return [f for f in dict.fromkeys(out) if f in known][:MAX_FEATURES]


def _span(o: dict, data_lo_s: float | None, data_hi_s: float | None) -> tuple[float, float]:
    end = o["closed_at"] or o["last_seen"]
    lo, hi = o["first_seen"] - PAD_S, end + PAD_S
    if data_lo_s is not None:
        lo = max(lo, data_lo_s)
    if data_hi_s is not None:
        hi = min(hi, data_hi_s)
    return lo, max(hi, lo + STEP_S)


def _data_extent(conn: sqlite3.Connection) -> tuple[float | None, float | None]:
    """First and last sample time (s) over the scraper's main tables: the span there is anything to plot
    (their per-minute rollups reach back past the raw rows)."""
    los, his = [], []
    for t in ("memory_metrics", "cpu_metrics", "load_metrics", "features",
              "memory_metrics_1m", "cpu_metrics_1m", "load_metrics_1m"):
        try:
            lo, hi = conn.execute(f"SELECT MIN(ts), MAX(ts) FROM {t}").fetchone()
        except sqlite3.OperationalError:
            continue
        if lo is not None:
            los.append(lo / NS)
            his.append(hi / NS)
    return (min(los), max(his)) if los else (None, None)


def series(conn: sqlite3.Connection, names: list[str], lo_s: float, hi_s: float) -> tuple[np.ndarray, dict, str]:
    """(ts_ns, {feature: values}, source) over [lo_s, hi_s]."""
    span = hi_s - lo_s
    step = max(STEP_S, span / MAX_POINTS)
    lo_ns, hi_ns = int(lo_s * NS), int(hi_s * NS)
    catalog = [n for n in names if n in C.BY_NAME]
    need_io = [n for n in names if n in IO_WORST]
    extra = [n for n in names if n in AGENT_SIGNALS]
    # The stored features table, when it has at least one row per 2 steps across the span and either its
    # window is close to the agent's (a 60 s window would smear a 20 s incident) or the span is long.
    stored = read_matrix(conn, lo_ns, hi_ns, catalog) if catalog and not (need_io or extra) else None
    if stored is not None and len(stored) >= 0.5 * span / step and len(stored) >= 3 \
            and (stored.window_s <= 2 * WINDOW_S or stored.window_s <= step) \
            and stored.ts[0] <= lo_ns + int((stored.window_s + 2 * step) * NS) \
            and stored.ts[-1] >= hi_ns - int(2 * step * NS):
        vals = {n: stored.values[:, j] for j, n in enumerate(stored.names)}
        return stored.ts, vals, f"stored features ({stored.window_s:g} s window)"
    ends = np.arange(lo_ns + int(WINDOW_S * NS), hi_ns + 1, int(step * NS), dtype=np.int64)
    if len(ends) == 0:
        ends = np.array([hi_ns], dtype=np.int64)
    vals: dict[str, np.ndarray] = {}
    if catalog or need_io:
        m = compute_range(conn, ends, window_s=WINDOW_S)  # all features: derived ones and io_worst need inputs
        idx = {n: j for j, n in enumerate(m.names)}
        for n in catalog:
            vals[n] = m.values[:, idx[n]]
        if need_io:
            rows = [io_worst({k: (None if np.isnan(v) else float(v)) for k, v in zip(m.names, m.values[i])},
                             WINDOW_S) for i in range(len(m))]
            for n in need_io:
                vals[n] = np.array([np.nan if r[n] is None else r[n] for r in rows], dtype=np.float64)
    if extra:
        rows = [agent_signals(conn, int(t), WINDOW_S) for t in ends]
        for n in extra:
            vals[n] = np.array([np.nan if r[n] is None else r[n] for r in rows], dtype=np.float64)
    return ends, vals, f"computed from raw tables ({WINDOW_S:g} s window, {step:g} s step)"


def _unit(name: str) -> str:
    f = C.BY_NAME.get(name)
    return getattr(f, "unit", "") if f is not None else ""


def render_png(name: str, ts_ns: np.ndarray, y: np.ndarray, o: dict, band: dict | None, source: str) -> bytes:
    """One feature's plot as PNG bytes (Agg canvas; no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t0 = o["first_seen"]
    x = ts_ns / NS - t0
    fig = Figure(figsize=(9.6, 2.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    end = (o["closed_at"] or o["last_seen"]) - t0
    sev_color = {"critical": "#bb0000", "high": "#ee6600", "medium": "#ddbb00"}.get(o["severity"], "#66aa66")
    ax.axvspan(0, max(end, 1), color=sev_color, alpha=0.15, lw=0,
               label=f"observation\n({o['status']})")
    finite = y[np.isfinite(y)]
    ylo, yhi = float(finite.min()), float(finite.max())
    if band is not None:
        mean, std = band["mean"], band.get("std") or 0.0
        lo_b = mean - 2 * std
        hi_b = mean + 2 * std
        if band.get("min") is not None and band["min"] >= 0:
            lo_b = max(lo_b, 0.0)  # a band below 0 for a feature that never is: clip, do not mislead
        if name.endswith("_pct") and band.get("max") is not None and band["max"] <= 100:
            hi_b = min(hi_b, 100.0)  # likewise above 100 %
        ax.axhspan(lo_b, hi_b, color="#3a7bd5", alpha=0.15, lw=0,
                   label=f"baseline mean ± 2σ\n({band['basis']})")
        ax.axhline(mean, color="#3a7bd5", lw=1, ls="--")
        ylo, yhi = min(ylo, lo_b), max(yhi, hi_b)
    flat = float(finite.max() - finite.min()) <= 1e-9 * max(1.0, abs(float(finite.max())))
    ax.plot(x, y, color="#222222", lw=1.6, marker=".", ms=3,
            label="value" + (f" (constant {finite[0]:g})" if flat else ""))
    pad = (yhi - ylo) * 0.08 if yhi - ylo > 1e-9 * max(1.0, abs(yhi)) else max(1.0, abs(yhi) * 0.1)
    ax.set_ylim(ylo - pad, yhi + pad)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_xlim(x[0] if len(x) else -PAD_S, x[-1] if len(x) else end + PAD_S)
    unit = _unit(name)
    ax.set_ylabel(unit or "value", fontsize=8)
    ax.set_xlabel(f"seconds from first seen ({dt.datetime.fromtimestamp(t0, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC)",
                  fontsize=8)
    ax.set_title(f"{name}   [{source}]", fontsize=9, loc="left")
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _band(base, name: str, ts_ns: int) -> dict | None:
    if base is None:
        return None
    s, basis = base.for_ts(name, ts_ns)
    if not s or not s.get("n") or s.get("mean") is None:
        return None
    return {"mean": s["mean"], "std": s.get("std"), "min": s.get("min"), "max": s.get("max"), "basis": basis}


def plot_observations(data_dir: Path, observations: list[dict], conn: sqlite3.Connection | None = None,
                      render: bool = True) -> dict[int, ObservationPlots]:
    """{observation id: ObservationPlots} for the observations (as from list_observations, plus 'rule').

    With render=False only the feature lists are filled (for md/json)."""
    from . import db

    own = conn is None
    conn = conn or db.connect_readonly(db.db_path(data_dir))
    try:
        rules = load_rules()
        base = load_baseline(conn, path=Path(data_dir) / JSON_NAME) if render else None
        lo_data, hi_data = _data_extent(conn) if render else (None, None)
        out: dict[int, ObservationPlots] = {}
        for k, o in enumerate(observations):
            names = implicated_features(o.get("rule"), o["observation"]["details"].get("metric"), rules)
            op = ObservationPlots(o["id"], names)
            out[o["id"]] = op
            if not render or not names:
                continue
            if k >= MAX_PLOTTED_OBSERVATIONS:
                op.source = f"not plotted: only the first {MAX_PLOTTED_OBSERVATIONS} observations of a report are"
                continue
            lo, hi = _span(o, lo_data, hi_data)
            ts, vals, op.source = series(conn, names, lo, hi)
            for n in names:
                y = vals.get(n)
                if y is None or not np.isfinite(y).any():
                    op.plots.append(Plot(n, None, "no data in this span"))
                    continue
                op.plots.append(Plot(n, render_png(n, ts, y, o, _band(base, n, o["first_seen"] * NS), op.source)))
        return out
    finally:
        if own:
            conn.close()

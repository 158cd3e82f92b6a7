"""OOM forecast: a trend fit over recent available memory (and free swap).

Headroom = MemAvailable + SwapFree.  A least-squares line over the last
window gives the rate of change; if headroom is falling, time to exhaustion is
headroom / fall rate.  Confidence (0-1) is the fit's R² scaled down when there
are few samples, so a noisy or short history cannot raise a confident alarm.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass

import numpy as np

RISK_LEVELS = ("NORMAL", "ELEVATED", "WARNING", "CRITICAL")
MIN_SAMPLES = 5
FULL_CONFIDENCE_SAMPLES = 30


@dataclass
class OomForecast:
    risk: str
    headroom_kb: float | None
    headroom_pct: float | None
    trend_kb_per_s: float | None
    seconds_to_exhaustion: float | None
    confidence: float
    samples: int
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def classify(headroom_pct: float, tte_s: float | None, confidence: float) -> str:
    """Risk from how close and how sure: a confident short horizon, or little headroom left."""
    if headroom_pct < 3 or (tte_s is not None and tte_s < 60 and confidence >= 0.5):
        return "CRITICAL"
    if headroom_pct < 5 or (tte_s is not None and tte_s < 300 and confidence >= 0.5):
        return "WARNING"
    if headroom_pct < 10 or (tte_s is not None and tte_s < 1800 and confidence >= 0.3):
        return "ELEVATED"
    return "NORMAL"


def fit(ts_ns: np.ndarray, headroom_kb: np.ndarray, total_kb: float) -> OomForecast:
    n = len(ts_ns)
    if n < MIN_SAMPLES or total_kb <= 0:
        last = float(headroom_kb[-1]) if n else None
        return OomForecast("NORMAL", last, 100 * last / total_kb if last and total_kb else None, None, None, 0.0, n,
                           f"only {n} memory samples; need {MIN_SAMPLES} for a trend")
    t = (ts_ns - ts_ns[0]) / 1e9
    y = headroom_kb.astype(float)
    slope, intercept = np.polyfit(t, y, 1)
    pred = slope * t + intercept
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    confidence = max(0.0, min(1.0, r2)) * min(1.0, n / FULL_CONFIDENCE_SAMPLES)
    current = float(y[-1])
    pct = 100.0 * current / total_kb
    tte = current / -slope if slope < 0 else None
    risk = classify(pct, tte, confidence)
    if tte is None:
        reason = f"headroom {pct:.1f}% and not falling"
    else:
        reason = (f"headroom {pct:.1f}% falling {-slope / 1024:.1f} MiB/s; exhaustion in ~{tte:.0f} s "
                  f"(confidence {confidence:.2f})")
    return OomForecast(risk, current, pct, float(slope), tte, round(confidence, 3), n, reason)


def forecast(conn: sqlite3.Connection, end_ns: int, window_s: float = 120.0) -> OomForecast:
    rows = conn.execute(
        "SELECT ts, mem_available_kb, COALESCE(swap_free_kb, 0), mem_total_kb + COALESCE(swap_total_kb, 0) "
        "FROM memory_metrics WHERE ts > ? AND ts <= ? AND mem_available_kb IS NOT NULL ORDER BY ts",
        (end_ns - int(window_s * 1e9), end_ns),
    ).fetchall()
    if not rows:
        return OomForecast("NORMAL", None, None, None, None, 0.0, 0, "no memory samples in the window")
    a = np.array(rows, dtype=float)
    return fit(a[:, 0], a[:, 1] + a[:, 2], float(a[-1, 3]))

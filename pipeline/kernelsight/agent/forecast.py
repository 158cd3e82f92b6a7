"""Memory exhaustion forecasts, for the host and for each memory-limited cgroup.

Headroom is what can still be allocated before reclaim fails:
  - host: MemAvailable above a floor where the kernel's reclaim gives out and
    the OOM killer runs (twice vm.min_free_kbytes, at least 0.5 % of RAM);
    free swap is NOT counted as headroom, because a host that has to swap
    its working set is already failing (thrashing), it is reported beside it;
  - cgroup: its limit minus its usage (page cache included: the kernel
    reclaims it first, so the forecast is pessimistic when the cache is large).

A least-squares line is fitted over several horizons (HORIZONS_S: the last 10,
30 and 120 s): a fast leak shows in the short fit before the long one sees it,
a slow one only in the long fit.  Of the fits confident enough (R², scaled down
for few samples), the most pessimistic time to exhaustion is kept.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass

import numpy as np

RISK_LEVELS = ("NORMAL", "ELEVATED", "WARNING", "CRITICAL")
MIN_SAMPLES = 5
FULL_CONFIDENCE_SAMPLES = 8     # a fit over this many samples is judged by its R² alone
CONFIDENT = 0.5                 # a fit this confident can raise the risk by its time to exhaustion
HORIZONS_S = (10.0, 30.0, 120.0)
EXTRAPOLATE_MAX = 5.0           # a fit speaks of at most this many times its own window ahead
RECLAIM_FLOOR_PCT = 0.5         # host floor, at least this % of RAM ...
MIN_FREE_FACTOR = 2             # ... or this many times vm.min_free_kbytes


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
    horizon_s: float | None = None   # the fit window the forecast comes from
    scope: str = "host"               # "host" or a cgroup path

    def as_dict(self) -> dict:
        return asdict(self)


def classify(headroom_pct: float, tte_s: float | None, confidence: float) -> str:
    """Risk from how close and how sure: a confident short horizon, or little headroom left."""
    if headroom_pct < 3 or (tte_s is not None and tte_s < 60 and confidence >= CONFIDENT):
        return "CRITICAL"
    if headroom_pct < 5 or (tte_s is not None and tte_s < 300 and confidence >= CONFIDENT):
        return "WARNING"
    if headroom_pct < 10 or (tte_s is not None and tte_s < 1800 and confidence >= 0.3):
        return "ELEVATED"
    return "NORMAL"


def _rate_text(per_s: float, unit: str) -> str:
    if unit == "kB":
        return f"{per_s / 1024:.1f} MiB/s"
    return f"{per_s:.3g} {unit}/s"


def line_fit(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of y over t, in closed form: what np.polyfit(t, y, 1) gives,
    without its SVD (the agent fits every memory forecast once a second, ~10 fits each)."""
    tm, ym = float(t.mean()), float(y.mean())
    dt = t - tm
    var = float(np.dot(dt, dt))
    slope = float(np.dot(dt, y - ym)) / var if var > 0 else 0.0
    return slope, ym - slope * tm


def fit(ts_ns: np.ndarray, headroom_kb: np.ndarray, total_kb: float, what: str = "memory",
        unit: str = "kB") -> OomForecast:
    """One least-squares fit of headroom (kB above the point of failure, or any other `unit`)
    against time; total_kb is what headroom is a percentage of (same unit)."""
    n = len(ts_ns)
    if n < MIN_SAMPLES or total_kb <= 0:
        last = float(headroom_kb[-1]) if n else None
        return OomForecast("NORMAL", last, 100 * last / total_kb if last is not None and total_kb else None, None,
                           None, 0.0, n, f"only {n} {what} samples; need {MIN_SAMPLES} for a trend")
    t = (ts_ns - ts_ns[0]) / 1e9
    y = headroom_kb.astype(float)
    slope, intercept = line_fit(t, y)
    pred = slope * t + intercept
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    confidence = float(max(0.0, min(1.0, r2)) * min(1.0, n / FULL_CONFIDENCE_SAMPLES))
    current = max(float(y[-1]), 0.0)
    pct = 100.0 * current / float(total_kb)
    tte = current / -slope if slope < 0 else None
    risk = classify(pct, tte, confidence)
    if tte is None:
        reason = f"headroom {pct:.1f}% and not falling"
    else:
        reason = (f"headroom {pct:.1f}% falling {_rate_text(-slope, unit)}; exhaustion in ~{tte:.0f} s "
                  f"(confidence {confidence:.2f})")
    return OomForecast(risk, current, pct, float(slope), tte, round(confidence, 3), n, reason)


def best_fit(ts_ns: np.ndarray, headroom_kb: np.ndarray, total_kb: float, what: str = "memory",
             horizons: tuple[float, ...] = HORIZONS_S, unit: str = "kB") -> OomForecast:
    """Fits over every horizon; the most pessimistic confident one (else the longest).  Any resource
    with a limit: headroom is what is left before it runs out, in `unit` (agent/exhaustion.py uses
    it for filesystems, descriptors and PIDs)."""
    if len(ts_ns) == 0:
        return OomForecast("NORMAL", None, None, None, None, 0.0, 0, f"no {what} samples in the window")
    end = ts_ns[-1]
    fits = []
    for h in horizons:
        keep = ts_ns > end - h * 1e9
        f = fit(ts_ns[keep], headroom_kb[keep], total_kb, what, unit)
        f.horizon_s = h
        # The time the samples cover, not the window asked for: a process 7 s old has 7 s of
        # history in a 120 s window (600 sockets opening read "runs out in ~247 s" off 7 s).
        covered_s = float(ts_ns[keep][-1] - ts_ns[keep][0]) / 1e9 if keep.any() else 0.0
        if f.seconds_to_exhaustion is not None and f.seconds_to_exhaustion > EXTRAPOLATE_MAX * min(h, covered_s):
            # 10 s of growth say little about 5 minutes from now (a build, a cache filling up).
            f.risk = classify(f.headroom_pct, None, 0.0)
            f.confidence = 0.0
        fits.append(f)
    # Consumption that has stopped is no forecast: 600 sockets opened in 3 s and then held fit a
    # falling line over 120 s (confidence 0.69, "runs out in ~226 s" with 97 % left) while the
    # shortest window is flat.
    recent = fits[0]
    stopped = (recent.samples >= MIN_SAMPLES and recent.trend_kb_per_s is not None
               and recent.trend_kb_per_s >= 0)
    confident = [] if stopped else [f for f in fits if f.seconds_to_exhaustion is not None
                                    and f.confidence >= CONFIDENT]
    if confident:
        best = min(confident, key=lambda f: f.seconds_to_exhaustion)
    else:
        best = max(fits, key=lambda f: (RISK_LEVELS.index(f.risk), f.horizon_s))
    if best.seconds_to_exhaustion is not None:
        best.reason += f" over the last {best.horizon_s:.0f} s"
    return best


def may_warn(ts_ns: np.ndarray, headroom: np.ndarray, total: float) -> bool:
    """False only when no best_fit of this series can be a confident WARNING or worse: headroom at
    or above 5 % and no fall between two samples as steep as the one that would exhaust the
    current headroom in 300 s.  Exact, not a guess: a least-squares slope is a weighted mean of
    the slopes between consecutive samples, so no horizon's fit falls faster than the steepest
    of them.  What the agent uses to skip ~36 fits a step for resources that are not running out."""
    n = len(ts_ns)
    if n < 2 or total <= 0:
        return n >= MIN_SAMPLES
    current = max(float(headroom[-1]), 0.0)
    if 100.0 * current / total < 5:
        return True
    dt = np.diff(ts_ns) / 1e9
    if not (dt > 0).all():
        return True  # two samples at one time: a jump the argument above does not bound
    steepest = float((np.diff(headroom) / dt).min())
    return not steepest * 300 >= -0.99 * current  # NaN: may (1 % margin for rounding)


def host_floor_kb(total_kb: float, proc_root: str = "/proc") -> float:
    try:
        with open(f"{proc_root}/sys/vm/min_free_kbytes") as f:
            min_free = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        min_free = 0.0
    return max(MIN_FREE_FACTOR * min_free, total_kb * RECLAIM_FLOOR_PCT / 100.0)


def forecast(conn: sqlite3.Connection, end_ns: int, window_s: float = max(HORIZONS_S),
             proc_root: str = "/proc") -> OomForecast:
    """The host: MemAvailable above the reclaim floor; swap reported, not counted."""
    rows = conn.execute(
        "SELECT ts, mem_available_kb, mem_total_kb, swap_free_kb, swap_total_kb "
        "FROM memory_metrics WHERE ts > ? AND ts <= ? AND mem_available_kb IS NOT NULL ORDER BY ts",
        (end_ns - int(window_s * 1e9), end_ns),
    ).fetchall()
    if not rows:
        return OomForecast("NORMAL", None, None, None, None, 0.0, 0, "no memory samples in the window")
    a = np.array([[r[0], r[1], r[2]] for r in rows], dtype=float)
    total = float(a[-1, 2])
    floor = host_floor_kb(total, proc_root)
    fc = best_fit(a[:, 0], a[:, 1] - floor, total)
    swap_free, swap_total = rows[-1][3], rows[-1][4]
    if swap_total:
        fc.reason += f"; {(swap_free or 0) / 1024:.0f} MiB swap free, not counted (swapping a working set is thrashing)"
    return fc


def forecast_cgroups(conn: sqlite3.Connection, end_ns: int, window_s: float = max(HORIZONS_S)) -> list[OomForecast]:
    """Every memory-limited cgroup seen in the window: its limit minus its usage (cgroup_stats,
    from the scraper); none when that table is absent."""
    try:
        # The effective limit: the tightest of the cgroup's and its ancestors', the one the kernel enforces.
        rows = conn.execute(
            "SELECT path, ts, memory_bytes, memory_limit_effective_bytes FROM cgroup_stats "
            "WHERE ts > ? AND ts <= ? AND memory_limit_effective_bytes IS NOT NULL AND memory_bytes IS NOT NULL "
            "ORDER BY path, ts", (end_ns - int(window_s * 1e9), end_ns)).fetchall()
    except sqlite3.OperationalError:
        return []
    by_path: dict[str, list[tuple]] = {}
    for path, ts, usage, limit in rows:
        by_path.setdefault(path, []).append((ts, usage, limit))
    out = []
    for path, series in by_path.items():
        a = np.array(series, dtype=float)
        limit_kb = float(a[-1, 2]) / 1024
        fc = best_fit(a[:, 0], (a[:, 2] - a[:, 1]) / 1024, limit_kb, what="cgroup memory")
        fc.scope = path
        out.append(fc)
    return out


# The urgent check's gate (MemoryGate): a scope whose headroom is above this % and would last
# longer than this at its fall over the last GATE_SPAN_S is not fitted between steps.  Twice
# classify()'s WARNING bounds (5 %, 300 s), so only a forecast that could be a WARNING is fitted.
GATE_HEADROOM_PCT = 10.0
GATE_TTE_S = 600.0
GATE_SPAN_S = 10.0


class MemoryGate:
    """Which memory forecasts the agent's once-a-second urgent check must fit: the host, and the
    cgroups whose headroom is low or falling fast over the last GATE_SPAN_S.

    The full forecasts (3 fits per scope over 120 s of rows) cost ~1 ms a second on an idle host
    where nothing can reach WARNING; the gate reads only the rows stored since its last look.  It
    decides what runs between steps and nothing else: every step still fits every scope, so a
    slower decline the gate lets pass is forecast at the next step, as without the urgent check."""

    def __init__(self, proc_root: str = "/proc"):
        self.proc_root = proc_root
        self.host: list[tuple[int, float, float]] = []           # (ts, MemAvailable kB, MemTotal kB)
        self.cgroups: dict[str, list[tuple[int, float, float]]] = {}  # path -> (ts, usage, limit) bytes
        self.host_ts = self.cgroup_ts = 0
        self.floor: tuple[float, float] | None = None  # (MemTotal kB, its reclaim floor kB)

    @staticmethod
    def _keep(points: list, new: list) -> list:
        points.extend(new)
        newest = points[-1][0]
        while points and points[0][0] <= newest - GATE_SPAN_S * 1e9:
            points.pop(0)
        return points

    @staticmethod
    def could_warn(points: list[tuple[int, float, float]]) -> bool:
        """(ts, headroom, total) in ts order: low headroom, or falling fast enough to run out within
        GATE_TTE_S; True with fewer than two points (nothing to judge by yet)."""
        if len(points) < 2:
            return True
        (t0, h0, _), (t1, h1, total) = points[0], points[-1]
        if total <= 0 or 100.0 * h1 / total < GATE_HEADROOM_PCT:
            return True
        fall_per_s = (h0 - h1) / max((t1 - t0) / 1e9, 1e-3)
        return fall_per_s > 0 and fall_per_s * GATE_TTE_S >= h1

    def _host_floor_kb(self, total_kb: float) -> float:
        if self.floor is None or self.floor[0] != total_kb:
            self.floor = (total_kb, host_floor_kb(total_kb, self.proc_root))
        return self.floor[1]

    def scopes(self, conn: sqlite3.Connection, end_ns: int) -> tuple[bool, bool]:
        """(fit the host?, fit the cgroups?) from the rows stored since the last call."""
        since = max(self.host_ts, end_ns - int(GATE_SPAN_S * 1e9))
        rows = conn.execute("SELECT ts, mem_available_kb, mem_total_kb FROM memory_metrics WHERE ts > ? AND ts <= ? "
                            "AND mem_available_kb IS NOT NULL AND mem_total_kb IS NOT NULL ORDER BY ts",
                            (since, end_ns)).fetchall()
        if rows:
            self.host_ts = rows[-1][0]
            self._keep(self.host, rows)
        host = self.could_warn([(t, a - self._host_floor_kb(tot), tot) for t, a, tot in self.host])
        try:
            rows = conn.execute(
                "SELECT path, ts, memory_bytes, memory_limit_effective_bytes FROM cgroup_stats WHERE ts > ? AND ts <= ? "
                "AND memory_limit_effective_bytes IS NOT NULL AND memory_bytes IS NOT NULL ORDER BY path, ts",
                (max(self.cgroup_ts, end_ns - int(GATE_SPAN_S * 1e9)), end_ns)).fetchall()
        except sqlite3.OperationalError:  # no cgroup_stats table (yet)
            rows = []
        by_path: dict[str, list] = {}
        for path, ts, usage, limit in rows:
            by_path.setdefault(path, []).append((ts, usage, limit))
            self.cgroup_ts = max(self.cgroup_ts, ts)
        for path, new in by_path.items():
            self._keep(self.cgroups.setdefault(path, []), new)
        for path in [p for p, pts in self.cgroups.items() if pts[-1][0] <= end_ns - GATE_SPAN_S * 1e9]:
            del self.cgroups[path]  # gone (or no longer limited)
        cgroups = any(self.could_warn([(t, limit - usage, limit) for t, usage, limit in pts])
                      for pts in self.cgroups.values())
        return host, cgroups

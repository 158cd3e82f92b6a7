"""Learned baselines and z-scores.

A baseline holds, per feature, over the feature vectors of a learning range:
n, mean, std (sample, ddof=1), median, MAD (median absolute deviation, not
scaled), min, max and the quantiles q01 q05 q25 q75 q95 q99.  NULL values are
left out (n counts the others).  When an hour of the day (local time) has at
least `min_per_hour` vectors, that hour gets its own statistics too.

Stored twice: the `baselines` table (one row per feature and hour, hour -1 =
all hours; learning replaces the table's content) and baseline.json in the
data dir (same numbers, plus metadata).

z-scores: z = (x - mean) / std and robust z = 0.6745 (x - median) / MAD; a
null value, a feature without baseline or a zero spread gives null with a
reason.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from ..db import transaction
from .catalog import FEATURE_STEP_S
from .engine import FeatureMatrix, FeatureVector

TABLE = "baselines"
JSON_NAME = "baseline.json"
QUANTILES = (0.01, 0.05, 0.25, 0.75, 0.95, 0.99)
QNAMES = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)
STATS = ("n", "mean", "std", "median", "mad", "min", "max") + QNAMES
ROBUST_K = 0.6745
# An hour of day gets its own statistics once it has 10 min of vectors at the feature step.
MIN_PER_HOUR = int(600 / FEATURE_STEP_S)


@dataclass
class Baseline:
    stats: dict[str, dict]  # feature -> {n, mean, std, median, mad, min, max, q01..q99}
    by_hour: dict[int, dict[str, dict]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def for_ts(self, name: str, ts_ns: int | None) -> tuple[dict | None, str]:
        if ts_ns is not None and self.by_hour:
            h = dt.datetime.fromtimestamp(ts_ns / 1e9).hour
            s = self.by_hour.get(h, {}).get(name)
            if s and s["n"]:
                return s, f"hour {h:02d}"
        return self.stats.get(name), "all hours"

    def to_json(self) -> dict:
        return {"meta": self.meta, "stats": self.stats,
                "by_hour": {str(h): v for h, v in sorted(self.by_hour.items())}}


def column_stats(x: np.ndarray) -> dict:
    """Statistics of one feature's values (NaN = null, left out)."""
    v = x[~np.isnan(x)]
    n = int(v.size)
    if n == 0:
        return {k: (0 if k == "n" else None) for k in STATS}
    med = float(np.median(v))
    qs = np.quantile(v, QUANTILES)
    out = {"n": n, "mean": float(v.mean()), "std": float(v.std(ddof=1)) if n > 1 else None, "median": med,
           "mad": float(np.median(np.abs(v - med))), "min": float(v.min()), "max": float(v.max())}
    out.update({k: float(q) for k, q in zip(QNAMES, qs)})
    return out


def learn_baseline(m: FeatureMatrix, min_per_hour: int = MIN_PER_HOUR) -> Baseline:
    if len(m) == 0:
        raise ValueError("no feature vectors to learn from")
    stats = {n: column_stats(m.values[:, j]) for j, n in enumerate(m.names)}
    by_hour: dict[int, dict[str, dict]] = {}
    hours = np.array([dt.datetime.fromtimestamp(t / 1e9).hour for t in m.ts[:: max(1, len(m) // 100000)]])
    if len(hours) == len(m):
        counts = np.bincount(hours, minlength=24)
        for h in np.flatnonzero(counts >= min_per_hour):
            sel = hours == h
            by_hour[int(h)] = {n: column_stats(m.values[sel, j]) for j, n in enumerate(m.names)}
    meta = {"since_ts": int(m.ts.min()), "until_ts": int(m.ts.max()), "vectors": len(m), "window_s": m.window_s,
            "learned_ts": time.time_ns(), "min_per_hour": min_per_hour, "robust_k": ROBUST_K}
    return Baseline(stats, by_hour, meta)


def save_baseline(conn: sqlite3.Connection, b: Baseline, data_dir: Path | None) -> Path | None:
    cols = ", ".join(f"{k} REAL" if k != "n" else "n INTEGER NOT NULL" for k in STATS)
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  name TEXT NOT NULL,
  hour INTEGER NOT NULL,
  {cols},
  since_ts INTEGER NOT NULL,
  until_ts INTEGER NOT NULL,
  learned_ts INTEGER NOT NULL,
  PRIMARY KEY (name, hour)
)""")
    rows = []
    for hour, stats in [(-1, b.stats)] + sorted(b.by_hour.items()):
        for name, s in stats.items():
            rows.append((name, hour, *[s[k] for k in STATS], b.meta["since_ts"], b.meta["until_ts"], b.meta["learned_ts"]))
    marks = ",".join("?" * (len(STATS) + 5))
    with transaction(conn, "BEGIN"):
        conn.execute(f"DELETE FROM {TABLE}")
        conn.executemany(f"INSERT INTO {TABLE} (name, hour, {', '.join(STATS)}, since_ts, until_ts, learned_ts) VALUES ({marks})", rows)
    if data_dir is None:
        return None
    path = Path(data_dir) / JSON_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(b.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(path)
    return path


def load_baseline(conn: sqlite3.Connection | None = None, path: Path | None = None) -> Baseline | None:
    """The stored baseline: from the `baselines` table when conn has it, else from a JSON file; None if none."""
    if conn is not None:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)).fetchone()
        if has:
            rows = conn.execute(f"SELECT name, hour, {', '.join(STATS)}, since_ts, until_ts, learned_ts FROM {TABLE}").fetchall()
            if rows:
                stats: dict[str, dict] = {}
                by_hour: dict[int, dict[str, dict]] = {}
                for r in rows:
                    s = dict(zip(STATS, r[2:2 + len(STATS)]))
                    (stats if r[1] == -1 else by_hour.setdefault(r[1], {}))[r[0]] = s
                last = rows[0]
                meta = {"since_ts": last[-3], "until_ts": last[-2], "learned_ts": last[-1], "source": "table"}
                return Baseline(stats, by_hour, meta)
    if path is not None and Path(path).exists():
        d = orjson.loads(Path(path).read_bytes())
        return Baseline(d["stats"], {int(h): v for h, v in d.get("by_hour", {}).items()}, d.get("meta", {}))
    return None


def zscores(vector: FeatureVector, baseline: Baseline, by_hour: bool = True) -> dict[str, dict]:
    """name -> {value, z, robust_z, mean, std, median, mad, basis, reason}; z values null with a reason when undefined."""
    out = {}
    for name, x in vector.values.items():
        s, basis = baseline.for_ts(name, vector.ts if by_hour else None)
        row = {"value": x, "z": None, "robust_z": None, "basis": basis}
        reasons = []
        if x is None:
            reasons.append(f"no value: {vector.reasons.get(name, 'null')}")
        elif not s or not s.get("n"):
            reasons.append("no baseline for this feature")
        else:
            row.update(mean=s["mean"], std=s["std"], median=s["median"], mad=s["mad"])
            if s["std"] is not None and s["std"] > 0:
                row["z"] = (x - s["mean"]) / s["std"]
            else:
                reasons.append("baseline std is 0 or undefined (constant feature)")
            if s["mad"] is not None and s["mad"] > 0:
                row["robust_z"] = ROBUST_K * (x - s["median"]) / s["mad"]
            else:
                reasons.append("baseline MAD is 0 (robust z undefined)")
        if reasons:
            row["reason"] = "; ".join(reasons)
        out[name] = row
    return out

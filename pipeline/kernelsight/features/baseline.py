"""Learned baselines and z-scores.

A baseline holds, per feature, over the feature vectors of a learning range:
n, mean, std (sample, ddof=1), median, MAD (median absolute deviation, not
scaled), min, max and the quantiles q01 q05 q25 q75 q95 q99.  NULL values are
left out (n counts the others).  When an hour of the day (local time) has at
least `min_per_hour` vectors, that hour gets its own statistics too, and so
does each hour of the week (Monday 00h = 0 .. Sunday 23h = 167) once the
history holds one: a Monday-morning batch job is normal on Monday mornings.
Spans can be left out (the agent leaves out its incidents: a baseline learned
over a fault would call the fault normal).  Local time from the host's current
UTC offset (a DST change shifts the profile by an hour until the next learn).

Stored twice: the `baselines` table (one row per feature and hour: hour -1 =
all hours, 0-23 = hour of day, 100 + h = hour h of the week; learning replaces
the table's content) and baseline.json in the data dir (same numbers, plus
metadata).

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
WEEK_HOUR_BASE = 100  # the `hour` column of an hour-of-week row: 100 + (weekday * 24 + hour)


def _utc_offset_s() -> float:
    return dt.datetime.now().astimezone().utcoffset().total_seconds()


def local_hours(ts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day (0-23) and hour of week (Monday 00h = 0 .. 167), local time, for ns timestamps."""
    local_s = ts_ns / 1e9 + _utc_offset_s()
    hour = (local_s // 3600).astype(np.int64) % 24
    weekday = ((local_s // 86400).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    return hour, weekday * 24 + hour


@dataclass
class Baseline:
    stats: dict[str, dict]  # feature -> {n, mean, std, median, mad, min, max, q01..q99}
    by_hour: dict[int, dict[str, dict]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    by_week_hour: dict[int, dict[str, dict]] = field(default_factory=dict)

    def for_ts(self, name: str, ts_ns: int | None) -> tuple[dict | None, str]:
        """The most specific statistics learned for that time: its hour of the week, else its hour of
        the day, else all hours."""
        if ts_ns is not None and (self.by_hour or self.by_week_hour):
            hour, week_hour = (int(x[0]) for x in local_hours(np.array([ts_ns], dtype=np.int64)))
            s = self.by_week_hour.get(week_hour, {}).get(name)
            if s and s["n"]:
                return s, f"{WEEKDAYS[week_hour // 24]} {hour:02d}h"
            s = self.by_hour.get(hour, {}).get(name)
            if s and s["n"]:
                return s, f"hour {hour:02d}"
        return self.stats.get(name), "all hours"

    def to_json(self) -> dict:
        return {"meta": self.meta, "stats": self.stats,
                "by_hour": {str(h): v for h, v in sorted(self.by_hour.items())},
                "by_week_hour": {str(h): v for h, v in sorted(self.by_week_hour.items())}}


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


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


def learn_baseline(m: FeatureMatrix, min_per_hour: int = MIN_PER_HOUR,
                   exclude_spans: list[tuple[int, int]] = ()) -> Baseline:
    """Statistics of m's vectors, overall, per hour of day and per hour of week (a slot needs
    min_per_hour vectors), leaving out the vectors inside exclude_spans (ns, inclusive)."""
    keep = np.ones(len(m), dtype=bool)
    for lo, hi in exclude_spans:
        keep &= ~((m.ts >= lo) & (m.ts <= hi))
    ts, values = m.ts[keep], m.values[keep]
    if len(ts) == 0:
        raise ValueError("no feature vectors to learn from" + (" outside the left-out spans" if len(m) else ""))
    stats = {n: column_stats(values[:, j]) for j, n in enumerate(m.names)}
    hours, week_hours = local_hours(ts)
    slots: list[dict[int, dict[str, dict]]] = []
    for key in (hours, week_hours):
        counts = np.bincount(key, minlength=168)
        slots.append({int(h): {n: column_stats(values[key == h, j]) for j, n in enumerate(m.names)}
                      for h in np.flatnonzero(counts >= min_per_hour)})
    by_hour, by_week_hour = slots
    # Under a day of history every week slot is its hour-of-day slot again: rows for nothing.
    if len(by_week_hour) <= len(by_hour):
        by_week_hour = {}
    meta = {"since_ts": int(ts.min()), "until_ts": int(ts.max()), "vectors": int(len(ts)),
            "left_out_vectors": int(len(m) - len(ts)), "left_out_spans": len(exclude_spans),
            "window_s": m.window_s, "learned_ts": time.time_ns(), "min_per_hour": min_per_hour,
            "robust_k": ROBUST_K}
    return Baseline(stats, by_hour, meta, by_week_hour)


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
    for hour, stats in ([(-1, b.stats)] + sorted(b.by_hour.items())
                        + [(WEEK_HOUR_BASE + h, v) for h, v in sorted(b.by_week_hour.items())]):
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
                by_week_hour: dict[int, dict[str, dict]] = {}
                for r in rows:
                    s = dict(zip(STATS, r[2:2 + len(STATS)]))
                    if r[1] == -1:
                        stats[r[0]] = s
                    elif r[1] >= WEEK_HOUR_BASE:
                        by_week_hour.setdefault(r[1] - WEEK_HOUR_BASE, {})[r[0]] = s
                    else:
                        by_hour.setdefault(r[1], {})[r[0]] = s
                last = rows[0]
                meta = {"since_ts": last[-3], "until_ts": last[-2], "learned_ts": last[-1], "source": "table"}
                if path is not None and Path(path).exists():  # the JSON twin says who learned it
                    try:
                        meta["source"] = orjson.loads(Path(path).read_bytes()).get("meta", {}).get("source", "table")
                    except (OSError, orjson.JSONDecodeError):
                        pass
                return Baseline(stats, by_hour, meta, by_week_hour)
    if path is not None and Path(path).exists():
        d = orjson.loads(Path(path).read_bytes())
        return Baseline(d["stats"], {int(h): v for h, v in d.get("by_hour", {}).items()}, d.get("meta", {}),
                        {int(h): v for h, v in d.get("by_week_hour", {}).items()})
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

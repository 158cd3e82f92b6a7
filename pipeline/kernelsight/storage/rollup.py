"""Per-minute rollups, built incrementally for closed minutes.

A minute (bucket) is the span (m - step, m] and its rollup rows carry ts = m,
so a rollup row reads like a raw row whose interval ended at m.  A bucket is
closed once now passes m + GRACE_S (lines from the producers arrive within a
second or two).  Each table's progress is a watermark in storage_state
("rollup:<table>" = the last bucket end rolled up); a chunk of buckets is
aggregated outside any transaction, then one short write transaction deletes
whatever rollup rows the chunk already had, inserts the new ones and moves the
watermark.  A chunk is therefore rolled up once, and redoing one (after a
crash, or a lost watermark) gives the same rows: idempotent and restart-safe.

Rows that arrive for a minute already rolled up are not added to its rollup.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import orjson
import pandas as pd

from ..db import transaction
from . import state
from .plan import TablePlan

NS = 1_000_000_000
GRACE_S = 30
CHUNK_BUCKETS = 30  # minutes aggregated per write transaction at first ...
CHUNK_ROWS = 100_000  # ... then as many as hold about this many raw rows
CHUNK_OUT_ROWS = 4_000  # (the write transaction inserts these: it stays short)
MAX_CHUNK_BUCKETS = 1440


def bucket_end(ts_ns, step_ns: int):
    """End of the bucket (m - step, m] holding ts."""
    return -((-ts_ns) // step_ns) * step_ns


def _int_arrays(texts) -> tuple[np.ndarray, np.ndarray]:
    """JSON int arrays -> (2-D int64 matrix padded with zeros, mask of non-null rows)."""
    present = np.array([isinstance(t, str) for t in texts], dtype=bool)  # NULLs may arrive as None or NaN
    rows = orjson.loads(("[" + ",".join(t if isinstance(t, str) else "[]" for t in texts) + "]").encode())
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = r
    return out, present


def _py(v):
    """A pandas/numpy scalar as a value sqlite3 binds (NaN and NA -> NULL)."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def aggregate(plan: TablePlan, rows: list[tuple], step_ns: int) -> list[tuple]:
    """Rollup rows (in plan.columns() order) from raw rows (id, ts, field...)."""
    if not rows:
        return []
    names = [f.name for f in plan.fields]
    df = pd.DataFrame.from_records(rows, columns=["id", "ts", *names])
    for f in plan.fields:
        if f.type == "int" and f.agg != "last":
            df[f.name] = pd.array(df[f.name].tolist(), dtype="Int64")
        elif f.type == "float":
            df[f.name] = pd.to_numeric(df[f.name], errors="coerce").astype("float64")
    df["_b"] = bucket_end(df["ts"].to_numpy(np.int64), step_ns)
    df = df.sort_values(["ts", "id"], kind="stable").reset_index(drop=True)
    by = ["_b", *plan.keys]
    g = df.groupby(by, dropna=False, sort=True)
    out = g.size().rename(plan.samples).to_frame()
    gid = g.ngroup().to_numpy()
    n_groups = len(out)
    for f in plan.fields:
        if f.agg == "key":
            continue
        col = g[f.name]
        if f.agg == "gauge":
            out[f.name] = col.mean()
            out[f.name + "_min"] = col.min()
            out[f.name + "_max"] = col.max()
        elif f.agg == "sum":
            out[f.name] = col.sum(min_count=1)
        elif f.agg == "last":
            out[f.name] = col.last()
        elif f.agg in ("max", "min") and f.type != "int_array":
            out[f.name] = col.max() if f.agg == "max" else col.min()
        elif f.agg == "interval":
            # the time the producer covered in the minute: each interval once (rows
            # of one interval share its ts), at most the step (several producers
            # writing one table, as tracer_stats, each cover the same minute)
            once = df[~df.duplicated(["_b", "ts"])]
            covered = once.groupby("_b")[f.name].sum(min_count=1).astype("float64").clip(upper=step_ns / NS)
            out[f.name] = covered.reindex(out.index.get_level_values("_b")).to_numpy()
        else:  # hist (sum) or element-wise max/min of int arrays
            m, present = _int_arrays(df[f.name].tolist())
            red = np.zeros((n_groups, m.shape[1]), dtype=np.int64)
            if f.agg == "hist":
                np.add.at(red, gid, m)
            else:
                red[:] = np.iinfo(np.int64).min if f.agg == "max" else np.iinfo(np.int64).max
                (np.maximum if f.agg == "max" else np.minimum).at(red, gid, m)
            has = np.zeros(n_groups, dtype=bool)
            np.logical_or.at(has, gid, present)
            if f.agg == "hist":  # trailing empty buckets say nothing (readers pad): leave them out
                nz = red != 0
                width = np.where(nz.any(axis=1), red.shape[1] - np.argmax(nz[:, ::-1], axis=1), 0)
            else:
                width = np.full(len(red), red.shape[1])
            out[f.name] = [orjson.dumps(r[:w].tolist()).decode() if h else None for r, w, h in zip(red, width, has)]
    out = out.reset_index()
    cols = [c for c, _ in plan.columns()]
    out = out.rename(columns={"_b": "ts"})[cols]
    return list(zip(*(_pylist(out[c]) for c in cols)))


def _pylist(col: pd.Series) -> list:
    """A column as Python values sqlite3 binds, NaN and NA as None (column-wise: rows are many)."""
    if col.dtype == object:
        return [_py(v) for v in col.tolist()]
    vals = col.to_numpy(dtype=object, na_value=None) if hasattr(col.dtype, "na_value") else col.to_numpy().astype(object)
    if col.dtype.kind == "f":
        vals[pd.isna(col.to_numpy())] = None
    return vals.tolist()


def ensure_tables(conn: sqlite3.Connection, plan: TablePlan) -> None:
    conn.executescript(plan.create_sql())
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({plan.rollup})")}
    for name, sqltype in plan.columns():
        if name not in have:  # a field added to the schema: a new nullable column, as in the raw table
            conn.execute(f"ALTER TABLE {plan.rollup} ADD COLUMN {name} {sqltype}")


def ensure_view(conn: sqlite3.Connection, plan: TablePlan) -> None:
    """(Re)create <table>_all when its definition changed (a field was added)."""
    want = plan.view_sql()
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type='view' AND name=?", (plan.view,)).fetchone()
    if row and row[0] == want:
        return
    raw = {r[1] for r in conn.execute(f"PRAGMA table_info({plan.table})")}
    if not raw or any(f.name not in raw for f in plan.fields):
        return  # the raw table is older than the schema: db.connect adds the columns first
    with transaction(conn):
        conn.execute(f"DROP VIEW IF EXISTS {plan.view}")
        conn.execute(want)


def watermark_key(table: str) -> str:
    return f"rollup:{table}"


def rollup_table(conn: sqlite3.Connection, plan: TablePlan, now_ns: int, step_ns: int,
                 deadline: float | None = None, stats: dict | None = None, oldest_ns: int | None = None) -> int:
    """Roll up every closed bucket past the table's watermark (until deadline, a
    time.monotonic() value); returns rollup rows written.  A table met for the
    first time starts at its oldest row, or at oldest_ns if that is later: rows
    older than rollups are kept are not rolled up (a database that grew before
    housekeeping existed is not aggregated for nothing), and may go as raw."""
    closed_end = (now_ns - GRACE_S * NS) // step_ns * step_ns
    wm = state.get_int(conn, watermark_key(plan.table))
    if wm is None:
        first = conn.execute(f"SELECT MIN(ts) FROM {plan.table}").fetchone()[0]
        if first is None:
            return 0
        wm = int(bucket_end(first, step_ns)) - step_ns
        if oldest_ns is not None:
            wm = max(wm, oldest_ns // step_ns * step_ns)
    written = 0
    names = ", ".join(f.name for f in plan.fields)
    select = f"SELECT id, ts, {names} FROM {plan.table} WHERE ts > ? AND ts <= ? ORDER BY ts, id"
    cols = [c for c, _ in plan.columns()]
    insert = f"INSERT INTO {plan.rollup} ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    buckets = CHUNK_BUCKETS
    while wm < closed_end:
        if deadline is not None and time.monotonic() > deadline:
            break
        hi = min(wm + buckets * step_ns, closed_end)
        rows = conn.execute(select, (wm, hi)).fetchall()
        if not rows:
            # skip a gap in one step: up to the bucket before the next row (or to closed_end)
            nxt = conn.execute(f"SELECT MIN(ts) FROM {plan.table} WHERE ts > ?", (hi,)).fetchone()[0]
            hi = closed_end if nxt is None else max(hi, min(int(bucket_end(nxt, step_ns)) - step_ns, closed_end))
        out = aggregate(plan, rows, step_ns)
        t0 = time.perf_counter()
        with transaction(conn):
            conn.execute(f"DELETE FROM {plan.rollup} WHERE ts > ? AND ts <= ?", (wm, hi))
            if out:
                conn.executemany(insert, out)
            state.put(conn, watermark_key(plan.table), hi)
        if stats is not None:
            stats["rollup_txn_max_ms"] = max(stats.get("rollup_txn_max_ms", 0.0), (time.perf_counter() - t0) * 1e3)
            stats["rollup_raw_rows"] = stats.get("rollup_raw_rows", 0) + len(rows)
        written += len(out)
        if rows:  # size the next chunk to about CHUNK_ROWS raw rows and CHUNK_OUT_ROWS rollup rows
            n_b = max(1, (hi - wm) // step_ns)
            by_in, by_out = CHUNK_ROWS * n_b / len(rows), CHUNK_OUT_ROWS * n_b / max(1, len(out))
            buckets = int(max(1, min(MAX_CHUNK_BUCKETS, by_in, by_out)))
        wm = hi
    return written

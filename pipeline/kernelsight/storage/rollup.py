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

The aggregation is numpy only, not pandas: ks-agent runs it every minute and
stays resident, so it must not carry pandas (and pyarrow) in its memory.
"""

from __future__ import annotations

import math
import sqlite3
import time

import numpy as np
import orjson

from ..db import transaction
from ..nputil import sorted_unique
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


_I64_MIN, _I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
_KAHAN_PY_GROUPS = 8  # Kahan sums: once this few groups still have rows, finish them in Python


def _is_null(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _ints(vals: list) -> tuple[np.ndarray, np.ndarray]:
    """An int column as (int64 values, mask of non-null rows); NULLs may arrive as None or NaN."""
    try:
        return np.array(vals, dtype=np.int64), np.ones(len(vals), dtype=bool)
    except (TypeError, ValueError):
        valid = np.array([not _is_null(v) for v in vals], dtype=bool)
        return np.array([0 if _is_null(v) else v for v in vals], dtype=np.int64), valid


def _to_float(v) -> float:
    """One value of a float column as a float, NaN where it is not a number."""
    if v is None:
        return np.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def _floats(vals: list) -> np.ndarray:
    """A float column as float64, NULLs (and anything not a number) as NaN."""
    try:
        return np.array(vals, dtype=np.float64)  # None -> NaN
    except (TypeError, ValueError):
        return np.array([_to_float(v) for v in vals], dtype=np.float64)


def _codes(vals: list, ftype: str) -> np.ndarray:
    """Group codes of a key column in sort order: values ascending, NULL after every value."""
    if ftype == "int":
        x, valid = _ints(vals)
        uniq = sorted_unique(x[valid])
        return np.where(valid, np.searchsorted(uniq, x), len(uniq))
    if ftype == "float":
        x = _floats(vals)
        valid = ~np.isnan(x)
        uniq = sorted_unique(x[valid])
        return np.where(valid, np.searchsorted(uniq, np.where(valid, x, 0.0)), len(uniq))
    present = {v for v in vals if not _is_null(v)}
    try:
        uniq = sorted(present)
    except TypeError:  # mixed types in one column: any fixed order will do
        uniq = sorted(present, key=lambda v: (type(v).__name__, v))
    code = {v: i for i, v in enumerate(uniq)}
    return np.array([len(uniq) if _is_null(v) else code[v] for v in vals], dtype=np.int64)


def _float_sums(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, in_group_order: bool) -> np.ndarray:
    """Per segment [start, end) of x (a float column, rows group by group, NaN = NULL), the sum of its
    non-null values, summed as pandas' groupby summed them (this replaced it: rollups written before
    and after agree bit for bit): with np.add.reduceat when the rows were already in group order and
    the column has no NULL, else per group in row order with Kahan compensation.  NaN when a group
    has no value."""
    valid = ~np.isnan(x)
    if in_group_order and valid.all():
        return np.add.reduceat(x, starts)
    sizes = ends - starts
    by_size = np.argsort(-sizes, kind="stable")  # longest first: the groups still going are a prefix
    first, size = starts[by_size], sizes[by_size]
    s = np.zeros(len(starts))
    c = np.zeros(len(starts))
    k, longest, active = 0, int(size[0]), 0
    with np.errstate(invalid="ignore", over="ignore"):
        while k < longest:  # the k-th row of every group that has one, vectorised across groups
            active = int(np.count_nonzero(size > k))
            if active <= _KAHAN_PY_GROUPS:
                break
            at = first[:active] + k
            ok = valid[at]
            ss, cc = s[:active], c[:active]
            y = x[at] - cc
            t = ss + y
            cn = (t - ss) - y
            cn[np.isnan(cn)] = 0.0  # an infinity: keep the sum infinite rather than NaN
            c[:active] = np.where(ok, cn, cc)
            s[:active] = np.where(ok, t, ss)
            k += 1
        else:
            active = 0
    for j in range(active):  # the rest of the few longest groups, in Python (the same double arithmetic)
        sj, cj = float(s[j]), float(c[j])
        for v in x[first[j] + k:first[j] + size[j]].tolist():
            if not math.isnan(v):
                y = v - cj
                t = sj + y
                cj = (t - sj) - y
                if math.isnan(cj):
                    cj = 0.0
                sj = t
        s[j] = sj
    out = np.empty(len(starts))
    out[by_size] = s
    n = np.add.reduceat(valid.astype(np.int64), starts)
    out[n == 0] = np.nan
    return out


def _nulls(vals: list, valid) -> list:
    """vals with None where valid is false."""
    return [v if ok else None for v, ok in zip(vals, valid.tolist())]


def aggregate(plan: TablePlan, rows: list[tuple], step_ns: int) -> list[tuple]:
    """Rollup rows (in plan.columns() order) from raw rows (id, ts, field...).

    Groups are (bucket, keys...) in sort order (bucket, then each key ascending,
    a NULL key after every value); rows are taken in (ts, id) order.  numpy
    only (this runs every minute in ks-agent): values come back as Python
    ints, floats, str and None (NULL) for sqlite3 to bind.  Sums of int
    columns are exact (int64); sums and means of float columns are added up
    as pandas' groupby added them (_float_sums), so the rows are the ones the
    pandas implementation this replaced wrote."""
    if not rows:
        return []
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    order = order[np.argsort(ts[order], kind="stable")]  # (ts, id), ties kept in their order
    if (order != np.arange(len(order))).any():
        rows = [rows[i] for i in order.tolist()]
        ts = ts[order]
    cols = dict(zip([f.name for f in plan.fields], list(zip(*rows))[2:]))
    bucket = bucket_end(ts, step_ns)

    # groups: (bucket, keys...) sorted; perm lists the rows group by group, each group in (ts, id) order
    codes = [np.unique(bucket, return_inverse=True)[1].reshape(-1)]
    codes += [_codes(list(cols[f.name]), f.type) for f in plan.fields if f.agg == "key"]
    perm = np.lexsort(codes[::-1])
    sorted_codes = np.stack([c[perm] for c in codes])
    new = np.ones(len(perm), dtype=bool)
    new[1:] = (sorted_codes[:, 1:] != sorted_codes[:, :-1]).any(axis=0)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(perm))
    n_groups = len(starts)
    gid = np.empty(len(perm), dtype=np.int64)
    gid[perm] = np.cumsum(new) - 1
    first = perm[starts]  # a row of each group, for its bucket and keys
    in_group_order = bool((perm == np.arange(len(perm))).all())

    out: dict[str, list] = {"ts": bucket[first].tolist(), plan.samples: (ends - starts).tolist()}
    for f in plan.fields:
        vals = cols[f.name]
        if f.agg == "key":
            out[f.name] = [None if _is_null(vals[i]) else _scalar(vals[i], f.type) for i in first.tolist()]
        elif f.agg in ("hist", "max", "min") and f.type == "int_array":
            out[f.name] = _int_array_agg(f.agg, list(vals), gid, n_groups)
        elif f.agg == "last":
            out[f.name] = _last(vals, f.type, perm, starts)
        elif f.agg == "interval":
            out[f.name] = _interval(vals, f.type, ts, bucket, first, step_ns)
        elif f.type == "int":
            x, valid = _ints(list(vals))
            x, valid = x[perm], valid[perm]
            n = np.add.reduceat(valid.astype(np.int64), starts)
            has = n > 0
            if f.agg in ("gauge", "sum"):
                total = np.add.reduceat(np.where(valid, x, 0), starts)  # int64, as the database's
                if f.agg == "sum":
                    out[f.name] = _nulls(total.tolist(), has)
                else:
                    out[f.name] = _nulls([t / c if c else None for t, c in zip(total.tolist(), n.tolist())], has)
            if f.agg in ("gauge", "min"):
                out[f.name + ("_min" if f.agg == "gauge" else "")] = _nulls(
                    np.minimum.reduceat(np.where(valid, x, _I64_MAX), starts).tolist(), has)
            if f.agg in ("gauge", "max"):
                out[f.name + ("_max" if f.agg == "gauge" else "")] = _nulls(
                    np.maximum.reduceat(np.where(valid, x, _I64_MIN), starts).tolist(), has)
        elif f.type == "float":
            x = _floats(list(vals))[perm]
            valid = ~np.isnan(x)
            n = np.add.reduceat(valid.astype(np.int64), starts)
            has = n > 0
            if f.agg in ("gauge", "sum"):
                total = _float_sums(x, starts, ends, in_group_order)
                if f.agg == "gauge":
                    total = total / np.maximum(n, 1)
                out[f.name] = _nulls(total.tolist(), has)
            if f.agg in ("gauge", "min"):
                out[f.name + ("_min" if f.agg == "gauge" else "")] = _nulls(np.fmin.reduceat(x, starts).tolist(), has)
            if f.agg in ("gauge", "max"):
                out[f.name + ("_max" if f.agg == "gauge" else "")] = _nulls(np.fmax.reduceat(x, starts).tolist(), has)
        elif f.agg in ("max", "min"):  # of text: Python's order
            pick = max if f.agg == "max" else min
            out[f.name] = []
            for s, e in zip(starts.tolist(), ends.tolist()):
                present = [vals[i] for i in perm[s:e].tolist() if not _is_null(vals[i])]
                out[f.name].append(pick(present) if present else None)
        else:
            raise TypeError(f"{plan.table}.{f.name}: agg {f.agg} of a {f.type} field")
    return list(zip(*(out[c] for c, _ in plan.columns())))


def _scalar(v, ftype: str):
    """A key value as the type its column holds."""
    if ftype == "int":
        return int(v)
    if ftype == "float":
        return float(v)
    return v


def _last(vals: tuple, ftype: str, perm: np.ndarray, starts: np.ndarray) -> list:
    """Per group, its last non-null value in (ts, id) order (None when every value is null)."""
    if ftype == "int":
        x, valid = _ints(list(vals))
        src: list = x.tolist()
    elif ftype == "float":
        x = _floats(list(vals))
        valid = ~np.isnan(x)
        src = x.tolist()
    else:
        valid = np.array([not _is_null(v) for v in vals], dtype=bool)
        src = list(vals)
    pos = np.maximum.reduceat(np.where(valid[perm], np.arange(len(perm)), -1), starts)
    at = perm[np.maximum(pos, 0)].tolist()
    return [src[i] if p >= 0 else None for i, p in zip(at, pos.tolist())]


def _interval(vals: tuple, ftype: str, ts: np.ndarray, bucket: np.ndarray, first: np.ndarray, step_ns: int) -> list:
    """The time the producer covered in each group's minute: each interval once (rows of one interval
    share its ts: the first row of each ts counts), at most the step (several producers writing one
    table, as tracer_stats, each cover the same minute).  The same on every row of a minute."""
    once = np.ones(len(ts), dtype=bool)
    once[1:] = ts[1:] != ts[:-1]  # rows are in ts order
    b = bucket[once]
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.append(starts[1:], len(b))
    if ftype == "int":
        x, valid = _ints([v for v, o in zip(vals, once.tolist()) if o])
        total = [float(t) for t in np.add.reduceat(np.where(valid, x, 0), starts).tolist()]
    else:
        x = _floats([v for v, o in zip(vals, once.tolist()) if o])
        valid = ~np.isnan(x)
        total = _float_sums(x, starts, ends, True).tolist()  # rows in ts order: minutes in order
    has = np.add.reduceat(valid.astype(np.int64), starts) > 0
    cap = step_ns / NS
    covered = dict(zip(b[starts].tolist(), [min(t, cap) if h else None for t, h in zip(total, has.tolist())]))
    return [covered[v] for v in bucket[first].tolist()]


def _int_array_agg(agg: str, texts: list, gid: np.ndarray, n_groups: int) -> list:
    """hist: bucket-wise sum of the groups' JSON int arrays, trailing empty buckets left out (readers
    pad); max/min: element-wise, as wide as the widest array of the chunk.  None where every array of
    a group is NULL."""
    m, present = _int_arrays(texts)
    red = np.zeros((n_groups, m.shape[1]), dtype=np.int64)
    if agg == "hist":
        np.add.at(red, gid, m)
    else:
        red[:] = _I64_MIN if agg == "max" else _I64_MAX
        (np.maximum if agg == "max" else np.minimum).at(red, gid, m)
    has = np.zeros(n_groups, dtype=bool)
    np.logical_or.at(has, gid, present)
    if agg == "hist":
        nz = red != 0
        last_nz = np.argmax(nz[:, ::-1], axis=1) if red.shape[1] else np.zeros(len(red), dtype=np.int64)
        width = np.where(nz.any(axis=1), red.shape[1] - last_nz, 0)  # (no width: every array NULL or [])
    else:
        width = np.full(len(red), red.shape[1])
    return [orjson.dumps(r[:w].tolist()).decode() if h else None for r, w, h in zip(red, width, has)]


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

"""Feature computation, vectorised over many window ends at once.

compute_range(conn, ends_ns, window_s) is the only engine: it runs one SELECT
per source table covering [min(ends) - window - LOOKBACK, max(ends)], then
evaluates every catalog spec for all window ends together with cumulative sums
and searchsorted (O(rows + ends) per feature, no per-window query).  A single
vector (compute_vector) is the same code with one end.  Backfilling a day at
1 s steps is therefore a few passes over each table's rows, not 86,400 queries.
The agent passes a RowCache: its window only moves forward, so each table's rows
are kept from one vector to the next and only the rows stored since are read.

Windows are (end - window, end]: a row belongs to a window when its ts is
after the start and not after the end.  A counter delta belongs to the row
that ends it, so the first row in a window has a delta from the row before it
(LOOKBACK reaches back for that row).

A feature that cannot be computed is NaN with a reason string ("table
io_latency_stats absent", "no rows in syscall_stats in window", "no counter
deltas in window (first sample or reset)", ...), never 0.

Older than the raw horizon (storage housekeeping deletes raw rows after
[storage] raw_retention_h), a table's rows come from its per-minute rollup
`<table>_1m` (storage/plan.py): rollup rows where ts is before the oldest raw
row still present, raw rows from there on.  Rollup rows carry the aggregated
columns under the raw names (gauges averaged, counters' last values, sums,
summed histograms, interval_s = the minute covered), so every spec reads them
as raw rows at a 60 s interval; max/min gauges read the rollup's <col>_max /
<col>_min, and event counts its `samples`.  A window that reaches into rollup
data is widened to at least the rollup step, so it holds a rollup row.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import orjson

from . import catalog as C
from ..nputil import sorted_unique
from ..storage.plan import ROLLUP_SUFFIX, plans as rollup_plans, step_ns as rollup_step_ns

if TYPE_CHECKING:
    import pandas as pd

NS = 1_000_000_000
LOOKBACK_NS = 10 * NS  # extra history read before the first window for counter deltas
PAIR_TOLERANCE_NS = int(1.5 * NS)
# database file -> (PRAGMA schema_version, {table: {column: type}}, {spec: why it cannot be computed}),
# see _Engine._schema
_SCHEMA_CACHE: dict[str, tuple[int, dict[str, dict[str, str]], dict]] = {}
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_]\w*)")


@dataclass
class FeatureVector:
    ts: int
    window_s: float
    values: dict[str, float | None]
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ts": self.ts, "window_s": self.window_s, "values": self.values, "reasons": self.reasons}


@dataclass
class FeatureMatrix:
    """Feature values for many window ends: values[i, j] is feature names[j] at ts[i] (NaN = null)."""

    ts: np.ndarray
    window_s: float
    names: list[str]
    values: np.ndarray
    reasons: list[np.ndarray]  # one object array per feature: None where a value exists

    def __len__(self) -> int:
        return len(self.ts)

    def reasons_at(self, i: int) -> dict[str, str]:
        return {n: r[i] for n, r in zip(self.names, self.reasons) if r[i] is not None}

    def vector(self, i: int) -> FeatureVector:
        row = self.values[i]
        vals = {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.names, row)}
        return FeatureVector(int(self.ts[i]), self.window_s, vals, self.reasons_at(i))

    def frame(self) -> pd.DataFrame:
        """The matrix as a DataFrame indexed by ts (an export: pandas is imported here, not by the
        long-running processes that compute features)."""
        import pandas as pd

        return pd.DataFrame(self.values, index=pd.Index(self.ts, name="ts"), columns=self.names)


@functools.lru_cache(maxsize=None)
def _compiled(expr: str):
    return compile(expr, f"<feature expr {expr}>", "eval")


def expr_columns(expr: str) -> list[str]:
    return list(dict.fromkeys(_IDENT.findall(expr)))


@functools.lru_cache(maxsize=None)
def spec_columns(spec) -> dict[str, frozenset[str]]:
    """Columns of spec's table(s) a spec reads, per table (specs are frozen: kept per spec)."""
    out: dict[str, set[str]] = {}

    def add(t, cols):
        out.setdefault(t, set()).update(cols)

    w = getattr(spec, "where", None)
    if isinstance(spec, C.Gauge):
        add(spec.table, expr_columns(spec.expr))
    elif isinstance(spec, C.Rate | C.DeltaRatio):
        cols = list(spec.counters) if isinstance(spec, C.Rate) else list(spec.num) + list(spec.den)
        add(spec.table, cols + ([spec.entity] if spec.entity else []))
    elif isinstance(spec, C.SumRatio):
        add(spec.table, expr_columns(spec.num) + expr_columns(spec.den))
    elif isinstance(spec, C.HistPct):
        add(spec.table, [spec.column])
    elif isinstance(spec, C.Slope):
        add(spec.table, expr_columns(spec.expr))
    elif isinstance(spec, C.EventRate):
        add(spec.table, [])
        add(spec.live, [])
    elif isinstance(spec, C.Corr):
        add(spec.table_a, expr_columns(spec.expr_a))
        add(spec.table_b, expr_columns(spec.expr_b))
    if w:
        add(spec.table, [w[0]])
    return {t: frozenset(c) for t, c in out.items()}


@functools.lru_cache(maxsize=8)
def _needed_columns(features: tuple[C.Feature, ...]) -> dict[str, frozenset[str]]:
    """Columns every feature in features reads, per table."""
    need: dict[str, set[str]] = {}
    for f in features:
        for t, cols in spec_columns(f.spec).items():
            need.setdefault(t, set()).update(cols)
    return {t: frozenset(c) for t, c in need.items()}


def _wsum(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum of x[lo:hi] for every (lo, hi) pair, via one cumulative sum."""
    if len(lo) == 1:  # the agent's one window: its slice (the cumulative sum cost more than the window)
        return np.array([np.add.reduce(x[lo[0]:hi[0]])], dtype=np.float64)
    c = np.empty(len(x) + 1, dtype=np.float64)
    c[0] = 0.0
    np.cumsum(x, out=c[1:])
    return c[hi] - c[lo]


def _range_reduce(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, fn) -> np.ndarray:
    """max/min of x[lo:hi] per pair with a sparse table (O(n log n) build, O(1) query)."""
    n = len(x)
    out = np.full(len(lo), np.nan)
    ok = hi > lo
    if n == 0 or not ok.any():
        return out
    levels = [x]
    k = 1
    while 2 * k <= n:
        prev = levels[-1]
        levels.append(fn(prev[:-k], prev[k:]))
        k *= 2
    length = np.where(ok, hi - lo, 1)
    j = np.floor(np.log2(length)).astype(np.int64)
    res = np.empty(len(lo))
    for lev in sorted_unique(j[ok]):
        m = ok & (j == lev)
        tab = levels[lev]
        a = lo[m]
        b = hi[m] - (1 << lev)
        res[m] = fn(tab[a], tab[b])
    out[ok] = res[ok]
    return out


def parse_int_arrays(texts) -> np.ndarray:
    """JSON int arrays (stored as TEXT) -> 2-D float array, short rows padded with zeros."""
    texts = ["[]" if t is None else t for t in texts]
    if not texts:
        return np.zeros((0, 0))
    rows = orjson.loads(("[" + ",".join(texts) + "]").encode())
    width = max((len(r) for r in rows), default=0)
    if all(len(r) == width for r in rows):
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    out = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def hist_quantile(sums: np.ndarray, q: float) -> np.ndarray:
    """q-quantile of log2 histograms (one per row); bucket i = [2^i, 2^(i+1)), bucket 0 = [0, 2)."""
    if sums.shape[1] == 0:
        return np.full(sums.shape[0], np.nan)
    total = sums.sum(axis=1)
    rank = q * total
    cum = np.cumsum(sums, axis=1)
    i = np.argmax(cum >= rank[:, None] - 1e-9 * np.maximum(total[:, None], 1), axis=1)
    rows = np.arange(len(i))
    h = sums[rows, i]
    below = cum[rows, i] - h
    with np.errstate(all="ignore"):
        frac = np.clip((rank - below) / h, 0.0, 1.0)
        lo = np.where(i == 0, 0.0, np.ldexp(1.0, i))
        hi = np.ldexp(1.0, i + 1)
        v = lo + (hi - lo) * frac
    return np.where(total > 0, v, np.nan)


class _Subset:
    """Rows of one table (optionally filtered): column arrays plus each window's [lo, hi) row bounds."""

    def __init__(self, cols: dict[str, np.ndarray], ends: np.ndarray, window_ns: int, label: str):
        self.cols = cols
        self.label = label
        self.ts = cols["ts"]
        self.lo = np.searchsorted(self.ts, ends - window_ns, side="right")
        self.hi = np.searchsorted(self.ts, ends, side="right")
        self.n = self.hi - self.lo
        self._eval: dict[str, np.ndarray] = {}
        self._groups: dict[str, list[np.ndarray]] = {}
        self._pairs: dict[str | None, tuple] = {}

    def groups(self, entity: str | None) -> list[np.ndarray]:
        """Row indices per entity (device, interface...), each in ts order."""
        g = self._groups.get(entity)
        if g is None:
            if not entity or len(self.ts) == 0 or entity not in self.cols:
                # No entity column (data from before it existed, e.g. tcp_retrans before netns): one entity.
                g = [np.arange(len(self.ts))]
            else:
                keys = self.cols[entity]
                _, inv = np.unique(keys.astype(str), return_inverse=True)
                order = np.argsort(inv, kind="stable")
                bounds = np.flatnonzero(np.diff(inv[order])) + 1
                g = np.split(order, bounds)
            self._groups[entity] = g
        return g

    def pairs(self, entity: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Consecutive rows of each entity, entity by entity in ts order: (index of the later row,
        index of the earlier row, entity number) per pair, and the number of entities."""
        p = self._pairs.get(entity)
        if p is None:
            groups = [g for g in self.groups(entity) if len(g) >= 2]
            if groups:
                later = np.concatenate([g[1:] for g in groups])
                earlier = np.concatenate([g[:-1] for g in groups])
                ent = np.repeat(np.arange(len(groups)), [len(g) - 1 for g in groups])
            else:
                later = earlier = ent = np.zeros(0, dtype=np.int64)
            p = self._pairs[entity] = (later, earlier, ent, len(groups))
        return p

    def eval(self, expr: str, sub: tuple[str, str] | None = None) -> np.ndarray:
        """expr over every row; sub=(column, other) evaluates it with column read from other."""
        key = expr if sub is None else (expr, sub)
        v = self._eval.get(key)
        if v is None:
            if sub is None and expr in self.cols:
                v = self.cols[expr].astype(np.float64)
            else:
                env = {c: self.cols[sub[1] if sub and c == sub[0] else c].astype(np.float64) for c in expr_columns(expr)}
                with np.errstate(all="ignore"):
                    v = np.asarray(eval(_compiled(expr), {"__builtins__": {}}, env), dtype=np.float64)  # noqa: S307 - catalog expressions only
                v = np.broadcast_to(v, (len(self.ts),)).copy() if v.ndim == 0 else v
            v = np.where(np.isfinite(v), v, np.nan)
            self._eval[key] = v
        return v


class RowCache:
    """Each table's rows kept from one vector to the next, for a caller whose window only moves
    forward (the agent's step): a vector then reads the rows stored since the last one (rowid
    above the highest seen) instead of its whole window again, 5 s of rows instead of 25 s for
    each of ~17 tables.  Rows are insert-only and a rowid is never smaller than an older row's,
    so `id > last` is every row stored since, whatever its ts (a late line too).

    It holds, per table, every row with ts > lo whose id <= last; a vector takes the ones with
    ts <= its end.  Read in full again when that cannot hold: the first time, other columns,
    a window that moved back or jumped more than its length (a suspended agent would otherwise
    read hours of rows through it), a table whose highest id went down (emptied and refilled),
    and rows that come from a rollup."""

    def __init__(self) -> None:
        self.tables: dict[str, tuple[tuple[str, ...], int, int, int, dict[str, np.ndarray]]] = {}

    def frame(self, conn: sqlite3.Connection, t: str, cols: list[str], numeric: dict, lo: int, hi: int,
              span_ns: int, max_id: int | None) -> dict[str, np.ndarray]:
        key = tuple(cols)
        hit = self.tables.get(t)
        names = ["@id", "ts", *cols]
        sel = ", ".join(["id", "ts"] + [f'"{c}"' for c in cols])
        if (hit is None or hit[0] != key or lo < hit[1] or hi < hit[2] or hi - hit[2] > span_ns
                or max_id is None or max_id < hit[3]):
            last = max_id or 0  # read before this query: any row at or below it is in its result
            rows = conn.execute(f'SELECT {sel} FROM "{t}" WHERE ts > ? ORDER BY ts, id', (lo,)).fetchall()
            data = _columns(rows, names, numeric)
            if len(data["@id"]):
                last = max(last, int(data["@id"].max()))
        else:
            _, _, _, last, data = hit
            rows = conn.execute(f'SELECT {sel} FROM "{t}" WHERE id > ? ORDER BY id', (last,)).fetchall()
            if rows:
                new = _columns(rows, names, numeric)
                last = int(new["@id"][-1])  # ORDER BY id
                data = {c: np.concatenate([v, new[c]]) for c, v in data.items()}
            keep = data["ts"] > lo  # a late row can be older than the window already
            if not keep.all():
                data = {c: v[keep] for c, v in data.items()}
            ts = data["ts"]
            if rows and len(ts) > 1 and (ts[1:] < ts[:-1]).any():  # a late row: back into (ts, id) order
                order = np.lexsort((data["@id"], ts))
                data = {c: v[order] for c, v in data.items()}
        self.tables[t] = (key, lo, hi, last, data)
        n = int(np.searchsorted(data["ts"], hi, side="right"))
        return {c: v[:n] for c, v in data.items() if c != "@id"}


def _columns(rows: list[tuple], names: list[str], numeric: dict) -> dict[str, np.ndarray]:
    """Rows to one array per column (ids and ts int64, numeric columns float64, others object)."""
    by_col = list(zip(*rows)) if rows else [()] * len(names)  # rows to columns, in C
    out = {}
    for k, c in enumerate(names):
        if c in ("@id", "ts"):
            out[c] = np.array(by_col[k], dtype=np.int64)
        else:
            out[c] = np.array(by_col[k], dtype=np.float64 if numeric[c] else object)
    return out


class _Engine:
    def __init__(self, conn: sqlite3.Connection, ends: np.ndarray, window_s: float, features: list[C.Feature],
                 cache: RowCache | None = None):
        self.conn = conn
        self.cache = cache
        self.E = np.asarray(ends, dtype=np.int64)
        self.window_s = float(window_s)
        self.W = int(round(window_s * NS))
        self.Wv = np.full(len(self.E), self.W, dtype=np.int64)  # per window: widened over rollup data
        self.features = features
        self.nE = len(self.E)
        self.schema, self.missing_by_spec = self._schema()
        self.frames: dict[str, dict[str, np.ndarray]] = {}
        self.subsets: dict[tuple, _Subset] = {}
        self.hist_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._load()

    # ---- loading
    def _schema(self) -> tuple[dict[str, dict[str, str]], dict]:
        """Columns and types of every table (read-only for callers), and a memo of _missing for
        it.  Kept per database file until its schema_version changes: the agent computes a vector
        every step, and reading every table's info each time was ~75 queries a step."""
        conn = self.conn
        path = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        hit = _SCHEMA_CACHE.get(path) if path else None
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        schema = {t: {r[1]: (r[2] or "").upper() for r in conn.execute(f'PRAGMA table_info("{t}")')} for t in tables}
        missing: dict = {}
        if path:  # not an in-memory database: its name is "" and another one may reuse it
            _SCHEMA_CACHE[path] = (version, schema, missing)
        return schema, missing

    def _load(self) -> None:
        if self.nE == 0:
            return
        need = _needed_columns(tuple(self.features))
        self.rollup_plans, self.rollup_step = rollup_plans(), rollup_step_ns()  # each reads the config
        lo = int(self.E.min()) - self.W - LOOKBACK_NS
        hi = int(self.E.max())
        horizon = None  # end of the rollup data read, over all tables
        tables = [t for t in need if t in self.schema]
        self.first_raw = self._first_raw_ts(tables)
        max_ids = self._max_ids(tables) if self.cache is not None else {}
        for t, cols in need.items():
            have = self.schema.get(t)
            if have is None:
                continue
            cols = sorted(c for c in cols if c in have)
            numeric = {c: have[c] in ("INTEGER", "REAL", "INT", "FLOAT", "NUMERIC") for c in cols}
            rolled = self._rollup_rows(t, cols, numeric, hi)
            if self.cache is not None and rolled is None:
                self.frames[t] = self.cache.frame(self.conn, t, cols, numeric, lo, hi, self.W + LOOKBACK_NS, max_ids.get(t))
                continue
            sel = ", ".join(["ts"] + [f'"{c}"' for c in cols])
            rows = self.conn.execute(f'SELECT {sel} FROM "{t}" WHERE ts > ? AND ts <= ? ORDER BY ts, id', (lo, hi)).fetchall()
            data = _columns(rows, ["ts"] + cols, numeric)
            if rolled is not None:
                data, end = self._prepend(data, rolled, cols)
                horizon = end if horizon is None else max(horizon, end)
            self.frames[t] = data
        if horizon is not None:
            step = self.rollup_step
            self.Wv = np.where(self.E - self.W < horizon, max(self.W, step), self.W).astype(np.int64)

    def _first_raw_ts(self, tables: list[str]) -> dict[str, int | None]:
        """Each table's oldest raw row's ts (where its rollup rows stop), for the tables that have a
        rollup: one query, not one per table (the agent's vector reads ~17 tables every step)."""
        have = [t for t in tables if t + ROLLUP_SUFFIX in self.schema and t in self.rollup_plans]
        if not have:
            return {}
        row = self.conn.execute("SELECT " + ", ".join(f'(SELECT MIN(ts) FROM "{t}")' for t in have)).fetchone()
        return dict(zip(have, row))

    def _max_ids(self, tables: list[str]) -> dict[str, int | None]:
        """Each table's highest rowid, in one query (for RowCache), before any of them is read."""
        have = [t for t in tables if "id" in self.schema[t]]
        if not have:
            return {}
        row = self.conn.execute("SELECT " + ", ".join(f'(SELECT MAX(id) FROM "{t}")' for t in have)).fetchone()
        return dict(zip(have, row))

    def _rollup_rows(self, t: str, cols: list[str], numeric: dict, hi: int):
        """Rows of t's rollup before its oldest raw row, covering the widened windows
        plus one more row for counter deltas; None when none apply."""
        rt = t + ROLLUP_SUFFIX
        rhave = self.schema.get(rt)
        plan = self.rollup_plans.get(t)
        if rhave is None or plan is None:
            return None
        step = self.rollup_step
        lo = int(self.E.min()) - max(self.W, step) - step - LOOKBACK_NS
        first_raw = self.first_raw.get(t)
        if first_raw is not None and first_raw <= lo:
            return None  # the range is all raw
        gauges = {f.name for f in plan.fields if f.agg == "gauge"}
        sel = ["ts", f'"{plan.samples}"']
        for c in cols:
            sel.append(f'"{c}"' if c in rhave else "NULL")
        ext = [c for c in cols if c in gauges and f"{c}_max" in rhave and numeric[c]]
        for c in ext:
            sel += [f'"{c}_max"', f'"{c}_min"']
        until = hi if first_raw is None else min(hi, first_raw - 1)
        rows = self.conn.execute(f'SELECT {", ".join(sel)} FROM "{rt}" WHERE ts > ? AND ts <= ? ORDER BY ts, id',
                                 (lo, until)).fetchall()
        if not rows:
            return None
        return rows, ext, (first_raw if first_raw is not None else rows[-1][0] + step)

    def _prepend(self, data: dict, rolled, cols: list[str]):
        rows, ext, end = rolled
        n_raw = len(data["ts"])
        out = {"ts": np.concatenate([np.fromiter((r[0] for r in rows), np.int64, len(rows)), data["ts"]]),
               "@samples": np.concatenate([np.array([r[1] for r in rows], dtype=np.float64), np.ones(n_raw)])}
        for k, c in enumerate(cols, start=2):
            col = np.array([r[k] for r in rows], dtype=data[c].dtype)
            out[c] = np.concatenate([col, data[c]])
        base = 2 + len(cols)
        for j, c in enumerate(ext):
            for m, suffix in enumerate(("max", "min")):
                col = np.array([r[base + 2 * j + m] for r in rows], dtype=np.float64)
                out[f"{c}@{suffix}"] = np.concatenate([col, data[c]])
        return out, min(end, int(out["ts"][len(rows) - 1]) + self.rollup_step)

    def subset(self, table: str, where: tuple | None) -> _Subset:
        key = (table, where)
        s = self.subsets.get(key)
        if s is None:
            cols = self.frames[table]
            label = table
            if where:
                col, op, val = where
                m = (cols[col] == val) if op == "==" else (cols[col] != val)
                m = np.asarray(m, dtype=bool)
                cols = {k: v[m] for k, v in cols.items()}
                label = f"{table} ({col} {op} {val!r})"
            s = _Subset(cols, self.E, self.Wv, label)
            self.subsets[key] = s
        return s

    # ---- reasons
    def _missing(self, spec) -> str | None:
        if spec in self.missing_by_spec:
            return self.missing_by_spec[spec]
        why = self.missing_by_spec[spec] = self._why_missing(spec)
        return why

    def _why_missing(self, spec) -> str | None:
        entity = getattr(spec, "entity", None)  # optional: without it the rows are one entity
        for t, cols in spec_columns(spec).items():
            if t not in self.schema:
                return f"table {t} absent"
            for c in sorted(cols):
                if c not in self.schema[t] and c != entity:
                    return f"column {t}.{c} absent"
        return None

    def _reasons(self, vals: np.ndarray, n_rows: np.ndarray, label: str, other) -> np.ndarray:
        r = np.full(self.nE, None, dtype=object)
        if self.nE == 1 and not math.isnan(vals[0]):
            return r  # the agent's single vector, with a value: no reason to work out
        bad = np.isnan(vals)
        if bad.any():
            r[bad & (n_rows == 0)] = f"no rows in {label} in window"
            m = bad & (n_rows > 0)
            if isinstance(other, np.ndarray):
                r[m] = other[m]
            else:
                r[m] = other
        return r

    # ---- run
    def run(self) -> FeatureMatrix:
        with np.errstate(all="ignore"):  # once, not per feature: NaN and inf are handled where they arise
            for f in self.features:
                self._feature(f)
        names = [f.name for f in self.features]
        values = np.empty((self.nE, len(names)))
        reasons = []
        for j, n in enumerate(names):
            v, r = self.results[n]
            values[:, j] = v
            reasons.append(r)
        return FeatureMatrix(self.E.copy(), self.window_s, names, values, reasons)

    def _feature(self, f: C.Feature):
        if f.name in self.results:
            return self.results[f.name]
        spec = f.spec
        if isinstance(spec, C.Derived):
            res = self._derived(spec)
        else:
            missing = self._missing(spec)
            if missing:
                res = (np.full(self.nE, np.nan), np.full(self.nE, missing, dtype=object))
            else:
                res = getattr(self, "_" + type(spec).__name__.lower())(spec)
        self.results[f.name] = res
        return res

    def _derived(self, spec: C.Derived):
        deps = []
        for d in spec.deps:
            fd = C.BY_NAME[d]
            deps.append((d, *self._feature(fd)))
        vals = np.asarray(spec.fn(*[v for _, v, _ in deps]), dtype=np.float64)
        r = np.full(self.nE, None, dtype=object)
        bad = np.isnan(vals)
        if bad.any():
            r[bad] = spec.null_reason
            # the first missing input explains the gap best (unless the fn tolerates missing inputs)
            for d, v, rr in reversed(deps):
                m = bad & np.isnan(v)
                if m.any():
                    r[m] = np.array([f"input {d} missing: {x}" for x in rr[m]], dtype=object)
            if spec.null_reason.startswith("fewer than"):
                r[bad] = spec.null_reason
        return vals, r

    def _gauge(self, spec: C.Gauge):
        s = self.subset(spec.table, spec.where)
        x = s.eval(spec.expr)
        if self.nE == 1 and spec.agg in ("mean", "last"):
            return self._gauge_one(s, spec, x)
        valid = ~np.isnan(x)
        if spec.agg == "mean":
            cnt = _wsum(valid.astype(np.float64), s.lo, s.hi)
            tot = _wsum(np.where(valid, x, 0.0), s.lo, s.hi)
            vals = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)
        elif spec.agg == "last":
            idx = np.flatnonzero(valid)
            ts_nn = s.ts[idx]
            h = np.searchsorted(ts_nn, self.E, side="right")
            ok = h > 0
            pick = idx[np.maximum(h - 1, 0)] if len(idx) else np.zeros(self.nE, dtype=np.int64)
            ok &= (s.ts[pick] > self.E - self.Wv) if len(idx) else False
            vals = np.where(ok, x[pick] if len(idx) else np.nan, np.nan)
        elif spec.agg in ("max", "min"):
            fill = -np.inf if spec.agg == "max" else np.inf
            fn = np.maximum if spec.agg == "max" else np.minimum
            one = expr_columns(spec.expr)
            if len(one) == 1 and f"{one[0]}@max" in s.cols:
                # rollup rows hold the minute's extremes: the expression at either
                # (one of them is its extreme when it is monotonic in the column)
                c = one[0]
                hi_x, lo_x = s.eval(spec.expr, (c, f"{c}@max")), s.eval(spec.expr, (c, f"{c}@min"))
                x = np.fmax(hi_x, lo_x) if spec.agg == "max" else np.fmin(hi_x, lo_x)
                valid = ~np.isnan(x)
            vals = _range_reduce(np.where(valid, x, fill), s.lo, s.hi, fn)
            vals = np.where(np.isfinite(vals), vals, np.nan)
        else:  # pragma: no cover - catalog bug
            raise ValueError(spec.agg)
        why = spec.null_reason or f"no non-null values of ({spec.expr}) in window"
        return vals, self._reasons(vals, s.n, s.label, why)

    def _gauge_one(self, s: _Subset, spec: C.Gauge, x: np.ndarray):
        """_gauge's mean or last for the one window of a single vector (the agent's, every step):
        the same values from the window's own rows, in a few numpy calls instead of ~10."""
        xs = x[s.lo[0]:s.hi[0]]
        xs = xs[~np.isnan(xs)]
        v = np.nan
        if len(xs):
            v = float(np.add.reduce(xs)) / len(xs) if spec.agg == "mean" else float(xs[-1])
        vals = np.array([v])
        why = spec.null_reason or f"no non-null values of ({spec.expr}) in window"
        return vals, self._reasons(vals, s.n, s.label, why)

    def _entity_deltas(self, s: _Subset, cols, entity):
        """Per-entity counter deltas: (end ts, d per col..., dt seconds), resets and nulls dropped."""
        vals = [s.eval(c) for c in cols]
        out_ts, out_d, out_dt = [], [[] for _ in cols], []
        for idx in s.groups(entity):
            if len(idx) < 2:
                continue
            t = s.ts[idx]
            dts = np.diff(t) / NS
            ds = [np.diff(v[idx]) for v in vals]
            ok = dts > 0
            for d in ds:
                ok &= ~np.isnan(d) & (d >= 0)
            out_ts.append(t[1:][ok])
            out_dt.append(dts[ok])
            for k, d in enumerate(ds):
                out_d[k].append(d[ok])
        return out_ts, out_d, out_dt

    def _rate(self, spec: C.Rate):
        s = self.subset(spec.table, spec.where)
        if self.nE == 1:
            return self._rate_one(s, spec)
        ts_l, d_l, dt_l = self._entity_deltas(s, spec.counters, spec.entity)
        total = np.zeros(self.nE)
        any_ok = np.zeros(self.nE, dtype=bool)
        for e in range(len(ts_l)):
            t = ts_l[e]
            lo = np.searchsorted(t, self.E - self.Wv, side="right")
            hi = np.searchsorted(t, self.E, side="right")
            dsum = sum(_wsum(d_l[k][e], lo, hi) for k in range(len(spec.counters)))
            tsum = _wsum(dt_l[e], lo, hi)
            ok = tsum > 0
            total += np.where(ok, dsum / np.where(ok, tsum, 1), 0.0)
            any_ok |= ok
        vals = np.where(any_ok, total * spec.scale, np.nan)
        return vals, self._reasons(vals, s.n, s.label, "no counter deltas in window (first sample, counter reset or null counter)")

    def _rate_one(self, s: _Subset, spec: C.Rate):
        """_rate for the one window of a single vector: every entity's deltas at once (the
        pairs of consecutive rows), summed per entity with bincount rather than entity by entity."""
        later, earlier, ent, n_ent = s.pairs(spec.entity)
        t = s.ts[later]
        dt = (t - s.ts[earlier]) / NS
        ok = (dt > 0) & (t > self.E[0] - self.Wv[0]) & (t <= self.E[0])
        d = 0.0
        for c in spec.counters:
            v = s.eval(c)
            dc = v[later] - v[earlier]
            ok &= dc >= 0  # False for NaN too: a null counter or a reset drops the delta
            d = d + dc
        e = ent[ok]
        tsum = np.bincount(e, weights=dt[ok], minlength=n_ent)
        has = tsum > 0
        v = np.nan
        if has.any():
            dsum = np.bincount(e, weights=d[ok], minlength=n_ent) if len(spec.counters) else np.zeros(n_ent)
            v = float(np.add.reduce(dsum[has] / tsum[has])) * spec.scale
        vals = np.array([v])
        return vals, self._reasons(vals, s.n, s.label, "no counter deltas in window (first sample, counter reset or null counter)")

    def _deltaratio(self, spec: C.DeltaRatio):
        s = self.subset(spec.table, spec.where)
        cols = list(spec.num) + list(spec.den)
        ts_l, d_l, _ = self._entity_deltas(s, cols, spec.entity)
        if ts_l:
            t = np.concatenate(ts_l)
            order = np.argsort(t, kind="stable")
            t = t[order]
            num = sum(np.concatenate(d_l[k])[order] for k in range(len(spec.num)))
            den = sum(np.concatenate(d_l[len(spec.num) + k])[order] for k in range(len(spec.den)))
        else:
            t, num, den = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        lo = np.searchsorted(t, self.E - self.Wv, side="right")
        hi = np.searchsorted(t, self.E, side="right")
        n_d = hi - lo
        ns, ds = _wsum(num, lo, hi), _wsum(den, lo, hi)
        vals = np.where(ds > 0, spec.scale * ns / np.where(ds > 0, ds, 1), np.nan)
        why = np.where(n_d > 0, spec.den_reason, "no counter deltas in window (first sample, counter reset or null counter)")
        return vals, self._reasons(vals, s.n, s.label, why.astype(object))

    def _sumratio(self, spec: C.SumRatio):
        s = self.subset(spec.table, spec.where)
        num, den = s.eval(spec.num), s.eval(spec.den)
        if spec.den_per_ts:
            first = np.ones(len(s.ts), dtype=bool)
            first[1:] = s.ts[1:] != s.ts[:-1]
            nv = ~np.isnan(num)
            nsum = _wsum(np.where(nv, num, 0.0), s.lo, s.hi)
            dsum = _wsum(np.where(first & ~np.isnan(den), den, 0.0), s.lo, s.hi)
        else:
            nv = ~np.isnan(num) & ~np.isnan(den)
            nsum = _wsum(np.where(nv, num, 0.0), s.lo, s.hi)
            dsum = _wsum(np.where(nv, den, 0.0), s.lo, s.hi)
        cnt = _wsum(nv.astype(np.float64), s.lo, s.hi)
        vals = np.where((cnt > 0) & (dsum > 0), spec.scale * nsum / np.where(dsum > 0, dsum, 1), np.nan)
        why = np.where(cnt > 0, spec.den_reason, f"no non-null values of ({spec.num}) in window").astype(object)
        return vals, self._reasons(vals, s.n, s.label, why)

    def _hist_sums(self, table: str, column: str, where):
        key = (table, column, where)
        got = self.hist_cache.get(key)
        if got is None:
            s = self.subset(table, where)
            if self.nE == 1:  # the one window: parse only its own rows' histograms
                h = parse_int_arrays(s.cols[column][s.lo[0]:s.hi[0]].tolist())
                got = self.hist_cache[key] = (h.sum(axis=0, keepdims=True), s.n)
                return got
            h = parse_int_arrays(s.cols[column].tolist())
            # one row per distinct ts first: tracers write one row per key per interval
            if len(s.ts):
                starts = np.flatnonzero(np.r_[True, s.ts[1:] != s.ts[:-1]])
                uts = s.ts[starts]
                h = np.add.reduceat(h, starts, axis=0) if h.shape[1] else np.zeros((len(starts), 0))
            else:
                uts = s.ts
            lo = np.searchsorted(uts, self.E - self.Wv, side="right")
            hi = np.searchsorted(uts, self.E, side="right")
            c = np.zeros((len(uts) + 1, h.shape[1]))
            np.cumsum(h, axis=0, out=c[1:])
            got = (c[hi] - c[lo], s.n)
            self.hist_cache[key] = got
        return got

    def _histpct(self, spec: C.HistPct):
        s = self.subset(spec.table, spec.where)
        sums, n = self._hist_sums(spec.table, spec.column, spec.where)
        vals = hist_quantile(sums, spec.q) * spec.scale
        return vals, self._reasons(vals, n, s.label, f"histogram {spec.column} empty in window (no samples)")

    def _slope(self, spec: C.Slope):
        s = self.subset(spec.table, spec.where)
        y = s.eval(spec.expr)
        v = ~np.isnan(y)
        t0 = s.ts[0] if len(s.ts) else 0
        t = (s.ts - t0) / NS
        z = np.where(v, 1.0, 0.0)
        n = _wsum(z, s.lo, s.hi)
        # centre time per window for precision: use window-relative sums
        st = _wsum(np.where(v, t, 0.0), s.lo, s.hi)
        sy = _wsum(np.where(v, y, 0.0), s.lo, s.hi)
        stt = _wsum(np.where(v, t * t, 0.0), s.lo, s.hi)
        sty = _wsum(np.where(v, t * y, 0.0), s.lo, s.hi)
        den = n * stt - st * st
        ok = (n >= 3) & (den > 1e-9 * np.maximum(n * stt, 1e-300))
        vals = np.where(ok, (n * sty - st * sy) / np.where(ok, den, 1), np.nan) * spec.scale
        return vals, self._reasons(vals, s.n, s.label, "fewer than 3 samples in window for a trend")

    def _eventrate(self, spec: C.EventRate):
        ev = self.subset(spec.table, None)
        live = self.subset(spec.live, None)
        # rollup rows stand for `samples` events each
        n_ev = _wsum(ev.cols["@samples"], ev.lo, ev.hi) if "@samples" in ev.cols else ev.n
        vals = np.where(live.n > 0, n_ev / (self.Wv / NS), np.nan)
        r = np.full(self.nE, None, dtype=object)
        r[np.isnan(vals)] = f"no rows in {spec.live} in window (tracer not running), so no count of {spec.table}"
        return vals, r

    def _corr(self, spec: C.Corr):
        a = self.subset(spec.table_a, None)
        b = self.subset(spec.table_b, None)
        xa, xb = a.eval(spec.expr_a), b.eval(spec.expr_b)
        okb = ~np.isnan(xb)
        tb, yb = b.ts[okb], xb[okb]
        y = np.full(len(a.ts), np.nan)
        if len(a.ts) and len(tb):
            # pair each row of a with the nearest row of b (ties: the earlier), within the tolerance
            j = np.clip(np.searchsorted(tb, a.ts), 1, max(len(tb) - 1, 1))
            jl = j - 1 if len(tb) > 1 else np.zeros_like(j)
            jr = j if len(tb) > 1 else np.zeros_like(j)
            pick = np.where(np.abs(a.ts - tb[jl]) <= np.abs(tb[jr] - a.ts), jl, jr)
            near = np.abs(tb[pick] - a.ts) <= PAIR_TOLERANCE_NS
            y = np.where(near, yb[pick], np.nan)
        x = xa
        v = ~np.isnan(x) & ~np.isnan(y)
        x0, y0 = np.where(v, x, 0.0), np.where(v, y, 0.0)
        n = _wsum(v.astype(np.float64), a.lo, a.hi)
        sx, sy = _wsum(x0, a.lo, a.hi), _wsum(y0, a.lo, a.hi)
        sxx, syy, sxy = _wsum(x0 * x0, a.lo, a.hi), _wsum(y0 * y0, a.lo, a.hi), _wsum(x0 * y0, a.lo, a.hi)
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        flat = (vx <= 1e-9 * np.maximum(n * sxx, 1e-300)) | (vy <= 1e-9 * np.maximum(n * syy, 1e-300))
        ok = (n >= 3) & ~flat
        vals = np.where(ok, (n * sxy - sx * sy) / np.sqrt(np.where(ok, vx * vy, 1)), np.nan)
        vals = np.clip(vals, -1.0, 1.0)
        why = np.where(n < 3, "fewer than 3 paired samples in window", "one of the two series is constant in window").astype(object)
        rows = np.minimum(a.n, b.n)
        return vals, self._reasons(vals, rows, f"{spec.table_a} or {spec.table_b}", why)


def select_features(names: list[str] | None) -> list[C.Feature]:
    """Catalog features by name (all when None), with the inputs derived ones need."""
    if not names:
        return list(C.FEATURES)
    unknown = [n for n in names if n not in C.BY_NAME]
    if unknown:
        raise KeyError(f"unknown feature '{unknown[0]}'" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return [C.BY_NAME[n] for n in names]


def compute_range(conn: sqlite3.Connection, ends_ns, window_s: float = C.FEATURE_WINDOW_S,
                  names: list[str] | None = None, cache: RowCache | None = None) -> FeatureMatrix:
    """Feature vectors for every window end in ends_ns (sorted or not), all at once; with cache,
    the rows read last time are kept and only newer ones read (see RowCache)."""
    if window_s <= 0:
        raise ValueError("window must be positive")
    feats = select_features(names)
    ends = np.asarray(ends_ns, dtype=np.int64)
    return _Engine(conn, ends, window_s, feats, cache).run()


def compute_vector(conn: sqlite3.Connection, end_ns: int, window_s: float = C.FEATURE_WINDOW_S,
                   names: list[str] | None = None) -> FeatureVector:
    """The feature vector for the window (end_ns - window_s, end_ns]."""
    return compute_range(conn, [int(end_ns)], window_s, names).vector(0)

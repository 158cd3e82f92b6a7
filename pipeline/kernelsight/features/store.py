"""The `features` table: one row per computed feature vector (wide layout).

    CREATE TABLE features (
      ts          INTEGER PRIMARY KEY,  -- window end, Unix epoch ns
      window_s    REAL NOT NULL,        -- window length in seconds; the window is (ts - window_s, ts]
      computed_ts INTEGER NOT NULL,     -- when the row was written (epoch ns)
      reasons     TEXT NOT NULL,        -- JSON object {feature: reason} for every feature that is NULL
      "<feature>" REAL,                 -- one column per catalog feature (NULL = no value; see reasons)
      ...
    );

Why wide and not long (ts, name, value, reason): a vector is read and written
as a unit (the agent reads "the latest vector", exports read a matrix), and a
day at 1 s is 86,400 rows wide versus 8.6 million rows long, which would cost
an order of magnitude in disk, insert time and index size.  A feature added to
the catalog becomes a new nullable column (ALTER TABLE ADD COLUMN), as the
event tables do.  Re-computing a ts replaces its row (INSERT OR REPLACE).

ks-agent writes the row it evaluates every FEATURE_STEP_S (catalog.py);
`ks-features backfill` fills past ranges.  Readers that must not mix window
lengths (baselines, exports) pass window_s to read_matrix.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import orjson

from ..db import transaction
from .catalog import FEATURE_STEP_S, NAMES
from .engine import FeatureMatrix

TABLE = "features"


def ensure_table(conn: sqlite3.Connection, names: list[str] | None = None) -> None:
    names = names or NAMES
    cols = ",\n  ".join(f'"{n}" REAL' for n in names)
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  ts INTEGER PRIMARY KEY,
  window_s REAL NOT NULL,
  computed_ts INTEGER NOT NULL,
  reasons TEXT NOT NULL,
  {cols}
)""")
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}
    for n in names:
        if n not in have:
            conn.execute(f'ALTER TABLE {TABLE} ADD COLUMN "{n}" REAL')


def write_matrix(conn: sqlite3.Connection, m: FeatureMatrix) -> int:
    """Insert (or replace) every row of m; returns rows written."""
    ensure_table(conn, m.names)
    now = time.time_ns()
    cols = ["ts", "window_s", "computed_ts", "reasons"] + m.names
    sql = f"INSERT OR REPLACE INTO {TABLE} ({', '.join(chr(34) + c + chr(34) for c in cols)}) VALUES ({','.join('?' * len(cols))})"
    vals = m.values.astype(object)
    vals[np.isnan(m.values)] = None
    reasons = m.reasons
    names = m.names
    # reasons JSON per row; rows with the same null pattern and reasons share one encoding
    rows = []
    for i in range(len(m)):
        rd = {n: r[i] for n, r in zip(names, reasons) if r[i] is not None}
        rows.append((int(m.ts[i]), m.window_s, now, orjson.dumps(rd).decode(), *vals[i].tolist()))
    with transaction(conn, "BEGIN"):
        conn.executemany(sql, rows)
    return len(rows)


def has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)).fetchone() is not None


def read_matrix(conn: sqlite3.Connection, since_ns: int, until_ns: int, names: list[str] | None = None,
                window_s: float | None = None, every: int = 1) -> FeatureMatrix:
    """Stored vectors with since <= ts <= until (names absent from the table come back NULL).

    With window_s, only rows over that window: a backfill with another --window
    must not blend into a baseline or an export of the agent's vectors.  every=k keeps one
    vector in k (by step number), so that a week of history is read in bounded memory."""
    names = names or NAMES
    empty_window = 0.0 if window_s is None else float(window_s)
    if not has_table(conn):
        return FeatureMatrix(np.zeros(0, np.int64), empty_window, names, np.zeros((0, len(names))),
                             [np.zeros(0, object) for _ in names])
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}
    sel = ", ".join(f'"{n}"' if n in have else "NULL" for n in names)
    where, args = "ts >= ? AND ts <= ?", [since_ns, until_ns]
    if window_s is not None:
        where += " AND window_s = ?"
        args.append(float(window_s))
    if every > 1:
        where += " AND (ts / ?) % ? = 0"
        args += [int(FEATURE_STEP_S * 1e9), int(every)]
    rows = conn.execute(f"SELECT ts, window_s, reasons, {sel} FROM {TABLE} WHERE {where} ORDER BY ts", args).fetchall()
    ts = np.array([r[0] for r in rows], dtype=np.int64)
    window = float(rows[-1][1]) if rows else empty_window
    values = np.array([r[3:] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    rs = [orjson.loads(r[2]) for r in rows]
    reasons = []
    for j, n in enumerate(names):
        col = np.array([d.get(n) for d in rs], dtype=object) if rows else np.zeros(0, object)
        missing = np.isnan(values[:, j]) & (col == None)  # noqa: E711 - elementwise
        if n not in have and missing.any():
            col[missing] = "feature not stored in this row (computed before it joined the catalog)"
        reasons.append(col)
    return FeatureMatrix(ts, window, names, values, reasons)


def latest(conn: sqlite3.Connection) -> int | None:
    if not has_table(conn):
        return None
    r = conn.execute(f"SELECT MAX(ts) FROM {TABLE}").fetchone()
    return r[0] if r else None

"""Reading across the raw horizon: raw rows where they are still present, rollups before.

features/engine.py does this for feature vectors; SQL readers can use the
<table>_all views (plan.py); count_rows is the same for a plain count of
events or rows since some time."""

from __future__ import annotations

import sqlite3

from .plan import ROLLUP_SUFFIX, plans


def count_rows(conn: sqlite3.Connection, table: str, since_ns: int, until_ns: int | None = None) -> int | None:
    """Raw rows of table with since < ts <= until, counting each rollup row before the
    oldest raw row as the rows it stands for; None when the table does not exist."""
    until_ns = 2**63 - 1 if until_ns is None else until_ns
    try:
        n = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE ts > ? AND ts <= ?", (since_ns, until_ns)).fetchone()[0]
    except sqlite3.OperationalError:
        return None
    plan = plans().get(table)
    if plan is None:
        return n
    try:
        older = conn.execute(
            f"SELECT COALESCE(SUM({plan.samples}), 0) FROM {table}{ROLLUP_SUFFIX} WHERE ts > ? AND ts <= ? AND "
            f"ts < (SELECT COALESCE(MIN(ts), 9223372036854775807) FROM {table})", (since_ns, until_ns)).fetchone()[0]
    except sqlite3.OperationalError:  # no rollups (yet)
        return n
    return n + older

"""storage.rollup.aggregate (numpy, as ks-agent runs it every minute) against the pandas groupby it replaced.

The oracle below is the previous implementation, kept as it was apart from its
name and one fix (a chunk whose int arrays are all NULL or [] made it raise):
the test may import pandas, ks-agent may not.  Both run on recorded rows
(the memory-pressure capture and the collectors' recorded outputs, through
ks-ingest into a database) and on random rows (hypothesis) for every rollup
plan: every aggregation, NULLs, several keys, rows out of order, several
producers writing the same ts.

What may differ, on purpose:
- `last` of an int column that has NULLs in the chunk: pandas turned the whole
  column into float64 (5 -> 5.0, a counter past 2**53 rounded); the numpy
  version keeps the int (SQLite's INTEGER column stores both as the integer).
"""

from __future__ import annotations

import json
import math
import random
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernelsight.storage.plan import FieldRollup, TablePlan, plans
from kernelsight.storage.rollup import NS, _int_arrays, aggregate, bucket_end
from test_collectors_util import REPO, fixture

CAPTURE = REPO / "tests" / "fixtures" / "agent" / "memory_pressure.jsonl"
MIN = 60 * NS
T0 = 1_800_000_000 * NS  # a minute boundary


# ---------------------------------------------------------------------------- the oracle: the pandas version

def _py(v):
    """A pandas/numpy scalar as a value sqlite3 binds (NaN and NA -> NULL)."""
    import pandas as pd

    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def pandas_aggregate(plan: TablePlan, rows: list[tuple], step_ns: int) -> list[tuple]:
    """Rollup rows (in plan.columns() order) from raw rows (id, ts, field...)."""
    import pandas as pd

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
            if f.agg == "hist":
                nz = red != 0
                # the one change: argmax of no column raised ValueError when every array of the chunk was
                # NULL or [] (housekeeping then failed on that table every minute); now no width
                last_nz = np.argmax(nz[:, ::-1], axis=1) if red.shape[1] else np.zeros(len(red), dtype=np.int64)
                width = np.where(nz.any(axis=1), red.shape[1] - last_nz, 0)
            else:
                width = np.full(len(red), red.shape[1])
            out[f.name] = [orjson_dumps(r[:w].tolist()) if h else None for r, w, h in zip(red, width, has)]
    out = out.reset_index()
    cols = [c for c, _ in plan.columns()]
    out = out.rename(columns={"_b": "ts"})[cols]
    return list(zip(*(_pylist(out[c]) for c in cols)))


def orjson_dumps(v) -> str:
    import orjson

    return orjson.dumps(v).decode()


def _pylist(col) -> list:
    """A column as Python values sqlite3 binds, NaN and NA as None (column-wise: rows are many)."""
    import pandas as pd

    if col.dtype == object:
        return [_py(v) for v in col.tolist()]
    vals = col.to_numpy(dtype=object, na_value=None) if hasattr(col.dtype, "na_value") else col.to_numpy().astype(object)
    if col.dtype.kind == "f":
        vals[pd.isna(col.to_numpy())] = None
    return vals.tolist()


# ---------------------------------------------------------------------------- comparison

def _rounded(plan: TablePlan) -> set[str]:
    """Columns that are sums of floats (float sums and means, float intervals)."""
    out = set()
    for f in plan.fields:
        if f.type == "float" and f.agg in ("gauge", "sum", "interval"):
            out.add(f.name)
        elif f.type == "int" and f.agg == "gauge":
            out.add(f.name)  # the mean of ints: pandas sums them as floats
    return out


def _pandas_sums_with_reduceat() -> bool:
    """pandas (3.x) sums sorted groups without NaN with np.add.reduceat, else with Kahan compensation:
    the numpy version sums the same way, so it equals that pandas bit for bit.  An older pandas always
    used Kahan: against it, float sums are equal to within rounding."""
    from pandas.core.groupby import ops

    return hasattr(ops, "_REDUCEAT_UFUNCS")


def assert_same(plan: TablePlan, got: list[tuple], want: list[tuple]) -> None:
    cols = [c for c, _ in plan.columns()]
    last_int = {f.name for f in plan.fields if f.type == "int" and f.agg == "last"}
    rounded = set() if _pandas_sums_with_reduceat() else _rounded(plan)
    assert len(got) == len(want), (len(got), len(want))
    for i, (g, w) in enumerate(zip(got, want)):
        assert len(g) == len(cols)
        for c, a, b in zip(cols, g, w):
            where = f"{plan.table} row {i} column {c}: numpy {a!r}, pandas {b!r}"
            if b is None:
                assert a is None, where
            elif c in last_int and type(b) is float and type(a) is int:
                assert float(a) == b, where  # pandas made the column float64 (NULLs in it)
            else:
                assert type(a) is type(b), where
                if c in rounded:
                    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), where
                else:
                    assert a == b, where


def check(plan: TablePlan, rows: list[tuple], step_ns: int = MIN) -> list[tuple]:
    got = aggregate(plan, rows, step_ns)
    assert_same(plan, got, pandas_aggregate(plan, rows, step_ns))
    return got


# ---------------------------------------------------------------------------- recorded rows

COLLECTOR_FIXTURES = [  # (parser, recorded output)
    ("kernelsight.collectors.runqlat:HistStreamParser", "runqlat_1.txt"),
    ("kernelsight.collectors.tcpstates:TcpStatesParser", "tcpstates_w.txt"),
    ("kernelsight.collectors.tcplife:TcpLifeParser", "tcplife_w.txt"),
    ("kernelsight.collectors.execsnoop:ExecsnoopParser", "execsnoop_xq.txt"),
    ("kernelsight.collectors.exitsnoop:ExitsnoopParser", "exitsnoop.txt"),
    ("kernelsight.collectors.biopattern:BiopatternParser", "biopattern_1.txt"),
    ("kernelsight.collectors.irqs:IrqTimeParser", "hardirqs_1.txt"),
    ("kernelsight.collectors.irqs:SoftIrqTimeParser", "softirqs_1.txt"),
    ("kernelsight.collectors.oom:OomkillParser", "oomkill_synthetic.txt"),
]


def collector_lines() -> list[bytes]:
    """The collectors' recorded outputs as the JSON lines they emit, a line of output every 0.2 s
    (so the events spread over minutes, several of them on one ts)."""
    import importlib

    out = []
    for target, name in COLLECTOR_FIXTURES:
        mod, cls = target.split(":")
        parser = getattr(importlib.import_module(mod), cls)(1)
        data = fixture(name)
        evs = []
        for i, line in enumerate(data.decode("utf-8", "replace").split("\n")):
            evs += parser.feed(line, T0 + i * NS // 5)
        evs += parser.finish(T0 + 10**4 * NS, clean=True)
        out += [json.dumps(e).encode() for e in evs]
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A database holding the memory-pressure capture and the collectors' recorded events."""
    from kernelsight.ingest import make_ingestor, replay

    d = tmp_path_factory.mktemp("recorded")
    capture = d / "capture.jsonl"
    with open(capture, "wb") as f:
        f.write(CAPTURE.read_bytes())
        f.write(b"\n".join(collector_lines()) + b"\n")
    ing = make_ingestor(d)
    replay(capture, ing)
    ing.close()
    ing.conn.close()
    from kernelsight import db

    conn = sqlite3.connect(db.db_path(d))
    yield conn
    conn.close()


def table_rows(conn, plan: TablePlan) -> list[tuple]:
    names = ", ".join(f.name for f in plan.fields)
    return conn.execute(f"SELECT id, ts{', ' + names if names else ''} FROM {plan.table} ORDER BY ts, id").fetchall()


def test_recorded_rows_roll_up_as_with_pandas(recorded):
    seen = set()
    for plan in plans().values():
        rows = table_rows(recorded, plan)
        if not rows:
            continue
        seen.add(plan.table)
        check(plan, rows)  # the whole table in one chunk
        half = len(rows) // 2
        check(plan, rows[:half])
        check(plan, rows[half:], step_ns=10 * NS)  # more buckets
        check(plan, rows[::-1])  # out of order: rows are taken in (ts, id) order
    # the capture's scraper tables and every collector's events
    assert {"memory_metrics", "cpu_metrics", "psi_metrics", "block_stats", "network_interface_stats", "runqlat_hist",
            "tcp_state_events", "tcp_life_events", "exec_events", "process_exit_events", "bio_pattern", "irq_time",
            "oom_kill_events"} <= seen, sorted(seen)


def test_known_rollup_of_recorded_exits(recorded):
    """Spot values, independent of both implementations."""
    plan = plans()["process_exit_events"]
    rows = table_rows(recorded, plan)
    got = aggregate(plan, rows, MIN)
    cols = [c for c, _ in plan.columns()]
    assert sum(dict(zip(cols, r))["samples"] for r in got) == len(rows) == 259
    buckets = [r[0] for r in got]
    assert buckets == sorted(buckets)
    keyed = [(r[0], *(dict(zip(cols, r))[k] for k in plan.keys)) for r in got]
    assert len(set(keyed)) == len(keyed)


# ---------------------------------------------------------------------------- random rows, every plan

KEY_STR = st.sampled_from(["a", "b", "sda", "Z", "é", ""])
TEXT = st.sampled_from(["x", "y", "long text", "ENOENT"])
SMALL_INT = st.integers(-1000, 1000)
BIG_INT = st.integers(0, 2**62)
FLOAT = st.one_of(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                  st.sampled_from([0.0, 0.5, 1.0, 2.5, 100.0]))
INT_ARRAY = st.lists(st.integers(0, 10**6), max_size=6).map(json.dumps)


def _value(f, nulls: bool):
    if f.type == "str":
        v = KEY_STR if f.agg == "key" else TEXT
    elif f.type == "int":
        v = st.sampled_from([0, 1, 4, 6, 10]) if f.agg == "key" else (
            st.one_of(SMALL_INT, BIG_INT) if f.agg == "last" else SMALL_INT)
    elif f.type == "float":
        v = st.sampled_from([1.0, 0.5, 2.0]) if f.agg == "interval" else FLOAT
    else:
        v = INT_ARRAY
    return st.one_of(st.none(), v) if nulls else v


@st.composite
def raw_rows(draw, plan: TablePlan):
    """Rows (id, ts, field...) in any order: a few ts values per minute (several producers share one),
    over a few minutes, ids unique."""
    n = draw(st.integers(1, 40))
    stamps = draw(st.lists(st.integers(0, 4 * MIN), min_size=1, max_size=8))
    nulls = {f.name: draw(st.booleans()) for f in plan.fields}
    ids = draw(st.permutations(range(1, n + 1)))
    rows = []
    for i in range(n):
        ts = T0 + draw(st.sampled_from(stamps))
        rows.append((ids[i], ts, *(draw(_value(f, nulls[f.name])) for f in plan.fields)))
    return rows


PLANS = plans()


@pytest.mark.parametrize("table", sorted(PLANS))
@settings(max_examples=20, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_rows_roll_up_as_with_pandas(table, data):
    plan = PLANS[table]
    rows = data.draw(raw_rows(plan))
    step = data.draw(st.sampled_from([MIN, 10 * NS]))
    check(plan, rows, step)


def test_many_groups_of_many_sizes():
    """Float sums over groups out of row order (Kahan, vectorised across groups while many are
    going, the longest few finished in Python), with NULLs, and in row order without NULLs."""
    plan = PLANS["process_exit_events"]
    rnd = random.Random(5)
    comms = [f"c{i}" for i in range(60)]
    weights = [1 / (i + 1) ** 1.5 for i in range(len(comms))]  # a few comms exit often, most rarely
    rows = []
    for i in range(6000):
        ts = T0 + rnd.randrange(0, 3 * MIN)
        rows.append((i + 1, ts, rnd.choices(comms, weights)[0], rnd.randrange(1, 10**6), 1, i, 
                     None if rnd.random() < 0.05 else rnd.expovariate(3.0), rnd.choice([0, 0, 1, None]),
                     rnd.choice([None, None, 9, 15]), rnd.choice([0, 1])))
    got = check(plan, rows)
    cols = [c for c, _ in plan.columns()]
    assert max(dict(zip(cols, r))["samples"] for r in got) > 100 and len(got) > 100
    no_keys = TablePlan("t", (FieldRollup("age_s", "float", "gauge"), FieldRollup("kb", "float", "sum")), "samples")
    check(no_keys, [(r[0], r[1], rnd.uniform(0, 9), rnd.uniform(0, 1e4)) for r in rows])  # in group order
    check(no_keys, [(r[0], r[1], r[6], rnd.uniform(0, 1e4)) for r in rows])  # NULLs: Kahan


def test_every_aggregation_is_covered():
    kinds = {(f.type, f.agg) for p in PLANS.values() for f in p.fields}
    assert {("str", "key"), ("int", "key"), ("int", "gauge"), ("float", "gauge"), ("int", "sum"), ("float", "sum"),
            ("int", "last"), ("str", "last"), ("int_array", "last"), ("int", "max"), ("float", "max"), ("int", "min"),
            ("int", "interval"), ("float", "interval"), ("int_array", "hist"), ("int_array", "max")} <= kinds
    assert any(len(p.keys) >= 3 for p in PLANS.values())


def test_int_array_min_and_shared_ts():
    """int_array min (no table uses it yet), a chunk whose rows all share one ts, and empty arrays."""
    plan = TablePlan("t", (FieldRollup("k", "str", "key"), FieldRollup("lo", "int_array", "min"),
                           FieldRollup("hi", "int_array", "max"), FieldRollup("h", "int_array", "hist"),
                           FieldRollup("n", "int", "interval")), "samples")
    rnd = random.Random(3)
    rows = [(i, T0 + 5 * NS, rnd.choice(["a", None]), rnd.choice([None, "[]", "[3,1]", "[0,0,7]"]),
             rnd.choice([None, "[2]", "[1,9,4]"]), rnd.choice([None, "[]", "[0,0]", "[1,0,2,0]"]), rnd.choice([None, 2]))
            for i in range(1, 30)]
    got = check(plan, rows)
    assert [r[0] for r in got] == [T0 + MIN] * len(got)


def test_aggregate_does_not_import_pandas():
    import subprocess
    import sys

    code = ("import sys\nfrom kernelsight.storage.plan import plans\nfrom kernelsight.storage.rollup import aggregate\n"
            "p = plans()['syscall_stats']\n"
            "rows = [(i, 1800000000 * 10**9 + i * 10**9, *([None] * len(p.fields))) for i in range(1, 200)]\n"
            "assert aggregate(p, rows, 60 * 10**9)\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr

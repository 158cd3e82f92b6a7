"""Feature engine: baselines and z-scores, exports, the CLI, and end to end on a recorded capture."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from kernelsight import db
from kernelsight.features import compute_vector, learn_baseline, load_baseline, zscores
from kernelsight.features.baseline import MIN_PER_HOUR, save_baseline
from kernelsight.features.catalog import FEATURE_STEP_S, FEATURE_WINDOW_S
from kernelsight.features.engine import FeatureMatrix, FeatureVector, compute_range
from kernelsight.features.export import export
from kernelsight.features.store import read_matrix, write_matrix
from kernelsight.features.timeparse import parse_duration, parse_time

FIX = Path(__file__).parent / "fixtures" / "features"
NS = 1_000_000_000
T0 = 1_800_000_000 * NS


def matrix(n=101, names=("a", "b", "c")) -> FeatureMatrix:
    ts = T0 + np.arange(n, dtype=np.int64) * NS
    vals = np.empty((n, len(names)))
    vals[:, 0] = np.arange(1, n + 1)  # 1..101
    vals[:, 1] = 7.0  # constant
    vals[:, 2] = np.where(np.arange(n) % 2 == 0, np.nan, np.arange(n) * 0.5)
    reasons = [np.full(n, None, object) for _ in names]
    reasons[2][np.isnan(vals[:, 2])] = "no rows in x in window"
    return FeatureMatrix(ts, 60.0, list(names), vals, reasons)


def test_baseline_known_distribution(tmp_path):
    b = learn_baseline(matrix(), min_per_hour=10_000)
    a = b.stats["a"]
    assert a["n"] == 101 and a["mean"] == 51 and a["median"] == 51 and a["mad"] == 25
    assert a["std"] == pytest.approx(np.std(np.arange(1, 102), ddof=1))
    assert a["q05"] == pytest.approx(6.0) and a["q95"] == pytest.approx(96.0) and a["min"] == 1 and a["max"] == 101
    assert b.stats["c"]["n"] == 50  # nulls are left out
    assert b.by_hour == {}

    v = FeatureVector(T0, 60.0, {"a": 80.0, "b": 7.0, "c": None}, {"c": "no rows in x in window"})
    z = zscores(v, b)
    assert z["a"]["z"] == pytest.approx(29 / a["std"])
    assert z["a"]["robust_z"] == pytest.approx(0.6745 * 29 / 25)
    assert z["b"]["z"] is None and "std is 0" in z["b"]["reason"]
    assert z["c"]["z"] is None and z["c"]["reason"] == "no value: no rows in x in window"

    conn = db.connect(tmp_path / "kernelsight.db")
    path = save_baseline(conn, b, tmp_path)
    for loaded in (load_baseline(conn), load_baseline(None, path)):
        assert loaded.stats["a"]["mad"] == 25 and loaded.stats["a"]["q95"] == pytest.approx(96.0)


def test_baseline_by_hour():
    n = 2 * 3600  # two hours at 1 s: each hour gets its own statistics
    ts = T0 + np.arange(n, dtype=np.int64) * NS
    vals = np.where(np.arange(n) < 3600, 1.0, 100.0).reshape(n, 1) + (np.arange(n) % 2).reshape(n, 1)
    b = learn_baseline(FeatureMatrix(ts, 60.0, ["x"], vals, [np.full(n, None, object)]), min_per_hour=600)
    assert len(b.by_hour) >= 2
    means = sorted(round(s["x"]["mean"], 3) for s in b.by_hour.values())
    assert means[0] < 50 < means[-1]


def week_of_mondays(weeks: int = 2) -> FeatureMatrix:
    """`weeks` weeks at one vector a minute: x is 100 on Mondays 09h (a batch job), 1 otherwise."""
    from kernelsight.features.baseline import local_hours

    n = weeks * 7 * 24 * 60
    ts = T0 + np.arange(n, dtype=np.int64) * 60 * NS
    _, week_hour = local_hours(ts)
    vals = np.where(week_hour == 9, 100.0, 1.0).reshape(n, 1) + (np.arange(n) % 2).reshape(n, 1)
    return FeatureMatrix(ts, 60.0, ["x"], vals, [np.full(n, None, object)])


def test_baseline_by_hour_of_week_knows_monday_morning(tmp_path):
    from kernelsight.features.baseline import local_hours

    m = week_of_mondays()
    b = learn_baseline(m, min_per_hour=30)
    assert len(b.by_week_hour) == 168 and len(b.by_hour) == 24
    monday_9 = int(m.ts[np.flatnonzero(local_hours(m.ts)[1] == 9)[0]])
    tuesday_9 = monday_9 + 24 * 3600 * NS
    st, basis = b.for_ts("x", monday_9)
    assert basis == "Mon 09h" and st["mean"] == pytest.approx(100.5)
    st, basis = b.for_ts("x", tuesday_9)
    assert basis == "Tue 09h" and st["mean"] == pytest.approx(1.5)
    assert b.by_hour[local_hours(np.array([tuesday_9]))[0][0]]["x"]["mean"] > 10  # the day profile blurs them
    conn = db.connect(tmp_path / "kernelsight.db")
    path = save_baseline(conn, b, tmp_path)
    for loaded in (load_baseline(conn), load_baseline(None, path)):
        assert loaded.for_ts("x", monday_9) == (b.for_ts("x", monday_9)[0], "Mon 09h")


def test_one_day_of_history_makes_no_week_profile():
    m = week_of_mondays()
    day = 24 * 60
    b = learn_baseline(FeatureMatrix(m.ts[:day], 60.0, ["x"], m.values[:day], [r[:day] for r in m.reasons]),
                       min_per_hour=30)
    assert len(b.by_hour) == 24 and b.by_week_hour == {}


def test_learning_leaves_out_the_spans_given():
    n = 600
    ts = T0 + np.arange(n, dtype=np.int64) * NS
    vals = np.ones((n, 1))
    vals[100:200] = 1000.0  # an incident
    m = FeatureMatrix(ts, 60.0, ["x"], vals, [np.full(n, None, object)])
    b = learn_baseline(m, min_per_hour=10_000, exclude_spans=[(int(ts[100]), int(ts[199]))])
    assert b.stats["x"]["max"] == 1.0 and b.meta["left_out_vectors"] == 100
    with pytest.raises(ValueError, match="outside the left-out spans"):
        learn_baseline(m, exclude_spans=[(int(ts[0]), int(ts[-1]))])


def test_hour_baseline_needs_ten_minutes_of_vectors_at_the_feature_step():
    assert MIN_PER_HOUR * FEATURE_STEP_S == 600


def test_stored_vectors_are_read_at_one_window(tmp_path):
    conn = db.connect(tmp_path / "kernelsight.db")
    m = matrix(10)
    agent_rows = FeatureMatrix(m.ts, FEATURE_WINDOW_S, m.names, m.values, m.reasons)
    other = FeatureMatrix(m.ts[-1] + NS * (1 + np.arange(3)), 60.0, m.names, m.values[:3], [r[:3] for r in m.reasons])
    write_matrix(conn, agent_rows)
    write_matrix(conn, other)
    assert len(read_matrix(conn, T0, T0 + 3600 * NS, m.names)) == 13
    got = read_matrix(conn, T0, T0 + 3600 * NS, m.names, window_s=FEATURE_WINDOW_S)
    assert got.window_s == FEATURE_WINDOW_S and np.array_equal(got.ts, m.ts)
    _same(got.values, m.values)
    assert list(got.reasons[2]) == list(m.reasons[2])
    none = read_matrix(conn, T0, T0 + 3600 * NS, m.names, window_s=30.0)
    assert len(none) == 0 and none.window_s == 30.0


def _same(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["csv", "npz", "json", "parquet"])
def test_export_round_trip(tmp_path, fmt):
    m = matrix()
    m.values[3, 0] = 1 / 3  # a value that needs all 17 digits
    out = export(m, fmt, tmp_path / f"f.{fmt}")
    if fmt == "csv":
        df = pd.read_csv(out)
        assert list(df.columns) == ["ts", "time", *m.names]
        got, ts = df[m.names].to_numpy(), df["ts"].to_numpy()
    elif fmt == "npz":
        z = np.load(out)
        assert list(z["names"]) == m.names
        got, ts = z["X"], z["ts"]
    elif fmt == "json":
        d = json.loads(out.read_text())
        assert d["metadata"]["names"] == m.names
        got = np.array([[np.nan if x is None else x for x in r] for r in d["rows"]])
        ts = np.array(d["ts"])
        stats = {f["name"]: f for f in d["features"]}
        assert stats["a"]["stats"]["mean"] == pytest.approx(51 - (4 - 1 / 3) / 101) and stats["c"]["null_reasons"] == {"no rows in x in window": 51}
    else:
        df = pd.read_parquet(out)
        got, ts = df[m.names].to_numpy(), df["ts"].to_numpy()
    _same(got, m.values)
    assert np.array_equal(ts, m.ts)


def test_time_parsing():
    now = T0
    assert parse_time("-10m", now) == now - 600 * NS
    assert parse_time("now", now) == now
    assert parse_time("1800000000", now) == T0
    assert parse_time(str(T0 + 123), now) == T0 + 123  # ns kept to the last digit
    assert parse_time("2027-01-15T08:00:00Z", now) == 1_800_000_000 * NS
    with pytest.raises(ValueError):
        parse_time("yesterday-ish", now)


# ---- end to end: a capture recorded on this machine (ks-scraper + ks-syscall + ks-io-latency, 60 s)

def _tool(name):
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else None


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    ingest = _tool("ks-ingest")
    if not ingest:
        pytest.skip("ks-ingest not installed (make build)")
    d = tmp_path_factory.mktemp("e2e")
    cap = d / "capture.jsonl"
    cap.write_bytes(gzip.decompress((FIX / "capture.jsonl.gz").read_bytes()))
    r = subprocess.run([ingest, "--replay", str(cap), "--data-dir", str(d / "data")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return d / "data"


def test_end_to_end_replay_matches_expected(replayed):
    exp = orjson.loads((FIX / "expected.json").read_bytes())
    conn = db.connect_readonly(db.db_path(replayed))
    v = compute_vector(conn, exp["ts"], exp["window_s"])
    for name, want in exp["values"].items():
        got = v.values[name]
        if want is None:
            assert got is None and v.reasons[name] == exp["reasons"][name], name
        else:
            assert got == pytest.approx(want, rel=1e-9), name
    # cross-checks against the scraper's own per-interval rates over the same rows
    rows = conn.execute("SELECT ctxt_per_sec FROM cpu_metrics WHERE ts > ? AND ts <= ? AND ctxt_per_sec IS NOT NULL",
                        (exp["ts"] - 60 * NS, exp["ts"])).fetchall()
    assert v.values["ctx_switches_per_sec"] == pytest.approx(np.mean([r[0] for r in rows]), rel=0.05)
    assert sum(x is not None for x in v.values.values()) >= 70


# ---- CLI

def ks(args, env, check=True):
    r = subprocess.run([sys.executable, "-m", "kernelsight.features", *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def cli_env(replayed):
    return {**os.environ, "KS_DATA_DIR": str(replayed), "KS_LOG_LEVEL": "warning"}


def test_cli_compute_baseline_zscores_export(cli_env, tmp_path):
    exp = orjson.loads((FIX / "expected.json").read_bytes())
    at = str(exp["ts"] / 1e9)
    out = json.loads(ks(["compute", "--at", at, "--json"], cli_env).stdout)
    assert out["window_s"] == FEATURE_WINDOW_S  # the agent's window unless --window says otherwise
    assert set(out["values"]) == set(exp["values"])
    assert all(out["values"][n] is not None or out["reasons"][n] for n in out["values"])
    since = str(exp["ts"] / 1e9 - 30)
    ks(["backfill", "--since", since, "--until", at, "--step", "1s"], cli_env)
    ks(["baseline", "learn", "--since", since, "--until", at], cli_env)
    assert "memory_available_pct" in ks(["baseline", "show"], cli_env).stdout
    z = json.loads(ks(["compute", "--at", at, "--json", "--zscores"], cli_env).stdout)["zscores"]
    assert z["memory_available_pct"]["z"] is not None or z["memory_available_pct"]["reason"]
    for fmt in ("csv", "npz", "json", "parquet"):
        ks(["export", "--format", fmt, "--since", since, "--until", at, "--out", str(tmp_path / f"x.{fmt}")], cli_env)
    assert len(pd.read_csv(tmp_path / "x.csv")) == 31
    assert np.load(tmp_path / "x.npz")["X"].shape[0] == 31
    assert len(pd.read_parquet(tmp_path / "x.parquet")) == 31
    assert "catalog" in ks(["--help"], cli_env).stdout and "Examples" in ks(["export", "--help"], cli_env).stdout


def test_cli_defaults_are_the_feature_window_and_step():
    """compute, backfill, export and baseline learn default to the window and step the agent stores."""
    import typer
    from kernelsight.features.cli import app

    root = typer.main.get_command(app)
    cmds = dict(root.commands)
    assert "watch" not in cmds  # ks-agent stores the live vectors
    learn = cmds["baseline"].commands["learn"]
    for cmd in (cmds["compute"], cmds["backfill"], cmds["export"], learn):
        params = {p.name: p.default for p in cmd.params}
        assert parse_duration(params["window"]) == FEATURE_WINDOW_S, cmd.name
        if "step" in params:
            assert parse_duration(params["step"]) == FEATURE_STEP_S, cmd.name
    assert {p.name: p.default for p in learn.params}["min_per_hour"] == MIN_PER_HOUR


@pytest.mark.parametrize("args,msg", [
    (["compute", "--features", "no_such_feature"], "unknown feature 'no_such_feature'"),
    (["export", "--format", "csv", "--since", "-1m", "--until", "-2m", "--out", "/tmp/x.csv"], "is before --since"),
    (["export", "--format", "xlsx", "--since", "-1m", "--out", "/tmp/x.xlsx"], "unknown format 'xlsx'"),
    (["export", "--format", "csv", "--since", "1000000000", "--until", "1000000010", "--out", "/tmp/x.csv", "--source", "stored"],
     "empty range"),
    (["backfill", "--since", "soon"], "cannot read time"),
])
def test_cli_bad_arguments(cli_env, args, msg):
    r = ks(args, cli_env, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr


def test_single_vectors_equal_the_range_on_real_rows(replayed):
    """The single-window paths (the agent's vector every step) give what the range engine gives
    for the same end, on the recorded capture's real rows: several devices, interfaces and
    pressure resources, histograms, counters and gaps."""
    exp = orjson.loads((FIX / "expected.json").read_bytes())
    conn = db.connect_readonly(db.db_path(replayed))
    ends = [exp["ts"] - k * NS for k in range(0, 40, 3)]
    m = compute_range(conn, ends, FEATURE_WINDOW_S)
    compared = 0
    for i, e in enumerate(ends):
        single = compute_vector(conn, e, FEATURE_WINDOW_S)
        for j, n in enumerate(m.names):
            a, b = m.values[i, j], single.values[n]
            assert (np.isnan(a) and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-12), (n, e)
            assert m.reasons[j][i] == single.reasons.get(n), (n, e)
            compared += b is not None
    assert compared > 60 * len(ends)

"""`ks-features`: the feature catalog, vectors, baselines and exports.

ks-agent computes and stores the live vectors (one per FEATURE_STEP_S over
FEATURE_WINDOW_S, catalog.py); these commands default to the same window and
step, so what they compute matches what the agent stored and evaluated.

Times: ISO-8601 (2025-01-05T12:00:00Z; naive = local time), Unix seconds
(1736078400) or relative to now (-10m, -2h, -1d, now).  Durations: 60, 60s, 5m, 1h.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import orjson
import typer

from .. import db
from . import catalog as C
from .baseline import JSON_NAME, MIN_PER_HOUR, learn_baseline, load_baseline, save_baseline, zscores
from .engine import FeatureMatrix, compute_range, compute_vector, select_features
from .export import FORMATS, export
from .store import read_matrix, write_matrix
from .timeparse import TimeError, iso, parse_duration, parse_time

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None, help="KernelSight feature engine: catalog, vectors, baselines, exports.")
baseline_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Learn and show per-feature baselines.")
app.add_typer(baseline_app, name="baseline")

CHUNK_S = 3600.0  # backfill/export compute this much at a time (memory bound, progress granularity)

DATA_DIR_OPT = typer.Option(None, "--data-dir", help="data directory (default $KS_DATA_DIR or ./data)")
# Defaults are the agent's window and step (catalog.py), written as durations for --help.
WINDOW_DEFAULT = f"{C.FEATURE_WINDOW_S:g}s"
STEP_DEFAULT = f"{C.FEATURE_STEP_S:g}s"


class CliError(Exception):
    """A bad argument or state: printed as one line, exit 2."""


def _dir(d: Optional[Path]) -> Path:
    return d.absolute() if d else db.data_dir()


def _ro(d: Optional[Path]):
    try:
        return db.connect_readonly(db.db_path(_dir(d)))
    except db.StoreError as e:
        raise CliError(str(e)) from None


def _rw(d: Optional[Path]):
    path = db.db_path(_dir(d))
    if not path.exists():
        raise CliError(f"no database at {path}; start the pipeline first (make run)")
    try:
        return db.connect(path)
    except db.StoreError as e:
        raise CliError(str(e)) from None


def _t(text: str, what: str) -> int:
    try:
        return parse_time(text)
    except TimeError as e:
        raise CliError(f"--{what}: {e}") from None


def _dur(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except TimeError as e:
        raise CliError(f"--{what}: {e}") from None


def _names(features: Optional[str]) -> list[str] | None:
    if not features:
        return None
    names = [n.strip() for n in features.split(",") if n.strip()]
    try:
        select_features(names)
    except KeyError as e:
        raise CliError(f"{e.args[0]} (see `ks-features catalog`)") from None
    return names


def _range(since: str, until: str) -> tuple[int, int]:
    s, u = _t(since, "since"), _t(until, "until")
    if u < s:
        raise CliError(f"--until ({iso(u)}) is before --since ({iso(s)})")
    return s, u


def _progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty())


def compute_chunks(conn, since: int, until: int, step_s: float, window_s: float, names, what: str, sink=None) -> FeatureMatrix | None:
    """Vectors at since, since+step, ... <= until, computed CHUNK_S at a time with a progress bar.

    With sink, each chunk is handed to sink(matrix) and None is returned; else the chunks are concatenated.
    """
    step = int(round(step_s * 1e9))
    ends = np.arange(since, until + 1, step, dtype=np.int64)
    per = max(1, int(CHUNK_S * 1e9 // step))
    parts = []
    with _progress() as prog:
        task = prog.add_task(what, total=len(ends))
        for k in range(0, len(ends), per):
            m = compute_range(conn, ends[k:k + per], window_s, names)
            if sink:
                sink(m)
            else:
                parts.append(m)
            prog.advance(task, len(m))
    if sink:
        return None
    if not parts:
        return None
    return FeatureMatrix(np.concatenate([p.ts for p in parts]), window_s, parts[0].names,
                         np.vstack([p.values for p in parts]),
                         [np.concatenate([p.reasons[j] for p in parts]) for j in range(len(parts[0].names))])


def _matrix_for(conn, since, until, step, window, names, source: str) -> FeatureMatrix:
    if source not in ("auto", "stored", "raw"):
        raise CliError(f"unknown --source '{source}' (choose from auto, stored, raw)")
    w = _dur(window, "window")
    m = None
    if source in ("auto", "stored"):
        m = read_matrix(conn, since, until, names, window_s=w)
        if len(m) == 0:
            if source == "stored":
                raise CliError(f"empty range: no stored {w:g} s feature vectors between {iso(since)} and {iso(until)} "
                               "(run ks-features backfill, or use --source raw)")
            m = None
    if m is None:
        m = compute_chunks(conn, since, until, _dur(step, "step"), w, names, "computing")
        if m is None or len(m) == 0 or np.isnan(m.values).all():
            raise CliError(f"empty range: no telemetry between {iso(since)} and {iso(until)}")
    return m


def _fmt(v) -> str:
    if v is None:
        return "null"
    a = abs(v)
    return f"{v:.4g}" if a and (a < 0.01 or a >= 1e6) else f"{v:.3f}".rstrip("0").rstrip(".")


@app.command()
def catalog(
    as_json: bool = typer.Option(False, "--json", help="print the catalog as a JSON array"),
    group: Optional[str] = typer.Option(None, help="only this group"),
) -> None:
    """Print the feature catalog: name, group, unit, sources and how each feature is computed.

    Examples:
      ks-features catalog
      ks-features catalog --group disk
      ks-features catalog --json | jq '.[].name'
    """
    rows = C.catalog_rows()
    if group:
        if group not in C.GROUPS:
            raise CliError(f"unknown group '{group}' (choose from {', '.join(C.GROUPS)})")
        rows = [r for r in rows if r["group"] == group]
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    w = max(len(r["name"]) for r in rows)
    for g in dict.fromkeys(r["group"] for r in rows):
        grp = [r for r in rows if r["group"] == g]
        print(f"\n[{g}] {len(grp)} features")
        for r in grp:
            print(f"  {r['name']:<{w}}  {r['unit']:<14} {r['description']}")
            print(f"  {'':<{w}}  {'':<14} from {', '.join(r['sources'])}: {r['how']}")
    print(f"\n{len(rows)} features")


@app.command()
def compute(
    at: str = typer.Option("now", help="window end: ISO-8601, Unix seconds or relative (-5m)"),
    window: str = typer.Option(WINDOW_DEFAULT, help="window length (15, 15s, 5m); default: the agent's window"),
    features: Optional[str] = typer.Option(None, help="comma-separated feature names (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    with_z: bool = typer.Option(False, "--zscores", help="add plain and robust z-scores against the learned baseline"),
    data_dir: Optional[Path] = DATA_DIR_OPT,
) -> None:
    """Compute one feature vector over the window ending at --at (default now) from the database.

    Every feature has a value or a stated reason why it has none.

    Examples:
      ks-features compute
      ks-features compute --at -10m --window 5m --json
      ks-features compute --features memory_available_pct,io_read_latency_p95_ms --zscores
    """
    names = _names(features)
    end = _t(at, "at")
    w = _dur(window, "window")
    conn = _ro(data_dir)
    v = compute_vector(conn, end, w, names)
    z = None
    if with_z:
        b = load_baseline(conn, _dir(data_dir) / JSON_NAME)
        if b is None:
            raise CliError("no baseline learned yet; run `ks-features baseline learn --since -1h --until now` first")
        z = zscores(v, b)
    if as_json:
        doc = {**v.to_dict(), "time": iso(v.ts)}
        if z is not None:
            doc["zscores"] = z
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print(f"feature vector at {iso(v.ts)} over {w:g} s")
    wn = max(len(n) for n in v.values)
    group = None
    for n, val in v.values.items():
        f = C.BY_NAME[n]
        if f.group != group:
            group = f.group
            print(f"[{group}]")
        line = f"  {n:<{wn}} {_fmt(val):>12} {f.unit:<12}"
        if z is not None and val is not None:
            zz = z[n]
            line += f" z={_fmt(zz['z']):>8} robust_z={_fmt(zz['robust_z']):>8}"
            if zz.get("reason"):
                line += f"  ({zz['reason']})"
        if val is None:
            line += f" ({v.reasons.get(n, '')})"
        print(line)
    nnull = sum(1 for x in v.values.values() if x is None)
    print(f"{len(v.values) - nnull} of {len(v.values)} features have a value; {nnull} null with a reason")


@app.command()
def backfill(
    since: str = typer.Option(..., help="first window end"),
    until: str = typer.Option("now", help="last window end"),
    step: str = typer.Option(STEP_DEFAULT, help="distance between window ends; default: the agent's step"),
    window: str = typer.Option(WINDOW_DEFAULT, help="window length; default: the agent's window"),
    data_dir: Optional[Path] = DATA_DIR_OPT,
) -> None:
    """Compute and store vectors for a past range (replacing stored rows at the same ts), with a progress bar.

    Examples:
      ks-features backfill --since -1h
      ks-features backfill --since 2025-01-05T00:00:00Z --until 2025-01-06T00:00:00Z --step 10s
    """
    s, u = _range(since, until)
    st, w = _dur(step, "step"), _dur(window, "window")
    conn = _rw(data_dir)
    written = [0]

    def sink(m):
        written[0] += write_matrix(conn, m)

    t0 = time.perf_counter()
    compute_chunks(conn, s, u, st, w, None, "backfill", sink)
    if written[0] == 0:
        raise CliError(f"empty range: no window ends between {iso(s)} and {iso(u)}")
    print(f"stored {written[0]} vectors from {iso(s)} to {iso(u)} in {time.perf_counter() - t0:.2f} s", file=sys.stderr)


@baseline_app.command("learn")
def baseline_learn(
    since: str = typer.Option(..., help="start of the learning range"),
    until: str = typer.Option("now", help="end of the learning range"),
    step: str = typer.Option(STEP_DEFAULT, help="step when vectors must be computed from raw data"),
    window: str = typer.Option(WINDOW_DEFAULT, help="window of the vectors (stored ones are read only at this window)"),
    source: str = typer.Option("auto", help="stored (features table), raw (compute now) or auto (stored if any)"),
    min_per_hour: int = typer.Option(MIN_PER_HOUR, min=1, help="vectors an hour of day needs for its own baseline"),
    data_dir: Optional[Path] = DATA_DIR_OPT,
) -> None:
    """Learn per-feature mean, std, median, MAD and quantiles over a range of normal operation.

    Stored in the `baselines` table and in baseline.json in the data dir.

    Examples:
      ks-features baseline learn --since -1h
      ks-features baseline learn --since -1d --until now --source stored
    """
    s, u = _range(since, until)
    conn = _rw(data_dir)
    m = _matrix_for(conn, s, u, step, window, None, source)
    b = learn_baseline(m, min_per_hour)
    path = save_baseline(conn, b, _dir(data_dir))
    have = sum(1 for x in b.stats.values() if x["n"])
    print(f"baseline learned from {len(m)} vectors ({iso(int(m.ts.min()))} .. {iso(int(m.ts.max()))}): "
          f"{have} of {len(b.stats)} features have data; {len(b.by_hour)} hour-of-day baselines; written to {path}")


@baseline_app.command("show")
def baseline_show(
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    features: Optional[str] = typer.Option(None, help="comma-separated feature names"),
    data_dir: Optional[Path] = DATA_DIR_OPT,
) -> None:
    """Show the learned baseline.

    Examples:
      ks-features baseline show
      ks-features baseline show --features memory_available_pct --json
    """
    names = _names(features)
    conn = _ro(data_dir)
    b = load_baseline(conn, _dir(data_dir) / JSON_NAME)
    if b is None:
        raise CliError("no baseline learned yet; run `ks-features baseline learn --since -1h` first")
    stats = {n: s for n, s in b.stats.items() if not names or n in names}
    if as_json:
        doc = b.to_json()
        doc["stats"] = stats
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    meta = b.meta
    print(f"baseline from {iso(meta['since_ts'])} to {iso(meta['until_ts'])}, learned {iso(meta['learned_ts'])}; "
          f"hour-of-day baselines: {sorted(b.by_hour) or 'none'}")
    wn = max(len(n) for n in stats) if stats else 4
    print(f"  {'feature':<{wn}} {'n':>7} {'mean':>11} {'std':>11} {'median':>11} {'mad':>11} {'q05':>11} {'q95':>11}")
    for n, s in stats.items():
        print(f"  {n:<{wn}} {s['n']:>7} " + " ".join(f"{_fmt(s[k]):>11}" for k in ("mean", "std", "median", "mad", "q05", "q95")))


@app.command("export")
def export_cmd(
    fmt: str = typer.Option(..., "--format", help="csv, npz, json or parquet"),
    since: str = typer.Option(..., help="start of range"),
    until: str = typer.Option("now", help="end of range"),
    out: Path = typer.Option(..., help="output file"),
    features: Optional[str] = typer.Option(None, help="comma-separated feature names (default: all)"),
    source: str = typer.Option("auto", help="stored (features table), raw (compute now) or auto (stored if any)"),
    step: str = typer.Option(STEP_DEFAULT, help="step when computing from raw data"),
    window: str = typer.Option(WINDOW_DEFAULT, help="window of the vectors (stored ones are read only at this window)"),
    data_dir: Optional[Path] = DATA_DIR_OPT,
) -> None:
    """Export the feature matrix of a range: CSV, NumPy .npz, JSON (with per-feature statistics) or Parquet.

    Examples:
      ks-features export --format csv --since -1h --out features.csv
      ks-features export --format npz --since -1d --out X.npz --source stored
      ks-features export --format parquet --since 1736078400 --until 1736082000 --out f.parquet
    """
    if fmt not in FORMATS:
        raise CliError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    names = _names(features)
    s, u = _range(since, until)
    conn = _ro(data_dir)
    m = _matrix_for(conn, s, u, step, window, names, source)
    export(m, fmt, out, {"since_arg": since, "until_arg": until})
    print(f"wrote {len(m)} vectors x {len(m.names)} features to {out} ({fmt})", file=sys.stderr)


def main() -> None:
    try:
        rv = app(standalone_mode=False)
    except CliError as e:
        print(f"ks-features: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:
        # click-style usage errors (typer vendors click): one line, exit 2; no args: the help
        if type(e).__name__ == "NoArgsIsHelpError" and getattr(e, "ctx", None) is not None:
            print(e.ctx.get_help())
            sys.exit(2)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"ks-features: error: {e.format_message()}", file=sys.stderr)
            sys.exit(e.exit_code or 2)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)

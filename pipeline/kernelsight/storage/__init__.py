"""Storage housekeeping: per-minute rollups, retention, the size cap, rotation.

    plan.py          which aggregation each field gets (schema "agg" keys + defaults)
    rollup.py        <table>_1m tables, built incrementally for closed minutes
    retention.py     batched deletes with an adaptive batch, vacuum, checkpoint
    housekeeping.py  one run of all of it (ks-agent, every minute; `ks storage`)
    reads.py         raw rows where they are still present, rollups before
    cli.py           `ks storage status|rollup|prune`

storage_status(data_dir) is what `ks status` shows about the database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .. import db
from ..config import Config, load as load_config
from . import retention, state
from .plan import plans

NS = 1_000_000_000


def _span(conn: sqlite3.Connection, tables: list[str]) -> tuple[int | None, int | None]:
    lo = hi = None
    for t in tables:
        try:
            a, b = conn.execute(f"SELECT MIN(ts), MAX(ts) FROM {t}").fetchone()
        except sqlite3.OperationalError:
            continue
        if a is not None:
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    return lo, hi


def measured_bytes_per_day(samples: list) -> float | None:
    """DB growth per day from housekeeping's size samples: the newest against the one
    closest to a day before it (at least an hour of history)."""
    if not samples or len(samples) < 2:
        return None
    t1, b1 = samples[-1]
    t0, b0 = min(samples[:-1], key=lambda s: abs((t1 - s[0]) - 86_400))
    if t1 - t0 < 3600:
        return None
    return (b1 - b0) / (t1 - t0) * 86_400


def estimated_bytes_per_day(dbstat: dict | None, cfg: Config) -> dict | None:
    """Bytes per day each kind of table is being added at, from the last dbstat
    breakdown (bytes / seconds of data held), and the steady-state size that implies."""
    if not dbstat:
        return None
    sizes, spans = dbstat.get("bytes", {}), dbstat.get("spans", {})
    raw = rolled = 0.0
    for t, span_s in spans.items():
        if span_s <= 0 or t not in sizes:
            continue
        per_day = sizes[t] / span_s * 86_400
        if t.endswith("_1m"):
            rolled += per_day
        else:
            raw += per_day
    s = cfg.storage
    steady = raw * s.raw_retention_h / 24 + rolled * s.rollup_retention_d
    return {"raw_bytes_per_day": round(raw), "rollup_bytes_per_day": round(rolled),
            "steady_state_bytes": round(min(steady, s.max_db_mb * 2**20)), "measured_at": dbstat.get("ts")}


def storage_status(data_dir: Path, cfg: Config | None = None) -> dict:
    """Database size (file + WAL), oldest and newest raw and rollup timestamps (ns),
    bytes per day measured by housekeeping and estimated from table sizes."""
    cfg = cfg or load_config()
    path = db.db_path(Path(data_dir))
    file_b, wal_b = retention.file_bytes(path)
    out: dict = {"db_bytes": file_b, "wal_bytes": wal_b, "total_bytes": file_b + wal_b,
                 "max_db_bytes": int(cfg.storage.max_db_mb * 2**20)}
    try:
        conn = db.connect_readonly(path)
    except db.StoreError:
        out["error"] = "no database"
        return out
    try:
        out["used_bytes"] = retention.used_bytes(conn, path)
        ps = list(plans().values())
        out["raw_oldest_ts"], out["raw_newest_ts"] = _span(conn, [p.table for p in ps])
        out["rollup_oldest_ts"], out["rollup_newest_ts"] = _span(conn, [p.rollup for p in ps])
        out["bytes_per_day_measured"] = measured_bytes_per_day(state.get(conn, "size_samples", []))
        out["bytes_per_day_estimated"] = estimated_bytes_per_day(state.get(conn, "dbstat"), cfg)
        samples = state.get(conn, "size_samples", []) or []
        out["size_sampled_ts"] = samples[-1][0] * NS if samples else None  # housekeeping samples every 10 min
    except sqlite3.Error as e:
        out["error"] = str(e)
    finally:
        conn.close()
    return out


def status_lines(st: dict) -> list[str]:
    """storage_status as a few lines for `ks status`."""
    import datetime as _dt

    def mb(b):
        return "-" if b is None else f"{b / 2**20:,.1f} MiB"

    def when(ts):
        return "-" if ts is None else _dt.datetime.fromtimestamp(ts / NS, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    lines = [f"storage: {mb(st.get('total_bytes'))} (file {mb(st.get('db_bytes'))} + WAL {mb(st.get('wal_bytes'))}), "
             f"cap {mb(st.get('max_db_bytes'))}"]
    if "error" in st:
        return lines + [f"  {st['error']}"]
    lines.append(f"  raw     {when(st.get('raw_oldest_ts'))} .. {when(st.get('raw_newest_ts'))}")
    lines.append(f"  rollups {when(st.get('rollup_oldest_ts'))} .. {when(st.get('rollup_newest_ts'))}")
    m, e = st.get("bytes_per_day_measured"), st.get("bytes_per_day_estimated")
    lines.append(f"  growth  {mb(m) + '/day measured' if m is not None else 'not yet measured (needs 1 h of housekeeping)'}"
                 + (f"; estimated raw {mb(e['raw_bytes_per_day'])}/day, rollups {mb(e['rollup_bytes_per_day'])}/day, "
                    f"steady state {mb(e['steady_state_bytes'])}" if e else ""))
    return lines


STORAGE_DOC = """\
# Storage: rollups, retention, size

ks-agent runs housekeeping once a minute (`[storage] housekeeping_interval_s`,
within `housekeeping_budget_s`; a backlog is worked off over several runs),
rolling up in five-minute batches (rollups are read only past the raw horizon);
`ks storage rollup` and `ks storage prune` run it by hand, `ks storage status`
shows the database's size, the span of raw and rolled-up data and the bytes
per day. Keys are in [config.md](config.md).

## Rollups

Every event table `<table>` (all but `producer_stats`) has a per-minute rollup
`<table>_1m`: one row per minute and key, `ts` the end of the minute (it holds
the raw rows with `ts` in `(ts - 60 s, ts]`), `samples` the raw rows in it
(`rollup_samples` in `runqlat_hist_1m`, which has a field named samples), then
the raw columns under their own names, so a reader treats a rollup row as a
raw row at a 60 s interval. Each field's aggregation is its `"agg"` key in
`schema/events/*.json`, or the default:

| agg | for | rollup value |
|---|---|---|
| `key` | default for `str` | grouped by |
| `gauge` | default for numbers | average, plus `<col>_min` and `<col>_max` |
| `last` | default for `*_total` counters | last non-null value of the minute (counter deltas across minutes stay right) |
| `sum` | per-interval counts and sums | sum |
| `max`, `min` | extremes | max / min (element-wise for int arrays) |
| `hist` | default for `int_array` | bucket-wise sum of the log2 histograms (trailing empty buckets left out) |
| `interval` | default for `interval_s` | time the producer covered in the minute: sum over its distinct timestamps, at most 60 s |

Event tables (one row per event: `syscall_events`, `exec_events`,
`tcp_state_events`, ...) roll up the same way: per minute and key (comm,
syscall, state change, ...), `samples` is the number of events, numeric
fields are summed, maxed or averaged as annotated, and per-event identifiers
(pid, addresses, arguments) keep the minute's last value.

Minutes are rolled up once they are closed (30 s after their end), in
chunks: aggregation outside any transaction, then one short transaction that
replaces the chunk's rollup rows and moves the table's watermark
(`storage_state`, key `rollup:<table>`), so a minute is rolled up once and a
crash or a lost watermark redoes a chunk to the same rows. Rows arriving for
a minute already rolled up are not added to it.

{aggs}

## Reading old data

* `<table>_all` views: raw rows (`samples` = 1, gauges also as `_min`/`_max`)
  from the oldest raw row still present, rollup rows before it. Any SQL reader,
  `query_database` included, reads a range of any age the same way.
* Feature vectors (`ks-features compute`, `compare_baseline`,
  `correlate_events`, report plots) read the rollup rows before a table's
  oldest raw row; a window reaching into them is widened to at least 60 s so
  it holds one; max/min features read the minute's `_max`/`_min`, event rates
  the `samples`.
* `kernelsight.storage.reads.count_rows` counts events across both.

## Retention

| data | kept |
|---|---|
| raw event rows | `raw_retention_h`, and only once their minute is rolled up |
| `producer_stats`, `pipeline_stats`, `rejected_events` | `raw_retention_h` |
| `<table>_1m` rollups | `rollup_retention_d` |
| `features` | every vector for `raw_retention_h`, then the last of each 5 minutes for `rollup_retention_d` (any past vector can be computed again from the rollups) |
| `oom_forecasts` | every row for `raw_retention_h`, then the last of each 5 minutes for `observation_retention_d` |
| `observations` | open ones always; closed ones until `last_seen` is `observation_retention_d` old |

Size cap: while the pages in use plus the WAL exceed `max_db_mb`, the oldest
raw rows go first, ten minutes at a time, down to the newest `raw_min_h` (feature
vectors and forecasts are thinned as far); then
the oldest rollups and thinned vectors, six hours at a time; then raw rows
down to the newest rolled-up minute; each time down to 90 % of the cap.

Deletes run in batches (`DELETE ... WHERE rowid IN (SELECT rowid ... ORDER BY
ts LIMIT n)`), one transaction each; n starts at `prune_batch_rows` and
adapts after every batch so one transaction holds the writer about
`prune_batch_target_ms`. Free pages go back to the file system with
`PRAGMA incremental_vacuum` in chunks sized the same way (databases created
with `auto_vacuum=INCREMENTAL`; elsewhere SQLite reuses them), and a
`wal_checkpoint(TRUNCATE)` after pruning keeps the WAL small.

## Rotation

`DATA_DIR/logs/*.log`, `observations.jsonl` and `stream/*.jsonl` are rotated
by housekeeping once larger than `[logs] max_bytes`, keeping `keep` copies
(`NAME.1` newest). Copy, then truncate: the writers keep their descriptors
open in append mode and go on at the start of the emptied file.
"""


def markdown() -> str:
    """docs/storage.md (docs/generate.py)."""
    from .plan import markdown as aggs

    return STORAGE_DOC.replace("{aggs}", "Per table:\n\n" + aggs())


__all__ = ["storage_status", "status_lines", "measured_bytes_per_day", "estimated_bytes_per_day", "markdown"]

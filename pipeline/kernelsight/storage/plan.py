"""How each event table rolls up: one aggregation per field, from the schema.

A field's aggregation is its `"agg"` key in schema/events/*.json, else the
default for its type and name, so only exceptions are annotated:

    str                 -> key       (group by it)
    int_array           -> hist      (bucket-wise sum of log2 histograms)
    named interval_s    -> interval  (time the producer covered in the minute)
    named *_total       -> last      (cumulative counter: its last value)
    anything else       -> gauge     (avg, plus <col>_min and <col>_max)

The other aggregations are sum (per-interval counts and sums), max, min and
last; max/min of an int_array are element-wise.  `last` is the last non-null
value of the minute; `interval` is the time the producer covered in the
minute: the sum of interval_s over the minute's distinct timestamps, at most
the step, the same on every row of the minute, so rates over rollups (sum of
counts / interval_s, counted once per ts) read as they do over raw rows.

Rollup table `<table>_1m`: ts (end of the minute: raw rows with ts in
(ts - step, ts] are in it), the count of raw rows in the group (`samples`,
or `rollup_samples` where the table has a field named samples), then the
fields under their own names (gauges also with _min and _max).  Event
tables (one row per event) roll up the same way: `samples` is then the
number of events per minute per key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import orjson

from ..schema import SQL_TYPES, Schema, load_schema

AGGS = ("key", "gauge", "last", "sum", "max", "min", "hist", "interval")
ROLLUP_SUFFIX = "_1m"
ALL_SUFFIX = "_all"
SAMPLES = "samples"
# Self-accounting lines: kept at the raw horizon, never rolled up.
NO_ROLLUP = frozenset({"producer_stats"})


@lru_cache(maxsize=1)
def step_ns() -> int:
    """The rollup step from the config; 60 s when the config cannot be read
    (readers must not fail on a config only housekeeping acts on)."""
    from ..config import ConfigError, load

    try:
        return int(load().storage.rollup_step_s) * 1_000_000_000
    except ConfigError:
        return 60 * 1_000_000_000


def default_agg(name: str, ftype: str) -> str:
    if ftype == "str":
        return "key"
    if ftype == "int_array":
        return "hist"
    if name == "interval_s":
        return "interval"
    if name.endswith("_total"):
        return "last"
    return "gauge"


@dataclass(frozen=True)
class FieldRollup:
    name: str
    type: str  # schema type: int, float, str, int_array
    agg: str

    def out_columns(self) -> list[tuple[str, str]]:
        """(column, SQL type) this field becomes in the rollup table."""
        sql = SQL_TYPES[self.type]
        if self.agg == "gauge":
            return [(self.name, "REAL"), (self.name + "_min", sql), (self.name + "_max", sql)]
        if self.agg == "interval":
            return [(self.name, "REAL")]
        return [(self.name, sql)]


@dataclass(frozen=True)
class TablePlan:
    table: str
    fields: tuple[FieldRollup, ...]
    samples: str  # column holding the number of raw rows per group

    @property
    def rollup(self) -> str:
        return self.table + ROLLUP_SUFFIX

    @property
    def view(self) -> str:
        return self.table + ALL_SUFFIX

    @property
    def keys(self) -> list[str]:
        return [f.name for f in self.fields if f.agg == "key"]

    def columns(self) -> list[tuple[str, str]]:
        """Rollup columns after id: ts, samples, then each field's."""
        cols = [("ts", "INTEGER"), (self.samples, "INTEGER")]
        for f in self.fields:
            cols += f.out_columns()
        return cols

    def create_sql(self) -> str:
        cols = ",\n  ".join(f"{n} {t}" + (" NOT NULL" if n in ("ts", self.samples) else "") for n, t in self.columns())
        return (f"CREATE TABLE IF NOT EXISTS {self.rollup} (\n  id INTEGER PRIMARY KEY,\n  {cols}\n);\n"
                f"CREATE INDEX IF NOT EXISTS idx_{self.rollup}_ts ON {self.rollup}(ts);\n")

    def view_sql(self) -> str:
        """<table>_all: raw rows from the oldest one still present, rollup rows before it.

        Raw rows carry samples = 1 and their value as <gauge>_min/_max too, so
        SUM(samples), MIN(x_min) and MAX(x_max) read the same over both."""
        raw_cols, roll_cols = ["ts"], ["ts"]
        for f in self.fields:
            raw_cols.append(f.name)
            roll_cols.append(f.name)
            if f.agg == "gauge":
                raw_cols += [f"{f.name} AS {f.name}_min", f"{f.name} AS {f.name}_max"]
                roll_cols += [f"{f.name}_min", f"{f.name}_max"]
        raw_cols.append(f"1 AS {self.samples}")
        roll_cols.append(self.samples)
        return (f"CREATE VIEW {self.view} AS\n"
                f"SELECT {', '.join(raw_cols)} FROM {self.table}\n"
                f"UNION ALL\n"
                f"SELECT {', '.join(roll_cols)} FROM {self.rollup}\n"
                f"WHERE ts < (SELECT COALESCE(MIN(ts), 9223372036854775807) FROM {self.table})")


def _annotations(directory: Path) -> dict[tuple[str, str], str]:
    """(table, field) -> agg from the schema files' optional "agg" keys."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        for etype, e in doc.get("events", {}).items():
            for name, f in e.get("fields", {}).items():
                if "agg" in f:
                    if f["agg"] not in AGGS:
                        raise ValueError(f"{path.name}: {etype}.{name}: unknown agg {f['agg']!r}; one of {', '.join(AGGS)}")
                    if f["agg"] == "hist" and f.get("type") != "int_array":
                        raise ValueError(f"{path.name}: {etype}.{name}: agg hist needs an int_array")
                    out[(e["table"], name)] = f["agg"]
    return out


def plans(schema: Schema | None = None) -> dict[str, TablePlan]:
    """Rollup plan of every event table that rolls up, by raw table name."""
    schema = schema or load_schema()
    return _plans(str(schema.directory), schema.digest)


@lru_cache(maxsize=4)
def _plans(directory: str, _digest: str) -> dict[str, TablePlan]:
    schema = load_schema(Path(directory))
    ann = _annotations(Path(directory))
    out = {}
    for spec in schema.events.values():
        if spec.table in NO_ROLLUP:
            continue
        fields = tuple(FieldRollup(f.name, f.type, ann.get((spec.table, f.name), default_agg(f.name, f.type)))
                       for f in spec.fields)
        names = {f.name for f in spec.fields}
        plan = TablePlan(spec.table, fields, SAMPLES if SAMPLES not in names else "rollup_" + SAMPLES)
        cols = [c for c, _ in plan.columns()]
        if len(cols) != len(set(cols)):
            dup = sorted({c for c in cols if cols.count(c) > 1})
            raise ValueError(f"{spec.table}: rollup columns collide: {', '.join(dup)}")
        out[spec.table] = plan
    return out


def markdown(schema: Schema | None = None) -> str:
    """Per table, the aggregation of every field (for docs)."""
    out = ["| table | keys | sum | last | max / min | hist | gauge (avg, _min, _max) |", "|---|---|---|---|---|---|---|"]
    for p in sorted(plans(schema).values(), key=lambda p: p.table):
        by = {a: [f.name for f in p.fields if f.agg == a] for a in AGGS}
        mm = by["max"] + [f"{n} (min)" for n in by["min"]]
        out.append(f"| `{p.rollup}` | {', '.join(by['key']) or '-'} | {', '.join(by['sum']) or '-'} | "
                   f"{', '.join(by['last']) or '-'} | {', '.join(mm) or '-'} | {', '.join(by['hist']) or '-'} | "
                   f"{', '.join(by['gauge']) or '-'} |")
    return "\n".join(out)

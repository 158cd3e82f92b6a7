"""The event contract: schema/events/*.json is the one source of truth.

From it come the validators ks-ingest runs on every line and the SQL tables
the lines land in.  Each event type names its table, and each field its type
(int, float, str, int_array), unit and meaning.  Every line carries `type` and
`ts` (Unix epoch nanoseconds) besides its fields; all listed fields must be
present, none may be added, and only nullable fields may be null.  Integers
must fit 64 bits (SQLite's INTEGER) and numbers must be finite.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import orjson

LINE_MAX = 4096
SCHEMA_VERSION = 1
# ts must be Unix epoch *nanoseconds*: anything below 1e18 (Sep 2001) is seconds
# or milliseconds by mistake, anything from 2**63 on does not fit SQLite.
TS_MIN_NS = 10**18
TS_MAX_NS = 2**63 - 1
# SQLite stores 64-bit signed integers; orjson reads integers up to 2**64 - 1,
# and a larger one would only fail when bound, far from its line.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

SQL_TYPES = {"int": "INTEGER", "float": "REAL", "str": "TEXT", "int_array": "TEXT"}
BASE_SQL_NAME = "base.sql"


class RejectedLine(ValueError):
    """A line that does not meet the contract; str(exc) is the reason stored with it."""

    def __init__(self, reason: str, event_type: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.event_type = event_type


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    unit: str
    desc: str
    nullable: bool
    # Added to the contract on this date: lines written before it (recordings, an older binary
    # still running after an upgrade) may lack the field, which is then stored as NULL.
    since: str | None = None


@dataclass
class EventSpec:
    type: str
    table: str
    source: str
    producer: str
    fields: list[FieldSpec]
    columns: tuple[str, ...] = ()
    validate: object = field(default=None, repr=False)

    def __post_init__(self):
        self.columns = ("ts",) + tuple(f.name for f in self.fields)

    def create_sql(self) -> str:
        cols = ",\n  ".join(f"{f.name} {SQL_TYPES[f.type]}" for f in self.fields)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} (\n  id INTEGER PRIMARY KEY,\n"
            f"  ts INTEGER NOT NULL,\n  {cols}\n);\n"
            f"CREATE INDEX IF NOT EXISTS idx_{self.table}_ts ON {self.table}(ts);\n"
        )

    def insert_sql(self) -> str:
        marks = ",".join("?" * len(self.columns))
        return f"INSERT INTO {self.table} ({','.join(self.columns)}) VALUES ({marks})"


def schema_dir() -> Path:
    env = os.environ.get("KS_SCHEMA_DIR")
    return Path(env) if env else Path(__file__).with_name("events")


def _type_error(name: str, want: str, value: object) -> str:
    if type(value) is int and want in ("int", "float"):
        return f"field '{name}' must be a 64-bit integer (from -2^63 to 2^63-1), got {value}"
    if type(value) is float and want == "float":
        return f"field '{name}' must be a finite number, got {value}"
    if want == "int_array" and type(value) is list and all(type(x) is int for x in value):
        return f"field '{name}' must be an array of 64-bit integers (from -2^63 to 2^63-1)"
    got = "null" if value is None else type(value).__name__
    if got in ("bytes", "dict", "list") or want == "int_array":
        got = {"list": "array", "dict": "object"}.get(got, got)
    names = {"int": "an integer", "float": "a number", "str": "a string", "int_array": "an array of integers"}
    return f"field '{name}' must be {names[want]}, got {got}"


def _slow_check(spec: EventSpec, obj: dict) -> str:
    """Find the precise reason a line failed the fast path."""
    expected = set(spec.columns) | {"type"}
    optional = {f.name for f in spec.fields if f.since}
    missing = [c for c in spec.columns if c not in obj and c not in optional]
    if missing:
        return f"missing field '{missing[0]}'" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    extra = sorted(k for k in obj if k not in expected)
    if extra:
        return f"unexpected field '{extra[0]}'" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    ts = obj["ts"]
    if type(ts) is not int:
        return _type_error("ts", "int", ts)
    if not TS_MIN_NS <= ts <= TS_MAX_NS:
        return f"field 'ts' must be Unix epoch nanoseconds, got {ts}"
    for f in spec.fields:
        v = obj.get(f.name)
        if v is None:
            if not f.nullable:
                return f"field '{f.name}' must not be null"
            continue
        ok = {
            "int": _is_int64(v),
            "float": _is_int64(v) or (type(v) is float and v - v == 0.0),  # inf - inf and nan are nan
            "str": type(v) is str,
            "int_array": _int_list_json(v) is not False,
        }[f.type]
        if not ok:
            return _type_error(f.name, f.type, v)
    return "invalid event"  # pragma: no cover - the fast path accepted nothing the slow path accepts


def _is_int64(v) -> bool:
    return type(v) is int and INT64_MIN <= v <= INT64_MAX


_NOT_INT_LIST_BYTES = b"0123456789,-"
# 2**63 has 19 digits: an element with fewer cannot be out of range.
_INT64_DIGITS = 19
_INT64_ARRAY_PACKERS: dict[int, object] = {}


def _int_list_json(v) -> str | bool:
    """JSON text of a flat list of 64-bit integers, or False.  orjson writes ints as
    digits and '-' only, so after dropping the outer brackets any other byte (a '.',
    'e', quote, letter or inner bracket) means a non-integer element; bools are letters."""
    if type(v) is not list:
        return False
    try:
        b = orjson.dumps(v)
    except TypeError:  # an integer beyond 64 bits
        return False
    if b[1:-1].translate(None, _NOT_INT_LIST_BYTES):
        return False
    # Only a text long enough to hold a 19-digit element needs the range check.
    # struct packs in C and raises outside 64 bits: several times cheaper than max().
    if len(b) > _INT64_DIGITS + 1:
        pack = _INT64_ARRAY_PACKERS.get(len(v))
        if pack is None:  # at most one per array length, and a line holds at most ~2k elements
            pack = _INT64_ARRAY_PACKERS[len(v)] = struct.Struct(f"={len(v)}q").pack
        try:
            pack(*v)
        except struct.error:
            return False
    return b.decode()


def _build_validator(spec: EventSpec):
    """Generate a straight-line validator: one dict lookup and one type test per field.

    This is the ingest hot path, so it is compiled once per event type instead of
    looping over field specs for every line.  Any failure falls back to
    _slow_check() for a precise reason.
    """
    n_keys = len(spec.columns) + 1  # + "type"
    optional = [f.name for f in spec.fields if f.since]
    body = ["def validate(o):"]
    if optional:
        # Fields added later may be absent; every key present must still be one of ours.
        body += [f"    if len(o) != {n_keys - len(optional)} + " + " + ".join(f"({n!r} in o)" for n in optional) + ":",
                 "        raise RejectedLine(_slow(o), TYPE)"]
    else:
        body += [f"    if len(o) != {n_keys}:", "        raise RejectedLine(_slow(o), TYPE)"]
    body += [
        "    try:",
        "        ts = o['ts']",
    ]
    # TS_MAX_NS is the int64 maximum: the range check below covers that bound.
    conds = [f"type(ts) is not int or ts < {TS_MIN_NS}"]
    names = ["ts"]
    int64s = ["ts"]  # int fields, range-checked together
    for i, f in enumerate(spec.fields):
        var = f"v{i}"
        body.append(f"        {var} = o.get({f.name!r})" if f.since else f"        {var} = o[{f.name!r}]")
        if f.type == "int":
            test = f"type({var}) is not int"
            int64s.append(f"({var} or 0)" if f.nullable else var)
        elif f.type == "float":
            # A finite float (x - x is nan for inf and nan), or an int that fits SQLite.
            # The bounds are literals: a constant is cheaper to load than a global.
            test = (f"(type({var}) is not float or {var} - {var} != 0.0) and "
                    f"(type({var}) is not int or {var} > {INT64_MAX} or {var} < {INT64_MIN})")
        elif f.type == "str":
            test = f"type({var}) is not str"
        else:  # int_array: serialised once, and the JSON text both checked and stored
            body.append(f"        j{i} = _int_list_json({var}) if {var} is not None else None")
            test = f"j{i} is False"
        if f.nullable:
            conds.append(f"({var} is not None and {test})")
        elif f.type == "int_array":
            conds.append(f"{var} is None or {test}")
        else:  # None fails the type test by itself
            conds.append(test)
        names.append(f"j{i}" if f.type == "int_array" else var)
    body += [
        "    except KeyError:",
        "        raise RejectedLine(_slow(o), TYPE) from None",
        "    if " + " or ".join(conds) + ":",
        "        raise RejectedLine(_slow(o), TYPE)",
        # One C call checks every int field against 64 bits: far cheaper than two
        # comparisons with a multi-digit constant per field.
        "    try:",
        "        _pack_int64s(" + ", ".join(int64s) + ")",
        "    except _StructError:",
        "        raise RejectedLine(_slow(o), TYPE) from None",
        "    return (" + ", ".join(names) + ",)",
    ]
    ns = {
        "RejectedLine": RejectedLine,
        "TYPE": spec.type,
        "_slow": lambda o: _slow_check(spec, o),
        "_dumps": orjson.dumps,
        "_int_list_json": _int_list_json,
        "_pack_int64s": struct.Struct(f"={len(int64s)}q").pack,
        "_StructError": struct.error,
    }
    exec(compile("\n".join(body), f"<validator {spec.type}>", "exec"), ns)  # noqa: S102 - generated from our own schema
    return ns["validate"]


class Schema:
    def __init__(self, events: dict[str, EventSpec], digest: str, directory: Path, tracers: tuple[str, ...] = ()):
        self.events = events
        self.digest = digest
        self.directory = directory
        # The eBPF tracer executables `ks run` starts: every schema file with a
        # "tracer" key, so adding a tracer edits no list.
        self.tracers = tracers

    def create_sql(self) -> str:
        return (self.directory.parent / BASE_SQL_NAME).read_text() + "\n".join(e.create_sql() for e in self.events.values())

    def validate(self, obj: object) -> tuple[str, tuple]:
        """Check one decoded line; return (event type, row) or raise RejectedLine."""
        if type(obj) is not dict:
            raise RejectedLine(f"line is a JSON {type(obj).__name__}, not an object")
        t = obj.get("type")
        if type(t) is not str:
            raise RejectedLine("missing field 'type'" if t is None else "field 'type' must be a string")
        spec = self.events.get(t)
        if spec is None:
            raise RejectedLine(f"unknown event type '{t[:64]}'")
        return t, spec.validate(obj)

    def validate_line(self, line: bytes) -> tuple[str, tuple]:
        if len(line) > LINE_MAX:
            raise RejectedLine(f"line is {len(line)} bytes, over the {LINE_MAX}-byte limit")
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise RejectedLine(f"invalid JSON: {e}") from None
        return self.validate(obj)


def load_schema(directory: Path | None = None) -> Schema:
    return _load(str(directory or schema_dir()))


@lru_cache(maxsize=4)
def _load(directory: str) -> Schema:
    events: dict[str, EventSpec] = {}
    tables: dict[str, str] = {}
    tracers: list[str] = []
    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.json")):
        raw = path.read_bytes()
        h.update(path.name.encode() + b"\0" + raw)
        doc = orjson.loads(raw)
        if doc.get("tracer"):
            tracers.append(doc["tracer"])
        for etype, e in doc["events"].items():
            if etype in events:
                raise ValueError(f"{path.name}: event type '{etype}' is defined twice")
            if e["table"] in tables:
                raise ValueError(f"{path.name}: table '{e['table']}' used by '{tables[e['table']]}' and '{etype}'")
            tables[e["table"]] = etype
            default_nullable = bool(e.get("nullable", False))
            fields = []
            for name, f in e["fields"].items():
                if f["type"] not in SQL_TYPES:
                    raise ValueError(f"{path.name}: {etype}.{name}: unknown type {f['type']!r}")
                if name in ("id", "ts", "type"):
                    raise ValueError(f"{path.name}: {etype}.{name}: reserved field name")
                since = f.get("since")
                if since and f.get("required", False):
                    raise ValueError(f"{path.name}: {etype}.{name}: a field with 'since' cannot be required "
                                     "(older lines lack it and store NULL)")
                nullable = bool(since) or (default_nullable and not f.get("required", False))
                fields.append(FieldSpec(name, f["type"], f.get("unit", ""), f.get("desc", ""), nullable, since))
            spec = EventSpec(etype, e["table"], e.get("source", ""), doc.get("producer", ""), fields)
            spec.validate = _build_validator(spec)
            events[etype] = spec
    if not events:
        raise FileNotFoundError(f"no event schema found in {directory}")
    return Schema(events, h.hexdigest()[:16], Path(directory), tuple(tracers))



_EXAMPLE_VALUES = {"int": 1, "float": 1.5, "str": "x", "int_array": [0, 1, 2]}


def example_event(spec: EventSpec, ts: int | None = None) -> dict:
    """A line that meets the contract for spec (for tests, docs and benchmarks)."""
    ev = {"type": spec.type, "ts": ts if ts is not None else 1_700_000_000_000_000_000}
    ev.update({f.name: _EXAMPLE_VALUES[f.type] for f in spec.fields})
    return ev


def markdown(schema: Schema | None = None) -> str:
    """The event and table reference for README, generated from the contract."""
    schema = schema or load_schema()
    out = []
    for spec in sorted(schema.events.values(), key=lambda s: (s.producer, s.type)):
        out.append(f"#### `{spec.type}` → table `{spec.table}`\n")
        out.append(f"Producer: {spec.producer}. Source: {spec.source or '-'}.\n")
        out.append("| field | type | unit | null | meaning |\n|---|---|---|---|---|")
        out.append("| `ts` | int | ns | no | Unix epoch nanoseconds |")
        for f in spec.fields:
            out.append(f"| `{f.name}` | {f.type} | {f.unit or '-'} | {'yes' if f.nullable else 'no'} | "
                       f"{f.desc.replace('|', '/')}" + (f" (since {f.since}; older lines may lack it)" if f.since else "") + " |")
        out.append("")
    return "\n".join(out)

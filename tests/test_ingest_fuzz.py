"""Fuzzing the line path (Ingestor.feed_lines and LineSplitter.push).

Hypothesis draws the seed and mix of a mutator that turns valid example lines
into broken ones in bulk (byte flips, truncation, huge integers, NaN-like
tokens, nesting, wrong types, bytes that are not UTF-8...), plus a few lines
and values of its own.  Whatever comes in: no exception escapes, and the
counts reconcile exactly with the database (rows in the event tables +
rejected_events = lines received).

KS_FUZZ_LINES sets the total number of lines (default 50,000; the full run
uses KS_FUZZ_LINES=1000000).
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelsight import db
from kernelsight.ingest import daemon as ingest
from kernelsight.ingest.daemon import Ingestor, LineSplitter
from kernelsight.schema import LINE_MAX, RejectedLine, example_event, load_schema

SCHEMA = load_schema()
SPECS = list(SCHEMA.events.values())
TOTAL_LINES = int(os.environ.get("KS_FUZZ_LINES", "50000"))
LINES_PER_EXAMPLE = 5000
N_EXAMPLES = max(1, math.ceil(TOTAL_LINES / LINES_PER_EXAMPLE))
TS = 1_700_000_000_000_000_000

HUGE_INTS = [2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30, -(10**30), 10**400]
NUMBER_TOKENS = [b"NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"1e999", b"-1e400", b"1e-400", b"-0", b"0x10",
                 b"01", b".5", b"5.", b"+1", b"1E+2", b"1e", b"--1", b"1_000", b"\xef\xbc\x91"]
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80",
            b"\xf8\x88\x80\x80\x80"]
BAD_ESCAPES = [b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\u12", b"\\x41", b"\\", b"\\u0000", b"\t", b"\x01"]
WRONG_VALUES = [None, True, False, "12", "", [], {}, [1, [2]], {"a": 1}, 1.5, -1, 0, "\u0000", "\U0001f4a5", [None],
                [1.5], [True], ["1"], 2**63 - 1]
OPS = ["valid", "flip", "truncate", "huge_int", "number_token", "nested", "wrong_type", "bad_utf8", "bad_escape",
       "missing", "extra", "type", "oversize", "junk", "splice", "duplicate"]

_lines_total = 0


def _value(rnd: random.Random, ftype: str):
    if ftype == "int":
        return rnd.choice([0, 1, -1, rnd.randrange(-(2**63), 2**63), 2**63 - 1, -(2**63), rnd.randrange(10**6)])
    if ftype == "float":
        return rnd.choice([0.0, -0.0, 1.5, rnd.uniform(-1e308, 1e308), 5e-324, rnd.randrange(-(2**63), 2**63)])
    if ftype == "str":
        return rnd.choice(["", "x", "eth0", "\u00e9", "\U0001f4a5", "a\u0000b", "\u2028", "q" * rnd.randrange(200)])
    return [rnd.randrange(-(2**63), 2**63) for _ in range(rnd.randrange(30))]


STRUCTURAL_OPS = {"huge_int", "nested", "wrong_type", "missing", "extra", "type", "oversize"}
POOL_SIZE = 256  # valid events per mutator: byte-level mutations start from their text


class Mutator:
    """Valid lines of every type, then broken in one way or another, from one seed."""

    def __init__(self, seed: int, weights: list[int], extra_values: list):
        self.rnd = random.Random(seed)
        self.weights = weights
        self.extra_values = extra_values or [None]
        self.pool = [self.event() for _ in range(POOL_SIZE)]
        self.texts = [self.dumps(ev) for ev in self.pool]

    def event(self) -> dict:
        spec = self.rnd.choice(SPECS)
        ev = example_event(spec, TS + self.rnd.randrange(10**15))
        for f in spec.fields:
            if self.rnd.random() < 0.5:
                ev[f.name] = None if f.nullable and self.rnd.random() < 0.2 else _value(self.rnd, f.type)
        return ev

    def dumps(self, ev: dict) -> bytes:
        # json (not orjson): it writes integers of any size and NaN/Infinity as tokens.
        return json.dumps(ev, allow_nan=True, ensure_ascii=self.rnd.random() < 0.5).encode("utf-8", "surrogatepass")

    def structural(self, op: str, ev: dict) -> bytes:
        rnd = self.rnd
        keys = [k for k in ev if k != "type"]
        if op == "huge_int":
            ev[rnd.choice(keys)] = rnd.choice(HUGE_INTS)
        elif op == "nested":
            depth = rnd.choice([1, 3, 50, 600, 1100])
            key = rnd.choice(keys)
            if depth > 900:  # deeper than Python's json writes: spliced in as text
                text = self.dumps({**ev, key: 0})
                marker = b'"%s": 0' % key.encode()
                return text.replace(marker, marker[:-1] + b"[" * depth + b"]" * depth)
            ev[key] = json.loads("[" * depth + "]" * depth)
        elif op == "wrong_type":
            for _ in range(rnd.randrange(1, 3)):
                ev[rnd.choice(keys)] = rnd.choice(WRONG_VALUES + self.extra_values)
        elif op == "missing":
            del ev[rnd.choice(keys)]
        elif op == "extra":
            ev[rnd.choice(["extra", "id", "TYPE", "", "\u00e9"])] = 1
        elif op == "type":
            ev["type"] = rnd.choice(["nope", "", None, 1, ["load"], {"t": 1}, "load ", "LOAD", "x" * 300, "\u00e9"])
        elif op == "oversize":
            ev[rnd.choice(keys)] = "p" * rnd.randrange(LINE_MAX - 200, 3 * LINE_MAX)
        return self.dumps(ev)

    def line(self, op: str) -> bytes:
        rnd = self.rnd
        k = rnd.randrange(POOL_SIZE)
        if op in STRUCTURAL_OPS:
            return self.structural(op, dict(self.pool[k]))
        text = self.texts[k]
        if op == "flip":
            b = bytearray(text)
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            text = bytes(b)
        elif op == "truncate":
            text = text[: rnd.randrange(len(text))]
        elif op == "number_token":
            # The value after some key becomes a token JSON does not allow (or allows oddly).
            i = text.find(b": ", rnd.randrange(len(text)))
            if i > 0:
                j = i + 2
                while j < len(text) and text[j] not in b",}":
                    j += 1
                text = text[: i + 2] + rnd.choice(NUMBER_TOKENS) + text[j:]
        elif op == "bad_utf8":
            i = rnd.randrange(len(text))
            text = text[:i] + rnd.choice(BAD_UTF8) + text[i:]
        elif op == "bad_escape":
            q = text.find(b'"', rnd.randrange(len(text)))
            if q > 0:
                text = text[: q + 1] + rnd.choice(BAD_ESCAPES) + text[q + 1:]
        elif op == "junk":
            text = rnd.choice([
                rnd.randbytes(rnd.randrange(1, 64)),
                b" ", b"\r", b"{}", b"[]", b"null", b'"str"', b"123", b"{", b"}", b"\x00", b"\xef\xbb\xbf{}",
                b'{"type":"load"}', b'{"type":"load","ts":1}',
            ])
        elif op == "splice":
            other = self.texts[rnd.randrange(POOL_SIZE)]
            text = text[: rnd.randrange(len(text))] + other[rnd.randrange(len(other)):]
        elif op == "duplicate":
            text = text[:-1] + b', "ts": ' + rnd.choice([b"1", b"2000000000000000000", b'"x"']) + b"}"
        return text

    def lines(self, n: int) -> list[bytes]:
        return [self.line(op) for op in self.rnd.choices(OPS, self.weights, k=n)]


def _db_totals(path: Path) -> tuple[int, int]:
    conn = db.connect_readonly(path)
    try:
        stored = sum(conn.execute(f"SELECT COUNT(*) FROM {s.table}").fetchone()[0] for s in SPECS)
        return stored, conn.execute("SELECT COUNT(*) FROM rejected_events").fetchone()[0]
    finally:
        conn.close()


class FailingCommits:
    """Every k-th COMMIT fails with a full disk, as a flaky disk would."""

    def __init__(self, conn: sqlite3.Connection, every: int):
        self.conn, self.every, self.n = conn, every, 0
        self.failing = True

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql, params=()):
        if sql == "COMMIT" and self.failing:
            self.n += 1
            if self.n % self.every == 0:
                raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, params)

    def executemany(self, sql, rows):
        return self.conn.executemany(sql, rows)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    # A retry is due at once: which flush retries does not depend on the clock.
    monkeypatch.setattr(ingest, "RETRY_MIN_S", 0.0)
    monkeypatch.setattr(ingest, "RETRY_MAX_S", 0.0)


@settings(max_examples=N_EXAMPLES, deadline=None, database=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(st.integers(0, 10), min_size=len(OPS), max_size=len(OPS)).filter(any),
    extra_values=st.lists(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=10), max_size=5),
    raw_lines=st.lists(st.binary(max_size=300), max_size=40),
    batch_size=st.sampled_from([1, 7, 500, 2000]),
    chunk_seed=st.integers(0, 2**32 - 1),
    fail_every=st.sampled_from([0, 0, 2, 5]),
)
def test_fuzzed_lines_never_crash_and_counts_reconcile(seed, weights, extra_values, raw_lines, batch_size, chunk_seed,
                                                      fail_every):
    global _lines_total
    lines = Mutator(seed, weights, extra_values).lines(LINES_PER_EXAMPLE - len(raw_lines)) + raw_lines
    random.Random(chunk_seed).shuffle(lines)
    half = len(lines) // 2
    with tempfile.TemporaryDirectory(prefix="ks-fuzz-") as d:
        path = db.db_path(Path(d) / "data")
        conn = db.connect(path, SCHEMA)
        wrapped = FailingCommits(conn, fail_every) if fail_every else conn
        ing = Ingestor(wrapped, SCHEMA, batch_size=batch_size)
        # The first half straight into feed_lines, in uneven slices (a line may hold newlines here).
        rnd = random.Random(chunk_seed)
        i = 0
        while i < half:
            n = rnd.randrange(1, 400)
            ing.feed_lines(lines[i:min(i + n, half)])
            i += n
        # The second half as a byte stream cut at random points, through the splitter.
        stream = b"\n".join(lines[half:])
        split = LineSplitter(ing)
        j = 0
        while j < len(stream):
            n = rnd.choice([1, 7, 100, 4095, 4097, 65536, 1 << 20])
            split.push(stream[j:j + n])
            j += n
        split.finish()
        if fail_every:
            wrapped.failing = False  # the disk has room again
        ing.close()
        conn.close()
        expected = sum(1 for ln in lines[:half] if ln) + sum(1 for seg in stream.split(b"\n") if seg)
        t = ing.totals()
        stored, rejected = _db_totals(path)
        assert t.pending == 0
        assert (t.stored, t.rejected) == (stored, rejected)
        assert t.received == expected == stored + rejected
        ro = db.connect_readonly(path)
        final = ro.execute("SELECT SUM(received), SUM(stored), SUM(rejected), SUM(pending) FROM pipeline_stats").fetchone()
        ro.close()
        assert final == (expected, stored, rejected, 0)
    _lines_total += len(lines)


def test_fuzz_covered_the_requested_number_of_lines():
    """Runs after the fuzz test (file order): the total is what KS_FUZZ_LINES asked for."""
    assert _lines_total >= TOTAL_LINES, f"fuzzed {_lines_total} lines, wanted {TOTAL_LINES}"
    print(f"\nfuzzed {_lines_total:,} lines")


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(etype=st.sampled_from(sorted(SCHEMA.events)), data=st.data())
def test_validator_returns_only_rows_sqlite_stores(etype, data):
    """Python values straight into validate() (NaN and infinities included, as JSON
    cannot carry them): a row it returns binds in SQLite with finite floats."""
    spec = SCHEMA.events[etype]
    value = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | \
        st.lists(st.integers() | st.floats() | st.booleans(), max_size=4)
    ev = example_event(spec)
    for f in spec.fields:
        if data.draw(st.booleans()):
            ev[f.name] = data.draw(value)
    try:
        row = spec.validate(ev)
    except RejectedLine as e:
        assert e.reason and e.event_type == etype
        return
    conn = _memory_db()
    conn.execute(spec.insert_sql(), row)
    for f, v in zip(spec.fields, row[1:]):
        if f.type == "float" and v is not None:
            assert math.isfinite(v)


_MEM: list[sqlite3.Connection] = []


def _memory_db() -> sqlite3.Connection:
    if not _MEM:
        conn = sqlite3.connect(":memory:")
        conn.executescript(SCHEMA.create_sql())
        _MEM.append(conn)
    return _MEM[0]

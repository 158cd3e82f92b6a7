"""Line accounting: for every producer, what it wrote against what ks-ingest received.

Written comes from the writers' counters files, DATA_DIR/run/producers/*.cnt,
which every writer (native/common/ks_out.c, fifo.LineWriter) keeps in a shared
mapping updated on every line, so they are exact even after kill -9; where a
process has no file, its last producer_stats line stands in.  Received comes
from the database: rows in the producer's tables plus its rejected_events
rows, counted incrementally by rowid (pruning old rows does not lower them).

    written   = lines a producer's processes handed to the kernel, summed over
                every pid it ever ran (folded into run/accounting.json when a
                process is gone, so restarts do not pile up files)
    stored    = its rows; rejected = its rejected_events rows
    dropped   = lines never written, by cause (no reader, pipe full, oversize,
                write error, lost inside a wrapped tool)
    in_flight = written - stored - rejected: in the pipe or in ks-ingest's batch
    unaccounted = lines that must have reached the database by now and did not:
                lines of a process written before its last stored
                producer_stats line, and every line of a finished process
                written before the newest stored producer_stats line of any
                producer (the pipe is first in, first out, so ks-ingest has read
                everything written before a line it stored).  Exact once the
                producer's processes have stopped; while they run, lines of the
                current interval that arrived can hide as many lost ones.

Attribution: an event type belongs to the producer its schema file names in
"producer" (the first ks-* name; "ks-collector-<name>" makes every
ks-collector-* an alias of the first name); producer_stats lines go by their
own `producer` field and tracer_stats lines by their `tracer` field (the
tracer's schema file names its producer).

The counters file layout (the writer is ks_out.c / ks_out.h, which documents
the same table, and fifo.CounterFileWriter):

    off size
      0    8  magic b"KSCOUNT\\0" (stored last)
      8    4  u32 version = 1
     12    4  u32 pid
     16    8  u64 start_ticks: field 22 of /proc/<pid>/stat
     24    8  u64 created_ns: CLOCK_REALTIME when the file was made
     32   64  producer name, NUL-padded
     96    8  u64 write_in_progress: 1 between a write() and its counting
    104    8  u64 updated_ns: CLOCK_REALTIME of the last counter change
    112    8  u64 last_drop_ns: CLOCK_REALTIME of the last drop, 0 = none
    120   48  u64 x 6: lines_written_total, dropped_no_reader_total,
              dropped_full_total, dropped_oversize_total, write_errors_total,
              dropped_tool_lost_total
    168   88  zero
    256       size; little-endian throughout

A writer holds flock(LOCK_EX) on its file while it lives: a file nobody holds
is final.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import stat
import struct
import termios
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:  # sqlite3 is not imported by writers that only need the layout
    import sqlite3

MAGIC = b"KSCOUNT\0"
VERSION = 1
FILE_SIZE = 256
HEADER = struct.Struct("<8sIIQQ64s")      # magic, version, pid, start_ticks, created_ns, producer
TAIL_OFFSET = 96
TAIL = struct.Struct("<QQQ6Q")            # write_in_progress, updated_ns, last_drop_ns, counters
IN_PROGRESS = struct.Struct("<Q")
COUNTERS = ("lines_written_total", "dropped_no_reader_total", "dropped_full_total",
            "dropped_oversize_total", "write_errors_total", "dropped_tool_lost_total")
DROP_CAUSES = {"dropped_no_reader_total": "no_reader", "dropped_full_total": "full",
               "dropped_oversize_total": "oversize", "write_errors_total": "write_error",
               "dropped_tool_lost_total": "tool_lost"}
PRODUCER_NAME_MAX = 63
PRODUCER_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}$")

RUN_DIR = "run"
PRODUCERS_DIR = "producers"
STATE_FILE = "accounting.json"
LOCK_FILE = "accounting.lock"
STATE_VERSION = 1
SILENT_INTERVALS = 3         # a running producer whose counters stood still this long is silent
DROPPING_INTERVALS = 3       # a drop this recent makes a producer "dropping"
WATERMARK_SLACK_NS = 100_000_000  # margin for CLOCK_REALTIME steps between two writers' stamps
FOLDED_IDS_KEEP_S = 7 * 86400  # folded process identities kept this long (idempotent GC, late stats rows)
FALLBACK_STALE_S = 86400     # a file-less process without a stats line for this long is folded
DEBRIS_AGE_S = 3600          # an unlocked file without a valid header this old is removed
UNACCOUNTED_RECENT_S = 600   # status stays "unaccounted" this long after the count last grew


# ---- processes ------------------------------------------------------------

def proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/pid/stat):
    with the pid it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        return int(raw.rsplit(b")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


# ---- counters files ---------------------------------------------------------

@dataclass
class CounterFile:
    """One writer process's counters, as its file holds them."""

    path: Path
    producer: str
    pid: int
    start_ticks: int
    created_ns: int
    updated_ns: int
    last_drop_ns: int
    write_in_progress: int
    counters: dict[str, int]
    live: bool  # a writer still holds the file's lock

    @property
    def key(self) -> str:
        return f"{self.producer}/{self.pid}/{self.start_ticks}/{self.created_ns}"


def _parse(path: Path, raw: bytes, live: bool) -> CounterFile | None:
    if len(raw) < FILE_SIZE:
        return None
    magic, version, pid, ticks, created, name = HEADER.unpack_from(raw, 0)
    if magic != MAGIC or version != VERSION:
        return None
    in_progress, updated, last_drop, *vals = TAIL.unpack_from(raw, TAIL_OFFSET)
    return CounterFile(path, name.split(b"\0", 1)[0].decode("ascii", "replace"), pid, ticks, created,
                       updated, last_drop, in_progress, dict(zip(COUNTERS, vals)), live)


def read_counter_file(path: Path) -> CounterFile | None:
    """The file's counters, or None when it is not (yet) a whole counters file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            live = False
        except BlockingIOError:
            live = True
        return _parse(path, os.pread(fd, FILE_SIZE, 0), live)
    finally:
        os.close(fd)


def producers_dir(data_dir: Path) -> Path:
    return Path(data_dir) / RUN_DIR / PRODUCERS_DIR


def read_counter_files(data_dir: Path) -> list[CounterFile]:
    d = producers_dir(data_dir)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    out = []
    for n in names:
        if n.endswith(".cnt"):
            f = read_counter_file(d / n)
            if f is not None:
                out.append(f)
    return out


# ---- attribution ------------------------------------------------------------

@dataclass
class ProducerMap:
    """Which producer each event type's lines belong to."""

    by_type: dict[str, str]                      # event type -> producer
    by_field: dict[str, tuple[str, dict[str, str] | None]]  # event type -> (field, value map or None)
    prefixes: dict[str, str]                      # "ks-collector-" -> "ks-collectors"
    tables: dict[str, str]                        # event type -> table

    def canonical(self, producer: str) -> str:
        for prefix, name in self.prefixes.items():
            if producer.startswith(prefix):
                return name
        return producer


_NAME = re.compile(r"ks-[a-z0-9-]+(?:<[a-z]+>)?")


def producer_map(schema_directory: Path | None = None) -> ProducerMap:
    """Read each schema file's "producer" key (schema/events/*.json); parsed again only when a
    file changes (the agent reconciles every step)."""
    from .schema import schema_dir

    d = Path(schema_directory) if schema_directory else schema_dir()
    return _producer_map(tuple((str(p), st.st_mtime_ns, st.st_size)
                               for p in sorted(d.glob("*.json")) for st in [p.stat()]))


@functools.lru_cache(maxsize=4)
def _producer_map(files: tuple[tuple[str, int, int], ...]) -> ProducerMap:
    docs = {Path(p).stem: orjson.loads(Path(p).read_bytes()) for p, _, _ in files}
    by_type: dict[str, str] = {}
    by_field: dict[str, tuple[str, dict[str, str] | None]] = {}
    prefixes: dict[str, str] = {}
    tables: dict[str, str] = {}
    tracer_producer = {stem: _NAME.findall(doc.get("producer", ""))[0]
                       for stem, doc in docs.items()
                       if doc.get("tracer") and _NAME.findall(doc.get("producer", ""))}
    for doc in docs.values():
        names = _NAME.findall(doc.get("producer", ""))
        for etype, e in doc["events"].items():
            tables[etype] = e["table"]
            if "producer" in e.get("fields", {}) and not names:
                by_field[etype] = ("producer", None)      # producer_stats: "every producer"
            elif "tracer" in e.get("fields", {}) and not names:
                by_field[etype] = ("tracer", tracer_producer)  # tracer_stats: "every eBPF tracer"
            elif names:
                by_type[etype] = names[0]
        for alias in names[1:]:
            if alias.endswith(">"):
                prefixes[alias[: alias.index("<")]] = names[0]
    return ProducerMap(by_type, by_field, prefixes, tables)


# ---- the result -------------------------------------------------------------

@dataclass
class ProducerAccount:
    producer: str
    written: int = 0
    stored: int = 0
    rejected: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_CAUSES.values(), 0))
    in_flight: int = 0
    unaccounted: int = 0
    status: str = "ok"          # ok, dropping, silent or unaccounted
    running_pids: list[int] = field(default_factory=list)
    processes: int = 0          # writer processes counted, over all restarts
    in_doubt: int = 0           # lines a kill -9 caught inside write(): written or not
    last_write_ns: int | None = None
    last_drop_ns: int | None = None
    written_from: str = "counters files"  # or "producer_stats" / "counters files + producer_stats"
    due: int = 0                # lines that must be in the database by now
    unaccounted_grew_ns: int | None = None  # when a reconcile first saw the unaccounted count grow

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dropped_total"] = self.dropped_total
        return d


@dataclass
class Accounting:
    producers: list[ProducerAccount]
    unattributed_rejected: int = 0   # rejected lines whose type or producer could not be read
    pipe_bytes: int | None = None    # bytes waiting in the FIFO, when it could be looked at
    watermark_ns: int | None = None  # newest stored producer_stats line
    interval_s: float = 1.0
    files: int = 0                   # counters files on disk
    folded_files: int = 0            # files folded into the totals by this call

    def to_dict(self) -> dict:
        return {"producers": [p.to_dict() for p in self.producers],
                "unattributed_rejected": self.unattributed_rejected, "pipe_bytes": self.pipe_bytes,
                "watermark_ns": self.watermark_ns, "interval_s": self.interval_s, "files": self.files}


# ---- persisted state ----------------------------------------------------------

def _empty_state() -> dict:
    return {
        "version": STATE_VERSION,
        "db": None,            # meta created_ts of the database the counts belong to
        "folded": {},          # producer -> {written, processes, in_doubt, <drop counters>}
        "folded_ids": {},      # file key -> [producer, pid, created_ns, updated_ns, folded_at_ns]
        "baseline": {},        # file key -> counters written before this database existed
        "rows": {},            # table -> [rowid cursor, rows counted]
        "by_field": {},        # table -> [rowid cursor, {producer: rows}]
        "rejected": [0, {}, 0],  # [rowid cursor, {producer: rows}, unattributed rows]
        "stats": {"cursor": 0, "marks": {}, "fallback": {}},
        "unaccounted": {},     # producer -> [highest unaccounted seen, when it grew]
    }


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class _StateLock:
    """flock on run/accounting.lock so two callers never fold the same file twice.
    None when the run dir is not ours to write (then nothing is persisted or removed)."""

    def __init__(self, run_dir: Path):
        self.fd: int | None = None
        try:
            st = os.lstat(run_dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                return
            self.fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _load_state(path: Path) -> dict:
    try:
        st = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return _empty_state()
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        return _empty_state()
    base = _empty_state()
    base.update(st)
    return base


# ---- database side --------------------------------------------------------------

def _max_ids(conn: sqlite3.Connection, tables) -> dict[str, int]:
    """MAX(id) of each of the tables that exist (0 when empty), in one statement: the agent
    accounts every step, and one query per table was ~30 queries of its step."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    names = [t for t in dict.fromkeys(tables) if t in have]
    if not names:
        return {}
    row = conn.execute("SELECT " + ", ".join(f'(SELECT MAX(id) FROM "{t}")' for t in names)).fetchone()
    return {t: v or 0 for t, v in zip(names, row)}


def _new_rows_cursor(tops: dict[str, int], table: str, cursor: int) -> tuple[int, int] | None:
    """(max rowid, cursor) or None for a missing table; cursor 0 again when the ids restarted
    (the table was emptied by pruning and new rows took low ids)."""
    top = tops.get(table)
    if top is None:
        return None
    return top, (0 if top < cursor else cursor)


def _count_rows(conn: sqlite3.Connection, st: dict, pm: ProducerMap, tops: dict[str, int]) -> None:
    """Count the rows stored since the last call into st (per table, per producer); tops: _max_ids."""
    import sqlite3

    plain: list[tuple[str, int, int, int]] = []  # (table, cursor, top, count so far): counted in one statement
    for etype, table in pm.tables.items():
        if etype in pm.by_field:
            fld, values = pm.by_field[etype]
            cur, counts = st["by_field"].get(table, [0, {}])
            got = _new_rows_cursor(tops, table, cur)
            if got is None:
                continue
            top, cur = got
            if top > cur:
                for v, n in conn.execute(f"SELECT {fld}, COUNT(*) FROM {table} WHERE id > ? AND id <= ? "
                                         f"GROUP BY {fld}", (cur, top)):
                    p = pm.canonical(values.get(v, f"ks-{v}".replace("_", "-")) if values is not None else str(v))
                    counts[p] = counts.get(p, 0) + n
            st["by_field"][table] = [top, counts]
        else:
            if any(t == table for t, _, _, _ in plain):
                continue  # two event types in one table: its rows are counted once
            cur, n = st["rows"].get(table, [0, 0])
            got = _new_rows_cursor(tops, table, cur)
            if got is None:
                continue
            top, cur = got
            if top > cur:
                plain.append((table, cur, top, n))
            else:
                st["rows"][table] = [top, n]
    if plain:
        counts_now = conn.execute("SELECT " + ", ".join(f'(SELECT COUNT(*) FROM "{t}" WHERE id > ? AND id <= ?)'
                                                        for t, _, _, _ in plain),
                                  [x for _, cur, top, _ in plain for x in (cur, top)]).fetchone()
        for (table, _, top, n), k in zip(plain, counts_now):
            st["rows"][table] = [top, n + k]
    cur, counts, unattributed = st["rejected"]
    got = _new_rows_cursor(tops, "rejected_events", cur)
    if got is not None:
        top, cur = got
        if top > cur:
            try:
                rows = conn.execute("SELECT event_type, raw FROM rejected_events WHERE id > ? AND id <= ?", (cur, top))
                for etype, raw in rows:
                    p = _rejected_producer(pm, etype, raw)
                    if p is None:
                        unattributed += 1
                    else:
                        counts[p] = counts.get(p, 0) + 1
            except sqlite3.Error:
                pass
        st["rejected"] = [top, counts, unattributed]


def _rejected_producer(pm: ProducerMap, etype: str | None, raw: bytes | None) -> str | None:
    if etype in pm.by_type:
        return pm.by_type[etype]
    if etype in pm.by_field and raw:
        fld, values = pm.by_field[etype]
        try:
            v = orjson.loads(raw).get(fld)
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(v, str):
            return None
        return pm.canonical(values.get(v, f"ks-{v}".replace("_", "-")) if values is not None else v)
    return None


def _scan_stats(conn: sqlite3.Connection, st: dict, files: dict[str, CounterFile], now_ns: int,
                tops: dict[str, int]) -> None:
    """New producer_stats rows: a stored one proves every earlier line of its process
    arrived (marks); one from a process without a counters file stands in for it."""
    import sqlite3

    ss = st["stats"]
    got = _new_rows_cursor(tops, "producer_stats", ss["cursor"])
    if got is None:
        return
    top, cur = got
    if top <= cur:
        ss["cursor"] = top
        return
    by_pid: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for f in files.values():
        by_pid.setdefault((f.producer, f.pid), []).append((f.created_ns, 0 if f.live else f.updated_ns, f.key))
    for key, (producer, pid, created, updated, _at) in st["folded_ids"].items():
        by_pid.setdefault((producer, pid), []).append((created, updated, key))
    cols = ", ".join(COUNTERS)
    try:
        rows = conn.execute(f"SELECT producer, pid, ts, {cols} FROM producer_stats WHERE id > ? AND id <= ? "
                            "ORDER BY id", (cur, top)).fetchall()
    except sqlite3.Error:
        return
    for producer, pid, ts, *vals in rows:
        vals = [v or 0 for v in vals]  # a counter the line predates (schema 'since') counted nothing
        owner = None
        for created, updated, key in by_pid.get((producer, pid), ()):
            if created - WATERMARK_SLACK_NS <= ts and (updated == 0 or ts <= updated + WATERMARK_SLACK_NS):
                owner = key
                break
        if owner is not None:
            if owner in files:
                ss["marks"][owner] = max(ss["marks"].get(owner, 0), vals[0] + 1)
            continue
        fb = ss["fallback"]
        fkey = f"{producer}/{pid}"
        e = fb.get(fkey)
        if e is not None and vals[0] < e["lines_written_total"]:
            # counters went back: a new process with the same pid; the old one is final
            _fold_into(st, producer, e, source="producer_stats")
            e = None
        if e is None:
            e = fb[fkey] = {"producer": producer, "pid": pid, "first_ts": ts}
        e.update(dict(zip(COUNTERS, vals)), last_ts=ts)
    ss["cursor"] = top
    stale = now_ns - FALLBACK_STALE_S * 1_000_000_000
    for fkey in [k for k, e in ss["fallback"].items() if e["last_ts"] < stale]:
        e = ss["fallback"].pop(fkey)
        _fold_into(st, e["producer"], e, source="producer_stats")


def _fold_into(st: dict, producer: str, e: dict, source: str, in_doubt: int = 0) -> None:
    """Add one finished process's counts to its producer's persisted totals."""
    t = st["folded"].setdefault(producer, {"written": 0, "processes": 0, "in_doubt": 0, "from_stats": 0,
                                           **dict.fromkeys(COUNTERS[1:], 0)})
    written = e["lines_written_total"] + (1 if source == "producer_stats" else 0)  # + the stats line itself
    t["written"] += written
    t["processes"] += 1
    t["in_doubt"] += in_doubt
    if source == "producer_stats":
        t["from_stats"] += 1
    for c in COUNTERS[1:]:
        t[c] += e.get(c, 0)


def _watermark_ns(conn: sqlite3.Connection) -> int | None:
    import sqlite3

    try:
        return conn.execute("SELECT MAX(ts) FROM producer_stats").fetchone()[0]
    except sqlite3.Error:
        return None


def pipe_bytes(fifo: str | None) -> int | None:
    """Bytes waiting in the FIFO (FIONREAD), or None.  Opening it for reading
    without reading takes nothing from it."""
    if not fifo:
        return None
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("<i", buf)[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def read_supervisor_status(data_dir: Path) -> dict:
    """The supervisor's DATA_DIR/status.json ({} when absent or unreadable)."""
    try:
        st = orjson.loads((Path(data_dir) / "status.json").read_bytes())
        return st if isinstance(st, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


# ---- reconcile -----------------------------------------------------------------

def reconcile(data_dir: Path, conn: sqlite3.Connection, **kw) -> list[ProducerAccount]:
    """One ProducerAccount per producer that wrote or delivered anything (see account())."""
    return account(data_dir, conn, **kw).producers


def account(data_dir: Path, conn: sqlite3.Connection, *, interval_s: float | None = None,
            now_ns: int | None = None, gc: bool = True, schema_directory: Path | None = None,
            fifo: str | None = None) -> Accounting:
    """Reconcile every producer's written lines with what the database holds.

    conn may be read-only.  With gc, counters files of finished processes whose
    lines are all due are folded into DATA_DIR/run/accounting.json and removed
    (under a lock, the totals file replaced atomically, 0600).  interval_s is
    the producers' interval (default: the one `ks run` recorded, else 1 s).
    """
    import sqlite3

    data_dir = Path(data_dir)
    now = now_ns if now_ns is not None else time.time_ns()
    status = read_supervisor_status(data_dir)
    interval_s = float(interval_s or status.get("interval_s") or 1.0)
    # The collectors host ticks in whole seconds at least: never judge a producer faster.
    interval_ns = int(max(interval_s, 1.0) * 1e9)
    pm = producer_map(schema_directory)
    run_dir = data_dir / RUN_DIR
    state_path = run_dir / STATE_FILE
    lock = _StateLock(run_dir)
    try:
        st = _load_state(state_path)
        before = orjson.dumps(st)
        all_files = read_counter_files(data_dir)
        from .db import db_identity

        db_id = db_identity(conn)
        if db_id is not None and st["db"] != db_id:
            # A new database: what was counted for the old one no longer compares.
            st = {**_empty_state(), "folded_ids": st["folded_ids"], "db": db_id,
                  "baseline": {f.key: [f.counters[c] for c in COUNTERS] for f in all_files
                               if st["db"] is not None}}
        files = {f.key: f for f in all_files if f.key not in st["folded_ids"]}
        # Folded already, but the removal did not happen (a crash in between): remove now.
        leftover = [f for f in all_files if f.key in st["folded_ids"] and not f.live]
        own_txn = not conn.in_transaction
        if own_txn:
            conn.execute("BEGIN")  # one snapshot: marks, watermark and counts agree
        try:
            tops = _max_ids(conn, [*pm.tables.values(), "rejected_events", "producer_stats"])
            _count_rows(conn, st, pm, tops)
            _scan_stats(conn, st, files, now, tops)
            watermark = _watermark_ns(conn)
        except sqlite3.Error:
            watermark = None
        finally:
            if own_txn:
                conn.execute("COMMIT")
        accts: dict[str, ProducerAccount] = {}

        def acct(p: str) -> ProducerAccount:
            p = pm.canonical(p)
            if p not in accts:
                accts[p] = ProducerAccount(p, written_from="")
            return accts[p]

        sources: dict[str, set[str]] = {}
        stalled: set[str] = set()
        for p, t in st["folded"].items():
            a = acct(p)
            a.written += t["written"]
            a.due += t["written"]
            a.processes += t["processes"]
            a.in_doubt += t["in_doubt"]
            for c in COUNTERS[1:]:
                a.dropped[DROP_CAUSES[c]] += t[c]
            src = sources.setdefault(a.producer, set())
            if t["processes"] - t["from_stats"]:
                src.add("counters files")
            if t["from_stats"]:
                src.add("producer_stats")
        due_before = (watermark - WATERMARK_SLACK_NS) if watermark else None
        fold: list[CounterFile] = []
        for f in files.values():
            a = acct(f.producer)
            base = st["baseline"].get(f.key) or [0] * len(COUNTERS)
            c = {k: v - b for (k, v), b in zip(f.counters.items(), base)}
            lines = c["lines_written_total"]
            a.written += lines
            a.processes += 1
            for k in COUNTERS[1:]:
                a.dropped[DROP_CAUSES[k]] += c[k]
            a.last_write_ns = max(a.last_write_ns or 0, f.updated_ns)
            if f.last_drop_ns:
                a.last_drop_ns = max(a.last_drop_ns or 0, f.last_drop_ns)
            sources.setdefault(a.producer, set()).add("counters files")
            mark = min(lines, max(0, st["stats"]["marks"].get(f.key, 0) - (base[0] if base else 0)))
            if f.live:
                a.running_pids.append(f.pid)
                a.due += mark
                if f.updated_ns < now - SILENT_INTERVALS * interval_ns:
                    stalled.add(a.producer)
            else:
                a.in_doubt += f.write_in_progress
                # Final, and every line is due: its last stats line is stored (an exit
                # in order), or any producer's stats line written after its end is.
                settled = mark >= lines or (due_before is not None and f.updated_ns < due_before)
                a.due += lines if settled else mark
                if settled:
                    fold.append(f)
        for e in st["stats"]["fallback"].values():
            a = acct(e["producer"])
            a.written += e["lines_written_total"] + 1
            a.due += e["lines_written_total"] + 1
            a.processes += 1
            for k in COUNTERS[1:]:
                a.dropped[DROP_CAUSES[k]] += e[k]
            sources.setdefault(a.producer, set()).add("producer_stats")
        for table_counts in st["by_field"].values():
            for p, n in table_counts[1].items():
                acct(p).stored += n
        type_of_table = {t: e for e, t in pm.tables.items()}
        for table, (_cur, n) in st["rows"].items():
            etype = type_of_table.get(table)
            if etype in pm.by_type and n:
                acct(pm.by_type[etype]).stored += n
        for p, n in st["rejected"][1].items():
            acct(p).rejected += n

        dropping_since = now - DROPPING_INTERVALS * interval_ns
        for a in accts.values():
            received = a.stored + a.rejected
            if a.in_doubt:
                a.written += min(a.in_doubt, max(0, received - a.written))
            a.in_flight = a.written - received
            a.unaccounted = max(0, a.due - received)
            seen = st["unaccounted"].get(a.producer)
            if a.unaccounted > (seen[0] if seen else 0):
                seen = st["unaccounted"][a.producer] = [a.unaccounted, now]
            a.unaccounted_grew_ns = seen[1] if seen else None
            a.written_from = " + ".join(sorted(sources.get(a.producer, ()))) or "none"
            a.running_pids.sort()
            if a.unaccounted and seen and now - seen[1] < UNACCOUNTED_RECENT_S * 1_000_000_000:
                a.status = "unaccounted"
            elif a.producer in stalled:
                a.status = "silent"
            elif (a.last_drop_ns or 0) >= dropping_since:
                a.status = "dropping"
            else:
                a.status = "ok"

        folded = 0
        if lock.fd is not None:
            if gc:
                folded = _gc(st, fold, now)
            after = orjson.dumps(st)
            if after != before:
                _write_atomic(state_path, after)
            if gc:
                _remove_folded(st, fold + leftover)
                _remove_debris(producers_dir(data_dir), now)
    finally:
        lock.close()
    result = sorted(accts.values(), key=lambda a: a.producer)
    return Accounting(result, st["rejected"][2], pipe_bytes(fifo or status.get("fifo")), watermark,
                      interval_s, len(all_files), folded)


def _gc(st: dict, fold: list[CounterFile], now_ns: int) -> int:
    """Fold finished files into the totals (the files are removed once the totals are on disk)."""
    for f in fold:
        base = st["baseline"].pop(f.key, None) or [0] * len(COUNTERS)
        e = {k: v - b for (k, v), b in zip(f.counters.items(), base)}
        _fold_into(st, f.producer, e, source="counters files", in_doubt=f.write_in_progress)
        st["folded_ids"][f.key] = [f.producer, f.pid, f.created_ns, f.updated_ns, now_ns]
        st["stats"]["marks"].pop(f.key, None)
    keep_after = now_ns - FOLDED_IDS_KEEP_S * 1_000_000_000
    st["folded_ids"] = {k: v for k, v in st["folded_ids"].items() if v[4] >= keep_after}
    return len(fold)


def _remove_folded(st: dict, fold: list[CounterFile]) -> None:
    for f in fold:
        try:
            fd = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody may hold a file we remove
            again = _parse(f.path, os.pread(fd, FILE_SIZE, 0), False)
            if again is not None and again.key == f.key and again.key in st["folded_ids"]:
                os.unlink(f.path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _remove_debris(pdir: Path, now_ns: int) -> None:
    """Files that never got a header (a writer killed while making it), an hour on."""
    try:
        names = os.listdir(pdir)
    except OSError:
        return
    for n in names:
        path = pdir / n
        if not n.endswith(".cnt"):
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now_ns - st.st_mtime_ns < DEBRIS_AGE_S * 1_000_000_000:
            continue
        if read_counter_file(path) is not None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.ENOENT):
                raise
        finally:
            os.close(fd)

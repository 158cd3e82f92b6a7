"""One housekeeping run: rollups, retention, the size cap, vacuum, checkpoint, rotation.

ks-agent calls Housekeeper.maybe_run(now) every step; it runs once per
housekeeping_interval_s, within housekeeping_budget_s (a backlog, say the
first run on a month of raw data, is worked off over several runs), and costs
a few milliseconds when there is nothing to do.  `ks storage prune|rollup`
runs it by hand without a budget.  "now" is a parameter everywhere, so a
simulation can run thirty days in minutes.

Retention (config [storage]):
  * raw event rows: deleted after raw_retention_h, and only once their minute
    is rolled up (up to the rollup watermark);
  * producer_stats, pipeline_stats, rejected_events: after raw_retention_h;
  * <table>_1m rollups: after rollup_retention_d;
  * features and oom_forecasts: one row per THIN_STEP_S (the last of each
    5 minutes) is kept after raw_retention_h, the rest deleted; features go after
    rollup_retention_d, oom_forecasts after observation_retention_d;
  * observations: closed ones whose last_seen is older than observation_retention_d.
  * size cap: while the pages in use plus the WAL exceed max_db_mb, the oldest
    raw rows go first (ten minutes of every raw table at a time) down to the
    newest raw_min_h, then the oldest rollup rows and thinned vectors, then raw
    rows down to the rollup watermark; down to CAP_LOW_WATER of the cap so the
    next minute does not prune again.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import db
from ..db import transaction
from ..config import Config, load as load_config
from ..log import rotate_data_logs
from ..schema import Schema, load_schema
from . import retention, rollup, state
from .plan import plans

NS = 1_000_000_000
DAY_NS = 86_400 * NS
CAP_LOW_WATER = 0.9
CAP_STEP_NS = 600 * NS  # oldest raw data removed per round while over the cap
CAP_ROLLUP_STEP_NS = 6 * 3600 * NS  # oldest rollups removed per round while still over it
ACCOUNTING = ("producer_stats", "pipeline_stats", "rejected_events")
THINNED = ("features", "oom_forecasts")
# Past the raw horizon one vector (and forecast) per 5 minutes is kept: vectors are wide
# (~2 KiB) and a vector for any past window can be computed again from the rollups;
# these sample the agent's own judgement for baselines and reports.
THIN_STEP_S = 300
SIZE_SAMPLE_S = 600  # one size sample per 10 min, two days of them kept
SIZE_SAMPLES_KEEP_S = 2 * 86_400
DBSTAT_EVERY_S = 86_400  # dbstat reads every page: once a day
TRUNCATE_WAL_BYTES = 32 << 20
# The agent's runs roll up in five-minute batches: one transaction per table per five minutes
# rather than per minute was most of an idle agent's housekeeping cost, and rollups are read
# only past the raw horizon (hours), so their lag goes unseen.  Retention and the size cap
# still run every housekeeping_interval_s.
ROLLUP_EVERY_S = 300


@dataclass
class RunStats:
    now_ns: int = 0
    rollup_rows: int = 0
    deleted_rows: int = 0
    cap_pruned: bool = False
    vacuumed_pages: int = 0
    batches: int = 0
    txn_max_ms: float = 0.0
    seconds: float = 0.0
    used_bytes: int = 0
    complete: bool = True
    rotated: list[str] = field(default_factory=list)
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


class Housekeeper:
    def __init__(self, conn: sqlite3.Connection, data_dir: Path, cfg: Config | None = None,
                 schema: Schema | None = None, log=None):
        self.conn = conn
        self.data_dir = Path(data_dir)
        self.db_file = db.db_path(self.data_dir)
        self.cfg = cfg or load_config()
        self.schema = schema or load_schema()
        self.plans = plans(self.schema)
        self.log = log
        self.step_ns = int(self.cfg.storage.rollup_step_s) * NS
        self.last_run_ns: int | None = None
        self.last_rollup_ns: int | None = None
        self._ready = False

    # -- set-up ---------------------------------------------------------------
    def ensure(self) -> None:
        """storage_state, the rollup tables and the <table>_all views (once per process)."""
        if self._ready:
            return
        state.ensure(self.conn)
        have = _tables(self.conn)
        for p in self.plans.values():
            if p.table in have:
                rollup.ensure_tables(self.conn, p)
                rollup.ensure_view(self.conn, p)
        self._ready = True

    # -- entry points ---------------------------------------------------------
    def maybe_run(self, now_ns: int | None = None) -> RunStats | None:
        now_ns = now_ns or time.time_ns()
        interval_ns = int(self.cfg.storage.housekeeping_interval_s * NS)
        if self.last_run_ns is not None and 0 <= now_ns - self.last_run_ns < interval_ns:
            return None
        due = self.last_rollup_ns is None or not 0 <= now_ns - self.last_rollup_ns < ROLLUP_EVERY_S * NS
        return self.run(now_ns, budget_s=self.cfg.storage.housekeeping_budget_s, do_rollup=due)

    def run(self, now_ns: int | None = None, budget_s: float | None = None, *, do_rollup: bool = True,
            do_prune: bool = True, rotate: bool = True) -> RunStats:
        now_ns = now_ns or time.time_ns()
        t0 = time.monotonic()
        deadline = None if budget_s is None else t0 + budget_s
        self.last_run_ns = now_ns
        self.ensure()
        st = RunStats(now_ns=now_ns)
        pr = retention.Pruner(self.conn, self.cfg.storage.prune_batch_rows, self.cfg.storage.prune_batch_target_ms,
                              deadline)
        roll_from = now_ns - int(self.cfg.storage.rollup_retention_d * DAY_NS)
        try:
            if do_rollup:
                for p in self.plans.values():
                    if deadline is not None and time.monotonic() > deadline:
                        st.complete = False
                        break
                    try:
                        st.rollup_rows += rollup.rollup_table(self.conn, p, now_ns, self.step_ns, deadline, st.detail,
                                                              oldest_ns=roll_from)
                    except sqlite3.OperationalError as e:
                        if "no such table" not in str(e):
                            raise
                if st.complete:  # a backlog not worked off goes on at the next run
                    self.last_rollup_ns = now_ns
            if do_prune:
                self._retention(pr, now_ns)
                st.cap_pruned = self._size_cap(pr, now_ns)
                if pr.deleted:
                    st.vacuumed_pages = pr.vacuum()
            used_wal = retention.file_bytes(self.db_file)[1]
            if pr.deleted or used_wal > TRUNCATE_WAL_BYTES:
                retention.checkpoint(self.conn, truncate=True)
            if pr.out_of_time():
                st.complete = False
        finally:
            pr.close()
        self._record_size(now_ns)
        if rotate:
            lc = self.cfg.logs
            st.rotated = rotate_data_logs(self.data_dir, lc.max_bytes, lc.keep)
        st.deleted_rows = pr.deleted
        st.batches = pr.batches
        st.txn_max_ms = max(pr.txn_max_ms, st.detail.get("rollup_txn_max_ms", 0.0))
        st.detail["prune_txn_ms"] = pr.txn_ms
        st.used_bytes = retention.used_bytes(self.conn, self.db_file)
        st.seconds = time.monotonic() - t0
        if self.log is not None and (pr.deleted or st.rollup_rows > 1000 or st.rotated):
            self.log.info("housekeeping", rollup_rows=st.rollup_rows, deleted_rows=st.deleted_rows,
                          vacuumed_pages=st.vacuumed_pages, txn_max_ms=round(st.txn_max_ms, 1),
                          used_mb=round(st.used_bytes / 2**20, 1), complete=st.complete, rotated=st.rotated)
        return st

    # -- retention ------------------------------------------------------------
    def _raw_cutoff(self, table: str, ts_max: int) -> int:
        """Raw rows of table may go up to here: ts_max, but never past the rollup watermark."""
        if table not in self.plans:
            return ts_max
        wm = state.get_int(self.conn, rollup.watermark_key(table))
        if wm is None:
            return -1  # nothing rolled up yet: nothing may go
        return min(ts_max, wm)

    def _retention(self, pr: retention.Pruner, now_ns: int) -> None:
        s = self.cfg.storage
        have = _tables(self.conn)
        raw_before = (now_ns - int(s.raw_retention_h * 3600 * NS)) // self.step_ns * self.step_ns
        roll_before = now_ns - int(s.rollup_retention_d * DAY_NS)
        obs_before = now_ns - int(s.observation_retention_d * DAY_NS)
        for table in list(self.plans) + list(ACCOUNTING):
            if pr.out_of_time():
                return
            if table in have:
                cut = self._raw_cutoff(table, raw_before)
                if cut >= 0:
                    pr.delete_upto(table, cut)
        for p in self.plans.values():
            if p.rollup in have and not pr.out_of_time():
                pr.delete_upto(p.rollup, roll_before)
        for table, keep_before in (("features", roll_before), ("oom_forecasts", obs_before)):
            if table in have and not pr.out_of_time():
                self._thin(pr, table, raw_before)
                pr.delete_upto(table, keep_before)
        if "observations" in have and not pr.out_of_time():
            pr.delete_where("observations", "status = 'closed' AND last_seen < ?", (obs_before // NS,), "last_seen")

    def _thin(self, pr: retention.Pruner, table: str, upto_ns: int) -> None:
        """Keep the last row of each THIN_STEP_S older than upto_ns; a watermark
        remembers how far that has been done, so each span is thinned once."""
        key = f"thin:{table}"
        wm = state.get_int(self.conn, key)
        if wm is None:
            first = self.conn.execute(f"SELECT MIN(ts) FROM {table}").fetchone()[0]
            if first is None:
                return
            wm = first // (THIN_STEP_S * NS) * (THIN_STEP_S * NS)
        span = 3600 * NS  # one hour of rows per transaction at most
        step = THIN_STEP_S * NS
        sql = (f"DELETE FROM {table} WHERE ts > ? AND ts <= ? AND ts NOT IN "
               f"(SELECT MAX(ts) FROM {table} WHERE ts > ? AND ts <= ? GROUP BY (ts - 1) / ?)")
        while wm < upto_ns and not pr.out_of_time():
            hi = min(wm + span, upto_ns)
            t0 = time.perf_counter()
            with transaction(self.conn):
                n = self.conn.execute(sql, (wm, hi, wm, hi, step)).rowcount
                state.put(self.conn, key, hi)
            ms = (time.perf_counter() - t0) * 1e3
            pr.txn_max_ms = max(pr.txn_max_ms, ms)
            pr.txn_ms.append(ms)
            pr.deleted += n
            pr.batches += 1
            wm = hi

    def _size_cap(self, pr: retention.Pruner, now_ns: int) -> bool:
        cap = int(self.cfg.storage.max_db_mb * 2**20)
        if retention.used_bytes(self.conn, self.db_file) <= cap:
            return False
        retention.checkpoint(self.conn, truncate=True)  # a large WAL is not data: shrink it before judging
        # The deletes below grow the WAL until the next checkpoint; judge by pages
        # in use plus the WAL as it was, or pruning would chase its own journal.
        wal0 = retention.file_bytes(self.db_file)[1]

        def over() -> bool:
            return retention.used_bytes(self.conn, None) + wal0 > low

        low = int(cap * CAP_LOW_WATER)
        have = _tables(self.conn)
        pruned = False
        raw = [t for t in list(self.plans) + list(ACCOUNTING) if t in have]
        older = [p.rollup for p in self.plans.values() if p.rollup in have] + [t for t in THINNED if t in have]
        floor = now_ns - int(self.cfg.storage.raw_min_h * 3600 * NS)
        # oldest raw first, down to raw_min_h (feature vectors and forecasts thinned as far); then the
        # oldest rollups; then raw down to the watermark
        pruned = self._cap_raw(pr, raw, over, floor)
        for t in THINNED:
            if t in have and over() and not pr.out_of_time():
                n = pr.deleted
                self._thin(pr, t, floor)
                pruned |= pr.deleted > n
        while over() and not pr.out_of_time():
            oldest = [o for o in (self.conn.execute(f"SELECT MIN(ts) FROM {t}").fetchone()[0] for t in older)
                      if o is not None]
            if not oldest:
                break
            cut = min(oldest) + CAP_ROLLUP_STEP_NS
            for t in older:
                pr.delete_upto(t, cut)
            pruned = True
        pruned |= self._cap_raw(pr, raw, over, None)
        if pruned:
            pr.vacuum()
        return pruned

    def _cap_raw(self, pr: retention.Pruner, raw: list[str], over, floor: int | None) -> bool:
        """Advance one cutoff over every raw table, CAP_STEP_NS per round, never past
        floor nor a table's rollup watermark, while over the cap."""
        pruned = False
        while over() and not pr.out_of_time():
            oldest = [self.conn.execute(f"SELECT MIN(ts) FROM {t}").fetchone()[0] for t in raw]
            limit = [self._raw_cutoff(t, floor if floor is not None else 2**63 - 1) for t in raw]
            movable = [(t, lim) for t, o, lim in zip(raw, oldest, limit) if o is not None and lim >= o]
            if not movable:
                break
            cut = min(o for o in oldest if o is not None) // self.step_ns * self.step_ns + CAP_STEP_NS
            for t, lim in movable:
                pr.delete_upto(t, min(cut, lim))
            pruned = True
        return pruned

    # -- size history ---------------------------------------------------------
    def _record_size(self, now_ns: int) -> None:
        """Keep (ts, bytes in use) every SIZE_SAMPLE_S for bytes-per-day, and a
        dbstat breakdown every DBSTAT_EVERY_S for the estimate."""
        samples = state.get(self.conn, "size_samples", []) or []
        now_s = now_ns // NS
        write = {}
        if not samples or now_s - samples[-1][0] >= SIZE_SAMPLE_S:
            samples.append([now_s, retention.used_bytes(self.conn, self.db_file)])
            samples = [x for x in samples if x[0] >= now_s - SIZE_SAMPLES_KEEP_S]
            write["size_samples"] = samples
        last = state.get(self.conn, "dbstat", None)
        if last is None or now_s - last.get("ts", 0) >= DBSTAT_EVERY_S:
            spans = self._spans()
            # bytes per second of data means little over a few pages: wait for an hour of it
            if max(spans.values(), default=0) >= 3600:
                sizes = table_bytes(self.conn)
                if sizes is not None:
                    write["dbstat"] = {"ts": now_s, "bytes": sizes, "spans": spans}
        if write:
            with transaction(self.conn):
                for k, v in write.items():
                    state.put(self.conn, k, v)

    def _spans(self) -> dict:
        """Seconds of data each raw and rollup table holds now (for bytes per day)."""
        out = {}
        have = _tables(self.conn)
        for p in self.plans.values():
            for t in (p.table, p.rollup):
                if t in have:
                    lo, hi = self.conn.execute(f"SELECT MIN(ts), MAX(ts) FROM {t}").fetchone()
                    if lo is not None and hi > lo:
                        out[t] = (hi - lo) / NS
        return out


def table_bytes(conn: sqlite3.Connection) -> dict[str, int] | None:
    """Bytes per table, indexes counted with their table (dbstat; None where SQLite lacks it)."""
    try:
        rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
        idx = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index'").fetchall())
    except sqlite3.OperationalError:
        return None
    out: dict[str, int] = {}
    for name, size in rows:
        t = idx.get(name, name)
        out[t] = out.get(t, 0) + int(size)
    return out

"""Kill soak: the real pipeline plus synthetic producers, one stage killed with
SIGKILL at random every few seconds; at the end every line any producer wrote
is stored, rejected or counted as dropped — zero unaccounted.

    python -m bench soak                          # full: 10 min, 50k lines/s, a kill every 20 s
    KS_SOAK_SECONDS=60 python -m bench soak       # shorter

tests/test_soak.py runs a short version in `make test`.  The synthetic
producers write `soak` lines (pid, seq) of a schema file added for the run
only (KS_SCHEMA_DIR), so their lines are attributed exactly; the pipeline's
own producers are reconciled by kernelsight.accounting.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
SOAK_SCHEMA = {
    "producer": "ks-soak",
    "doc": "Synthetic lines of the kill soak (bench/soak.py); never in a real database.",
    "events": {"soak": {
        "table": "soak_events", "source": "bench/soak_producer.py", "nullable": False,
        "fields": {"producer_pid": {"type": "int", "unit": "pid", "desc": "the writing process"},
                   "seq": {"type": "int", "unit": "", "desc": "0, 1, 2, ... per producer"}}}},
}
# Stages a kill may hit: every long-running child but the supervisor itself.
VICTIM_PREFIXES = ("ks-ingest", "ks-syscall", "ks-io-latency", "ks-page-fault", "ks-sched",
                   "ks-scraper", "ks-collectors", "ks-agent")
DRAIN_STALL_S = 60.0  # after the producers stop, ks-ingest is given up on only if it stalls this long


@dataclass
class SoakResult:
    seconds: float
    rate_per_s: float
    kills: list[tuple[float, str]] = field(default_factory=list)
    producers: list[dict] = field(default_factory=list)   # one row per producer (synthetic and real)
    unaccounted: int = 0
    written: int = 0
    stored: int = 0
    dropped: int = 0
    drain_s: float | None = None  # how long ks-ingest took to store its backlog after the producers stopped

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def stop_pipeline(sup: subprocess.Popen, timeout_s: float = 90) -> None:
    """Ctrl-C to `ks run`, as a user would; its whole group killed if it hangs."""
    sup.send_signal(signal.SIGINT)
    try:
        sup.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(sup.pid, signal.SIGKILL)
        sup.wait()


def _schema_dir(tmp: Path) -> Path:
    d = tmp / "schema"
    shutil.copytree(REPO / "schema", d, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    (d / "events" / "soak.json").write_bytes(orjson.dumps(SOAK_SCHEMA, option=orjson.OPT_INDENT_2))
    return d / "events"


def _status(data_dir: Path) -> dict:
    try:
        return orjson.loads((data_dir / "status.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


def _running(data_dir: Path) -> dict[str, int]:
    return {c["name"]: c["pid"] for c in _status(data_dir).get("children", [])
            if c.get("state") == "running" and c.get("pid")}


def _wait(cond, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise TimeoutError(f"soak: timed out waiting for {what}")


def _count(db: Path, sql: str, args=()) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


def run_soak(seconds: float, rate_per_s: float, kill_every_s: float, producers: int = 2,
             seed: int | None = None, log=print) -> SoakResult:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="ks-soak-"))
    data_dir, fifo = tmp / "data", str(tmp / "fifo")
    env = {**os.environ, "KS_SCHEMA_DIR": str(_schema_dir(tmp)), "KS_DATA_DIR": str(data_dir), "KS_FIFO": fifo}
    ks = Path(sys.executable).with_name("ks")
    with open(tmp / "supervisor.log", "wb") as sup_log:
        sup = subprocess.Popen([str(ks), "run", "--data-dir", str(data_dir), "--fifo", fifo], env=env,
                               stdout=subprocess.DEVNULL, stderr=sup_log, start_new_session=True)
    res = SoakResult(seconds=seconds, rate_per_s=rate_per_s)
    prods: list[subprocess.Popen] = []
    try:
        _wait(lambda: {"ks-ingest", "ks-agent"} <= set(_running(data_dir)), 60, "the pipeline to start")
        for _ in range(producers):
            prods.append(subprocess.Popen([sys.executable, str(REPO / "bench" / "soak_producer.py"), fifo,
                                           str(rate_per_s / producers)], env=env, stdout=subprocess.PIPE))
        t0 = time.monotonic()
        next_kill = t0 + kill_every_s
        while time.monotonic() - t0 < seconds:
            time.sleep(0.2)
            if time.monotonic() < next_kill:
                continue
            next_kill += kill_every_s
            victims = {n: p for n, p in _running(data_dir).items() if n.startswith(VICTIM_PREFIXES)}
            if not victims:
                continue
            name = rng.choice(sorted(victims))
            try:
                os.kill(victims[name], signal.SIGKILL)
            except ProcessLookupError:
                continue
            res.kills.append((round(time.monotonic() - t0, 1), name))
            log(f"soak: t={time.monotonic() - t0:5.1f}s SIGKILL {name} (pid {victims[name]})")
        for p in prods:
            p.send_signal(signal.SIGTERM)
        finals = [orjson.loads(p.communicate(timeout=60)[0]) for p in prods]
        db = data_dir / "kernelsight.db"
        written = sum(f["lines_written_total"] for f in finals)

        def stored() -> int:
            return (_count(db, "SELECT COUNT(*) FROM soak_events")
                    + _count(db, "SELECT COUNT(*) FROM producer_stats WHERE producer = 'ks-soak'"))
        # ks-ingest may be behind (its spool holds the backlog): wait while it makes progress,
        # so that stopping the pipeline does not cut a drain short and call the rest lost.
        t_drain, last, last_move = time.monotonic(), -1, time.monotonic()
        while (n := stored()) < written:
            if n != last:
                last, last_move = n, time.monotonic()
            elif time.monotonic() - last_move > DRAIN_STALL_S:
                log(f"soak: ks-ingest made no progress for {DRAIN_STALL_S:.0f} s, {written - n:,} lines short")
                break
            time.sleep(1.0)
        res.drain_s = round(time.monotonic() - t_drain, 1)
        log(f"soak: ks-ingest caught up {res.drain_s} s after the producers stopped")
    finally:
        for p in prods:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        stop_pipeline(sup)

    db = data_dir / "kernelsight.db"
    for f in finals:
        pid = f["pid"]
        soak = _count(db, "SELECT COUNT(*) FROM soak_events WHERE producer_pid = ?", (pid,))
        stats = _count(db, "SELECT COUNT(*) FROM producer_stats WHERE producer = 'ks-soak' AND pid = ?", (pid,))
        rejected = _count(db, "SELECT COUNT(*) FROM rejected_events WHERE event_type = 'soak' "
                              "AND CAST(raw AS TEXT) LIKE ?", (f'%"producer_pid":{pid},%',))
        dropped = sum(v for k, v in f.items() if k.startswith("dropped_") or k == "write_errors_total")
        attempted = f["soak_lines_attempted"] + f["stats_lines_attempted"]
        row = {"producer": "ks-soak", "pid": pid, "attempted": attempted, "written": f["lines_written_total"],
               "stored": soak + stats, "rejected": rejected, "dropped": dropped,
               # What was tried is written or dropped; what was written is stored or rejected.
               "unaccounted": (attempted - f["lines_written_total"] - dropped)
               + (f["lines_written_total"] - soak - stats - rejected)}
        res.producers.append(row)
    res.producers += _pipeline_accounts(data_dir, env)
    for r in res.producers:
        res.unaccounted += abs(r["unaccounted"])
        res.written += r["written"]
        res.stored += r["stored"]
        res.dropped += r["dropped"]
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def _pipeline_accounts(data_dir: Path, env: dict) -> list[dict]:
    """The pipeline's own producers, reconciled by kernelsight.accounting (counters
    that survive SIGKILL against what the database holds)."""
    code = ("import orjson, sys; from pathlib import Path; from kernelsight import accounting, db; "
            "d = Path(sys.argv[1]); conn = db.connect_readonly(db.db_path(d)); "
            "print(orjson.dumps([a.to_dict() for a in accounting.reconcile(d, conn)]).decode())")
    out = subprocess.run([sys.executable, "-c", code, str(data_dir)], env=env, capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"accounting failed: {out.stderr.strip()[-400:]}")
    return [{"producer": a["producer"], "written": a["written"], "stored": a["stored"], "rejected": a["rejected"],
             "dropped": sum(a["dropped"].values()), "unaccounted": a["unaccounted"], "in_doubt": a["in_doubt"],
             "processes": a["processes"]}
            for a in orjson.loads(out.stdout) if a["producer"] != "ks-soak"]


def run() -> list[dict]:
    seconds = float(os.environ.get("KS_SOAK_SECONDS", "600"))
    rate = float(os.environ.get("KS_SOAK_RATE", "50000"))
    r = run_soak(seconds, rate, kill_every_s=20.0, log=lambda m: print(m, file=sys.stderr))
    kills = ", ".join(f"{t:.0f}s {n}" for t, n in r.kills)
    worst = sorted(r.producers, key=lambda p: -abs(p["unaccounted"]))[:3]
    return [
        {"name": "soak_unaccounted_events", "value": r.unaccounted, "unit": "lines", "ratio": None,
         "notes": f"{seconds:.0f} s, synthetic producers at {rate:,.0f} lines/s plus the real pipeline, SIGKILL "
                  f"every 20 s ({len(r.kills)} kills: {kills}); written {r.written:,}, stored {r.stored:,}, "
                  f"dropped (counted) {r.dropped:,}; ks-ingest stored its backlog {r.drain_s} s after the producers "
                  f"stopped; goal 0; worst: {worst}"},
    ]

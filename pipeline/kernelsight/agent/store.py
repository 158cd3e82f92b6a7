"""Where observations live: the `observations` table (one row per observation,
updated in place while it is open) and an append-only JSONL stream
DATA_DIR/observations.jsonl (a line when one opens, reopens, changes severity
or band, and closes).  The database is the source of truth; the stream is
best effort, for `tail -f`.

observations columns:
    id, rule, key, label, status (open|closed), severity (peak so far),
    signal_category, observation_type, persistence (band), first_seen,
    last_seen (last interval the condition held), closed_at (when it cleared;
    Unix seconds), updates, summary,
    observation (the JSON of schema/observation.schema.json), processes (JSON
    list of {pid, comm, ...} behind the symptom), narrative (LLM text, if any)
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson

DDL = """
CREATE TABLE IF NOT EXISTS observations (
  id INTEGER PRIMARY KEY,
  rule TEXT NOT NULL,
  key TEXT NOT NULL,
  label TEXT NOT NULL,
  status TEXT NOT NULL,
  severity TEXT NOT NULL,
  signal_category TEXT NOT NULL,
  observation_type TEXT NOT NULL,
  persistence TEXT NOT NULL,
  first_seen INTEGER NOT NULL,
  last_seen INTEGER NOT NULL,
  closed_at INTEGER,
  updates INTEGER NOT NULL,
  summary TEXT NOT NULL,
  observation TEXT NOT NULL,
  processes TEXT NOT NULL,
  narrative TEXT
);
CREATE INDEX IF NOT EXISTS idx_observations_first_seen ON observations(first_seen);
CREATE INDEX IF NOT EXISTS idx_observations_status ON observations(status);
CREATE TABLE IF NOT EXISTS oom_forecasts (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  risk TEXT NOT NULL,
  headroom_pct REAL,
  trend_kb_per_s REAL,
  seconds_to_exhaustion REAL,
  confidence REAL NOT NULL,
  reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_oom_forecasts_ts ON oom_forecasts(ts);
"""


def ensure_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(DDL)


class ObservationStore:
    def __init__(self, conn: sqlite3.Connection, stream_path: Path | None):
        self.conn = conn
        ensure_tables(conn)
        self.stream_path = stream_path
        self.stream_errors = 0

    def insert(self, rule: str, key: str, label: str, obs: dict, band: str, severity: str, processes: list) -> int:
        cur = self.conn.execute(
            "INSERT INTO observations(rule, key, label, status, severity, signal_category, observation_type, "
            "persistence, first_seen, last_seen, closed_at, updates, summary, observation, processes) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rule, key, label, "open", severity, obs["signal_category"], obs["observation_type"], band,
             obs["details"]["first_seen"], obs["timestamp"], None, 1, obs["summary"],
             orjson.dumps(obs).decode(), orjson.dumps(processes).decode()),
        )
        return cur.lastrowid

    def update(self, obs_id: int, obs: dict, band: str, severity: str, status: str, last_seen: int,
               closed_at: int | None, updates: int, processes: list) -> None:
        self.conn.execute(
            "UPDATE observations SET status=?, severity=?, persistence=?, last_seen=?, closed_at=?, updates=?, "
            "summary=?, observation=?, processes=? WHERE id=?",
            (status, severity, band, last_seen, closed_at, updates, obs["summary"],
             orjson.dumps(obs).decode(), orjson.dumps(processes).decode(), obs_id),
        )

    def stream(self, event: str, obs_id: int, obs: dict) -> None:
        if self.stream_path is None:
            return
        try:
            fd = os.open(self.stream_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(orjson.dumps({"event": event, "id": obs_id, "observation": obs}) + b"\n")
        except OSError:
            self.stream_errors += 1

    def save_forecast(self, ts: int, fc) -> None:
        self.conn.execute(
            "INSERT INTO oom_forecasts(ts, risk, headroom_pct, trend_kb_per_s, seconds_to_exhaustion, confidence, "
            "reason) VALUES (?,?,?,?,?,?,?)",
            (ts, fc.risk, fc.headroom_pct, fc.trend_kb_per_s, fc.seconds_to_exhaustion, fc.confidence, fc.reason),
        )


def list_observations(conn: sqlite3.Connection, since_s: int | None = None, status: str | None = None,
                      limit: int = 50) -> list[dict]:
    sql = ("SELECT id, label, status, severity, signal_category, persistence, first_seen, last_seen, closed_at, "
           "summary, observation, processes, narrative FROM observations WHERE 1=1")
    args: list = []
    if since_s is not None:
        sql += " AND last_seen >= ?"
        args.append(since_s)
    if status:
        sql += " AND status = ?"
        args.append(status)
    sql += " ORDER BY first_seen DESC LIMIT ?"
    args.append(limit)
    try:
        rows = conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # no agent has run on this database yet
        return []
    keys = ("id", "label", "status", "severity", "signal_category", "persistence", "first_seen", "last_seen",
            "closed_at", "summary", "observation", "processes", "narrative")
    out = []
    for r in rows:
        d = dict(zip(keys, r))
        d["observation"] = orjson.loads(d["observation"])
        d["processes"] = orjson.loads(d["processes"])
        out.append(d)
    return out

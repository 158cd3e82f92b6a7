-- Tables every KernelSight database has besides the per-event tables, which are
-- generated from schema/events/*.json (one table per event type).
-- Timestamps are Unix epoch nanoseconds unless a name says otherwise.

-- host, kernel, schema_version, schema_digest, created_ts
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

-- Every line ks-ingest could not store, with the reason.  raw holds at most
-- the first 4096 bytes of the line, as received (it may not be UTF-8).
CREATE TABLE IF NOT EXISTS rejected_events (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  event_type TEXT,
  reason TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  raw BLOB
);
CREATE INDEX IF NOT EXISTS idx_rejected_events_ts ON rejected_events(ts);

-- ks-ingest's own counters, cumulative since that process (pid) started,
-- written periodically and on exit: received = stored + rejected + pending,
-- pending being 0 in the last row a process writes.
CREATE TABLE IF NOT EXISTS pipeline_stats (
  id INTEGER PRIMARY KEY,
  ts INTEGER NOT NULL,
  stage TEXT NOT NULL,
  pid INTEGER NOT NULL,
  event_type TEXT NOT NULL,
  received INTEGER NOT NULL,
  stored INTEGER NOT NULL,
  rejected INTEGER NOT NULL,
  pending INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_pipeline_stats_ts ON pipeline_stats(ts);

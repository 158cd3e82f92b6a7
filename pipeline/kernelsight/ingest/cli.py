"""ks-ingest command line (argparse: typer and the pydantic it imports would cost this
long-running process ~9 MiB RSS)."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from .. import db, log as klog, servicecli
from ..bell import Bell
from ..completion import add_completion
from ..fifo import FifoError, default_fifo_path
from .daemon import FLUSH_MS, PENDING_MAX_BYTES, Daemon, make_ingestor, open_spool, replay

EXAMPLES = """examples:
  ks-ingest                                  # daemon on /tmp/kernelsight, DB in $KS_DATA_DIR
  ks-ingest --replay capture.jsonl --data-dir /tmp/ks   # ingest a recording and exit
  ks-ingest --mirror                         # also append each type to data/stream/TYPE.jsonl
"""


def _at_least(lo: float, kind=int):
    def parse(text: str):
        v = kind(text)
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {text}")
        return v
    return parse


def parser() -> argparse.ArgumentParser:
    p = servicecli.parser("ks-ingest", "Read event lines from the FIFO (or a recorded file) into SQLite.")
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--fifo", default=None, help="FIFO to read (default $KS_FIFO or /tmp/kernelsight)")
    p.add_argument("--replay", dest="replay_file", type=Path, default=None, help="ingest this JSONL file and exit")
    p.add_argument("--batch-size", type=_at_least(1), default=2000, help="flush after this many rows")
    p.add_argument("--flush-ms", type=_at_least(1), default=FLUSH_MS, help="flush at least this often (ms)")
    p.add_argument("--stats-interval", type=_at_least(0.1, float), default=5.0,
                   help="seconds between pipeline_stats rows")
    p.add_argument("--mirror", action="store_true", help="best-effort per-type JSONL mirror under DATA_DIR/stream")
    p.add_argument("--max-pending-mib", type=_at_least(1), default=PENDING_MAX_BYTES >> 20,
                   help="stop reading once this many MiB of lines wait for the database")
    p.add_argument("--log-file", default=None, help="log here instead of stderr")
    add_completion(p)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.config:
        os.environ["KS_CONFIG"] = a.config  # read where the ingestor loads [storage]
    log = klog.configure("ks-ingest", log_file=a.log_file)
    directory = servicecli.data_dir(a)
    try:
        # The daemon waits out a locked or full database; a replay says so and stops.
        ing = make_ingestor(directory, batch_size=a.batch_size, flush_ms=a.flush_ms, mirror=a.mirror, log=log,
                            max_pending_bytes=a.max_pending_mib << 20, wait_for_db=a.replay_file is None)
    except (db.StoreError, sqlite3.Error, OSError) as e:
        return _refuse(log, e)
    try:
        if a.replay_file is not None:
            if not a.replay_file.is_file():
                print(f"ks-ingest: --replay: no such file: {a.replay_file}", file=sys.stderr)
                return 2
            replay(a.replay_file, ing)
            ing.close()
            t = ing.totals()
            log.info("replayed", file=str(a.replay_file), received=t.received, stored=t.stored,
                     rejected=t.rejected, pending=t.pending)
            lost = f", not stored {t.pending} ({ing.last_error})" if t.pending else ""
            print(f"received {t.received}, stored {t.stored}, rejected {t.rejected}{lost}", file=sys.stderr)
            return 1 if t.pending else 0
        # The replay file is its own spool; the daemon's keeps what it read and has not committed.
        spool = open_spool(directory, ing.conn, log=log)
        bell = Bell(directory / "run")  # the run directory is the spool's
        try:
            Daemon(a.fifo or default_fifo_path(), ing, stats_interval_s=a.stats_interval, log=log, spool=spool,
                   bell=bell).run()
        finally:
            bell.close()
    except (FifoError, db.StoreError) as e:
        return _refuse(log, e)
    return 0


def _refuse(log, e: Exception) -> int:
    log.error("refusing to start", error=str(e))
    print(f"ks-ingest: {e}", file=sys.stderr)
    return 1


def main_entry() -> None:
    sys.exit(main())

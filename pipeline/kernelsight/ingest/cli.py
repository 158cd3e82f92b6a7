"""ks-ingest command line."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import db, log as klog
from ..fifo import FifoError, default_fifo_path
from .daemon import FLUSH_MS, PENDING_MAX_BYTES, Daemon, make_ingestor, open_spool, replay

app = typer.Typer(pretty_exceptions_enable=False)


@app.command(
    help="Read event lines from the FIFO (or a recorded file) into SQLite.\n\n"
    "Examples:\n\n"
    "  ks-ingest                                  # daemon on /tmp/kernelsight, DB in $KS_DATA_DIR\n\n"
    "  ks-ingest --replay capture.jsonl --data-dir /tmp/ks   # ingest a recording and exit\n\n"
    "  ks-ingest --mirror                          # also append each type to data/stream/TYPE.jsonl"
)
def main(
    fifo: str = typer.Option(None, help="FIFO to read (default $KS_FIFO or /tmp/kernelsight)"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    replay_file: Optional[Path] = typer.Option(None, "--replay", help="ingest this JSONL file and exit"),
    batch_size: int = typer.Option(2000, min=1, help="flush after this many rows"),
    flush_ms: int = typer.Option(FLUSH_MS, min=1, help="flush at least this often (ms)"),
    stats_interval: float = typer.Option(5.0, min=0.1, help="seconds between pipeline_stats rows"),
    mirror: bool = typer.Option(False, help="best-effort per-type JSONL mirror under DATA_DIR/stream"),
    max_pending_mib: int = typer.Option(PENDING_MAX_BYTES >> 20, min=1,
                                        help="stop reading once this many MiB of lines wait for the database"),
    log_file: Optional[str] = typer.Option(None, help="log here instead of stderr"),
) -> None:
    log = klog.configure("ks-ingest", log_file=log_file)
    directory = data_dir.absolute() if data_dir else db.data_dir()
    try:
        # The daemon waits out a locked or full database; a replay says so and stops.
        ing = make_ingestor(directory, batch_size=batch_size, flush_ms=flush_ms, mirror=mirror, log=log,
                            max_pending_bytes=max_pending_mib << 20, wait_for_db=replay_file is None)
    except (db.StoreError, sqlite3.Error, OSError) as e:
        _refuse(log, e)
    try:
        if replay_file is not None:
            if not replay_file.is_file():
                raise typer.BadParameter(f"no such file: {replay_file}", param_hint="--replay")
            replay(replay_file, ing)
            ing.close()
            t = ing.totals()
            log.info("replayed", file=str(replay_file), received=t.received, stored=t.stored, rejected=t.rejected,
                     pending=t.pending)
            lost = f", not stored {t.pending} ({ing.last_error})" if t.pending else ""
            print(f"received {t.received}, stored {t.stored}, rejected {t.rejected}{lost}", file=sys.stderr)
            if t.pending:
                raise typer.Exit(1)
            return
        # The replay file is its own spool; the daemon's keeps what it read and has not committed.
        spool = open_spool(directory, ing.conn, log=log)
        Daemon(fifo or default_fifo_path(), ing, stats_interval_s=stats_interval, log=log, spool=spool).run()
    except (FifoError, db.StoreError) as e:
        _refuse(log, e)


def _refuse(log, e: Exception) -> None:
    log.error("refusing to start", error=str(e))
    print(f"ks-ingest: {e}", file=sys.stderr)
    raise typer.Exit(1) from None


def main_entry() -> None:
    app()

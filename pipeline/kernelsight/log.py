"""structlog set-up shared by every Python process: JSON lines to stderr or a file.

stdout belongs to data (producers write event lines there), so logs never go to it.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
from pathlib import Path

import structlog


class _LossyStream:
    """A log stream that never raises: a child's stderr is a file in the data dir,
    and a full disk must cost log lines (counted), not the process."""

    def __init__(self, stream):
        self.stream = stream
        self.lost_lines = 0

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except (OSError, ValueError):
            self.lost_lines += 1

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def configure(component: str, level: str | None = None, log_file: str | None = None) -> structlog.BoundLogger:
    level_name = (level or os.environ.get("KS_LOG_LEVEL", "info")).upper()
    raw = open(log_file, "a", buffering=1) if log_file else sys.stderr  # noqa: SIM115 - lives as long as the process
    stream = _LossyStream(raw)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(component=component, pid=os.getpid())


def rotate_if_needed(path: str | os.PathLike, max_bytes: int, keep: int) -> bool:
    """Rotate path once it is larger than max_bytes: NAME.1 .. NAME.<keep>, NAME.1 newest.

    Copy-then-truncate, because the writer (a child whose stderr is this file,
    ks-ingest's mirror, the agent's stream) keeps its descriptor open: opened
    with O_APPEND it writes at the new end, offset 0, after the truncate.  A line
    written between the copy and the truncate is lost; that is the price of not
    having to signal every writer.  Returns whether it rotated."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size <= max_bytes:
        return False
    keep = max(1, int(keep))
    old = p.with_name(f"{p.name}.{keep}")
    if old.exists():
        old.unlink()
    for i in range(keep - 1, 0, -1):
        src = p.with_name(f"{p.name}.{i}")
        if src.exists():
            os.replace(src, p.with_name(f"{p.name}.{i + 1}"))
    dst = p.with_name(f"{p.name}.1")
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, stat.S_IMODE(st.st_mode) or 0o600)
    with open(p, "rb") as fin, os.fdopen(fd_out, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    os.truncate(p, 0)
    return True


def rotate_data_logs(data_dir: str | os.PathLike, max_bytes: int, keep: int) -> list[str]:
    """Rotate DATA_DIR/logs/*.log, observations.jsonl and stream/*.jsonl; returns the names rotated."""
    d = Path(data_dir)
    paths = sorted((d / "logs").glob("*.log")) + [d / "observations.jsonl"] + sorted((d / "stream").glob("*.jsonl"))
    done = []
    for p in paths:
        try:
            if rotate_if_needed(p, max_bytes, keep):
                done.append(str(p.relative_to(d)))
        except OSError:
            continue  # a file that vanished or cannot be copied now is tried again next run
    return done

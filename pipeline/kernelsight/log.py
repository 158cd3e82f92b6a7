"""Logging for every Python process: JSON lines to stderr or a file, and log rotation.

One line per call, written with one write(): the bound keys, "event", the call's keys,
"level" and an ISO UTC "timestamp" (the shape structlog's JSONRenderer gives).  A small
logger of our own rather than structlog in the long-running processes: structlog's
import pulls in asyncio, ssl and rich, about 13 MiB of PSS in each of ks run, ks-ingest,
ks-agent and ks-exporter (measured), for bind() and four levels.  KS_LOG_LEVEL filters.

stdout belongs to data (producers write event lines there), so logs never go to it.
A log that cannot be written (a full disk) costs the line, counted in lost_lines,
never the process.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _timestamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class _Sink:
    """Where a logger's lines go, shared by the loggers bind() derives."""

    def __init__(self, fd: int, min_level: int):
        self.fd = fd
        self.min_level = min_level
        self.lost_lines = 0


class JsonLog:
    def __init__(self, fd: int = 2, level: str | None = None, **bound) -> None:
        name = (level or os.environ.get("KS_LOG_LEVEL", "info")).lower()
        self._sink = _Sink(fd, LEVELS.get(name, 20))
        self.bound = bound

    @property
    def lost_lines(self) -> int:
        return self._sink.lost_lines

    def bind(self, **kw) -> JsonLog:
        new = JsonLog.__new__(JsonLog)
        new._sink = self._sink
        new.bound = {**self.bound, **kw}
        return new

    def _log(self, level: str, event: str, kw: dict) -> None:
        sink = self._sink
        if LEVELS[level] < sink.min_level:
            return
        rec = {**self.bound, "event": event, **kw, "level": level, "timestamp": _timestamp()}
        try:
            os.write(sink.fd, orjson.dumps(rec, default=str) + b"\n")
        except (OSError, TypeError):
            sink.lost_lines += 1

    def debug(self, event: str, **kw) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw) -> None:
        self._log("warning", event, kw)

    warn = warning

    def error(self, event: str, **kw) -> None:
        self._log("error", event, kw)

    def critical(self, event: str, **kw) -> None:
        self._log("critical", event, kw)

    def exception(self, event: str, **kw) -> None:
        import traceback

        self._log("error", event, {**kw, "exception": traceback.format_exc()})


def get_logger(component: str, fd: int = 2) -> JsonLog:
    return JsonLog(fd, component=component, pid=os.getpid())


def configure(component: str, level: str | None = None, log_file: str | None = None) -> JsonLog:
    """The logger of one process: to stderr, or appended to log_file (created 0600)."""
    fd = 2
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)  # lives as long as we do
    return JsonLog(fd, level, component=component, pid=os.getpid())


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

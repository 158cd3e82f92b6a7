"""The FIFO contract, Python side (the C side is native/common/ks_out.c).

One event = one JSON line of at most PIPE_BUF (4096) bytes, written with one
write() so many writers can share /tmp/kernelsight without interleaving.  The
FIFO is created 0600 by whoever needs it first and refused when it is a
symlink, not a FIFO, owned by someone else or open to others.  Writers never
block for long: with no reader, or a pipe that stays full, the line is dropped
and counted, and the FIFO is reopened later.
"""

from __future__ import annotations

import os
import select
import stat
import time
from dataclasses import asdict, dataclass

import orjson

from .procutil import set_pipe_size

LINE_MAX = 4096  # PIPE_BUF on Linux: writes up to this size are atomic
DEFAULT_FIFO = "/tmp/kernelsight"
REOPEN_INTERVAL_S = 0.5
# Group may be given write access (0620); nothing else beyond the owner.
_ALLOWED_MODE_BITS = 0o620


class FifoError(Exception):
    """A FIFO path that must not be used; the message says what to do."""


def default_fifo_path() -> str:
    return os.environ.get("KS_FIFO", DEFAULT_FIFO)


def check_fifo_stat(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise FifoError(
            f"{path} is a symlink; refusing to follow it. Remove it (rm {path}) and start again"
        )
    if not stat.S_ISFIFO(st.st_mode):
        kind = (
            "a regular file"
            if stat.S_ISREG(st.st_mode)
            else "a directory" if stat.S_ISDIR(st.st_mode) else "another file type"
        )
        raise FifoError(
            f"{path} exists but is not a FIFO ({kind}); remove it (rm {path}) and start again"
        )
    if st.st_uid != os.geteuid():
        raise FifoError(
            f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); "
            "remove it and start again"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~_ALLOWED_MODE_BITS:
        raise FifoError(f"{path} has mode {mode:04o}, open to others; run chmod 600 {path} or remove it")


def ensure_fifo(path: str) -> None:
    """Create the FIFO (0600) if absent; check it either way."""
    try:
        check_fifo_stat(path, os.lstat(path))
        return
    except FileNotFoundError:
        pass
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass  # another process won the race; check what it made
    check_fifo_stat(path, os.lstat(path))


def _check_fd(path: str, fd: int) -> None:
    """The path could have been swapped between lstat and open: check the open file."""
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise FifoError(f"{path} changed under us while opening; refusing it")


@dataclass
class WriterCounters:
    lines_written_total: int = 0
    dropped_no_reader_total: int = 0
    dropped_full_total: int = 0
    dropped_oversize_total: int = 0
    write_errors_total: int = 0


class LineWriter:
    """Write JSON event lines to stdout ("-") or to the FIFO, counting every drop."""

    def __init__(self, path: str = "-", producer: str = "python", block_ms: int = 100):
        self.producer = producer
        self.block_s = block_ms / 1000.0
        self.counters = WriterCounters()
        self.warnings_total = 0
        self._next_open = 0.0
        if path == "-":
            self.path = None
            self._fd: int | None = 1
        else:
            ensure_fifo(path)
            self.path = path
            self._fd = None
            self._try_open()

    def _try_open(self) -> None:
        self._next_open = time.monotonic() + REOPEN_INTERVAL_S
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # ENXIO: no reader yet
        try:
            _check_fd(self.path, fd)
        except FifoError:
            self.counters.write_errors_total += 1
            return
        self._fd = fd

    def write_line(self, line: bytes) -> bool:
        """Write one complete line (ending in newline). False when dropped."""
        c = self.counters
        if len(line) > LINE_MAX or not line.endswith(b"\n"):
            c.dropped_oversize_total += 1
            return False
        if self.path is None:
            try:
                os.write(1, line)  # stdout: a short write is only possible on ttys/files
            except BrokenPipeError:
                c.write_errors_total += 1
                raise
            c.lines_written_total += 1
            return True
        if self._fd is None:
            if time.monotonic() >= self._next_open:
                self._try_open()
            if self._fd is None:
                c.dropped_no_reader_total += 1
                return False
        for attempt in (0, 1):
            try:
                os.write(self._fd, line)
                c.lines_written_total += 1
                return True
            except BlockingIOError:
                if attempt == 0 and self.block_s > 0:
                    select.select([], [self._fd], [], self.block_s)
                    continue
                c.dropped_full_total += 1
                return False
            except BrokenPipeError:
                os.close(self._fd)
                self._fd = None
                self._next_open = time.monotonic() + REOPEN_INTERVAL_S
                c.dropped_no_reader_total += 1
                return False
            except OSError:
                c.write_errors_total += 1
                return False
        return False  # pragma: no cover - the loop always returns

    def emit(self, event: dict) -> bool:
        return self.write_line(orjson.dumps(event) + b"\n")

    def stats_event(self) -> dict:
        """The producer_stats line (counts lines written before it)."""
        return {
            "type": "producer_stats",
            "ts": time.time_ns(),
            "producer": self.producer,
            "pid": os.getpid(),
            **asdict(self.counters),
            "warnings_total": self.warnings_total,
        }

    def emit_stats(self) -> bool:
        return self.emit(self.stats_event())

    def close(self) -> None:
        if self.path is not None and self._fd is not None:
            os.close(self._fd)
        self._fd = None


def open_reader(path: str, pipe_size: int = 1 << 20) -> tuple[int, int]:
    """Open the FIFO for reading without ever seeing EOF.

    Returns (read_fd, keepalive_fd).  The keep-alive write end means writers
    coming and going never close the pipe under us; the larger pipe buffer
    absorbs bursts while a batch is being committed.
    """
    ensure_fifo(path)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    _check_fd(path, rfd)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    set_pipe_size(rfd, (pipe_size, 1 << 18))
    return rfd, wfd

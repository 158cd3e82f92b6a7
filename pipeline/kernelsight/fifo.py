"""The FIFO contract, Python side (the C side is native/common/ks_out.c).

One event = one JSON line of at most PIPE_BUF (4096) bytes, written with one
write() so many writers can share /tmp/kernelsight without interleaving.  The
FIFO is created 0600 by whoever needs it first and refused when it is a
symlink, not a FIFO, owned by someone else or has any group/other bit.
Writers never block for long: with no reader, or a pipe that stays full, the
line is dropped and counted, and the FIFO is reopened later.  A writer's
counters also live in a mmap'ed counters file (layout in accounting.py and
ks_out.h) that outlives a kill -9.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import stat
import time
from dataclasses import asdict, dataclass, fields

import orjson

from . import accounting as acc
from .procutil import set_pipe_size

LINE_MAX = 4096  # PIPE_BUF on Linux: writes up to this size are atomic
DEFAULT_FIFO = "/tmp/kernelsight"
REOPEN_INTERVAL_S = 0.5
# Bytes the pipe holds while ks-ingest is away or between its quiet reads (about 12,000
# lines).  Above /proc/sys/fs/pipe-max-size (1 MiB by default) only root (CAP_SYS_RESOURCE)
# may set it; anyone else gets PIPE_SIZE_FALLBACKS, and ks-ingest reads that smaller pipe
# more often (ingest.daemon.quiet_read_every_s).
PIPE_SIZE = 4 << 20
PIPE_SIZE_FALLBACKS = (1 << 20, 1 << 18)
# Only the owner: any group/other bit (or setuid/setgid/sticky) is refused.
_ALLOWED_MODE_BITS = 0o600


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
        raise FifoError(f"{path} has mode {mode:04o}, open to others (only its owner may use it); "
                        f"run chmod 600 {path} or remove it")


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
    # Same order as the counters file (accounting.COUNTERS).
    lines_written_total: int = 0
    dropped_no_reader_total: int = 0
    dropped_full_total: int = 0
    dropped_oversize_total: int = 0
    write_errors_total: int = 0
    dropped_tool_lost_total: int = 0  # lost inside a wrapped tool, as the tool reported

    def values(self) -> tuple[int, ...]:
        return (self.lines_written_total, self.dropped_no_reader_total, self.dropped_full_total,
                self.dropped_oversize_total, self.write_errors_total, self.dropped_tool_lost_total)

    def drops(self) -> int:
        return sum(self.values()[1:])


assert tuple(f.name for f in fields(WriterCounters)) == acc.COUNTERS


def _open_private_dir(parent_fd: int, name: str) -> int:
    """Open (creating 0700) a directory we own; refuse symlinks and loose modes."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        pass
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{name} is not private to uid {os.geteuid()}")
    return fd


class CounterFileWriter:
    """The writer side of a counters file: stores the counters into a shared mapping
    on every line (no syscall), so they survive kill -9 in the page cache."""

    def __init__(self, mm: mmap.mmap, fd: int, path: str):
        self._mm: mmap.mmap | None = mm
        self._fd = fd  # holds the flock: while we live the file is not final
        self.path = path
        self._drops_published = 0
        self._last_drop_ns = 0

    @classmethod
    def create(cls, producer: str) -> CounterFileWriter | None:
        """$KS_DATA_DIR/run/producers/<producer>.<pid>.cnt, or None (no data dir, a bad
        name, a directory not ours, ...): the writer then counts in memory only."""
        data = os.environ.get("KS_DATA_DIR")
        if not data or not acc.PRODUCER_NAME.match(producer):
            return None
        pid = os.getpid()
        ticks = acc.proc_start_ticks(pid) or 0
        fd = -1
        name = ""
        try:
            dfd = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                rfd = _open_private_dir(dfd, acc.RUN_DIR)
            finally:
                os.close(dfd)
            try:
                pfd = _open_private_dir(rfd, acc.PRODUCERS_DIR)
            finally:
                os.close(rfd)
            try:
                # O_EXCL on every name: an existing file holds someone's final counts.
                names = [f"{producer}.{pid}.cnt", f"{producer}.{pid}.{ticks}.cnt",
                         *(f"{producer}.{pid}.{ticks}.{k}.cnt" for k in range(1, 10))]
                for name in names:
                    try:
                        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o600, dir_fd=pfd)
                        break
                    except FileExistsError:
                        continue
            finally:
                os.close(pfd)
            if fd < 0:
                return None
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: only a reader testing liveness holds it, briefly
            # Allocated, not ftruncate'd: a store into a hole of a mapped file on a
            # full filesystem is SIGBUS; without room we go on without the file.
            os.posix_fallocate(fd, 0, acc.FILE_SIZE)
            mm = mmap.mmap(fd, acc.FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(data, acc.RUN_DIR, acc.PRODUCERS_DIR, name))
            return None
        acc.HEADER.pack_into(mm, 0, bytes(8), acc.VERSION, pid, ticks, time.time_ns(), producer.encode())
        w = cls(mm, fd, os.path.join(data, acc.RUN_DIR, acc.PRODUCERS_DIR, name))
        w.publish(WriterCounters())
        mm[0:8] = acc.MAGIC  # last: a reader never sees half a header
        return w

    def begin_write(self) -> None:
        acc.IN_PROGRESS.pack_into(self._mm, acc.TAIL_OFFSET, 1)

    def publish(self, c: WriterCounters) -> None:
        now = time.time_ns()
        drops = c.drops()
        if drops != self._drops_published:
            self._drops_published = drops
            self._last_drop_ns = now
        acc.TAIL.pack_into(self._mm, acc.TAIL_OFFSET, 0, now, self._last_drop_ns, *c.values())

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            os.close(self._fd)  # releases the flock: the file is final
            self._mm = None


class LineWriter:
    """Write JSON event lines to stdout ("-") or to the FIFO, counting every drop."""

    def __init__(self, path: str = "-", producer: str = "python", block_ms: int = 100):
        self.producer = producer
        self.block_s = block_ms / 1000.0
        self.counters = WriterCounters()
        self.warnings_total = 0
        self._next_open = 0.0
        self.counter_file: CounterFileWriter | None = None
        if path == "-":
            self.path = None
            self._fd: int | None = 1
        else:
            ensure_fifo(path)
            self.path = path
            self._fd = None
            self.counter_file = CounterFileWriter.create(producer)
            self._try_open()
            self._publish()

    def _publish(self) -> None:
        if self.counter_file is not None:
            self.counter_file.publish(self.counters)

    def count_tool_lost(self, n: int) -> None:
        """Count n events a wrapped tool says it lost before printing them."""
        self.counters.dropped_tool_lost_total += n
        self._publish()

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
        cf = self.counter_file
        if cf is None:
            return self._write_line(line)
        cf.begin_write()
        try:
            return self._write_line(line)
        finally:
            cf.publish(self.counters)

    def _write_line(self, line: bytes) -> bool:
        # lines_written_total is counted only once write() took the whole line.
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
        deadline = None
        while True:
            try:
                os.write(self._fd, line)
                c.lines_written_total += 1
                return True
            except BlockingIOError:
                # A full pipe: wait for room up to block_s in all.  Writers racing
                # for the same room can lose a wakeup to another; that is no drop
                # while time is left.
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.block_s
                if now >= deadline:
                    c.dropped_full_total += 1
                    return False
                select.select([], [self._fd], [], deadline - now)
            except BrokenPipeError:
                os.close(self._fd)
                self._fd = None
                self._next_open = time.monotonic() + REOPEN_INTERVAL_S
                c.dropped_no_reader_total += 1
                return False
            except OSError:
                c.write_errors_total += 1
                return False

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
        if self.counter_file is not None:
            self.counter_file.publish(self.counters)
            self.counter_file.close()
            self.counter_file = None


def _pipe_sizes(pipe_size: int) -> tuple[int, ...]:
    """pipe_size, then the fallbacks below it, for set_pipe_size."""
    return (pipe_size, *(f for f in PIPE_SIZE_FALLBACKS if f < pipe_size))


def hold_fifo(path: str, pipe_size: int = PIPE_SIZE) -> tuple[int, int | None]:
    """Open the FIFO read-write for the supervisor's whole life: with a reader and a
    writer always there, the kernel never frees the pipe buffer, so lines already in
    it outlive a ks-ingest restart, and writers meet a full pipe (counted as
    dropped_full) instead of EPIPE while ks-ingest is away.  Never read from.
    Returns (fd, the pipe size in bytes or None when it could not be set)."""
    ensure_fifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    _check_fd(path, fd)
    return fd, set_pipe_size(fd, _pipe_sizes(pipe_size))


def open_reader(path: str, pipe_size: int = PIPE_SIZE) -> tuple[int, int]:
    """Open the FIFO for reading without ever seeing EOF.

    Returns (read_fd, keepalive_fd).  The keep-alive write end means writers
    coming and going never close the pipe under us; the larger pipe buffer
    absorbs bursts while a batch is being committed.
    """
    ensure_fifo(path)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    _check_fd(path, rfd)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    set_pipe_size(rfd, _pipe_sizes(pipe_size))
    return rfd, wfd

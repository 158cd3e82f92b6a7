"""DATA_DIR/run/ingest.spool: the bytes ks-ingest has taken from the FIFO and
not yet committed, so that a kill -9 loses none of them.

Without it, a killed ks-ingest loses what it had read and not committed: the
batch in memory and the LineSplitter's partial line.  So the FIFO is not read
into memory: splice(2) moves each chunk from the pipe into the spool, then
ks-ingest reads it back from the page cache and parses it.  The kernel takes a
byte out of the pipe only once it is in the file, so there is no instant at
which a kill can lose it (read() then write() would leave one: a kill right
after read() returns).  Every batch COMMIT records, in the same transaction,
the spool offset up to which every line is committed (ingest_state); the next
ks-ingest replays the bytes past it before it reads the FIFO.

No fsync: the page cache outlives the process, which is all a kill needs.  An
OS crash can lose the tail of the spool, as it can lose the last commits
(synchronous=NORMAL); that is out of scope here.

Layout: a header (magic, spool id: a random 63-bit number), then the bytes as
read.  An empty file has no header; the header, with a new id, is written
before the first chunk.  A reset is a single ftruncate to 0 and needs no
database write: an offset committed for another id says nothing about this
spool, whose bytes are then all uncommitted.  So a kill between a reset and
the next commit can neither skip nor repeat a line:

    spool empty or header only   nothing to replay
    header id == committed id    replay from the committed offset
    header id != committed id    replay everything after the header

A reset happens only when every byte of the spool has been fed and
committed and no line is half read; chunks end on line boundaries (writers
write whole lines of at most PIPE_BUF, a read takes what the pipe holds), so
that is soon true whenever the database keeps up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import struct
import time
from pathlib import Path

from ..fifo import _open_private_dir

RUN_DIR = "run"
SPOOL_NAME = "ingest.spool"
SPOOL_MODE = 0o600
MAGIC = b"KSSPOOL1"
HEADER = struct.Struct("<8sq")  # magic, spool id
# Reset once past this and everything in it is committed: replay after a kill stays short.
RESET_AT_BYTES = 8 << 20
# After a spool write failed, try it again at most this often (each try is a reset).
RETRY_AFTER_ERROR_S = 1.0

STATE_TABLE_SQL = "CREATE TABLE IF NOT EXISTS ingest_state(key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
STATE_SQL = ("INSERT INTO ingest_state(key, value) VALUES (?, ?)"
             " ON CONFLICT(key) DO UPDATE SET value = excluded.value")
STATE_KEYS = ("spool_id", "spool_offset", "spool_discarding")
# splice() says so when the file system cannot take it: then read() and pwrite().
_NO_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


class SpoolBusy(Exception):
    """Another process holds the spool (another ks-ingest on this data dir)."""


class Spool:
    def __init__(self, fd: int, path: str, log=None):
        self.fd = fd
        self.path = path
        self.log = log
        self.size_bytes = os.fstat(fd).st_size
        self.spool_id: int | None = None  # None: no header yet
        # Offsets into the file.  read_end: past the last byte handed to the
        # LineSplitter.  fed_offset: past the last complete line it fed to the
        # Ingestor, the offset the next COMMIT records (a flush commits all fed).
        self.read_end = 0
        self.fed_offset = 0
        self.fed_discarding = False  # the splitter is skipping an oversize line at fed_offset
        # True once a spool write failed: chunks are read straight into memory
        # (as without a spool) until a reset starts a clean spool.
        self.direct = False
        self.retry_at_monotonic = 0.0
        self.use_splice = True
        self.errors_total = 0
        self.resume_logged = False
        self.resets_total = 0
        self.reset_at_bytes = RESET_AT_BYTES

    @classmethod
    def open(cls, data_dir: Path, log=None) -> Spool:
        """Open (creating) DATA_DIR/run/ingest.spool, 0600, locked for this process.
        Raises OSError, or SpoolBusy when another process holds it."""
        dfd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rfd = _open_private_dir(dfd, RUN_DIR)
        finally:
            os.close(dfd)
        try:
            # No O_APPEND: splice() refuses such a file; every write names its offset.
            fd = os.open(SPOOL_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, SPOOL_MODE,
                         dir_fd=rfd)
        finally:
            os.close(rfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise PermissionError(f"{SPOOL_NAME} is not a regular file of uid {os.geteuid()}")
            if stat.S_IMODE(st.st_mode) != SPOOL_MODE:
                os.fchmod(fd, SPOOL_MODE)
            try:
                # Two readers of one spool would replay each other's lines.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpoolBusy(f"{data_dir / RUN_DIR / SPOOL_NAME} is held by another process") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, str(data_dir / RUN_DIR / SPOOL_NAME), log)

    # -- start-up -------------------------------------------------------------
    def plan_recovery(self, state: dict[str, int]) -> int:
        """Given the committed state (ingest_state), set where the bytes not yet
        committed start (read_end) and return how many there are.  Raises
        OSError when the spool cannot be read (it is then left as it is)."""
        sid = self._header_id()
        if sid is None:
            if self.size_bytes and self.log is not None:
                self.log.warning("spool without a valid header discarded", path=self.path,
                                 size_bytes=self.size_bytes)
            if self.size_bytes:
                self._truncate()
            return 0
        self.spool_id = sid
        offset, discarding = HEADER.size, False
        if state.get("spool_id") == sid:
            offset = max(HEADER.size, state.get("spool_offset", HEADER.size))
            discarding = bool(state.get("spool_discarding"))
            if offset > self.size_bytes:  # only if the file was cut by hand: nothing of it is uncommitted
                if self.log is not None:
                    self.log.warning("spool shorter than its committed offset", size_bytes=self.size_bytes,
                                     committed_offset=offset)
                offset, discarding = self.size_bytes, False
        self.read_end = self.fed_offset = offset
        self.fed_discarding = discarding
        return self.size_bytes - offset

    def replay_chunk(self, n: int) -> bytes:
        """The next bytes to replay (b"" at the end), from read_end."""
        n = min(n, self.size_bytes - self.read_end)
        if n <= 0:
            return b""
        try:
            chunk = self._pread(n, self.read_end)
        except OSError as e:
            # Left in the spool, past the committed offset: a later start tries them again.
            self._failed(e, "spool not readable")
            return b""
        self.read_end += len(chunk)
        return chunk

    def _header_id(self) -> int | None:
        if self.size_bytes < HEADER.size:
            return None
        magic, sid = HEADER.unpack(self._pread(HEADER.size, 0))  # OSError: the caller goes without the spool
        return sid if magic == MAGIC else None

    # -- reading the FIFO -------------------------------------------------------
    def read(self, rfd: int, n: int) -> bytes:
        """Up to n bytes from the FIFO, taken through the spool.  Raises
        BlockingIOError when the pipe is empty, as os.read does."""
        if self.direct or (self.spool_id is None and not self._start()):
            return os.read(rfd, n)
        if self.use_splice:
            try:
                got = os.splice(rfd, self.fd, n, offset_dst=self.size_bytes, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                raise
            except OSError as e:
                if e.errno not in _NO_SPLICE:
                    self._failed(e, "spool write failed; reading the FIFO without it")
                    return os.read(rfd, n)
                self.use_splice = False
                if self.log is not None:
                    self.log.info("splice() not supported for the spool; read() then write()", error=str(e))
            else:
                return self._take(got)
        chunk = os.read(rfd, n)
        self._append(chunk)
        return chunk

    def _take(self, n: int) -> bytes:
        """Read back the n bytes splice() just put at the end of the spool."""
        if not n:
            return b""
        start = self.size_bytes
        self.size_bytes += n
        try:
            chunk = self._pread(n, start)
        except OSError as e:
            # Out of the pipe but not readable: they stay in the spool for the next start.
            self.read_end = start
            self._failed(e, "spool not readable; reading the FIFO without it")
            return b""
        self.read_end = self.size_bytes
        return chunk

    def _append(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        try:
            while view:
                k = os.pwrite(self.fd, view, self.size_bytes)
                self.size_bytes += k
                view = view[k:]
        except OSError as e:
            self.read_end = self.size_bytes
            self._failed(e, "spool write failed; reading the FIFO without it")
            return
        self.read_end = self.size_bytes

    def _start(self) -> bool:
        """Header with a new id on the empty spool."""
        sid = secrets.randbits(63) or 1
        try:
            if os.pwrite(self.fd, HEADER.pack(MAGIC, sid), 0) != HEADER.size:
                raise OSError(errno.ENOSPC, "short write of the spool header")
        except OSError as e:
            self._failed(e, "spool write failed; reading the FIFO without it")
            return False
        self.spool_id = sid
        self.size_bytes = self.read_end = self.fed_offset = HEADER.size
        return True

    def _pread(self, n: int, offset: int) -> bytes:
        data = os.pread(self.fd, n, offset)
        if len(data) != n:  # the page cache holds them; shorter means the file was cut under us
            raise OSError(errno.EIO, f"spool read {len(data)} of {n} bytes at {offset}")
        return data

    def _failed(self, e: OSError, what: str) -> None:
        # The data dir is probably full: ingest goes on without the spool, the
        # batch stays in memory as it would without one.
        self.errors_total += 1
        self.direct = True
        self.retry_at_monotonic = time.monotonic() + RETRY_AFTER_ERROR_S
        if self.errors_total == 1 and self.log is not None:
            self.log.warning(what, path=self.path, error=str(e))

    # -- bookkeeping --------------------------------------------------------------
    def fed(self, tail_bytes: int, discarding: bool) -> None:
        """The LineSplitter has fed every complete line it was given; tail_bytes
        of a line without its end yet stay in its buffer."""
        if self.direct:
            # Past read_end nothing is in the spool: a kill loses it whatever we record.
            self.fed_offset, self.fed_discarding = self.read_end, False
        else:
            self.fed_offset, self.fed_discarding = self.read_end - tail_bytes, discarding

    def state_rows(self) -> tuple[tuple[str, int], ...]:
        """For the batch's transaction: what every line up to is committed."""
        return (("spool_id", self.spool_id or 0), ("spool_offset", self.fed_offset),
                ("spool_discarding", int(self.fed_discarding)))

    def maybe_reset(self, splitter, *, force: bool = False) -> bool:
        """Empty the spool if it is large (or force, or after a write error) and
        everything in it is fed and committed.  The caller knows the latter: it
        calls this only with nothing pending in the Ingestor."""
        if self.read_end != self.size_bytes or splitter.buf or splitter.discarding:
            return False  # bytes not fed yet, or half a line a new spool would start in
        retry = self.direct and time.monotonic() >= self.retry_at_monotonic
        if not self.size_bytes:
            if retry:  # the header could not be written: nothing to truncate
                self._resume()
            return False
        if not (force or retry or self.size_bytes > self.reset_at_bytes):
            return False
        return self._truncate()

    def _truncate(self) -> bool:
        try:
            os.ftruncate(self.fd, 0)
        except OSError as e:
            self._failed(e, "spool not truncated")
            return False
        self.size_bytes = self.read_end = self.fed_offset = 0
        self.spool_id = None
        self.fed_discarding = False
        self.resets_total += 1
        if self.direct:
            self._resume()
        return True

    def _resume(self) -> None:
        # Logged once per process, as the first error is: a full disk comes back here every second.
        self.direct = False
        if not self.resume_logged and self.log is not None:
            self.resume_logged = True
            self.log.info("spool in use again", path=self.path, spool_errors_total=self.errors_total)

    def close(self) -> None:
        os.close(self.fd)

"""Process plumbing shared by the supervisor, the collectors host and the fault
injectors: dying with the parent, pipe sizes, restart backoff, finding executables."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1
# fcntl.F_SETPIPE_SZ is missing from some Python builds (added in 3.10, not everywhere).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up once, before any fork
except (OSError, AttributeError):  # pragma: no cover - non-glibc libc
    _prctl = None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def die_with_parent_preexec(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A Popen preexec_fn: the child gets `sig` when we die, even by kill -9.
    It runs between fork and exec, so it only calls prctl and getppid."""
    parent = os.getpid()

    def _preexec() -> None:
        die_with_parent(sig)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)
    return _preexec


class SignalWakeup:
    """A pipe the kernel writes a byte to on every signal (signal.set_wakeup_fd), for a loop that
    sleeps in poll/select until something happens: a stop request ends the wait at once instead
    of after the timeout (PEP 475 resumes the wait after a handler).  Watch `fd`; drain() after
    it is readable; close() puts back the wake-up fd there was before."""

    def __init__(self, r: int, w: int, previous: int):
        self.fd, self._w, self._previous = r, w, previous

    @classmethod
    def open(cls) -> SignalWakeup | None:
        """None where signals cannot wake us (not the main thread): the caller bounds its waits."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:
            os.close(r)
            os.close(w)
            return None
        return cls(r, w, previous)

    def drain(self) -> None:
        try:
            while os.read(self.fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self.fd)
        os.close(self._w)


def set_pipe_size(fd: int, sizes: Iterable[int]) -> int | None:
    """Grow a pipe's buffer to the first size the kernel accepts (it refuses sizes
    above /proc/sys/fs/pipe-max-size for an unprivileged user, EPERM, or below the
    bytes already in it, EBUSY); None if none.  Any other error is a bug: raised."""
    for size in sizes:
        try:
            return fcntl.fcntl(fd, F_SETPIPE_SZ, size)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL):
                raise
    return None


def pipe_size(fd: int) -> int:
    """The bytes a pipe's buffer holds."""
    return fcntl.fcntl(fd, F_GETPIPE_SZ)


class Backoff:
    """Restart delay: `initial_s` doubling to `max_s`, back to `initial_s` once
    the process has run `stable_s` (so a rare crash restarts fast)."""

    def __init__(self, initial_s: float = 1.0, max_s: float = 30.0, stable_s: float = 30.0):
        self.initial_s, self.max_s, self.stable_s = initial_s, max_s, stable_s
        self.delay_s = initial_s

    def failed(self, ran_s: float = 0.0) -> float:
        """The delay before the next start after a failure; doubles the one after."""
        if ran_s >= self.stable_s:
            self.delay_s = self.initial_s
        delay = self.delay_s
        self.delay_s = min(self.delay_s * 2, self.max_s)
        return delay


# Where Debian installs libbpf-tools and system tools, searched after our own bin/.
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")


def find_executable(name: str, override_env: str | None = None) -> str | None:
    """Absolute path of an executable, or None.  Our own (ks-*) live next to the
    interpreter (the venv's bin/); then the system directories, then PATH.  When
    the environment variable `override_env` is set, only that directory is
    searched (tests point it at stand-ins)."""
    override = os.environ.get(override_env) if override_env else None
    dirs = (override,) if override else (os.path.dirname(sys.executable), *SYSTEM_DIRS)
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None if override else shutil.which(name)

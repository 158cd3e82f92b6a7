"""The supervisor behind `ks run`: start the pipeline, watch it, restart what dies.

One pipeline per data dir: `ks run` holds flock(LOCK_EX) on DATA_DIR/run/lock
(its pid written in it) and on the FIFO for its whole life; a second one
exits naming the pid that holds them.

The supervisor holds the FIFO open read-write (never reading) for its whole
life and grows the pipe to 1 MiB, so the kernel never frees the pipe buffer
when ks-ingest dies: lines already in the pipe wait for the next ks-ingest,
and writers meet a full pipe (which they count) instead of EPIPE.

Children are tracked by the PID of the process we started (never by name), each
in its own session so a terminal's Ctrl-C reaches only us and we decide the
order: on stop, producers first, then the consumers (ks-ingest last), so every
line already in the FIFO is stored.  A child that exits is restarted after an
exponential backoff (1 s doubling to 30 s, reset once it has run for 30 s).
State goes to DATA_DIR/status.json every second for `ks status`; our pid and
every descendant's go to DATA_DIR/run/pipeline.pids (the tracers exclude them).
"""

from __future__ import annotations

import errno
import fcntl
import contextlib
import os
import select
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .accounting import proc_start_ticks
from .fifo import hold_fifo
from .config import load as load_config
from .log import rotate_if_needed
from .procutil import Backoff, die_with_parent_preexec
from .proctree import descendants

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
STOP_TIMEOUT_S = 10.0         # a producer gets this long after SIGTERM before SIGKILL
# ks-ingest may wait out its 5 s SQLite busy timeout and then commit a batch:
# well above that, so a locked database never costs the lines it holds.
INGEST_STOP_TIMEOUT_S = 20.0
STATUS_FILE = "status.json"
RUN_DIR = "run"
LOCK_FILE = "lock"
PIDS_FILE = "pipeline.pids"
PIDS_REFRESH_S = 1.0          # descendants (a collector's tools) come and go on their own


class PipelineBusy(Exception):
    """Another `ks run` holds this data dir or FIFO; the message names its pid."""


def flock_holder(path: str | Path) -> int | None:
    """Pid holding a flock on path, from /proc/locks (None when nobody does).
    Reading it takes no lock, so asking never gets in a starting pipeline's way."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF" ("->" marks a waiter)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[2] != "->" and parts[5] == want:
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None


def lock_path(data_dir: Path) -> Path:
    return Path(data_dir) / RUN_DIR / LOCK_FILE


def pipeline_lock_holder(data_dir: Path) -> int | None:
    """Pid of the `ks run` that holds DATA_DIR/run/lock, or None."""
    path = lock_path(data_dir)
    pid = flock_holder(path)
    if pid is None:
        return None
    try:  # the pid it wrote is the one to name (/proc/locks may show another namespace's)
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return pid


def ensure_run_dir(data_dir: Path) -> Path:
    run = Path(data_dir) / RUN_DIR
    run.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(run)
    if st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
        raise PipelineBusy(f"{run} is not a directory of ours (a symlink, a file or another user's); "
                           "remove it and start again")
    if st.st_mode & 0o077:
        os.chmod(run, 0o700)
    return run


@dataclass
class Claim:
    """What one pipeline holds for its whole life: the data dir lock and the FIFO."""

    lock_fd: int
    fifo_fd: int
    pipe_size_bytes: int | None

    def release(self) -> None:
        for fd in (self.fifo_fd, self.lock_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def claim(data_dir: Path, fifo: str) -> Claim:
    """Take DATA_DIR/run/lock and the FIFO for this pipeline, or raise PipelineBusy."""
    run = ensure_run_dir(data_dir)
    path = run / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno != errno.EWOULDBLOCK:
            raise
        pid = pipeline_lock_holder(data_dir)
        who = f"pid {pid}" if pid else "another process"
        raise PipelineBusy(f"a pipeline is already running on data dir {data_dir} ({who} holds {path}); "
                           f"stop it first (kill {pid or '<pid>'}) or use another --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        ffd, size = hold_fifo(fifo)
    except BaseException:
        os.close(fd)
        raise
    try:
        fcntl.flock(ffd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(ffd)
        os.close(fd)
        if e.errno != errno.EWOULDBLOCK:
            raise
        pid = flock_holder(fifo)
        raise PipelineBusy(f"FIFO {fifo} is already used by another pipeline (pid {pid or '?'}), "
                           "on another data dir; give this one its own --fifo") from None
    return Claim(fd, ffd, size)


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    role: str = "producer"  # "consumer" children start first and stop last
    stop_timeout_s: float = STOP_TIMEOUT_S  # SIGTERM, then SIGKILL after this long
    # Set when the child cannot run here; it is listed, never started.
    unavailable_reason: str | None = None
    details: dict = field(default_factory=dict)


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    state: str = "pending"
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_START_S, BACKOFF_MAX_S, STABLE_AFTER_S))
    last_exit: int | None = None


# Start time in clock ticks (field 22 of /proc/pid/stat); kept under its old name.
proc_start_time = proc_start_ticks


def write_atomic(path: Path, data: bytes) -> None:
    """Replace path with data in one rename (mode 0600)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not keep a half-written file
        raise


class Supervisor:
    def __init__(self, specs: list[ChildSpec], data_dir: Path, fifo: str, log, *,
                 claim: Claim | None = None, interval_s: float | None = None):
        self._failing_writes: dict[str, str] = {}
        self.logs = load_config().logs
        self.children = [Child(s) for s in specs]
        self.data_dir = data_dir
        self.fifo = fifo
        self.log = log
        self.claim = claim
        self.interval_s = interval_s
        self.stopping = False
        self.log_dir = data_dir / "logs"
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.status_path = data_dir / STATUS_FILE
        self.pids_path = data_dir / RUN_DIR / PIDS_FILE
        self._pids_written: list[int] | None = None
        self.started_at = time.time()

    def _stop(self, signum, _frame) -> None:
        if not self.stopping:
            self.log.info("stop requested", signal=signal.Signals(signum).name)
        self.stopping = True

    def pid_of(self, name: str) -> int | None:
        for c in self.children:
            if c.spec.name == name and c.proc is not None and c.proc.poll() is None:
                return c.proc.pid
        return None

    def _resolve(self, argv: list[str]) -> list[str]:
        """"@pid:NAME" becomes NAME's current pid; with no such child the option before it goes too."""
        out: list[str] = []
        for a in argv:
            if a.startswith("@pid:"):
                pid = self.pid_of(a[5:])
                if pid is None:
                    out.pop()
                else:
                    out.append(str(pid))
            else:
                out.append(a)
        return out

    def start(self, c: Child) -> None:
        log_path = self.log_dir / f"{c.spec.name}.log"
        with contextlib.suppress(OSError):  # a log that cannot rotate now is tried at the next start
            rotate_if_needed(log_path, self.logs.max_bytes, self.logs.keep)
        logf = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            c.proc = subprocess.Popen(
                self._resolve(c.spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=logf,
                start_new_session=True,
                # If the supervisor is killed outright, its children must not outlive it.
                preexec_fn=die_with_parent_preexec(signal.SIGTERM),  # noqa: PLW1509 - single-threaded
                env={**os.environ, "KS_DATA_DIR": str(self.data_dir), "KS_FIFO": self.fifo},
            )
        except OSError as e:
            c.state = "failed"
            c.last_exit = None
            c.next_start = time.monotonic() + c.backoff.failed()
            self.log.error("cannot start child", child=c.spec.name, error=str(e))
            return
        finally:
            logf.close()
        c.state = "running"
        c.started_at = time.monotonic()
        self.log.info("started", child=c.spec.name, child_pid=c.proc.pid, argv=c.proc.args)
        self.write_pids()

    def reap(self, c: Child) -> None:
        if c.proc is None or c.state != "running":
            return
        rc = c.proc.poll()
        if rc is None:
            return
        c.last_exit = rc
        c.state = "restarting"
        delay_s = c.backoff.failed(ran_s=time.monotonic() - c.started_at)
        c.next_start = time.monotonic() + delay_s
        self.log.warning("child exited", child=c.spec.name, child_pid=c.proc.pid, returncode=rc,
                         restart_in_s=delay_s)
        self.write_pids()

    def write_pids(self) -> None:
        """DATA_DIR/run/pipeline.pids: us and every process below us, one per line,
        replaced in one rename whenever the set changes."""
        me = os.getpid()
        pids = sorted({me} | descendants(me))
        if pids == self._pids_written:
            return
        try:
            write_atomic(self.pids_path, "".join(f"{p}\n" for p in pids).encode())
            self._pids_written = pids
            self._failing_writes.pop("pipeline.pids", None)
        except OSError as e:
            self._write_failed("pipeline.pids", e)

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "supervisor_pid": os.getpid(),
            "supervisor_start_ticks": proc_start_time(os.getpid()),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "stopping": self.stopping,
            "fifo": self.fifo,
            "interval_s": self.interval_s,
            "pipe_size_bytes": self.claim.pipe_size_bytes if self.claim else None,
            "children": [
                {
                    "name": c.spec.name,
                    "role": c.spec.role,
                    "state": c.state,
                    "pid": c.proc.pid if c.proc is not None and c.state == "running" else None,
                    "restarts": c.restarts,
                    "uptime_s": round(now - c.started_at, 1) if c.state == "running" else None,
                    "last_exit": c.last_exit,
                    "reason": c.spec.unavailable_reason,
                    **c.spec.details,
                }
                for c in self.children
            ],
        }

    def write_status(self) -> None:
        try:
            write_atomic(self.status_path, orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
        except OSError as e:  # e.g. the data dir's disk is full: keep supervising
            self._write_failed("status.json", e)
            return
        if self._failing_writes.pop("status.json", None):
            self.log.info("status.json written again")

    def _write_failed(self, what: str, e: OSError) -> None:
        """Log a failing state-file write once per streak, not every second."""
        if what not in self._failing_writes:
            self._failing_writes[what] = str(e)
            self.log.warning(f"cannot write {what}; supervising on", error=str(e))

    def _wake_on_signals(self) -> int | None:
        """A pipe that SIGCHLD (a child exited) and the stop signals write to, so the loop sleeps
        until something happens or the next status write is due instead of polling 5 times a
        second.  None where signals cannot wake us (not the main thread): then it polls."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            signal.signal(signal.SIGCHLD, lambda *_: None)  # the default ignores it: no wake-up byte
        except ValueError:
            os.close(r)
            os.close(w)
            return None
        return r

    @staticmethod
    def _sleep(wake: int | None, timeout_s: float) -> None:
        timeout_s = min(max(timeout_s, 0.0), PIDS_REFRESH_S)
        if wake is None:
            time.sleep(min(timeout_s, 0.2))
            return
        if select.select([wake], [], [], timeout_s)[0]:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake, 512):
                    pass

    def _terminate(self, group: list[Child]) -> None:
        for c in group:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                c.state = "stopping"
        t0 = time.monotonic()
        for c in group:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, t0 + c.spec.stop_timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning("child did not stop in time; killing", child=c.spec.name, child_pid=c.proc.pid)
                c.proc.kill()
                c.proc.wait()
            c.last_exit = c.proc.returncode
            c.state = "stopped"

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._stop)
        if self.claim is None:
            self.claim = claim(self.data_dir, self.fifo)
        self.log.info("holding the FIFO", fifo=self.fifo, pipe_size_bytes=self.claim.pipe_size_bytes)
        self.write_pids()
        consumers = [c for c in self.children if c.spec.role == "consumer"]
        producers = [c for c in self.children if c.spec.role != "consumer"]
        for c in self.children:
            if c.spec.unavailable_reason:
                c.state = "unavailable"
        # Consumers first, so producers find a reader; give ingest a moment to open the FIFO.
        for c in consumers:
            self.start(c)
        time.sleep(0.5)
        for c in producers:
            if c.state == "pending":
                self.start(c)
        next_status = 0.0
        wake = self._wake_on_signals()
        while not self.stopping:
            now = time.monotonic()
            for c in self.children:
                self.reap(c)
                if c.state in ("restarting", "failed") and now >= c.next_start and not self.stopping:
                    c.restarts += 1
                    self.start(c)
            if now >= next_status:
                self.write_status()
                self.write_pids()
                next_status = now + PIDS_REFRESH_S
            self._sleep(wake, min([next_status] + [c.next_start for c in self.children
                                                   if c.state in ("restarting", "failed")]) - time.monotonic())
        self.log.info("stopping producers")
        self._terminate(producers)
        self.log.info("stopping consumers")
        self._terminate(consumers)
        self.write_status()
        try:
            self.pids_path.unlink()
        except OSError:
            pass
        # Last: the FIFO (the pipe buffer goes once nobody holds it) and the lock.
        self.claim.release()
        self.log.info("stopped")
        return 0

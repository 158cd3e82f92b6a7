"""The supervisor behind `ks run`: start the pipeline, watch it, restart what dies.

Children are tracked by the PID of the process we started (never by name), each
in its own session so a terminal's Ctrl-C reaches only us and we decide the
order: on stop, producers first, then the consumers (ks-ingest last), so every
line already in the FIFO is stored.  A child that exits is restarted after an
exponential backoff (1 s doubling to 30 s, reset once it has run for 30 s).
State goes to DATA_DIR/status.json every second for `ks status`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .fifo import ensure_fifo
from .procutil import Backoff, die_with_parent_preexec

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
STOP_TIMEOUT_S = 10.0
STATUS_FILE = "status.json"


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    role: str = "producer"  # "consumer" children start first and stop last
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


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of stat): with the
    pid it identifies one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Supervisor:
    def __init__(self, specs: list[ChildSpec], data_dir: Path, fifo: str, log):
        self.children = [Child(s) for s in specs]
        self.data_dir = data_dir
        self.fifo = fifo
        self.log = log
        self.stopping = False
        self.log_dir = data_dir / "logs"
        self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.status_path = data_dir / STATUS_FILE
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
        logf = open(self.log_dir / f"{c.spec.name}.log", "ab")  # noqa: SIM115 - handed to the child
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

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "supervisor_pid": os.getpid(),
            "supervisor_start_ticks": proc_start_time(os.getpid()),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "stopping": self.stopping,
            "fifo": self.fifo,
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
        tmp = self.status_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(self.status(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.status_path)

    def _terminate(self, group: list[Child]) -> None:
        for c in group:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                c.state = "stopping"
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in group:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
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
        ensure_fifo(self.fifo)
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
        while not self.stopping:
            now = time.monotonic()
            for c in self.children:
                self.reap(c)
                if c.state in ("restarting", "failed") and now >= c.next_start and not self.stopping:
                    c.restarts += 1
                    self.start(c)
            if now >= next_status:
                self.write_status()
                next_status = now + 1.0
            time.sleep(0.2)
        self.log.info("stopping producers")
        self._terminate(producers)
        self.log.info("stopping consumers")
        self._terminate(consumers)
        self.write_status()
        self.log.info("stopped")
        return 0

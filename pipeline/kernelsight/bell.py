"""ks-ingest rings ks-agent when a commit stored rows: a one-byte datagram on a unix socket,
DATA_DIR/run/agent.wake (mode 0600, in the 0700 run directory).

The agent used to poll the database twice a second between its steps for an OOM kill just
stored, and once a second for a memory forecast about to warn.  Rung instead, it wakes once per
commit (about once a second at idle), looks for a victim only when the commit stored one, and
sees it as soon as it is committed instead of up to 0.5 s later.

A ring is a hint, never data: a lost one (no agent listening, its queue full) costs nothing,
because every step reads everything again.  The socket is named through /proc/self/fd/N/ (N an
O_PATH descriptor of the run directory) so a deep DATA_DIR does not meet sun_path's 108 bytes.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

BELL_NAME = "agent.wake"
COMMITTED = b"c"  # a commit stored rows
OOM_STORED = b"o"  # ... and an OOM victim among them
# At most one COMMITTED ring this often: under load ks-ingest commits many times a second, and
# the agent's between-steps check runs at most once a second anyway.  OOM_STORED is never held back.
RING_EVERY_S = 0.5
OOM_TABLES = ("oom_victim_events", "oom_kill_events")  # ks-oom-kill's, and the collectors' fallback


def _open_dir(run_dir: Path) -> tuple[int, str]:
    """An O_PATH descriptor of run_dir, and the socket's address through it."""
    fd = os.open(run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return fd, f"/proc/self/fd/{fd}/{BELL_NAME}"


class Bell:
    """ks-ingest's end: ring() after a commit."""

    def __init__(self, run_dir: Path):
        self._dir, self._addr = _open_dir(run_dir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.clock = time.monotonic  # RING_EVERY_S's clock (tests replace it)
        self._last = float("-inf")  # the first ring is never held back
        self.rung_total = 0

    def ring(self, oom: bool) -> None:
        now = self.clock()
        if not oom and now - self._last < RING_EVERY_S:
            return
        try:
            self._sock.sendto(OOM_STORED if oom else COMMITTED, self._addr)
        except OSError:
            return  # no agent listening, or its queue full: it reads everything at its next step
        self._last = now
        self.rung_total += 1

    def close(self) -> None:
        self._sock.close()
        os.close(self._dir)


class BellListener:
    """ks-agent's end: watch fileno(), then drain() the rings that arrived."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir, addr = _open_dir(run_dir)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            try:
                st = os.stat(BELL_NAME, dir_fd=self._dir, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise OSError(f"{run_dir / BELL_NAME} exists and is not a socket")
                try:
                    self.sock.connect(addr)
                except ConnectionRefusedError:
                    os.unlink(BELL_NAME, dir_fd=self._dir)  # a stopped agent's
                else:
                    raise OSError(f"another agent listens on {run_dir / BELL_NAME}")
            self.sock.bind(addr)
            os.chmod(BELL_NAME, 0o600, dir_fd=self._dir)  # just bound: ours
            self._ino = os.stat(BELL_NAME, dir_fd=self._dir, follow_symlinks=False).st_ino
        except BaseException:
            self.sock.close()
            os.close(self._dir)
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> bytes:
        """The rings since the last drain, each one byte (empty when none)."""
        got = bytearray()
        while True:
            try:
                got += self.sock.recv(16)
            except BlockingIOError:
                return bytes(got)

    def close(self) -> None:
        try:
            if os.stat(BELL_NAME, dir_fd=self._dir, follow_symlinks=False).st_ino == self._ino:
                os.unlink(BELL_NAME, dir_fd=self._dir)  # ours, not a newer agent's
        except FileNotFoundError:
            pass
        self.sock.close()
        os.close(self._dir)

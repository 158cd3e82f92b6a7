"""Shared plumbing for the fault injectors: a hard deadline, dying with the
parent, stopping cleanly on SIGTERM/SIGINT, and telling the runner when the
fault really begins (a line `ONSET <unix time>` on stdout)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from ..procutil import die_with_parent_preexec


class Stop:
    """Set by SIGTERM/SIGINT or by the deadline; loops poll `stop.now()`."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.flag = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_):
        self.flag = True

    def now(self) -> bool:
        return self.flag or time.monotonic() >= self.deadline

    def left(self) -> float:
        return 0.0 if self.flag else max(0.0, self.deadline - time.monotonic())

    def sleep(self, s: float) -> None:
        end = time.monotonic() + s
        while not self.now() and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def onset(what: str = "") -> None:
    print(f"ONSET {time.time():.3f} {what}".rstrip(), flush=True)


def parser(doc: str, seconds: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=seconds, help="how long the fault lasts at most (hard bound)")
    return p


def check_seconds(p: argparse.ArgumentParser, seconds: float, limit: float = 600.0) -> None:
    if not 0 < seconds <= limit:
        p.error(f"--seconds must be in (0, {limit:g}]")


def disk_dir(prefix: str) -> str:
    """A scratch directory on a real disk (not tmpfs): /var/tmp unless KS_SCENARIO_DIR says otherwise."""
    base = os.environ.get("KS_SCENARIO_DIR") or "/var/tmp"
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def start_group(argv: list[str], stdout=subprocess.DEVNULL, stderr=None) -> subprocess.Popen:
    """A load generator in its own process group (so that stopping it stops its children), dying with us."""
    return subprocess.Popen(argv, start_new_session=True, stdout=stdout, stderr=stderr,
                            preexec_fn=die_with_parent_preexec())


def stop_groups(procs, grace: float = 5.0) -> None:
    """SIGTERM every group at once, wait up to `grace` for each leader, then SIGKILL whatever is left in
    each group (a loop's current child, a server's workers)."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.poll() is None:
            _signal_group(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p.pid, signal.SIGKILL)
        p.wait()


def stop_group(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    stop_groups([proc], grace)


def run_tool(argv: list[str], stop: Stop, grace: float = 5.0) -> int:
    """Run an external load generator (stress-ng, fio) in its own process group, bounded by `stop`."""
    proc = start_group(argv)
    try:
        while proc.poll() is None and not stop.now():
            time.sleep(0.1)
    finally:
        stop_group(proc, grace)
    return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def log(name: str, msg: str) -> None:
    print(f"{name}: {msg}", file=sys.stderr, flush=True)

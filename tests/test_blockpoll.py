"""libks_blockpoll.so: the collectors host preloads it into the libbpf-tools that wait on their
perf buffers with a 100 ms timeout (collectors/runner.py, native/blockpoll/ks_blockpoll.c).

CPython's select.epoll.poll(timeout) is a plain epoll_wait(2) through libc, so a Python child
shows what the library does to a waiting program: the wait it replaces ends only on an event or
a signal, every other wait is left as it was.  Nothing here asserts how long anything took."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kernelsight.collectors import exitsnoop, runqlat, tcplife, tcpstates
from kernelsight.collectors.runner import _child_env, blockpoll_library

LIB = blockpoll_library()
pytestmark = pytest.mark.skipif(LIB is None, reason="libks_blockpoll.so not built (pip install -e . builds it)")

# The child waits once with the given timeout (ms) on a pipe the parent writes to only after
# reading "waiting"; it prints what the wait returned.
CHILD = r"""
import os, select, signal, sys
# Python installs its SIGINT handler only when SIGINT was not ignored at start, and a job started
# in the background of a non-interactive shell (how CI may run us) inherits it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
r, w = int(sys.argv[1]), int(sys.argv[2])
ep = select.epoll()
ep.register(r, select.EPOLLIN)
print("waiting", flush=True)
got = ep.poll(int(sys.argv[3]) / 1000)
print("event" if got else "timeout", flush=True)
"""


def _wait_once(timeout_ms: int, env: dict, write_after_waiting: bool) -> str:
    r, w = os.pipe()
    try:
        with subprocess.Popen([sys.executable, "-c", CHILD, str(r), str(w), str(timeout_ms)], pass_fds=(r, w),
                              stdout=subprocess.PIPE, text=True, env=env) as p:
            try:
                assert p.stdout.readline().strip() == "waiting"
            except BaseException:
                p.kill()
                raise
            if write_after_waiting:
                # Seen blocked in epoll_wait with no timeout (the 4th argument, -1): now it can only
                # return because of this byte, however long the machine takes to get here.
                if not _blocked_untimed(p.pid):
                    p.kill()
                    pytest.fail("the child never waited without a timeout")
                os.write(w, b"x")
            out = p.stdout.readline().strip()
            p.wait(timeout=30)
        return out
    finally:
        os.close(r)
        os.close(w)


def _blocked_untimed(pid: int) -> bool:
    """True once pid sits in epoll_wait/epoll_pwait with timeout -1 (/proc/PID/syscall); False
    when it leaves without (it printed its result, or exited)."""
    for _ in range(30000):
        try:
            with open(f"/proc/{pid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            return False
        # The int timeout sits in the low 32 bits of the register: -1 reads 0xffffffff.
        if fields and fields[0] in ("232", "281") and int(fields[4], 16) & 0xFFFFFFFF == 0xFFFFFFFF:
            return True
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        time.sleep(0.001)
    return False


def _env(ms: int | None) -> dict:
    env = {**os.environ, "LD_PRELOAD": LIB}
    if ms is not None:
        env["KS_BLOCKPOLL_MS"] = str(ms)
    return env


def test_the_replaced_wait_ends_on_an_event_not_on_its_timeout():
    # 1 ms would time out long before the parent writes; replaced, it can only see the byte.
    assert _wait_once(1, _env(1), write_after_waiting=True) == "event"


def test_other_timeouts_and_no_setting_pass_through():
    assert _wait_once(2, _env(1), write_after_waiting=False) == "timeout"
    assert _wait_once(1, _env(None), write_after_waiting=False) == "timeout"
    assert _wait_once(1, {**_env(None), "KS_BLOCKPOLL_MS": "junk"}, write_after_waiting=False) == "timeout"


def test_a_signal_still_ends_the_replaced_wait():
    r, w = os.pipe()
    try:
        with subprocess.Popen([sys.executable, "-c", CHILD, str(r), str(w), "100"], pass_fds=(r, w),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(100)) as p:
            try:
                assert p.stdout.readline().strip() == "waiting"
                # Only once it sits in the untimed wait: a signal that lands between "waiting" and
                # the syscall sets Python's flag, and the wait, with no timeout left, never looks at it.
                assert _blocked_untimed(p.pid), "the child never waited without a timeout"
                p.send_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt out of the wait
                assert p.wait(timeout=30) != 0
                assert p.stdout.read() == ""  # ended by the signal, not by an event or a timeout
            finally:
                if p.poll() is None:  # a failed assertion must not leave Popen.__exit__ waiting for good
                    p.kill()
    finally:
        os.close(r)
        os.close(w)


def test_only_the_perf_buffer_tools_get_it():
    for spec in (exitsnoop.SPEC, tcplife.SPEC, tcpstates.SPEC):
        env = _child_env(spec)
        assert env["LD_PRELOAD"].split()[0] == LIB and env["KS_BLOCKPOLL_MS"] == "100"
    env = _child_env(runqlat.SPEC)  # a histogram tool sleeps between prints: left as shipped
    assert "KS_BLOCKPOLL_MS" not in env and LIB not in env.get("LD_PRELOAD", "")

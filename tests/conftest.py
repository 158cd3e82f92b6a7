"""Shared helpers: where the installed executables are, and a private pipeline env."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

BIN_DIR = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str | None:
    p = BIN_DIR / name
    return str(p) if p.exists() else shutil.which(name)


def wait_for(pred, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll until pred() is truthy.  The timeout is a liveness bound, not a speed check."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def query(db: Path, sql: str, args=()):
    from kernelsight.db import query_once

    return query_once(db, sql, args)


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory, monkeypatch):
    """Writers in the test process keep counters files under $KS_DATA_DIR (the Makefile
    exports ./data): give every test its own, never the real one."""
    monkeypatch.setenv("KS_DATA_DIR", str(tmp_path_factory.mktemp("ks-data")))


@pytest.fixture
def ks_env(tmp_path):
    data = tmp_path / "data"
    fifo = str(tmp_path / "ks.fifo")
    env = {**os.environ, "KS_DATA_DIR": str(data), "KS_FIFO": fifo}
    return SimpleNamespace(data=data, fifo=fifo, env=env, db=data / "kernelsight.db", tmp=tmp_path)


def has_reader(fifo: str) -> bool:
    """True once someone holds the FIFO open for reading (a non-blocking open succeeds)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def tracer_bin(name: str, required: bool = False) -> str:
    """A built tracer (ks-NAME): $KS_TRACER_DIR, the venv's bin, then the CMake build trees.
    Missing: the test is skipped, or failed when the suite requires it (required=True)."""
    dirs = [Path(os.environ["KS_TRACER_DIR"])] if os.environ.get("KS_TRACER_DIR") else []
    dirs += [BIN_DIR, REPO / "build/dev/bpf", *sorted(REPO.glob("build/*/bpf"))]
    for d in dirs:
        if (d / name).exists():
            return str(d / name)
    why = f"{name} not built (make build, or cmake -S . -B build/dev && cmake --build build/dev)"
    if required:
        pytest.fail(why)
    pytest.skip(why)


# A child whose second thread is an event loop blocked in epoll; a line on its stdin sets the
# main thread feeding that loop without pause.
_EPOLL_LOOP_CHILD = """
import selectors, socket, sys, threading
a, b = socket.socketpair()
sel = selectors.DefaultSelector()   # epoll on Linux
sel.register(a, selectors.EVENT_READ)
def loop():
    sys.stdout.write(f"{threading.get_native_id()}\\n"); sys.stdout.flush()
    while True:
        for _key, _ in sel.select():
            a.recv(65536)
threading.Thread(target=loop, daemon=True).start()
sys.stdin.readline()      # wait to be told to feed it
while True:
    b.send(b"x")
"""


@pytest.fixture
def epoll_loop_child():
    """(Popen, tid) of the loop thread, once its wchan shows it waiting in epoll."""
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-c", _EPOLL_LOOP_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        tid = int(p.stdout.readline())
        wchan = Path(f"/proc/{p.pid}/task/{tid}/wchan")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and wchan.read_bytes() != b"do_epoll_wait":
            time.sleep(0.05)
        yield p, tid
    finally:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()

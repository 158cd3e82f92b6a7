"""Run one tool call in a forked child it cannot escape: a wall-clock bound
(the parent SIGKILLs the child on time) and a memory bound (RLIMIT_AS = the
child's address space at fork + memory_mb; RLIMIT_CPU as a second stop).

Why a child: SQLite's progress handler cannot interrupt one long opcode
(printf with a huge width, zeroblob), and a Python regex or a numpy
allocation cannot be interrupted either; only the kernel bounds them all.

The result comes back as JSON over a pipe.  The tool's own refusals
(QueryRefused, ToolError) are re-raised in the parent with their message; a
child killed on time, out of memory or by a signal is ToolCutOff.  The stats
of the last call (elapsed_s, peak memory over the parent's) are kept for the
log and the tests.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import select
import signal
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import orjson

MAX_REPLY_BYTES = 8 * 1024 * 1024  # a reply larger than this is refused (the caller caps results far below it)
MIN_HEADROOM_MB = 16


class ToolCutOff(RuntimeError):
    """The call was stopped by its wall-clock or memory bound; the message says which."""


@dataclass(frozen=True)
class Bounds:
    wall_s: float = 1.0
    memory_mb: float = 100.0


@dataclass
class CallStats:
    elapsed_s: float
    peak_rss_growth_mb: float | None  # the child's peak RSS less its RSS when the call started
    outcome: str  # ok | error | cut_off


def _status_kb() -> dict[str, int]:
    """/proc/self/status sizes in KiB (VmSize, VmRSS, VmData, RssAnon, ...)."""
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if v.strip().endswith("kB")}


def _address_space_limit(st: dict[str, int], memory_mb: float) -> int:
    """RLIMIT_AS (bytes) that lets the child gain at most memory_mb of resident memory.  Memory the
    parent freed but malloc kept mapped (VmData not resident) is reused without growing the address
    space, so it is taken off the headroom; at least MIN_HEADROOM_MB is left for the call to run."""
    slack_kb = max(0, st["VmData"] - st.get("RssAnon", st["VmRSS"]))
    headroom_kb = max(int(memory_mb * 1024) - slack_kb, MIN_HEADROOM_MB * 1024)
    return (st["VmSize"] + headroom_kb) * 1024


def _child(fn: Callable[[], object], bounds: Bounds, wfd: int) -> None:
    """In the child: limit, run, write one JSON reply, exit without unwinding the parent's state."""
    code = 0
    try:
        gc.freeze()  # the collector leaves the parent's objects alone: fewer copy-on-write pages
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        st = _status_kb()
        os.write(wfd, b"%15d\n" % st["VmRSS"])  # the header: RSS at start, so the parent can tell growth
        limit = _address_space_limit(st, bounds.memory_mb)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cpu = max(1, math.ceil(bounds.wall_s))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        try:
            reply = {"ok": fn()}
        except MemoryError:
            reply = {"cut_off": f"cut off: the call needed more than {bounds.memory_mb:g} MB"}
        except Exception as e:  # the parent re-raises it by class name
            reply = {"error": type(e).__name__, "message": str(e)}
        try:
            raw = orjson.dumps(reply, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)
        except MemoryError:
            raw = orjson.dumps({"cut_off": f"cut off: the result needed more than {bounds.memory_mb:g} MB"})
        view = memoryview(raw)
        while view:
            n = os.write(wfd, view[:65536])
            view = view[n:]
    except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code (pytest, the CLI)
        code = 1
    finally:
        os._exit(code)


class BoundedRunner:
    def __init__(self, bounds: Bounds = Bounds(), errors: dict[str, type[Exception]] | None = None):
        self.bounds = bounds
        self.errors = errors or {}  # exception class name -> class re-raised in the parent
        self.last: CallStats | None = None

    def run(self, fn: Callable[[], object]) -> object:
        """fn() in a bounded child; its JSON-able result, or its exception, or ToolCutOff."""
        rfd, wfd = os.pipe()
        started = time.monotonic()
        with warnings.catch_warnings():
            # Python >= 3.12 warns on fork in a threaded process (an HTTP client's threads): the child
            # runs only the tool, takes no lock the parent's threads hold, and leaves by os._exit
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(fn, self.bounds, wfd)
        os.close(wfd)
        chunks, size, killed = [], 0, None
        deadline = started + self.bounds.wall_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    killed = f"cut off: the call ran longer than {self.bounds.wall_s:g} s (killed)"
                    break
                ready, _, _ = select.select([rfd], [], [], left)
                if not ready:
                    continue
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    killed = f"cut off: the reply was larger than {MAX_REPLY_BYTES // 2**20} MiB"
                    break
                chunks.append(chunk)
        finally:
            os.close(rfd)
            if killed:
                os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
        elapsed = time.monotonic() - started
        raw = b"".join(chunks)
        header, body = raw[:16], raw[16:]
        peak = max(0.0, (usage.ru_maxrss - int(header)) / 1024) if len(header) == 16 else None
        if killed:
            self.last = CallStats(elapsed, peak, "cut_off")
            raise ToolCutOff(killed)
        if os.WIFSIGNALED(status) or not body:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            why = ("its CPU time bound" if sig == signal.SIGXCPU else
                   f"signal {signal.Signals(sig).name}" if sig else "no reply")
            self.last = CallStats(elapsed, peak, "cut_off")
            raise ToolCutOff(f"cut off: the call was stopped ({why}; bounds {self.bounds.wall_s:g} s, "
                             f"{self.bounds.memory_mb:g} MB)")
        reply = orjson.loads(body)
        if "cut_off" in reply:
            self.last = CallStats(elapsed, peak, "cut_off")
            raise ToolCutOff(reply["cut_off"])
        if "error" in reply:
            self.last = CallStats(elapsed, peak, "error")
            cls = self.errors.get(reply["error"])
            if cls is None:
                raise RuntimeError(f"{reply['error']}: {reply['message']}")
            raise cls(reply["message"])
        self.last = CallStats(elapsed, peak, "ok")
        return reply["ok"]

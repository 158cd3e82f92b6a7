"""Run one libbpf-tools binary as a child and turn its stdout into FIFO events.

The child runs under `stdbuf -oL` (the tools use stdio, which is block
buffered on a pipe) in a process group of its own, with PR_SET_PDEATHSIG so
it dies with us even if we are killed -9.  We only ever signal that group,
and only while the child is not yet reaped (so its pid cannot have been
reused).  stdout lines go to the parser; stderr lines go to the log and are
kept (the tail) to explain an exit in words.  A child that exits is restarted
with exponential backoff (reset once it has run `stable_s`); one that cannot
attach at all is reported unavailable and not retried, or replaced by the
collector's fallback.  collector_status lines record every state change,
producer_stats lines go out every interval and once at exit.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import time

import structlog

from .base import CollectorSpec, Parser, find_tool
from .reasons import classify

PR_SET_PDEATHSIG = 1
STDERR_KEEP = 32 * 1024
STDERR_LOG_LINES = 40      # per child start; the rest is counted, not logged
WARN_LOG_MAX = 100         # parser warnings logged per child start


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; we still kill it on a normal stop
        pass


class Runner:
    def __init__(
        self,
        spec: CollectorSpec,
        writer,
        interval_s: int = 1,
        log=None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_s: float = 10.0,
        idle_flush_s: float = 0.15,
        stop_timeout_s: float = 3.0,
    ) -> None:
        self.spec = spec
        self.writer = writer
        self.interval_s = max(1, int(interval_s))
        self.log = log or structlog.get_logger().bind(collector=spec.name)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        self.idle_flush_s = idle_flush_s
        self.stop_timeout_s = stop_timeout_s
        self.child: subprocess.Popen | None = None
        self.child_pids: list[int] = []   # every pid we started, for tests and logs
        self.restarts = 0
        self.events_total = 0
        self.state: str | None = None
        self._stop = False
        self._next_stats = time.monotonic() + self.interval_s
        self._note = ""  # appended to the running reason (fallback in use)

    # ---- control -------------------------------------------------------
    def request_stop(self, *_args) -> None:
        self._stop = True

    # ---- output --------------------------------------------------------
    def _status(self, state: str, reason: str, pid: int | None = None, spec: CollectorSpec | None = None) -> None:
        spec = spec or self.spec
        self.state = state
        self.writer.emit({
            "type": "collector_status",
            "ts": time.time_ns(),
            "collector": spec.name,
            "tool": spec.tool,
            "state": state,
            "reason": reason,
            "attach": spec.attach,
            "pid": pid,
            "restarts": self.restarts,
        })
        self.log.info("collector_status", state=state, reason=reason, tool=spec.tool, child_pid=pid)

    def _emit_all(self, events: list[dict]) -> None:
        for ev in events:
            self.writer.emit(ev)
            self.events_total += 1

    def _warnings(self, parser: Parser, logged: list[int]) -> None:
        for w in parser.drain_warnings():
            self.writer.warnings_total += 1
            if logged[0] < WARN_LOG_MAX:
                self.log.warning("parse_warning", msg=w)
            logged[0] += 1

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self.writer.emit_stats()
            self._next_stats = now + self.interval_s

    # ---- one child -----------------------------------------------------
    def _argv(self, spec: CollectorSpec) -> list[str]:
        if spec.setup is not None:
            argv = spec.setup()
            if argv:
                return argv
        path = find_tool(spec.tool)
        if path is None:
            raise FileNotFoundError(f"{spec.tool} is not installed (apt-get install libbpf-tools)")
        return [path, *spec.args(self.interval_s)]

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        stdbuf = shutil.which("stdbuf")
        full = [stdbuf, "-oL", "-eL", *argv] if stdbuf else argv
        p = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True, preexec_fn=_pdeathsig,  # noqa: PLW1509
        )
        self.child = p
        self.child_pids.append(p.pid)
        return p

    def _signal_child(self, sig: int) -> None:
        p = self.child
        if p is not None and p.returncode is None and p.poll() is None:
            try:
                os.killpg(p.pid, sig)  # its own group (start_new_session): only it
            except ProcessLookupError:
                pass

    def _run_child(self, spec: CollectorSpec, argv: list[str]) -> tuple[int, bool, str, float]:
        """Run until the child exits. Returns (returncode, attached, stderr_tail, seconds_run)."""
        parser = spec.parser(self.interval_s)
        p = self._spawn(argv)
        started = time.monotonic()
        self.log.info("child_started", argv=argv, child_pid=p.pid)
        attached = False
        if not spec.banner:
            attached = True
            self._status("running", f"attached: {spec.attach}{self._note}", p.pid, spec)
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ, "out")
        sel.register(p.stderr, selectors.EVENT_READ, "err")
        out_buf = b""
        err_buf = b""
        err_tail = b""
        err_lines = 0
        warn_logged = [0]
        last_out = time.monotonic()
        pending_idle = False
        stop_sent_at: float | None = None
        open_streams = 2
        while open_streams:
            if self._stop and stop_sent_at is None:
                stop_sent_at = time.monotonic()
                self._signal_child(signal.SIGINT)  # tools print their last interval and detach
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > self.stop_timeout_s:
                self.log.warning("child_kill", child_pid=p.pid, why="no exit after SIGINT")
                self._signal_child(signal.SIGKILL)
                stop_sent_at = float("inf")
            for key, _ in sel.select(timeout=0.05):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                if key.data == "out":
                    out_buf += chunk
                    *lines, out_buf = out_buf.split(b"\n")
                    now_ns = time.time_ns()
                    for raw in lines:
                        if not attached:
                            attached = True
                            self._status("running", f"attached: {spec.attach}{self._note}", p.pid, spec)
                        self._emit_all(parser.feed(raw.decode("utf-8", "replace").rstrip("\r"), now_ns))
                    last_out = time.monotonic()
                    pending_idle = True
                    self._warnings(parser, warn_logged)
                else:
                    err_buf += chunk
                    *lines, err_buf = err_buf.split(b"\n")
                    for raw in lines:
                        err_tail = (err_tail + raw + b"\n")[-STDERR_KEEP:]
                        if err_lines < STDERR_LOG_LINES:
                            self.log.info("tool_stderr", line=raw.decode("utf-8", "replace")[:300])
                        err_lines += 1
            if pending_idle and time.monotonic() - last_out >= self.idle_flush_s:
                pending_idle = False
                self._emit_all(parser.idle(time.time_ns()))
                self._warnings(parser, warn_logged)
            self._maybe_stats()
        sel.close()
        p.stdout.close()
        p.stderr.close()
        rc = p.wait()  # reap: no zombie
        clean = out_buf == b""
        if not clean:
            parser.warn(f"output ended inside a line ({len(out_buf)} bytes dropped): {out_buf[:80]!r}")
        self._emit_all(parser.finish(time.time_ns(), clean))
        self._warnings(parser, warn_logged)
        if err_buf:
            err_tail = (err_tail + err_buf)[-STDERR_KEEP:]
        if err_lines > STDERR_LOG_LINES:
            self.log.info("tool_stderr_truncated", lines_not_logged=err_lines - STDERR_LOG_LINES)
        self.log.info("child_exited", child_pid=p.pid, returncode=rc, events_total=self.events_total,
                      lines_skipped=parser.skipped)
        return rc, attached, err_tail.decode("utf-8", "replace"), time.monotonic() - started

    # ---- main loop -----------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
            self._maybe_stats()

    def _use_fallback(self, spec: CollectorSpec, reason: str) -> CollectorSpec | None:
        fb = spec.fallback
        if fb is None:
            return None
        why = fb.check() if fb.check else None
        if why is not None:
            self._status("unavailable", f"{spec.tool}: {reason}; fallback {fb.tool} unusable: {why}", None, spec)
            return None
        self._note = f" (instead of {spec.tool}, which {reason})"
        self.log.info("fallback", tool=spec.tool, reason=reason, fallback=fb.tool)
        return fb

    def run(self) -> int:
        """Returns 0 after a requested stop, 2 when the collector cannot run here."""
        spec = self.spec
        backoff = self.backoff_initial_s
        code = 0
        try:
            while not self._stop:
                try:
                    argv = self._argv(spec)
                except OSError as e:
                    fb = self._use_fallback(spec, str(e)) if isinstance(e, FileNotFoundError) else None
                    if fb is not None:
                        spec = fb
                        continue
                    if self.state != "unavailable":
                        self._status("unavailable", str(e), None, spec)
                    code = 2
                    break
                rc, attached, err, ran_s = self._run_child(spec, argv)
                if self._stop:
                    break
                reason, permanent = classify(err, rc)
                if not attached and permanent:
                    fb = self._use_fallback(spec, reason)
                    if fb is not None:
                        if spec.teardown:
                            spec.teardown()
                        spec = fb
                        continue
                    if self.state != "unavailable":
                        self._status("unavailable", reason, None, spec)
                    code = 2
                    break
                if rc == 0:
                    reason = "exited with code 0 (tool ended on its own)"
                self.restarts += 1
                if ran_s >= self.stable_s:
                    backoff = self.backoff_initial_s
                self._status("exited", f"{reason}; restart {self.restarts} in {backoff:.1f} s", None, spec)
                self._sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
        finally:
            if self.child is not None and self.child.returncode is None:
                self._signal_child(signal.SIGKILL)
                self.child.wait()
            if spec.teardown:
                try:
                    spec.teardown()
                except OSError as e:
                    self.log.warning("teardown_failed", error=str(e))
            if self.state == "running" or (self.state == "exited" and self._stop):
                self._status("exited", "stopped by request", None, spec)
            self.writer.emit_stats()
        return code

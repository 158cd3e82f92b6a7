"""Run libbpf-tools binaries as children and turn their stdout into FIFO events.

One process hosts any number of collectors (`run NAME` hosts one, `run-all`
all of them): a single selector loop reads every child's stdout and stderr,
and each collector has a slot of its own with its own child, parser, restart
count, backoff and collector_status lines.  One LineWriter carries all their
events and the process's producer_stats.

Each child runs under `stdbuf -oL` (the tools use stdio, which is block
buffered on a pipe) in a process group of its own, with PR_SET_PDEATHSIG so
it dies with us even if we are killed -9.  We only ever signal that group,
and only while the child is not yet reaped (so its pid cannot have been
reused).  stdout lines go to the parser; stderr lines go to the log and are
kept (the tail) to explain an exit in words.  A tool's own report of events
it lost ("lost N events on CPU #n", on either stream) is added to the
writer's dropped_tool_lost_total instead, so those losses are counted in
producer_stats and the counters file.  A child that exits is restarted
with exponential backoff (reset once it has run `stable_s`); one that cannot
attach at all is reported unavailable and not retried, or replaced by the
collector's fallback.  collector_status lines record every state change,
producer_stats lines go out every interval and once at exit.

The children also get MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ (unless
already set): libbpf frees the ~10 MB of parsed kernel BTF after loading, but
glibc's dynamic thresholds keep that heap mapped, so the histogram tools
(runqlat, hardirqs, softirqs) would sit at ~13.5 MB RSS instead of ~2.5 MB.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import time

from ..procutil import Backoff, SignalWakeup, die_with_parent_preexec, set_pipe_size
from .base import CollectorSpec, Parser, find_tool
from .reasons import classify

STDERR_KEEP = 32 * 1024
STDERR_LOG_LINES = 40      # per child start; the rest is counted, not logged
WARN_LOG_MAX = 100         # parser warnings logged per child start
REAP_GRACE_S = 2.0         # a child that closed its output but does not exit is killed after this
REAP_POLL_S = 0.02         # how often such a child is looked at until it has exited
# Longest select(): a signal wakes it at once (set_wakeup_fd), so this only bounds how late a
# child that exited without closing its output is seen; LOOP_MAX_WAIT_NO_WAKEUP_S where the
# wakeup fd cannot be set (a host run outside the main thread, as some tests do).
LOOP_MAX_WAIT_S = 1.0
LOOP_MAX_WAIT_NO_WAKEUP_S = 0.1
CHILD_PIPE_SIZE = 1 << 20  # tool stdout pipe: a burst waits here, not in the tool's perf buffer
CHILD_ENV = {"MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_MMAP_THRESHOLD_": "131072"}
# How libbpf-tools report perf buffer overruns (strings of Debian's 0.26 build):
# "lost %llu events on CPU #%d" (tcpstates, tcplife, exitsnoop, biosnoop, ...),
# "Lost %llu events on CPU #%d!" (execsnoop, oomkill, opensnoop, runqslower,
# the last on stdout), ksnoop's "/* lost %llu events */".  Anchored on the
# whole line so a data row that merely contains the words is never taken.
LOST_LINE = re.compile(rb"^\s*(?:/\*\s*)?(?:lost|dropped)\s+(\d+)\s+(?:events?|samples?)"
                       rb"(?:\s+on\s+CPU\s*#?\s*\d+)?\s*!?\s*(?:\*/)?\s*$", re.IGNORECASE)


def tool_lost_count(line: bytes) -> int | None:
    """N from a tool's lost-events line, or None for any other line."""
    m = LOST_LINE.match(line)
    return int(m.group(1)) if m else None

def blockpoll_library() -> str | None:
    """libks_blockpoll.so where the build installed it, beside the kernelsight._scraper module
    (site-packages/kernelsight, editable installs included), or $KS_BLOCKPOLL_LIB; None when it
    was not built (the tools then run as shipped)."""
    override = os.environ.get("KS_BLOCKPOLL_LIB")
    if override:
        return override if os.path.isfile(override) else None
    from importlib.util import find_spec

    dirs = []
    try:
        spec = find_spec("kernelsight._scraper")
        if spec is not None and spec.origin:
            dirs.append(os.path.dirname(spec.origin))
    except (ImportError, ValueError):
        pass
    dirs.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for d in dirs:
        path = os.path.join(d, "libks_blockpoll.so")
        if os.path.isfile(path):
            return path
    return None


def _child_env(spec: CollectorSpec | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in CHILD_ENV.items():
        env.setdefault(k, v)
    lib = blockpoll_library() if spec is not None and spec.perf_poll_ms else None
    if lib is not None:
        # stdbuf adds its own library to LD_PRELOAD, keeping what is there
        env["LD_PRELOAD"] = " ".join(x for x in (lib, env.get("LD_PRELOAD", "")) if x)
        env["KS_BLOCKPOLL_MS"] = str(spec.perf_poll_ms)
    return env


def _nolog():
    from .jsonlog import get_logger
    return get_logger("ks-collectors")


class Slot:
    """One collector inside a Host: its child (if any), parser and restart state."""

    def __init__(self, host: Host, spec: CollectorSpec, log) -> None:
        self.host = host
        self.spec = spec              # the tool in use (the fallback once switched)
        self.name = spec.name
        self.log = log
        self.child: subprocess.Popen | None = None
        self.child_pids: list[int] = []   # every pid we started, for tests and logs
        self.restarts = 0
        self.events_total = 0
        self.tool_lost_total = 0      # events the tool said it lost, over all its runs
        self.state: str | None = None
        self.done = False             # unavailable here: never started again
        self.backoff = Backoff(host.backoff_initial_s, host.backoff_max_s, host.stable_s)
        self.next_start = 0.0         # monotonic; 0 = as soon as possible
        self._note = ""               # appended to the running reason (fallback in use)
        self._reset_child_state()

    def _reset_child_state(self) -> None:
        self.parser: Parser | None = None
        self.argv: list[str] = []
        self.out_buf = b""
        self.err_buf = b""
        self.err_tail = b""
        self.err_lines = 0
        self.warn_logged = [0]
        self.attached = False
        self.started = 0.0
        self.last_out = 0.0
        self.last_out_ns = 0              # wall clock of the last output read: an idle flush's ts
        self.pending_idle = False
        self.open_streams = 0
        self.eof_at: float | None = None
        self.stop_sent_at: float | None = None

    # ---- output --------------------------------------------------------
    def status(self, state: str, reason: str, pid: int | None = None, spec: CollectorSpec | None = None) -> None:
        spec = spec or self.spec
        self.state = state
        self.host.writer.emit({
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
        w = self.host.writer
        for ev in events:
            w.emit(ev)
            self.events_total += 1

    def _warnings(self) -> None:
        for w in self.parser.drain_warnings():
            self.host.writer.warnings_total += 1
            if self.warn_logged[0] < WARN_LOG_MAX:
                self.log.warning("parse_warning", msg=w)
            self.warn_logged[0] += 1

    @property
    def alive(self) -> bool:
        """A child started and not yet reaped."""
        return self.child is not None and self.child.returncode is None

    # ---- start ---------------------------------------------------------
    def _argv(self, spec: CollectorSpec) -> list[str]:
        if spec.setup is not None:
            argv = spec.setup()
            if argv:
                return argv
        path = find_tool(spec.tool)
        if path is None:
            raise FileNotFoundError(f"{spec.tool} is not installed (apt-get install libbpf-tools)")
        return [path, *spec.args(self.host.interval_s)]

    def _use_fallback(self, spec: CollectorSpec, reason: str) -> CollectorSpec | None:
        fb = spec.fallback
        if fb is None:
            return None
        why = fb.check() if fb.check else None
        if why is not None:
            self.status("unavailable", f"{spec.tool}: {reason}; fallback {fb.tool} unusable: {why}", None, spec)
            return None
        self._note = f" (instead of {spec.tool}, which {reason})"
        self.log.info("fallback", tool=spec.tool, reason=reason, fallback=fb.tool)
        return fb

    def _unavailable(self, reason: str) -> None:
        if self.state != "unavailable":
            self.status("unavailable", reason, None, self.spec)
        self.done = True

    def start(self) -> None:
        """Start the child (or fall back, or give up as unavailable)."""
        while True:
            spec = self.spec
            try:
                argv = self._argv(spec)
                break
            except OSError as e:
                fb = self._use_fallback(spec, str(e)) if isinstance(e, FileNotFoundError) else None
                if fb is not None:
                    self.spec = fb
                    continue
                if self.state == "unavailable":  # the fallback's check said why
                    self.done = True
                else:
                    self._unavailable(str(e))
                return
        self._reset_child_state()
        self.argv = argv
        self.parser = spec.parser(self.host.interval_s)
        stdbuf = shutil.which("stdbuf")
        full = [stdbuf, "-oL", "-eL", *argv] if stdbuf else argv
        try:
            p = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True, env=_child_env(self.spec),
                preexec_fn=die_with_parent_preexec(signal.SIGINT),  # noqa: PLW1509 - single-threaded
            )
        except OSError as e:
            self._unavailable(f"cannot start {argv[0]}: {e}")
            return
        self.child = p
        self.child_pids.append(p.pid)
        now = time.monotonic()
        self.started = self.last_out = now
        self.open_streams = 2
        # A tool blocked writing to a full 64 KiB pipe stops draining its perf
        # buffer and loses events; above pipe-max-size the default stays.
        set_pipe_size(p.stdout.fileno(), (CHILD_PIPE_SIZE,))
        os.set_blocking(p.stdout.fileno(), False)
        os.set_blocking(p.stderr.fileno(), False)
        self.host.sel.register(p.stdout, selectors.EVENT_READ, (self, "out"))
        self.host.sel.register(p.stderr, selectors.EVENT_READ, (self, "err"))
        self.log.info("child_started", argv=argv, child_pid=p.pid)
        if not spec.banner:
            self.attached = True
            self.status("running", f"attached: {spec.attach}{self._note}", p.pid, spec)

    # ---- while running -------------------------------------------------
    def on_readable(self, stream, kind: str) -> None:
        try:
            chunk = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.host.sel.unregister(stream)
            self.open_streams -= 1
            if self.open_streams == 0:
                self.eof_at = time.monotonic()
                self.try_reap()
            return
        if kind == "out":
            if self._idle_due(time.monotonic()):
                self._flush_idle()  # the last output's histogram first, with its own time
            self.out_buf += chunk
            *lines, self.out_buf = self.out_buf.split(b"\n")
            now_ns = time.time_ns()
            for raw in lines:
                if self._tool_lost(raw):
                    continue
                if not self.attached:
                    self.attached = True
                    self.status("running", f"attached: {self.spec.attach}{self._note}", self.child.pid, self.spec)
                self._emit_all(self.parser.feed(raw.decode("utf-8", "replace").rstrip("\r"), now_ns))
            self.last_out, self.last_out_ns = time.monotonic(), now_ns
            self.pending_idle = self.idles
            self._warnings()
        else:
            self.err_buf += chunk
            *lines, self.err_buf = self.err_buf.split(b"\n")
            for raw in lines:
                if self._tool_lost(raw):
                    continue
                self.err_tail = (self.err_tail + raw + b"\n")[-STDERR_KEEP:]
                if self.err_lines < STDERR_LOG_LINES:
                    self.log.info("tool_stderr", line=raw.decode("utf-8", "replace")[:300])
                self.err_lines += 1

    def _tool_lost(self, raw: bytes) -> bool:
        n = tool_lost_count(raw)
        if n is None:
            return False
        self.tool_lost_total += n
        self.host.writer.count_tool_lost(n)
        # Logged while rare; the counter carries every one.
        if self.err_lines < STDERR_LOG_LINES:
            self.log.warning("tool_lost_events", events=n, tool_lost_total=self.tool_lost_total)
        self.err_lines += 1
        return True

    def signal_child(self, sig: int) -> None:
        p = self.child
        if p is not None and p.returncode is None and p.poll() is None:
            try:
                os.killpg(p.pid, sig)  # its own group (start_new_session): only it
            except ProcessLookupError:
                pass

    def tick(self, now: float) -> None:
        """Timers: idle flush, stop escalation, reaping, restarts."""
        # Not once the output has closed: then finish() at the reap decides what was complete
        # (a tool that died mid-histogram must not have its cut histogram flushed as idle).
        if self.child is not None and self.parser is not None and self.eof_at is None and self._idle_due(now):
            self._flush_idle()
        if self.alive:
            if self.host.stopping and self.stop_sent_at is None:
                self.stop_sent_at = now
                self.signal_child(signal.SIGINT)  # tools print their last interval and detach
            if self.stop_sent_at is not None and now - self.stop_sent_at > self.host.stop_timeout_s:
                self.log.warning("child_kill", child_pid=self.child.pid, why="no exit after SIGINT")
                self.signal_child(signal.SIGKILL)
                self.stop_sent_at = float("inf")
            if self.eof_at is not None:
                if now - self.eof_at > REAP_GRACE_S:
                    self.log.warning("child_kill", child_pid=self.child.pid, why="output closed but no exit")
                    self.signal_child(signal.SIGKILL)
                    self.eof_at = float("inf")
                self.try_reap()
        elif self.child is None and not self.done and not self.host.stopping and now >= self.next_start:
            self.start()

    @property
    def idles(self) -> bool:
        """The parser has an idle() of its own (a histogram tool), so quiet output means something."""
        return self.parser is not None and type(self.parser).idle is not Parser.idle

    def _idle_due(self, now: float) -> bool:
        """Output pending an idle flush, and quiet for idle_flush_s by now (monotonic)."""
        return self.pending_idle and now - self.last_out >= self.host.idle_flush_s

    def _flush_idle(self) -> None:
        """The parser's idle output (a histogram whose end is not marked), stamped with the time
        its last line was read, not the time of this flush."""
        self.pending_idle = False
        self._emit_all(self.parser.idle(self.last_out_ns))
        self._warnings()

    def next_deadline(self) -> float | None:
        if self.child is not None and self.eof_at is not None:
            return time.monotonic() + REAP_POLL_S  # output closed, exit not reaped yet: look again soon
        if self.child is not None and self.pending_idle:
            return self.last_out + self.host.idle_flush_max_s
        if self.child is None and not self.done and not self.host.stopping:
            return self.next_start
        return None

    def try_reap(self) -> None:
        """After EOF on both streams: reap without blocking, then decide what next."""
        p = self.child
        if p is None or p.poll() is None:
            return
        rc = p.returncode
        p.stdout.close()
        p.stderr.close()
        parser = self.parser
        clean = self.out_buf == b""
        if not clean:
            parser.warn(f"output ended inside a line ({len(self.out_buf)} bytes dropped): {self.out_buf[:80]!r}")
        self._emit_all(parser.finish(time.time_ns(), clean))
        self._warnings()
        if self.err_buf:
            self.err_tail = (self.err_tail + self.err_buf)[-STDERR_KEEP:]
        if self.err_lines > STDERR_LOG_LINES:
            self.log.info("tool_stderr_truncated", lines_not_logged=self.err_lines - STDERR_LOG_LINES)
        self.log.info("child_exited", child_pid=p.pid, returncode=rc, events_total=self.events_total,
                      lines_skipped=parser.skipped, tool_lost_total=self.tool_lost_total)
        attached = self.attached
        err = self.err_tail.decode("utf-8", "replace")
        ran_s = time.monotonic() - self.started
        self.child = None
        self.parser = None
        if self.host.stopping:
            return
        self._after_exit(rc, attached, err, ran_s)

    def _after_exit(self, rc: int, attached: bool, err: str, ran_s: float) -> None:
        spec = self.spec
        reason, permanent = classify(err, rc)
        if not attached and permanent:
            fb = self._use_fallback(spec, reason)
            if fb is not None:
                if spec.teardown:
                    spec.teardown()
                self.spec = fb
                self.next_start = 0.0
                return
            self._unavailable(reason)
            return
        if rc == 0:
            reason = "exited with code 0 (tool ended on its own)"
        self.restarts += 1
        delay_s = self.backoff.failed(ran_s)
        self.status("exited", f"{reason}; restart {self.restarts} in {delay_s:.1f} s", None, spec)
        self.next_start = time.monotonic() + delay_s

    # ---- shutdown ------------------------------------------------------
    def kill_and_reap(self) -> None:
        """Last resort: kill and reap a child still there, close its pipes."""
        p = self.child
        if p is None:
            return
        if p.returncode is None:
            self.signal_child(signal.SIGKILL)
            p.wait()
        for s in (p.stdout, p.stderr):
            try:
                self.host.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.child = None

    def finish(self) -> None:
        """Tear down (tracefs instance) and write the final status."""
        if self.spec.teardown:
            try:
                self.spec.teardown()
            except OSError as e:
                self.log.warning("teardown_failed", error=str(e))
        if self.state == "running" or (self.state == "exited" and self.host.stopping):
            self.status("exited", "stopped by request", None, self.spec)


class Host:
    """Runs several collectors in one process, one selector loop for all their children."""

    def __init__(
        self,
        specs: list[CollectorSpec],
        writer,
        interval_s: int = 1,
        log=None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_s: float = 10.0,
        idle_flush_s: float = 0.15,
        idle_flush_max_s: float = 0.6,
        stop_timeout_s: float = 3.0,
    ) -> None:
        self.writer = writer
        self.interval_s = max(1, int(interval_s))
        self.log = log if log is not None else _nolog()
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s
        # A histogram tool's block is complete once its output has been quiet idle_flush_s; it is
        # flushed at the next wake-up after that (another tool's lines, the stats, its own next
        # block), and woken for only at idle_flush_max_s.  A wake-up of its own 0.15 s after each
        # block was half of this process's wake-ups at idle (four histogram tools a second).
        self.idle_flush_s = idle_flush_s
        self.idle_flush_max_s = max(idle_flush_s, idle_flush_max_s)
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        single = len(specs) == 1
        self.slots = [Slot(self, s, self.log if single else self.log.bind(collector=s.name)) for s in specs]
        self._next_stats = time.monotonic() + self.interval_s

    # ---- control -------------------------------------------------------
    def request_stop(self, *_args) -> None:
        self.stopping = True

    def slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)

    @property
    def child_pids(self) -> list[int]:
        return [pid for s in self.slots for pid in s.child_pids]

    # ---- loop ----------------------------------------------------------
    def _maybe_stats(self, now: float) -> None:
        if now >= self._next_stats:
            self.writer.emit_stats()
            self._next_stats = now + self.interval_s

    def run(self) -> int:
        """Returns 0 after a requested stop, 2 when no hosted collector can run here."""
        stop_seen: float | None = None
        wakeup = SignalWakeup.open()  # a stop request ends the wait at once, with no polling timer
        if wakeup is not None:
            self.sel.register(wakeup.fd, selectors.EVENT_READ, (None, "wakeup"))
        max_wait = LOOP_MAX_WAIT_S if wakeup is not None else LOOP_MAX_WAIT_NO_WAKEUP_S
        try:
            while True:
                now = time.monotonic()
                for s in self.slots:
                    s.tick(now)
                if self.stopping:
                    if stop_seen is None:
                        stop_seen = now
                    if not any(s.child is not None for s in self.slots):
                        return 0
                    if now - stop_seen > self.stop_timeout_s + REAP_GRACE_S + 1.0:
                        self.log.warning("stop_timeout", why="children not reaped in time; killing them")
                        return 0  # the finally below kills and reaps what is left
                elif all(s.done for s in self.slots):
                    return 2
                self._maybe_stats(time.monotonic())
                now = time.monotonic()
                wait = min(max_wait, self._next_stats - now)
                for s in self.slots:
                    d = s.next_deadline()
                    if d is not None:
                        wait = min(wait, d - now)
                for key, _ in self.sel.select(timeout=max(0.0, wait)):
                    slot, kind = key.data
                    if slot is None:  # a signal arrived: its handler has run; drain the pipe
                        wakeup.drain()
                        continue
                    slot.on_readable(key.fileobj, kind)
        finally:
            if wakeup is not None:
                self.sel.unregister(wakeup.fd)
                wakeup.close()
            self.stopping = True
            for s in self.slots:  # first every child, so a failing write cannot leave one behind
                s.kill_and_reap()
            self.sel.close()
            err: BaseException | None = None
            for s in self.slots:
                try:
                    s.finish()
                except Exception as e:  # noqa: BLE001 - e.g. BrokenPipeError: still tear down the rest
                    err = err or e
            self.writer.emit_stats()
            if err is not None:
                raise err


class Runner(Host):
    """One collector in its own process (`run NAME`): a Host with a single slot."""

    def __init__(self, spec: CollectorSpec, writer, interval_s: int = 1, log=None, **kw) -> None:
        super().__init__([spec], writer, interval_s, log=log, **kw)
        self.spec = spec

    @property
    def _slot(self) -> Slot:
        return self.slots[0]

    @property
    def child(self) -> subprocess.Popen | None:
        return self._slot.child

    @property
    def restarts(self) -> int:
        return self._slot.restarts

    @property
    def events_total(self) -> int:
        return self._slot.events_total

    @property
    def state(self) -> str | None:
        return self._slot.state

"""The agent's long-running loop (`ks agent run`, and `python -m kernelsight.agent` under `ks run`).

Without typer: it and the pydantic it imports cost ~9 MiB RSS in a process that lives for
months.  With --serve-metrics the agent also serves /metrics ([exporter] in the config file)
from a thread: one Python process fewer under `ks run` (~17 MiB PSS measured) than a separate
ks-exporter; `ks exporter` still serves on its own.
"""

from __future__ import annotations

import math
import select
import signal
import sys
import time
from pathlib import Path

from .. import db, log as klog
from ..bell import OOM_STORED, BellListener
from ..features.window import FEATURE_STEP_S
from ..procutil import SignalWakeup

# Between steps, without ks-ingest's bell, how often the agent looks for an OOM kill just stored.
URGENT_POLL_S = 0.5


def next_step_at(last_due: float, step: float, now: float) -> tuple[float, int]:
    """The next step's due time on the grid last_due + k*step, the first one not yet past, and how
    many due times were missed on the way."""
    due = last_due + step
    if now <= due:
        return due, 0
    missed = int((now - due) // step) + 1
    return due + missed * step, missed


def urgent_step(agent, log) -> None:
    try:
        agent.step()
    except Exception:  # one bad interval must not stop the agent
        log.exception("agent step failed")


def wait_for_rings(agent, bell: BellListener, wake: SignalWakeup | None, until: float, stopping: list, log) -> None:
    """Until the next step is due: sleep until ks-ingest rings (a commit stored rows), then look
    for urgent work, the OOM kill only when the commit stored one."""
    poller = select.poll()
    poller.register(bell.fileno(), select.POLLIN)
    if wake is not None:
        poller.register(wake.fd, select.POLLIN)
    while not stopping:
        left_s = until - time.monotonic()
        if left_s <= 0:
            return
        # without a signal wake-up (not the main thread), a stop is seen within URGENT_POLL_S
        ready = poller.poll(math.ceil(1000 * (left_s if wake is not None else min(left_s, URGENT_POLL_S))))
        if wake is not None and any(fd == wake.fd for fd, _ in ready):
            wake.drain()
        rings = bell.drain()
        if rings and not stopping and agent.urgent(oom=OOM_STORED in rings):
            urgent_step(agent, log)


def run_agent(data_dir: Path, interval_s: float | None = None, once: bool = False,
              serve_metrics: bool = False) -> int:
    """Evaluate every interval until SIGTERM/SIGINT; 1 when the agent cannot start."""
    from ..config import ConfigError
    from .engine import Agent

    log = klog.configure("ks-agent")
    try:
        agent = Agent(data_dir, log=log)
    except (db.StoreError, ConfigError) as e:
        print(f"ks agent: {e}", file=sys.stderr)
        return 1
    metrics = None
    if serve_metrics:
        from ..exporter import MetricsThread

        cfg = agent.config.exporter  # the config file the agent itself read
        metrics = MetricsThread(data_dir, cfg.address, cfg.port, log)
    step = interval_s or FEATURE_STEP_S
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    bell = wake = None
    if not once:
        try:
            bell = BellListener(data_dir / "run")
        except OSError as e:  # then it polls, as before there was a bell
            log.warning("no bell from ks-ingest: polling for urgent work", error=str(e), every_s=URGENT_POLL_S)
        else:
            wake = SignalWakeup.open()  # a stop ends the wait for a ring at once
            agent.urgent()  # the rowids a ring's victims are new against
    log.info("agent running", interval_s=step, rules=len(agent.rules.rules), serve_metrics=serve_metrics,
             rung_by_ingest=bell is not None)
    next_t = time.monotonic()
    skipped_total = 0
    try:
        while not stopping:
            try:
                agent.step()
            except Exception:  # one bad interval must not stop the agent
                log.exception("agent step failed")
            if once:
                break
            next_t, skipped = next_step_at(next_t, step, time.monotonic())
            if skipped:
                # A step that ran long (the agent starved of CPU: 19 s under stress-ng --switch):
                # the missed ones are not run back to back, each on the same data.
                skipped_total += skipped
                log.warning("agent steps skipped", skipped=skipped, skipped_total=skipped_total)
            if bell is not None:
                wait_for_rings(agent, bell, wake, next_t, stopping, log)
                continue
            polled = time.monotonic()
            while not stopping and time.monotonic() < next_t:
                # wake only to look for urgent work (or to step): a signal ends the sleep's
                # wait no later than URGENT_POLL_S (PEP 475 resumes it after the handler)
                time.sleep(max(0.0, min(polled + URGENT_POLL_S, next_t) - time.monotonic()))
                if time.monotonic() - polled >= URGENT_POLL_S:
                    polled = time.monotonic()
                    if agent.urgent():  # an OOM kill: judge now, not at the next step
                        urgent_step(agent, log)
    finally:
        if bell is not None:
            bell.close()
        if wake is not None:
            wake.close()
        if metrics is not None:
            metrics.close()
        agent.close()
        log.info("agent stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="ks-agent", description="The diagnosis agent as `ks run` starts it "
                                "(the same as `ks agent run`).")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (default $KS_DATA_DIR or ./data)")
    p.add_argument("--interval", type=float, default=None, help="seconds between evaluations")
    p.add_argument("--once", action="store_true", help="evaluate once and exit")
    p.add_argument("--serve-metrics", action="store_true", help="also serve /metrics ([exporter] in the config)")
    a = p.parse_args(argv)
    if a.interval is not None and a.interval < 0.5:
        p.error("--interval must be at least 0.5")
    return run_agent(a.data_dir.absolute() if a.data_dir else db.data_dir(), a.interval, a.once, a.serve_metrics)

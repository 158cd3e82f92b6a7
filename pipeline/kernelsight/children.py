"""What `ks run` starts.  Tracers come from the event schema (each tracer's
schema/events/NAME.json names its executable), collectors from the collectors
registry; any other child is one entry in default_children."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import load as load_config
from .procutil import find_executable
from .schema import load_schema
from .supervisor import INGEST_STOP_TIMEOUT_S, PIDS_FILE, RUN_DIR, ChildSpec


@dataclass
class RunOptions:
    fifo: str
    interval_s: float = 1.0
    tracers: bool = True
    collectors: bool = True
    data_dir: Path | None = None  # where the supervisor writes run/pipeline.pids
    scraper: bool = True          # False: the FIFO is fed by something else (a replay)


def _tracer_specs(opts: RunOptions) -> list[ChildSpec]:
    specs = []
    for exe in load_schema().tracers:
        path = find_executable(exe)
        # Tracers must not trace the pipeline itself: us, and ks-ingest (resolved at start);
        # DATA_DIR/run/pipeline.pids names every pipeline process as it comes and goes.
        argv = [path or exe, "--output", opts.fifo, "--interval", str(opts.interval_s),
                "--exclude-pid", str(os.getpid()), "--exclude-pid", "@pid:ks-ingest"]
        if opts.data_dir is not None:
            argv += ["--exclude-pids-file", str(opts.data_dir / RUN_DIR / PIDS_FILE)]
        reason = None if path else f"{exe} is not built (run make build; it needs clang, bpftool and kernel BTF)"
        specs.append(ChildSpec(exe, argv, "producer", unavailable_reason=reason))
    return specs


# Collectors whose events one of our tracers writes at lower cost: collector -> (tracer, why).
REPLACED_BY_TRACER = {
    "execsnoop": ("ks-exec", "sched:sched_process_exec, no per-syscall cost"),
}
TRACER_TRIAL_TIMEOUT_S = 10.0


def tracer_attaches(exe: str, timeout_s: float = TRACER_TRIAL_TIMEOUT_S) -> bool:
    """Does tracer `exe` load and attach here?  A trial run of a few ms (--duration)."""
    path = find_executable(exe)
    if not path:
        return False
    try:
        r = subprocess.run([path, "--duration", "0.01", "--output", "-"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def replaced_collectors(opts: RunOptions) -> dict[str, str]:
    """{collector: reason} for the collectors `ks run` leaves out because a tracer it
    starts writes the same events (only when it starts tracers and that one attaches);
    without the tracer the collector runs as before."""
    if not opts.tracers:
        return {}
    tracers = load_schema().tracers
    return {name: f"replaced by {exe} ({why})" for name, (exe, why) in REPLACED_BY_TRACER.items()
            if exe in tracers and tracer_attaches(exe)}


def _collector_specs(opts: RunOptions) -> list[ChildSpec]:
    """One process hosts every collector that attaches here; collectors that cannot,
    and the other libbpf-tools that do not attach on this kernel, are listed as
    unavailable with the probe's reason in words (never started), as are the ones
    a tracer replaces (replaced_collectors)."""
    from .collectors import supervisor_specs
    from .collectors.probe import probe_all

    probe = probe_all(include_extra=True)
    specs = [ChildSpec(e["name"], e["argv"], "producer",
                       unavailable_reason=None if e["available"] else e["reason"], details=e["details"])
             for e in supervisor_specs(opts.fifo, opts.interval_s, probe=probe,
                                       replaced=replaced_collectors(opts))]
    specs += [ChildSpec(f"libbpf-tool:{p['name']}", [], "producer", unavailable_reason=p["reason"],
                        details={"tool": p.get("tool"), "attach": None})
              for p in probe if p.get("kind") == "extra" and not p["available"]]
    return specs


def default_children(opts: RunOptions) -> list[ChildSpec]:
    py = sys.executable
    scraper = find_executable("ks-scraper")
    specs = [
        ChildSpec("ks-ingest", [py, "-m", "kernelsight.ingest", "--fifo", opts.fifo], "consumer",
                  stop_timeout_s=INGEST_STOP_TIMEOUT_S),
    ]
    if opts.scraper:
        specs.append(ChildSpec("ks-scraper", [scraper or "ks-scraper", "--output", opts.fifo, "--interval",
                                              str(opts.interval_s)],
                               unavailable_reason=None if scraper else "ks-scraper is not built (run make build)"))
    if opts.tracers:
        specs += _tracer_specs(opts)
    if opts.collectors:
        specs += _collector_specs(opts)
    cfg = load_config()
    # /metrics for Prometheus ([exporter] in the config file), served from a thread of the agent:
    # one Python process fewer than a ks-exporter of its own (see agent/daemon.py).
    specs.append(ChildSpec("ks-agent", [py, "-m", "kernelsight.agent",
                                        *(["--serve-metrics"] if cfg.exporter.enabled else [])], "consumer"))
    if cfg.alerts.alertmanager_url or cfg.alerts.webhook_url:  # observations as alerts ([alerts])
        specs.append(ChildSpec("ks-alerts", [py, "-m", "kernelsight.alerts"], "consumer"))
    if cfg.remote_write.url:  # the exporter's samples pushed by remote-write ([remote_write])
        specs.append(ChildSpec("ks-remote-write", [py, "-m", "kernelsight.remote_write"], "consumer"))
    return specs

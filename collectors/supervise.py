"""What the supervisor starts for the collectors: one process for all of them.

supervisor_specs(fifo, interval_s) returns plain dicts (no dependency on the
supervisor's types) for pipeline/children.py to turn into ChildSpecs:

  {"name": "ks-collectors", "argv": [python, -m, kernelsight.collectors, run-all, --only, a,b,...,
                                     --output, FIFO, --interval, N],
   "available": True, "reason": None,
   "details": {"attach": "<one line for ks status>", "hosts": [names],
               "collectors": {name: {"tool", "attach", "reason"}}}}
  {"name": "collector:NAME", "argv": [... run NAME ...], "available": False,
   "reason": "<why, in words>", "details": {"tool", "attach": None}}      one per unavailable collector

The first entry is always there; when no collector can run here it is itself
unavailable (available False, reason in words) and never started.

`replaced` names collectors whose events another producer already writes
({"execsnoop": "replaced by ks-exec (...)"}): they are left out of --only and
listed as collector:NAME, not started, with that reason.
"""

from __future__ import annotations

import sys

PROCESS_NAME = "ks-collectors"


def _interval_arg(interval_s: float) -> str:
    return str(max(1, int(interval_s)))


def supervisor_specs(fifo: str, interval_s: float, probe: list[dict] | None = None,
                     replaced: dict[str, str] | None = None) -> list[dict]:
    """Entries for the supervisor (see the module doc).  `probe` defaults to probe_all()."""
    if probe is None:
        from .probe import probe_all

        probe = probe_all()
    from .registry import COLLECTORS

    probe = [p for p in probe if p.get("kind", "collector") == "collector" and p["name"] in COLLECTORS]
    replaced = replaced or {}
    probe = [{**p, "available": False, "reason": replaced[p["name"]]} if p["name"] in replaced else p
             for p in probe]
    interval = _interval_arg(interval_s)
    base = [sys.executable, "-m", "kernelsight.collectors"]
    avail = [p for p in probe if p["available"]]
    names = [p["name"] for p in avail]
    hosted = {p["name"]: {"tool": p.get("tool"), "attach": p.get("attach"), "reason": p.get("reason")}
              for p in avail}
    if names:
        summary = f"{len(names)} collectors in one process: {', '.join(names)}"
        reason = None
    else:
        summary = None
        reason = ("no libbpf-tools collector can run on this kernel"
                  + (" (see the collector:* entries)" if probe else ""))
    out = [{
        "name": PROCESS_NAME,
        "argv": [*base, "run-all", "--only", ",".join(names), "--output", fifo, "--interval", interval],
        "available": bool(names),
        "reason": reason,
        "details": {"attach": summary, "hosts": names, "collectors": hosted},
    }]
    for p in probe:
        if p["available"]:
            continue
        out.append({
            "name": f"collector:{p['name']}",
            "argv": [*base, "run", p["name"], "--output", fifo, "--interval", interval],
            "available": False,
            "reason": p["reason"],
            "details": {"tool": p.get("tool"), "attach": None},
        })
    return out

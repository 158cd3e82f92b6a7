"""python -m kernelsight.collectors {run NAME | run-all [--only a,b] | probe | list}"""

from __future__ import annotations

import argparse
import signal
import time
import sys

import orjson


def _log(component: str):
    # kernelsight.log's JSON-lines logger (no structlog: see kernelsight/log.py).
    from .jsonlog import get_logger
    return get_logger(component)


def _serve(host, writer, log) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, host.request_stop)
    try:
        code = host.run()
    except BrokenPipeError:
        code = 0  # stdout reader went away
    finally:
        writer.close()
    log.info("runner_exit", code=code, child_pids=host.child_pids)
    return code


def cmd_run(a: argparse.Namespace) -> int:
    from kernelsight.fifo import FifoError, LineWriter, default_fifo_path

    from .registry import COLLECTORS
    from .runner import Runner

    spec = COLLECTORS.get(a.name)
    if spec is None:
        print(f"unknown collector {a.name!r}; known: {', '.join(COLLECTORS)}", file=sys.stderr)
        return 64
    log = _log(f"ks-collector-{a.name}").bind(collector=a.name)
    output = a.output or default_fifo_path()
    try:
        writer = LineWriter(output, producer=f"ks-collector-{a.name}", block_ms=100)
    except FifoError as e:
        log.error("bad_output", error=str(e))
        return 1
    return _serve(Runner(spec, writer, interval_s=a.interval, log=log), writer, log)


def cmd_run_all(a: argparse.Namespace) -> int:
    """Every requested collector in this one process (one LineWriter, one producer_stats)."""
    from kernelsight.fifo import FifoError, LineWriter, default_fifo_path

    from .registry import COLLECTORS
    from .runner import Host

    log = _log("ks-collectors")
    unavailable: list[dict] = []
    if a.only is not None:
        names = list(dict.fromkeys(n.strip() for n in a.only.split(",") if n.strip()))
        unknown = [n for n in names if n not in COLLECTORS]
        if unknown or not names:
            print(f"unknown collector(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(COLLECTORS)}",
                  file=sys.stderr)
            return 64
    else:
        from .probe import probe_all

        res = probe_all()
        names = [r["name"] for r in res if r["available"] and r["name"] in COLLECTORS]
        unavailable = [r for r in res if not r["available"] and r["name"] in COLLECTORS]
    output = a.output or default_fifo_path()
    try:
        writer = LineWriter(output, producer="ks-collectors", block_ms=100)
    except FifoError as e:
        log.error("bad_output", error=str(e))
        return 1

    for r in unavailable:  # probed here and left out: visible, not silent
        spec = COLLECTORS[r["name"]]
        writer.emit({"type": "collector_status", "ts": time.time_ns(), "collector": spec.name, "tool": spec.tool,
                     "state": "unavailable", "reason": r["reason"], "attach": spec.attach, "pid": None,
                     "restarts": 0})
        log.info("collector_status", collector=spec.name, state="unavailable", reason=r["reason"])
    if not names:
        log.error("no_collectors", why="no collector can run on this kernel")
        writer.emit_stats()
        writer.close()
        return 2
    log.info("run_all", collectors=names, interval_s=a.interval, output=output)
    host = Host([COLLECTORS[n] for n in names], writer, interval_s=a.interval, log=log)
    return _serve(host, writer, log)


def cmd_probe(a: argparse.Namespace) -> int:
    from .probe import probe_all

    res = probe_all(timeout_s=a.timeout, use_cache=not a.no_cache, include_extra=a.all)
    if a.json:
        sys.stdout.buffer.write(orjson.dumps(res, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for r in res:
            state = "available  " if r["available"] else "unavailable"
            kind = "" if r.get("kind", "collector") == "collector" else " (not wrapped)"
            print(f"{r['name']:<12} {state} {r['tool']:<24} {r['reason']}{kind}")
    return 0


def cmd_list(_a: argparse.Namespace) -> int:
    from .registry import COLLECTORS

    for s in COLLECTORS.values():
        fb = f" (fallback: {s.fallback.tool})" if s.fallback else ""
        print(f"{s.name:<12} {s.tool:<12} {','.join(s.event_types):<16} {s.doc}{fb}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernelsight.collectors")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one collector until stopped")
    r.add_argument("name")
    r.add_argument("--output", default=None, help="FIFO path, or - for stdout (default: $KS_FIFO or /tmp/kernelsight)")
    r.add_argument("--interval", type=float, default=1.0, help="seconds per histogram/summary and producer_stats")
    r.set_defaults(fn=cmd_run)
    ra = sub.add_parser("run-all", help="run several collectors in one process until stopped")
    ra.add_argument("--only", default=None, metavar="A,B,...",
                    help="comma-separated collectors to host (default: every one the probe finds available)")
    ra.add_argument("--output", default=None, help="FIFO path, or - for stdout (default: $KS_FIFO or /tmp/kernelsight)")
    ra.add_argument("--interval", type=float, default=1.0, help="seconds per histogram/summary and producer_stats")
    ra.set_defaults(fn=cmd_run_all)
    p = sub.add_parser("probe", help="which collectors attach on this kernel, and why not")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also probe libbpf-tools we do not wrap")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(fn=cmd_probe)
    sub.add_parser("list", help="known collectors").set_defaults(fn=cmd_list)
    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())

"""python -m kernelsight.collectors {run NAME | probe | list}"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import orjson


def _log(component: str):
    try:
        from kernelsight.log import configure
        return configure(component)
    except ImportError:  # pragma: no cover - older trees without kernelsight.log
        import structlog
        return structlog.get_logger().bind(component=component, pid=os.getpid())


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
    runner = Runner(spec, writer, interval_s=a.interval, log=log)
    signal.signal(signal.SIGTERM, runner.request_stop)
    signal.signal(signal.SIGINT, runner.request_stop)
    signal.signal(signal.SIGHUP, runner.request_stop)
    try:
        code = runner.run()
    except BrokenPipeError:
        code = 0  # stdout reader went away
    finally:
        writer.close()
    return code


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

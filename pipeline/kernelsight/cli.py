"""`ks`: run the pipeline and look at it."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Optional

import orjson
import typer

from . import db
from .fifo import default_fifo_path
from .supervisor import STATUS_FILE, pipeline_lock_holder, proc_start_time

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True,
                  help="KernelSight: kernel telemetry, stored, learned and explained.")


def _data_dir(d: Optional[Path]) -> Path:
    return d.absolute() if d else db.data_dir()


@app.command(help="Start the whole pipeline in the foreground (what `make run` calls); Ctrl-C or SIGTERM stops it.\n\n"
             "Example: ks run --data-dir ./data")
def run(
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    fifo: Optional[str] = typer.Option(None, help="FIFO path (default $KS_FIFO or /tmp/kernelsight)"),
    interval: float = typer.Option(1.0, min=0.1, help="collection interval in seconds"),
    tracers: bool = typer.Option(True, help="start the eBPF tracers"),
    collectors: bool = typer.Option(True, help="start the libbpf-tools collectors"),
    scraper: bool = typer.Option(True, help="start ks-scraper (--no-scraper: the FIFO is fed by something else, "
                                 "e.g. a replay)"),
) -> None:
    # The supervisor lives for months: it runs as `python -m kernelsight.supervisor` (same pid), which
    # does not hold typer and the pydantic it imports (~9 MiB RSS measured) for the options read here.
    argv = [sys.executable, "-m", "kernelsight.supervisor", "--data-dir", str(_data_dir(data_dir)),
            "--fifo", fifo or default_fifo_path(), "--interval", repr(interval)]
    argv += [f"--no-{name}" for name, on in (("tracers", tracers), ("collectors", collectors),
                                             ("scraper", scraper)) if not on]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def read_status(directory: Path) -> dict:
    """Supervisor state, the pipeline lock, the per-type counters and the per-producer
    line accounting, from status.json, DATA_DIR/run and the DB."""
    out: dict = {"data_dir": str(directory), "supervisor": "not running", "children": [], "counters": {},
                 "pipeline_lock_pid": pipeline_lock_holder(directory), "accounting": None,
                 "ingest": _ingest_status(directory), "storage": None, **_exports_status(directory)}
    try:
        st = orjson.loads((directory / STATUS_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        st = None
    if st:
        alive = proc_start_time(st["supervisor_pid"]) == st.get("supervisor_start_ticks")
        out["supervisor"] = "running" if alive and not st.get("stopping") else "stopped"
        out["supervisor_pid"] = st["supervisor_pid"]
        out["status_age_s"] = round(time.time() - st["updated_at"], 1)
        out["children"] = st["children"]
        if not alive:
            for c in out["children"]:
                if c["state"] == "running":
                    c["state"] = "stopped"
                    c["pid"] = None
    try:
        conn = db.connect_readonly(db.db_path(directory))
    except db.StoreError:
        return out
    from .storage import storage_status

    out["storage"] = storage_status(directory)
    try:
        out["counters"] = _counters(conn)
        out["accounting"] = _accounting(directory, conn)
        modes = _tracer_modes(conn)
        for c in out["children"]:
            if c["name"] in modes:
                c["attach"] = modes[c["name"]]
    except sqlite3.Error as e:
        out["db_error"] = str(e)
    finally:
        conn.close()
    return out


def _ingest_status(directory: Path) -> dict | None:
    """ks-ingest's own word on storing: disk full, failing, paused, or storing."""
    from .ingest import describe_status, read_status as read_ingest_status

    st = read_ingest_status(directory)
    if st is not None:
        st["summary"] = describe_status(st)
    return st


def _counters(conn: sqlite3.Connection) -> dict:
    row = conn.execute("SELECT pid FROM pipeline_stats WHERE stage='ingest' ORDER BY id DESC LIMIT 1").fetchone()
    if not row:
        return {}
    rows = conn.execute(
        "SELECT event_type, received, stored, rejected, pending FROM pipeline_stats "
        "WHERE id IN (SELECT MAX(id) FROM pipeline_stats WHERE pid=? GROUP BY event_type) ORDER BY event_type",
        (row[0],),
    ).fetchall()
    return {t: {"received": r, "stored": s, "rejected": j, "pending": p} for t, r, s, j, p in rows}


def _accounting(directory: Path, conn: sqlite3.Connection) -> dict | None:
    from . import accounting

    try:
        return accounting.account(directory, conn).to_dict()
    except OSError as e:  # e.g. the run dir belongs to another user
        return {"error": str(e), "producers": []}


def _tracer_modes(conn: sqlite3.Connection) -> dict:
    try:
        rows = conn.execute(
            "SELECT tracer, attach_mode FROM tracer_stats WHERE id IN (SELECT MAX(id) FROM tracer_stats GROUP BY tracer)"
        ).fetchall()
    except sqlite3.OperationalError:  # no tracer schema in this build
        return {}
    return {f"ks-{t.replace('_', '-')}" if not t.startswith("ks-") else t: m for t, m in rows}


@app.command(help="Show each child's state, pid, restarts and attach mode, the pipeline lock, the per-type "
             "counters and, per producer, lines written against lines stored (written = stored + rejected + "
             "in flight; drops by cause).\n\nExamples: ks status;  ks status --json")
def status(
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    s = read_status(_data_dir(data_dir))
    if as_json:
        sys.stdout.write(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print(f"supervisor: {s['supervisor']}" + (f" (pid {s['supervisor_pid']})" if "supervisor_pid" in s else ""))
    lock_pid = s.get("pipeline_lock_pid")
    print(f"pipeline lock held by pid {lock_pid}" if lock_pid else "pipeline lock: free (no `ks run` on this data dir)")
    if s.get("ingest"):
        print(f"ingest: {s['ingest']['summary']}")
    if s.get("storage"):
        from .storage import status_lines

        print("\n".join(status_lines(s["storage"])))
    if s["children"]:
        print(f"{'child':<28} {'state':<12} {'pid':>7} {'restarts':>8}  attach / reason")
        for c in s["children"]:
            extra = c.get("attach") or c.get("reason") or ""
            pid = c["pid"] if c["pid"] else "-"
            print(f"{c['name']:<28} {c['state']:<12} {pid:>7} {c['restarts']:>8}  {extra}")
    if s["counters"]:
        print(f"\n{'event type':<24} {'received':>10} {'stored':>10} {'rejected':>9} {'pending':>8}")
        for t, c in s["counters"].items():
            print(f"{t:<24} {c['received']:>10} {c['stored']:>10} {c['rejected']:>9} {c['pending']:>8}")
    elif s["supervisor"] != "running":
        print("no counters yet: start the pipeline with `make run`")
    _print_accounting(s.get("accounting"))
    _print_exports(s)


def _exports_status(directory: Path) -> dict:
    """ks-exporter's endpoint and ks-alerts' delivery counters (DATA_DIR/run/*.json)."""
    from .alerts import read_status as alerts_status
    from .exporter import read_status as exporter_status

    ex = exporter_status(directory)
    if ex and ex.get("listening") and not _alive(ex.get("pid")):
        ex = {**ex, "listening": None, "error": "not running"}
    al = alerts_status(directory)
    if al:
        al = {"receivers": {n: {k: v for k, v in r.items() if k != "pending"} | {"pending": len(r.get("pending", {}))}
                            for n, r in al.get("receivers", {}).items()},
              "firing": len(al.get("firing", {})), "updated_at": al.get("updated_at")}
    from .remote_write import read_status as rw_status

    rw = rw_status(directory)
    if rw and not _alive(rw.get("pid")):
        rw = {**rw, "running": False}
    return {"exporter": ex, "alerts": al, "remote_write": rw}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _print_exports(s: dict) -> None:
    ex, al = s.get("exporter"), s.get("alerts")
    if ex:
        print(f"\nexporter: serving {ex['listening']}" if ex.get("listening") else f"\nexporter: {ex.get('error')}")
    if al:
        for name, r in al["receivers"].items():
            err = f"; last error {r['last_error']}" if r.get("last_error") else ""
            print(f"alerts -> {name}: sent {r['sent_alerts']} alerts in {r['sent_batches']} batches, "
                  f"{r['failed_attempts']} failed attempts, {r['dropped_batches']} batches dropped, "
                  f"{r['pending']} pending{err}")
        print(f"alerts firing: {al['firing']}")
    rw = s.get("remote_write")
    if rw:
        err = f"; last error {rw['last_error']}" if rw.get("last_error") else ""
        stopped = " (not running)" if rw.get("running") is False else ""
        print(f"remote-write -> {rw.get('url')}{stopped}: {rw['samples_sent']} samples sent "
              f"({rw['bytes_sent']} bytes), {rw['samples_dropped']} dropped at the queue bound, "
              f"{rw['samples_rejected']} rejected, {rw['failed_attempts']} failed attempts; queue "
              f"{rw['queue_segments']} batches, {rw['queue_bytes']} of {rw['queue_max_bytes']} bytes{err}")


def _print_accounting(a: dict | None) -> None:
    if not a:
        return
    if a.get("error"):
        print(f"\nline accounting unavailable: {a['error']}")
        return
    if not a["producers"]:
        return
    print(f"\n{'producer':<26} {'status':<12} {'written':>10} {'stored':>10} {'rejected':>8} {'dropped':>8} "
          f"{'in flight':>9} {'unaccounted':>11}  running pids")
    for p in a["producers"]:
        pids = ",".join(map(str, p["running_pids"])) or "-"
        print(f"{p['producer']:<26} {p['status']:<12} {p['written']:>10} {p['stored']:>10} {p['rejected']:>8} "
              f"{p['dropped_total']:>8} {p['in_flight']:>9} {p['unaccounted']:>11}  {pids}")
    for p in a["producers"]:
        causes = ", ".join(f"{k} {v}" for k, v in p["dropped"].items() if v)
        if causes:
            print(f"  {p['producer']} dropped: {causes}")
    if a.get("unattributed_rejected"):
        print(f"  rejected lines of no known producer: {a['unattributed_rejected']}")
    if a.get("pipe_bytes"):
        print(f"  bytes waiting in the FIFO: {a['pipe_bytes']}")


@app.command(help="Print the event and table reference (markdown), generated from schema/events/*.json.\n\n"
             "Example: ks schema > docs.md")
def schema() -> None:
    from .schema import markdown

    sys.stdout.write(markdown())


@app.command("remote-write", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False,
             help="Push the exporter's samples to a Prometheus remote-write receiver through a bounded on-disk "
             "queue ([remote_write] in the config file; what `ks run` starts as ks-remote-write; options: "
             "--data-dir, --config, --url).\n\nExample: ks remote-write --url http://prom:9090/api/v1/write")
def remote_write_cmd(ctx: typer.Context) -> None:
    from .remote_write import main as rw_main

    raise typer.Exit(rw_main(ctx.args))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False,
             help="Serve the pipeline's state as Prometheus metrics on /metrics (what `ks run` starts as "
             "ks-exporter; same options: --data-dir, --address, --port, --once).\n\nExample: ks exporter --once")
def exporter(ctx: typer.Context) -> None:
    from .exporter import main as exporter_main

    raise typer.Exit(exporter_main(ctx.args))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False,
             help="Send observations as alerts to Alertmanager and/or a webhook ([alerts] in the config file; "
             "what `ks run` starts as ks-alerts).\n\nExample: ks alerts --data-dir ./data")
def alerts(ctx: typer.Context) -> None:
    from .alerts import main as alerts_main

    raise typer.Exit(alerts_main(ctx.args))


from .agent.cli import app as agent_app  # noqa: E402

app.add_typer(agent_app, name="agent")

SEVERITY_MARK = {"critical": "!!!", "high": "!! ", "medium": "!  ", "low": ".  "}


@app.command(help="List open and recent observations, newest first.\n\n"
             "Examples: ks observations;  ks observations --all --json;  ks observations --since 3600")
def observations(
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    all_: bool = typer.Option(False, "--all", help="closed ones too (default: open + closed in the last hour)"),
    since: Optional[float] = typer.Option(None, help="only those seen in the last SINCE seconds"),
    as_json: bool = typer.Option(False, "--json", help="the full observation JSON"),
    limit: int = typer.Option(50, min=1),
) -> None:
    from .agent.store import list_observations

    try:
        conn = db.connect_readonly(db.db_path(_data_dir(data_dir)))
    except db.StoreError as e:
        print(f"ks observations: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    window = since if since is not None else (None if all_ else 3600)
    obs = list_observations(conn, since_s=int(time.time() - window) if window else None, limit=limit)
    if as_json:
        sys.stdout.write(orjson.dumps(obs, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not obs:
        print("no observations" + (f" in the last {int(window)} s" if window else ""))
        return
    for o in obs:
        when = time.strftime("%H:%M:%S", time.localtime(o["first_seen"]))
        print(f"{SEVERITY_MARK.get(o['severity'], '   ')} #{o['id']:<4} {when} {o['status']:<6} "
              f"{o['severity']:<8} {o['label']}")
        print(f"           {o['observation']['summary']}")
        hints = o["observation"]["reasoning_hints"]
        if hints:
            print(f"           next: {hints[0]}")


@app.command(help="Live terminal view: host gauges with 2-minute sparklines, open observations with evidence and "
             "hints, top processes by CPU, memory and disk I/O (keys: q quit, t process tree, s snapshot).\n\n"
             "Examples: ks top;  ks top --pid 1234;  ks top --once;  ks top --snapshot top.txt")
def top(
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    interval: float = typer.Option(1.0, min=0.2, help="refresh every INTERVAL seconds"),
    pid: Optional[int] = typer.Option(None, min=1, help="watch this process: its details and threads"),
    tree: bool = typer.Option(False, "--tree", help="start in the process tree view"),
    once: bool = typer.Option(False, "--once", help="print one frame as text and exit"),
    snapshot: Optional[Path] = typer.Option(None, help="write one frame as text to SNAPSHOT and exit"),
    width: Optional[int] = typer.Option(None, min=60, help="--once/--snapshot width (default: terminal or 160)"),
    height: Optional[int] = typer.Option(None, min=20, help="--once/--snapshot height (default: terminal or 50)"),
    fleet: Optional[str] = typer.Option(None, envvar="KS_TOP_FLEET", help="a fleet panel from this central Prometheus (what `ks fleet` "
                                        "shows, refreshed every 15 s)"),
) -> None:
    from .top import Top, render_text, run_live

    try:
        t = Top(db.db_path(_data_dir(data_dir)), interval, pid, tree, fleet_url=fleet)
    except (db.StoreError, sqlite3.Error) as e:
        print(f"ks top: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if once or snapshot is not None:
        try:
            t.warm()
            size = os.get_terminal_size() if sys.stdout.isatty() else os.terminal_size((160, 50))
            frame = render_text(t.view, width or size.columns, height or size.lines)
        finally:
            t.close()
        if snapshot is not None:
            snapshot.write_text(frame)
            print(f"ks top: snapshot written to {snapshot}", file=sys.stderr)
        if once:
            sys.stdout.write(frame)
        return
    if t.view.fleet is not None:
        t.view.fleet.start()
    raise typer.Exit(run_live(t, Path.cwd()))


@app.command(help="The cgroups of the scraper's latest read, closest to their memory limit first: path, unit or "
             "container, memory, effective limit and % of it, swap, memory pressure (some avg10), CPU throttling % "
             "over ~10 s, and open observations that mention the path.\n\n"
             "Examples: ks cgroups;  ks cgroups --json")
def cgroups(
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    limit: int = typer.Option(64, min=1, help="at most this many cgroups"),
) -> None:
    from .cgroups import latest_cgroups, render_table

    try:
        conn = db.connect_readonly(db.db_path(_data_dir(data_dir)))
    except db.StoreError as e:
        print(f"ks cgroups: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    rows = latest_cgroups(conn)[:limit]
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not rows:
        print("no cgroup lines stored yet (ks-scraper writes them every interval)")
    else:
        print(render_table(rows))


@app.command(help="Incident report of observations in a period, as md, html or json.\n\n"
             "Example: ks report --since 3600 --format html --out report.html")
def report(
    data_dir: Optional[Path] = typer.Option(None, help="data directory (default $KS_DATA_DIR or ./data)"),
    since: Optional[float] = typer.Option(None, help="seconds back from now (default: everything)"),
    until: Optional[float] = typer.Option(None, help="seconds back from now where the period ends"),
    fmt: str = typer.Option("md", "--format", help="md, html or json"),
    out: Optional[Path] = typer.Option(None, help="write here instead of stdout"),
) -> None:
    from .report import render_report

    if fmt not in ("md", "html", "json"):
        print("ks report: --format must be md, html or json", file=sys.stderr)
        raise typer.Exit(2)
    if since is not None and until is not None and until >= since:
        print("ks report: --until must be fewer seconds back than --since", file=sys.stderr)
        raise typer.Exit(2)
    now = time.time()
    try:
        text = render_report(_data_dir(data_dir), fmt, since_s=now - since if since else None,
                             until_s=now - until if until else None)
    except db.StoreError as e:
        print(f"ks report: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if out:
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text + "\n")


@app.command(help="The fleet as the central Prometheus sees it (series pushed by ks-remote-write): hosts reporting "
             "and silent, hosts with open observations, the hosts deviating most from their own baselines, and "
             "observations opening on several hosts at once.\n\nExample: ks fleet --prometheus http://prom:9090")
def fleet(
    prometheus: str = typer.Option("http://127.0.0.1:9090", envvar="KS_PROMETHEUS_URL",
                                   help="the central Prometheus (its HTTP API)"),
    window: float = typer.Option(3600.0, min=1, help="seconds back: hosts heard from, onsets looked for"),
    silent_after: float = typer.Option(60.0, min=1, help="a host heard from less recently than this is silent"),
    baseline: float = typer.Option(3600.0, min=60, help="seconds of each host's own baseline for deviation"),
    within: float = typer.Option(60.0, min=1, help="onsets this close together are one coincidence"),
    min_hosts: int = typer.Option(2, min=2, help="hosts a coincidence needs"),
    top: int = typer.Option(5, min=1, help="deviating hosts listed"),
    as_json: bool = typer.Option(False, "--json", help="the report as JSON"),
) -> None:
    from .fleet import Prom, PromError, render, report

    try:
        rep = report(Prom(prometheus), window_s=window, silent_after_s=silent_after, baseline_s=baseline,
                     within_s=within, min_hosts=min_hosts, top=top)
    except PromError as e:
        print(f"ks fleet: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(rep, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(rep))


# `ks storage status|rollup|prune` and `ks config show` (storage/cli.py)
from .storage.cli import app as _storage_app, config_app as _config_app  # noqa: E402 - after the commands above

app.add_typer(_storage_app, name="storage")
app.add_typer(_config_app, name="config")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

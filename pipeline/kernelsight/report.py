"""Incident reports: a timeline of observations with their evidence.

`ks report` and the agent's export_report tool render the same content as
Markdown, JSON or one self-contained HTML file.
"""

from __future__ import annotations

import datetime as dt
import html
import sqlite3
import time
from pathlib import Path

import orjson

from . import db
from .agent.store import list_observations


def _when(s: int | None) -> str:
    return "-" if s is None else dt.datetime.fromtimestamp(s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def collect(data_dir: Path, since_s: float | None = None, until_s: float | None = None) -> dict:
    conn = db.connect_readonly(db.db_path(data_dir))
    try:
        obs = list_observations(conn, since_s=int(since_s) if since_s else None, limit=1000)
        if until_s is not None:
            obs = [o for o in obs if o["first_seen"] <= until_s]
        obs.sort(key=lambda o: o["first_seen"])
        try:
            fc = conn.execute("SELECT ts, risk, headroom_pct, seconds_to_exhaustion, confidence, reason FROM "
                              "oom_forecasts ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            fc = None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        try:
            rules = dict(conn.execute("SELECT id, rule FROM observations").fetchall())
        except sqlite3.OperationalError:
            rules = {}
    finally:
        conn.close()
    for o in obs:
        o["rule"] = rules.get(o["id"])
    forecast = None
    if fc and fc[1] != "NORMAL":
        forecast = dict(zip(("ts", "risk", "headroom_pct", "seconds_to_exhaustion", "confidence", "reason"), fc))
    return {"generated_at": int(time.time()), "host": meta.get("host"), "kernel": meta.get("kernel"),
            "since": since_s, "until": until_s, "observations": obs, "oom_forecast": forecast}


def _md(r: dict) -> str:
    out = [f"# KernelSight report: {r['host']} ({r['kernel']})", "",
           f"Generated {_when(r['generated_at'])}; {len(r['observations'])} observation(s).", ""]
    if r["oom_forecast"]:
        f = r["oom_forecast"]
        out += [f"**OOM forecast: {f['risk']}** — {f['reason']}", ""]
    if not r["observations"]:
        out.append("No observations in this period.")
    for o in r["observations"]:
        ob = o["observation"]
        d = ob["details"]
        out += [f"## [{o['severity'].upper()}] {o['label']} — {o['status']}", "",
                f"{ob['summary']}", "",
                f"- first seen {_when(o['first_seen'])}, last seen {_when(o['last_seen'])}"
                + (f", closed {_when(o['closed_at'])}" if o["closed_at"] else "")
                + f"; persistence: {o['persistence']}",
                f"- evidence: `{d['metric']}` = {d['current_value']} (baseline mean {d['baseline_mean']}, "
                f"z {d['zscore']}, trend {d['trend']})"]
        if ob["context"]["correlated_signals"]:
            out.append("- correlated signals: " + "; ".join(ob["context"]["correlated_signals"]))
        if ob["context"]["recent_changes"]:
            out.append("- recent changes: " + "; ".join(ob["context"]["recent_changes"]))
        if o["processes"]:
            out.append("- processes: " + "; ".join(
                f"{p.get('comm')}" + (f" (pid {p['pid']})" if "pid" in p else "") for p in o["processes"]))
        out.append("- hints: " + "; ".join(ob["reasoning_hints"]))
        if o.get("plotted_features"):
            out.append("- implicated features (plotted in the HTML report): "
                       + ", ".join(f"`{n}`" for n in o["plotted_features"]))
        if o.get("narrative"):
            out += ["", "> " + o["narrative"].replace("\n", "\n> ")]
        out.append("")
    return "\n".join(out)


def _figures(items: list) -> str:
    """<figure>s for a list of base64 PNG strings or report_plots.Plot objects."""
    e = html.escape
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(f"<figure><img alt='plot' src='data:image/png;base64,{it}'></figure>")
        elif it.png is None:
            out.append(f"<p class='noplot'>{e(it.feature)}: {e(it.note)}</p>")
        else:
            out.append(f"<figure><img alt='{e(it.feature)}' src='data:image/png;base64,{it.b64}'>"
                       "</figure>")
    return "".join(out)


def _html(r: dict, images: dict[int, list] | None = None) -> str:
    """images: {observation id: [base64 PNG or report_plots.Plot, ...]} shown under each observation."""
    e = html.escape
    images = images or {}
    parts = [f"<h1>KernelSight report: {e(str(r['host']))} ({e(str(r['kernel']))})</h1>",
             f"<p>Generated {_when(r['generated_at'])}; {len(r['observations'])} observation(s).</p>"]
    if r["oom_forecast"]:
        parts.append(f"<p class='fc'><b>OOM forecast: {e(r['oom_forecast']['risk'])}</b> — "
                     f"{e(r['oom_forecast']['reason'])}</p>")
    for o in r["observations"]:
        ob = o["observation"]
        d = ob["details"]
        rows = [("first seen", _when(o["first_seen"])), ("last seen", _when(o["last_seen"])),
                ("closed", _when(o["closed_at"])), ("persistence", o["persistence"]),
                ("evidence", f"{d['metric']} = {d['current_value']} (baseline {d['baseline_mean']}, z {d['zscore']}, "
                             f"trend {d['trend']})"),
                ("correlated signals", "; ".join(ob["context"]["correlated_signals"]) or "-"),
                ("recent changes", "; ".join(ob["context"]["recent_changes"]) or "-"),
                ("processes", "; ".join(f"{p.get('comm')}" + (f" (pid {p['pid']})" if "pid" in p else "")
                                        for p in o["processes"]) or "-")]
        table = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
        hints = "".join(f"<li>{e(h)}</li>" for h in ob["reasoning_hints"])
        narrative = (f"<blockquote class='narrative'>{e(o['narrative'])}</blockquote>"
                     if o.get("narrative") else "")
        imgs = _figures(images.get(o["id"], []))
        if o.get("plot_source") and imgs:
            imgs = f"<p class='src'>Plots: {e(o['plot_source'])}; shaded: the observation window.</p>" + imgs
        parts.append(f"<section class='sev-{e(o['severity'])}'><h2>[{e(o['severity'].upper())}] {e(o['label'])} "
                     f"<small>{e(o['status'])}</small></h2><p>{e(ob['summary'])}</p><table>{table}</table>"
                     f"<ul>{hints}</ul>{narrative}{imgs}</section>")
    if not r["observations"]:
        parts.append("<p>No observations in this period.</p>")
    css = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
           "section{border-left:6px solid #999;padding:0 1em;margin:1.5em 0}"
           ".sev-critical{border-color:#b00}.sev-high{border-color:#e60}.sev-medium{border-color:#db0}"
           ".sev-low{border-color:#6a6}th{text-align:left;padding-right:1em;vertical-align:top}"
           "img{max-width:100%;display:block;margin:.5em 0}.fc{background:#fee;padding:.5em}"
           "figure{margin:.5em 0}figcaption{font-size:.8em;color:#666}.src,.noplot{font-size:.85em;color:#555}"
           ".narrative{white-space:pre-wrap;background:#f4f4f8;padding:.5em;margin:0}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>KernelSight report</title>" \
           f"<style>{css}</style></head><body>{''.join(parts)}</body></html>"


def render_report(data_dir: Path, fmt: str = "md", since_s: float | None = None, until_s: float | None = None,
                  images: dict | None = None, plots: bool = True) -> str:
    """The report as text.  html: with one plot per implicated feature of each observation (report_plots)
    unless images are given or plots=False; md/json list the implicated features."""
    r = collect(data_dir, since_s, until_s)
    if plots and r["observations"]:
        from .report_plots import plot_observations

        render = fmt == "html" and images is None
        ps = plot_observations(data_dir, r["observations"], render=render)
        for o in r["observations"]:
            p = ps.get(o["id"])
            o["plotted_features"] = p.features if p else []
            if render and p:
                o["plot_source"] = p.source
        if render:
            images = {i: p.plots for i, p in ps.items()}
    if fmt == "json":
        return orjson.dumps(r, option=orjson.OPT_INDENT_2).decode()
    if fmt == "md":
        return _md(r)
    if fmt == "html":
        return _html(r, images)
    raise ValueError(f"unknown format {fmt!r}: use md, json or html")

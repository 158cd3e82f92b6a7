"""Incident reports with plots: the HTML report of a real (replayed) incident, rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, tool
from kernelsight import db
from kernelsight.agent.engine import Agent
from kernelsight.features.baseline import learn_baseline, save_baseline
from kernelsight.features.catalog import FEATURE_STEP_S, FEATURE_WINDOW_S
from kernelsight.features.engine import compute_range
from kernelsight.report import render_report
from kernelsight.report_plots import implicated_features, plot_observations

CAPTURE = REPO / "tests" / "fixtures" / "agent" / "memory_pressure.jsonl"
NS = 10**9
WINDOW_NS = int(FEATURE_WINDOW_S * NS)
STORED = f"stored features ({FEATURE_WINDOW_S:g} s window)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a copy of the report: after load, count the images the browser actually decoded.
PROBE = ("<script>addEventListener('load', () => { const im = [...document.images];"
         " const ok = im.filter(i => i.complete && i.naturalWidth > 0).length;"
         " document.title = 'images ' + ok + '/' + im.length; });</script>")


def replay_incident(d: Path, baseline_s: float | None = None) -> None:
    """The recorded memory-pressure incident through ks-ingest --replay, the agent at 5 s steps, then
    (optionally) a baseline learned from the first baseline_s seconds, so plots have a band."""
    out = subprocess.run([tool("ks-ingest"), "--replay", str(CAPTURE), "--data-dir", str(d)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    conn = db.connect_readonly(db.db_path(d))
    lo, hi = conn.execute("SELECT MIN(ts), MAX(ts) FROM memory_metrics").fetchone()
    conn.close()
    agent = Agent(d)
    for t in range(lo + 5 * NS, hi + 1, 5 * NS):
        agent.step(t)
    agent.close()
    if baseline_s:
        conn = sqlite3.connect(db.db_path(d))
        ends = np.arange(lo + WINDOW_NS, lo + int(baseline_s * NS), NS)
        save_baseline(conn, learn_baseline(compute_range(conn, ends, FEATURE_WINDOW_S)), d)
        conn.close()


@pytest.fixture(scope="module")
def incident(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    replay_incident(d, baseline_s=30)
    return d


def _pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html_text)]


def test_implicated_features_are_the_metric_then_the_rules_features():
    names = implicated_features("memory_pressure", "memory_available_pct")
    assert names[0] == "memory_available_pct" and "swap_out_pages_per_sec" in names
    assert implicated_features("baseline_deviation", "cpu_utilization_pct") == ["cpu_utilization_pct"]
    assert implicated_features("io_tail_latency", "io_p99_ms_max")[0] == "io_p99_ms_max"  # agent-only signal


def test_html_report_inlines_a_plot_per_implicated_feature(incident):
    text = render_report(incident, "html")
    conn = db.connect_readonly(db.db_path(incident))
    n_obs = conn.execute("SELECT COUNT(*) FROM observations").fetchone()[0]
    conn.close()
    assert n_obs >= 2 and "Memory Pressure" in text
    pngs = _pngs(text)
    assert len(pngs) >= n_obs
    from PIL import Image

    for p in pngs:
        assert p.startswith(PNG_MAGIC)
        im = Image.open(io.BytesIO(p))
        assert im.size[0] >= 600 and im.size[1] >= 150
    assert "src='http" not in text and 'src="http' not in text  # one self-contained file
    # The memory-pressure plot has the baseline band (learned above) and the observation window,
    # drawn from the vectors the agent stored while it judged the incident.
    mem = next(o for o in plot_observations(incident, [o | {"rule": r} for o, r in _obs_rules(incident)]).values()
               if o.features and o.features[0] == "memory_available_pct")
    assert mem.plots[0].png and mem.source == STORED


def _obs_rules(d: Path):
    from kernelsight.agent.store import list_observations

    conn = db.connect_readonly(db.db_path(d))
    rules = dict(conn.execute("SELECT id, rule FROM observations").fetchall())
    obs = list_observations(conn, limit=100)
    conn.close()
    return [(o, rules[o["id"]]) for o in obs]


def test_md_and_json_reports_list_the_implicated_features(incident):
    md = render_report(incident, "md")
    assert "implicated features (plotted in the HTML report): `memory_available_pct`" in md
    js = json.loads(render_report(incident, "json"))
    mem = [o for o in js["observations"] if o["rule"] == "memory_pressure"]
    assert mem and mem[0]["plotted_features"][0] == "memory_available_pct"
    assert "data:image" not in md


def test_report_cli_writes_one_html_file(incident, tmp_path):
    out = tmp_path / "r.html"
    r = subprocess.run([tool("ks"), "report", "--data-dir", str(incident), "--format", "html", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(_pngs(out.read_text())) >= 2


def test_report_without_observations_has_no_plots(tmp_path):
    from kernelsight.agent.store import ensure_tables

    conn = db.connect(db.db_path(tmp_path))  # an empty database with the agent's tables
    ensure_tables(conn)
    conn.close()
    text = render_report(tmp_path, "html")
    assert "No observations in this period." in text and not _pngs(text)


def _chromium(args: list[str], tmp: Path, name: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{name}"
    profile.mkdir()
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); "
                    "the browser rendering of the HTML report cannot be checked here")
def test_chromium_renders_the_report_with_its_plots(incident, tmp_path):
    from PIL import Image, ImageStat

    html_text = render_report(incident, "html")
    n_img = len(_pngs(html_text))
    page = tmp_path / "report.html"
    page.write_text(html_text)
    shot = tmp_path / "report.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()], tmp_path, "shot")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 2000)
    stat = ImageStat.Stat(im.convert("L"))
    assert stat.stddev[0] > 20, f"screenshot looks blank (stddev {stat.stddev[0]:.1f})"
    # Colour: plots (shaded windows, baseline bands) and severity bars, not only black text on white.
    px = np.asarray(im, dtype=np.int16)
    colored = ((px.max(axis=2) - px.min(axis=2)) > 20).mean()
    assert colored > 0.01, f"only {colored:.2%} coloured pixels: the plots did not render"

    # Every <img> decoded in the browser (complete and naturalWidth > 0), read back from the DOM.
    probe = tmp_path / "probe.html"
    probe.write_text(html_text.replace("</body>", PROBE + "</body>"))
    r = _chromium(["--dump-dom", probe.as_uri()], tmp_path, "dom")
    m = re.search(r"<title>images (\d+)/(\d+)</title>", r.stdout)
    assert m, f"the probe did not run: {r.stdout[:300]!r} {r.stderr[-1000:]!r}"
    assert int(m.group(2)) == n_img >= 2 and int(m.group(1)) == n_img, m.group(0)

    # The probe can fail: a corrupt image is counted as not decoded.
    bad = tmp_path / "bad.html"
    bad.write_text(html_text.replace("</body>", "<img src='data:image/png;base64,iVBORw0KGgoAAAA'>"
                                     + PROBE + "</body>"))
    r = _chromium(["--dump-dom", bad.as_uri()], tmp_path, "bad")
    m = re.search(r"<title>images (\d+)/(\d+)</title>", r.stdout)
    assert m and int(m.group(1)) == n_img and int(m.group(2)) == n_img + 1


def test_stored_features_are_used_when_they_cover_the_span(incident, tmp_path):
    from kernelsight.features.store import write_matrix
    from kernelsight.report_plots import series

    path = tmp_path / "kernelsight.db"
    src, conn = sqlite3.connect(db.db_path(incident)), sqlite3.connect(path)
    src.backup(conn)
    src.close()
    lo, hi = conn.execute("SELECT MIN(ts), MAX(ts) FROM memory_metrics").fetchone()
    lo_s, hi_s = lo / NS, hi / NS
    assert series(conn, ["memory_available_pct"], lo_s, hi_s)[2] == STORED  # the agent's vectors
    conn.execute("DROP TABLE features")
    _, computed, source = series(conn, ["memory_available_pct"], lo_s, hi_s)
    assert source.startswith("computed from raw tables")
    write_matrix(conn, compute_range(conn, np.arange(lo + WINDOW_NS, hi + 1, int(FEATURE_STEP_S * NS)),
                                     FEATURE_WINDOW_S))
    ts, stored, source = series(conn, ["memory_available_pct"], lo_s, hi_s)
    assert source == STORED
    assert np.allclose(stored["memory_available_pct"], computed["memory_available_pct"], equal_nan=True)
    assert np.nanmin(stored["memory_available_pct"]) < 10  # the incident is in it
    conn.close()

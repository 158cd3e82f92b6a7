"""A real Prometheus scraping a real `ks run`: the helpers tests/test_prometheus.py and
tests/test_grafana.py share (free ports, JSON over HTTP, the process stack and its start-up)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from conftest import tool, wait_for

PROMETHEUS, ALERTMANAGER, PROMTOOL = (shutil.which(n) for n in ("prometheus", "prometheus-alertmanager", "promtool"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own local servers
        return json.loads(r.read())


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


class Stack:
    """Processes started for one test module, each stopped by its own pid (last started, first stopped)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    def spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def start_pipeline(self, config: str = "", args: tuple[str, ...] = ("--no-collectors",)) -> None:
        """`ks run` on a private data dir and FIFO, ks-exporter on a free port (plus `config`, TOML);
        returns once /metrics answers.  Sets .exporter (URL), .exporter_port, .data, .db."""
        self.exporter_port = free_port()
        self.exporter = f"http://127.0.0.1:{self.exporter_port}"
        self.data = self.tmp / "data"
        self.db = self.data / "kernelsight.db"
        (self.tmp / "config.toml").write_text(f"[exporter]\nport = {self.exporter_port}\n{config}")
        env = {**os.environ, "KS_CONFIG": str(self.tmp / "config.toml"), "KS_DATA_DIR": str(self.data)}
        self.spawn("ks-run", [tool("ks"), "run", "--data-dir", str(self.data), "--fifo", str(self.tmp / "ks.fifo"),
                              *args], env=env)
        wait_for(lambda: ready(f"{self.exporter}/metrics"), 120, 0.5, "ks-exporter serving")

    def start_prometheus(self, rules: Path | None = None, scrape_interval: str = "1s") -> None:
        """Prometheus scraping the exporter (job "kernelsight"), `rules` loaded; returns once it has scraped."""
        port = free_port()
        self.prom = f"http://127.0.0.1:{port}"
        (self.tmp / "prom").mkdir()
        (self.tmp / "prometheus.yml").write_text(f"""
global:
  scrape_interval: {scrape_interval}
  evaluation_interval: {scrape_interval}
rule_files: [{rules or ''}]
scrape_configs:
  - job_name: kernelsight
    static_configs: [{{targets: ["127.0.0.1:{self.exporter_port}"]}}]
""")
        self.spawn("prometheus", [PROMETHEUS, f"--config.file={self.tmp / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={self.tmp / 'prom'}", f"--web.listen-address=127.0.0.1:{port}"])
        wait_for(lambda: ready(f"{self.prom}/-/ready"), 60, 0.2, "prometheus ready")
        wait_for(lambda: self.scalar('up{job="kernelsight"}') == 1, 60, 0.5, "prometheus scraping ks-exporter")

    def promql(self, expr: str, at: float | None = None) -> dict:
        q = {"query": expr} | ({"time": repr(at)} if at is not None else {})
        return get_json(f"{self.prom}/api/v1/query?{urllib.parse.urlencode(q)}")

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        r = self.promql(expr, at)["data"]["result"]
        return float(r[0]["value"][1]) if r else None

    def am_alerts(self, **filters) -> list:
        q = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in filters.items()])
        return get_json(f"{self.am}/api/v2/alerts?{q}")

    def stop(self):
        for p in reversed(self.procs):  # e.g. Prometheus, ks run, Alertmanager: each by its own pid
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in self.logs:
            f.close()

"""Simulated fleet (issue 15): N hosts on this machine, each in its own network namespace
with its own data dir, FIFO, config and host identity, shipping by remote-write to one
real Prometheus (--web.enable-remote-write-receiver) and their observations to one real
Alertmanager (deploy/alertmanager/fleet.yml's route), both Debian's, in the root namespace
on a bridge (10.77.0.1/24; host i is 10.77.0.(10+i)).

  sim-0       live: `ks run --no-tracers --no-collectors` (ks-scraper reads its own
              namespace's /proc/net and the machine's /proc)
  sim-1..N-1  replay: `ks run --no-scraper`, fed by a replayer that loops the recorded
              capture tests/fixtures/features/capture.jsonl.gz with every ts shifted to now;
              on FAULT_HOSTS the replayer plays the recorded memory-pressure incident
              tests/fixtures/agent/memory_pressure.jsonl (shifted the same way) at the fault time

Phases: warm-up; the fault on two hosts (waits for one Alertmanager group holding both);
Prometheus stopped for OUTAGE_S under load and started again (every host's queue size
polled each second); the queues drain; `ks fleet` is run; every host is stopped and
its final counters are compared with the samples Prometheus holds for it (counted with
range selectors): samples missing = sent - stored (goal 0).

`python -m bench fleet` (root; merges rows into bench/results.json) or
`python bench/fleet.py` (prints the rows; details in bench/fleet_last.json).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NORMAL = REPO / "tests" / "fixtures" / "features" / "capture.jsonl.gz"
FAULT = REPO / "tests" / "fixtures" / "agent" / "memory_pressure.jsonl"
FLEET_YML = REPO / "deploy" / "alertmanager" / "fleet.yml"
VENV_BIN = Path(sys.executable).parent
KS = str(VENV_BIN / "ks")

N_HOSTS = int(os.environ.get("KS_FLEET_HOSTS", "5"))
FAULT_HOSTS = (3, 4)
FAULT_LABEL = "Memory Pressure"  # what the recorded incident opens
WARMUP_S = float(os.environ.get("KS_FLEET_WARMUP_S", "60"))
OUTAGE_S = float(os.environ.get("KS_FLEET_OUTAGE_S", "120"))
RW_INTERVAL_S = 5.0
QUEUE_MAX_MB = 4.0
BRIDGE, NET = "ksfleet0", "10.77.0"
PROM_PORT, AM_PORT = 19090, 19093


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def get_json(url: str, timeout: float = 30.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own local servers
        return json.loads(r.read())


def wait_for(pred, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            v = pred()
        except OSError:
            v = None
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


# ---- replay (runs inside a host's namespace) --------------------------------------------

def _load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def replay(fifo: str, fault_at: float | None) -> None:
    """Loop the normal capture into the FIFO in real time, every ts shifted to now; at fault_at
    play the memory-pressure recording once, then loop the normal capture again."""
    normal, fault = _load(NORMAL), _load(FAULT)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    out = open(fifo, "w", buffering=1)  # noqa: SIM115 - held for the process's life
    fault_done = fault_at is None
    while not stop:
        rec = normal
        if not fault_done and time.time() >= fault_at:
            rec, fault_done = fault, True
        t0_rec = rec[0]["ts"]
        t0 = time.time_ns()
        for ev in rec:
            if stop:
                break
            due = t0 + (ev["ts"] - t0_rec)
            delay = (due - time.time_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            out.write(json.dumps({**ev, "ts": due}) + "\n")
            if rec is normal and not fault_done and time.time() >= fault_at:
                break  # the fault starts now, not at the end of the loop
        time.sleep(0.5)
    out.close()


# ---- the fleet ---------------------------------------------------------------------------

class Fleet:
    def __init__(self, work: Path, log=print):
        self.work = work
        self.log = log
        self.procs: list[subprocess.Popen] = []
        self.hosts: list[dict] = []
        self.ns: list[str] = []
        self.prom_proc = self.am_proc = None
        self.prom = f"http://{NET}.1:{PROM_PORT}"
        self.am = f"http://{NET}.1:{AM_PORT}"

    def _spawn(self, name: str, argv: list[str], env=None) -> subprocess.Popen:
        logf = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()
        self.procs.append(p)
        return p

    def net_up(self) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i in range(N_HOSTS):
            ns, veth = f"ksfleet{i}", f"ksf{i}"
            sh("ip", "netns", "add", ns)
            self.ns.append(ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", BRIDGE)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NET}.{10 + i}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def net_down(self) -> None:
        for ns in self.ns:
            sh("ip", "netns", "delete", ns, check=False)  # takes its veth (and the peer) with it
        sh("ip", "link", "delete", BRIDGE, check=False)

    def start_prometheus(self) -> None:
        (self.work / "prom").mkdir(exist_ok=True)
        (self.work / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
        self.prom_proc = self._spawn("prometheus", [
            shutil.which("prometheus"), f"--config.file={self.work / 'prometheus.yml'}",
            "--web.enable-remote-write-receiver", f"--storage.tsdb.path={self.work / 'prom'}",
            f"--web.listen-address={NET}.1:{PROM_PORT}"])
        wait_for(lambda: get_json(f"{self.prom}/api/v1/status/buildinfo"), 60, "prometheus ready")

    def stop_prometheus(self) -> None:
        self.prom_proc.send_signal(signal.SIGTERM)
        self.prom_proc.wait(timeout=120)

    def start_alertmanager(self) -> None:
        (self.work / "am").mkdir(exist_ok=True)
        self.am_proc = self._spawn("alertmanager", [
            shutil.which("prometheus-alertmanager"), f"--config.file={FLEET_YML}",
            f"--storage.path={self.work / 'am'}", f"--web.listen-address={NET}.1:{AM_PORT}",
            "--cluster.listen-address="])
        wait_for(lambda: get_json(f"{self.am}/api/v2/status"), 60, "alertmanager ready")

    def start_hosts(self, fault_at: float) -> None:
        for i in range(N_HOSTS):
            name, ns = f"sim-{i}", self.ns[i]
            d = self.work / name
            d.mkdir(mode=0o700)
            live = i == 0
            (d / "config.toml").write_text(f"""
[alerts]
alertmanager_url = "{self.am}"
resend_interval_s = 10.0
[remote_write]
url = "{self.prom}/api/v1/write"
interval_s = {RW_INTERVAL_S}
hostname = "{name}"
labels = "fleet=sim,mode={'live' if live else 'replay'}"
queue_max_mb = {QUEUE_MAX_MB}
backoff_start_s = 0.5
backoff_max_s = 5.0
""")
            env = {**os.environ, "KS_CONFIG": str(d / "config.toml"), "KS_DATA_DIR": str(d / "data")}
            fifo = str(d / "ks.fifo")
            argv = ["ip", "netns", "exec", ns, KS, "run", "--data-dir", str(d / "data"), "--fifo", fifo,
                    "--no-tracers", "--no-collectors"] + ([] if live else ["--no-scraper"])
            host = {"name": name, "ns": ns, "dir": d, "data": d / "data", "live": live,
                    "proc": self._spawn(f"{name}-ks-run", argv, env), "replayer": None}
            self.hosts.append(host)
        for h in self.hosts:
            if not h["live"]:
                i = int(h["name"].split("-")[1])
                argv = ["ip", "netns", "exec", h["ns"], sys.executable, str(Path(__file__).resolve()), "replay",
                        str(h["dir"] / "ks.fifo")] + ([str(fault_at)] if i in FAULT_HOSTS else [])
                wait_for(lambda h=h: (h["dir"] / "ks.fifo").exists(), 60, f"{h['name']} FIFO")
                h["replayer"] = self._spawn(f"{h['name']}-replay", argv)

    def status(self, h: dict) -> dict:
        try:
            return json.loads((h["data"] / "run" / "remote_write.json").read_text())
        except (OSError, ValueError):
            return {}

    def promql(self, expr: str) -> list:
        return get_json(f"{self.prom}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")["data"]["result"]

    def samples_stored(self, host: str) -> int:
        res = self.promql(f'{{host="{host}"}}[3h]')
        return sum(len(r["values"]) for r in res)

    def stop_hosts(self) -> None:
        for h in self.hosts:
            for key in ("replayer", "proc"):
                p = h[key]
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        for h in self.hosts:
            for key in ("replayer", "proc"):
                p = h[key]
                if p is not None:
                    try:
                        p.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()

    def stop_all(self) -> None:
        self.stop_hosts()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def queue_disk_bytes(data: Path) -> int:
    q = data / "remote_write" / "queue"
    try:
        return sum(p.stat().st_size for p in q.iterdir())
    except OSError:
        return 0


def run_fleet(log=print) -> dict:
    if os.geteuid() != 0:
        raise RuntimeError("the fleet bench needs root (network namespaces)")
    work = Path(tempfile.mkdtemp(prefix="ksfleet-"))
    os.chmod(work, 0o700)
    f = Fleet(work, log)
    out: dict = {"hosts": N_HOSTS, "work": str(work), "rw_interval_s": RW_INTERVAL_S, "queue_max_mb": QUEUE_MAX_MB}
    try:
        f.net_up()
        f.start_prometheus()
        f.start_alertmanager()
        t_start = time.time()
        fault_at = t_start + WARMUP_S
        f.start_hosts(fault_at)
        log(f"[fleet] {N_HOSTS} hosts started in {work}; fault on sim-{FAULT_HOSTS[0]}, sim-{FAULT_HOSTS[1]} at "
            f"+{WARMUP_S:.0f} s")
        wait_for(lambda: len({r["metric"]["host"] for r in f.promql('kernelsight_exporter_database_up')}) == N_HOSTS,
                 180, "every host's series in prometheus")
        log("[fleet] every host's series in prometheus")

        def fault_group():
            for g in get_json(f"{f.am}/api/v2/alerts/groups"):
                hosts = sorted({a["labels"].get("host") for a in g["alerts"] if a["status"]["state"] == "active"})
                if g["labels"].get("label") == FAULT_LABEL and len(hosts) >= 2:
                    return {"group_labels": g["labels"], "hosts": hosts, "alerts": len(g["alerts"])}
            return None

        out["alert_group"] = wait_for(fault_group, WARMUP_S + 240, "one alert group of two hosts", 1.0)
        out["alert_groups"] = [{"labels": g["labels"], "hosts": sorted({a["labels"].get("host") for a in g["alerts"]})}
                               for g in get_json(f"{f.am}/api/v2/alerts/groups")]
        log(f"[fleet] alert group: {out['alert_group']}")

        # outage under load
        peak = {h["name"]: 0 for h in f.hosts}
        f.stop_prometheus()
        t_down = time.time()
        log(f"[fleet] prometheus stopped for {OUTAGE_S:.0f} s")
        while time.time() - t_down < OUTAGE_S:
            for h in f.hosts:
                peak[h["name"]] = max(peak[h["name"]], queue_disk_bytes(h["data"]))
            time.sleep(1.0)
        f.start_prometheus()
        t_up = time.time()

        def drained():
            for h in f.hosts:
                peak[h["name"]] = max(peak[h["name"]], queue_disk_bytes(h["data"]))
            sts = [f.status(h) for h in f.hosts]
            return all(s.get("queue_segments", 99) <= 1 and (s.get("last_ok_at") or 0) > t_up for s in sts)

        wait_for(drained, 600, "queues drained", 0.5)
        out["drain_s"] = time.time() - t_up
        out["queue_peak_bytes"] = peak
        out["queue_max_bytes"] = int(QUEUE_MAX_MB * 1024 * 1024)
        log(f"[fleet] drained {out['drain_s']:.1f} s after restart; queue peaks {peak}")

        fl = subprocess.run([KS, "fleet", "--prometheus", f.prom, "--window", "3600", "--silent-after", "30"],
                            capture_output=True, text=True, timeout=300)
        out["ks_fleet"] = fl.stdout + fl.stderr
        log(out["ks_fleet"])

        out["series_per_host"] = {h["name"]: int(float(f.promql(f'count({{host="{h["name"]}"}})')[0]["value"][1]))
                                  for h in f.hosts}
        log(f"[fleet] series per host: {out['series_per_host']}")
        t_end = time.time()
        f.stop_hosts()
        per = {}
        for h in f.hosts:
            s = f.status(h)
            stored = f.samples_stored(h["name"])
            elapsed = (s.get("updated_at") or t_end) - t_start
            per[h["name"]] = {
                "samples_queued": s.get("samples_queued"), "samples_sent": s.get("samples_sent"),
                "samples_in_prometheus": stored, "missing": s.get("samples_sent", 0) - stored,
                "samples_dropped": s.get("samples_dropped"), "samples_rejected": s.get("samples_rejected"),
                "left_in_queue": s.get("queue_samples"), "failed_attempts": s.get("failed_attempts"),
                "bytes_sent": s.get("bytes_sent"), "seconds": elapsed,
                "samples_per_s": s.get("samples_sent", 0) / elapsed, "bytes_per_s": s.get("bytes_sent", 0) / elapsed,
                "queue_peak_bytes": peak[h["name"]]}
        out["per_host"] = per
        out["samples_missing"] = sum(p["missing"] for p in per.values())
        out["samples_dropped"] = sum(p["samples_dropped"] or 0 for p in per.values())
        out["bytes_per_s_per_host"] = sum(p["bytes_per_s"] for p in per.values()) / len(per)
        out["samples_per_s_per_host"] = sum(p["samples_per_s"] for p in per.values()) / len(per)
        out["queue_within_bound"] = all(v <= out["queue_max_bytes"] for v in peak.values())
        log(json.dumps(per, indent=1))
    finally:
        f.stop_all()
        f.net_down()
    return out


def run() -> list[dict]:
    r = run_fleet(log=lambda s: print(s, file=sys.stderr))
    (REPO / "bench" / "fleet_last.json").write_text(json.dumps(r, indent=1) + "\n")
    series = sum(r["series_per_host"].values()) / len(r["series_per_host"])
    note = (f"{r['hosts']} simulated hosts (netns each; 1 live, {r['hosts'] - 1} replaying captures), remote-write "
            f"every {RW_INTERVAL_S:.0f} s to one Prometheus; receiver stopped {OUTAGE_S:.0f} s under load")
    return [
        {"name": "fleet_hosts", "value": r["hosts"], "unit": "hosts",
         "notes": note + f"; fault on 2 hosts = one Alertmanager group of {len(r['alert_group']['hosts'])} hosts"},
        {"name": "fleet_samples_missing_after_outage", "value": r["samples_missing"], "unit": "samples",
         "notes": f"sent minus stored in Prometheus, all hosts (goal 0); dropped at the bound: {r['samples_dropped']}; "
                  f"queue peak within {QUEUE_MAX_MB:.0f} MiB: {r['queue_within_bound']}; drained in {r['drain_s']:.0f} s"},
        {"name": "fleet_bytes_per_s_per_host", "value": r["bytes_per_s_per_host"], "unit": "B/s",
         "notes": f"snappy-compressed remote-write bodies (no HTTP headers), mean over hosts; {series:.0f} series/host, "
                  f"{r['samples_per_s_per_host']:.1f} samples/s/host"},
    ]


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "replay":
        replay(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        for row in run():
            print(json.dumps(row))

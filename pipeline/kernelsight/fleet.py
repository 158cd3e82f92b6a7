"""`ks fleet`: the fleet as the central Prometheus sees it (series pushed by ks-remote-write).

Everything comes from the Prometheus HTTP API (/api/v1/query), by the `host` label
every remote-written series carries:
  hosts       every host heard from in --window; reporting if heard from in the
              last --silent-after seconds, else silent (with when it was last heard)
  open        kernelsight_observation_open > 0 by host, label and severity
  deviating   per host, the feature whose latest value is furthest from the host's
              own mean over --baseline, in standard deviations of that baseline
              (|z|; features that did not vary in the baseline are left out)
  coincident  observations of one label that opened on several hosts within
              --within seconds of each other ("Connection Churning on 12 hosts
              within 60 s"), from the onsets of kernelsight_observation_open
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

HEARTBEAT = "kernelsight_exporter_database_up"  # one series per host, in every collection
OPEN = "kernelsight_observation_open"


class PromError(RuntimeError):
    pass


class Prom:
    def __init__(self, url: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        q = {"query": expr} | ({"time": repr(at)} if at is not None else {})
        req = f"{self.url}/api/v1/query?{urllib.parse.urlencode(q)}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310 - the configured server
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise PromError(f"{self.url}: HTTP {e.code}: {e.read(300).decode('utf-8', 'replace')}") from None
        except OSError as e:
            raise PromError(f"{self.url}: {getattr(e, 'reason', e)}") from None
        if doc.get("status") != "success":
            raise PromError(f"{self.url}: {doc.get('error')}")
        return doc["data"]["result"]


def _feature_regex() -> str:
    from .exporter import feature_metrics

    return "|".join(sorted(e.metric for e in feature_metrics()))


def hosts(prom: Prom, now: float, window_s: float, silent_after_s: float) -> list[dict]:
    res = prom.query(f'{HEARTBEAT}{{host!=""}}[{int(window_s)}s]', now)
    last: dict[str, float] = {}
    labels: dict[str, dict] = {}
    for r in res:
        h = r["metric"]["host"]
        t = max(float(v[0]) for v in r["values"])
        if t > last.get(h, 0):
            last[h] = t
            labels[h] = {k: v for k, v in r["metric"].items() if k not in ("__name__", "host")}
    return sorted(({"host": h, "last_seen": t, "age_s": now - t, "reporting": now - t <= silent_after_s,
                    "labels": labels[h]} for h, t in last.items()), key=lambda d: d["host"])


def open_observations(prom: Prom, now: float) -> list[dict]:
    res = prom.query(f'sum by (host, label, severity) ({OPEN}{{host!=""}}) > 0', now)
    return sorted(({"host": r["metric"]["host"], "label": r["metric"].get("label", ""),
                    "severity": r["metric"].get("severity", ""), "count": int(float(r["value"][1]))}
                   for r in res), key=lambda d: (d["label"], d["host"]))


def deviating(prom: Prom, now: float, baseline_s: float, top: int) -> list[dict]:
    sel = f'label_replace({{__name__=~"{_feature_regex()}",host!=""}}, "feature", "$1", "__name__", "(.+)")'
    rng = f"[{int(baseline_s)}s:{max(1, int(baseline_s // 120))}s]"
    z = f"abs(({sel} - avg_over_time({sel}{rng})) / (stddev_over_time({sel}{rng}) > 0))"
    res = prom.query(f"topk by (host) (1, {z})", now)
    out = [{"host": r["metric"]["host"], "feature": r["metric"].get("feature", ""), "z": float(r["value"][1])}
           for r in res if math.isfinite(float(r["value"][1]))]
    return sorted(out, key=lambda d: -d["z"])[:top]


def onsets(prom: Prom, now: float, window_s: float) -> dict[str, list[tuple[float, str]]]:
    """label -> [(time an observation of it opened on a host, host)], from the raw samples of
    kernelsight_observation_open (summed over severities): a sample > 0 after none or after 0."""
    res = prom.query(f'{OPEN}{{host!=""}}[{int(window_s)}s]', now)
    per: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
    for r in res:
        key = (r["metric"].get("label", ""), r["metric"]["host"])
        for t, v in r["values"]:
            per[key][float(t)] = per[key].get(float(t), 0.0) + float(v)
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for (label, host), series in per.items():
        prev_t, prev_v = None, 0.0
        for t in sorted(series):
            v = series[t]
            # a gap of more than 5 minutes (Prometheus' lookback) is an absence: the next > 0 is an onset
            if v > 0 and (prev_v <= 0 or prev_t is None or t - prev_t > 300):
                out[label].append((t, host))
            prev_t, prev_v = t, v
    return out


def coincidences(ons: dict[str, list[tuple[float, str]]], within_s: float, min_hosts: int) -> list[dict]:
    """Per label, the largest set of distinct hosts whose onsets fall within within_s of each other."""
    out = []
    for label, evs in ons.items():
        evs = sorted(evs)
        best: tuple[int, float, float, list[str]] | None = None
        j = 0
        for i in range(len(evs)):
            while evs[i][0] - evs[j][0] > within_s:
                j += 1
            hs = sorted({h for _, h in evs[j:i + 1]})
            if best is None or len(hs) > best[0]:
                best = (len(hs), evs[j][0], evs[i][0], hs)
        if best and best[0] >= min_hosts:
            out.append({"label": label, "hosts": best[3], "n_hosts": best[0], "first": best[1], "last": best[2],
                        "spread_s": best[2] - best[1]})
    return sorted(out, key=lambda d: (-d["n_hosts"], d["label"]))


def report(prom: Prom, now: float | None = None, *, window_s: float = 3600.0, silent_after_s: float = 60.0,
           baseline_s: float = 3600.0, within_s: float = 60.0, min_hosts: int = 2, top: int = 5) -> dict:
    now = time.time() if now is None else now
    return {"prometheus": prom.url, "at": now,
            "hosts": hosts(prom, now, window_s, silent_after_s),
            "open": open_observations(prom, now),
            "deviating": deviating(prom, now, baseline_s, top),
            "coincidences": coincidences(onsets(prom, now, window_s), within_s, min_hosts),
            "params": {"window_s": window_s, "silent_after_s": silent_after_s, "baseline_s": baseline_s,
                       "within_s": within_s, "min_hosts": min_hosts}}


def _hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def render(rep: dict) -> str:
    hs = rep["hosts"]
    up = [h for h in hs if h["reporting"]]
    silent = [h for h in hs if not h["reporting"]]
    p = rep["params"]
    lines = [f"fleet at {_hms(rep['at'])} UTC from {rep['prometheus']}: {len(hs)} hosts heard in the last "
             f"{p['window_s']:.0f} s, {len(up)} reporting, {len(silent)} silent (nothing for > {p['silent_after_s']:.0f} s)"]
    if up:
        lines.append("  reporting: " + ", ".join(h["host"] for h in up))
    for h in silent:
        lines.append(f"  SILENT {h['host']}: last heard {_hms(h['last_seen'])} UTC ({h['age_s']:.0f} s ago)")
    by_host = defaultdict(list)
    for o in rep["open"]:
        by_host[o["host"]].append(f"{o['label']} ({o['severity']})")
    lines.append(f"\nhosts with open observations: {len(by_host)}")
    for h in sorted(by_host):
        lines.append(f"  {h}: {', '.join(by_host[h])}")
    lines.append(f"\nhosts deviating most from their own {p['baseline_s']:.0f} s baseline (|z| of the furthest feature):")
    if not rep["deviating"]:
        lines.append("  none (no feature varied in the baseline yet)")
    for d in rep["deviating"]:
        lines.append(f"  {d['host']:<20} |z| {d['z']:7.1f}  {d['feature']}")
    lines.append(f"\ncross-host coincidences (same observation opening on >= {p['min_hosts']} hosts within "
                 f"{p['within_s']:.0f} s):")
    if not rep["coincidences"]:
        lines.append("  none")
    for c in rep["coincidences"]:
        lines.append(f"  {c['label']} on {c['n_hosts']} hosts within {p['within_s']:.0f} s "
                     f"({_hms(c['first'])}-{_hms(c['last'])} UTC, spread {c['spread_s']:.0f} s): {', '.join(c['hosts'])}")
    return "\n".join(lines) + "\n"

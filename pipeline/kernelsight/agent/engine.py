"""ks-agent: each interval, features + baseline -> findings -> observations.

Each step computes one feature vector over FEATURE_WINDOW_S (features/catalog.py),
stores it in the `features` table and evaluates the rules on that same vector
(plus the agent-only signals of signals.py): exports, baselines and reports
read what the agent judged, not a second derivation.

Two kinds of evidence (docs/design.md, "Agent perception layer"):
  - the absolute patterns of the interpretation tables and the multi-signal
    correlations, as rules (rules.toml);
  - deviation from the learned baseline (z and robust z), for any feature.
Findings are tracked for persistence and hysteresis (tracker.py), explained
with the processes behind them (attribution.py) and what changed recently,
and stored (store.py).  No LLM and no network are involved.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sqlite3
import time
from collections import deque
from pathlib import Path

import numpy as np

from .. import db
from ..db import transaction
from ..config import Config, load as load_config
from ..features import catalog as fcat
from ..features.baseline import MIN_PER_HOUR, learn_baseline, load_baseline, save_baseline
from ..features.catalog import FEATURE_STEP_S, FEATURE_WINDOW_S
from ..features.engine import FeatureVector, RowCache, compute_range
from ..features.store import read_matrix, write_matrix
from ..storage.housekeeping import Housekeeper
from .oom import OomWatch
from .telemetry import TelemetryWatch
from .attribution import (ProcessSampler, cgroup_of, connection_makers, dropping_interfaces, retransmitters,
                          short_lived_children, slow_syscalls, spawners)
from .exhaustion import KINDS as EXHAUSTION_KINDS
from .exhaustion import ExhaustionWatch
from .forecast import RISK_LEVELS, MemoryGate, forecast, forecast_cgroups, line_fit
from .rules import SEVERITIES, Context, Rule, RuleSet, evaluate, load_rules
from .signals import agent_signals, disk_worst, failing_processes, fs_errors, io_worst
from .store import ObservationStore
from .tracker import BAND_WORDS, Finding, Tracked, Tracker, band, escalate

AGENT_SQLITE_CACHE_KIB = 512  # per connection (SQLite's default: 2000)
BASELINE_RELOAD_S = 300
AUTO_SOURCE = "learned automatically by ks-agent"
BASELINE_MAX_VECTORS = 20_000  # held at once while learning (~170 features: ~27 MB of float64)
SLOPE_SPAN_S = 60.0
BIG_RSS_KB = 64 * 1024
EXEC_BURST = 100  # execs of one comm that count as a burst ...
EXEC_BURST_SPAN_S = 120  # ... starting at most this long before the condition
MIN_SLOPE_POINTS = 4
DEPLOY_COMMS = re.compile(r"^(apt|apt-get|dpkg|pip\d*|systemctl|docker|kubectl|helm|ansible|git|make|rsync|yum|dnf)$")
GROUP_CATEGORY = {"load": "load", "cpu": "scheduler", "scheduler": "scheduler", "memory": "memory", "disk": "io",
                  "network": "network", "syscall": "syscall", "page_fault": "memory"}


def human_duration(s: float) -> str:
    s = int(s)
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"


def feature_category(name: str) -> str:
    f = fcat.BY_NAME.get(name)
    group = f.group if f is not None else ""
    if group in GROUP_CATEGORY:
        return GROUP_CATEGORY[group]
    for key, cat in (("psi_cpu", "scheduler"), ("psi_memory", "memory"), ("psi_io", "io"), ("memory", "memory"),
                     ("io_", "io"), ("cpu", "scheduler"), ("net", "network"), ("tcp", "network")):
        if name.startswith(key) or key in name:
            return cat
    return "load"


def host_mem_gb(proc_root: str = "/proc") -> float | None:
    """MemTotal in GiB, or None (then rules with a mem_gb floor cannot fire: no data is no evidence)."""
    try:
        with open(f"{proc_root}/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


def incident_spans(conn: sqlite3.Connection, since_s: float) -> list[tuple[int, int]]:
    """Spans (ns) of the observations (not baseline deviations) open at or after since_s, each widened
    by a feature window on both sides: the vectors a baseline must not learn from."""
    try:
        rows = conn.execute("SELECT first_seen, closed_at FROM observations WHERE rule != 'baseline_deviation' "
                            "AND (closed_at IS NULL OR closed_at >= ?)", (since_s,)).fetchall()
    except sqlite3.OperationalError:  # no observations table yet
        return []
    end = time.time() + FEATURE_WINDOW_S
    return [(int((a - FEATURE_WINDOW_S) * 1e9), int(((b if b is not None else end) + FEATURE_WINDOW_S) * 1e9))
            for a, b in rows]


def _absorb(cause: Finding, consequence: Finding) -> None:
    """One incident: the consequence becomes the cause's evidence, and the incident is as severe as
    the worst of them."""
    cause.correlated.append(f"{consequence.label}: {consequence.summary}")
    # and what it had taken in itself (a chain: CPU starvation -> oversubscription -> a fork storm)
    cause.correlated.extend(c for c in consequence.correlated if c not in cause.correlated)
    if SEVERITIES.index(consequence.severity) > SEVERITIES.index(cause.severity):
        cause.severity = consequence.severity


def _deviation_severity(z: float, rz: float | None, v: float, mean: float, s) -> str:
    """low under anomaly_open_z; medium from it; high from twice it; critical when extreme both ways
    (z and robust z beyond anomaly_critical_z) and anomaly_critical_ratio times the mean or more."""
    ratio = abs(v) / abs(mean) if mean else math.inf
    if min(abs(z), abs(rz or 0.0)) >= s.anomaly_critical_z and ratio >= s.anomaly_critical_ratio:
        return "critical"
    return "high" if abs(z) >= 2 * s.anomaly_open_z else "medium" if abs(z) >= s.anomaly_open_z else "low"


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


# Exhaustion forecast scopes (exhaustion.py) and the near-limit rules that cover the same resource.
LIMIT_RULES_BY_SCOPE = (("fs:", ("fs_near_full", "fs_full")), ("inodes:", ("fs_inodes_near_full", "fs_full")),
                        ("file_handles", ("file_handles_near_limit",)), ("pids_cgroup:", ("pids_cgroup_near_limit",)),
                        ("pids", ("pids_near_limit",)), ("nofile:", ("process_fd_near_limit",)))


class Agent:
    def __init__(self, data_dir: Path, rules: RuleSet | None = None, proc_root: str = "/proc",
                 stream: bool = True, log=None, config: Config | None = None, housekeeping: bool = True):
        self.data_dir = data_dir
        self.config = config or load_config()
        self.db_path = db.db_path(data_dir)
        self.rw = db.connect(self.db_path)  # creates/migrates, so the agent can start before ingest
        self.store = ObservationStore(self.rw, data_dir / "observations.jsonl" if stream else None)
        self.ro = db.connect_readonly(self.db_path)
        for conn in (self.rw, self.ro):
            # The window's pages are read again each step from the OS page cache at no measurable
            # CPU cost; SQLite's default 2 MiB cache per connection held ~2 MiB more of this
            # always-on process (measured over 59 replayed steps).
            conn.execute(f"PRAGMA cache_size=-{AGENT_SQLITE_CACHE_KIB}")
        self.rules = rules or load_rules()
        s = self.rules.settings
        self.tracker = Tracker(s.clear_after_s, s.reopen_within_s)
        self.alert_after = {r.id: r.alert_after_s for r in self.rules.rules if r.alert_after_s}
        self.history: deque[tuple[float, dict]] = deque()
        self.sampler = ProcessSampler(proc_root, window_s=FEATURE_WINDOW_S)
        # pid -> (first seen, comm, peak RSS kB); kept a while after exit for recent_changes
        self.proc_first_seen: dict[int, tuple[float, str, int]] = {}
        self.baseline = None
        self.baseline_loaded_at = -math.inf
        self.next_learn_try_s = -math.inf
        self.cores = os.cpu_count() or 1
        self.mem_gb = host_mem_gb(proc_root)  # rules' floors per GiB of RAM (mem_gb)
        self.log = log
        self.last_streamed: dict[str, tuple[str, str]] = {}
        self.last_step_s: float | None = None
        self.render_failures = 0  # observations _persist could not render (logged; retried next step)
        self.last_forecast = None
        self.last_vector: FeatureVector | None = None  # the stored vector the last step evaluated
        # Rows of the last vector, kept for the next: a step reads only the rows stored since (RowCache).
        self.row_cache = RowCache()
        # Rollups, retention and rotation, once a minute: the agent holds the read-write connection.
        self.housekeeper = Housekeeper(self.rw, data_dir, self.config, log=log) if housekeeping else None
        self.telemetry = TelemetryWatch(data_dir)  # the pipeline's own losses, as observations
        self.oom = OomWatch()  # OOM kills, host or cgroup
        self.exhaustion = ExhaustionWatch(proc_root)  # filesystems, descriptors, PIDs: forecasts and suspects
        self.last_forecast_check_ns = 0
        self.memory_gate = MemoryGate(proc_root)  # which forecasts the urgent check fits
        self.deviating_since: dict[str, float] = {}  # feature -> when its baseline deviation began
        self.firing_since: dict[str, float] = {}  # rule key -> when it began to hold
        self.explains = self.rules.explains()  # cause label -> labels it explains

    # -- inputs ---------------------------------------------------------------
    def _baseline(self, now_s: float):
        if now_s - self.baseline_loaded_at >= BASELINE_RELOAD_S:
            try:
                self.baseline = load_baseline(self.ro, path=self.data_dir / "baseline.json")
            except (sqlite3.Error, OSError, ValueError):
                self.baseline = None
            self.baseline_loaded_at = now_s
        if self.baseline is None:
            self._auto_learn(now_s)
        return self.baseline

    def _auto_learn(self, now_s: float) -> None:
        """Learn what is normal without being asked, and keep learning it: once the agent has
        watched auto_baseline_after_s, and again every baseline_relearn_s, learn from the vectors
        stored over the last auto_baseline_span_s (its own window, so z-scores compare like with
        like), leaving out every incident (a fault learned as normal hides the next one).
        Robust statistics keep a short blip from skewing it; hour-of-day and hour-of-week
        profiles form as history allows.  A baseline an operator learned is left alone."""
        s = self.rules.settings
        if not s.auto_baseline_span_s or not self.history or now_s < self.next_learn_try_s:
            return
        b = self.baseline
        if b is None:
            if now_s - self.history[0][0] < s.auto_baseline_after_s:
                return
        elif (not s.baseline_relearn_s or b.meta.get("source") != AUTO_SOURCE
              or now_s - (b.meta.get("learned_ts") or 0) / 1e9 < s.baseline_relearn_s):
            return
        lo_ns, hi_ns = int((now_s - s.auto_baseline_span_s) * 1e9), int(now_s * 1e9)
        try:
            stored = self.ro.execute("SELECT COUNT(*) FROM features WHERE ts >= ? AND ts <= ?",
                                     (lo_ns, hi_ns)).fetchone()[0]
            every = max(1, -(-stored // BASELINE_MAX_VECTORS))
            m = read_matrix(self.ro, lo_ns, hi_ns, window_s=FEATURE_WINDOW_S, every=every)
            learned = learn_baseline(m, max(1, MIN_PER_HOUR // every), incident_spans(self.ro, lo_ns / 1e9))
            if learned.meta["vectors"] * every * FEATURE_STEP_S < s.auto_baseline_after_s / 2:
                raise ValueError(f"only {learned.meta['vectors']} vectors outside incidents")
            learned.meta["source"] = AUTO_SOURCE
            save_baseline(self.rw, learned, self.data_dir)
        except (sqlite3.Error, OSError, ValueError) as e:
            if self.log is not None:
                self.log.warning("automatic baseline failed", error=str(e))
            self.next_learn_try_s = now_s + max(s.auto_baseline_after_s, 60.0)  # not every interval
            return
        self.baseline = learned
        self.baseline_loaded_at = now_s
        if self.log is not None:
            self.log.info("baseline learned automatically", vectors=learned.meta["vectors"], every=every,
                          left_out=learned.meta["left_out_vectors"], hours_of_week=len(learned.by_week_hour))

    def _baseline_stats(self, names, ts_ns: int) -> dict:
        b = self.baseline
        if b is None:
            return {}
        out = {}
        for n in names:
            st, _ = b.for_ts(n, ts_ns)
            if st and st.get("n"):
                out[n] = st
        return out

    def slope(self, name: str, span_s: float | None = None) -> float | None:
        """Change per minute of a feature over the last span_s (default SLOPE_SPAN_S) of history;
        None until the history covers 80 % of the span."""
        if not self.history:
            return None
        span = span_s or SLOPE_SPAN_S
        t_end = self.history[-1][0]
        pts = [(t, v[name]) for t, v in self.history if t >= t_end - span and v.get(name) is not None]
        if len(pts) < MIN_SLOPE_POINTS or t_end - pts[0][0] < 0.8 * span - FEATURE_STEP_S:
            return None
        a = np.array(pts, dtype=float)
        if np.ptp(a[:, 0]) <= 0:
            return None
        return line_fit(a[:, 0] - a[0, 0], a[:, 1])[0] * 60.0

    def trend(self, name: str, value: float | None) -> str:
        s = self.slope(name)
        if s is None or value is None:
            return "unknown"
        scale = max(abs(value), 1e-9)
        if abs(s) < 0.05 * scale:
            return "stable"
        return "rising" if s > 0 else "declining"

    # -- one interval -----------------------------------------------------------
    def urgent(self, now_ns: int | None = None, oom: bool = True) -> bool:
        """Something that must not wait for the next step: an OOM kill was just stored (looked for
        unless oom is False: ks-ingest's ring says none was), or (looked at once a second) a memory
        forecast reached WARNING with no observation open for it yet: a fast leak fills a cgroup in
        seconds, and a step is 5 s."""
        try:
            if oom and self.oom.new_victims(self.ro):
                return True
            now_ns = now_ns or time.time_ns()
            if now_ns - self.last_forecast_check_ns < 1_000_000_000:
                return False
            self.last_forecast_check_ns = now_ns
            host, cgroups = self.memory_gate.scopes(self.ro, now_ns)
            fcs = [forecast(self.ro, now_ns)] if host else []
            for fc in fcs + (forecast_cgroups(self.ro, now_ns) if cgroups else []):
                if (RISK_LEVELS.index(fc.risk) >= RISK_LEVELS.index("WARNING")
                        and not self.tracker.is_open(f"forecast:{fc.scope}")):
                    return True
        except sqlite3.Error:
            pass
        return False

    def step(self, now_ns: int | None = None) -> list:
        now_ns = now_ns or time.time_ns()
        try:
            return self._step(now_ns)
        finally:
            self._housekeeping(now_ns)

    def _housekeeping(self, now_ns: int) -> None:
        if self.housekeeper is None:
            return
        try:
            self.housekeeper.maybe_run(now_ns)
        except sqlite3.Error as e:
            # a busy or full database delays housekeeping to the next minute, nothing else
            if self.log is not None:
                self.log.warning("housekeeping failed", error=str(e))

    def _step(self, now_ns: int) -> list:
        now_s = now_ns / 1e9
        s = self.rules.settings
        dt = now_s - self.last_step_s if self.last_step_s else FEATURE_STEP_S
        self.last_step_s = now_s
        vec = self._vector(now_ns)
        values = dict(vec.values)
        # None of these is a catalog feature (a test holds that): they add to the vector, never replace it.
        values.update(agent_signals(self.ro, now_ns, FEATURE_WINDOW_S))
        values.update(io_worst(values, FEATURE_WINDOW_S))
        values.update(disk_worst(self.ro, now_ns, FEATURE_WINDOW_S))
        values.update(self.exhaustion.signals(self.ro, now_ns, FEATURE_WINDOW_S))
        self.history.append((now_s, values))
        while self.history and self.history[0][0] < now_s - s.history_s:
            self.history.popleft()
        self.sampler.sample(dt, io=True)  # one pass over /proc for both samplers
        self.exhaustion.sample(self.sampler.io, self.sampler.io_t)
        values["event_loop_runq_delay_pct"] = self.sampler.loop_delay_pct()
        for pid, p in self.sampler.cur.items():
            t0, comm, peak = self.proc_first_seen.get(pid, (now_s, p.comm, 0))
            self.proc_first_seen[pid] = (t0, comm, max(peak, p.rss_kb))
        for pid in [p for p, (t0, _, _) in self.proc_first_seen.items()
                    if p not in self.sampler.cur and t0 < now_s - s.history_s]:
            del self.proc_first_seen[pid]
        self._baseline(now_s)
        fc = forecast(self.ro, now_ns)
        self.last_forecast = fc
        if now_s - self.history[0][0] < FEATURE_WINDOW_S:
            # Warming up: the window does not yet hold a full span of data, and the
            # pipeline's own start-up burst is in it.  Judge nothing yet.
            return []
        ctx = Context(values, self._baseline_stats(values.keys(), now_ns), self.slope, set(), self.cores,
                      RISK_LEVELS.index(fc.risk), mem_gb=self.mem_gb)
        findings = []
        for rule in self.rules.rules:
            if evaluate(rule, ctx, self.tracker.is_open(rule.id)):
                ctx.active.add(rule.id)
                findings.append(self._finding(rule, ctx, values, vec.window_s, fc, now_ns))
        anomalies = self._anomalies(ctx, values, {f.metric for f in findings})
        findings = self._one_per_incident(findings, anomalies, now_s, self._ahead(ctx, now_s))
        findings += self.oom.findings(self.ro, now_ns)
        findings += self._forecasts([fc, *forecast_cgroups(self.ro, now_ns)])
        findings += self._fold_exhaustion(self.exhaustion.forecasts(self.ro, now_ns), findings)
        findings += self.telemetry.findings(self.ro, now_ns)
        changes = self.tracker.update(now_s, findings)
        self._persist(changes, now_s, now_ns, fc)
        return changes

    def _vector(self, now_ns: int) -> FeatureVector:
        """This step's vector, computed once and stored before anything reads it."""
        m = compute_range(self.ro, [now_ns], FEATURE_WINDOW_S, cache=self.row_cache)
        try:
            write_matrix(self.rw, m)
        except sqlite3.Error as e:
            # A busy or full database costs this row of history, not this interval's evaluation.
            if self.log is not None:
                self.log.warning("feature vector not stored", error=str(e))
        self.last_vector = m.vector(0)
        return self.last_vector

    def _finding(self, rule: Rule, ctx: Context, values: dict, window_s: float, fc, now_ns: int) -> Finding:
        v = values.get(rule.metric)
        b = ctx.baseline.get(rule.metric) or {}
        mean = b.get("mean")
        z = ctx.z(rule.metric)
        fields = {
            "value": v if v is not None else math.nan,
            "extra": values.get(rule.extra) if rule.extra and values.get(rule.extra) is not None else math.nan,
            "window": human_duration(window_s),
            "cores": self.cores,
            "slope": self.slope(rule.metric) or 0.0,
            "vs_baseline": self._vs_baseline(v, mean, z),
            "forecast": (f"; {fc.reason}" if fc.risk != "NORMAL" else ""),
        }
        try:
            summary = rule.summary.format_map(fields)
        except (ValueError, KeyError, IndexError) as e:
            summary = f"{rule.label}: {rule.metric} = {_fmt(v)} (summary template error: {e})"
        correlated = [text for text, cond in rule.correlated if ctx.holds(cond)]
        processes = self._attribute(rule.attribution, now_ns)
        return Finding(
            key=rule.id, rule_id=rule.id, label=rule.label, category=rule.category,
            observation_type=rule.observation_type, severity=rule.severity, metric=rule.metric,
            value=v, baseline_mean=mean, zscore=z, trend=self.trend(rule.metric, v), summary=summary,
            hints=list(rule.hints), correlated=correlated, processes=processes,
        )

    @staticmethod
    def _vs_baseline(v: float | None, mean: float | None, z: float | None) -> str:
        if v is None or mean is None:
            return ""
        ztxt = f", z {z:+.1f}" if z is not None else ""
        if mean > 0 and v / mean >= 2:
            return f", {v / mean:.0f}x its baseline of {mean:.3g}{ztxt}"
        if mean > 0 and v / mean <= 0.5:
            return f", down from a baseline of {mean:.3g}{ztxt}"
        return f" (baseline {mean:.3g}{ztxt})"

    def _anomalies(self, ctx: Context, values: dict, covered: set[str]) -> list[Finding]:
        s = self.rules.settings
        cands = []
        for name, st in ctx.baseline.items():
            v = values.get(name)
            if v is None or name in covered or name.startswith(("cpu_count", "memory_exhaustion_eta")):
                continue
            z, rz = ctx.z(name), ctx.z(name, robust=True)
            if z is None or rz is None:
                continue
            key = f"anomaly:{name}"
            # Hysteresis: an open anomaly holds until it falls below 3/4 of the threshold.
            limit = s.anomaly_z * (0.75 if self.tracker.is_open(key) else 1.0)
            rel = abs(v - st["mean"]) / max(abs(st["mean"]), 1e-9)
            if abs(z) >= limit and abs(rz) >= limit and rel >= s.anomaly_min_rel_change:
                cands.append((abs(rz), name, v, st["mean"], z))
        cands.sort(reverse=True)
        out = []
        for _, name, v, mean, z in cands[: s.anomaly_max_open]:
            f = fcat.BY_NAME.get(name)
            desc = f.description.split(",")[0] if f is not None else name
            unit = f" {f.unit}" if f is not None and f.unit else ""
            direction = "above" if z > 0 else "below"
            summary = (f"{desc[:1].upper()}{desc[1:]} ({name}) is {abs(z):.1f} standard deviations {direction} "
                       f"normal: {v:.3g}{unit} vs typical {mean:.3g}{unit}")
            out.append(Finding(
                key=f"anomaly:{name}", rule_id="baseline_deviation", label="Baseline Deviation",
                category=feature_category(name), observation_type="anomaly",
                severity=_deviation_severity(z, ctx.z(name, robust=True), v, mean, s), metric=name, value=v,
                baseline_mean=mean, zscore=z, trend=self.trend(name, v), summary=summary,
                hints=[f"Compare {name} with related signals around the same time",
                       "If this is a planned change, learn a new baseline (ks-features baseline learn)"],
            ))
        return out

    def _ahead(self, ctx: Context, now_s: float) -> Context | None:
        """ctx with every value carried cause_lookahead_steps steps ahead at the pace of the step
        before (v + k * (v - previous v)); None without a previous step about one step ago."""
        k = self.rules.settings.cause_lookahead_steps
        if k <= 0 or len(self.history) < 2:
            return None
        t_prev, prev = self.history[-2]
        if not 0 < now_s - t_prev <= 2 * FEATURE_STEP_S:  # a stalled agent: no pace to go by
            return None
        values = dict(ctx.values)
        for name, v in ctx.values.items():
            p = prev.get(name)
            if isinstance(v, (int, float)) and isinstance(p, (int, float)) and math.isfinite(v) and math.isfinite(p):
                values[name] = v + k * (v - p)
        ahead = copy.copy(ctx)  # the same baseline, slopes, cores and risk
        ahead.values, ahead.active = values, set(ctx.active)
        return ahead

    def _cause_in_sight(self, label: str, ahead: Context | None) -> bool:
        """Could a rule that explains label fire soon?  Without a look ahead: assume so."""
        if ahead is None:
            return True
        return any(evaluate(r, ahead, False) for r in self.rules.rules if label in r.explains)

    def _one_per_incident(self, fired: list[Finding], anomalies: list[Finding], now_s: float,
                          ahead: Context | None = None) -> list[Finding]:
        """Fold evidence into the incident it belongs to instead of opening one observation per signal.

        A primary rule firing is an incident.  Secondary rules and baseline deviations that coincide
        with one become its correlated signals (same category first, else the most severe); in the
        reopen window after an incident they are its tail.  Alone, a secondary rule opens as before,
        and a deviation opens only when large (anomaly_open_z) and sustained (anomaly_sustain_s).
        Whatever is already open stays open until it clears: it began before, so it is not explained
        by what came after."""
        s = self.rules.settings
        secondary = {r.id for r in self.rules.rules if r.secondary}
        primaries = [f for f in fired if f.rule_id not in secondary]
        tail = any(t.finding.rule_id not in secondary and t.finding.rule_id != "baseline_deviation"
                   and t.closed_at is not None and now_s - t.closed_at <= s.reopen_within_s
                   for t in self.tracker.recently_closed.values())

        def host(f: Finding) -> Finding | None:
            pool = [p for p in primaries if p.category == f.category] or primaries
            return max(pool, key=lambda p: SEVERITIES.index(p.severity)) if pool else None

        # Two rules that name the same condition (File System Issue by errno and by openat storm): one.
        by_label: dict[str, Finding] = {}
        for p in list(primaries):
            first = by_label.setdefault(p.label, p)
            if first is not p:
                first.correlated.append(f"{p.label}: {p.summary}")
                primaries.remove(p)
        # Cause and consequence (rules' `explains`): a consequence folds into its cause while both
        # hold, unless it was open first (then it began first and stays its own until it clears).
        # Up a chain of causes that all hold, to its top: the run queues (CPU Saturation) of a
        # switch storm (Scheduling Thrash) that serialisation (Serialization Bottleneck) explains
        # are the serialisation's incident, whichever rule is read first.
        present = list(primaries)

        def causes_of(p: Finding) -> list[Finding]:
            if self.tracker.is_open(p.key):
                return []
            return [q for q in present if q is not p and p.label in self.explains.get(q.label, ())]

        def pick(causes: list[Finding]) -> Finding:
            # the root first (a cause nothing present explains), then the most severe
            roots = [q for q in causes if not causes_of(q)]
            return max(roots or causes, key=lambda q: SEVERITIES.index(q.severity))

        for p in present:
            causes = causes_of(p)
            if not causes:
                continue
            top = pick(causes)
            while causes_of(top):  # ends: load_rules refuses an `explains` cycle
                top = pick(causes_of(top))
            _absorb(top, p)
            primaries.remove(p)
        # A consequence waits consequence_wait_s before it opens alone, while a cause is in sight
        # (ahead: the values a step or two on, see _ahead).
        explained = set().union(*self.explains.values()) if self.explains else set()
        firing = {f.key: self.firing_since.get(f.key, now_s) for f in fired}
        self.firing_since = firing
        # A consequence that outlasts its cause (the run queues drain a step after the CPUs idle) is
        # that incident's tail: it has fired without a break since a step at which the cause still
        # held, and the cause held within clear_after_s.  One that began after the cause ended is news
        # (the next fault); one that goes on longer is an incident of its own (the major faults of a
        # cold mmap reader after the write-back of the file's creation).
        causes_about = [t for t in self.tracker.open.values() if now_s - t.last_seen <= s.clear_after_s]
        for p in [p for p in primaries if p.label in explained and not self.tracker.is_open(p.key)]:
            if any(p.label in self.explains.get(t.finding.label, ()) and firing[p.key] <= t.last_seen
                   for t in causes_about if t.key != p.key):
                primaries.remove(p)
        out = [p for p in primaries if self.tracker.is_open(p.key) or p.label not in explained
               or now_s - firing[p.key] >= s.consequence_wait_s or not self._cause_in_sight(p.label, ahead)]
        # Alone, a secondary rule opens once it has held anomaly_sustain_s: at a fault's start the
        # load's 10-minute climb (Steady Demand Growth) fires a step before the fault's own rule.
        for f in fired:
            if f.rule_id not in secondary:
                continue
            h = None if self.tracker.is_open(f.key) else host(f)
            if h is not None:
                h.correlated.append(f"{f.label}: {f.summary}")
            elif self.tracker.is_open(f.key) or (not tail and now_s - firing[f.key] >= s.anomaly_sustain_s):
                out.append(f)
        deviating = {}
        for a in anomalies:
            since = deviating[a.metric] = self.deviating_since.get(a.metric, now_s)
            h = None if self.tracker.is_open(a.key) else host(a)
            if h is not None:
                h.correlated.append(f"Baseline deviation: {a.summary}")
            elif self.tracker.is_open(a.key) or (
                    not tail and abs(a.zscore or 0.0) >= s.anomaly_open_z and now_s - since >= s.anomaly_sustain_s):
                out.append(a)
        self.deviating_since = deviating
        return out

    def _fold_exhaustion(self, forecasts: list[Finding], fired: list[Finding]) -> list[Finding]:
        """A resource already at its limit is that rule's incident: its exhaustion forecast (the trend
        that got it there) becomes the observation's evidence, not a second observation.  A forecast
        already open stays open until it clears."""
        out = []
        for fc in forecasts:
            scope = fc.key.split(":", 1)[1] if ":" in fc.key else ""
            rules = next((r for p, r in LIMIT_RULES_BY_SCOPE if scope.startswith(p)), ())
            host = next((f for f in fired if f.rule_id in rules), None)
            if host is not None and not self.tracker.is_open(fc.key):
                host.correlated.append(f"{fc.label}: {fc.summary}")
            else:
                out.append(fc)
        return out

    def _forecasts(self, forecasts) -> list[Finding]:
        """A forecast observation for the host or a cgroup at WARNING or above."""
        out = []
        for fc in forecasts:
            if RISK_LEVELS.index(fc.risk) < RISK_LEVELS.index("WARNING"):
                continue
            scope = "host memory" if fc.scope == "host" else f"memory cgroup {fc.scope}"
            if fc.seconds_to_exhaustion is not None:
                summary = (f"Forecast: {scope} runs out in ~{fc.seconds_to_exhaustion:.0f} s at "
                           f"{-(fc.trend_kb_per_s or 0) / 1024:.1f} MiB/s ({fc.headroom_pct:.1f}% headroom left, "
                           f"fit over {fc.horizon_s:.0f} s, confidence {fc.confidence:.2f})")
            else:
                summary = f"Forecast: {scope} has {fc.headroom_pct or 0:.1f}% headroom left"
            out.append(Finding(
                key=f"forecast:{fc.scope}", rule_id="oom_forecast", label="Memory Exhaustion Forecast",
                category="memory", observation_type="forecast",
                severity="critical" if fc.risk == "CRITICAL" else "high", metric="seconds_to_exhaustion",
                value=fc.seconds_to_exhaustion, trend="declining", summary=summary,
                hints=["At this rate the kernel will start OOM-killing" + ("" if fc.scope == "host" else
                                                                          " inside this cgroup"),
                       fc.reason],
                processes=[{"kind": "memory_growers", **r} for r in self.sampler.memory_growers()[:3]],
                forecast={"scope": fc.scope, "risk": fc.risk, "seconds_to_exhaustion": fc.seconds_to_exhaustion,
                          "confidence": fc.confidence, "horizon_s": fc.horizon_s},
            ))
        return out

    def _attribute(self, kinds: list[str], now_ns: int) -> list[dict]:
        since = now_ns - int(max(FEATURE_WINDOW_S, 60) * 1e9)
        out = []
        for kind in kinds:
            if kind in ("slow_syscalls", "slow_storage_reads"):
                rows = slow_syscalls(self.ro, since, storage_reads=kind == "slow_storage_reads")
            elif kind == "connection_makers":
                rows = connection_makers(self.ro, since)
            elif kind == "retransmitters":
                rows = retransmitters(self.ro, since)
            elif kind == "dropping_interfaces":
                rows = dropping_interfaces(self.ro, now_ns - int(FEATURE_WINDOW_S * 1e9))
            elif kind == "failing_processes":
                rows = failing_processes(self.ro, now_ns - int(FEATURE_WINDOW_S * 1e9), now_ns,
                                         FEATURE_WINDOW_S) or []
            elif kind == "fs_errors":
                errs = fs_errors(self.ro, now_ns - int(FEATURE_WINDOW_S * 1e9), now_ns)
                rows = [{"comm": k, "failed_calls": n} for k, n in sorted(errs.items(), key=lambda x: -x[1])]
            elif kind == "forkers":
                # Exits of short-lived children name a storm's parent; the sampler's new processes by
                # parent when the exit collector is not there.
                since_step = now_ns - int(FEATURE_WINDOW_S * 1e9)
                rows = short_lived_children(self.ro, since_step) or self.sampler.forkers()
            elif kind == "spawners":
                rows = spawners(self.ro, since)
            elif kind in EXHAUSTION_KINDS:
                rows = self.exhaustion.rows(kind, self.ro, now_ns, FEATURE_WINDOW_S)
            else:
                rows = getattr(self.sampler, kind)()
            for r in rows[:3]:
                row = {"kind": kind, **r}
                # Name the cgroup (container, service) a suspect runs in, when it is not the root.
                cg = None
                if isinstance(r.get("pid"), int) and "cgroup" not in r:
                    cg = cgroup_of(r["pid"], str(self.sampler.proc))
                if cg is not None:
                    row["cgroup"] = cg
                out.append(row)
        return out

    def recent_changes(self, first_seen_s: float, now_ns: int, suspects: set[str] | None = None) -> list[str]:
        """What the data shows changed shortly before (or as) the condition began:
        processes that appeared (our /proc sampler), deploy-like commands and exec
        bursts (execsnoop collector), and OOM kills."""
        out = []
        horizon = 600.0
        suspects = suspects or set()
        # A new process counts as a change when it is one the symptom points at, or
        # big enough to matter; shell plumbing (sleep, grep) that comes and goes does not.
        newer = sorted(((t, pid, comm) for pid, (t, comm, peak) in self.proc_first_seen.items()
                        if first_seen_s - horizon <= t <= first_seen_s + FEATURE_STEP_S
                        and t > self._agent_start() and (comm in suspects or peak >= BIG_RSS_KB)),
                       key=lambda x: x[0])
        by_comm: dict[str, list] = {}
        for t, pid, comm in newer:
            by_comm.setdefault(comm, []).append(t)
        for comm, ts in sorted(by_comm.items(), key=lambda kv: -len(kv[1]))[:3]:
            rel = ts[0] - first_seen_s
            out.append((rel, f"new process: {comm}" + (f" x{len(ts)}" if len(ts) > 1 else "") +
                        f" started at T{rel:+.0f}s"))
        try:
            rows = self.ro.execute(
                "SELECT comm, COUNT(*), MIN(ts) FROM exec_events WHERE ts >= ? AND ts <= ? GROUP BY comm "
                "ORDER BY COUNT(*) DESC LIMIT 20",
                (int((first_seen_s - horizon) * 1e9), int((first_seen_s + FEATURE_STEP_S) * 1e9))
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
        for comm, n, t0 in rows:
            rel = t0 / 1e9 - first_seen_s
            if DEPLOY_COMMS.match(comm or ""):
                out.append((rel, f"deployment_event: {comm} ran at T{rel:+.0f}s"))
            elif n >= EXEC_BURST and rel >= -EXEC_BURST_SPAN_S:
                out.append((rel, f"exec burst: {comm} x{n} since T{rel:+.0f}s"))
        try:
            oom = self.ro.execute("SELECT COUNT(*), MIN(ts) FROM oom_kill_events WHERE ts >= ?",
                                  (int((first_seen_s - horizon) * 1e9),)).fetchone()
        except sqlite3.OperationalError:
            oom = (0, None)
        if oom[0]:
            out.append((oom[1] / 1e9 - first_seen_s,
                        f"oom_kill: {oom[0]} process(es) killed by the OOM killer"))
        # Nearest to the onset first, and what came before it ahead of what came after:
        # the change just before a fault is its likeliest cause.
        out.sort(key=lambda x: (x[0] > FEATURE_STEP_S, abs(x[0])))
        return [text for _, text in out[:6]]

    def _agent_start(self) -> float:
        # Processes already running when the agent started are not "new".
        return self.history[0][0] + 0.5 if self.history else 0.0

    # -- output ---------------------------------------------------------------
    def observation(self, t: Tracked, now_s: float, now_ns: int) -> dict:
        f = t.finding
        dur = t.duration(now_s)
        b = band(dur)
        severity = escalate(f.severity, b) if f.observation_type != "anomaly" else f.severity
        hold = self.alert_after.get(f.rule_id, 0.0)
        if dur < hold:
            severity = "low"  # transient so far: logged, not alerted (it takes its severity at `hold`)
        changes = self.recent_changes(t.first_seen, now_ns, {p.get("comm") for p in f.processes})
        summary = f.summary
        lead = next((c for c in changes if c.startswith(("new process", "deployment_event"))), None)
        if lead:
            summary += f", after {lead.split(': ', 1)[1]}"
        if dur < FEATURE_STEP_S:
            # First sight: it held over the window just judged, which is all that is known yet.
            summary += f"; seen over the last {human_duration(FEATURE_WINDOW_S)}, new"
        else:
            summary += f"; for {human_duration(dur)} ({BAND_WORDS[b]})"
        hints = list(f.hints)
        def suspect(p: dict) -> str:
            what = ", ".join(f"{k} {v}" for k, v in p.items() if k not in ("kind", "comm", "pid", "unit"))
            pid = f" (pid {p['pid']})" if "pid" in p else ""
            return f"({str(p.get('kind', '?')).replace('_', ' ')}): {p.get('comm', '?')}{pid}: {what}"

        if f.processes:
            hints.insert(0, f"Top suspect {suspect(f.processes[0])}")
        onset = t.onset_processes[0] if t.onset_processes else None
        if onset is not None and (not f.processes or (onset.get("pid"), onset.get("comm")) != (
                f.processes[0].get("pid"), f.processes[0].get("comm"))):
            # What led when it began may be gone or overtaken now: keep it beside the current one.
            hints.insert(1 if f.processes else 0, f"Suspect at onset {suspect(onset)}")
        if self.baseline is None:
            hints.append("No baseline learned yet: run `ks-features baseline learn` after a normal period")
        return {
            "timestamp": int(now_s),
            "observation_type": f.observation_type,
            "severity": severity,
            "signal_category": f.category,
            "summary": summary,
            "details": {
                "metric": f.metric,
                "current_value": None if f.value is None else round(float(f.value), 4),
                "baseline_mean": None if f.baseline_mean is None else round(float(f.baseline_mean), 4),
                "zscore": None if f.zscore is None else round(float(f.zscore), 2),
                "trend": f.trend,
                "duration_seconds": int(dur),
                "first_seen": int(t.first_seen),
            },
            "context": {"recent_changes": changes, "correlated_signals": f.correlated},
            "reasoning_hints": hints,
            **({"forecast": f.forecast} if f.forecast else {}),
        }

    def _persist(self, changes, now_s: float, now_ns: int, fc) -> None:
        conn = self.rw
        rendered = []
        for ch in changes:
            # One observation that cannot be rendered (a value of a shape no rule foresaw) is
            # logged and counted, and retried at the next step; it does not fail the others.
            try:
                rendered.append((ch, self.observation(ch.tracked, now_s, now_ns)))
            except Exception as e:  # noqa: BLE001 - isolate, log and count any failure of one render
                self.render_failures += 1
                if self.log is not None:
                    self.log.error("observation not rendered", label=ch.tracked.finding.label, kind=ch.kind,
                                   error=f"{type(e).__name__}: {e}", failures_total=self.render_failures)
        with transaction(conn):
            self.store.save_forecast(now_ns, fc)
            for ch, obs in rendered:
                t = ch.tracked
                b = band(t.duration(now_s))
                closed = ch.kind == "closed"
                if t.obs_id is None:
                    t.obs_id = self.store.insert(t.finding.rule_id, t.key, t.finding.label, obs, b,
                                                 obs["severity"], t.finding.processes)
                else:
                    self.store.update(t.obs_id, obs, b, obs["severity"], "closed" if closed else "open",
                                      int(t.last_seen), int(t.closed_at) if closed else None, t.updates,
                                      t.finding.processes)
                sig = (obs["severity"], b)
                if ch.kind in ("opened", "reopened", "closed") or self.last_streamed.get(t.key) != sig:
                    self.store.stream(ch.kind if ch.kind != "updated" else "changed", t.obs_id, obs)
                    self.last_streamed[t.key] = sig
                    if self.log is not None:
                        self.log.info("observation " + ch.kind, id=t.obs_id, label=t.finding.label,
                                      severity=obs["severity"], summary=obs["summary"])

    def close(self) -> None:
        self.ro.close()
        self.rw.close()

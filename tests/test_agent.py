"""ks-agent: rules, persistence, hysteresis, observation schema, read-only tools, and a replayed real incident."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO, tool
from kernelsight import db
from kernelsight.agent import engine
from kernelsight.agent.engine import Agent
from kernelsight.agent.forecast import classify, fit
from kernelsight.agent.readonly_sql import QueryRefused, ReadOnlyDB
from kernelsight.agent.exhaustion import EXHAUSTION_SIGNALS
from kernelsight.agent.rules import Context, RuleError, evaluate, load_rules, parse_condition
from kernelsight.agent.signals import AGENT_SIGNALS, io_worst
from kernelsight.agent.tracker import Finding, Tracker, band, escalate
from kernelsight.features.catalog import BY_NAME, FEATURE_STEP_S, FEATURE_WINDOW_S, NAMES
from kernelsight.features.store import read_matrix

RULES = load_rules()
OBS_SCHEMA = json.loads((REPO / "schema" / "observation.schema.json").read_text())
CAPTURE = REPO / "tests" / "fixtures" / "agent" / "memory_pressure.jsonl"

# A quiet 2-CPU machine: every rule must stay silent on this.
NORMAL = {
    "syscall_read_slow_calls": 0, "io_read_latency_p95_ms": 0.5, "io_write_latency_p95_ms": 1.0,
    "procs_blocked_avg": 0, "syscall_futex_p95_ms": 0.05, "syscall_futex_calls_per_sec": 100, "syscall_epoll_wait_p95_ms": 5,
    "syscall_openat_errors_per_sec": 2, "syscall_openat_error_pct": 10, "syscall_fs_errors_per_sec": 0, "syscall_openat_top_process_errors_per_sec": 1, "event_loop_runq_delay_pct": 1, "ctx_switches_per_sec": 800,
    "ctx_switches_involuntary_pct": 10, "cpu_utilization_pct": 5, "runq_depth_avg": 0.2,
    "sched_wakeups_per_sec": 700, "memory_available_pct": 90, "memory_dirty_mb": 2, "memory_writeback_mb": 0,
    "swap_used_pct": None, "swap_out_pages_per_sec": 0, "page_faults_major_per_sec": 0,
    "page_faults_per_sec": 3000, "memory_reclaim_scan_pages_per_sec": 0, "memory_direct_reclaim_pages_per_sec": 0,
    "psi_memory_some_pct": 0, "oom_kills_per_min": 0, "io_p50_ms_max": 0.2, "io_p95_ms_max": 1.0,
    "io_p99_ms_max": 2.0, "disk_queue_depth_avg": 0.1, "io_queue_depth_at_issue_avg": 0.5, "tcp_time_wait": 10,
    "tcp_active_opens_per_sec": 1, "tcp_established": 5, "tcp_retransmit_pct": 0, "net_tx_packets_per_sec": 20, "tcp_out_segs_per_sec": 30,
    "tcp_syn_recv": 0, "tcp_listen_drops_per_sec": 0, "net_errors_per_sec": 0, "net_drops_per_sec": 0,
    "load_avg_1m": 0.3, "procs_running_avg": 1, "runq_latency_p95_us": 50, "psi_cpu_some_pct": 1,
    "forks_per_sec": 3, "tasks_total": 120, "cpu_iowait_pct": 0, "load_avg_5m": 0.3, "load_per_cpu_ratio": 0.15,
    "disk_util_max_pct": 1, "disk_await_ms_worst": 0.5, "disk_queue_depth_worst": 0.1, "disk_util_worst_pct": 1,
    # resources that run out: the root fs 40 % full with a slow writer, a few hundred descriptors and tasks
    "fs_avail_pct_worst": 60, "fs_avail_mb_worst": 12000, "fs_avail_minutes_worst": 90000, "fs_full_count": 0,
    "fs_inodes_avail_pct_worst": 93, "file_handles_used_pct": 0.05, "nofile_top_used_pct": 12,
    "nofile_top_fds_left": 900, "pids_used_pct": 0.9, "threads_used_pct": 0.1, "pids_cgroup_used_pct": 2,
    "pids_cgroup_left": 4000, "conntrack_used_pct": None, "ephemeral_ports_used_pct": 0.1,
}
BASELINE = {"tasks_total": {"n": 100, "mean": 120, "std": 5, "median": 120, "mad": 3},
            "syscall_futex_p95_ms": {"n": 100, "mean": 0.05, "std": 0.02, "median": 0.05, "mad": 0.01},
            "syscall_futex_calls_per_sec": {"n": 100, "mean": 120, "std": 40, "median": 110, "mad": 30},
            "syscall_epoll_wait_p95_ms": {"n": 100, "mean": 5, "std": 2, "median": 5, "mad": 1},
            "ctx_switches_per_sec": {"n": 100, "mean": 800, "std": 100, "median": 800, "mad": 60}}

# What makes each rule fire: value overrides, slopes (per minute), active rules, OOM risk.
FIRES = {
    "io_bottleneck": ({"syscall_read_slow_calls": 5, "io_read_latency_p95_ms": 40}, {}, set(), 0),
    "lock_contention": ({"syscall_futex_calls_per_sec": 14000, "syscall_futex_p95_ms": 15}, {}, set(), 0),
    "event_loop_starvation": ({"event_loop_runq_delay_pct": 45}, {}, set(), 0),
    "file_system_issue": ({"syscall_openat_errors_per_sec": 5000, "syscall_openat_error_pct": 99,
                           "syscall_openat_top_process_errors_per_sec": 4900}, {}, set(), 0),
    "file_system_errors": ({"syscall_fs_errors_per_sec": 40}, {}, set(), 0),
    "scheduling_thrash": ({"ctx_switches_per_sec": 75000}, {}, set(), 0),
    "cpu_starvation": ({"ctx_switches_involuntary_pct": 90, "ctx_switches_per_sec": 9000,
                        "cpu_utilization_pct": 99}, {}, set(), 0),
    "cpu_saturation": ({"runq_depth_avg": 8}, {}, set(), 0),
    "serialization_bottleneck": ({"sched_wakeups_per_sec": 9000, "ctx_switches_per_sec": 3000}, {}, set(), 0),
    "memory_pressure": ({"memory_available_pct": 8.5}, {}, set(), 0),
    "write_buffer_saturation": ({"memory_dirty_mb": 900}, {"memory_dirty_mb": 400}, set(), 0),
    "memory_overflow": ({"swap_used_pct": 20, "swap_out_pages_per_sec": 500}, {}, set(), 0),
    "disk_thrashing": ({"page_faults_major_per_sec": 800}, {}, set(), 0),
    "io_tail_latency": ({"io_p95_ms_max": 15, "io_p99_ms_max": 150}, {}, set(), 0),
    "io_saturation": ({"io_p50_ms_max": 20, "disk_util_worst_pct": 90}, {}, set(), 0),
    "io_queue_congestion": ({"disk_queue_depth_worst": 40}, {}, set(), 0),
    "read_amplification": ({"io_read_latency_p95_ms": 30, "io_write_latency_p95_ms": 2}, {}, set(), 0),
    "connection_churning": ({"tcp_time_wait": 2500}, {}, set(), 0),
    "network_degradation": ({"tcp_retransmit_pct": 3, "tcp_out_segs_per_sec": 5000}, {}, set(), 0),
    "syn_flood": ({"tcp_syn_recv": 400}, {}, set(), 0),
    "nic_issue": ({"net_errors_per_sec": 5}, {}, set(), 0),
    "oversubscription": ({"procs_running_avg": 9, "load_avg_1m": 3, "cpu_utilization_pct": 99,
                          "psi_cpu_some_pct": 90}, {}, set(), 0),
    "process_explosion": ({"forks_per_sec": 2000}, {}, set(), 0),
    "io_wait_dominates": ({"procs_blocked_avg": 3, "io_p95_ms_max": 80}, {}, set(), 0),
    "steady_demand_growth": ({"load_per_cpu_ratio": 0.9}, {"load_avg_5m": 0.3}, set(), 0),
    "approaching_oom": ({"memory_available_pct": 6}, {}, {"memory_pressure"}, 2),
    "io_bottleneck_scheduling_churn": ({"io_p95_ms_max": 40, "ctx_switches_per_sec": 60000, "procs_blocked_avg": 2},
                                       {}, set(), 0),
    # a 300 MiB tmpfs with 20 MiB left; a big volume at 95 % filling at a rate that ends it within hours
    "fs_near_full": ({"fs_avail_pct_worst": 6.5, "fs_avail_mb_worst": 20}, {}, set(), 0),
    "fs_full": ({"fs_avail_pct_worst": 0.0, "fs_avail_mb_worst": 0.0, "fs_full_count": 1}, {}, set(), 0),
    "fs_inodes_near_full": ({"fs_inodes_avail_pct_worst": 2}, {}, set(), 0),
    "file_handles_near_limit": ({"file_handles_used_pct": 95}, {}, set(), 0),
    "process_fd_near_limit": ({"nofile_top_used_pct": 97, "nofile_top_fds_left": 30}, {}, set(), 0),
    "pids_near_limit": ({"pids_used_pct": 96}, {}, set(), 0),
    "pids_cgroup_near_limit": ({"pids_cgroup_used_pct": 95, "pids_cgroup_left": 10}, {}, set(), 0),
    "conntrack_near_full": ({"conntrack_used_pct": 92}, {}, set(), 0),
    "ephemeral_ports_near_exhaustion": ({"ephemeral_ports_used_pct": 88}, {}, set(), 0),
}


def ctx(values=None, slopes=None, active=None, risk=0, baseline=None, cores=2, mem_gb=24.0) -> Context:
    slopes = slopes or {}
    return Context({**NORMAL, **(values or {})}, BASELINE if baseline is None else baseline,
                   lambda name, span=None: slopes.get(name, 0.0), set(active or ()), cores, risk, mem_gb=mem_gb)


def test_every_interpretation_row_has_a_rule():
    assert set(FIRES) == {r.id for r in RULES.rules}
    assert len(RULES.rules) >= 26


def test_every_feature_a_rule_reads_exists():
    known = set(BY_NAME) | set(AGENT_SIGNALS) | set(EXHAUSTION_SIGNALS) | {"io_p50_ms_max", "io_p95_ms_max",
                                                                           "io_p99_ms_max"}
    for r in RULES.rules:
        missing = r.features() - known
        assert not missing, f"rule {r.id} reads unknown features {missing}"


@pytest.mark.parametrize("rule_id", list(FIRES))
def test_rule_fires_when_it_should_and_not_otherwise(rule_id):
    rule = RULES.by_id(rule_id)
    values, slopes, active, risk = FIRES[rule_id]
    assert evaluate(rule, ctx(values, slopes, active, risk), is_open=False), f"{rule_id} did not fire"
    assert not evaluate(rule, ctx(), is_open=False), f"{rule_id} fired on a quiet machine"


def test_missing_data_is_never_evidence():
    c = ctx({"memory_available_pct": None})
    assert not evaluate(RULES.by_id("memory_pressure"), c, is_open=False)
    # No baseline: a deviation cannot be judged (z() is missing), only the floor can.
    churn = {"io_p95_ms_max": 40, "ctx_switches_per_sec": 20000, "procs_blocked_avg": 2}
    assert evaluate(RULES.by_id("io_bottleneck_scheduling_churn"), ctx(churn), False)
    assert not evaluate(RULES.by_id("io_bottleneck_scheduling_churn"), ctx(churn, baseline={}), False)


def test_threshold_hysteresis_keeps_an_open_observation_open_between_thresholds():
    rule = RULES.by_id("memory_pressure")
    assert not evaluate(rule, ctx({"memory_available_pct": 11}), is_open=False)
    assert evaluate(rule, ctx({"memory_available_pct": 11}), is_open=True)
    assert not evaluate(rule, ctx({"memory_available_pct": 13}), is_open=True)


def test_condition_language_rejects_what_it_cannot_read():
    for bad in ["memory_available_pct", "x <> 3", "os.system(1) > 0", "nope(x) > 1", "z(x,5) > 1"]:
        with pytest.raises(RuleError):
            parse_condition(bad)
    c = parse_condition("load_avg_1m > 2 * cores")
    assert ctx({"load_avg_1m": 5}).holds(c) and not ctx({"load_avg_1m": 3}).holds(c)


@pytest.mark.parametrize("secs,name", [(30, "transient"), (59, "transient"), (60, "short-lived"),
                                       (299, "short-lived"), (300, "persistent"), (899, "persistent"),
                                       (900, "systemic"), (4000, "systemic")])
def test_persistence_bands(secs, name):
    assert band(secs) == name


def test_severity_escalates_with_persistence_only():
    assert escalate("medium", "transient") == "medium"
    assert escalate("medium", "short-lived") == "medium"
    assert escalate("medium", "persistent") == "high"
    assert escalate("medium", "systemic") == "critical"
    assert escalate("critical", "systemic") == "critical"


def finding(key="memory_pressure") -> Finding:
    return Finding(key, key, "Memory Pressure", "memory", "symptom", "high", "memory_available_pct", 8.0)


def test_flapping_signal_yields_one_observation():
    tr = Tracker(clear_after_s=10, reopen_within_s=60)
    kinds = []
    for i in range(40):  # on 5 s, off 15 s, for 200 s
        now = i * 5.0
        kinds += [c.kind for c in tr.update(now, [finding()] if i % 4 == 0 else [])]
    assert kinds.count("opened") == 1
    assert "reopened" in kinds


def test_stuck_signal_updates_one_observation_and_closes_after_clearing():
    tr = Tracker(clear_after_s=10, reopen_within_s=60)
    changes = [c for i in range(62) for c in tr.update(i * 5.0, [finding()])]
    assert [c.kind for c in changes].count("opened") == 1 and len({id(c.tracked) for c in changes}) == 1
    t = changes[-1].tracked
    assert band(t.duration(305.0)) == "persistent"
    closed = [c for i in range(62, 66) for c in tr.update(i * 5.0, [])]
    assert [c.kind for c in closed] == ["closed"] and not tr.is_open("memory_pressure")
    # Back after the reopen window: a new observation.
    assert tr.update(1000.0, [finding()])[0].kind == "opened"


def test_oom_forecast_on_a_known_decline():
    ts = (1_800_000_000 + __import__("numpy").arange(60)) * 10**9
    head = 4_000_000 - 50_000 * __import__("numpy").arange(60)  # -50 MB/s from 4 GB
    fc = fit(ts, head, 24_000_000.0)
    assert fc.trend_kb_per_s == pytest.approx(-50_000, rel=1e-6)
    assert fc.seconds_to_exhaustion == pytest.approx(head[-1] / 50_000, rel=1e-6)
    assert fc.confidence > 0.9 and fc.risk == "CRITICAL"
    assert classify(50.0, None, 0.0) == "NORMAL" and classify(8.0, None, 0.0) == "ELEVATED"
    assert fit(ts[:3], head[:3], 24e6).reason.startswith("only 3 memory samples")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """The recorded real memory-pressure incident, through ks-ingest --replay, then the agent."""
    d = tmp_path_factory.mktemp("agent")
    out = subprocess.run([tool("ks-ingest"), "--replay", str(CAPTURE), "--data-dir", str(d)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    conn = db.connect_readonly(db.db_path(d))
    lo, hi = conn.execute("SELECT MIN(ts), MAX(ts) FROM memory_metrics").fetchone()
    pct = conn.execute("SELECT ts, 100.0 * mem_available_kb / mem_total_kb FROM memory_metrics ORDER BY ts").fetchall()
    conn.close()
    agent = Agent(d, stream=True)
    log = []
    for t in range(lo + 5 * 10**9, hi + 1, 5 * 10**9):
        log += [(t, c.kind, c.tracked) for c in agent.step(t)]
        # Observations are built from what was persisted: keep the JSON as stored at each step.
    agent.close()
    return d, log, pct


def test_replayed_incident_opens_and_closes_a_memory_observation(replayed):
    d, log, pct = replayed
    onset = next(t for t, p in pct if p < 10)
    recovered = next(t for t, p in pct if t > onset and p > 50)
    opened = [(t, tr) for t, kind, tr in log if kind == "opened" and tr.finding.rule_id == "memory_pressure"]
    assert len(opened) == 1, "exactly one memory-pressure observation"
    t_open, tracked = opened[0]
    assert 0 <= (t_open - onset) / 1e9 <= 30, "opened within 30 s of onset"
    closed = [t for t, kind, tr in log if kind == "closed" and tr is tracked]
    assert closed and closed[0] > recovered, "closed after the pressure ended"
    conn = db.connect_readonly(db.db_path(d))
    row = conn.execute("SELECT observation, status, severity FROM observations WHERE rule='memory_pressure'").fetchone()
    conn.close()
    obs = json.loads(row[0])
    jsonschema.validate(obs, OBS_SCHEMA)
    assert row[1] == "closed" and row[2] in ("high", "critical")
    assert obs["signal_category"] == "memory" and obs["details"]["metric"] == "memory_available_pct"
    assert obs["details"]["current_value"] < 12
    assert "Available memory is" in obs["summary"]
    assert any("OOM" in h for h in obs["reasoning_hints"])
    assert any("memory growth" in h for h in obs["reasoning_hints"])


def test_every_stored_observation_matches_the_schema(replayed):
    d, _, _ = replayed
    conn = db.connect_readonly(db.db_path(d))
    rows = conn.execute("SELECT observation FROM observations").fetchall()
    conn.close()
    assert rows
    for (o,) in rows:
        jsonschema.validate(json.loads(o), OBS_SCHEMA)
    stream = (d / "observations.jsonl").read_text().splitlines()
    assert stream and all(json.loads(line)["event"] in ("opened", "reopened", "changed", "closed") for line in stream)


def test_replayed_incident_raises_no_high_alarm_before_the_fault(replayed):
    """Nothing high before memhog starts eating memory; the forecast warns once it does, well
    before available memory crosses 10 % (that is what a forecast is for)."""
    _, log, pct = replayed
    fault = next(t for t, p in pct if p < 95)   # memhog starts: available memory starts to fall
    onset = next(t for t, p in pct if p < 10)
    early = [tr.finding.label for t, kind, tr in log if t < fault and kind == "opened"
             and tr.finding.severity in ("high", "critical")]
    assert not early, f"high-severity observations before the fault: {early}"
    warned = [t for t, kind, tr in log if kind == "opened" and tr.finding.observation_type == "forecast"]
    assert warned and fault <= warned[0] < onset, "the forecast warned between the fault's start and the 10 % mark"


WRITES = ["INSERT INTO meta VALUES ('k', 'v')", "UPDATE meta SET value = 'x'", "DELETE FROM meta",
          "DROP TABLE meta", "ATTACH DATABASE '/tmp/other.db' AS other", "PRAGMA journal_mode = DELETE",
          "PRAGMA query_only = 0", "CREATE TABLE t(x)", "SELECT 1; DELETE FROM meta", "VACUUM"]


@pytest.mark.parametrize("sql", WRITES)
def test_query_database_refuses_writes(replayed, sql):
    d, _, _ = replayed
    ro = ReadOnlyDB(db.db_path(d))
    with pytest.raises(QueryRefused, match="refused"):
        ro.query(sql)
    assert ro.query("SELECT COUNT(*) FROM meta")["rows"][0][0] >= 4
    assert ro.query("PRAGMA table_info(memory_metrics)")["rows"]
    ro.close()


def test_tool_cli_refuses_a_write_with_a_clear_error(replayed):
    d, _, _ = replayed
    out = subprocess.run([tool("ks"), "agent", "tool", "query_database", "DELETE FROM observations",
                          "--data-dir", str(d)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "read-only" in out.stderr


def test_tools_answer(replayed):
    from kernelsight.agent.tools import ToolError, Tools

    d, _, _ = replayed
    t = Tools(d)
    assert t.query_database("SELECT COUNT(*) FROM memory_metrics")["rows"][0][0] > 60
    assert "values" in t.get_current_features()
    assert t.compare_baseline("5m")["baseline"] is None  # none learned in this DB: said, not faked
    logs = t.analyze_logs("refus|error")
    assert "matches_per_file" in logs
    with pytest.raises(ToolError):
        t.analyze_logs("(unclosed")
    md = t.export_report("md")
    assert "Memory Pressure" in md
    t.close()


def test_observations_cli_lists_them(replayed):
    d, _, _ = replayed
    out = subprocess.run([tool("ks"), "observations", "--all", "--data-dir", str(d)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Memory Pressure" in out.stdout


def test_agent_step_is_quiet_on_an_empty_database(tmp_path):
    agent = Agent(tmp_path)
    now = time.time_ns()
    for i in range(6):
        assert agent.step(now + i * 5 * 10**9) == []
    agent.close()
    assert Path(tmp_path / "kernelsight.db").exists()


def test_rules_tuned_on_the_scenario_suite():
    """What the real-fault scenarios (make scenarios) showed, kept as rules."""
    over = RULES.by_id("oversubscription")
    # Load from tasks in I/O sleep, CPUs 60 % busy: I/O wait, not oversubscription.
    assert not evaluate(over, ctx({"load_avg_1m": 6, "procs_running_avg": 3, "cpu_utilization_pct": 60,
                                   "psi_cpu_some_pct": 15}), is_open=False)
    # A make -j2: biased procs_running samples at 4.5, but nobody waits for CPU.
    assert not evaluate(over, ctx({"load_avg_1m": 2, "procs_running_avg": 4.5, "cpu_utilization_pct": 94,
                                   "psi_cpu_some_pct": 12}), is_open=False)
    assert not evaluate(over, ctx({"cpu_utilization_pct": 50}), is_open=True)
    # I/O bottleneck: reads blocked on pipes go on; it clears once block I/O is fast again.
    io = RULES.by_id("io_bottleneck")
    assert evaluate(io, ctx({"syscall_read_slow_calls": 4, "io_p95_ms_max": 30}), is_open=True)
    assert not evaluate(io, ctx({"syscall_read_slow_calls": 4, "io_p95_ms_max": 1}), is_open=True)
    # File-system issue: a busy machine's background of failing opens does not hold it open.
    fs = RULES.by_id("file_system_issue")
    assert not evaluate(fs, ctx({"syscall_openat_errors_per_sec": 300, "syscall_openat_error_pct": 25}),
                        is_open=True)
    assert evaluate(fs, ctx({"syscall_openat_errors_per_sec": 300, "syscall_openat_error_pct": 45}), is_open=True)


def test_agent_learns_a_baseline_by_itself_and_uses_it(tmp_path):
    """With no baseline, the agent learns one from a quiet stretch it watched, then
    observations carry baseline_mean and z-scores."""
    out = subprocess.run([tool("ks-ingest"), "--replay", str(CAPTURE), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    conn = db.connect_readonly(db.db_path(tmp_path))
    lo, hi = conn.execute("SELECT MIN(ts), MAX(ts) FROM memory_metrics").fetchone()
    conn.close()
    rules = load_rules()
    rules.settings.auto_baseline_after_s = 10  # the capture's quiet lead-in is 15 s
    agent = Agent(tmp_path, rules=rules, stream=False)
    for t in range(lo + 5 * 10**9, hi + 1, 5 * 10**9):
        agent.step(t)
    agent.close()
    conn = db.connect_readonly(db.db_path(tmp_path))
    n = conn.execute("SELECT COUNT(*) FROM baselines WHERE hour = -1").fetchone()[0]
    obs = json.loads(conn.execute("SELECT observation FROM observations WHERE rule='memory_pressure'").fetchone()[0])
    conn.close()
    assert n > 50
    assert json.loads((tmp_path / "baseline.json").read_text())["meta"]["source"].startswith("learned automatically")
    assert obs["details"]["baseline_mean"] > 90 and obs["details"]["zscore"] < -4
    assert "baseline" in obs["summary"]


def test_agent_signals_add_to_the_catalog_never_shadow_it():
    """The agent evaluates the stored vector as it is: its own signals only add names."""
    own = set(AGENT_SIGNALS) | set(io_worst({}, FEATURE_WINDOW_S))
    assert not own & set(NAMES)


def test_rules_have_no_window_or_step_of_their_own(tmp_path):
    assert not hasattr(RULES.settings, "window_s") and not hasattr(RULES.settings, "interval_s")
    text = (REPO / "pipeline" / "kernelsight" / "agent" / "rules.toml").read_text()
    for key, const in (("window_s", "FEATURE_WINDOW_S"), ("interval_s", "FEATURE_STEP_S")):
        path = tmp_path / f"{key}.toml"
        path.write_text(text.replace("[settings]\n", f"[settings]\n{key} = 60.0\n"))
        with pytest.raises(RuleError, match=const):
            load_rules(path)


def test_agent_stores_the_vector_it_evaluates_and_ks_features_computes_the_same(tmp_path, monkeypatch):
    """Each step's vector lands in the features table with the one window, and the rules see exactly
    those values; `ks-features compute` at the same end, with its default window, agrees."""
    out = subprocess.run([tool("ks-ingest"), "--replay", str(CAPTURE), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    conn = db.connect_readonly(db.db_path(tmp_path))
    lo, hi = conn.execute("SELECT MIN(ts), MAX(ts) FROM memory_metrics").fetchone()
    conn.close()
    seen: dict[int, dict] = {}  # step end -> the values the rules were evaluated on
    real_context = engine.Context

    def spy(values, *args, **kw):
        seen[agent.last_vector.ts] = dict(values)
        return real_context(values, *args, **kw)

    monkeypatch.setattr(engine, "Context", spy)
    agent = Agent(tmp_path, stream=False)
    step_ns = int(FEATURE_STEP_S * 1e9)
    ends = list(range(lo + step_ns, hi + 1, step_ns))
    for t in ends:
        agent.step(t)
        assert agent.last_vector.ts == t and agent.last_vector.window_s == FEATURE_WINDOW_S
    agent.close()

    conn = db.connect_readonly(db.db_path(tmp_path))
    stored = read_matrix(conn, lo, hi)
    conn.close()
    assert list(stored.ts) == ends and stored.window_s == FEATURE_WINDOW_S  # warm-up steps are stored too
    # Past the warm-up every step was judged, on the stored row itself.
    assert len(seen) >= len(ends) - FEATURE_WINDOW_S / FEATURE_STEP_S - 1
    rows = {int(t): stored.vector(i) for i, t in enumerate(stored.ts)}
    for t, values in seen.items():
        row = rows[t]
        assert {n: values[n] for n in NAMES} == row.values, t
    assert any(v is not None and v < 10 for v in (vals["memory_available_pct"] for vals in seen.values()))

    t = ends[len(ends) // 2]
    cli = subprocess.run([sys.executable, "-m", "kernelsight.features", "compute", "--at", str(t), "--json",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode == 0, cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["ts"] == t and doc["window_s"] == FEATURE_WINDOW_S
    assert doc["values"] == rows[t].values and doc["reasons"] == rows[t].reasons


# Rules whose floor is per core or per GiB: what fires on this 2-CPU, 24 GiB VM.
# (Not cpu_saturation: its run-queue depth is per CPU already, a fault at any size.)
SCALED = ("scheduling_thrash", "serialization_bottleneck", "file_system_issue",
          "write_buffer_saturation", "connection_churning", "process_explosion", "cpu_starvation")


@pytest.mark.parametrize("rule_id", SCALED)
def test_floors_scale_with_the_machine(rule_id):
    """The same absolute figures that are a fault on 2 CPUs and 24 GiB are a normal day on 64 CPUs and 1 TiB."""
    rule = RULES.by_id(rule_id)
    values, slopes, active, risk = FIRES[rule_id]
    assert evaluate(rule, ctx(values, slopes, active, risk), False)
    assert not evaluate(rule, ctx(values, slopes, active, risk, cores=64, mem_gb=1024.0), False)


def test_dz_joins_the_floor_to_the_hosts_own_normal():
    rule = RULES.by_id("scheduling_thrash")
    busy = {"ctx_switches_per_sec": 75000}
    # No baseline yet: the host-normalised floor alone decides.
    assert evaluate(rule, ctx(busy, baseline={}), False)
    # A host whose normal is 70k switches/s: 75k is not off its normal.
    normal_busy = {"ctx_switches_per_sec": {"n": 100, "mean": 70000, "std": 4000, "median": 70000, "mad": 3000}}
    assert not evaluate(rule, ctx(busy, baseline=normal_busy), False)
    assert evaluate(rule, ctx({"ctx_switches_per_sec": 150000}, baseline=normal_busy), False)


def test_io_saturation_without_ebpf_from_sys_block_and_a_clear_over_missing_data():
    rule = RULES.by_id("io_saturation")
    no_ebpf = {"io_p50_ms_max": None, "io_p95_ms_max": None, "io_p99_ms_max": None}
    assert evaluate(rule, ctx({**no_ebpf, "disk_await_ms_worst": 80, "disk_util_worst_pct": 100}), False)
    # The device went idle: no await at all is no evidence the saturation goes on.
    assert not evaluate(rule, ctx({**no_ebpf, "disk_await_ms_worst": None, "disk_util_worst_pct": 0}), True)


def test_steady_demand_growth_closes_once_the_load_falls():
    """Load rose for 10 minutes, then the work stopped: load_avg_5m falls within the minute
    while its 10-minute slope stays positive for minutes."""
    rule = RULES.by_id("steady_demand_growth")

    def at(slope_600, slope_60):
        return Context({**NORMAL, "load_per_cpu_ratio": 1.5}, BASELINE,
                       lambda name, span=None: {600.0: slope_600, 60.0: slope_60}[span], set(), 2, 0, mem_gb=24.0)

    assert evaluate(rule, at(0.3, 0.2), is_open=False)
    assert evaluate(rule, at(0.3, 0.0), is_open=True)       # a flat minute inside the growth: still open
    assert not evaluate(rule, at(0.3, -0.6), is_open=True)  # falling: closed, though 10 minutes rose
    assert not evaluate(rule, at(0.3, -0.6), is_open=False)


def test_io_saturation_by_queue_wait_against_the_devices_own_service_time():
    """fio randread at depth 8 here (run 2 of make scenarios): await 14 ms, 1.7 ms of it served,
    under both fixed floors; the requests waited 7 service times in the queue."""
    rule = RULES.by_id("io_saturation")
    quiet_ebpf = {"io_p50_ms_max": 1.5, "disk_await_ms_worst": 14.0, "disk_util_worst_pct": 100}
    assert evaluate(rule, ctx({**quiet_ebpf, "disk_queue_wait_ms_worst": 12.3,
                               "disk_queue_wait_per_service_worst": 7.1}), False)
    # Depth 1 (busy, not slow) and one dd writer: about one service time of wait.
    assert not evaluate(rule, ctx({**quiet_ebpf, "disk_await_ms_worst": 1.0, "disk_queue_wait_ms_worst": 0.0,
                                   "disk_queue_wait_per_service_worst": 0.0}), False)
    assert not evaluate(rule, ctx({**quiet_ebpf, "disk_await_ms_worst": 5.0, "disk_queue_wait_ms_worst": 2.4,
                                   "disk_queue_wait_per_service_worst": 0.9}), False)
    # An NVMe at depth 8: busy time per I/O says 8 service times of wait, but 0.2 ms of it.
    assert not evaluate(rule, ctx({**quiet_ebpf, "disk_await_ms_worst": 0.2, "disk_queue_wait_ms_worst": 0.18,
                                   "disk_queue_wait_per_service_worst": 7.0}), False)
    # Both halves of an `and` entry must hold: a long wait of a slow device's own service time is not it.
    assert not evaluate(rule, ctx({**quiet_ebpf, "disk_queue_wait_ms_worst": 12.0,
                                   "disk_queue_wait_per_service_worst": 1.5}), False)


def test_bursty_writeback_is_not_queue_congestion():
    """Requests issued in a burst each see a deep queue; the device's time-averaged depth is what congests."""
    rule = RULES.by_id("io_queue_congestion")
    assert not evaluate(rule, ctx({"io_queue_depth_at_issue_avg": 38, "disk_queue_depth_worst": 1.3}), False)
    assert evaluate(rule, ctx({"io_queue_depth_at_issue_avg": 38, "disk_queue_depth_worst": 40}), False)


def test_a_few_very_slow_ios_are_judged():
    slow = io_worst({"io_traced_iops": 0.2, "io_read_latency_p95_ms": 2000.0}, FEATURE_WINDOW_S)
    assert slow["io_p95_ms_max"] == 2000.0
    few = io_worst({"io_traced_iops": 0.2, "io_read_latency_p95_ms": 30.0}, FEATURE_WINDOW_S)
    assert few["io_p95_ms_max"] is None


def test_forecast_keeps_the_most_pessimistic_confident_horizon():
    from kernelsight.agent.forecast import best_fit

    np = __import__("numpy")
    ts = (1_800_000_000 + np.arange(120)) * 10**9
    # Flat for 110 s, then falling 100 MB/s: only the 10 s fit sees the leak for what it is.
    head = np.where(np.arange(120) < 110, 4_000_000.0, 4_000_000.0 - 100_000 * (np.arange(120) - 109))
    fc = best_fit(ts, head, 24_000_000.0)
    assert fc.horizon_s == 10.0 and fc.seconds_to_exhaustion == pytest.approx(head[-1] / 100_000, rel=0.05)
    assert fc.risk == "CRITICAL" and "over the last 10 s" in fc.reason
    # A resource 7 s old (a process opening sockets) has 7 s of history in every window: its
    # fall says nothing about 4 minutes ahead, whichever window it is fitted in.
    young = best_fit(ts[-8:], 1_000_000.0 - 4_000 * np.arange(8), 1_000_000.0)
    assert young.risk == "NORMAL" and young.confidence == 0.0
    # Noise without a trend: no confident fit, no alarm.
    rng = np.random.default_rng(1)
    calm = best_fit(ts, 12_000_000 + rng.normal(0, 50_000, 120), 24_000_000.0)
    assert calm.risk == "NORMAL"


def test_a_late_step_skips_the_missed_ones_and_stays_on_the_grid():
    from kernelsight.agent.daemon import next_step_at

    assert next_step_at(100.0, 5.0, 101.0) == (105.0, 0)
    assert next_step_at(100.0, 5.0, 105.0) == (105.0, 0)
    assert next_step_at(100.0, 5.0, 105.5) == (110.0, 1)    # a step that ran 0.5 s over: the next slot
    assert next_step_at(100.0, 5.0, 123.0) == (125.0, 4)    # 23 s starved: 105..120 missed, not run in a burst


def test_memory_gate_passes_only_what_could_warn():
    from kernelsight.agent.forecast import MemoryGate

    gb = 1024 * 1024  # kB
    steady = [(i * 10**9, 12 * gb + (i % 2) * 4096, 24 * gb) for i in range(10)]
    assert not MemoryGate.could_warn(steady)
    assert MemoryGate.could_warn(steady[:1])                                          # nothing to judge by yet
    assert MemoryGate.could_warn([(i * 10**9, 2 * gb, 24 * gb) for i in range(10)])   # under 10 % left
    fast = [(i * 10**9, 12 * gb - i * 50 * 1024, 24 * gb) for i in range(10)]       # 50 MiB/s: gone in ~4 min
    slow = [(i * 10**9, 12 * gb - i * 5 * 1024, 24 * gb) for i in range(10)]        # 5 MiB/s: ~40 min
    assert MemoryGate.could_warn(fast) and not MemoryGate.could_warn(slow)


def test_urgent_check_fits_only_when_memory_could_warn_and_misses_no_warning(tmp_path, monkeypatch):
    """A host steady for 2 min, then leaking 100 MiB/s: on the steady part the urgent check fits
    nothing; on the leak it says urgent the same second the ungated forecast reaches WARNING."""
    from kernelsight.agent import forecast as F

    agent = Agent(tmp_path, stream=False, housekeeping=False)
    total_kb, t0 = 8 * 1024 * 1024, 1_800_000_000 * 10**9
    avail = [6 * 1024 * 1024 + (i % 3) * 2048 - max(0, i - 120) * 100 * 1024 for i in range(170)]
    fits = []
    monkeypatch.setattr(engine, "forecast", lambda conn, end: fits.append(end) or F.forecast(conn, end))
    first_urgent = first_warning = None
    for i, a in enumerate(avail):
        now = t0 + i * 10**9
        with agent.rw:
            agent.rw.execute("INSERT INTO memory_metrics (ts, mem_total_kb, mem_available_kb) VALUES (?, ?, ?)",
                             (now, total_kb, a))
        agent.last_forecast_check_ns = 0
        if agent.urgent(now + 1) and first_urgent is None:
            first_urgent = i
        if first_warning is None and F.RISK_LEVELS.index(F.forecast(agent.ro, now + 1).risk) >= 2:
            first_warning = i
    agent.close()
    assert first_warning is not None and first_warning > 120
    assert first_urgent == first_warning
    assert all(f > t0 + 120 * 10**9 for f in fits[1:]), "no fit while memory held steady"

"""One observation per incident: deviations and secondary rules that coincide with an
incident become its evidence; alone, a deviation opens only when large and sustained."""

from __future__ import annotations

import pytest

from kernelsight.agent.engine import Agent
from kernelsight.agent.rules import load_rules
from kernelsight.agent.tracker import Finding

RULES = load_rules()


@pytest.fixture
def agent(tmp_path):
    (tmp_path / "data").mkdir(mode=0o700)
    a = Agent(tmp_path / "data", stream=False, housekeeping=False)
    yield a
    a.close()


def rule_finding(rule_id: str) -> Finding:
    r = RULES.by_id(rule_id)
    return Finding(key=r.id, rule_id=r.id, label=r.label, category=r.category, observation_type="symptom",
                   severity=r.severity, metric=r.metric, value=1.0, summary=f"{r.label} summary")


def deviation(name: str, z: float, category: str = "scheduler") -> Finding:
    return Finding(key=f"anomaly:{name}", rule_id="baseline_deviation", label="Baseline Deviation",
                   category=category, observation_type="anomaly", severity="medium", metric=name, value=10.0,
                   zscore=z, summary=f"{name} is {z:.1f} standard deviations above normal")


def test_secondary_rules_are_marked():
    assert {r.id for r in RULES.rules if r.secondary} == {"read_amplification", "steady_demand_growth",
                                                          "event_loop_starvation"}


def test_coinciding_signals_fold_into_the_incident_of_their_category(agent):
    cpu, io = rule_finding("cpu_saturation"), rule_finding("io_saturation")
    # both are consequences of something (oversubscription, memory pressure): they have waited for it
    agent._one_per_incident([rule_finding("cpu_saturation"), rule_finding("io_saturation")], [], now_s=90.0)
    out = agent._one_per_incident([cpu, io, rule_finding("read_amplification"), rule_finding("steady_demand_growth")],
                                  [deviation("ctx_switches_per_sec", 30.0), deviation("io_await_ms", 12.0, "io")],
                                  now_s=100.0)
    assert [f.rule_id for f in out] == ["cpu_saturation", "io_saturation"]
    assert any(c.startswith("Read Amplification:") for c in io.correlated)
    assert any(c.startswith("Baseline deviation: io_await_ms") for c in io.correlated)
    assert any(c.startswith("Steady Demand Growth:") for c in cpu.correlated)  # load has no incident: most severe
    assert any(c.startswith("Baseline deviation: ctx_switches_per_sec") for c in cpu.correlated)


def test_a_lone_deviation_opens_only_when_large_and_sustained(agent):
    small, big = deviation("a_per_sec", 5.0), deviation("b_per_sec", 9.0)
    for t in (0.0, 10.0, 25.0):
        assert agent._one_per_incident([], [small, big], now_s=t) == []
    out = agent._one_per_incident([], [small, big], now_s=31.0)
    assert [f.metric for f in out] == ["b_per_sec"]
    # A gap resets the clock: it must hold without interruption.
    agent._one_per_incident([], [], now_s=32.0)
    assert agent._one_per_incident([], [big], now_s=40.0) == []


def test_a_lone_secondary_rule_still_opens_but_not_in_an_incident_tail(agent):
    lone = rule_finding("read_amplification")
    # alone, once it has held anomaly_sustain_s (30 s): a fault's own rule comes a step later
    assert agent._one_per_incident([lone], [], now_s=-30.0) == []
    assert agent._one_per_incident([lone], [], now_s=-5.0) == []
    assert agent._one_per_incident([lone], [], now_s=0.0) == [lone]
    # An incident that just closed: what shows up in the next minute is its tail.
    agent.tracker.update(100.0, [rule_finding("io_saturation")])
    agent.tracker.update(105.0, [])
    agent.tracker.update(116.0, [])
    assert not agent.tracker.is_open("io_saturation")
    assert agent._one_per_incident([rule_finding("read_amplification")], [], now_s=120.0) == []
    assert agent._one_per_incident([rule_finding("read_amplification")], [], now_s=200.0) != []


def test_what_is_open_already_stays_open_when_an_incident_starts(agent):
    sec = rule_finding("steady_demand_growth")
    agent.tracker.update(0.0, [sec])
    cpu = rule_finding("cpu_saturation")
    agent._one_per_incident([rule_finding("cpu_saturation")], [], now_s=-10.0)  # it has waited for a cause
    out = agent._one_per_incident([cpu, rule_finding("steady_demand_growth")], [], now_s=5.0)
    assert [f.rule_id for f in out] == ["cpu_saturation", "steady_demand_growth"]
    assert cpu.correlated == []


def test_a_consequence_folds_into_its_cause_and_takes_the_worse_severity(agent):
    wbs, sat, tail = rule_finding("write_buffer_saturation"), rule_finding("io_saturation"), rule_finding("io_tail_latency")
    assert (wbs.severity, sat.severity) == ("medium", "high")
    out = agent._one_per_incident([tail, sat, wbs], [], now_s=0.0)
    assert out == [wbs]  # a chain folds to its root: tail -> saturation -> write buffer
    assert wbs.severity == "high"
    assert any(c.startswith("I/O Saturation:") for c in wbs.correlated)
    assert any(c.startswith("I/O Tail Latency:") for c in wbs.correlated + sat.correlated)


def test_a_lone_consequence_waits_for_its_cause_then_opens(agent):
    wait = RULES.settings.consequence_wait_s
    assert agent._one_per_incident([rule_finding("io_tail_latency")], [], now_s=0.0) == []
    assert agent._one_per_incident([rule_finding("io_tail_latency")], [], now_s=wait - 1) == []
    # the cause shows up within the wait: one incident, the cause's
    out = agent._one_per_incident([rule_finding("io_tail_latency"), rule_finding("write_buffer_saturation")], [],
                                  now_s=wait - 0.5)
    assert [f.rule_id for f in out] == ["write_buffer_saturation"]
    # no cause: it opens alone once it has held consequence_wait_s
    assert agent._one_per_incident([rule_finding("oversubscription")], [], now_s=100.0) == []
    out = agent._one_per_incident([rule_finding("oversubscription")], [], now_s=100.0 + wait)
    assert [f.rule_id for f in out] == ["oversubscription"]
    # a rule nothing explains opens at once
    assert [f.rule_id for f in agent._one_per_incident([rule_finding("memory_pressure")], [], now_s=200.0)] == [
        "memory_pressure"]


def _step_contexts(agent, prev: dict, cur: dict, now_s: float = 1000.0, gap_s: float = 5.0):
    """The agent's view after two steps gap_s apart: its history, and this step's look ahead."""
    from kernelsight.agent.rules import Context

    agent.history.clear()
    agent.history.extend([(now_s - gap_s, prev), (now_s, cur)])
    ctx = Context(cur, {}, lambda *_: None, set(), 2, 0, mem_gb=4.0)
    return agent._ahead(ctx, now_s)


# stress-ng --cpu 6 on 2 CPUs, 12.5 s and 17.5 s after its start (run 8's feature rows): the CPUs
# fill; forks, futex calls, switches, memory and TIME-WAIT sockets stay where they were.
CPU_HOG_PREV = {"cpu_utilization_pct": 77.2, "psi_cpu_some_pct": 76.3, "procs_running_avg": 6.2, "load_avg_1m": 1.1,
                "forks_per_sec": 2.0, "syscall_futex_calls_per_sec": 180.0, "ctx_switches_per_sec": 519.3,
                "memory_available_pct": 81.0, "tcp_time_wait": 3.0, "tasks_total": 310.0,
                "sched_wakeups_per_sec": 400.0}
CPU_HOG_NOW = CPU_HOG_PREV | {"cpu_utilization_pct": 100.0, "psi_cpu_some_pct": 99.5, "procs_running_avg": 7.3,
                              "load_avg_1m": 1.5, "ctx_switches_per_sec": 640.9, "sched_wakeups_per_sec": 520.0}


def test_a_consequence_with_no_cause_in_sight_opens_at_once(agent):
    """Oversubscription from CPU hogs is the whole story: it opens on the step it holds, not a step
    later (that wait was 5 of run 8's 23 s to detect stress-ng --cpu)."""
    ahead = _step_contexts(agent, CPU_HOG_PREV, CPU_HOG_NOW)
    assert ahead is not None and ahead.values["cpu_utilization_pct"] == pytest.approx(100.0 + 2 * 22.8)
    out = agent._one_per_incident([rule_finding("oversubscription")], [], now_s=1000.0, ahead=ahead)
    assert [f.rule_id for f in out] == ["oversubscription"]


def test_a_consequence_waits_while_a_cause_is_coming(agent):
    """sysbench mutex: futex calls climb with the CPUs; Lock Contention will hold a step later, so
    Oversubscription waits for it and becomes its evidence, one incident."""
    prev = CPU_HOG_PREV | {"syscall_futex_calls_per_sec": 900.0}
    now = CPU_HOG_NOW | {"syscall_futex_calls_per_sec": 2400.0}  # the rule: > 2000 * cores
    ahead = _step_contexts(agent, prev, now)
    assert agent._one_per_incident([rule_finding("oversubscription")], [], now_s=1000.0, ahead=ahead) == []
    out = agent._one_per_incident([rule_finding("oversubscription"), rule_finding("lock_contention")], [],
                                  now_s=1005.0, ahead=ahead)
    assert [f.rule_id for f in out] == ["lock_contention"]
    assert any(c.startswith("Oversubscription:") for c in out[0].correlated)


def test_a_consequence_waits_two_steps_for_a_cause_still_coming_then_opens_alone(agent):
    """sysbench mutex in a later run: futex calls at 3,900/s for a step against the rule's 4,000.
    While the cause is still in sight the consequence waits a second step; past consequence_wait_s
    it opens alone."""
    wait = RULES.settings.consequence_wait_s
    assert 5.0 < wait < 10.0  # two evaluation steps, with room for the loop's jitter
    coming = _step_contexts(agent, CPU_HOG_PREV | {"syscall_futex_calls_per_sec": 2600.0},
                            CPU_HOG_NOW | {"syscall_futex_calls_per_sec": 3900.0})
    for t in (2000.0, 2005.0):
        assert agent._one_per_incident([rule_finding("oversubscription")], [], now_s=t, ahead=coming) == []
    out = agent._one_per_incident([rule_finding("oversubscription")], [], now_s=2000.0 + wait, ahead=coming)
    assert [f.rule_id for f in out] == ["oversubscription"]
    # the same rate, flat: no cause in sight, so it would not have waited at all
    flat = _step_contexts(agent, CPU_HOG_PREV | {"syscall_futex_calls_per_sec": 3900.0},
                          CPU_HOG_NOW | {"syscall_futex_calls_per_sec": 3900.0})
    agent._one_per_incident([], [], now_s=3000.0)
    out = agent._one_per_incident([rule_finding("oversubscription")], [], now_s=3005.0, ahead=flat)
    assert [f.rule_id for f in out] == ["oversubscription"]


def test_without_a_recent_step_a_consequence_waits_as_before(agent):
    assert _step_contexts(agent, CPU_HOG_PREV, CPU_HOG_NOW, gap_s=30.0) is None  # a stalled agent: no pace
    agent.history.clear()
    assert agent._one_per_incident([rule_finding("oversubscription")], [], now_s=1000.0, ahead=None) == []


def test_a_consequence_open_before_its_cause_stays_its_own(agent):
    agent.tracker.update(0.0, [rule_finding("process_explosion")])
    out = agent._one_per_incident([rule_finding("process_explosion"), rule_finding("connection_churning")], [],
                                  now_s=5.0)
    assert sorted(f.rule_id for f in out) == ["connection_churning", "process_explosion"]


def test_a_cause_of_a_cause_holds_the_whole_chain(agent):
    """stress-ng --switch: wakeups outnumber switches (Serialization Bottleneck), which are many
    (Scheduling Thrash), whose run queues are long (CPU Saturation): one observation, the root's,
    whichever order the rules are read in."""
    for order in (["cpu_saturation", "scheduling_thrash", "serialization_bottleneck"],
                  ["serialization_bottleneck", "scheduling_thrash", "cpu_saturation"]):
        agent.firing_since = {}
        fired = [rule_finding(r) for r in order]
        out = agent._one_per_incident(fired, [], now_s=100.0)
        assert [f.rule_id for f in out] == ["serialization_bottleneck"]
        root = out[0]
        assert any(c.startswith("Scheduling Thrash:") for c in root.correlated)
        assert any(c.startswith("CPU Saturation:") for c in root.correlated)


@pytest.mark.parametrize("explains, error", [
    ('["No Such Label"]', "explains unknown label"),
    ('["B"]', "cycle: A -> B -> A"),
])
def test_explains_names_known_labels_without_cycles(tmp_path, explains, error):
    from kernelsight.agent.rules import RuleError

    rule = ('[[rule]]\nid = "{id}"\nlabel = "{label}"\ncategory = "io"\nmetric = "io_p50_ms_max"\n'
            'when = ["io_p50_ms_max > 1"]\nsummary = "s"\nhints = []\nexplains = {explains}\n')
    text = rule.format(id="a", label="A", explains=explains) + rule.format(id="b", label="B", explains='["A"]')
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(RuleError, match=error):
        load_rules(tmp_path / "r.toml")


def test_storage_errnos_are_counted_by_call_and_errno(tmp_path):
    from kernelsight import db
    from kernelsight.agent.signals import agent_signals, fs_errors

    conn = db.connect(db.db_path(tmp_path / "d"))
    rows = [  # ENOENT is a probe, not a storage error; ENOSPC and EIO are
        (1_000, "openat", 500, 400, "[2,13]", "[390,10]"),
        (2_000, "write", 80, 80, "[28]", "[80]"),
        (3_000, "read", 10, 5, "[5]", "[5]"),
    ]
    conn.executemany("INSERT INTO syscall_stats (ts, syscall, count, errors, top_errnos, top_errno_counts, "
                     "interval_s) VALUES (?, ?, ?, ?, ?, ?, 1.0)", rows)
    assert fs_errors(conn, 0, 10_000) == {"openat EACCES": 10, "write ENOSPC": 80, "read EIO": 5}
    assert agent_signals(conn, 10_000, 10.0)["syscall_fs_errors_per_sec"] == 95 / 10.0
    conn.close()


def test_the_worst_device_is_judged_not_the_sum(tmp_path):
    from kernelsight import db
    from kernelsight.agent.signals import disk_worst

    conn = db.connect(db.db_path(tmp_path / "d"))
    s = 1_000_000_000
    rows = []
    for k in range(11):  # 10 s: sda saturated (and dm-0 on top of it), nvme0n1 fast and busy
        rows.append((k * s, "sda", 10 * k, 1000 * k, 9_000 * k, 1000 * k))        # 100 ms per I/O, depth 9
        rows.append((k * s, "dm-0", 10 * k, 1000 * k, 9_000 * k, 1000 * k))
        rows.append((k * s, "nvme0n1", 5000 * k, 500 * k, 400 * k, 300 * k))      # 0.1 ms per I/O
    conn.executemany("INSERT INTO block_stats (ts, device, reads_completed_total, read_time_ms_total, "
                     "weighted_io_time_ms_total, io_time_ms_total, writes_completed_total, write_time_ms_total) "
                     "VALUES (?, ?, ?, ?, ?, ?, 0, 0)", rows)
    w = disk_worst(conn, 10 * s, 15.0)
    assert w["disk_await_ms_worst"] == 100.0
    assert w["disk_queue_depth_worst"] == 9.0  # not 18: dm-0 carries sda's I/Os, a max does not add them
    assert w["disk_util_worst_pct"] == 100.0
    # Each sda I/O took 100 ms, all of it served (busy 1 s / 10 I/Os): no queue wait.  The longest
    # wait is nvme0n1's: 0.1 ms await less 0.06 ms busy per I/O.
    assert w["disk_queue_wait_ms_worst"] == pytest.approx(0.04)
    assert w["disk_queue_wait_per_service_worst"] == pytest.approx(0.04 / 0.06)
    conn.close()


def test_queue_wait_is_await_less_the_devices_busy_time_per_io(tmp_path):
    """Figures of fio randread at depth 8 on this VM's vda (run 2): 575 reads/s, 14 ms await,
    busy all the time: 1.74 ms of service per read, 12.3 ms waiting in the queue."""
    from kernelsight import db
    from kernelsight.agent.signals import disk_worst

    conn = db.connect(db.db_path(tmp_path / "d"))
    s = 1_000_000_000
    rows = [(k * s, "vda", 575 * k, 575 * 14 * k, 11_900 * k, 1000 * k) for k in range(11)]
    conn.executemany("INSERT INTO block_stats (ts, device, reads_completed_total, read_time_ms_total, "
                     "weighted_io_time_ms_total, io_time_ms_total, writes_completed_total, write_time_ms_total) "
                     "VALUES (?, ?, ?, ?, ?, ?, 0, 0)", rows)
    w = disk_worst(conn, 10 * s, 15.0)
    assert w["disk_queue_wait_ms_worst"] == pytest.approx(14 - 1000 / 575)
    assert w["disk_queue_wait_per_service_worst"] == pytest.approx((14 - 1000 / 575) / (1000 / 575))
    conn.close()


def test_a_suspect_is_named_with_its_cgroup(agent):
    """One cgroup burns CPU (stress-ng in a v1 memory cgroup, as a container would be): the
    CPU-user suspect carries that cgroup's path."""
    import os
    import shutil
    import subprocess
    import time
    from pathlib import Path

    if os.geteuid() != 0 or shutil.which("stress-ng") is None:
        pytest.skip("needs root and stress-ng")
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    root = next((Path(line.split()[1]) for line in mounts
                 if line.split()[2] == "cgroup" and "memory" in line.split()[3].split(",")), None)
    if root is None:
        pytest.skip("no v1 memory hierarchy")
    cg = root / f"ks_test_burner_{os.getpid()}"
    cg.mkdir()
    p = subprocess.Popen(["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec stress-ng --cpu 1 --timeout 20 --quiet'])
    try:
        time.sleep(1.0)
        agent.sampler.sample(1.0)
        time.sleep(2.0)
        agent.sampler.sample(2.0)
        rows = agent._attribute(["cpu_users"], time.time_ns())
        burners = [r for r in rows if r.get("cgroup") == f"/{cg.name}"]
        assert burners and burners[0]["comm"].startswith("stress-ng"), rows
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(p.pid)], check=False)
        p.kill()
        p.wait()
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_a_condition_normal_work_also_makes_is_low_until_it_lasts(agent):
    """Oversubscription (a parallel build does it too) is logged at low while transient and takes
    its own severity once it has held alert_after_s; Memory Pressure alerts at once."""
    from kernelsight.agent.tracker import Tracked

    over = rule_finding("oversubscription")
    assert RULES.by_id("oversubscription").alert_after_s == 60.0
    t = Tracked(over.key, over, first_seen=1000.0, last_seen=1000.0)
    assert agent.observation(t, 1030.0, int(1030e9))["severity"] == "low"
    assert agent.observation(t, 1061.0, int(1061e9))["severity"] == "high"
    mem = rule_finding("memory_pressure")
    t = Tracked(mem.key, mem, first_seen=1000.0, last_seen=1000.0)
    assert agent.observation(t, 1001.0, int(1001e9))["severity"] == "high"


def store_history(agent, hours: float, spike: tuple[float, float] | None = None) -> tuple[float, float]:
    """`hours` of stored feature vectors ending now (x = 1, or 1000 inside `spike`, seconds after the
    start), and an observation over the spike; returns (start_s, now_s)."""
    import time

    import numpy as np

    from kernelsight.features.catalog import FEATURE_STEP_S, FEATURE_WINDOW_S
    from kernelsight.features.engine import FeatureMatrix
    from kernelsight.features.store import write_matrix

    now_s = time.time()
    start_s = now_s - hours * 3600
    ts = np.arange(int(start_s / FEATURE_STEP_S) + 1, int(now_s / FEATURE_STEP_S)) * int(FEATURE_STEP_S * 1e9)
    vals = np.ones((len(ts), 1))
    if spike:
        sel = (ts >= (start_s + spike[0]) * 1e9) & (ts <= (start_s + spike[1]) * 1e9)
        vals[sel] = 1000.0
        agent.rw.execute(
            "INSERT INTO observations (rule, key, label, status, severity, signal_category, observation_type, "
            "persistence, first_seen, last_seen, closed_at, updates, summary, observation, processes) VALUES "
            "('cpu_saturation', 'cpu_saturation', 'CPU Saturation', 'closed', 'high', 'scheduler', 'symptom', "
            "'transient', ?, ?, ?, 1, 's', '{}', '[]')",
            (int(start_s + spike[0]), int(start_s + spike[1]), int(start_s + spike[1])))
        agent.rw.commit()
    write_matrix(agent.rw, FeatureMatrix(ts, FEATURE_WINDOW_S, ["cpu_utilization_pct"], vals,
                                         [np.full(len(ts), None, object)]))
    agent.history.append((start_s, {}))
    return start_s, now_s


def test_the_agent_learns_around_its_incidents_and_learns_again_on_schedule(agent):
    from kernelsight.agent.engine import AUTO_SOURCE

    _, now = store_history(agent, 2.0, spike=(1800.0, 2400.0))
    agent._auto_learn(now)
    b = agent.baseline
    assert b is not None and b.meta["source"] == AUTO_SOURCE
    assert b.stats["cpu_utilization_pct"]["max"] == 1.0, "the incident's vectors are left out"
    assert b.meta["left_out_vectors"] >= 600 / 5
    learned = b.meta["learned_ts"]
    agent._auto_learn(now + 60)
    assert agent.baseline.meta["learned_ts"] == learned, "not before baseline_relearn_s"
    agent._auto_learn(now + agent.rules.settings.baseline_relearn_s + 1)
    assert agent.baseline.meta["learned_ts"] > learned
    # a baseline an operator learned is theirs: the schedule leaves it alone
    agent.baseline.meta["source"] = "ks-features baseline learn"
    mine = agent.baseline.meta["learned_ts"]
    agent._auto_learn(now + 3 * agent.rules.settings.baseline_relearn_s)
    assert agent.baseline.meta["learned_ts"] == mine


def test_an_extreme_lone_deviation_is_critical():
    from kernelsight.agent.engine import _deviation_severity

    s = RULES.settings
    # the design's example: 5 errors/s against a typical 0.2 (std 0.5) is 9.6 sigma: critical
    assert _deviation_severity(9.6, 9.6, 5.0, 0.2, s) == "critical"
    assert _deviation_severity(9.6, 9.6, 1.5, 1.0, s) == "medium"  # far out but only 1.5x its mean
    assert _deviation_severity(9.6, 3.0, 5.0, 0.2, s) == "medium"  # the robust z disagrees
    assert _deviation_severity(17.0, 17.0, 1.5, 1.0, s) == "high"
    assert _deviation_severity(5.0, 5.0, 5.0, 0.2, s) == "low"


def test_a_chain_folds_into_its_root_with_every_link_as_evidence(agent):
    storm, over, starve = rule_finding("process_explosion"), rule_finding("oversubscription"), rule_finding("cpu_starvation")
    agent._one_per_incident([rule_finding("process_explosion")], [], now_s=-10.0)  # it waited for a cause of its own
    out = agent._one_per_incident([starve, over, storm], [], now_s=0.0)
    assert out == [storm]
    labels = [c.split(": ", 1)[0] for c in storm.correlated]
    assert "Oversubscription" in labels and "CPU Starvation" in labels


def test_a_consequence_that_outlasts_its_cause_is_its_tail(agent):
    # Oversubscription (the cause) held, then clears; the run queues (CPU Saturation) drain a step later
    agent.tracker.update(0.0, [rule_finding("oversubscription")])
    agent.tracker.update(5.0, [rule_finding("oversubscription")])  # its last step
    wait = RULES.settings.consequence_wait_s
    clear = RULES.settings.clear_after_s
    for t in (5.0, 5.0 + wait, 5.0 + clear):
        assert agent._one_per_incident([rule_finding("cpu_saturation")], [], now_s=t) == []
    # a consequence that goes on past that is an incident of its own
    out = agent._one_per_incident([rule_finding("cpu_saturation")], [], now_s=5.0 + clear + wait)
    assert [f.rule_id for f in out] == ["cpu_saturation"]
    # one that begins after the cause stopped firing is the next fault's, not a tail
    agent.tracker.update(20.0, [rule_finding("oversubscription")])
    agent._one_per_incident([], [], now_s=21.0)
    assert agent._one_per_incident([rule_finding("cpu_saturation")], [], now_s=22.0) == []
    out = agent._one_per_incident([rule_finding("cpu_saturation")], [], now_s=22.0 + wait)
    assert [f.rule_id for f in out] == ["cpu_saturation"]


def test_an_exhaustion_forecast_folds_into_the_limit_rule_of_the_same_resource(agent):
    fc = Finding(key="forecast:fs:/srv", rule_id="exhaustion_forecast", label="Resource Exhaustion Forecast",
                 category="io", observation_type="forecast", severity="high", metric="seconds_to_exhaustion",
                 value=30.0, summary="Forecast: filesystem space on /srv runs out in ~30 s")
    near = rule_finding("fs_near_full")
    assert agent._fold_exhaustion([fc], [near]) == []
    assert near.correlated == ["Resource Exhaustion Forecast: Forecast: filesystem space on /srv runs out in ~30 s"]
    # another resource's rule does not take it, and alone it is its own observation
    assert agent._fold_exhaustion([fc], [rule_finding("pids_near_limit")]) == [fc]
    assert agent._fold_exhaustion([fc], []) == [fc]


def test_one_observation_that_cannot_be_rendered_does_not_lose_the_others(agent):
    """A render that raises is logged and counted; the other observations of the step are stored."""
    import time

    real = agent.observation

    def observation(t, now_s, now_ns):
        if t.finding.rule_id == "syn_flood":
            raise KeyError("comm")
        return real(t, now_s, now_ns)

    from kernelsight.agent.forecast import OomForecast

    fc = OomForecast("NORMAL", None, None, None, None, 0.0, 0, "no memory samples in the window")
    agent.observation = observation
    now_s = time.time()
    changes = agent.tracker.update(now_s, [rule_finding("syn_flood"), rule_finding("cpu_saturation")])
    agent._persist(changes, now_s, int(now_s * 1e9), fc)
    labels = [r[0] for r in agent.rw.execute("SELECT label FROM observations")]
    assert labels == ["CPU Saturation"] and agent.render_failures == 1
    # The next step renders it again (this time it can).
    agent.observation = real
    changes = agent.tracker.update(now_s + 5, [rule_finding("syn_flood"), rule_finding("cpu_saturation")])
    agent._persist(changes, now_s + 5, int((now_s + 5) * 1e9), fc)
    assert sorted(r[0] for r in agent.rw.execute("SELECT label FROM observations")) == ["CPU Saturation",
                                                                                       "SYN Flood"]


def test_slow_reads_count_as_storage_only_on_files_and_block_devices(tmp_path):
    """Run 8's false I/O Bottleneck: 7 slow pipe reads of an idle tool's processes.  Only reads of
    regular files and block devices (and lines from before fd_type, null) are slow storage reads,
    in the signal and in the rule's attribution alike."""
    from kernelsight import db
    from kernelsight.agent.attribution import slow_syscalls
    from kernelsight.agent.signals import agent_signals

    conn = db.connect(db.db_path(tmp_path / "d"))
    conn.execute("INSERT INTO syscall_stats (ts, syscall, count, errors, interval_s) VALUES (1000, 'read', 50, 0, 1.0)")
    slow = [("bash", "read", "pipe")] * 7 + [("sshd", "read", "socket"), ("getty", "read", "char"),
                                              ("python", "read", "anon"), ("tail", "read", "dir")]
    slow += [("postgres", "pread64", "file"), ("dd", "read", "block"), ("old", "read", None)]
    slow += [("fio", "write", "file")]  # not a read
    conn.executemany("INSERT INTO syscall_events (ts, pid, tid, comm, syscall_nr, syscall, latency_ns, ret, arg0, "
                     "fd_type) VALUES (2000, 1, 1, ?, 0, ?, 200000000, 1, 3, ?)", slow)
    conn.commit()
    assert agent_signals(conn, 10_000, 10.0)["syscall_read_slow_calls"] == 3
    assert {r["comm"] for r in slow_syscalls(conn, 0, storage_reads=True)} == {"postgres", "dd", "old"}
    assert "bash" in {r["comm"] for r in slow_syscalls(conn, 0)}  # every slow call, for the other rules

"""The feature catalog: the one source of truth for every feature.

Each Feature has a name (its unit is the last part of the name), a group, a
unit, a description, the source table(s) and a *spec* saying how it is
computed.  The engine (engine.py) interprets the specs; nothing else lists
features.  `ks-features catalog` prints this list.

Spec kinds (all evaluated over the rows with end - window < ts <= end):

- Gauge(table, expr, agg): a per-row expression over columns, aggregated with
  mean / last / max / min over the window (rows where the expression is null
  are ignored).
- Rate(table, counters, scale): sum of the positive deltas of cumulative
  counters (per entity: device, interface...), divided by the time those
  deltas span, times scale; summed over entities.  A negative delta is a
  counter reset: that delta and its time are dropped.
- DeltaRatio(table, num, den, scale): pooled ratio of counter deltas,
  scale * sum(d num) / sum(d den), over all entities (e.g. await = d read time
  / d reads).  Reset deltas are dropped.
- SumRatio(table, num, den, scale): scale * sum(num) / sum(den) over rows
  (per-interval tracer stats: counts, errors, intervals).  den_per_ts counts
  the denominator once per timestamp (several rows per interval).
- HistPct(table, column, q, scale): the q-quantile of the log2 histogram
  obtained by adding every row's histogram in the window; bucket i spans
  [2^i, 2^(i+1)) and bucket 0 [0, 2), linear inside the bucket (the tracers'
  ks_hist_percentile and collectors/hist.py use the same rule).
- Slope(table, expr, scale): least-squares slope of expr over time (per s).
- EventRate(table, live): rows of an event table per second of window, only
  when the `live` table has rows in the window (the tracer was running; else
  unknown, not 0).
- Corr(a, b): Pearson correlation of two per-row expressions, rows paired by
  nearest timestamp (within 1.5 s).
- Derived(fn, deps): a function of other features, computed after them.

A `where` is (column, op, value) with op one of ==, !=, applied before
aggregation.

Windows: every stored vector, every baseline and every rule threshold is over
FEATURE_WINDOW_S, one vector each FEATURE_STEP_S (defined in features/window.py, nowhere else).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .window import FEATURE_STEP_S, FEATURE_WINDOW_S  # noqa: F401 - re-exported: the catalog's window and step


@dataclass(frozen=True)
class Gauge:
    table: str
    expr: str
    agg: str = "mean"
    where: tuple | None = None
    null_reason: str = ""


@dataclass(frozen=True)
class Rate:
    table: str
    counters: tuple[str, ...]
    scale: float = 1.0
    entity: str | None = None
    where: tuple | None = None


@dataclass(frozen=True)
class DeltaRatio:
    table: str
    num: tuple[str, ...]
    den: tuple[str, ...]
    scale: float = 1.0
    entity: str | None = None
    where: tuple | None = None
    den_reason: str = "denominator counter did not move in window"


@dataclass(frozen=True)
class SumRatio:
    table: str
    num: str
    den: str
    scale: float = 1.0
    den_per_ts: bool = False
    where: tuple | None = None
    den_reason: str = "denominator is zero in window"


@dataclass(frozen=True)
class HistPct:
    table: str
    column: str
    q: float
    scale: float = 1.0
    where: tuple | None = None


@dataclass(frozen=True)
class Slope:
    table: str
    expr: str
    scale: float = 1.0
    where: tuple | None = None


@dataclass(frozen=True)
class EventRate:
    table: str
    live: str


@dataclass(frozen=True)
class Corr:
    table_a: str
    expr_a: str
    table_b: str
    expr_b: str


@dataclass(frozen=True)
class Derived:
    fn: Callable = field(compare=False)
    deps: tuple[str, ...] = ()
    null_reason: str = "undefined for these inputs"


@dataclass(frozen=True)
class Feature:
    name: str
    group: str
    unit: str
    description: str
    spec: object
    how: str = ""

    @property
    def sources(self) -> tuple[str, ...]:
        s = self.spec
        if isinstance(s, Corr):
            return (s.table_a, s.table_b)
        if isinstance(s, EventRate):
            return (s.table, s.live)
        if isinstance(s, Derived):
            return tuple(f"feature:{d}" for d in s.deps)
        return (s.table,)

    def how_text(self) -> str:
        if self.how:
            return self.how
        s = self.spec
        w = f" where {s.where[0]} {s.where[1]} {s.where[2]!r}" if getattr(s, "where", None) else ""
        if isinstance(s, Gauge):
            return f"{s.agg} of ({s.expr}) over rows in window{w}"
        if isinstance(s, Rate):
            per = f" per {s.entity}, summed" if s.entity else ""
            sc = f" x {s.scale:g}" if s.scale != 1 else ""
            return f"positive deltas of {' + '.join(s.counters)} / elapsed s{per}{sc} (resets dropped){w}"
        if isinstance(s, DeltaRatio):
            sc = f"{s.scale:g} x " if s.scale != 1 else ""
            return f"{sc}d({' + '.join(s.num)}) / d({' + '.join(s.den)}) over window, resets dropped{w}"
        if isinstance(s, SumRatio):
            sc = f"{s.scale:g} x " if s.scale != 1 else ""
            return f"{sc}sum({s.num}) / sum({s.den}) over rows in window{w}"
        if isinstance(s, HistPct):
            sc = f" x {s.scale:g}" if s.scale != 1 else ""
            return f"p{s.q * 100:g} of summed log2 histogram {s.column}{sc}{w}"
        if isinstance(s, Slope):
            return f"least-squares slope of ({s.expr}) per s x {s.scale:g}{w}"
        if isinstance(s, EventRate):
            return f"rows in {s.table} / window s (needs rows in {s.live} to show the tracer ran)"
        if isinstance(s, Corr):
            return f"Pearson r of {s.table_a}.({s.expr_a}) and {s.table_b}.({s.expr_b}), rows paired by time"
        return "derived"


# numpy is imported where a derived feature is computed, not here: ks-exporter reads the
# catalog for names and units only, and must not carry numpy for that.
def _nan_safe(f):
    def g(*a):
        import numpy as np

        with np.errstate(all="ignore"):
            return f(*a)
    return g


def _clip01(x):
    import numpy as np

    return np.clip(x, 0.0, 1.0)


@_nan_safe
def _io_bottleneck(util, iowait, psi_io, await_ms):
    import numpy as np

    comps = np.vstack([_clip01(util / 100.0), _clip01(iowait / 25.0), _clip01(psi_io / 25.0), _clip01(await_ms / 50.0)])
    n = np.sum(~np.isnan(comps), axis=0)
    out = 100.0 * np.nansum(comps, axis=0) / np.where(n > 0, n, 1)
    return np.where(n >= 2, out, np.nan)


@_nan_safe
def _mem_pressure(avail_pct, swap_out, scan, psi_mem):
    import numpy as np

    comps = np.vstack([_clip01((20.0 - avail_pct) / 20.0), _clip01(swap_out / 1000.0),
                       _clip01(scan / 10000.0), _clip01(psi_mem / 10.0)])
    n = np.sum(~np.isnan(comps), axis=0)
    out = 100.0 * np.nansum(comps, axis=0) / np.where(n > 0, n, 1)
    return np.where(n >= 2, out, np.nan)


@_nan_safe
def _exhaustion_eta(avail_mb, slope_mb_per_min):
    import numpy as np

    eta = avail_mb / (-slope_mb_per_min) * 60.0
    return np.where(slope_mb_per_min < 0, eta, np.nan)


@_nan_safe
def _ratio(a, b):
    import numpy as np

    return np.where(b > 0, a / b, np.nan)


@_nan_safe
def _blocked_share(running, blocked):
    import numpy as np

    tot = running + blocked
    return np.where(tot > 0, 100.0 * blocked / tot, np.nan)


BLK, NET, MEM, VM, CPU, LOAD = "block_stats", "network_interface_stats", "memory_metrics", "vmstat_metrics", "cpu_metrics", "load_metrics"
TCP, TCPR, PSI = "tcp_stats", "tcp_retransmit_stats", "psi_metrics"
FS, LIM = "filesystem_stats", "limit_stats"
RW = ("readonly", "==", 0)
SYS_S, SYS_E, IO_S, PF_S, SCHED_S, RUNQ = ("syscall_stats", "syscall_events", "io_latency_stats", "page_fault_stats",
                                          "sched_stats", "runqlat_hist")
NOT_LO = ("interface", "!=", "lo")
READ, WRITE = ("op", "==", "read"), ("op", "==", "write")
B_PER_SECTOR = 512.0

F = Feature
FEATURES: list[Feature] = [
    # ---- system load (6)
    F("load_avg_1m", "load", "tasks", "1-minute load average, latest in window", Gauge(LOAD, "load_1min", "last")),
    F("load_avg_5m", "load", "tasks", "5-minute load average, latest in window", Gauge(LOAD, "load_5min", "last")),
    F("load_avg_15m", "load", "tasks", "15-minute load average, latest in window", Gauge(LOAD, "load_15min", "last")),
    F("load_per_cpu_ratio", "load", "ratio", "1-minute load average divided by the CPU count (>1: oversubscribed)",
      Derived(_ratio, ("load_avg_1m", "cpu_count"), "cpu_count is 0"), "load_avg_1m / cpu_count"),
    F("tasks_total", "load", "tasks", "scheduling entities that exist, latest", Gauge(LOAD, "total_tasks", "last")),
    F("tasks_runnable_avg", "load", "tasks", "runnable scheduling entities (loadavg), mean over window",
      Gauge(LOAD, "runnable_tasks", "mean")),
    # ---- CPU
    F("cpu_count", "cpu", "cpus", "online CPUs seen in /proc/stat", Gauge(CPU, "cpu_count", "last")),
    F("cpu_utilization_pct", "cpu", "%", "non-idle CPU time share (100 - idle - iowait), mean over window",
      Gauge(CPU, "100 - idle_pct - iowait_pct", "mean")),
    F("cpu_user_pct", "cpu", "%", "user + nice time share, mean", Gauge(CPU, "user_pct + nice_pct", "mean")),
    F("cpu_system_pct", "cpu", "%", "system + irq + softirq time share, mean",
      Gauge(CPU, "system_pct + irq_pct + softirq_pct", "mean")),
    F("cpu_iowait_pct", "cpu", "%", "iowait time share, mean", Gauge(CPU, "iowait_pct", "mean")),
    F("cpu_steal_pct", "cpu", "%", "time stolen by the hypervisor, mean", Gauge(CPU, "steal_pct", "mean")),
    F("interrupts_per_sec", "cpu", "interrupts/s", "hardware interrupt rate", Rate(CPU, ("intr_total",))),
    # ---- memory (12+)
    F("memory_available_pct", "memory", "%", "MemAvailable / MemTotal, mean over window",
      Gauge(MEM, "100 * mem_available_kb / mem_total_kb")),
    F("memory_available_mb", "memory", "MiB", "MemAvailable, latest", Gauge(MEM, "mem_available_kb / 1024", "last")),
    F("memory_used_pct", "memory", "%", "(MemTotal - MemAvailable) / MemTotal, mean",
      Gauge(MEM, "100 * (mem_total_kb - mem_available_kb) / mem_total_kb")),
    F("memory_free_pct", "memory", "%", "MemFree / MemTotal, mean", Gauge(MEM, "100 * mem_free_kb / mem_total_kb")),
    F("memory_cached_pct", "memory", "%", "page cache (Cached + Buffers) / MemTotal, mean",
      Gauge(MEM, "100 * (cached_kb + buffers_kb) / mem_total_kb")),
    F("memory_anon_pct", "memory", "%", "anonymous memory / MemTotal, mean", Gauge(MEM, "100 * anon_pages_kb / mem_total_kb")),
    F("memory_slab_unreclaimable_mb", "memory", "MiB", "SUnreclaim, mean", Gauge(MEM, "sunreclaim_kb / 1024")),
    F("memory_dirty_mb", "memory", "MiB", "dirty page cache waiting for writeback, mean", Gauge(MEM, "dirty_kb / 1024")),
    F("memory_writeback_mb", "memory", "MiB", "pages under writeback, mean", Gauge(MEM, "writeback_kb / 1024")),
    F("memory_commit_pct", "memory", "%", "Committed_AS / CommitLimit, mean",
      Gauge(MEM, "100 * committed_as_kb / commit_limit_kb")),
    F("swap_used_pct", "memory", "%", "(SwapTotal - SwapFree) / SwapTotal, mean; null when no swap is configured",
      Gauge(MEM, "100 * (swap_total_kb - swap_free_kb) / swap_total_kb", null_reason="no swap configured (SwapTotal is 0)")),
    F("swap_in_pages_per_sec", "memory", "pages/s", "swap-in rate", Rate(VM, ("pswpin_total",))),
    F("swap_out_pages_per_sec", "memory", "pages/s", "swap-out rate", Rate(VM, ("pswpout_total",))),
    F("memory_reclaim_scan_pages_per_sec", "memory", "pages/s", "pages scanned by reclaim (kswapd + direct)",
      Rate(VM, ("pgscan_kswapd_total", "pgscan_direct_total"))),
    F("memory_direct_reclaim_pages_per_sec", "memory", "pages/s", "pages scanned by direct reclaim (allocation stalls)",
      Rate(VM, ("pgscan_direct_total",))),
    F("memory_available_trend_mb_per_min", "memory", "MiB/min", "least-squares slope of MemAvailable over the window",
      Slope(MEM, "mem_available_kb / 1024", 60.0)),
    F("oom_kills_per_min", "memory", "kills/min", "OOM kills (vmstat oom_kill counter)", Rate(VM, ("oom_kill_total",), 60.0)),
    # ---- disk I/O (15+)
    F("disk_read_iops", "disk", "ios/s", "reads completed per second, all block devices", Rate(BLK, ("reads_completed_total",), entity="device")),
    F("disk_write_iops", "disk", "ios/s", "writes completed per second, all block devices", Rate(BLK, ("writes_completed_total",), entity="device")),
    F("disk_read_bytes_per_sec", "disk", "B/s", "bytes read per second, all block devices",
      Rate(BLK, ("sectors_read_total",), B_PER_SECTOR, entity="device")),
    F("disk_write_bytes_per_sec", "disk", "B/s", "bytes written per second, all block devices",
      Rate(BLK, ("sectors_written_total",), B_PER_SECTOR, entity="device")),
    F("disk_read_await_ms", "disk", "ms", "mean time per completed read (d read_time / d reads), all devices",
      DeltaRatio(BLK, ("read_time_ms_total",), ("reads_completed_total",), entity="device", den_reason="no reads completed in window")),
    F("disk_write_await_ms", "disk", "ms", "mean time per completed write, all devices",
      DeltaRatio(BLK, ("write_time_ms_total",), ("writes_completed_total",), entity="device", den_reason="no writes completed in window")),
    F("disk_util_max_pct", "disk", "%", "highest per-device, per-interval utilisation in the window", Gauge(BLK, "util_pct", "max")),
    F("disk_queue_depth_avg", "disk", "ios", "mean I/Os in flight, summed over devices (d weighted_io_time / elapsed)",
      Rate(BLK, ("weighted_io_time_ms_total",), 1e-3, entity="device")),
    F("disk_in_flight_max", "disk", "ios", "highest in-flight count seen on any device", Gauge(BLK, "in_flight", "max")),
    F("io_read_latency_p50_ms", "disk", "ms", "block read latency median (eBPF, summed histogram)", HistPct(IO_S, "hist_log2_us", 0.50, 1e-3, READ)),
    F("io_read_latency_p95_ms", "disk", "ms", "block read latency p95 (eBPF)", HistPct(IO_S, "hist_log2_us", 0.95, 1e-3, READ)),
    F("io_read_latency_p99_ms", "disk", "ms", "block read latency p99 (eBPF)", HistPct(IO_S, "hist_log2_us", 0.99, 1e-3, READ)),
    F("io_write_latency_p50_ms", "disk", "ms", "block write latency median (eBPF)", HistPct(IO_S, "hist_log2_us", 0.50, 1e-3, WRITE)),
    F("io_write_latency_p95_ms", "disk", "ms", "block write latency p95 (eBPF)", HistPct(IO_S, "hist_log2_us", 0.95, 1e-3, WRITE)),
    F("io_write_latency_p99_ms", "disk", "ms", "block write latency p99 (eBPF)", HistPct(IO_S, "hist_log2_us", 0.99, 1e-3, WRITE)),
    F("io_traced_iops", "disk", "ios/s", "completed block requests per second seen by the eBPF tracer",
      SumRatio(IO_S, "count", "interval_s", den_per_ts=True, den_reason="no tracer interval in window")),
    F("io_queue_depth_at_issue_avg", "disk", "ios", "mean device queue depth at request issue (eBPF), weighted by requests",
      SumRatio(IO_S, "queue_depth_avg * issued", "issued", den_reason="no requests issued in window")),
    # ---- network (10+)
    F("net_rx_bytes_per_sec", "network", "B/s", "bytes received per second, all interfaces but lo",
      Rate(NET, ("rx_bytes_total",), entity="interface", where=NOT_LO)),
    F("net_tx_bytes_per_sec", "network", "B/s", "bytes sent per second, all interfaces but lo",
      Rate(NET, ("tx_bytes_total",), entity="interface", where=NOT_LO)),
    F("net_rx_packets_per_sec", "network", "packets/s", "packets received per second, all interfaces but lo",
      Rate(NET, ("rx_packets_total",), entity="interface", where=NOT_LO)),
    F("net_tx_packets_per_sec", "network", "packets/s", "packets sent per second, all interfaces but lo",
      Rate(NET, ("tx_packets_total",), entity="interface", where=NOT_LO)),
    F("net_errors_per_sec", "network", "packets/s", "receive + transmit errors per second, all interfaces",
      Rate(NET, ("rx_errors_total", "tx_errors_total"), entity="interface")),
    F("net_drops_per_sec", "network", "packets/s", "receive + transmit drops per second, all interfaces",
      Rate(NET, ("rx_drops_total", "tx_drops_total"), entity="interface")),
    # TCP counters are per network namespace (one row per namespace and read): every namespace's
    # deltas add up, so traffic in a container or over a veth pair counts like the host's own.
    F("tcp_retransmit_pct", "network", "%", "retransmitted / sent TCP segments in the window, all network namespaces",
      DeltaRatio(TCPR, ("retrans_segs_total",), ("out_segs_total",), 100.0, entity="netns",
                 den_reason="no TCP segments sent in window")),
    F("tcp_out_segs_per_sec", "network", "segments/s", "TCP segments sent per second, all namespaces, loopback included",
      Rate(TCPR, ("out_segs_total",), entity="netns")),
    F("tcp_retransmits_per_sec", "network", "segments/s", "TCP segments retransmitted per second, all namespaces",
      Rate(TCPR, ("retrans_segs_total",), entity="netns")),
    F("tcp_established", "network", "sockets", "ESTABLISHED sockets, latest", Gauge(TCP, "established", "last")),
    F("tcp_time_wait", "network", "sockets", "TIME_WAIT sockets, latest", Gauge(TCP, "time_wait", "last")),
    F("tcp_syn_recv", "network", "sockets", "SYN_RECV sockets, max in window", Gauge(TCP, "syn_recv", "max")),
    F("tcp_active_opens_per_sec", "network", "connections/s", "outgoing TCP connections per second", Rate(TCPR, ("active_opens_total",), entity="netns")),
    F("tcp_passive_opens_per_sec", "network", "connections/s", "accepted TCP connections per second", Rate(TCPR, ("passive_opens_total",), entity="netns")),
    F("tcp_resets_per_sec", "network", "connections/s", "resets of established connections per second", Rate(TCPR, ("estab_resets_total",), entity="netns")),
    F("tcp_listen_drops_per_sec", "network", "connections/s", "listen queue drops per second", Rate(TCPR, ("listen_drops_total",), entity="netns")),
    # ---- syscalls (8+)
    F("syscall_rate_per_sec", "syscall", "calls/s", "system calls per second (eBPF)",
      SumRatio(SYS_S, "count", "interval_s", den_per_ts=True, den_reason="no tracer interval in window")),
    F("syscall_errors_per_sec", "syscall", "errors/s", "failed system calls per second (eBPF)",
      SumRatio(SYS_S, "errors", "interval_s", den_per_ts=True, den_reason="no tracer interval in window")),
    F("syscall_error_pct", "syscall", "%", "failed / all system calls",
      SumRatio(SYS_S, "errors", "count", 100.0, den_reason="no system calls counted in window")),
    F("syscall_latency_avg_us", "syscall", "us", "mean system call latency",
      SumRatio(SYS_S, "total_ns", "count", 1e-3, den_reason="no system calls counted in window")),
    F("syscall_latency_p95_us", "syscall", "us", "p95 system call latency, all calls (summed histogram)",
      HistPct(SYS_S, "hist_log2_ns", 0.95, 1e-3)),
    F("syscall_latency_p99_us", "syscall", "us", "p99 system call latency, all calls", HistPct(SYS_S, "hist_log2_ns", 0.99, 1e-3)),
    F("syscall_read_latency_p95_us", "syscall", "us", "p95 latency of read()", HistPct(SYS_S, "hist_log2_ns", 0.95, 1e-3, ("syscall", "==", "read"))),
    F("syscall_slow_calls_per_sec", "syscall", "calls/s", "calls slower than the tracer's --min-latency (syscall_events rows) per second",
      EventRate(SYS_E, SYS_S)),
    F("syscall_slow_latency_max_ms", "syscall", "ms", "slowest single call recorded in the window",
      Gauge(SYS_E, "latency_ns / 1e6", "max")),
    # ---- page faults (4+)
    F("page_faults_per_sec", "page_fault", "faults/s", "all page faults (vmstat pgfault)", Rate(VM, ("pgfault_total",))),
    F("page_faults_major_per_sec", "page_fault", "faults/s", "major faults: the page had to be read from disk", Rate(VM, ("pgmajfault_total",))),
    F("page_faults_minor_per_sec", "page_fault", "faults/s", "minor faults (all - major)",
      Derived(_nan_safe(lambda a, b: a - b), ("page_faults_per_sec", "page_faults_major_per_sec")),
      "page_faults_per_sec - page_faults_major_per_sec"),
    F("page_fault_write_pct", "page_fault", "%", "write faults / all faults (eBPF)",
      SumRatio(PF_S, "write_faults", "faults", 100.0, den_reason="no faults counted in window")),
    F("page_fault_kernel_pct", "page_fault", "%", "faults taken in kernel mode / all faults (eBPF)",
      SumRatio(PF_S, "kernel_mode_faults", "faults", 100.0, den_reason="no faults counted in window")),
    F("page_fault_latency_avg_us", "page_fault", "us", "mean page fault handling latency (eBPF)",
      SumRatio(PF_S, "latency_avg_ns * faults", "faults", 1e-3, den_reason="no faults with latency in window")),
    # ---- scheduler
    F("ctx_switches_per_sec", "scheduler", "switches/s", "context switches per second (/proc/stat ctxt)", Rate(CPU, ("ctxt_total",))),
    F("forks_per_sec", "scheduler", "forks/s", "process creations per second", Rate(CPU, ("forks_total",))),
    F("procs_running_avg", "scheduler", "tasks", "tasks on a run queue, mean", Gauge(CPU, "procs_running")),
    F("procs_blocked_avg", "scheduler", "tasks", "tasks blocked on I/O, mean", Gauge(CPU, "procs_blocked")),
    F("ctx_switches_involuntary_pct", "scheduler", "%", "involuntary (preempted) / all switches (eBPF)",
      SumRatio(SCHED_S, "involuntary", "switches", 100.0, den_reason="no context switches counted in window")),
    F("sched_wakeups_per_sec", "scheduler", "wakeups/s", "task wakeups per second (eBPF)",
      SumRatio(SCHED_S, "wakeups", "interval_s", den_per_ts=True, den_reason="no tracer interval in window")),
    F("runq_depth_avg", "scheduler", "tasks", "mean run-queue length seen at switches (eBPF)", Gauge(SCHED_S, "nr_running_avg")),
    F("runq_latency_p50_us", "scheduler", "us", "median wait from wakeup to run (eBPF, summed histogram)", HistPct(SCHED_S, "runq_hist_log2_us", 0.50)),
    F("runq_latency_p95_us", "scheduler", "us", "p95 wait from wakeup to run (eBPF)", HistPct(SCHED_S, "runq_hist_log2_us", 0.95)),
    F("runq_latency_p99_us", "scheduler", "us", "p99 wait from wakeup to run (eBPF)", HistPct(SCHED_S, "runq_hist_log2_us", 0.99)),
    F("runqlat_tool_p95_us", "scheduler", "us", "p95 run-queue latency from the libbpf-tools runqlat collector", HistPct(RUNQ, "counts", 0.95)),
    # ---- PSI
    F("psi_cpu_some_pct", "psi", "%", "share of the window some task waited for CPU (d some_total_us)",
      Rate(PSI, ("some_total_us",), 1e-4, where=("resource", "==", "cpu"))),
    F("psi_memory_some_pct", "psi", "%", "share of the window some task stalled on memory",
      Rate(PSI, ("some_total_us",), 1e-4, where=("resource", "==", "memory"))),
    F("psi_memory_full_pct", "psi", "%", "share of the window all non-idle tasks stalled on memory",
      Rate(PSI, ("full_total_us",), 1e-4, where=("resource", "==", "memory"))),
    F("psi_io_some_pct", "psi", "%", "share of the window some task stalled on I/O",
      Rate(PSI, ("some_total_us",), 1e-4, where=("resource", "==", "io"))),
    F("psi_io_full_pct", "psi", "%", "share of the window all non-idle tasks stalled on I/O",
      Rate(PSI, ("full_total_us",), 1e-4, where=("resource", "==", "io"))),
    F("psi_memory_some_avg10_pct", "psi", "%", "kernel's 10 s PSI memory average, latest",
      Gauge(PSI, "some_avg10", "last", ("resource", "==", "memory"))),
    # ---- capacity: resources that run out (filesystems, descriptors, PIDs, conntrack, ports)
    F("fs_used_pct_max", "capacity", "%", "fullest read-write filesystem: used / (used + available), as df's Use%, max over filesystems and window",
      Gauge(FS, "100 * (size_bytes - free_bytes) / (size_bytes - free_bytes + avail_bytes)", "max", RW)),
    F("fs_reserved_pct_max", "capacity", "%", "largest share of a filesystem reserved for root (free but not available), max",
      Gauge(FS, "100 * reserved_bytes / size_bytes", "max", RW)),
    F("fs_inodes_used_pct_max", "capacity", "%", "read-write filesystem with the most inodes used, max (filesystems without an inode table excluded)",
      Gauge(FS, "100 * (inodes_total - inodes_free) / inodes_total", "max", RW)),
    F("file_handles_used_pct", "capacity", "%", "open file handles / fs.file-max, latest", Gauge(LIM, "100 * file_handles / file_max", "last")),
    F("nofile_top_used_pct", "capacity", "%", "descriptors held / soft RLIMIT_NOFILE of the process nearest its limit, latest",
      Gauge(LIM, "100 * nofile_top_fds / nofile_top_limit", "last")),
    F("nofile_top_fds_left", "capacity", "descriptors", "descriptors that process can still open, latest",
      Gauge(LIM, "nofile_top_limit - nofile_top_fds", "last")),
    F("pids_used_pct", "capacity", "%", "tasks (threads) / kernel.pid_max, latest", Gauge(LIM, "100 * tasks / pid_max", "last")),
    F("threads_used_pct", "capacity", "%", "tasks (threads) / kernel.threads-max, latest", Gauge(LIM, "100 * tasks / threads_max", "last")),
    F("pids_cgroup_used_pct", "capacity", "%", "pids.current / pids.max of the pids cgroup nearest its limit, latest",
      Gauge(LIM, "100 * pids_cgroup_current / pids_cgroup_max", "last")),
    F("pids_cgroup_left", "capacity", "tasks", "tasks that cgroup can still start, latest",
      Gauge(LIM, "pids_cgroup_max - pids_cgroup_current", "last")),
    F("conntrack_used_pct", "capacity", "%", "conntrack entries / nf_conntrack_max, latest; null while nf_conntrack is not loaded",
      Gauge(LIM, "100 * conntrack_entries / conntrack_max", "last")),
    F("ephemeral_ports_used_pct", "capacity", "%", "ephemeral ports held by TCP sockets / size of ip_local_port_range, latest",
      Gauge(LIM, "100 * ephemeral_ports_used / (port_range_high - port_range_low + 1)", "last")),
    # ---- derived (5+)
    F("cpu_memory_correlation", "derived", "r", "Pearson correlation of CPU utilisation and memory used % over the window",
      Corr(CPU, "100 - idle_pct - iowait_pct", MEM, "100 * (mem_total_kb - mem_available_kb) / mem_total_kb")),
    F("io_bottleneck_score", "derived", "score 0-100", "mean of available components: disk util/100, iowait/25%, PSI io some/25%, await/50ms (each capped at 1); needs 2",
      Derived(_io_bottleneck, ("disk_util_max_pct", "cpu_iowait_pct", "psi_io_some_pct", "disk_read_await_ms"),
              "fewer than 2 of its 4 inputs available"),
      "100 * mean(min(1, util/100), min(1, iowait/25), min(1, psi_io_some/25), min(1, read_await/50)) over available inputs, >= 2 needed"),
    F("memory_pressure_score", "derived", "score 0-100", "mean of available components: (20 - available%)/20, swap-out/1000, reclaim scan/10000, PSI memory some/10 (each clipped to 0..1); needs 2",
      Derived(_mem_pressure, ("memory_available_pct", "swap_out_pages_per_sec", "memory_reclaim_scan_pages_per_sec", "psi_memory_some_pct"),
              "fewer than 2 of its 4 inputs available"),
      "100 * mean of clipped components over available inputs, >= 2 needed"),
    F("memory_exhaustion_eta_s", "derived", "s", "time until MemAvailable reaches 0 at the window's trend; null when not declining",
      Derived(_exhaustion_eta, ("memory_available_mb", "memory_available_trend_mb_per_min"),
              "memory available is not declining in window"),
      "memory_available_mb / -trend (only when trend < 0)"),
    F("cpu_saturation_ratio", "derived", "ratio", "tasks on run queues per CPU (>1: CPU-bound queueing)",
      Derived(_ratio, ("procs_running_avg", "cpu_count")), "procs_running_avg / cpu_count"),
    F("io_blocked_task_pct", "derived", "%", "blocked / (running + blocked) tasks: I/O wait dominates when high",
      Derived(_blocked_share, ("procs_running_avg", "procs_blocked_avg"), "no running or blocked tasks"), "100 * blocked / (running + blocked)"),
]

BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
NAMES: list[str] = [f.name for f in FEATURES]
GROUPS: list[str] = list(dict.fromkeys(f.group for f in FEATURES))

if len(BY_NAME) != len(FEATURES):  # pragma: no cover - a catalog bug, caught at import
    raise RuntimeError("duplicate feature name in catalog")


def catalog_rows() -> list[dict]:
    return [{"name": f.name, "group": f.group, "unit": f.unit, "description": f.description,
             "sources": list(f.sources), "how": f.how_text()} for f in FEATURES]

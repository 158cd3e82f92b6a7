"""Signals the agent reads besides the feature catalog: per-syscall views the
interpretation tables name (read(), futex(), epoll_wait(), openat()), and the
worst of read/write block latency (io_worst, from catalog features).  Same rule as the catalog: no data is None.
"""

from __future__ import annotations

import sqlite3

import orjson

SLOW_READ_NS = 100_000_000  # "frequent read() > 100 ms" (docs/design.md, "Signal interpretation")
READ_CALLS = "('read','pread64','readv','preadv','preadv2')"
# A slow read() is storage only on a regular file or a block device: on a pipe, socket or
# terminal it is a wait for a writer (an idle shell, a tool's helper processes).  Lines from
# a tracer older than fd_type (null there) still count, as they did.
STORAGE_FD = "(fd_type IS NULL OR fd_type IN ('file','block'))"
AGENT_SIGNALS = ("syscall_futex_p95_ms", "syscall_futex_calls_per_sec", "syscall_epoll_wait_p95_ms", "syscall_read_slow_calls",
                 "syscall_openat_errors_per_sec", "syscall_openat_error_pct", "syscall_fs_errors_per_sec",
                 "disk_await_ms_worst", "disk_queue_depth_worst", "disk_util_worst_pct",
                 "disk_queue_wait_ms_worst", "disk_queue_wait_per_service_worst",
                 "syscall_openat_top_process_errors_per_sec", "event_loop_runq_delay_pct")
# Errors that always mean something is wrong with storage or its limits, whichever call met them
# (ENOENT and EAGAIN are how programs probe and poll; these are not).
FS_ERRNOS = {5: "EIO", 13: "EACCES", 23: "ENFILE", 24: "EMFILE", 28: "ENOSPC", 30: "EROFS", 122: "EDQUOT"}


def _one(conn: sqlite3.Connection, sql: str, args) -> tuple | None:
    try:
        return conn.execute(sql, args).fetchone()
    except sqlite3.OperationalError:  # table absent: that tracer never ran here
        return None


MIN_IOS_FOR_LATENCY = 20  # fewer I/Os than this in the window: too few to judge tail latency ...
EXTREME_LATENCY_MS = 500.0  # ... unless they are this slow: a dying disk completes few, very slow I/Os


def io_worst(values: dict, window_s: float) -> dict[str, float | None]:
    """Worst of read and write block latency percentiles (from the catalog's summed histograms)."""
    iops = values.get("io_traced_iops")
    out: dict[str, float | None] = {}
    for q in ("p50", "p95", "p99"):
        vals = [v for v in (values.get(f"io_read_latency_{q}_ms"), values.get(f"io_write_latency_{q}_ms"))
                if v is not None]
        enough = iops is not None and iops * window_s >= MIN_IOS_FOR_LATENCY
        extreme = bool(vals) and max(vals) >= EXTREME_LATENCY_MS
        out[f"io_{q}_ms_max"] = max(vals) if vals and (enough or extreme) else None
    return out


def agent_signals(conn: sqlite3.Connection, end_ns: int, window_s: float) -> dict[str, float | None]:
    lo = end_ns - int(window_s * 1e9)
    out: dict[str, float | None] = dict.fromkeys(AGENT_SIGNALS)
    rows = None
    try:
        rows = conn.execute(
            "SELECT syscall, SUM(count), SUM(errors), MAX(p95_ns), SUM(interval_s) FROM syscall_stats "
            "WHERE ts > ? AND ts <= ? AND syscall IN ('futex','epoll_wait','epoll_pwait','openat') GROUP BY syscall",
            (lo, end_ns)).fetchall()
    except sqlite3.OperationalError:
        pass
    traced = _one(conn, "SELECT COUNT(*) FROM syscall_stats WHERE ts > ? AND ts <= ?", (lo, end_ns))
    if traced and traced[0]:
        # The syscall tracer ran in the window: absent rows mean zero calls of that kind.
        out["syscall_openat_errors_per_sec"] = 0.0
        out["syscall_futex_calls_per_sec"] = 0.0
        for name, count, errors, p95, _ in rows or []:
            if name == "futex":
                # An uncontended lock never enters the kernel: futex() calls are contention (a lock
                # or a condition waited on), while their p95 is mostly idle threads' timed waits.
                out["syscall_futex_calls_per_sec"] = (count or 0) / window_s
                if p95 is not None:
                    out["syscall_futex_p95_ms"] = p95 / 1e6
            elif name in ("epoll_wait", "epoll_pwait") and p95 is not None:
                prev = out["syscall_epoll_wait_p95_ms"] or 0.0
                out["syscall_epoll_wait_p95_ms"] = max(prev, p95 / 1e6)
            elif name == "openat" and count:
                out["syscall_openat_errors_per_sec"] = errors / window_s
                out["syscall_openat_error_pct"] = 100.0 * errors / count
        slow = _one(conn, "SELECT COUNT(*) FROM syscall_events WHERE ts > ? AND ts <= ? AND "
                          f"syscall IN {READ_CALLS} AND latency_ns > ? AND {STORAGE_FD}",
                    (lo, end_ns, SLOW_READ_NS))
        out["syscall_read_slow_calls"] = float(slow[0]) if slow else 0.0
        out["syscall_fs_errors_per_sec"] = sum(fs_errors(conn, lo, end_ns).values()) / window_s
        top = failing_processes(conn, lo, end_ns, window_s, syscall="openat", limit=1)
        if top is not None:
            out["syscall_openat_top_process_errors_per_sec"] = top[0]["failed_per_sec"] if top else 0.0
    return out


def fs_errors(conn: sqlite3.Connection, lo_ns: int, hi_ns: int) -> dict[str, int]:
    """Calls failed with an errno of FS_ERRNOS in (lo_ns, hi_ns], by "syscall errno" (from each
    interval's top errnos per syscall, so a rare errno behind four commoner ones is not seen)."""
    out: dict[str, int] = {}
    try:
        rows = conn.execute("SELECT syscall, top_errnos, top_errno_counts FROM syscall_stats "
                            "WHERE ts > ? AND ts <= ? AND errors > 0", (lo_ns, hi_ns)).fetchall()
    except sqlite3.OperationalError:
        return out
    for name, errs, counts in rows:
        try:
            pairs = zip(orjson.loads(errs or "[]"), orjson.loads(counts or "[]"))
        except orjson.JSONDecodeError:
            continue
        for e, n in pairs:
            if e in FS_ERRNOS and isinstance(n, int):
                key = f"{name} {FS_ERRNOS[e]}"
                out[key] = out.get(key, 0) + n
    return out



def disk_worst(conn: sqlite3.Connection, end_ns: int, window_s: float) -> dict[str, float | None]:
    """The worst block device over the window, from /sys/block counters (no eBPF needed):
    mean await per completed I/O, mean queue depth and utilisation, each the maximum over devices.
    A maximum, not a sum: a device-mapper or md device and the disk under it carry the same I/O,
    and a fast NVMe must not hide a saturated disk beside it.  None without two samples of a device
    or (await) without a completed I/O.

    Queue wait is await minus the device's busy time per I/O (io_time / I/Os, the old svctm): how
    long a request waited before the device took it, in units of the device's own service time
    (disk_queue_wait_per_service_worst, for the device with the longest wait).  That is saturation
    judged against the device itself: fio randread at depth 8 here waited 12 ms for 1.7 ms of
    service, while depth 1 (1 ms each, util 97 %) and one dd writer waited about one service time.
    On a device that serves requests in parallel (NVMe) busy time per I/O understates service, so
    the wait is an upper bound; its floor in the rule keeps such a device quiet."""
    lo = end_ns - int(window_s * 1e9)
    out: dict[str, float | None] = {"disk_await_ms_worst": None, "disk_queue_depth_worst": None,
                                    "disk_util_worst_pct": None, "disk_queue_wait_ms_worst": None,
                                    "disk_queue_wait_per_service_worst": None}
    try:
        rows = conn.execute(
            "SELECT device, MIN(ts), MAX(ts), "
            "MAX(read_time_ms_total + write_time_ms_total) - MIN(read_time_ms_total + write_time_ms_total), "
            "MAX(reads_completed_total + writes_completed_total) - MIN(reads_completed_total + writes_completed_total), "
            "MAX(weighted_io_time_ms_total) - MIN(weighted_io_time_ms_total), "
            "MAX(io_time_ms_total) - MIN(io_time_ms_total) "
            "FROM block_stats WHERE ts > ? AND ts <= ? GROUP BY device", (lo, end_ns)).fetchall()
    except sqlite3.OperationalError:
        return out
    for _dev, t0, t1, busy_ms, ios, weighted_ms, io_ms in rows:
        span_ms = (t1 - t0) / 1e6 if t0 is not None and t1 is not None else 0.0
        if span_ms <= 0:
            continue
        if ios and ios > 0 and busy_ms is not None and busy_ms >= 0:
            await_ms = busy_ms / ios
            out["disk_await_ms_worst"] = max(out["disk_await_ms_worst"] or 0.0, await_ms)
            if io_ms is not None and io_ms > 0:
                service_ms = io_ms / ios
                wait_ms = max(0.0, await_ms - service_ms)
                if out["disk_queue_wait_ms_worst"] is None or wait_ms > out["disk_queue_wait_ms_worst"]:
                    out["disk_queue_wait_ms_worst"] = wait_ms
                    out["disk_queue_wait_per_service_worst"] = wait_ms / service_ms
        if weighted_ms is not None and weighted_ms >= 0:
            out["disk_queue_depth_worst"] = max(out["disk_queue_depth_worst"] or 0.0, weighted_ms / span_ms)
        if io_ms is not None and io_ms >= 0:
            out["disk_util_worst_pct"] = max(out["disk_util_worst_pct"] or 0.0, min(100.0, 100.0 * io_ms / span_ms))
    return out


def failing_processes(conn: sqlite3.Connection, lo_ns: int, hi_ns: int, window_s: float,
                      syscall: str | None = None, limit: int = 5) -> list[dict] | None:
    """Processes by failed calls per second over the window (the syscall tracer's syscall_errors
    lines), with their call and errno mix; None when that table is absent (an older tracer)."""
    where, args = "ts > ? AND ts <= ?", [lo_ns, hi_ns]
    if syscall is not None:
        where += " AND syscall = ?"
        args.append(syscall)
    try:
        rows = conn.execute(
            f"SELECT pid, MAX(comm), SUM(count), GROUP_CONCAT(DISTINCT syscall || ' ' || errno_name) "
            f"FROM syscall_errors WHERE {where} GROUP BY pid ORDER BY 3 DESC LIMIT ?", (*args, limit)).fetchall()
    except sqlite3.OperationalError:
        return None
    return [{"pid": pid, "comm": comm or "?", "failed_per_sec": round(n / window_s, 1), "errors": mix or ""}
            for pid, comm, n, mix in rows]

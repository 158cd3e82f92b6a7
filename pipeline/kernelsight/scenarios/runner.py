"""The scenario suite: real faults on this machine, with the whole pipeline up,
checked against what ks-agent says (`make scenarios`).

    python -m kernelsight.scenarios [--fast] [--only NAME,...] [--json OUT] [--data-dir DIR]

Starts `ks run` once (own data dir and FIFO under a temp dir, --interval 1),
waits until the agent is warm (>= 20 s of data), then for each scenario:
injects the fault (a bounded subprocess), polls the observations table, and
records whether the expected label opened within 30 s of onset, seconds to
detect, whether it closed after the fault ended, seconds to clear, every label
seen and any other high/critical observation not plausibly caused by the
fault (a false positive).  Also per scenario: every other observation opened
during it (extra_observations: the goal is one observation per incident),
whether the hit names the injector's process tree (named_injector), and whether
every observation closed within 60 s after the fault (TIME_WAIT's 60 s aside).
Then a normal phase (idle, then a C/C++ build, a web service under ab,
compression, SQLite and a growing process; 15 min in all by default) that must
raise nothing of severity high or critical; medium and above are counted.

Injectors are our own small ones and real third-party tools through
scenarios/cmd.py (stress-ng, sysbench, perf bench, fio, dd, ab, wrk, cat) and
scenarios/netloss.py (iperf3 over a veth pair with nftables dropping packets).

Onset: when the injector says the fault begins (it prints `ONSET <unix time>`
after any preparation, e.g. fio's file layout); for memory pressure, the first
memory_metrics sample after the injector started in which MemAvailable is
under 10 % of MemTotal (the fault as the interpretation table defines it).
Fault end: when the injector has exited (its load is gone).
Seconds to detect: poll time (0.5 s polling) at which the observation was
first seen open, minus onset.  Seconds to clear: the agent's closed_at (the
first evaluation at which the condition no longer held; the row is closed
clear_after_s later) minus fault end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from ..agent.rules import load_rules
from ..proctree import TreeMeter, pipeline_names
from .netloss import VETH_HOST, VETH_NS

DETECT_WITHIN_S = 30.0  # the goal, reported per scenario
GIVE_UP_S = 2 * DETECT_WITHIN_S  # a late detection is still measured (and fails the goal), not lost
CLOSE_WITHIN_S = 60.0  # the goal for every observation a scenario opened, after the fault ends
TIME_WAIT_S = 60.0  # the kernel's fixed TIME_WAIT (TCP_TIMEWAIT_LEN): churn's observations outlive it by design
WARM_S = 20.0
POLL_S = 0.5
COST_SAMPLE_S = 5.0  # memory samples of the pipeline's process tree while a fault runs
PIPELINE_TOP_N = 3  # per fault, the costliest processes of the pipeline kept in the result
SEVERE = ("high", "critical")
IO_LABELS = ("I/O Tail Latency", "I/O Saturation", "I/O Queue Congestion", "I/O Wait Dominates", "I/O Bottleneck",
             "Read Amplification", "I/O Bottleneck Causing Scheduling Churn")
CPU_LABELS = ("Oversubscription", "CPU Saturation", "CPU Starvation", "Scheduling Thrash", "Serialization Bottleneck",
              "Steady Demand Growth", "Lock Contention", "Event Loop Starvation")


@dataclass
class Scenario:
    name: str
    module: str
    args: list[str]
    expected: tuple[str, ...]  # any of these labels counts as detected
    tool: str = ""  # what produces the fault, for the report ("stress-ng --cpu", "fio randread qd32")
    third_party: bool = False  # a well-known tool from Debian (not one of our own injectors)
    fault: str = ""  # the fault family; every fault has >= 2 tools
    needs: tuple[str, ...] = ()  # executables the injector runs
    related: tuple[str, ...] = ()  # plausibly caused by the fault: not false positives
    fast_args: list[str] | None = None
    fast: bool = False  # in the fast subset (make test)
    onset: str = "start"  # "start" (ONSET line / injector start) or "memory" (MemAvailable < 10 %)
    max_inject_s: float = 45.0  # the runner stops the injector by then, whatever happens
    hold_s: float = 8.0  # keep the fault up this long after detection
    clear_wait_s: float = 60.0  # how long to wait for the observation to close after the fault ends
    close_goal_s: float = CLOSE_WITHIN_S  # every observation of the scenario closed by then after the fault
    note: str = ""


NET_RELATED = ("Network Hardware Issue",)
MEMORY_RELATED = ("Approaching OOM", "Memory Overflow", "Disk Thrashing", "Memory Exhaustion Forecast") + CPU_LABELS
FS_RELATED = ("Filesystem Full", "Filesystem Nearly Full", "Filesystem Out of Inodes", "File System Issue",
              "Resource Exhaustion Forecast")
IO_EXPECTED = ("I/O Saturation", "I/O Tail Latency", "I/O Queue Congestion")
# HTTP/1.0 (the server closes each connection), a thread per connection; {python}: no pyenv-style shim in between
HTTP_SERVER = "{python} -m http.server -b 127.0.0.1 {port} -d {dir}"
# Content-Length set: ab speaks HTTP/1.0, where node can only keep a connection alive when the body's
# length is known (without it every ab -k request closed its connection: churn, not a loop under load).
NODE_SERVER = ("node -e \"require('http').createServer((q, r) => {{ r.setHeader('Content-Length', 2); r.end('ok'); }})"
               ".listen({port}, '127.0.0.1')\"")
# A listener on every host address with a deep accept queue (never accepting: a flood target).
LISTENER = ("{python} -c \"import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', {port})); "
            "s.listen(4096); time.sleep(1e6)\"")
DROP_SYNACK = ("table inet ks_syn {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
               "  tcp flags & (syn|ack) == syn|ack drop\n }\n}\n")
# Written O_DIRECT: 2 GiB of dirty pages from the setup read as a write-buffer flood of their own.
COLD_FILE = ("dd if=/dev/zero of={dir}/data bs=4M count=512 oflag=direct status=none && sync && "
             "echo 1 > /proc/sys/vm/drop_caches")


def cmd(seconds: float, line: str, *opts: str) -> list[str]:
    """Arguments of the generic injector (scenarios/cmd.py) running `line` for `seconds`."""
    return ["--seconds", f"{seconds:g}", *opts, "--", line]


SCENARIOS = [
    # ---- file system issue: failing openat()
    Scenario("file_system_issue", "fsfail", ["--seconds", "40", "--rate", "3000"], ("File System Issue",),
             tool="kernelsight fsfail (openat loop)", fault="file system issue",
             fast=True, note="failing openat() storm (ENOENT), 3000/s"),
    Scenario("file_system_issue_cat", "cmd",
             cmd(40, "while :; do setpriv --reuid=nobody --regid=nogroup --clear-groups "
                     "cat {dir}/config-{{1..600}}.conf 2>/dev/null; sleep 0.2; done"),
             ("File System Issue",), tool="cat (coreutils) as nobody on files it may not read", third_party=True,
             fault="file system issue", needs=("cat", "setpriv"),
             note="a bash loop: cat as nobody of 600 files in root's 0700 scratch dir, 5 times a second: EACCES "
                  "(a storage errno, always notable; an ENOENT storm spread over short-lived processes is how a "
                  "build probes headers, and is judged per process)"),
    # ---- process explosion
    Scenario("process_explosion", "forkstorm", ["--seconds", "40", "--rate", "600"], ("Process Explosion",),
             related=CPU_LABELS, tool="kernelsight forkstorm (posix_spawn)", fault="process explosion",
             fast=True, note="fork/exec storm of /bin/true, 600/s"),
    Scenario("process_explosion_stress_ng", "cmd", cmd(40, "stress-ng --fork 2 --timeout {seconds}s --quiet"),
             ("Process Explosion",), related=CPU_LABELS, tool="stress-ng --fork", third_party=True,
             fault="process explosion", needs=("stress-ng",), note="stress-ng --fork 2: fork and exit, unpaced"),
    # ---- scheduling thrash
    # Pipe ping-pong is scheduling thrash and, when wakeups far outnumber switches, a serialization
    # bottleneck: either label names this fault (a clean-clone run saw the second at 162,543 wakeups/s).
    Scenario("scheduling_thrash", "ctxswitch", ["--seconds", "40"], ("Scheduling Thrash", "Serialization Bottleneck"),
             related=CPU_LABELS,
             tool="stress-ng --switch", third_party=True, fault="scheduling thrash", needs=("stress-ng",),
             fast=True, note="stress-ng --switch 1 (one pipe ping-pong pair), ~250k switches/s"),
    Scenario("scheduling_thrash_perf", "cmd", cmd(40, "perf bench sched pipe -l 2000000000"),
             ("Scheduling Thrash", "Serialization Bottleneck"), related=CPU_LABELS, tool="perf bench sched pipe", third_party=True,
             fault="scheduling thrash", needs=("perf",),
             note="perf bench sched pipe: two tasks ping-pong over a pipe (~100k switches/s)"),
    # ---- CPU oversubscription
    Scenario("cpu_oversubscription", "cpuhog", ["--seconds", "45"], ("Oversubscription",), related=CPU_LABELS,
             tool="stress-ng --cpu", third_party=True, fault="CPU oversubscription", needs=("stress-ng",),
             note="stress-ng --cpu 3 x cores"),
    Scenario("cpu_oversubscription_sysbench", "cmd", cmd(45, "sysbench cpu --threads={cores3} --time={seconds} run"),
             ("Oversubscription",), related=CPU_LABELS, tool="sysbench cpu", third_party=True,
             fault="CPU oversubscription", needs=("sysbench",), note="sysbench cpu, 3 threads per core"),
    # ---- I/O saturation
    Scenario("io_saturation", "iosat", ["--seconds", "45", "--rw", "write", "--bs", "4M", "--fsync", "32", "--jobs", "2", "--fresh", "--size-mb", "4096"], ("I/O Saturation", "I/O Tail Latency"),
             related=IO_LABELS + ("Scheduling Thrash",), tool="fio write fsync", third_party=True,
             fault="I/O saturation", needs=("fio",),
             note="fio 4 MiB buffered writes to never-written blocks, fsync every 32, 2 jobs, on the real disk"),
    # Not qd1: one 1 MiB random read at a time is served here in 1.0 ms at the median (550 MB/s, the
    # device 97 % busy): busy, not slow, and rightly not labelled (measured in the 2026-11-30 run).
    Scenario("io_saturation_fio_qd8", "iosat", ["--seconds", "45", "--rw", "randread", "--bs", "1M", "--iodepth", "8",
                                                 "--size-mb", "2048"], IO_EXPECTED,
             related=IO_LABELS + ("Scheduling Thrash",), tool="fio randread direct qd8", third_party=True,
             fault="I/O saturation", needs=("fio",), note="fio random 1 MiB O_DIRECT reads, iodepth 8, one job"),
    Scenario("io_saturation_fio_qd32", "iosat", ["--seconds", "45", "--rw", "randread", "--bs", "1M", "--iodepth",
                                                  "32", "--size-mb", "2048"], IO_EXPECTED,
             related=IO_LABELS + ("Scheduling Thrash",), tool="fio randread direct qd32", third_party=True,
             fault="I/O saturation", needs=("fio",), note="fio random 1 MiB O_DIRECT reads, iodepth 32, one job"),
    Scenario("io_saturation_dd", "cmd",
             # Four writers: one dd keeps a request or four in flight and each takes ~5 ms on this disk
             # (busy, not slow); four queue ~26 deep and wait ~30 ms each.
             cmd(45, "for i in 1 2 3 4; do rm -f {dir}/data$i; "
                     "dd if=/dev/zero of={dir}/data$i bs=4M count=256 oflag=direct status=none & done; wait",
                 "--loop"), IO_EXPECTED, related=IO_LABELS + ("Scheduling Thrash",), tool="dd oflag=direct (4 writers)",
             third_party=True, fault="I/O saturation", needs=("dd",),
             note="four dd writing 4 MiB O_DIRECT blocks to fresh 1 GiB files, again and again"),
    # ---- write buffer saturation
    Scenario("write_buffer_saturation", "dirty", ["--seconds", "45"], ("Write Buffer Saturation",),
             related=IO_LABELS, tool="kernelsight dirty (pwrite loop)", fault="write buffer saturation",
             note="buffered writes 400 MiB/s, no fsync, on the real disk"),
    Scenario("write_buffer_dd", "cmd",
             cmd(45, "dd if=/dev/zero of={dir}/data bs=1M count=3072 conv=notrunc status=none", "--loop"),
             ("Write Buffer Saturation",), related=IO_LABELS, tool="dd (buffered)", third_party=True,
             fault="write buffer saturation", needs=("dd",),
             note="dd 3 GiB buffered writes, no sync, rewriting the same file"),
    Scenario("write_buffer_fio", "cmd",
             cmd(45, "fio --name=ks-wb --filename={dir}/data --size=3g --rw=write --bs=1M --direct=0 "
                     "--ioengine=psync --rate=400m --time_based --runtime={seconds} --output=/dev/null"),
             ("Write Buffer Saturation",), related=IO_LABELS, tool="fio buffered write", third_party=True,
             fault="write buffer saturation", needs=("fio",), note="fio sequential buffered writes at 400 MiB/s"),
    # ---- memory pressure
    Scenario("memory_pressure", "memhog", ["--leave-pct", "7", "--hold", "40", "--max-seconds", "100"],
             ("Memory Pressure",), related=MEMORY_RELATED,
             tool="kernelsight memhog (mmap)", fault="memory pressure", onset="memory", max_inject_s=90.0,
             note="memhog leaves ~7 % available; onset = first sample under 10 % available"),
    Scenario("memory_pressure_stress_ng", "cmd",
             # stress-ng shares --vm-bytes among the workers: the total goes there.
             # Huge pages: 4 KiB faults under the page-fault tracer fill only ~0.2 GB/s on this VM.
             cmd(150, "stress-ng --vm 2 --vm-bytes {grab_mb}m --vm-keep --vm-hang 0 --vm-madvise hugepage "
                      "--vm-method write64 --timeout {seconds}s --quiet", "--leave-pct", "7"),
             ("Memory Pressure",), related=MEMORY_RELATED,
             tool="stress-ng --vm", third_party=True, fault="memory pressure", needs=("stress-ng",),
             onset="memory", max_inject_s=160.0,
             note="stress-ng --vm 2, --vm-bytes sized from MemAvailable to leave ~7 %, held; "
                  "onset = first sample under 10 % available"),
    # ---- connection churn
    Scenario("connection_churn", "churn", ["--seconds", "25", "--rate", "400"], ("Connection Churning",),
             related=("SYN Flood",), tool="kernelsight churn (connect/close)", fault="connection churn",
             fast=True, clear_wait_s=100.0, close_goal_s=CLOSE_WITHIN_S + TIME_WAIT_S,
             note="short TCP connections on 127.0.0.1, 400/s; TIME_WAIT lasts 60 s by kernel design, "
                  "so clearing takes about a minute after the churn stops"),
    Scenario("connection_churn_ab", "cmd",
             cmd(25, "ab -q -n 500 -c 4 http://127.0.0.1:{port}/ >/dev/null", "--loop", "--server", HTTP_SERVER),
             ("Connection Churning",), related=("SYN Flood",), tool="ab (no keep-alive)", third_party=True,
             fault="connection churn", needs=("ab",), clear_wait_s=100.0,
             close_goal_s=CLOSE_WITHIN_S + TIME_WAIT_S,
             note="ApacheBench without keep-alive, 4 clients, against python -m http.server on 127.0.0.1 "
                  "(~500 connections/s)"),
    Scenario("connection_churn_wrk", "cmd",
             cmd(25, "wrk -t1 -c4 -d{seconds}s -H 'Connection: close' http://127.0.0.1:{port}/ >/dev/null",
                 "--server", HTTP_SERVER),
             ("Connection Churning",), related=("SYN Flood",), tool="wrk (Connection: close)", third_party=True,
             fault="connection churn", needs=("wrk",), clear_wait_s=100.0,
             close_goal_s=CLOSE_WITHIN_S + TIME_WAIT_S,
             note="wrk with Connection: close, 4 connections, against python -m http.server on 127.0.0.1"),
    # ---- packet loss
    Scenario("packet_loss_veth", "netloss", ["--seconds", "40", "--loss-pct", "5"], ("Network Degradation",),
             related=NET_RELATED + CPU_LABELS, tool="iperf3 + nft drop on a veth pair", third_party=True,
             fault="packet loss", needs=("iperf3", "nft", "ip"),
             note="iperf3 bulk TCP from the host into a network namespace over a veth pair; nftables drops "
                  "5 % of the packets (numgen random mod 100 < 5)"),
    # ---- the design's other interpretation rows, each from real tools
    Scenario("lock_contention_perf", "cmd", cmd(40, "perf bench futex lock-pi -t 64 -r {seconds}"),
             ("Lock Contention",), related=CPU_LABELS, tool="perf bench futex lock-pi", third_party=True,
             fault="lock contention", needs=("perf",), note="64 threads taking one priority-inheritance futex"),
    Scenario("lock_contention_sysbench", "cmd",
             cmd(40, "sysbench mutex --threads=64 --mutex-num=1 --mutex-locks=200000 --mutex-loops=5000 "
                     "--time={seconds} run", "--loop"),
             ("Lock Contention",), related=CPU_LABELS, tool="sysbench mutex", third_party=True,
             fault="lock contention", needs=("sysbench",),
             note="64 threads on one pthread mutex, 5000 loop iterations between locks (measured: 15,000 futex/s)"),
    Scenario("cpu_starvation_stress_ng", "cmd",
             cmd(45, "stress-ng --yield $(( $(nproc) * 8 )) --timeout {seconds}s --quiet"),
             ("CPU Starvation", "Scheduling Thrash", "Oversubscription"), related=CPU_LABELS,
             tool="stress-ng --yield", third_party=True, fault="CPU starvation", needs=("stress-ng",),
             note="8 sched_yield() loops per core: every switch is involuntary (a yielding task stays runnable)"),
    Scenario("cpu_starvation_sysbench", "cmd",
             cmd(45, "sysbench threads --threads=64 --thread-yields=1000 --thread-locks=8 --time={seconds} run",
                 "--loop"),
             ("CPU Starvation", "Scheduling Thrash", "Oversubscription"), related=CPU_LABELS,
             tool="sysbench threads", third_party=True, fault="CPU starvation", needs=("sysbench",),
             note="64 threads yielding under 8 mutexes"),
    Scenario("cpu_saturation_stress_ng", "cmd",
             cmd(45, "stress-ng --cpu $(( $(nproc) * 8 )) --timeout {seconds}s --quiet"),
             ("CPU Saturation", "Oversubscription"), related=CPU_LABELS, tool="stress-ng --cpu (8 per core)",
             third_party=True, fault="CPU saturation", needs=("stress-ng",),
             note="8 CPU hogs per core: run queue 5 per core deep"),
    Scenario("cpu_saturation_sysbench", "cmd",
             cmd(45, "sysbench cpu --threads=$(( $(nproc) * 8 )) --time={seconds} run"),
             ("CPU Saturation", "Oversubscription"), related=CPU_LABELS, tool="sysbench cpu (8 per core)",
             third_party=True, fault="CPU saturation", needs=("sysbench",), note="8 CPU threads per core"),
    Scenario("event_loop_starvation_node", "cmd",
             cmd(45, "stress-ng --cpu $(( $(nproc) * 8 )) --timeout {seconds}s --quiet & "
                     "wrk -t1 -c8 -d{seconds}s http://127.0.0.1:{port}/ >/dev/null; wait", "--server", NODE_SERVER),
             ("Event Loop Starvation", "Oversubscription"), related=CPU_LABELS, tool="node + wrk + stress-ng --cpu",
             third_party=True, fault="event loop starvation", needs=("node", "wrk", "stress-ng"),
             note="a node.js HTTP server under wrk while 8 CPU hogs per core keep its loop thread waiting to run"),
    Scenario("event_loop_starvation_ab", "cmd",
             cmd(45, "sysbench cpu --threads=$(( $(nproc) * 8 )) --time={seconds} run >/dev/null & "
                     "ab -q -k -t {seconds} -n 100000000 -c 8 http://127.0.0.1:{port}/ >/dev/null; wait",
                 "--server", NODE_SERVER),
             ("Event Loop Starvation", "Oversubscription"), related=CPU_LABELS, tool="node + ab -k + sysbench cpu",
             third_party=True, fault="event loop starvation", needs=("node", "ab", "sysbench"),
             note="a node.js HTTP server under ab (keep-alive) while sysbench runs 8 CPU threads per core"),
    Scenario("disk_thrashing_fio_mmap", "cmd",
             cmd(40, "fio --name=ks-mmap --filename={dir}/data --size=2g --ioengine=mmap --rw=randread --bs=4k "
                     "--fadvise_hint=1 --time_based --runtime={seconds} >/dev/null",
                 "--setup", COLD_FILE),
             ("Disk Thrashing",), related=IO_LABELS + ("Memory Pressure",), tool="fio mmap randread (cold cache)",
             third_party=True, fault="disk thrashing", needs=("fio",),
             note="random 4 KiB reads through mmap of a 2 GiB file just dropped from the page cache: major faults"),
    Scenario("disk_thrashing_python_mmap", "cmd",
             cmd(40, "{python} -c " + shlex.quote(
                 "import mmap, random, sys\n"
                 "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
                 "m.madvise(mmap.MADV_RANDOM); pages = len(m) // 4096\n"
                 "while True: m[random.randrange(pages) * 4096]") + " {dir}/data",
                 "--setup", COLD_FILE),
             ("Disk Thrashing",), related=IO_LABELS + ("Memory Pressure",), tool="python mmap reader (cold cache)",
             fault="disk thrashing", note="one page at a time, at random, through mmap of a cold 2 GiB file"),
    Scenario("syn_flood_hping3", "cmd",
             cmd(40, "ip netns exec {ns} hping3 -S -p {port} -i u2000 -q {host_ip}", "--veth", "--ns-nft",
                 DROP_SYNACK, "--server", LISTENER),
             ("SYN Flood",), related=NET_RELATED, tool="hping3 -S (SYN-ACKs dropped at the sender)", third_party=True,
             fault="SYN flood", needs=("hping3", "ip", "nft"),
             note="500 SYN/s from a network namespace to a listener on the host; the namespace drops the "
                  "SYN-ACKs, so every handshake stays half-open"),
    Scenario("syn_flood_connect", "cmd",
             cmd(40, "ip netns exec {ns} {python} -c " + shlex.quote(
                 "import socket, sys, time\n"
                 "held = []\n"
                 "for _ in range(600):\n"
                 "    s = socket.socket(); s.setblocking(False); s.connect_ex((sys.argv[1], int(sys.argv[2])))\n"
                 "    held.append(s); time.sleep(0.005)\n"
                 "time.sleep(1e6)") + " {host_ip} {port}", "--veth", "--ns-nft", DROP_SYNACK, "--server", LISTENER),
             ("SYN Flood",), related=NET_RELATED, tool="python: 600 non-blocking connect() (SYN-ACKs dropped)",
             fault="SYN flood",
             note="600 handshakes from a namespace that drops the SYN-ACKs (wrk and ab test-connect first and "
                  "block, so they cannot make a half-open flood)"),
    # ---- a filesystem running out of space, or of inodes (a 64 MiB tmpfs, its writer retrying on ENOSPC)
    # A writer that stays (a logger, a dump): dd fed 4 MiB a second, fio rate-limited to 4 MiB/s.
    Scenario("fs_full_dd", "cmd",
             cmd(40, "while :; do head -c 4M /dev/zero; sleep 1; done | "
                     "dd of={fs}/fill bs=1M iflag=fullblock status=none 2>/dev/null; sleep {seconds}",
                 "--tmpfs", "size=64m"),
             ("Filesystem Full", "Filesystem Nearly Full"), related=FS_RELATED, tool="dd into a 64 MiB tmpfs",
             third_party=True, fault="filesystem full", needs=("dd",),
             note="dd writes 4 MiB a second into a 64 MiB tmpfs until ENOSPC"),
    Scenario("fs_full_fio", "cmd",
             cmd(40, "fio --name=ks-fill --filename={fs}/fill --size=1g --rw=write --bs=64k --rate=4m "
                     "--time_based --runtime={seconds} --continue_on_error=all --output=/dev/null; sleep {seconds}",
                 "--tmpfs", "size=64m"),
             ("Filesystem Full", "Filesystem Nearly Full"), related=FS_RELATED, tool="fio write into a 64 MiB tmpfs",
             third_party=True, fault="filesystem full", needs=("fio",),
             note="fio writes 4 MiB/s into a 64 MiB tmpfs until ENOSPC"),
    Scenario("fs_inodes_touch", "cmd",
             cmd(40, "while :; do seq -f \"{fs}/f%g.$RANDOM\" 1 100 | xargs touch 2>/dev/null; sleep 0.5; done",
                 "--tmpfs", "size=64m,nr_inodes=2048"),
             ("Filesystem Out of Inodes",), related=FS_RELATED, tool="touch (coreutils) via xargs",
             third_party=True, fault="out of inodes", needs=("touch", "xargs"),
             note="empty files created 100 at a time in a tmpfs with 2048 inodes (64 MiB of space stays free)"),
    Scenario("fs_inodes_python", "cmd",
             cmd(40, "{python} -c " + shlex.quote(
                 "import itertools, os, sys, time\n"
                 "for i in itertools.count():\n"
                 "    try: open(os.path.join(sys.argv[1], 'f%d' % i), 'w').close()\n"
                 "    except OSError: time.sleep(0.5)") + " {fs}", "--tmpfs", "size=64m,nr_inodes=2048"),
             ("Filesystem Out of Inodes",), related=FS_RELATED, tool="python open(O_CREAT) loop",
             fault="out of inodes", note="a Python loop creating empty files in a tmpfs with 2048 inodes"),
    # ---- a process at its descriptor limit (a leak under a low LimitNOFILE)
    Scenario("fd_limit_python", "cmd",
             cmd(40, "ulimit -n 1024 && exec {python} -c " + shlex.quote(
                 "import time\nheld = [open('/dev/null') for _ in range(960)]\ntime.sleep(1e6)")),
             ("Process Near Its Descriptor Limit",), related=("Resource Exhaustion Forecast",),
             tool="python holding 960 of 1024 descriptors", fault="descriptor limit",
             note="a process with RLIMIT_NOFILE 1024 opens /dev/null 960 times and holds them"),
    Scenario("fd_limit_bash", "cmd",
             cmd(40, "ulimit -n 1024 && for i in $(seq 960); do exec {{fd}}</dev/null; done && sleep {seconds}"),
             ("Process Near Its Descriptor Limit",), related=("Resource Exhaustion Forecast",),
             tool="bash holding 960 of 1024 descriptors", third_party=True, fault="descriptor limit",
             needs=("bash",), note="bash with ulimit -n 1024 opens 960 descriptors (exec {fd}<) and holds them"),
    Scenario("nic_drops_hping3", "cmd",
             cmd(40, "hping3 --udp -d 8000 -i u1000 -q {ns_ip}", "--veth", "--host-mtu", "9000"),
             ("Network Hardware Issue",), related=("Network Degradation",), tool="hping3 --udp (MTU mismatch)",
             third_party=True, fault="interface drops", needs=("hping3", "ip"),
             note="8000-byte datagrams into a veth pair whose far end has MTU 1500: dropped by the interface"),
    Scenario("nic_drops_iperf3", "cmd",
             cmd(40, "sleep 1; iperf3 -u -c {ns_ip} -b 100M -l 8000 -t {seconds} >/dev/null", "--veth",
                 "--host-mtu", "9000", "--setup", "ip netns exec {ns} iperf3 -s -D"),
             ("Network Hardware Issue",), related=("Network Degradation",), tool="iperf3 -u (MTU mismatch)",
             third_party=True, fault="interface drops", needs=("iperf3", "ip"),
             note="iperf3 UDP, 8000-byte datagrams, into a veth pair whose far end has MTU 1500"),
]
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Result:
    scenario: str
    expected: list[str]
    name: str = ""  # = scenario (the name the acceptance table uses)
    tool: str = ""
    third_party: bool = False
    fault: str = ""
    detected: bool = False
    label: str | None = None
    observation_id: int | None = None
    severity: str | None = None
    seconds_to_detect: float | None = None
    cleared: bool = False
    seconds_to_clear: float | None = None
    closed_seen_after_s: float | None = None
    false_positives: list[dict] = field(default_factory=list)
    labels_seen: list[dict] = field(default_factory=list)
    # One observation per incident: every other observation opened (or reopened) during the scenario.
    extra_observations: int = 0
    # Interpretation rows that held during the scenario: labels opened, and labels folded into an
    # observation as its evidence (a consequence inside its cause's incident)
    rows_fired: list[str] = field(default_factory=list)
    extra_labels: list[dict] = field(default_factory=list)
    # The hit names the injector: a pid of its process tree, or a (non-generic) comm of it.
    named_injector: bool | None = None
    named_processes: list[dict] = field(default_factory=list)  # what the hit observation named
    injector_comms: list[str] = field(default_factory=list)
    injector_pids: int = 0  # how many pids its process tree had (sampled while it ran, plus its execs)
    # Every observation of the scenario closed within close_goal_s after the fault ended.
    all_closed: bool | None = None
    unclosed: list[dict] = field(default_factory=list)
    onset_unix: float | None = None
    fault_end_unix: float | None = None
    injector_rc: int | None = None
    # What the whole pipeline cost while the fault ran and was detected (kernelsight.proctree):
    # CPU in % of one core over the fault, PSS mean and max of samples every COST_SAMPLE_S.
    pipeline_cpu_pct: float | None = None
    pipeline_pss_mib: float | None = None
    pipeline_pss_mib_max: float | None = None
    # The processes behind those figures, costliest first (process, cpu_pct, pss_mib and rss_mib means): an
    # outlier names its process (run 8's 12.45 % during lock_contention_perf could not be told).
    pipeline_top: list[dict] = field(default_factory=list)
    note: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every acceptance line of a fault but the extra-observation count (a goal of 0, counted):
        the label in time, the injector named, nothing unrelated, everything closed after it."""
        return (self.detected and self.seconds_to_detect is not None and self.seconds_to_detect <= DETECT_WITHIN_S
                and self.cleared and not self.false_positives and bool(self.named_injector)
                and self.all_closed is not False)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ pipeline
class Pipeline:
    """`ks run` as a subprocess with its own data dir and FIFO."""

    def __init__(self, data_dir: Path, fifo: str, log_path: Path, interval: float = 1.0):
        self.data_dir = data_dir
        self.db = data_dir / "kernelsight.db"
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "KS_DATA_DIR": str(data_dir), "KS_FIFO": fifo}
        self.proc = subprocess.Popen([sys.executable, "-m", "kernelsight.cli", "run", "--data-dir", str(data_dir),
                                      "--fifo", fifo, "--interval", str(interval)],
                                     env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        self.started = time.time()

    def meter(self) -> TreeMeter:
        """CPU and memory of the whole pipeline (`ks run` and every process below it) from now on."""
        return TreeMeter([self.proc.pid], pipeline_names(self.proc.pid, self.data_dir))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def conn(self) -> sqlite3.Connection | None:
        if not self.db.exists():
            return None
        c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        c.row_factory = sqlite3.Row
        return c

    def query(self, sql: str, args=()) -> list:
        c = self.conn()
        if c is None:
            return []
        try:
            return c.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            c.close()

    def status(self) -> dict:
        from ..cli import read_status

        try:
            return read_status(self.data_dir)
        except Exception as e:  # noqa: BLE001 - status is informative only
            return {"error": str(e), "children": []}

    def wait_warm(self, warm_s: float = WARM_S, timeout: float = 180.0) -> dict:
        """Until the agent runs and the DB holds >= warm_s of samples (and the agent has
        judged at least once after its own warm-up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"ks run exited with {self.proc.returncode}; see its log")
            st = self.status()
            agent = next((c for c in st.get("children", []) if c["name"] == "ks-agent"), None)
            span = self.query("SELECT (MAX(ts) - MIN(ts)) / 1e9 FROM memory_metrics")
            fc = self.query("SELECT COUNT(*) FROM oom_forecasts")
            if (agent and agent["state"] == "running" and span and span[0][0] is not None
                    and span[0][0] >= warm_s and fc and fc[0][0] >= 3
                    and time.time() - self.started >= warm_s + 5):
                return st
            time.sleep(1.0)
        raise RuntimeError("the pipeline did not warm up in time")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ observations
def snapshot(p: Pipeline) -> dict[int, tuple[str, int]]:
    return {r["id"]: (r["status"], r["last_seen"]) for r in p.query("SELECT id, status, last_seen FROM observations")}


def new_or_reopened(p: Pipeline, before: dict[int, tuple[str, int]], since: float) -> list[sqlite3.Row]:
    """Observations that opened after `before` was taken, or were closed then and came back."""
    rows = p.query("SELECT id, rule, label, status, severity, signal_category, first_seen, last_seen, closed_at, "
                   "summary, processes FROM observations WHERE last_seen >= ? ORDER BY id", (int(since) - 1,))
    out = []
    for r in rows:
        old = before.get(r["id"])
        if old is None or (old[0] == "closed" and (r["status"] == "open" or r["last_seen"] > old[1])):
            out.append(r)
    return out


@cache
def rule_labels() -> frozenset[str]:
    return frozenset(r.label for r in load_rules().rules)


def rows_in(p: Pipeline, before: dict[int, tuple[str, int]], since: float) -> set[str]:
    """Labels of the observations the scenario opened, and of the rules folded into them as evidence
    ("Label: summary" among their correlated signals)."""
    labels = rule_labels()
    out = set()
    for r in new_or_reopened(p, before, since):
        out.add(r["label"])
        row = p.query("SELECT observation FROM observations WHERE id=?", (r["id"],))
        try:
            corr = json.loads(row[0][0])["context"]["correlated_signals"] if row else []
        except (ValueError, KeyError, TypeError):
            corr = []
        out |= {c.split(": ", 1)[0] for c in corr if isinstance(c, str) and c.split(": ", 1)[0] in labels}
    return out


def _item(r: sqlite3.Row, severity: str) -> dict:
    """One observation for the report, with the processes the agent named behind it
    (so a reader can tell the injected fault from another user's load)."""
    try:
        procs = json.loads(r["processes"] or "[]")
    except ValueError:
        procs = []
    names = []
    for pr in procs:
        if pr.get("comm") and pr["comm"] not in names:
            names.append(pr["comm"])
    return {"id": r["id"], "label": r["label"], "severity": severity, "category": r["signal_category"],
            "first_seen": r["first_seen"], "summary": r["summary"], "processes": names[:5]}


def open_labels(p: Pipeline, labels) -> list[sqlite3.Row]:
    q = ",".join("?" * len(labels))
    return p.query(f"SELECT id, label FROM observations WHERE status='open' AND label IN ({q})", tuple(labels))


def memory_onset(p: Pipeline, since: float, pct: float = 10.0) -> float | None:
    r = p.query("SELECT MIN(ts) FROM memory_metrics WHERE ts >= ? AND mem_total_kb > 0 AND "
                "100.0 * mem_available_kb < ? * mem_total_kb", (int(since * 1e9), pct))
    return r[0][0] / 1e9 if r and r[0][0] is not None else None


# ------------------------------------------------------------------ injectors
class Injector:
    def __init__(self, module: str, args: list[str], log_path: Path):
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.log.write(f"\n=== {module} {' '.join(args)} at {time.strftime('%H:%M:%S')}\n".encode())
        self.log.flush()
        self.started = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", f"kernelsight.scenarios.{module}", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, start_new_session=True, text=True)
        self.onset: float | None = None
        self.ended: float | None = None
        self.pids: set[int] = {self.proc.pid}  # every process of its tree seen while it ran
        self.comms: set[str] = set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def sample_tree(self) -> None:
        """Add the injector's descendants now alive, and their current comms, to self.pids / self.comms."""
        parent: dict[int, int] = {}
        comm: dict[int, str] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    st = f.read()
                lp, rp = st.find(b"("), st.rfind(b")")
                pid = int(d)
                comm[pid] = st[lp + 1:rp].decode("utf-8", "replace")
                parent[pid] = int(st[rp + 2:].split()[1])
            except (OSError, IndexError, ValueError):
                continue
        for pid, name in comm.items():
            chain, q = [], pid
            while q not in self.pids and q in parent and q > 1 and len(chain) < 64:
                chain.append(q)
                q = parent[q]
            if q in self.pids:
                self.pids.update(chain)
                self.comms.update(comm[x] for x in chain)
                self.comms.add(name)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("ONSET ") and self.onset is None:
                try:
                    self.onset = float(line.split()[1])
                except (IndexError, ValueError):
                    self.onset = time.time()
            self.log.write(line.encode())

    def running(self) -> bool:
        if self.proc.poll() is None:
            return True
        if self.ended is None:
            self.ended = time.time()
        return False

    def stop(self, grace: float = 20.0) -> int:
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.ended is None:
            self.ended = time.time()
        _killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group (nothing, normally)
        self.reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


# ------------------------------------------------------------------ one scenario
GENERIC_COMMS = {"python", "python3", "bash", "sh", "dash", "sleep", "timeout", "env"}  # name no one in particular


def _named(obj, out: list[dict]) -> None:
    """Every dict with a pid, a comm or an interface anywhere in an observation's JSON."""
    if isinstance(obj, dict):
        if "pid" in obj or "comm" in obj or "interface" in obj:
            out.append({k: obj[k] for k in ("pid", "comm", "interface") if k in obj})
        if isinstance(obj.get("interfaces"), str):  # a namespace's interfaces (retransmitters)
            out += [{"interface": i.strip()} for i in obj["interfaces"].split(",") if i.strip()]
        for v in obj.values():
            _named(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _named(v, out)


def named_processes(p: Pipeline, obs_id: int) -> list[dict]:
    r = p.query("SELECT processes, observation FROM observations WHERE id=?", (obs_id,))
    out: list[dict] = []
    for col in ("processes", "observation"):
        try:
            _named(json.loads(r[0][col] or "null"), out) if r else None
        except ValueError:
            pass
    uniq = []
    for x in out:
        if x not in uniq:
            uniq.append(x)
    return uniq


def names_injector(named: list[dict], pids: set[int], comms: set[str],
                   interfaces: frozenset[str] = frozenset(), tmpfs: bool = False) -> list[dict]:
    """What names the injector: a pid of its tree, a (non-generic) comm of it, for a fault on a veth
    pair the scenario set up one of its interfaces (drops happen on an interface, not in a process),
    and for a filesystem it mounted (cmd.py --tmpfs at <scratch>/fs) that filesystem."""
    def its_fs(c) -> bool:
        return tmpfs and isinstance(c, str) and c.startswith("filesystem ") and "/ks-cmd-" in c and c.endswith("/fs")
    return [x for x in named if (isinstance(x.get("pid"), int) and x["pid"] in pids)
            or (x.get("comm") in comms and x.get("comm") not in GENERIC_COMMS)
            or x.get("interface") in interfaces or its_fs(x.get("comm"))]


def add_execs(p: Pipeline, inj: Injector, t0: float, t1: float) -> None:
    """Children the sampling missed (a fork storm's short-lived ones): exec events whose parent is in the tree."""
    rows = p.query("SELECT pid, ppid, comm FROM exec_events WHERE ts BETWEEN ? AND ? ORDER BY ts",
                   (int(t0 * 1e9), int((t1 + 2) * 1e9)))
    for r in rows:
        if r["ppid"] in inj.pids or r["pid"] in inj.pids:
            inj.pids.add(r["pid"])
            if r["comm"]:
                inj.comms.add(r["comm"])


def run_scenario(p: Pipeline, sc: Scenario, fast: bool, log_path: Path) -> Result:
    res = Result(sc.name, list(sc.expected), name=sc.name, tool=sc.tool, third_party=sc.third_party,
                 fault=sc.fault, note=sc.note)
    # Start from a clean slate: nothing with the expected label still open.
    t_wait = time.monotonic()
    while open_labels(p, sc.expected) and time.monotonic() - t_wait < 90:
        time.sleep(1.0)
    time.sleep(2.0)
    before = snapshot(p)
    args = sc.fast_args if fast and sc.fast_args else sc.args
    say(f"{sc.name}: starting {sc.module} {' '.join(args)}")
    inj = Injector(sc.module, args, log_path)
    cost = p.meter()
    cost_sampled = 0.0
    t0 = inj.started
    onset = None
    hit = None
    detect_seen = None
    named: list[dict] = []
    rows_seen: set[str] = set()
    while True:
        now = time.time()
        rows_seen |= rows_in(p, before, t0)
        if inj.running():
            inj.sample_tree()
            if now - cost_sampled >= COST_SAMPLE_S:
                cost.sample()
                cost_sampled = now
        if onset is None:
            if sc.onset == "memory":
                onset = memory_onset(p, t0)
            elif inj.onset is not None:
                onset = inj.onset
            elif not inj.running():
                onset = inj.started  # it never said: its start is the onset
        if hit is None:
            rows = [r for r in new_or_reopened(p, before, t0) if r["label"] in sc.expected and r["status"] == "open"]
            if rows:
                hit = rows[0]
                detect_seen = now
                say(f"{sc.name}: {hit['label']} opened (#{hit['id']}, {hit['severity']})")
                named += named_processes(p, hit["id"])
        if hit is not None and onset is not None and now - detect_seen >= sc.hold_s:
            break
        if onset is not None and now - onset > GIVE_UP_S and hit is None:
            break
        if now - t0 > sc.max_inject_s:
            break
        if not inj.running() and hit is None and inj.proc.returncode not in (0, -signal.SIGTERM):
            res.error = f"the injector failed (exit {inj.proc.returncode}); see its log"
            break
        if not inj.running() and (onset is None or hit is not None or now - onset > GIVE_UP_S):
            break
        time.sleep(POLL_S)
    if hit is not None:
        named += named_processes(p, hit["id"])  # as the fault ends (the agent refreshes its attribution)
    res.injector_rc = inj.stop()
    res.fault_end_unix = inj.ended
    c = cost.finish()
    res.pipeline_cpu_pct, res.pipeline_pss_mib, res.pipeline_pss_mib_max = (
        round(c["cpu_pct"], 2), round(c["pss_mib"], 1), round(c["pss_mib_max"], 1))
    res.pipeline_top = c["per_process"][:PIPELINE_TOP_N]
    add_execs(p, inj, t0, inj.ended)
    res.injector_comms = sorted(inj.comms)
    res.injector_pids = len(inj.pids)
    if onset is None:
        onset = memory_onset(p, t0) if sc.onset == "memory" else (inj.onset or t0)
    res.onset_unix = onset
    if onset is None and res.error is None:
        res.error = "the fault never reached its onset (memory never went under 10 % available)"
    if hit is not None:
        res.detected = True
        res.label = hit["label"]
        res.observation_id = hit["id"]
        if onset is not None:
            res.seconds_to_detect = round(detect_seen - onset, 1)
        # Wait for it to close, and for everything else the scenario opened (up to clear_wait_s).
        deadline = time.time() + sc.clear_wait_s
        while time.time() < deadline:
            r = p.query("SELECT status, closed_at, severity FROM observations WHERE id=?", (hit["id"],))
            if not res.cleared and r and r[0]["status"] == "closed":
                res.cleared = True
                res.closed_seen_after_s = round(time.time() - res.fault_end_unix, 1)
                res.seconds_to_clear = round(max(0.0, r[0]["closed_at"] - res.fault_end_unix), 1)
            if res.cleared and (fast or all(x["status"] == "closed" for x in new_or_reopened(p, before, t0))):
                break  # (the fast subset does not wait for the others: make test stays as long as it was)
            time.sleep(POLL_S)
        say(f"{sc.name}: " + (f"closed, {res.seconds_to_clear} s after the fault ended" if res.cleared
                               else f"still open {sc.clear_wait_s:.0f} s after the fault ended"))
    else:
        say(f"{sc.name}: NOT detected")
        deadline = time.time() + min(sc.clear_wait_s, CLOSE_WITHIN_S)
        time.sleep(10.0)
        while not fast and time.time() < deadline and any(x["status"] == "open" for x in new_or_reopened(p, before, t0)):
            time.sleep(POLL_S)
    seen = new_or_reopened(p, before, t0)
    # A fault on the veth pair the injector set up is named by naming that pair.
    ifaces = frozenset((VETH_HOST, VETH_NS)) if sc.module == "netloss" or "--veth" in args else frozenset()
    tmpfs = "--tmpfs" in args
    res.rows_fired = sorted(rows_seen | rows_in(p, before, t0))
    allowed = set(sc.expected) | set(sc.related)
    for r in seen:
        cur = p.query("SELECT severity, status, closed_at FROM observations WHERE id=?", (r["id"],))
        severity = cur[0]["severity"] if cur else r["severity"]
        item = _item(r, severity)
        res.labels_seen.append(item)
        if severity in SEVERE and r["label"] not in allowed:
            res.false_positives.append(item)
        if hit is None or r["id"] != hit["id"]:
            res.extra_labels.append({"id": r["id"], "label": r["label"], "severity": severity,
                                     "names_injector": bool(names_injector(named_processes(p, r["id"]), inj.pids,
                                                                           inj.comms, ifaces, tmpfs))})
        closed_at = cur[0]["closed_at"] if cur and cur[0]["status"] == "closed" else None
        if closed_at is None or closed_at - res.fault_end_unix > sc.close_goal_s:
            res.unclosed.append({"id": r["id"], "label": r["label"],
                                 "closed_after_s": None if closed_at is None
                                 else round(closed_at - res.fault_end_unix, 1)})
    res.extra_observations = len(res.extra_labels)
    res.all_closed = not res.unclosed
    if hit is not None:
        sev = p.query("SELECT severity FROM observations WHERE id=?", (hit["id"],))
        res.severity = sev[0][0] if sev else hit["severity"]
        uniq = []
        for x in named:
            if x not in uniq:
                uniq.append(x)
        res.named_processes = uniq[:20]
        res.named_injector = bool(names_injector(uniq, inj.pids, inj.comms, ifaces, tmpfs))
    say(f"{sc.name}: {res.extra_observations} extra observation(s)"
        + (f" ({', '.join(x['label'] for x in res.extra_labels)})" if res.extra_labels else "")
        + (f"; names the injector: {res.named_injector}" if hit is not None else ""))
    return res


NORMAL_S = 900.0  # the full suite's normal phase: 15 min
NORMAL_IDLE_S = 60.0
MEDIUM_UP = ("medium", "high", "critical")


def run_normal(p: Pipeline, seconds: float, idle_s: float, log_path: Path) -> dict:
    """`seconds` of normal operation: idle for idle_s, then the normal-load mix (normalload.py: a C/C++
    build, a keep-alive web service under ab, xz/gzip, a SQLite workload, a process growing and freeing
    memory).  Nothing of severity high or critical may open; medium and up are counted."""
    before = snapshot(p)
    t0 = time.time()
    idle_s = min(idle_s, seconds)
    say(f"normal: idle {idle_s:.0f} s")
    time.sleep(idle_s)
    load_s = max(0.0, seconds - idle_s)
    rc = None
    load_cost: dict = {}
    if load_s >= 1:
        say(f"normal: build, web service, compression, sqlite, memory grower for {load_s:.0f} s")
        inj = Injector("normalload", ["--seconds", f"{load_s:g}"], log_path)
        cost = p.meter()
        sampled = 0.0
        while inj.running() and time.time() - inj.started < load_s + 30:
            if time.time() - sampled >= COST_SAMPLE_S:
                cost.sample()
                sampled = time.time()
            time.sleep(1.0)
        rc = inj.stop()
        c = cost.finish()
        load_cost = {"pipeline_cpu_pct": round(c["cpu_pct"], 2), "pipeline_pss_mib": round(c["pss_mib"], 1),
                     "pipeline_pss_mib_max": round(c["pss_mib_max"], 1)}
        load_s = inj.ended - inj.started
    time.sleep(10.0)  # anything the load's tail would raise
    seen = new_or_reopened(p, before, t0)
    labels, fps, medium = [], [], []
    for r in seen:
        cur = p.query("SELECT severity FROM observations WHERE id=?", (r["id"],))
        item = _item(r, cur[0][0] if cur else r["severity"])
        labels.append(item)
        if item["severity"] in SEVERE:
            fps.append(item)
        if item["severity"] in MEDIUM_UP:
            medium.append(item)
    out = {"seconds": round(time.time() - t0, 1), "medium_or_above": len(medium), "idle_s": idle_s,
           "load_s": round(load_s, 1), "load_rc": rc,
           "load": "C/C++ build -j2, keep-alive web service under ab (~100 req/s), xz/gzip every minute, "
                   "sqlite3 transactions every second, a process growing to 2 GiB and freeing",
           "labels_seen": labels, "false_positives": fps, "ok": not fps, **load_cost}
    say(f"normal: {len(labels)} observation(s), {len(medium)} medium or above, {len(fps)} high/critical")
    return out


# ------------------------------------------------------------------ output
def _cost_cell(cpu_pct: float | None, pss_mib: float | None) -> str:
    return "-" if cpu_pct is None else f"{cpu_pct:.1f} / {pss_mib:.0f}"


def table(results: list[Result], normal: dict | None) -> str:
    head = ("scenario", "tool", "detected", "label", "s to detect", "s to clear", "extra observations",
            "names injector", "false positives", "pipeline CPU % / PSS MiB")
    rows = []
    for r in results:
        extra = str(r.extra_observations) + (f" ({', '.join(x['label'] for x in r.extra_labels)})"
                                             if r.extra_labels else "")
        rows.append((r.scenario, r.tool + (" (3rd party)" if r.third_party else ""), "yes" if r.detected else "NO",
                     r.label or "-",
                     "-" if r.seconds_to_detect is None else f"{r.seconds_to_detect:.1f}",
                     ("-" if r.seconds_to_clear is None else f"{r.seconds_to_clear:.1f}") if r.cleared
                     else ("not closed" if r.detected else "-"), extra,
                     "-" if r.named_injector is None else ("yes" if r.named_injector else "no"),
                     ", ".join(f"{f['label']} ({f['severity']})" for f in r.false_positives) or "none",
                     _cost_cell(r.pipeline_cpu_pct, r.pipeline_pss_mib_max)))
    if normal is not None:
        rows.append((f"normal load ({normal['seconds'] / 60:.0f} min)", "build, ab, xz/gzip, sqlite3, grower", "-",
                     "-", "-", "-", f"{normal['medium_or_above']} medium or above", "-",
                     ", ".join(f"{f['label']} ({f['severity']})" for f in normal["false_positives"]) or "none",
                     _cost_cell(normal.get("pipeline_cpu_pct"), normal.get("pipeline_pss_mib_max"))))
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def faults_summary(results: list[Result]) -> dict:
    """Per fault: the tools that produced it, how many of them third-party, how many detected."""
    out: dict[str, dict] = {}
    for r in results:
        f = out.setdefault(r.fault or r.scenario, {"tools": [], "third_party": 0, "detected": 0})
        f["tools"].append(r.tool)
        f["third_party"] += int(r.third_party)
        f["detected"] += int(r.detected)
    return out


def cost_summary(results: list[Result], normal: dict | None) -> dict:
    """What the whole pipeline cost while faults ran (CPU in % of one core, PSS in MiB): the design
    floor is under 10 % of a core under stress."""
    runs = [(r.scenario, r.pipeline_cpu_pct, r.pipeline_pss_mib_max) for r in results if r.pipeline_cpu_pct is not None]
    if normal and normal.get("pipeline_cpu_pct") is not None:
        runs.append(("normal load", normal["pipeline_cpu_pct"], normal["pipeline_pss_mib_max"]))
    if not runs:
        return {}
    cpus = sorted(c for _, c, _ in runs)
    worst = max(runs, key=lambda x: x[1])
    return {"cpu_pct_median": cpus[len(cpus) // 2], "cpu_pct_max": worst[1], "cpu_pct_max_in": worst[0],
            "pss_mib_max": max(m for _, _, m in runs), "design_floor_cpu_pct": 10.0}


def check_tools(names: list[str]) -> list[str]:
    return sorted({t for n in names for t in BY_NAME[n].needs if shutil.which(t) is None})


# Interpretation rows no scenario here produces, and why (docs/scenarios.md lists them).
# Rows the suite does not produce, and why.  A host-wide limit (fs.file-max, kernel.pid_max, threads-max,
# nf_conntrack_max, the init namespace's ip_local_port_range) would have to be lowered for the whole
# shared machine; their rules are tested on recorded and synthetic vectors (tests/test_agent.py), and the
# limits they share code with held on a real fault in `python -m bench fsfill`.
HOST_WIDE = ("needs {what} lowered for the whole machine (a host-wide limit; other work on this shared VM would "
             "fail with it); the rule is tested on vectors, and the same exhaustion code held on a real fault in "
             "`python -m bench fsfill`")
NOT_PRODUCED_HERE = {
    "Memory Overflow": "this VM has no swap device (zram0 is 0 B and no swap file is configured); without swap the "
                       "rule's swap_used_pct stays 0",
    "File Handles Near Limit": HOST_WIDE.format(what="fs.file-max"),
    "PIDs Near Limit": HOST_WIDE.format(what="kernel.pid_max or kernel.threads-max"),
    "Conntrack Table Nearly Full": HOST_WIDE.format(what="net.netfilter.nf_conntrack_max (settable in the initial "
                                                         "network namespace only)"),
    "Ephemeral Ports Nearly Exhausted": HOST_WIDE.format(what="the initial namespace's ip_local_port_range"),
    "Cgroup Near Its PID Limit": "held in `python -m bench fsfill` (a fork loop in a pids cgroup with pids.max set: "
                                 "observation 23 s after the start, the forker named); the suite has no cgroup "
                                 "scenario",
    "I/O Bottleneck Causing Scheduling Churn": "no fault here both blocks tasks on slow I/O and switches context "
                                               "over 25,000/s per core: the I/O faults switch < 10,000/s",
    "Serialization Bottleneck": "wakeups outnumber switches twice only in bursts here (it held once, in a "
                                "`make test` run of stress-ng --switch: 162,543 wakeups/s)",
}


def rows_summary(results: list[Result]) -> list[dict]:
    """Every interpretation row (rule label): the scenarios in which it held, or why none here produces it."""
    fired: dict[str, list[str]] = {}
    for r in results:
        for label in r.rows_fired:
            fired.setdefault(label, []).append(r.name)
    return [{"label": label, "fired_in": fired.get(label, []),
             "not_produced": None if label in fired else NOT_PRODUCED_HERE.get(label, "not produced in this run")}
            for label in sorted(rule_labels())]


def run_suite(names: list[str], fast: bool = False, normal: bool = True, data_dir: Path | None = None,
              idle_s: float = NORMAL_IDLE_S, normal_s: float = NORMAL_S) -> dict:
    start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ks-scenarios-"))
    keep = data_dir is not None
    data = data_dir.absolute() if data_dir else tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    fifo = str(tmp / "ks.fifo")
    logs = tmp if not keep else data
    inj_log = logs / "scenario-injectors.log"
    p = Pipeline(data, fifo, logs / "ks-run.log")
    results: list[Result] = []
    normal_out = None
    pipeline_status = {}
    try:
        say(f"ks run started (data {data}); waiting for >= {WARM_S:.0f} s of data")
        st = p.wait_warm()
        pipeline_status = {c["name"]: c.get("attach") or c["state"] for c in st.get("children", [])}
        say("pipeline warm: " + ", ".join(f"{k}={v}" for k, v in pipeline_status.items()))
        for name in names:
            if not p.alive():
                raise RuntimeError("ks run exited during the suite")
            results.append(run_scenario(p, BY_NAME[name], fast, inj_log))
        if normal:
            normal_out = run_normal(p, normal_s, idle_s, inj_log)
    finally:
        rc = p.stop()
        say(f"ks run stopped (rc {rc})")
        shutil.rmtree(tmp, ignore_errors=True)  # the FIFO (and logs, unless kept in data_dir)
    ok = all(r.ok for r in results) and (normal_out is None or normal_out["ok"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": {"kernel": platform.release(), "cores": os.cpu_count(),
                 "mem_total_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)},
        "mode": "fast" if fast else "full",
        "detect_within_s": DETECT_WITHIN_S,
        "duration_s": round(time.time() - start, 1),
        "pipeline": pipeline_status,
        "data_dir": str(data) if keep else None,
        "scenarios": [{**asdict(r), "ok": r.ok} for r in results],
        "faults": faults_summary(results),
        "rows": rows_summary(results),
        "pipeline_cost": cost_summary(results, normal_out),
        "normal": normal_out,
        "ok": ok,
        "table": table(results, normal_out),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the fast scenarios, and no normal-load phase")
    ap.add_argument("--only", default=None, help="comma-separated scenario names (and `normal` for the normal-load phase): "
                    + ",".join(BY_NAME))
    ap.add_argument("--json", type=Path, default=None, help="write the results here (e.g. bench/scenarios.json)")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the pipeline's data here (default: a temp dir)")
    ap.add_argument("--no-normal", action="store_true", help="skip the normal-load phase")
    ap.add_argument("--idle", type=float, default=NORMAL_IDLE_S, help="normal phase: idle seconds first")
    ap.add_argument("--normal-seconds", type=float, default=NORMAL_S,
                    help="normal phase length in all (idle, then build + web + compression + sqlite + memory)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    a = ap.parse_args(argv)
    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:<30} {'fast ' if s.fast else '     '}{s.tool + (' *' if s.third_party else ''):<36} "
                  f"{'/'.join(s.expected)}")
        print("(* a third-party tool from Debian)")
        return 0
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        want_normal = "normal" in names
        names = [n for n in names if n != "normal"]
        bad = [n for n in names if n not in BY_NAME]
        if bad:
            ap.error(f"unknown scenario(s) {', '.join(bad)}; known: {', '.join(BY_NAME)}")
    else:
        names = [s.name for s in SCENARIOS if s.fast or not a.fast]
        want_normal = not a.fast
    if os.geteuid() != 0:
        print("scenarios: the pipeline's eBPF tracers need root; run as root", file=sys.stderr)
        return 2
    missing = check_tools(names)
    if missing:
        print(f"scenarios: missing tools {', '.join(missing)} (apt-get install {' '.join(missing)})", file=sys.stderr)
        return 2
    normal = want_normal and not a.no_normal
    out = run_suite(names, fast=a.fast, normal=normal, data_dir=a.data_dir, idle_s=a.idle, normal_s=a.normal_seconds)
    print(out["table"])
    print(f"\n{out['date']}: {'all passed' if out['ok'] else 'FAILED'} in {out['duration_s']:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written to {a.json}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

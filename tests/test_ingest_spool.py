"""ks-ingest's spool (kernelsight/ingest/spool.py) with real processes and a real FIFO.

The test holds the FIFO open read-write, as `ks run` does, so the pipe buffer
outlives each ks-ingest.  Lines are `load` events numbered in last_pid, so the
database shows exactly which arrived and how often.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import orjson
import pytest

from conftest import query, wait_for
from kernelsight.fifo import hold_fifo
from kernelsight.ingest import make_ingestor, read_status
from kernelsight.ingest.daemon import read_spool_state
from kernelsight.ingest.spool import HEADER, MAGIC, SPOOL_NAME
from kernelsight.schema import LINE_MAX, example_event, load_schema

SCHEMA = load_schema()
LOAD = SCHEMA.events["load"]
TS0 = 1_700_000_000_000_000_000

# Writes numbered load lines until SIGTERM, then prints how many.  A line the
# full pipe refuses (ks-ingest down) is tried again: every number is written once.
PRODUCER = """
import signal, sys, time
import orjson
from kernelsight.fifo import LineWriter
from kernelsight.schema import example_event, load_schema
fifo, per_ms = sys.argv[1], int(sys.argv[2])
spec = load_schema().events["load"]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
w = LineWriter(fifo, producer="test-spool", block_ms=50)
seq = 0
while not stop:
    line = orjson.dumps({**example_event(spec, time.time_ns()), "last_pid": seq}) + b"\\n"
    while not w.write_line(line):
        time.sleep(0.005)
    seq += 1
    if seq % per_ms == 0:
        time.sleep(0.001)
w.close()
print(seq, flush=True)
"""


def line(seq: int) -> bytes:
    return orjson.dumps({**example_event(LOAD, TS0 + seq), "last_pid": seq}) + b"\n"


def lines(seqs) -> bytes:
    return b"".join(line(i) for i in seqs)


def header(spool_id: int) -> bytes:
    return HEADER.pack(MAGIC, spool_id)


@pytest.fixture
def env(ks_env):
    """ks_env plus the FIFO held read-write for the whole test, and every ks-ingest reaped."""
    ks_env.hold_fd, _ = hold_fifo(ks_env.fifo)
    ks_env.log = ks_env.tmp / "ingest.log"
    ks_env.spool = ks_env.data / "run" / SPOOL_NAME
    ks_env.procs = []
    yield ks_env
    for p in ks_env.procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
    os.close(ks_env.hold_fd)


def start_ingest(env, *extra) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "kernelsight.ingest", "--fifo", env.fifo, "--data-dir", str(env.data),
                          "--stats-interval", "3600", "--log-file", str(env.log), *extra], env=env.env)
    env.procs.append(p)

    def started():
        assert p.poll() is None, f"ks-ingest exited with {p.returncode}"
        return (read_status(env.data) or {}).get("pid") == p.pid

    wait_for(started, what="ks-ingest started")
    return p


def stop_ingest(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 0


def kill_ingest(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL  # reaped: its flock on the spool is gone


def seqs(env) -> list[int]:
    return [r[0] for r in query(env.db, "SELECT last_pid FROM load_metrics ORDER BY last_pid")]


def rejected(env) -> int:
    return query(env.db, "SELECT COUNT(*) FROM rejected_events")[0][0]


def log_events(env, event: str) -> list[dict]:
    out = []
    for raw in env.log.read_bytes().splitlines():
        rec = orjson.loads(raw)
        if rec.get("event") == event:
            out.append(rec)
    return out


def spool_state(env) -> tuple[int | None, int]:
    """(header id or None, size in bytes) of the spool file."""
    try:
        data = env.spool.read_bytes()
    except FileNotFoundError:
        return None, 0
    if len(data) < HEADER.size:
        return None, len(data)
    return HEADER.unpack(data[: HEADER.size])[1], len(data)


KILLS = 5
CONFIGS = {
    # Commits nothing of its own accord: every kill leaves all it read in the spool.
    "holding": ["--flush-ms", "600000", "--batch-size", "1000000"],
    # Commits every 20 ms: a kill lands between commits, past a committed offset.
    "committing": ["--flush-ms", "20", "--batch-size", "500"],
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_kill_9_mid_stream_loses_and_repeats_no_line(env, config):
    extra = CONFIGS[config]
    ing = start_ingest(env, *extra)
    prod = subprocess.Popen([sys.executable, "-c", PRODUCER, env.fifo, "10"], env=env.env, stdout=subprocess.PIPE)
    env.procs.append(prod)
    for _ in range(KILLS):
        if config == "holding":
            # This ks-ingest has read 128 KiB (~900 lines) it has not committed: the
            # spool was reset after the replay (a new id), or has grown by that much.
            prev_id, prev_size = spool_state(env)
            wait_for(lambda i=prev_id, s=prev_size: (x := spool_state(env))[1] >= 128 << 10
                     and (x[0] != i or x[1] >= s + (128 << 10)), what="ks-ingest holding lines it read")
        else:
            stored = len(seqs(env))
            wait_for(lambda n=stored: len(seqs(env)) >= n + 3000, what="ks-ingest storing")
        kill_ingest(ing)
        ing = start_ingest(env, *extra)
    prod.send_signal(signal.SIGTERM)
    out, _ = prod.communicate(timeout=60)
    assert prod.returncode == 0
    n = int(out)
    stop_ingest(ing)  # drains the pipe, commits, empties the spool
    got = seqs(env)
    missing = sorted(set(range(n)) - set(got))
    assert len(got) == len(set(got)), "a line stored twice"
    assert not missing and len(got) == n, (len(missing), missing[:10])
    assert rejected(env) == 0
    assert spool_state(env) == (None, 0), "a clean stop leaves the spool empty"
    recovered = [r["lines"] for r in log_events(env, "recovered lines from the spool")]
    if config == "holding":
        assert len(recovered) == KILLS and min(recovered) >= 500, recovered
    assert read_status(env.data)["spool_errors_total"] == 0
    assert os.stat(env.spool).st_mode & 0o777 == 0o600


def commit(env, stored, state: dict[str, int]) -> None:
    """The database a killed ks-ingest left: these lines and this spool state, one commit."""
    ing = make_ingestor(env.data)
    read_spool_state(ing.conn)
    ing.spool = SimpleNamespace(state_rows=lambda: tuple(state.items()))
    ing.feed_lines([line(i).rstrip(b"\n") for i in stored])
    assert ing.flush()
    ing.conn.close()
    assert query(env.db, "SELECT key, value FROM ingest_state ORDER BY key") == sorted(state.items())


def write_spool(env, data: bytes) -> None:
    env.spool.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(env.spool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)


A, B, C = range(100), range(100, 200), range(200, 300)
H7 = header(7)


def _offset_inside():
    # Killed past a commit: A committed (offset after it), B read and not.
    return {"spool": H7 + lines(A) + lines(B), "stored": A,
            "state": {"spool_id": 7, "spool_offset": len(H7 + lines(A)), "spool_discarding": 0}, "fifo": b"",
            "expected": [*A, *B]}


def _reset_then_killed():
    # Spool 7 committed up to its end and reset; spool 8 got B and ks-ingest was
    # killed before any commit.  The offset still committed for spool 7 falls on a
    # line boundary inside spool 8: an offset alone would skip half of B.
    h8 = header(8)
    return {"spool": h8 + lines(B), "stored": A,
            "state": {"spool_id": 7, "spool_offset": len(h8 + lines(range(100, 150))), "spool_discarding": 0},
            "fifo": lines(C), "expected": [*A, *B, *C]}


def _truncated_then_killed():
    # Killed between the ftruncate and the next header: nothing to replay.
    return {"spool": b"", "stored": A, "state": {"spool_id": 7, "spool_offset": 5000, "spool_discarding": 0},
            "fifo": lines(B), "expected": [*A, *B]}


def _header_only():
    return {"spool": header(8), "stored": A, "state": {"spool_id": 7, "spool_offset": 5000, "spool_discarding": 0},
            "fifo": lines(B), "expected": [*A, *B]}


def _partial_line():
    # The killed ks-ingest had read half of line 199; its other half is still in the pipe.
    last = line(199)
    return {"spool": H7 + lines(A) + lines(range(100, 199)) + last[:50], "stored": A,
            "state": {"spool_id": 7, "spool_offset": len(H7 + lines(A)), "spool_discarding": 0},
            "fifo": last[50:] + lines(C), "expected": [*A, *B, *C]}


def _skipping_an_oversize_line():
    # Killed while skipping a line over LINE_MAX (its first bytes already quarantined
    # and committed): the rest of it is skipped, not quarantined again.
    junk = b"x" * (LINE_MAX + 1000)
    return {"spool": H7 + lines(A) + junk + b"yyy\n" + lines(B), "stored": A,
            "state": {"spool_id": 7, "spool_offset": len(H7 + lines(A)) + LINE_MAX + 10, "spool_discarding": 1},
            "fifo": lines(C), "expected": [*A, *B, *C]}


CRAFTED = {"offset inside the spool": _offset_inside, "reset then killed before a commit": _reset_then_killed,
           "truncated then killed": _truncated_then_killed, "header only": _header_only,
           "partial line continued in the pipe": _partial_line, "skipping an oversize line": _skipping_an_oversize_line}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_restart_from_a_crafted_spool_state_neither_loses_nor_repeats(env, case):
    c = CRAFTED[case]()
    commit(env, c["stored"], c["state"])
    write_spool(env, c["spool"])
    if c["fifo"]:
        os.write(env.hold_fd, c["fifo"])
    expected = c["expected"]
    ing = start_ingest(env, "--flush-ms", "20")
    wait_for(lambda: seqs(env) == expected, what="every line stored")
    stop_ingest(ing)
    assert seqs(env) == expected and rejected(env) == 0
    assert spool_state(env) == (None, 0)


def test_spool_write_failure_is_counted_and_ingest_goes_on(env):
    """DATA_DIR/run on a 64 KiB tmpfs: the spool meets ENOSPC, the database does not."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs (needs root)")
    run = env.data / "run"
    run.mkdir(mode=0o700, parents=True)
    os.chmod(env.data, 0o700)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(run)],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        ing = start_ingest(env, "--flush-ms", "50")
        n = 3000  # ~410 KB: several times the file system
        for i in range(0, n, 100):
            os.write(env.hold_fd, lines(range(i, i + 100)))
            time.sleep(0.01)
        wait_for(lambda: len(seqs(env)) == n, what="every line stored")
        st = wait_for(lambda: (s := read_status(env.data)) and s["spool_errors_total"] >= 1 and s,
                      what="the spool error in the status file")
        stop_ingest(ing)
        assert seqs(env) == list(range(n)) and rejected(env) == 0
        assert st["state"] == "storing" and read_status(env.data)["spool_errors_total"] >= 1
        assert len(log_events(env, "spool write failed; reading the FIFO without it")) == 1
        assert spool_state(env) == (None, 0)
    finally:
        if subprocess.run(["umount", str(run)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(run)], check=True)


def test_replay_mode_has_no_spool(env):
    rec = env.tmp / "capture.jsonl"
    rec.write_bytes(lines(A))
    r = subprocess.run([sys.executable, "-m", "kernelsight.ingest", "--replay", str(rec), "--data-dir", str(env.data)],
                       env=env.env, check=False, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert seqs(env) == list(A)
    assert not env.spool.exists()

"""ks-ingest's bell to ks-agent (kernelsight.bell): a commit that stored rows rings, one that
stored an OOM victim rings OOM_STORED at once; the agent between steps waits for a ring instead
of polling, and looks for a victim only when the ring says a commit stored one."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
from test_ingest_store import line, make

from kernelsight import bell as B
from kernelsight.agent import daemon as agent_daemon
from kernelsight.procutil import SignalWakeup


@pytest.fixture
def run_dir(tmp_path) -> Path:
    # deeper than sun_path's 108 bytes: the socket is named through /proc/self/fd/N/
    d = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    assert len(str(d / B.BELL_NAME)) > 108
    return d


def test_rings_arrive_coalesced_and_an_oom_ring_is_never_held_back(run_dir):
    listener = B.BellListener(run_dir)
    bell = B.Bell(run_dir)
    try:
        st = os.stat(run_dir / B.BELL_NAME)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        now = [1000.0]
        bell.clock = lambda: now[0]
        bell.ring(oom=False)
        now[0] += B.RING_EVERY_S / 2
        bell.ring(oom=False)  # within RING_EVERY_S of the first: held back
        bell.ring(oom=True)
        assert listener.drain() == B.COMMITTED + B.OOM_STORED and listener.drain() == b""
        now[0] += B.RING_EVERY_S
        bell.ring(oom=False)
        assert listener.drain() == B.COMMITTED and bell.rung_total == 3
    finally:
        listener.close()
    assert not (run_dir / B.BELL_NAME).exists(), "the agent removes its socket"
    bell.ring(oom=True)  # nobody listening: a hint lost, nothing raised
    assert bell.rung_total == 3
    bell.close()


def test_a_live_listener_is_not_taken_over_a_dead_one_is(run_dir):
    first = B.BellListener(run_dir)
    with pytest.raises(OSError, match="another agent listens"):
        B.BellListener(run_dir)
    first.sock.close()  # killed -9: its socket file stays, nobody behind it
    second = B.BellListener(run_dir)
    second.close()
    (run_dir / B.BELL_NAME).write_bytes(b"")
    with pytest.raises(OSError, match="not a socket"):
        B.BellListener(run_dir)


def test_ingest_rings_after_the_commit_and_says_when_it_stored_an_oom_victim(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "RING_EVERY_S", 0.0)
    run_dir = tmp_path / "data" / "run"
    listener = B.BellListener(run_dir)
    ing, _, _ = make(tmp_path)
    ing.bell = B.Bell(run_dir)
    try:
        ing.feed_lines([line("load", 0)])
        assert listener.drain() == b"", "nothing rung before the commit"
        assert ing.flush() and listener.drain() == B.COMMITTED
        assert ing.flush() and listener.drain() == b"", "a commit that stored nothing does not ring"
        ing.feed_lines([line("load", 1), line("oom_victim", 2)])
        assert ing.flush() and listener.drain() == B.OOM_STORED
    finally:
        ing.bell.close()
        ing.close()
        listener.close()


class FakeAgent:
    def __init__(self):
        self.urgent_calls: list[bool] = []
        self.steps = 0

    def urgent(self, oom: bool = True) -> bool:
        self.urgent_calls.append(oom)
        return oom  # as if the victim the ring announced is in the database

    def step(self) -> None:
        self.steps += 1


def test_agent_waits_for_rings_and_steps_at_once_on_an_oom_ring(run_dir):
    listener = B.BellListener(run_dir)
    bell = B.Bell(run_dir)
    agent, stopping = FakeAgent(), []
    wake = SignalWakeup.open()
    try:
        bell.ring(oom=False)
        bell.ring(oom=True)
        # the rings are queued before the wait: both are seen in its first look
        agent_daemon.wait_for_rings(agent, listener, wake, time.monotonic() + 0.3, stopping, log=None)
        assert agent.urgent_calls == [True] and agent.steps == 1
        agent.urgent_calls.clear()
        t = threading.Timer(0.05, lambda: (stopping.append(1), os.write(wake._w, b"\0")))
        t.start()
        agent_daemon.wait_for_rings(agent, listener, wake, time.monotonic() + 600, stopping, log=None)
        t.join()
        assert agent.urgent_calls == [], "no ring, no look at the database"
    finally:
        wake.close()
        bell.close()
        listener.close()

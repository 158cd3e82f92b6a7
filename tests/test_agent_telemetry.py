"""The agent raises the pipeline's own losses as observations: drops that appear
after it started, and a running producer that falls silent, one observation per
incident (not one per producer), closed once the condition has cleared."""

from __future__ import annotations

import time

import pytest

from kernelsight import db
from kernelsight.agent.telemetry import TelemetryWatch
from kernelsight.agent.tracker import Tracker
from kernelsight.fifo import LineWriter


@pytest.fixture
def data(tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("KS_DATA_DIR", str(d))
    return d, str(tmp_path / "ks.fifo")


def test_new_drops_of_two_producers_make_one_loss_observation(data):
    d, fifo = data
    conn = db.connect(db.db_path(d))
    watch = TelemetryWatch(d)
    a = LineWriter(fifo, producer="ks-unit-a")  # nobody reads the FIFO: every line is a counted drop
    b = LineWriter(fifo, producer="ks-unit-b")
    try:
        a.emit({"type": "x"})  # before the agent's first look: history, not an incident
        now = time.time_ns()
        assert watch.findings(conn, now) == []
        for _ in range(3):
            a.emit({"type": "x"})
        b.emit({"type": "x"})
        (f,) = watch.findings(conn, now + 10**9)
        assert (f.label, f.category, f.severity, f.value) == ("Telemetry Loss", "pipeline", "medium", 4.0)
        assert "ks-unit-a: 3 dropped (no_reader 4 in all)" in f.summary and "ks-unit-b: 1 dropped" in f.summary
        assert [p["comm"] for p in f.processes] == ["ks-unit-a", "ks-unit-b"]
        # Nothing new: the loss is over, the tracker closes it after its clear time.
        tr = Tracker(clear_after_s=10, reopen_within_s=60)
        assert [c.kind for c in tr.update(1.0, [f])] == ["opened"]
        assert watch.findings(conn, now + 2 * 10**9) == []
        assert tr.update(5.0, []) == [] and [c.kind for c in tr.update(16.0, [])] == ["closed"]
    finally:
        a.close()
        b.close()
        conn.close()


def test_a_running_producer_that_stops_writing_is_silent(data):
    d, fifo = data
    conn = db.connect(db.db_path(d))
    watch = TelemetryWatch(d)
    w = LineWriter(fifo, producer="ks-unit")
    try:
        w.emit({"type": "x"})
        now = time.time_ns()
        watch.findings(conn, now)
        (f,) = watch.findings(conn, now + 60 * 10**9)
        assert f.label == "Silent Producer" and f.value == 1.0
        assert f.processes[0]["comm"] == "ks-unit" and "ks-unit (pid" in f.summary
    finally:
        w.close()
        conn.close()


def test_unreadable_accounting_costs_one_check_not_the_agent(data, monkeypatch):
    d, _ = data
    conn = db.connect(db.db_path(d))
    watch = TelemetryWatch(d)
    from kernelsight import accounting

    def broken(*_a, **_k):
        raise OSError("run dir unreadable")

    monkeypatch.setattr(accounting, "account", broken)
    try:
        assert watch.findings(conn, time.time_ns()) == [] and watch.errors == 1
    finally:
        conn.close()

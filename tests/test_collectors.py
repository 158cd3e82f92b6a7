"""Collector parsers on outputs recorded from the real tools on this machine."""

from __future__ import annotations

import pytest
from test_collectors_util import Validator, feed_bytes, fixture

from kernelsight.collectors import COLLECTORS
from kernelsight.collectors.biopattern import BiopatternParser
from kernelsight.collectors.execsnoop import ExecsnoopParser
from kernelsight.collectors.exitsnoop import ExitsnoopParser
from kernelsight.collectors.hist import Log2Hist, parse_hist_text
from kernelsight.collectors.irqs import IrqTimeParser, SoftIrqTimeParser
from kernelsight.collectors.oom import MarkVictimParser, OomkillParser
from kernelsight.collectors.reasons import classify
from kernelsight.collectors.runqlat import HistStreamParser
from kernelsight.collectors.tcplife import TcpLifeParser
from kernelsight.collectors.tcpstates import TcpStatesParser


@pytest.fixture(scope="module")
def validator():
    return Validator()


def _valid(validator, events):
    for e in events:
        validator.check(e)


# ---- histograms ---------------------------------------------------------

def test_log2_percentiles_interpolate_inside_bucket():
    h = Log2Hist("usecs")
    for low, high, c in [(0, 1, 0), (2, 3, 50), (4, 7, 40), (8, 15, 10)]:
        h.add_row(low, high, c)
    # rank 50 of 100 is the last sample of bucket [2,4): 2 + 2 * 50/50 = 4
    assert h.percentile(0.5) == pytest.approx(4.0)
    # rank 95: 90 below, 5 of 10 into [8,16): 8 + 8 * 0.5 = 12
    assert h.percentile(0.95) == pytest.approx(12.0)
    assert h.max_us() == 16
    assert Log2Hist("usecs").percentile(0.5) is None


def test_runqlat_fixture(validator):
    text = fixture("runqlat_1.txt")
    hists = parse_hist_text(text.decode())
    evs = feed_bytes(HistStreamParser(1), text)
    _valid(validator, evs)
    assert len(evs) == len(hists) >= 4
    for e, h in zip(evs, hists):
        assert e["samples"] == h.total == sum(e["counts"])
        assert len(e["counts"]) == len(e["bucket_low_us"])
        assert e["bucket_low_us"][:3] == [0, 2, 4]
        assert e["p50_us"] <= e["p95_us"] <= e["p99_us"] <= e["max_us"]
    # the stress-ng second: percentiles move
    assert max(e["samples"] for e in evs) > 10 * min(e["samples"] for e in evs)


def test_runqlat_milliseconds_are_converted_to_us(validator):
    evs = feed_bytes(HistStreamParser(1), fixture("runqlat_m_1.txt"))
    _valid(validator, evs)
    assert evs and all(e["bucket_low_us"][1] == 2000 for e in evs if len(e["bucket_low_us"]) > 1)


def test_runqlat_died_mid_histogram_drops_partial_interval():
    full = feed_bytes(HistStreamParser(1), fixture("runqlat_1.txt"))
    p = HistStreamParser(1)
    died = feed_bytes(p, fixture("runqlat_1_died.txt"))
    assert len(died) == 2  # the two complete histograms before the cut
    assert died == full[:2]
    assert any("middle of a histogram" in w for w in p.warnings)


def test_runqlat_idle_flushes_without_waiting_for_next_interval():
    p = HistStreamParser(1)
    lines = fixture("runqlat_1.txt").decode().split("\n")
    first_hist_end = next(i for i, ln in enumerate(lines[3:], 3) if not ln.strip())
    out = []
    for ln in lines[:first_hist_end]:
        out += p.feed(ln, 1)
    assert out == []
    out = p.idle(2)
    assert len(out) == 1 and out[0]["ts"] == 2


def test_hist_garbage_and_banners():
    p = HistStreamParser(1)
    assert p.feed("Tracing run queue latency... Hit Ctrl-C to end.", 1) == []
    assert p.feed("         2 -> 3          : 5        |***|", 1) == []  # row before header
    assert p.feed("complete nonsense", 1) == []
    assert p.skipped == 2 and len(p.warnings) == 2


# ---- snoops ---------------------------------------------------------------

def test_tcpstates_wide(validator):
    evs = feed_bytes(TcpStatesParser(1), fixture("tcpstates_w.txt"))
    _valid(validator, evs)
    assert len(evs) == 40
    fams = {e["family"] for e in evs}
    assert fams == {4, 6}
    # 3 IPv4 connections closed by the server first -> 3 entered TIME_WAIT; the
    # IPv6 server closed with 2990 unread bytes, which sends a reset instead.
    assert sum(e["time_wait"] for e in evs) == 3
    assert any(e["family"] == 6 and e["oldstate"] == "ESTABLISHED" and e["newstate"] == "CLOSE" for e in evs)
    assert all(e["oldstate"] in ("FIN_WAIT2", "CLOSING") for e in evs if e["time_wait"])
    assert sum(1 for e in evs if e["oldstate"] == "LISTEN" and e["newstate"] == "SYN_RECV") == 4


def test_tcpstates_narrow_header_and_died(validator):
    evs = feed_bytes(TcpStatesParser(1), fixture("tcpstates_narrow.txt"))
    _valid(validator, evs)
    assert len(evs) == 89 and {e["family"] for e in evs} == {4}
    p = TcpStatesParser(1)
    died = feed_bytes(p, fixture("tcpstates_w_died.txt"))
    assert len(died) == 19  # header + 19 rows; the half line is not parsed
    assert p.skipped == 0


def test_tcplife(validator):
    evs = feed_bytes(TcpLifeParser(1), fixture("tcplife_w.txt"))
    _valid(validator, evs)
    assert len(evs) == 8
    v6 = [e for e in evs if e["family"] == 6]
    assert len(v6) == 2 and max(e["tx_kb"] for e in v6) > 2.0  # 3000 bytes sent
    narrow = feed_bytes(TcpLifeParser(1), fixture("tcplife_narrow.txt"))
    _valid(validator, narrow)
    assert len(narrow) == 16


def test_execsnoop(validator):
    evs = feed_bytes(ExecsnoopParser(1), fixture("execsnoop_xq.txt"))
    _valid(validator, evs)
    echo = [e for e in evs if e["comm"] == "echo"]
    assert echo and echo[0]["args"] == '"/bin/echo" "arg with spaces" "two"'
    failed = [e for e in evs if "nonexistent" in e["args"]]
    assert len(failed) == 1 and failed[0]["ret"] == -2  # ENOENT
    assert len(evs) == len(fixture("execsnoop_xq.txt").splitlines()) - 1
    plain = feed_bytes(ExecsnoopParser(1), fixture("execsnoop_noquote.txt"))
    _valid(validator, plain)
    assert len(plain) == 59


def test_exitsnoop(validator):
    p = ExitsnoopParser(1)
    evs = feed_bytes(p, fixture("exitsnoop.txt"))
    _valid(validator, evs)
    assert p.skipped == 0 and len(evs) == 259
    killed = [e for e in evs if e["signal"] == 9]
    assert killed and killed[0]["exit_code"] is None and killed[0]["comm"] == "sh"
    assert any(e["exit_code"] == 3 for e in evs)
    assert any(e["signal"] == 15 for e in evs)
    line = "sleep            123     1       123     1.50    signal 11 (Segmentation fault), core dumped"
    (e,) = p.feed(line, 1)
    assert e["signal"] == 11 and e["core_dumped"] == 1


def test_biopattern(validator):
    evs = feed_bytes(BiopatternParser(1), fixture("biopattern_1.txt"))
    _valid(validator, evs)
    assert [e["random_pct"] >= 90 for e in evs] == [True, True, True, False, False]
    assert evs[3]["sequential_pct"] >= 90 and evs[3]["kbytes"] > 100_000


def test_irqs(validator):
    hard = feed_bytes(IrqTimeParser(1), fixture("hardirqs_1.txt"))
    soft = feed_bytes(SoftIrqTimeParser(1), fixture("softirqs_1.txt"))
    _valid(validator, hard + soft)
    assert {e["kind"] for e in hard} == {"hardirq"} and len(hard) == 12
    assert {"timer", "rcu", "block"} <= {e["name"] for e in soft}
    assert all(e["total_us"] >= 0 for e in hard + soft)


def test_oom_mark_victim_and_oomkill(validator):
    (e,) = feed_bytes(MarkVictimParser(1), fixture("oom_mark_victim_trace.txt"))
    validator.check(e)
    assert e["victim_pid"] == 5655 and e["victim_comm"] == "python3"
    assert e["anon_rss_kb"] == 32512 and e["file_rss_kb"] == 6608 and e["oom_score_adj"] == 0
    assert e["trigger_pid"] == 5655 and e["source"] == "tracefs:oom/mark_victim"
    assert isinstance(e["oom_kill_total"], int)
    (k,) = feed_bytes(OomkillParser(1), fixture("oomkill_synthetic.txt"))
    validator.check(k)
    assert k["pages"] == 8192 and k["victim_pid"] == 5655


def test_every_collector_event_type_is_in_the_schema(validator):
    import orjson
    from test_collectors_util import SCHEMA_DIR
    types = set(orjson.loads((SCHEMA_DIR / "collectors.json").read_bytes())["events"])
    # or defined by the tracer that replaces the collector, whose schema doc names its tool
    # as the fallback (exec: ks-exec in exec.json, execsnoop when ks-exec cannot run)
    tracer_doc = {}
    for path in SCHEMA_DIR.glob("*.json"):
        doc = orjson.loads(path.read_bytes())
        if doc.get("tracer"):
            tracer_doc.update({t: doc["doc"] for t in doc["events"]})
    for spec in [*COLLECTORS.values(), *(s.fallback for s in COLLECTORS.values() if s.fallback)]:
        for t in spec.event_types:
            assert t in types or spec.tool in tracer_doc.get(t, "").partition("Fallback")[2], (spec.name, t)


# ---- reasons ----------------------------------------------------------------

@pytest.mark.parametrize("stderr,want", [
    ("libbpf: failed to add legacy kprobe event for 'oom_kill_process+0x0': No such file or directory\n"
     "libbpf: prog 'oom_kill_process': failed to create kprobe 'oom_kill_process+0x0' perf event", "needs kprobes"),
    ("libbpf: prog 'blk_account_io_start': BPF program load failed: Operation not permitted\n"
     "failed to load BPF object: -1", "lockdown"),
    ("failed to resolve CO-RE relocation <byte_off> [336] struct cfs_rq.nr_running (0:1 @ offset 16)", "cfs_rq"),
    ("failed to set attach target for do_page_cache_ra: No such process", "do_page_cache_ra"),
    ("something odd\n", "exited with code 1: something odd"),
])
def test_reason_in_words(stderr, want, monkeypatch):
    monkeypatch.setattr("kernelsight.collectors.reasons.kernel_has_kprobes", lambda: False)
    reason, _permanent = classify(stderr, 1)
    assert want in reason

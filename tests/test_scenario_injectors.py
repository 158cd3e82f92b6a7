"""The scenario table and the generic command injector, without the pipeline
(no root, no eBPF): what `make scenarios` runs is checked by running it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kernelsight.scenarios.runner import (
    SCENARIOS,
    Result,
    faults_summary,
    names_injector,
)


def test_every_fault_has_two_tools_one_of_them_third_party():
    faults: dict[str, list] = {}
    for s in SCENARIOS:
        assert s.fault and s.tool, s.name
        faults.setdefault(s.fault, []).append(s)
    for fault, rows in faults.items():
        if fault == "packet loss":
            continue  # one scenario: iperf3 over a veth pair with nftables drops
        assert len({s.tool for s in rows}) >= 2, fault
        assert any(s.third_party for s in rows), fault
    summary = faults_summary([Result(s.name, list(s.expected), tool=s.tool, third_party=s.third_party, fault=s.fault)
                              for s in SCENARIOS])
    assert set(summary) == set(faults)


def test_the_injector_is_named_by_pid_or_by_a_specific_comm():
    pids, comms = {100, 101}, {"stress-ng", "python"}
    assert names_injector([{"pid": 101, "comm": "python"}], pids, comms)
    assert names_injector([{"comm": "stress-ng", "execs": 5}], pids, comms)
    assert not names_injector([{"comm": "python"}], pids, comms)  # generic: the pipeline is python too
    assert not names_injector([{"pid": 7, "comm": "kworker/0:1"}], pids, comms)


def test_cmd_prints_onset_and_stops_its_whole_process_group(tmp_path):
    pidfile = tmp_path / "pids"
    # A loop whose children outlive a plain kill of bash: the group must go.
    line = f"sleep 300 & echo $! >> {pidfile}; echo $$ >> {pidfile}; wait"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "kernelsight.scenarios.cmd", "--seconds", "1", "--", line],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ONSET "), r.stdout
    float(r.stdout.split()[1])
    assert time.monotonic() - t < 30
    pids = [int(x) for x in pidfile.read_text().split()]
    assert len(pids) == 2
    time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().split(")")[1].split()[0] == "Z", f"{pid} still runs"
        except ProcessLookupError:
            pass


def test_cmd_fills_fields_and_removes_its_scratch_dir(tmp_path):
    out = tmp_path / "fields"
    r = subprocess.run([sys.executable, "-m", "kernelsight.scenarios.cmd", "--seconds", "5", "--",
                        f"echo {{seconds}} {{cores}} {{dir}} {{missing}} {{{{1..2}}}} > {out}"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "KS_SCENARIO_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    seconds, cores, d, missing, one, two = out.read_text().split()
    assert (seconds, cores, one, two) == ("5", str(os.cpu_count()), "1", "2")
    assert d.startswith(str(tmp_path)) and not os.path.exists(d)
    assert not os.path.exists(missing)


def test_cmd_reports_a_missing_tool():
    r = subprocess.run([sys.executable, "-m", "kernelsight.scenarios.cmd", "--seconds", "1", "--",
                        "no-such-tool-ks --flag"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not installed" in r.stderr

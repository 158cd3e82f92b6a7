"""The service install: deploy/systemd/kernelsight.service, deploy/config.toml.example, and the
tracers run by an unprivileged user with only the unit's capabilities (make install; README)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from conftest import REPO, tool
from kernelsight.config import Config, from_dict

UNIT = REPO / "deploy" / "systemd" / "kernelsight.service"
EXAMPLE = REPO / "deploy" / "config.toml.example"
CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}


def unit() -> dict:
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    cp.optionxform = str
    cp.read_string(re.sub(r"^Environment=.*\n", "", UNIT.read_text(), flags=re.M))  # repeated keys
    return {s: dict(cp[s]) for s in cp.sections()}


def test_unit_runs_ks_run_with_the_service_paths_and_capabilities():
    svc = unit()["Service"]
    argv = svc["ExecStart"].split()
    assert argv[:2] == ["/opt/kernelsight/bin/ks", "run"]
    assert argv[argv.index("--fifo") + 1] == "/run/kernelsight/kernelsight.fifo"  # RuntimeDirectory
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/kernelsight"         # StateDirectory
    assert svc["RuntimeDirectory"] == "kernelsight" and svc["StateDirectory"] == "kernelsight"
    assert svc["Restart"] == "on-failure" and svc["User"] == "kernelsight"
    assert set(svc["AmbientCapabilities"].split()) == CAPS == set(svc["CapabilityBoundingSet"].split())
    assert "Environment=KS_CONFIG=/etc/kernelsight/config.toml" in UNIT.read_text()


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    ks = tool("ks")
    if ks is None:
        pytest.skip("ks is not installed")
    # the unit as `make install` writes it, with PREFIX where this checkout's ks is
    prefix = os.path.dirname(os.path.dirname(ks))
    (tmp_path / "kernelsight.service").write_text(UNIT.read_text().replace("/opt/kernelsight", prefix))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "kernelsight.service")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "kernelsight.service" not in r.stderr, r.stderr


def test_config_example_is_the_defaults_commented_out():
    text = EXAMPLE.read_text()
    assert tomllib.loads(text) == {s: {} for s in tomllib.loads(text)}  # nothing set: defaults apply
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    doc = tomllib.loads(uncommented)
    assert from_dict(doc, str(EXAMPLE)) == Config()
    import dataclasses

    for f in dataclasses.fields(Config):
        keys = {k.name for k in dataclasses.fields(getattr(Config(), f.name))}
        assert set(doc.get(f.name, {})) == keys, f"[{f.name}] in {EXAMPLE.name} is not the config's key set"


def _as_nobody(caps: str, argv: list[str]) -> subprocess.Popen:
    c = ",".join(f"+{x}" for x in caps.split(","))
    return subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", f"--inh-caps={c}",
                             f"--ambient-caps={c}", f"--bounding-set=-all,{c}", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.bpf
def test_a_tracer_as_nobody_loads_with_bpf_and_perfmon_and_names_a_missing_one():
    exe = tool("ks-oom-kill")
    if os.geteuid() != 0 or shutil.which("setpriv") is None or exe is None:
        pytest.skip("needs root, setpriv and ks-oom-kill")
    # CAP_DAC_READ_SEARCH too, as the unit grants: the build may sit below a private home
    p = _as_nobody("bpf,perfmon,dac_read_search", [exe, "--output", "-", "--interval", "1"])
    try:
        first = p.stderr.readline()
    finally:
        p.terminate()
        p.communicate(timeout=30)
    if "apply capabilities" in first:
        pytest.skip(f"this sandbox cannot grant the capabilities: {first.strip()}")
    assert "attached" in first, first
    p = _as_nobody("bpf,dac_read_search", [exe, "--output", "-", "--interval", "1"])
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 1 and "missing CAP_PERFMON" in err, err

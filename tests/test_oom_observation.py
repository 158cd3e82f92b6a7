"""An OOM kill inside a memory-limited cgroup, under the whole pipeline (`ks run`):
ks-oom-kill sees the victim, ks-agent opens one critical OOM Kill observation
naming the victim and the cgroup with its limit.  How soon after the kill is
printed (a figure, not a test threshold); between its steps the agent looks for
new victims when ks-ingest rings that a commit stored one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from conftest import query, tool, wait_for
from test_tracer_oom_kill import ALLOC, LIMIT, memcg  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def test_oom_kill_in_a_cgroup_opens_one_critical_observation(ks_env, memcg):  # noqa: F811
    if os.geteuid() != 0 or tool("ks-oom-kill") is None:
        pytest.skip("needs root and ks-oom-kill (make build)")
    env = ks_env
    with open(env.tmp / "ks-run.log", "wb") as log:
        run = subprocess.Popen([tool("ks"), "run", "--data-dir", str(env.data), "--fifo", env.fifo, "--interval", "1",
                                "--no-collectors"], env=env.env, stderr=log)
        try:
            def status():
                out = subprocess.run([tool("ks"), "status", "--json", "--data-dir", str(env.data)], env=env.env,
                                     capture_output=True, timeout=60)
                return orjson.loads(out.stdout)

            wait_for(lambda: {c["name"]: c["state"] for c in status()["children"]}.get("ks-oom-kill") == "running",
                     timeout=60, what="ks-oom-kill running")
            wait_for(lambda: (query(env.db, "SELECT COUNT(*) FROM features") or [(0,)])[0][0] >= 4, timeout=90,
                     what="the agent past its warm-up")
            victim = subprocess.Popen(["sh", "-c", f'echo $$ > {memcg}/cgroup.procs && exec "$0" -c "$1"',
                                       sys.executable, ALLOC])
            victim.wait(timeout=120)
            killed_at = time.time()
            assert victim.returncode == -signal.SIGKILL

            def opened():  # this test's kill (the host may have others)
                r = query(env.db, "SELECT id, severity, summary, processes FROM observations WHERE label='OOM Kill' "
                                  "AND summary LIKE ?", (f"%(pid {victim.pid})%",))
                return r[0] if r else None
            obs = wait_for(opened, timeout=60, interval=0.1, what="an OOM Kill observation")
            print(f"OOM Kill observation seen {time.time() - killed_at:.1f} s after the kill: {obs[2]}")
            _id, severity, summary, processes = obs
            hints = orjson.loads(query(env.db, "SELECT observation FROM observations WHERE id=?", (_id,))[0][0])[
                "reasoning_hints"]
            print("\n".join(hints))
            # The allocator fills its 64 MiB within about a second: the scraper may not have seen it grow.
            assert all(f"of its {LIMIT >> 20} MiB limit" in h for h in hints if h.startswith("Memory before"))
            assert severity == "critical"
            assert f"(pid {victim.pid})" in summary and memcg.name in summary
            assert f"limit {LIMIT >> 20} MiB" in summary
            procs = orjson.loads(processes)
            assert procs[0]["pid"] == victim.pid and procs[0]["cgroup"].endswith(memcg.name)
            assert len(query(env.db, "SELECT id FROM observations WHERE label='OOM Kill' AND summary LIKE ?",
                             (f"%{memcg.name}%",))) == 1
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=60) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()

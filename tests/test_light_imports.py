"""The long-running processes stay light: none imports pandas, pyarrow, matplotlib, structlog,
typer or pydantic.

Each test starts a fresh interpreter and imports what that process imports at
start: its entry module, and the modules its start-up functions import inside
their bodies (read from their source, so an import added there is seen).
Where it can without blocking, it then runs the process's steady-state work
once (an agent step with housekeeping and rollups, a replay through ks-ingest,
a scrape, a remote-write collection, an alerts poll) and looks again.  pandas
and pyarrow are for exports and reports (`ks features export`, `ks report`),
matplotlib for the report's plots: they are imported inside those functions.  typer (and the
pydantic it imports, ~9 MiB RSS) is for the commands people type: `ks run` execs the
supervisor's own entry, which starts each daemon by its argparse entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CAPTURE = REPO / "tests" / "fixtures" / "agent" / "memory_pressure.jsonl"
# structlog: asyncio, ssl and rich come with it; typer: pydantic
HEAVY = ("pandas", "pyarrow", "matplotlib", "structlog", "typer", "pydantic")

PRELUDE = textwrap.dedent('''
    import ast, importlib, inspect, json, os, sys, textwrap
    from pathlib import Path

    D = os.environ["KS_DATA_DIR"]

    def imports_of(obj):
        """Import every module obj (a module, class or function) imports, at any depth of its source."""
        mod = obj if inspect.ismodule(obj) else sys.modules[obj.__module__]
        package = mod.__package__ or ""
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \\
                    if node.level else node.module
                m = importlib.import_module(base)
                for alias in node.names:  # `from . import log`: a submodule
                    if not hasattr(m, alias.name) or inspect.ismodule(getattr(m, alias.name)):
                        try:
                            importlib.import_module(f"{base}.{alias.name}")
                        except ModuleNotFoundError:
                            pass

    def command(app, *path):
        """The function behind `ks <path...>` (resolved as click sees it, not run)."""
        import typer.main
        cmd = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]
        return inspect.unwrap(cmd.callback)

    def stop_in(seconds):
        import signal, threading
        threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM)).start()
''')

EPILOGUE = textwrap.dedent(f'''
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
    print("\\nHEAVY=" + json.dumps(heavy))
''')


def heavy_after(code: str, data_dir: Path, timeout: float = 300) -> list[str]:
    """Run code in a fresh interpreter; the heavy modules loaded at its end."""
    env = {**os.environ, "KS_DATA_DIR": str(data_dir), "KS_FIFO": str(data_dir / "no.fifo")}
    env.pop("KS_CONFIG", None)
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code) + EPILOGUE], capture_output=True,
                       text=True, env=env, cwd=data_dir, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return json.loads(line[len("HEAVY="):])


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """A data directory holding the recorded memory-pressure capture, stored by ks-ingest's own entry
    point (`python -m kernelsight.ingest --replay`), and the heavy modules that process had loaded."""
    d = tmp_path_factory.mktemp("light")
    heavy = heavy_after(f'''
        import runpy
        sys.argv = ["ks-ingest", "--replay", {str(CAPTURE)!r}, "--data-dir", D]
        try:
            runpy.run_module("kernelsight.ingest", run_name="__main__")
        except SystemExit as e:
            assert e.code in (0, None), e.code
        import kernelsight.ingest.cli, kernelsight.ingest.daemon, kernelsight.ingest.spool
        for m in (kernelsight.ingest.cli, kernelsight.ingest.daemon, kernelsight.ingest.spool):
            imports_of(m)  # the daemon's paths too (FIFO, spool), not only the replay's
    ''', d)
    return d, heavy


def test_ks_ingest(replayed):
    _, heavy = replayed
    assert heavy == []


def test_ks_run_supervisor(replayed):
    """`ks run` execs `python -m kernelsight.supervisor`: the process that stays up, and what its
    main() imports to build the children and supervise them."""
    d, _ = replayed
    assert heavy_after('''
        import kernelsight.supervisor as sv
        imports_of(sv.main)
        import kernelsight.children, kernelsight.collectors.probe, kernelsight.collectors.supervise
        for m in (kernelsight.children, sv, kernelsight.collectors.probe, kernelsight.collectors.supervise):
            imports_of(m)
        from kernelsight import log
        log.configure("ks-supervisor")
        assert "numpy" not in sys.modules, "the supervisor has no use for numpy"
    ''', d) == []


def test_ks_agent(replayed):
    """ks-agent (`python -m kernelsight.agent`, /metrics served from its thread): one step of the real
    entry, with housekeeping rolling the capture up."""
    d, _ = replayed
    assert heavy_after('''
        import runpy, sqlite3
        import kernelsight.agent.daemon as ad, kernelsight.exporter as ex
        imports_of(ad)
        imports_of(ex.MetricsThread)
        sys.argv = ["ks-agent", "--once", "--data-dir", D]
        try:
            runpy.run_module("kernelsight.agent", run_name="__main__")
        except SystemExit as e:
            assert e.code in (0, None), e.code
        from kernelsight import db
        conn = sqlite3.connect(db.db_path(Path(D)))
        assert conn.execute("SELECT COUNT(*) FROM memory_metrics_1m").fetchone()[0] > 0, "no rollups"
        assert "numpy.ma" not in sys.modules, "np.unique's plain form imports numpy.ma: nputil.sorted_unique"
    ''', d) == []


def test_ks_exporter(replayed):
    d, _ = replayed
    assert heavy_after('''
        import contextlib, io
        import kernelsight.exporter as ex
        imports_of(ex)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert ex.main(["--once", "--data-dir", D]) == 0  # a scrape
        assert "kernelsight_" in out.getvalue()
        from kernelsight import log
        log.configure("ks-exporter")
        assert "numpy" not in sys.modules, "the exporter reads the catalog for names and units only"
    ''', d) == []


def test_ks_alerts(replayed):
    d, _ = replayed
    (d / "alerts.toml").write_text('[alerts]\nwebhook_url = "http://127.0.0.1:9/hook"\n')
    assert heavy_after('''
        import kernelsight.alerts as al
        imports_of(al)
        stop_in(1.5)
        assert al.main(["--data-dir", D, "--config", str(Path(D) / "alerts.toml")]) == 0
    ''', d) == []


def test_ks_remote_write(replayed):
    d, _ = replayed
    assert heavy_after('''
        import kernelsight.remote_write as rw
        imports_of(rw)
        stop_in(1.5)
        assert rw.main(["--data-dir", D, "--url", "http://127.0.0.1:9/api/v1/write"]) == 0
        assert rw.read_status(Path(D))["collections"] >= 1
    ''', d) == []


def test_collectors_host(replayed):
    """`python -m kernelsight.collectors run-all`: the runner, the registry (every collector's parser)
    and what run-all imports; the tools themselves need not be there."""
    d, _ = replayed
    assert heavy_after('''
        import kernelsight.collectors.__main__ as entry
        import kernelsight.collectors.runner, kernelsight.collectors.registry, kernelsight.collectors.jsonlog
        imports_of(entry.cmd_run_all)
        imports_of(entry._log)
        for m in (kernelsight.collectors.runner, kernelsight.collectors.registry):
            imports_of(m)
    ''', d) == []


def test_exports_still_import_what_they_need():
    """pandas is imported where an export needs it: FeatureMatrix.frame()."""
    import numpy as np
    from kernelsight.features.engine import FeatureMatrix

    m = FeatureMatrix(np.array([1, 2], dtype=np.int64), 15.0, ["a"], np.array([[1.0], [np.nan]]), [[None, "x"]])
    f = m.frame()
    assert list(f.columns) == ["a"] and f.index.name == "ts" and len(f) == 2

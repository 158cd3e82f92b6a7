"""Every console script offers shell completion: --install-completion and --show-completion.

ks and ks-features are typer apps (typer's own completion); ks-ingest, ks-exporter and ks-alerts
are argparse and get the same two options from kernelsight.completion.  The C tracers and
ks-scraper use argp/getopt and have none.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib

import pytest

from conftest import REPO, tool

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
ARGPARSE = {"ks-exporter", "ks-alerts", "ks-remote-write", "ks-ingest"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_offers_completion(name):
    exe = tool(name)
    if exe is None:
        pytest.skip(f"{name} is not installed")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "--install-completion" in out.stdout and "--show-completion" in out.stdout


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - ARGPARSE))
def test_typer_completion_completes_an_option(name):
    exe = tool(name)
    if exe is None:
        pytest.skip(f"{name} is not installed")
    var = "_" + re.sub(r"\W", "_", name).upper() + "_COMPLETE"
    out = subprocess.run([exe], capture_output=True, text=True, check=False,
                         env={**os.environ, var: "complete_bash", "COMP_WORDS": f"{name} --hel", "COMP_CWORD": "1"})
    assert out.stdout.split() == ["--help"], out


@pytest.mark.parametrize("name", sorted(ARGPARSE))
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_argparse_completion_scripts(name, shell, tmp_path):
    exe = tool(name)
    if exe is None:
        pytest.skip(f"{name} is not installed")
    text = subprocess.run([exe, "--show-completion", shell], capture_output=True, text=True, check=True).stdout
    assert "data-dir" in text and "config" in text and name in text
    if shell == "bash":
        fn = "_" + re.sub(r"\W", "_", name) + "_completion"
        script = tmp_path / "c.bash"
        script.write_text(text)
        got = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=({name} --data-d); COMP_CWORD=1; {fn}; '
                              'echo "${COMPREPLY[@]}"'], capture_output=True, text=True, check=True).stdout
        assert got.split() == ["--data-dir"]
        home = tmp_path / "home"
        home.mkdir()
        out = subprocess.run([exe, "--install-completion", "bash"], capture_output=True, text=True, check=True,
                             env={**os.environ, "HOME": str(home)})
        assert "installed" in out.stdout
        assert (home / ".bash_completions" / f"{name}.bash").read_text() == text
        assert f".bash_completions/{name}.bash" in (home / ".bashrc").read_text()
    elif shutil.which(shell):
        assert subprocess.run([shell, "-n", "-c", text], capture_output=True, check=False).returncode == 0

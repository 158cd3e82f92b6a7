"""README tells the truth: generated references are current, the CI command is the README's."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_generated_references_are_current():
    out = subprocess.run([sys.executable, "docs/generate.py", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make test\b", readme, re.M)
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["make test"]


def test_every_console_script_is_in_the_readme():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    readme = (REPO / "README.md").read_text()
    for name in scripts:
        assert f"{name} " in readme, f"{name} has no example in README"

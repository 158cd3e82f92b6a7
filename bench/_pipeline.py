"""What the end-to-end benchmarks share: the whole pipeline (`ks run`) on a private data dir and
FIFO, polling its database, and stopping it (SIGINT, then the process group's SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def query(db: Path, sql: str, args=()) -> list[tuple]:
    """Rows, or [] while the database is busy or not there yet (a poll asks again)."""
    from kernelsight.db import query_once

    try:
        return query_once(db, sql, args)
    except Exception:
        return []


def wait(cond, timeout_s: float, step: float = 0.2):
    """cond()'s first truthy value within timeout_s, else None."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return None


class Pipeline:
    """`ks run --interval 1` in a temp dir named `prefix`; .tmp, .data, .fifo, .db.  Without the
    libbpf-tools collectors unless collectors=True; `config` (TOML) becomes its KS_CONFIG."""

    def __init__(self, prefix: str, *args: str, collectors: bool = False, config: str | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.data, self.fifo = self.tmp / "data", str(self.tmp / "fifo")
        self.db = self.data / "kernelsight.db"
        self.log = self.tmp / "ks-run.log"
        ks = Path(sys.executable).with_name("ks")
        env = {**os.environ, "KS_DATA_DIR": str(self.data), "KS_FIFO": self.fifo}
        if config is not None:
            (self.tmp / "config.toml").write_text(config)
            env["KS_CONFIG"] = str(self.tmp / "config.toml")
        with open(self.log, "wb") as log_f:
            self.sup = subprocess.Popen([str(ks), "run", "--data-dir", str(self.data), "--fifo", self.fifo,
                                         "--interval", "1", *([] if collectors else ["--no-collectors"]), *args],
                                        env=env, stdout=subprocess.DEVNULL, stderr=log_f, start_new_session=True)

    def wait_vectors(self, n: int = 4, timeout_s: float = 120) -> None:
        """Until the agent has stored n feature vectors (the whole pipeline runs)."""
        if not wait(lambda: (query(self.db, "SELECT COUNT(*) FROM features") or [(0,)])[0][0] >= n, timeout_s):
            raise RuntimeError(f"the pipeline did not start (see {self.log})")

    def stop(self) -> None:
        self.sup.send_signal(signal.SIGINT)
        try:
            self.sup.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.sup.pid, signal.SIGKILL)
            self.sup.wait()

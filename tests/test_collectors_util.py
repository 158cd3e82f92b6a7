"""Shared helpers for the collector tests (not a test module)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "collectors"
SCHEMA_DIR = REPO / "schema" / "events"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def feed_bytes(parser, data: bytes, now_ns: int = 1_800_000_000_000_000_000) -> list[dict]:
    """Feed recorded output the way the runner does: complete lines, then finish()."""
    *lines, rest = data.split(b"\n")
    out: list[dict] = []
    for raw in lines:
        out += parser.feed(raw.decode("utf-8", "replace"), now_ns)
    out += parser.finish(now_ns, clean=(rest == b""))
    return out


class Validator:
    """kernelsight.schema when it is there; else a strict check straight from the JSON files."""

    def __init__(self) -> None:
        try:
            from kernelsight.schema import load_schema
            self._schema = load_schema(SCHEMA_DIR)
        except ImportError:  # pragma: no cover - before the lead's module lands
            self._schema = None
            self._specs = {}
            for p in SCHEMA_DIR.glob("*.json"):
                for t, e in orjson.loads(p.read_bytes())["events"].items():
                    self._specs[t] = e

    def check(self, event: dict) -> str:
        line = orjson.dumps(event) + b"\n"
        assert len(line) <= 4096, f"line too long: {len(line)}"
        if self._schema is not None:
            etype, _row = self._schema.validate_line(line)
            return etype
        e = self._specs[event["type"]]
        want = set(e["fields"]) | {"type", "ts"}
        assert set(event) == want, f"{event['type']}: keys differ: {set(event) ^ want}"
        assert isinstance(event["ts"], int) and event["ts"] > 10**18
        types = {"int": int, "float": (int, float), "str": str, "int_array": list}
        for name, f in e["fields"].items():
            v = event[name]
            if v is None:
                assert e.get("nullable") and not f.get("required"), f"{name} may not be null"
            else:
                assert isinstance(v, types[f["type"]]), f"{name}: {v!r} is not {f['type']}"
        return event["type"]


class CollectorProc:
    """`python -m kernelsight.collectors run NAME --output -` with its events gathered by a thread."""

    def __init__(self, name: str, interval: int = 1, env: dict | None = None, cmd: list[str] | None = None):
        """cmd replaces ["run", name], e.g. ["run-all", "--only", "a,b"]."""
        self.name = name
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernelsight.collectors", *(cmd or ["run", name]), "--output", "-",
             "--interval", str(interval)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
        )
        self.events: list[dict] = []
        self.stderr = b""
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self._te = threading.Thread(target=self._read_err, daemon=True)
        self._te.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            ev = orjson.loads(line)
            with self._lock:
                self.events.append(ev)

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()

    def of_type(self, t: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e["type"] == t]

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if pred(list(self.events)):
                    return True
            if self.proc.poll() is not None:
                time.sleep(0.2)
                with self._lock:
                    return bool(pred(list(self.events)))
            time.sleep(0.05)
        return False

    def status(self) -> list[dict]:
        return self.of_type("collector_status")

    def wait_running(self, timeout: float = 15.0) -> None:
        ok = self.wait_for(lambda evs: any(e["type"] == "collector_status" and e["state"] in ("running", "unavailable")
                                           for e in evs), timeout)
        assert ok, f"{self.name}: no collector_status in {timeout}s; stderr: {self.stderr[-2000:]!r}"

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        rc = self.proc.wait(timeout)
        self._t.join(5)
        self._te.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()


def pid_gone(pid: int) -> bool:
    """True when pid no longer exists, not even as a zombie."""
    return not os.path.exists(f"/proc/{pid}/stat")


def wait_gone(pids, timeout: float = 5.0) -> list[int]:
    """The pids still there (alive or unreaped) after up to timeout seconds."""
    end = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < end:
        left = [p for p in left if not pid_gone(p)]
        time.sleep(0.05)
    return left


def children_of(pid: int) -> set[int]:
    """Direct children of pid (including zombies) from /proc/PID/task/*/children."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass
    return out


def stand_in_tool(directory: Path, name: str, body: str) -> str:
    """An executable Python script named like a libbpf-tool, for KS_TOOLS_DIR."""
    directory.mkdir(exist_ok=True)
    p = directory / name
    p.write_text(f"#!{sys.executable}\n{body}")
    p.chmod(0o755)
    return str(directory)

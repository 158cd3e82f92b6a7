"""ks-ingest's health beside the database: DATA_DIR/ingest_status.json.

The daemon replaces it atomically (a rename) on every stats interval and
whenever storing starts or stops failing, so `ks status` can say "disk full
since ..." even when the database itself cannot take a stats row.  A full
disk must not stop that update, so nothing is allocated once running: two
fixed-size slot files are rewritten in place by turns, and the status name is
moved to the one just written (a hard link renamed over it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

STATUS_NAME = "ingest_status.json"
STATUS_MODE = 0o600
# Every write has this size (JSON, then spaces and a newline): a slot rewritten
# in place never needs a new block.
STATUS_SIZE_BYTES = 4096


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_NAME


class StatusWriter:
    """Atomic, allocation-free replacement of the status file (see the module doc)."""

    def __init__(self, path: Path):
        self.path = path
        self.slots = [path.with_name(f".{path.name}.slot{i}") for i in (0, 1)]
        self.link = path.with_name(f".{path.name}.link")
        self.next_slot = 0
        for slot in self.slots:  # allocated now, so a disk that fills later cannot stop the updates
            try:
                fd = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STATUS_MODE)
                try:
                    os.posix_fallocate(fd, 0, STATUS_SIZE_BYTES)
                finally:
                    os.close(fd)
            except OSError:
                pass  # already full: write() says so when it is called
        try:  # never rewrite the slot the status name points at
            ino = os.stat(path).st_ino
            self.next_slot = next((1 - i for i, s in enumerate(self.slots) if os.stat(s).st_ino == ino), 0)
        except OSError:
            pass

    def write(self, status: dict) -> None:
        """Raises OSError (no space for a first write, say)."""
        data = _encode(status)
        slot = self.slots[self.next_slot]
        fd = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STATUS_MODE)
        try:
            os.fchmod(fd, STATUS_MODE)  # O_CREAT's mode is masked by the umask and ignored for an old file
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, len(data) - len(view)):]
            if os.fstat(fd).st_size != len(data):
                os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        os.link(slot, self.link)
        os.replace(self.link, self.path)
        self.next_slot = 1 - self.next_slot


def _encode(status: dict) -> bytes:
    data = orjson.dumps(status)
    if len(data) >= STATUS_SIZE_BYTES:  # only a very long error text can do that
        data = orjson.dumps({**status, "last_error": str(status.get("last_error"))[:512]})
    return data.ljust(STATUS_SIZE_BYTES - 1) + b"\n"


def read_status(data_dir: Path) -> dict | None:
    """The last status ks-ingest wrote, with `alive` (is that pid still running)
    and `age_s`; None when there is none or it cannot be read."""
    try:
        st = orjson.loads(status_path(data_dir).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if type(st) is not dict:
        return None
    pid = st.get("pid")
    alive = False
    if type(pid) is int and pid > 0:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            pass
        except PermissionError:  # it exists, run by another user than the reader
            alive = True
    st["alive"] = alive
    if isinstance(st.get("updated_at"), (int, float)):
        st["age_s"] = round(time.time() - st["updated_at"], 1)
    return st


def describe(st: dict) -> str:
    """One line for `ks status`: 'storing', or why not and since when."""

    def since(key: str) -> str:
        v = st.get(key)
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v)) if isinstance(v, (int, float)) else "?"

    if not st.get("alive", True):
        return f"ks-ingest not running (last status {since('updated_at')})"
    if st.get("disk_full"):
        head = f"disk full since {since('disk_full_since')}"
    elif st.get("failing_since") is not None:
        head = f"cannot store since {since('failing_since')}: {st.get('last_error')}"
    else:
        return f"storing; {st.get('pending_rows', 0)} rows pending"
    tail = f"{st.get('pending_rows', 0)} rows pending, {st.get('retries_total', 0)} retries"
    if st.get("reading_paused"):
        tail += "; FIFO reading paused (pending memory full), producers count drops"
    return f"{head}; {tail}"

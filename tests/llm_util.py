"""What the LLM tests share: a loopback JSON server for the providers' stand-ins, and a private
copy of the replayed incident per test (explain writes the narrative into it)."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kernelsight import db


def send_json(h: BaseHTTPRequestHandler, code: int, obj: dict, content_type: str = "application/json") -> None:
    raw = json.dumps(obj).encode()
    try:
        h.send_response(code)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout tests)
        pass


class Loopback:
    """A threaded HTTP server on 127.0.0.1 at an ephemeral port, serving `handler`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def private_copy(incident: Path, tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    src, dst = sqlite3.connect(db.db_path(incident)), sqlite3.connect(db.db_path(d))
    src.backup(dst)
    src.close()
    dst.close()
    return d


def mem_obs_id(d: Path) -> int:
    conn = db.connect_readonly(db.db_path(d))
    i = conn.execute("SELECT id FROM observations WHERE rule='memory_pressure'").fetchone()[0]
    conn.close()
    return i

"""A small JSON-lines logger for the collector runner, compatible with kernelsight.log.

kernelsight.log configures structlog, whose import pulls in rich and asyncio:
about 15 MB of RSS in a process that otherwise needs about 15 MB.  The runner
only needs bind() and info/warning/error, so it uses this instead.  The lines
have the same shape as structlog's JSONRenderer output there: the bound keys,
"event", the call's keys, "level" and an ISO UTC "timestamp"; one write() per
line, to stderr (stdout belongs to data).  KS_LOG_LEVEL filters as it does there.
"""

from __future__ import annotations

import os
import time

import orjson

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _timestamp() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class JsonLog:
    def __init__(self, fd: int = 2, level: str | None = None, **bound) -> None:
        self.fd = fd
        name = (level or os.environ.get("KS_LOG_LEVEL", "info")).lower()
        self.min_level = LEVELS.get(name, 20)
        self.bound = bound

    def bind(self, **kw) -> JsonLog:
        new = JsonLog.__new__(JsonLog)
        new.fd = self.fd
        new.min_level = self.min_level
        new.bound = {**self.bound, **kw}
        return new

    def _log(self, level: str, event: str, kw: dict) -> None:
        if LEVELS[level] < self.min_level:
            return
        rec = {**self.bound, "event": event, **kw, "level": level, "timestamp": _timestamp()}
        try:
            os.write(self.fd, orjson.dumps(rec, default=str) + b"\n")
        except OSError:
            pass  # a log that cannot be written must not stop the collectors

    def debug(self, event: str, **kw) -> None:
        self._log("debug", event, kw)

    def info(self, event: str, **kw) -> None:
        self._log("info", event, kw)

    def warning(self, event: str, **kw) -> None:
        self._log("warning", event, kw)

    warn = warning

    def error(self, event: str, **kw) -> None:
        self._log("error", event, kw)

    def exception(self, event: str, **kw) -> None:
        import traceback

        self._log("error", event, {**kw, "exception": traceback.format_exc()})


def get_logger(component: str) -> JsonLog:
    return JsonLog(component=component, pid=os.getpid())

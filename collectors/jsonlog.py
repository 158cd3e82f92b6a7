"""The collectors' logger: kernelsight.log's JSON-lines logger (see there for why it is not structlog)."""

from __future__ import annotations

from kernelsight.log import JsonLog, get_logger

__all__ = ["JsonLog", "get_logger"]

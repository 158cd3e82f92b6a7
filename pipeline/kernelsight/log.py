"""structlog set-up shared by every Python process: JSON lines to stderr or a file.

stdout belongs to data (producers write event lines there), so logs never go to it.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(component: str, level: str | None = None, log_file: str | None = None) -> structlog.BoundLogger:
    level_name = (level or os.environ.get("KS_LOG_LEVEL", "info")).upper()
    stream = open(log_file, "a", buffering=1) if log_file else sys.stderr  # noqa: SIM115 - lives as long as the process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(component=component, pid=os.getpid())

"""ks-ingest: validate, route and store event lines."""

from .daemon import INGEST_BUSY_TIMEOUT_MS, Daemon, Ingestor, LineSplitter, make_ingestor, replay
from .status import describe as describe_status
from .status import read_status

__all__ = ["INGEST_BUSY_TIMEOUT_MS", "Daemon", "Ingestor", "LineSplitter", "describe_status", "make_ingestor",
           "read_status", "replay"]

"""ks-ingest: validate, route and store event lines."""

from .daemon import Daemon, Ingestor, LineSplitter, make_ingestor, replay

__all__ = ["Daemon", "Ingestor", "LineSplitter", "make_ingestor", "replay"]

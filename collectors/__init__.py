"""libbpf-tools collectors: each runs one tool as a child and turns its text into events.

Public API for the supervisor:
  COLLECTORS            name -> CollectorSpec
  probe_all(timeout_s)  [{name, tool, available, reason, attach}], cached under $KS_DATA_DIR
Run one: python -m kernelsight.collectors run NAME [--output PATH] [--interval S]
"""

from __future__ import annotations

from .base import CollectorSpec
from .probe import probe_all
from .registry import COLLECTORS, EXTRA_TOOLS

__all__ = ["COLLECTORS", "EXTRA_TOOLS", "CollectorSpec", "probe_all"]

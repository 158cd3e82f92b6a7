"""libbpf-tools collectors: each runs one tool as a child and turns its text into events.

Public API for the supervisor:
  COLLECTORS                          name -> CollectorSpec
  probe_all(timeout_s)                [{name, tool, available, reason, attach}], cached under $KS_DATA_DIR
  supervisor_specs(fifo, interval_s)  [{name, argv, available, reason, details}]: one entry for the
                                      single process hosting every available collector, one per
                                      unavailable collector (never started; listed with its reason)
Run all in one process: python -m kernelsight.collectors run-all [--only a,b] [--output PATH] [--interval S]
Run one:                python -m kernelsight.collectors run NAME [--output PATH] [--interval S]

Names are imported lazily so that the runner process loads only what it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["COLLECTORS", "EXTRA_TOOLS", "CollectorSpec", "probe_all", "supervisor_specs"]

_LAZY = {
    "COLLECTORS": ".registry",
    "EXTRA_TOOLS": ".registry",
    "CollectorSpec": ".base",
    "probe_all": ".probe",
    "supervisor_specs": ".supervise",
}

if TYPE_CHECKING:  # pragma: no cover
    from .base import CollectorSpec
    from .probe import probe_all
    from .registry import COLLECTORS, EXTRA_TOOLS
    from .supervise import supervisor_specs


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""KernelSight feature engine: catalog, vectorised computation, baselines, z-scores, exports.

Public API (for the agent and tools):

    from kernelsight.features import compute_vector, compute_range, load_baseline, zscores
    v = compute_vector(conn, end_ns)                   # FeatureVector over FEATURE_WINDOW_S (15 s)
    z = zscores(v, load_baseline(conn))                # name -> {"z", "robust_z", "reason"}

The names are resolved on first use (PEP 562), so importing a submodule (the
catalog, as ks-exporter and the `ks` CLI do) does not import the engine and
the baselines with it.
"""

from __future__ import annotations

import importlib

_FROM = {
    "baseline": ("Baseline", "learn_baseline", "load_baseline", "zscores"),
    "catalog": ("BY_NAME", "FEATURE_STEP_S", "FEATURE_WINDOW_S", "FEATURES", "GROUPS", "NAMES", "Feature"),
    "engine": ("FeatureMatrix", "FeatureVector", "compute_range", "compute_vector"),
}
_MODULE_OF = {name: mod for mod, names in _FROM.items() for name in names}

__all__ = [
    "BY_NAME", "FEATURES", "FEATURE_STEP_S", "FEATURE_WINDOW_S", "GROUPS", "NAMES", "Baseline", "Feature",
    "FeatureMatrix", "FeatureVector", "compute_range", "compute_vector", "learn_baseline", "load_baseline", "zscores",
]


def __getattr__(name: str):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

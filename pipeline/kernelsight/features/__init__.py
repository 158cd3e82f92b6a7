"""KernelSight feature engine: catalog, vectorised computation, baselines, z-scores, exports.

Public API (for the agent and tools):

    from kernelsight.features import compute_vector, compute_range, load_baseline, zscores
    v = compute_vector(conn, end_ns)                   # FeatureVector over FEATURE_WINDOW_S (15 s)
    z = zscores(v, load_baseline(conn))                # name -> {"z", "robust_z", "reason"}
"""

from .baseline import Baseline, learn_baseline, load_baseline, zscores
from .catalog import (
    BY_NAME,
    FEATURE_STEP_S,
    FEATURE_WINDOW_S,
    FEATURES,
    GROUPS,
    NAMES,
    Feature,
)
from .engine import FeatureMatrix, FeatureVector, compute_range, compute_vector

__all__ = [
    "BY_NAME", "FEATURES", "FEATURE_STEP_S", "FEATURE_WINDOW_S", "GROUPS", "NAMES", "Baseline", "Feature",
    "FeatureMatrix", "FeatureVector", "compute_range", "compute_vector", "learn_baseline", "load_baseline", "zscores",
]

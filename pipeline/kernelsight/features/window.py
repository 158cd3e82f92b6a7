"""The one feature window and step (no imports: `ks run` and the CLIs read them without numpy).

ks-agent computes a vector every step over this window, stores it in the `features` table and
evaluates its rules on it; ks-features compute/backfill/export/baseline learn default to the same,
so a stored vector, a baseline statistic and a rule threshold describe the same span.
features.catalog re-exports both.
"""

FEATURE_WINDOW_S = 15.0  # short, so an onset shows within seconds; rules.toml thresholds are tuned to it
FEATURE_STEP_S = 5.0  # one vector per agent evaluation

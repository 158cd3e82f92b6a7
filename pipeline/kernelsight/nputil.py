"""numpy helpers shared by the always-on processes."""

from __future__ import annotations

import numpy as np


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique(a) for an array without NaN.  np.unique's plain form asks np.ma whether the array
    is masked, which imports numpy.ma (~1.1 MiB of a process that stays up for months, measured)
    on the first call."""
    s = np.sort(np.asarray(a).ravel())
    if len(s) < 2:
        return s
    return s[np.concatenate(([True], s[1:] != s[:-1]))]

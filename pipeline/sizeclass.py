"""Size classes of the method (method.md): the one place their thresholds live."""
from __future__ import annotations

import numpy as np

MIN_SIZE_MM = 0.5
MAX_SIZE_MM = 20.0
DIMINUTIVE_MAX_MM = 5.0   # <= 5 mm
LARGE_MIN_MM = 10.0       # >= 10 mm

TRICLASS_NAMES = ("diminutive", "small", "large")
BINARY_NAMES = ("<10mm", ">=10mm")


def clip_size(size_mm):
    return np.clip(size_mm, MIN_SIZE_MM, MAX_SIZE_MM)


def triclass_index(size_mm, diminutive_max_mm: float = DIMINUTIVE_MAX_MM):
    """0 diminutive (<= 5), 1 small (5 < s < 10), 2 large (>= 10); works on scalars and arrays.

    `diminutive_max_mm`: a decision threshold for predictions other than the 5 mm of the
    definition (the reference protocol calls predictions <= 4.75 mm diminutive).
    """
    s = np.asarray(size_mm, dtype=np.float64)
    out = np.where(s <= diminutive_max_mm, 0, np.where(s >= LARGE_MIN_MM, 2, 1))
    return int(out) if out.ndim == 0 else out


def binary_index(size_mm):
    """0 below 10 mm, 1 at 10 mm and above."""
    s = np.asarray(size_mm, dtype=np.float64)
    out = (s >= LARGE_MIN_MM).astype(np.int64)
    return int(out) if out.ndim == 0 else out


def triclass_name(size_mm: float) -> str:
    return TRICLASS_NAMES[triclass_index(size_mm)]

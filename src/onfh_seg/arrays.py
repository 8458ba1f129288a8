"""Small array helpers shared by the image checks (numpy only)."""

from __future__ import annotations

import numpy as np


def every_nth(a: np.ndarray, step: int) -> np.ndarray:
    """``a.ravel()[::step]``: every ``step``-th element in C order, without first copying the whole array into C
    order when it is stored otherwise (a NIfTI image is Fortran-ordered: that copy cost more than the sample)."""
    a = np.asarray(a)
    if step <= 1 or a.ndim <= 1 or a.flags.c_contiguous:
        return a.ravel()[::step]
    return a[np.unravel_index(np.arange(0, a.size, step), a.shape)]

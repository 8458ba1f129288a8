"""Small statistics shared by tracking tables and the report: Spearman rank correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def spearman(x: Sequence[float | None], y: Sequence[float | None], min_n: int = 3) -> dict:
    """Spearman rank correlation over pairs where both values are finite.

    Returns ``{"n", "rho", "p_value", "note"}``; rho and p are the string
    "n/a" when n < ``min_n`` or when either variable is constant.
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    if n < min_n:
        return {"n": n, "rho": "n/a", "p_value": "n/a", "note": f"n < {min_n}"}
    xa, ya = np.array(pairs).T
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"n": n, "rho": "n/a", "p_value": "n/a", "note": "constant values"}
    # function-level import: scipy.stats is slow to import; kept off the onfh-infer/onfh-track start path (api)
    from scipy import stats

    res = stats.spearmanr(xa, ya)
    return {"n": n, "rho": round(float(res.statistic), 4), "p_value": round(float(res.pvalue), 4), "note": ""}

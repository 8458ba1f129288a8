"""Deterministic intensity preprocessing shared by training and inference (numpy only, no torch).

Model space is always an RAS-aligned grid (canonical orientation) at the
model's isotropic spacing, so axial, coronal and sagittal scans, and any array
axis order or flip, reach the network the same way.

    normalise -> (coarse) whole-scan grid at 4 mm   -> locate femoral heads
              -> (fine)   crop grid around a head   -> segment at ~1 mm

The grids and the resampler are in ``onfh_seg.geometry`` (``covering_grid``,
``crop_grid``, ``resample``, ``resample_labels``, ``resample_probs``).
"""

from __future__ import annotations

import numpy as np

NORM_PERCENTILE = 99.0
NORM_CLIP = (0.0, 2.0)


def normalise(data: np.ndarray) -> np.ndarray:
    """Robust intensity scaling: divide by the 99th percentile of non-zero voxels, clip to [0, 2].

    Scanner units vary by orders of magnitude between scans; the 99th percentile
    lands in fat / fatty marrow (the brightest T1 tissues), so tissue contrast
    maps to a stable range. Non-finite values become 0.
    """
    x = np.nan_to_num(np.asarray(data, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    nz = x[x > 0]
    if nz.size < 100:
        raise ValueError("image has almost no positive voxels; cannot normalise")
    scale = float(np.percentile(nz, NORM_PERCENTILE, overwrite_input=True))  # nz is a copy
    if scale <= 0:
        raise ValueError("image intensity scale is zero")
    np.divide(x, np.float32(scale), out=x)
    return np.clip(x, *NORM_CLIP, out=x)

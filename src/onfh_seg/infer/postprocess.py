"""Post-processing of a predicted label map: speck removal.

Works on numpy arrays on the image grid plus its 4x4 affine. Finding heads
and hips lives in ``onfh_seg.hips``, grid geometry in ``onfh_seg.geometry``.
Connected components use face connectivity (scipy.ndimage.label default).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import voxel_volume_ml
from onfh_seg.labels import ACETABULUM, BACKGROUND, HEAD, HEAD_LABELS, LESION_LABELS


def _small_components(mask: np.ndarray, max_voxels: float) -> np.ndarray:
    """Voxels of ``mask`` in face-connected components with fewer than ``max_voxels`` voxels."""
    cc, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    small = counts < max_voxels
    small[0] = False
    return small[cc]


def clean_labels(labels: np.ndarray, affine: np.ndarray, min_speck_ml: float = 0.05) -> np.ndarray:
    """Remove implausible bits of a label map; returns a new uint8 array.

    1. Head components (labels 1-3 connected) smaller than ``min_speck_ml`` mL,
       or without any viable-head (1) voxel (a necrotic/band blob not connected
       to a head), become background.
    2. Inside the surviving heads, lesion (2+3) components smaller than
       ``min_speck_ml`` become viable head (1), so no holes are punched.
    3. Acetabulum (4) components smaller than ``min_speck_ml`` become background.

    Works on the bounding box of the labelled voxels (components never reach outside it).
    """
    result = np.asarray(labels).astype(np.uint8, copy=True)
    box = ndimage.find_objects((result > 0).astype(np.uint8))
    if not box:
        return result
    out = result[box[0]]  # a view: edits land in ``result``
    min_vox = min_speck_ml / voxel_volume_ml(affine)

    head = np.isin(out, HEAD_LABELS)
    cc, n = ndimage.label(head)
    if n > 0:
        counts = np.bincount(cc.ravel(), minlength=n + 1)
        viable = np.bincount(cc[out == HEAD], minlength=n + 1) > 0
        keep = (counts >= min_vox) & viable
        keep[0] = True
        out[~keep[cc]] = BACKGROUND

    out[_small_components(np.isin(out, LESION_LABELS), min_vox)] = HEAD
    out[_small_components(out == ACETABULUM, min_vox)] = BACKGROUND
    return result

"""Deterministic preprocessing shared by training and inference (numpy/scipy, no torch).

Model space is always an RAS-aligned grid (canonical orientation) at the
model's isotropic spacing, so axial, coronal and sagittal scans, and any array
axis order or flip, reach the network the same way.

    normalise -> (coarse) whole-scan grid at 4 mm   -> locate femoral heads
              -> (fine)   crop grid around a head   -> segment at ~1 mm
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

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
    scale = float(np.percentile(nz, NORM_PERCENTILE))
    if scale <= 0:
        raise ValueError("image intensity scale is zero")
    return np.clip(x / np.float32(scale), *NORM_CLIP).astype(np.float32)


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) from an affine."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def world_bounds(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world (RAS) bounding box of a grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)
    w = corners @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    return w.min(0), w.max(0)


def ras_grid(lo: np.ndarray, shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """Affine of an RAS-aligned grid with voxel (0,0,0) at ``lo``."""
    A = np.eye(4)
    A[:3, :3] *= spacing
    A[:3, 3] = lo
    return A


def covering_grid(shape: tuple[int, ...], affine: np.ndarray, spacing: float, multiple: int = 1) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS grid at ``spacing`` covering a scan; sizes rounded up to ``multiple`` (centred)."""
    lo, hi = world_bounds(shape, affine)
    n = np.ceil((hi - lo) / spacing).astype(int) + 1
    n = (np.ceil(n / multiple) * multiple).astype(int)
    centre = (lo + hi) / 2
    lo = centre - (n - 1) * spacing / 2
    return ras_grid(lo, tuple(int(v) for v in n), spacing), tuple(int(v) for v in n)


def crop_grid(centre_ras: np.ndarray, size_vox: int, spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cubic RAS grid of ``size_vox`` voxels centred on a world point."""
    lo = np.asarray(centre_ras, float) - (size_vox - 1) * spacing / 2
    return ras_grid(lo, (size_vox,) * 3, spacing), (size_vox,) * 3


def _grid_coords(src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...]) -> np.ndarray:
    """Source voxel coordinates (3, N) of every destination voxel centre."""
    M = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    ax = [np.arange(n, dtype=np.float32) for n in dst_shape]
    g = np.meshgrid(*ax, indexing="ij")
    M = M.astype(np.float32)
    return np.stack([(M[r, 0] * g[0] + M[r, 1] * g[1] + M[r, 2] * g[2] + M[r, 3]).ravel() for r in range(3)])


def resample(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...],
             order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample an image onto another grid (world-to-world, any orientation). Outside -> ``cval``."""
    coords = _grid_coords(src_affine, dst_affine, dst_shape)
    src = np.asarray(data, np.float32) if order > 0 else np.asarray(data)
    out = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=cval, prefilter=False)
    return out.reshape(dst_shape)


def resample_labels(labels: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...],
                    num_classes: int) -> np.ndarray:
    """Resample a label map by linear interpolation of each class's one-hot mask, then argmax."""
    coords = _grid_coords(src_affine, dst_affine, dst_shape)
    best = np.full(coords.shape[1], -1.0, np.float32)
    out = np.zeros(coords.shape[1], np.uint8)
    for c in range(num_classes):
        m = (labels == c).astype(np.float32)
        cval = 1.0 if c == 0 else 0.0
        p = ndimage.map_coordinates(m, coords, order=1, mode="constant", cval=cval, prefilter=False)
        better = p > best
        out[better] = c
        best[better] = p[better]
    return out.reshape(dst_shape)


def resample_probs(probs: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...]) -> np.ndarray:
    """Resample class probabilities (C, ...) linearly; outside the source -> background."""
    coords = _grid_coords(src_affine, dst_affine, dst_shape)
    out = np.empty((probs.shape[0], coords.shape[1]), np.float32)
    for c in range(probs.shape[0]):
        out[c] = ndimage.map_coordinates(probs[c].astype(np.float32), coords, order=1, mode="constant",
                                         cval=1.0 if c == 0 else 0.0, prefilter=False)
    return out.reshape((probs.shape[0],) + tuple(dst_shape))

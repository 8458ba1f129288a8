"""Sliding-window inference and crop probabilities for the cascade (numpy/scipy only, no torch).

Gaussian-blended sliding windows as nnU-Net and MONAI run them, the lesion decision rule, one head per
crop (nnU-Net-style clean-up), and a crop's class probabilities resampled onto the input grid.
``infer.engine`` runs the networks through these.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import resample

# Crop voxels whose background probability is at most this may hold a non-background class; elsewhere the
# input-grid labels are background whatever the other classes' values (see ``probs_on_grid``).
FOREGROUND_P0 = 0.6


def gaussian_importance(size: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian weight map for blending sliding-window patches, as MONAI's ``compute_importance_map``
    (mode gaussian): sigma = ``sigma_scale`` x size per axis, centred on the patch, floored at
    max(min, 1e-3). Only ratios matter for the blend; tests/test_sliding_window.py checks the match."""
    g = np.ones(size, np.float32)
    for ax, n in enumerate(size):
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2
        w = np.exp(-0.5 * (x / (n * sigma_scale)) ** 2)
        shape = [1] * len(size)
        shape[ax] = n
        g = g * w.reshape(shape)
    return np.maximum(g, max(float(g.min()), 1e-3)).astype(np.float32)


@lru_cache(maxsize=4)
def _importance(roi: tuple[int, ...]) -> np.ndarray:
    """``gaussian_importance(roi)``, computed once per window size (read-only)."""
    weight = gaussian_importance(roi)
    weight.flags.writeable = False
    return weight


def starts(n: int, roi: int, step: int) -> list[int]:
    if n <= roi:
        return [0]
    s = list(range(0, n - roi, step)) + [n - roi]
    return sorted(set(s))


def sliding_window(run, x: np.ndarray, roi: tuple[int, int, int], overlap: float = 0.5, divisor: int = 16) -> np.ndarray:
    """Gaussian-blended sliding-window inference of ``run`` (1,1,D,H,W)->(1,C,D,H,W) over ``x`` (D,H,W).

    A volume no larger than ``roi`` is processed in one pass (padded to ``divisor``).
    """
    shape = np.array(x.shape)
    roi = tuple(int(min(r, int(np.ceil(n / divisor) * divisor))) for r, n in zip(roi, shape))
    pad = [max(0, r - n) for r, n in zip(roi, shape)]
    xp = np.pad(x, [(0, p) for p in pad]) if any(pad) else x
    full = xp.shape
    steps = [max(1, int(r * (1 - overlap))) for r in roi]
    weight = _importance(roi)
    if full == roi:  # one window (the fine crop): the blend below reduces to this, bit for bit
        p = run(np.ascontiguousarray(xp[None, None], np.float32))[0]
        blended = np.multiply(p, weight)  # a new array: ``run``'s output may be kept (the engine reuses it)
        np.divide(blended, weight[None], out=blended)  # in place: the same quotients, one allocation fewer
        return blended[:, : shape[0], : shape[1], : shape[2]]
    acc = None
    norm = np.zeros(full, np.float32)
    for i in starts(full[0], roi[0], steps[0]):
        for j in starts(full[1], roi[1], steps[1]):
            for k in starts(full[2], roi[2], steps[2]):
                patch = xp[i:i + roi[0], j:j + roi[1], k:k + roi[2]][None, None]
                p = run(np.ascontiguousarray(patch, np.float32))[0]
                if acc is None:
                    acc = np.zeros((p.shape[0],) + full, np.float32)
                acc[:, i:i + roi[0], j:j + roi[1], k:k + roi[2]] += p * weight
                norm[i:i + roi[0], j:j + roi[1], k:k + roi[2]] += weight
    out = acc / norm[None]
    return out[:, : shape[0], : shape[1], : shape[2]]


def class_argmax(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(0)`` as uint8 for finite class probabilities (C, ...) with C <= 256: the first class of
    the largest value, as numpy's, in one pass per class (numpy's argmax over the class axis, the slow axis
    of the array, took 4-6x longer)."""
    best = np.array(probs[0], copy=True)
    lab = np.zeros(best.shape, np.uint8)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        lab[better] = c
        np.maximum(best, probs[c], out=best)
    return lab


def lesion_decision(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Labels from class probabilities (C, ...): argmax, then inside the head (labels 1-3) a voxel is
    lesion (2 or 3, whichever is likelier) iff p(2) + p(3) >= ``threshold``, else viable head (1).

    ``None`` keeps the plain argmax. The threshold is calibrated per model on the validation cohort
    (``model.json`` ``lesion_threshold``) so that lesion volumes are not biased.
    """
    lab = class_argmax(probs)
    if threshold is None:
        return lab
    head = (lab >= 1) & (lab <= 3)
    les = probs[2] + probs[3]
    lab[head] = np.where(les[head] >= threshold, np.where(probs[3][head] > probs[2][head], 3, 2), 1).astype(np.uint8)
    return lab


def keep_main_components(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net-style clean-up in crop space: one femoral head per crop, main acetabulum pieces.

    The largest connected component of labels 1-3 is the head (others, e.g. a
    bright greater trochanter, become background); label-4 components smaller
    than 10% of the largest are dropped. Returns (probs, labels) with removed
    voxels set to background.
    """
    lab = class_argmax(probs)
    drop = np.zeros(lab.shape, bool)
    cc, n = ndimage.label((lab >= 1) & (lab <= 3))
    if n > 1:
        sizes = np.bincount(cc.ravel())[1:]
        drop |= (cc > 0) & (cc != int(np.argmax(sizes)) + 1)
    cc, n = ndimage.label(lab == 4)
    if n > 1:
        sizes = np.bincount(cc.ravel())
        small = sizes < 0.1 * sizes[1:].max()
        small[0] = False
        drop |= small[cc]  # a lookup per voxel: the components np.isin(cc, their ids) marks
    if drop.any():
        probs = probs.copy()
        probs[:, drop] = 0.0
        probs[0, drop] = 1.0
        lab[drop] = 0
    return probs, lab


def foreground_box(p0: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                   dst_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Destination-grid box (lo, hi) of the voxels whose trilinear neighbours include a source voxel
    with background probability <= ``FOREGROUND_P0``; empty (hi == lo) when there is none."""
    fg = np.argwhere(p0 <= FOREGROUND_P0)
    if not len(fg):
        return np.zeros(3, int), np.zeros(3, int)
    lo_s, hi_s = fg.min(0) - 1.0, fg.max(0) + 1.0  # a voxel samples floor(s) and floor(s) + 1
    corners = np.array([[a, b, c] for a in (lo_s[0], hi_s[0]) for b in (lo_s[1], hi_s[1]) for c in (lo_s[2], hi_s[2])])
    to_dst = np.linalg.inv(np.asarray(dst_affine, np.float64)) @ np.asarray(src_affine, np.float64)
    d = corners @ to_dst[:3, :3].T + to_dst[:3, 3]
    n = np.array(dst_shape)
    lo = np.clip(np.floor(d.min(0)).astype(int) - 1, 0, n)
    hi = np.clip(np.ceil(d.max(0)).astype(int) + 2, 0, n)
    return lo, np.maximum(hi, lo)


def probs_on_grid(probs: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...],
                  threads: int = 1) -> np.ndarray:
    """Crop class probabilities (C, ...) resampled linearly onto the input sub-grid (outside the crop:
    background), for the labels: background everywhere, the other classes only in ``foreground_box``.

    Outside that box every interpolated background probability exceeds 0.5, so the argmax there is
    background whatever the other classes hold (they are left 0); inside it every value equals the
    whole-grid resampling exactly (``geometry.resample`` with a box).
    """
    out = np.zeros((probs.shape[0],) + tuple(int(s) for s in dst_shape), np.float32)
    out[0] = resample(probs[0], src_affine, dst_affine, dst_shape, 1, 1.0, threads=threads)
    lo, hi = foreground_box(probs[0], src_affine, dst_affine, dst_shape)
    if np.all(hi > lo):
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        for c in range(1, probs.shape[0]):
            out[c][sl] = resample(probs[c], src_affine, dst_affine, dst_shape, 1, 0.0, box=(lo, hi), threads=threads)
    return out


def fine_window(fine_meta: dict, window: str = "patch") -> tuple[int, int, int]:
    """Sliding-window size of the fine stage: ``patch`` = the training patch (as nnU-Net: instance
    normalisation then sees the statistics it was trained with), ``crop`` = the whole crop in one pass."""
    if window == "patch" and fine_meta.get("train_patch_vox"):
        return tuple(int(v) for v in fine_meta["train_patch_vox"])
    if window in ("patch", "crop"):
        return (int(fine_meta["crop_vox"]),) * 3
    raise ValueError(f"window must be 'patch' or 'crop', got {window!r}")

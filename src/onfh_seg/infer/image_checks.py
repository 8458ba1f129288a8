"""Checks of a loaded image array (NIfTI or DICOM): one 3-D volume, a plausible affine, finite voxels, MR not CT.

``validate_image`` returns the image as float32 (non-finite voxels set to 0, with a warning) or raises
``InputError`` with a one-line message.
"""

from __future__ import annotations

import numpy as np

from onfh_seg.arrays import every_nth
from onfh_seg.infer.input_files import InputError

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
CT_AIR_VALUE = -500.0  # same threshold as onfh_seg.quality.is_mr_like
CT_MAX_FRACTION = 0.05
CT_OFFSET = 1024.0  # CT stored without its rescale intercept: air near 0, water near 1024
CT_SOFT_TISSUE_HU = (-150.0, 150.0)  # fat, muscle, organs and water: most of a CT body lies here
CT_BONE_HU = 300.0


def squeeze_to_3d(data: np.ndarray) -> np.ndarray:
    """Drop trailing singleton dimensions beyond the third; one-line error for 2-D or 4-D images."""
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise InputError(
            f"image is {data.ndim}D (shape {'x'.join(map(str, shape))}); a single 3D volume is required"
        )
    if data.ndim < 3 or min(data.shape) <= 1:
        raise InputError(f"image is 2D (shape {'x'.join(map(str, shape))}); a 3D volume is required")
    return data


def check_affine(affine: np.ndarray) -> None:
    """Finite, invertible affine with voxel spacing in [0.1, 20] mm."""
    A = np.asarray(affine, np.float64)
    if A.shape != (4, 4) or not np.all(np.isfinite(A)):
        raise InputError("image affine is not finite")
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    det = float(np.linalg.det(A[:3, :3]))
    if np.any(spacing == 0.0) or abs(det) <= 1e-6 * float(np.prod(spacing)):
        raise InputError("image affine is not invertible (degenerate voxel axes)")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        s = " x ".join(f"{v:.4g}" for v in spacing)
        raise InputError(f"implausible voxel spacing {s} mm (expected {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm)")


def looks_like_ct(image: np.ndarray) -> bool:
    """More than 5 % of (sampled, finite) voxels at or below -500: a CT in Hounsfield units."""
    sample = every_nth(image, max(1, image.size // 1_000_000))
    sample = sample[np.isfinite(sample)]
    return sample.size > 0 and float(np.mean(sample <= CT_AIR_VALUE)) > CT_MAX_FRACTION


def looks_like_shifted_ct(image: np.ndarray) -> bool:
    """A CT stored without its -1024 intercept: no negatives, over 5 % air (<= 524), over 70 % of the body
    within soft tissue (874-1174) and some bone (over 1 % at >= 1324). A T1 MR body spreads far wider (fat is
    two to three times muscle)."""
    sample = every_nth(image, max(1, image.size // 1_000_000)).astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or float(sample.min()) < -100.0:
        return False
    air = sample <= CT_OFFSET + CT_AIR_VALUE
    body = sample[~air]
    if float(np.mean(air)) <= CT_MAX_FRACTION or body.size == 0:
        return False
    lo, hi = (CT_OFFSET + hu for hu in CT_SOFT_TISSUE_HU)
    soft = float(np.mean((body >= lo) & (body <= hi)))
    bone = float(np.mean(body >= CT_OFFSET + CT_BONE_HU))
    return soft >= 0.7 and bone >= 0.01


def validate_image(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Checked float32 3-D image (non-finite voxels set to 0) and warnings; ``InputError`` if unusable."""
    data = squeeze_to_3d(np.asarray(data))
    if data.size == 0:
        raise InputError("image is empty (no voxels)")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_) or np.iscomplexobj(data):
        raise InputError(f"unsupported voxel type {data.dtype}")
    check_affine(affine)
    image = np.asarray(data, dtype=np.float32)
    warnings: list[str] = []
    finite = np.isfinite(image)
    n_bad = int(image.size - np.count_nonzero(finite))
    if n_bad == image.size:
        raise InputError("image has no finite voxels (all NaN/inf)")
    if n_bad:
        image = np.where(finite, image, np.float32(0.0))
        warnings.append(f"{n_bad} non-finite voxels (NaN/inf, {100.0 * n_bad / image.size:.2g} %) set to 0")
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        raise InputError(f"image is empty or constant (all voxels = {lo:g})")
    # both CT checks on the one sample they draw (a sample of it is itself: under 2 million voxels)
    sample = every_nth(image, max(1, image.size // 1_000_000))
    if looks_like_ct(sample):
        raise InputError("image is not MR-like (looks like CT)")
    if looks_like_shifted_ct(sample):
        raise InputError("image is not MR-like (looks like CT stored without its -1024 offset: air near 0, "
                         "soft tissue near 1024)")
    return image, warnings

"""Rigid per-hip registration of a follow-up scan to the baseline scan (SimpleITK).

Conventions
-----------
* World coordinates are NIfTI RAS+ mm (the nibabel affine). SimpleITK works in
  DICOM LPS+ mm: ``sitk_image`` negates x and y of the origin and of the
  direction rows; ``ras_matrix_from_sitk`` converts the result back.
* A *transform* here is always a 4x4 RAS matrix that maps a point of the
  follow-up scan's world onto the baseline scan's world (the same convention as
  the generator's ``transform_to_baseline``). SimpleITK's registration result
  maps fixed (baseline) points onto moving (follow-up) points, i.e. the inverse.

Method (``register_hip``)
-------------------------
Both images are cropped to a box around their own head centre, the metric is
restricted to a ball of ``radius_factor`` x head radius around the baseline
head centre (fixed-image mask), and an Euler3DTransform (rotation about the
baseline head centre) is initialised with rotation identity and translation =
baseline head centre - follow-up head centre (world RAS). Mattes mutual
information, regular-step gradient descent with scales from physical shift,
multi-resolution (shrink factors / smoothing sigmas in mm). Deterministic: a
fixed sampling seed and a fixed thread count (``threads``) for every SimpleITK
filter in the process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from onfh_seg.config import defaults
from onfh_seg.config_schemas import RegistrationSettings
from onfh_seg.geometry import apply, ball_mask, crop_box, voxel_spacing
from onfh_seg.io.files import atomic_write_bytes

RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class RegistrationParams(RegistrationSettings):
    """Knobs of ``register_hip``: the fields of the schema (``config_schemas.RegistrationSettings``);
    their defaults live only in configs/track.yaml ``registration``."""

    @classmethod
    def from_dict(cls, d: dict | None = None) -> "RegistrationParams":
        """``d`` over the defaults of configs/track.yaml ``registration``."""
        merged = {**defaults("track")["registration"], **dict(d or {})}
        known = {k: merged[k] for k in cls.__dataclass_fields__}
        for k in ("shrink_factors", "smoothing_sigmas_mm"):
            known[k] = tuple(known[k])
        return cls(**known)


@dataclass
class RegistrationResult:
    """Outcome of one per-hip registration."""

    matrix: np.ndarray  # 4x4 RAS, follow-up world -> baseline world
    initial_matrix: np.ndarray  # 4x4 RAS of the head-centre initialisation
    metric: float
    iterations: int
    stop: str
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "matrix_ras": [[round(float(v), 8) for v in row] for row in self.matrix],
            "initial_matrix_ras": [[round(float(v), 8) for v in row] for row in self.initial_matrix],
            "metric_value": round(float(self.metric), 6),
            "iterations": int(self.iterations),
            "optimizer_stop": self.stop,
            "convention": "4x4 matrix mapping follow-up world RAS mm onto baseline world RAS mm",
            "params": self.params,
        }


# ---------------------------------------------------------------- geometry


def set_threads(n: int) -> None:
    """Fix the number of threads of every SimpleITK filter in this process (determinism)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(n)))


def sitk_image(arr: np.ndarray, affine: np.ndarray, dtype=np.float32) -> sitk.Image:
    """SimpleITK image with the geometry of a NIfTI array/affine (RAS -> LPS).

    ``arr[i, j, k]`` becomes SimpleITK index ``(i, j, k)``; spacing = column
    norms of the affine, direction = normalised columns with x and y rows
    negated, origin = affine translation with x and y negated.
    """
    A = RAS_LPS @ np.asarray(affine, np.float64)
    spacing = voxel_spacing(affine)
    direction = A[:3, :3] / spacing[None, :]
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(arr).astype(dtype, copy=False).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in A[:3, 3]])
    return img


def euler_matrix_lps(tfm: sitk.Transform) -> np.ndarray:
    """4x4 LPS matrix of a rigid/affine SimpleITK transform (maps fixed -> moving points)."""
    t = sitk.Euler3DTransform(tfm) if tfm.GetName() == "Euler3DTransform" else tfm
    R = np.asarray(t.GetMatrix(), np.float64).reshape(3, 3)
    c = np.asarray(t.GetCenter(), np.float64)
    tr = np.asarray(t.GetTranslation(), np.float64)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = c + tr - R @ c
    return M


def ras_matrix_from_sitk(tfm: sitk.Transform) -> np.ndarray:
    """Follow-up world -> baseline world (RAS 4x4) from a fixed=baseline registration result."""
    base_to_fu_ras = RAS_LPS @ euler_matrix_lps(tfm) @ RAS_LPS
    return np.linalg.inv(base_to_fu_ras)


# ---------------------------------------------------------------- registration


def initial_matrix(baseline_centre_ras: np.ndarray, followup_centre_ras: np.ndarray) -> np.ndarray:
    """Head-centre initialisation: identity rotation, translation = baseline - follow-up centre."""
    M = np.eye(4)
    M[:3, 3] = np.asarray(baseline_centre_ras, np.float64) - np.asarray(followup_centre_ras, np.float64)
    return M


def register_hip(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    fixed_centre_ras: Sequence[float],
    moving: np.ndarray,
    moving_affine: np.ndarray,
    moving_centre_ras: Sequence[float],
    head_radius_mm: float,
    params: RegistrationParams | None = None,
) -> RegistrationResult:
    """Rigidly register one hip of a follow-up (moving) scan to the baseline (fixed).

    ``*_centre_ras`` are the segmented head centres (world RAS mm) of the same
    hip in each scan, ``head_radius_mm`` the baseline head radius. Returns the
    follow-up -> baseline RAS matrix. Raises ``RuntimeError`` if a crop around a
    head centre is empty or the optimiser fails.
    """
    p = params or RegistrationParams.from_dict()
    set_threads(p.threads)
    c0 = np.asarray(fixed_centre_ras, np.float64)
    c1 = np.asarray(moving_centre_ras, np.float64)
    radius = max(float(head_radius_mm), 10.0)
    half = p.radius_factor * radius + p.crop_margin_mm
    fcrop, faff = crop_box(fixed, fixed_affine, c0, half)
    mcrop, maff = crop_box(moving, moving_affine, c1, half + p.crop_margin_mm)
    if min(fcrop.shape) < 2 or min(mcrop.shape) < 2:
        raise RuntimeError("head region lies outside the scan grid")
    mask = ball_mask(fcrop.shape, faff, c0, p.radius_factor * radius)
    if mask.sum() < 100:
        raise RuntimeError("too few baseline voxels around the head for registration")

    f_img = sitk_image(fcrop, faff)
    m_img = sitk_image(mcrop, maff)
    f_mask = sitk_image(mask, faff, np.uint8)

    init = initial_matrix(c0, c1)
    tfm = sitk.Euler3DTransform()
    tfm.SetCenter([float(v) for v in (RAS_LPS[:3, :3] @ c0)])
    # fixed (baseline) -> moving (follow-up) in LPS: x + (c1 - c0)
    tfm.SetTranslation([float(v) for v in (RAS_LPS[:3, :3] @ (c1 - c0))])

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(max(1, int(p.threads)))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(p.histogram_bins))
    reg.SetMetricFixedMask(f_mask)
    reg.SetMetricUseFixedImageGradientFilter(False)  # gradients at the samples only (much cheaper)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(p.sampling_percentage), int(p.seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(p.learning_rate),
        minStep=float(p.min_step),
        numberOfIterations=int(p.iterations),
        relaxationFactor=float(p.relaxation),
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in p.shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in p.smoothing_sigmas_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tfm, inPlace=True)
    try:
        reg.Execute(f_img, m_img)
    except RuntimeError as exc:
        raise RuntimeError(f"registration failed: {str(exc).strip().splitlines()[-1]}") from None
    return RegistrationResult(
        matrix=ras_matrix_from_sitk(tfm),
        initial_matrix=init,
        metric=float(reg.GetMetricValue()),
        iterations=int(reg.GetOptimizerIteration()),
        stop=reg.GetOptimizerStopConditionDescription().strip().splitlines()[0][:200],
        params={k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()},
    )


def sitk_transform_from_ras(matrix: np.ndarray) -> sitk.AffineTransform:
    """SimpleITK transform (fixed=baseline -> moving=follow-up, LPS) from a follow-up -> baseline RAS matrix."""
    M = RAS_LPS @ np.linalg.inv(np.asarray(matrix, np.float64)) @ RAS_LPS
    t = sitk.AffineTransform(3)
    t.SetMatrix([float(v) for v in M[:3, :3].ravel()])
    t.SetTranslation([float(v) for v in M[:3, 3]])
    return t


def write_tfm(path: str | Path, matrix: np.ndarray) -> None:
    """Write an ITK .tfm (baseline LPS -> follow-up LPS, ITK's resampling convention) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tfm", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteTransform(sitk_transform_from_ras(matrix), tmp)
        data = Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)
    atomic_write_bytes(path, data)


# ---------------------------------------------------------------- error


def target_registration_error(estimated: np.ndarray, true: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """Distances (mm) between ``estimated`` and ``true`` transforms applied to follow-up points ``(n, 3)``."""
    pts = np.atleast_2d(np.asarray(points_ras, np.float64))
    return np.linalg.norm(apply(estimated, pts) - apply(true, pts), axis=-1)

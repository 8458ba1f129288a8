"""The anatomy gate in front of the measurements: what onfh-infer measures and writes for a scan.

``measure_gated`` runs ``infer.anatomy.check_anatomy`` on the label map, then
``measure.measure_scan`` and the QC flags (docs/CONTRACTS.md). It lives in
infer/ so that ``measure`` stays below infer (measure never imports infer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onfh_seg.hips import estimate_body_centre_x
from onfh_seg.infer.anatomy import AnatomyLimits, AnatomyResult, check_anatomy, midline_check
from onfh_seg.measure import measure_scan
from onfh_seg.quality import hip_flags, mark_trust, qc_flags, without_classes

MIDLINE_FOV_MM = 280.0  # the body's midline is estimated only on fields of view this wide in x (as the engine's)


@dataclass
class GatedMeasurement:
    """What ``measure_gated`` decided: the label map to write, hips, scan flags and the gate's record."""

    labels: np.ndarray
    hips: list[dict]
    flags: list[str]
    anatomy: dict[str, Any] = field(default_factory=dict)


def measure_gated(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    mean_confidence: float | None = None,
    reference: str = "acetabulum",
    head_ml_range: tuple[float, float] = (15.0, 120.0),
    min_confidence: float = 0.6,
    limits: AnatomyLimits | None = None,
    gate: bool = True,
) -> GatedMeasurement:
    """Anatomy gate, then per-hip measurements, per-hip and scan QC flags, and trust.

    A scan that fails the gate (``check_anatomy``: no head, or nothing that
    looks like a femoral head in a socket) gets its flag, no hips and an empty
    label map (nothing in the outputs claims a femoral head). ``gate=False``
    skips the image-based check (hips are still flagged and marked).
    """
    result = check_anatomy(labels, affine, limits) if gate else AnatomyResult(None, [], [])
    if gate and result.passed and sum(h.plausible for h in result.heads) == 1:  # a lone head: not on the midline
        result = midline_check(result, estimate_body_centre_x(image, affine, MIDLINE_FOV_MM), limits)
    if gate and not result.passed:
        flags = qc_flags(image, labels, affine, [], mean_confidence, head_ml_range, min_confidence, result.flag)
        return GatedMeasurement(np.zeros(np.shape(labels), np.uint8), [], flags, result.to_json())
    hips = measure_scan(image, labels, affine, reference=reference)
    own = hip_flags(hips, head_ml_range, result.implausible_centres(), result.partial_centres())
    hips = [{**(without_classes(h) if "partial_head" in f else h), "qc_flags": f} for h, f in zip(hips, own)]
    flags = qc_flags(image, labels, affine, hips, mean_confidence, head_ml_range, min_confidence)
    return GatedMeasurement(np.asarray(labels), mark_trust(hips, flags), flags, result.to_json() if gate else {})

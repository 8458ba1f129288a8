"""QC flags of a scan and its hips (docs/CONTRACTS.md): which flags exist, in contract order, which of
them untrust the numbers, and the rules that set them (MR-likeness, head volume, the anatomy gate's verdict).

numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onfh_seg.arrays import every_nth

QC_FLAGS = (
    "no_femoral_head_found",
    "not_hip_anatomy",
    "implausible_head_volume",
    "implausible_head_shape",
    "partial_head",
    "low_confidence",
    "not_mr_like",
    "sheared_geometry",
    "suspect_image_content",
    "fat_suppressed",
    "head_set_aside",
)
# Flags after which a scan's numbers are not to be trusted (kept out of the DICOM SR, marked in CSV/JSON/HTML).
# ``fat_suppressed``: the DICOM headers say fat suppression; the networks were not trained to measure lesions there
# (model card: most healthy heads of a fat-suppressed development cohort got a false lesion)
UNTRUSTED_FLAGS = ("not_hip_anatomy", "implausible_head_volume", "implausible_head_shape", "partial_head",
                   "low_confidence", "not_mr_like", "sheared_geometry", "suspect_image_content", "fat_suppressed")
# ``head_set_aside`` (infer.scan_steps.second_look) is a warning, not a verdict on the hips measured: the anatomy gate
# refused a structure found as a head and fewer than two hips are reported, so a head may be missing
HIP_FLAGS = ("implausible_head_volume", "implausible_head_shape", "partial_head")  # flags that belong to one hip


def is_mr_like(
    image: np.ndarray, ct_air_hu: float = -500.0, max_ct_fraction: float = 0.05, min_distinct: int = 16
) -> bool:
    """False for CT-like images (more than ``max_ct_fraction`` of voxels <= ``ct_air_hu``),
    images with non-finite values in more than 1 % of voxels, and images with
    fewer than ``min_distinct`` distinct values (constant, binary, label maps).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.size == 0:
        return False
    step = max(1, img.size // 1_000_000)
    sample = every_nth(img, step).astype(np.float64)
    finite = np.isfinite(sample)
    if finite.mean() < 0.99:
        return False
    sample = sample[finite]
    if np.mean(sample <= ct_air_hu) > max_ct_fraction:
        return False
    head = sample[:65536]  # enough distinct values there means enough in the whole sample
    return np.unique(head).size >= min_distinct or np.unique(sample).size >= min_distinct


def qc_flags(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    hips: Sequence[dict],
    mean_confidence: float | None = None,
    head_ml_range: tuple[float, float] = (15.0, 120.0),
    min_confidence: float = 0.6,
    anatomy_flag: str | None = None,
) -> list[str]:
    """QC flags of CONTRACTS.md, in their contract order.

    ``hips`` are ``measure_hip`` dicts (a hip's own ``qc_flags``, e.g.
    ``implausible_head_shape``, are carried up to the scan). ``anatomy_flag``
    is the failed anatomy gate's flag (``not_hip_anatomy`` or
    ``no_femoral_head_found``); without hips and without it the flag is
    ``no_femoral_head_found``. ``labels``/``affine`` keep one signature across stages.
    """
    found = set()
    if anatomy_flag is not None:
        found.add(anatomy_flag)
    elif not hips:
        found.add("no_femoral_head_found")
    lo, hi = head_ml_range
    if any(not (lo <= h["head_volume_ml"] <= hi) and "partial_head" not in (h.get("qc_flags") or []) for h in hips):
        found.add("implausible_head_volume")
    found.update(f for h in hips for f in (h.get("qc_flags") or []))
    if mean_confidence is not None and mean_confidence < min_confidence:
        found.add("low_confidence")
    if not is_mr_like(image):
        found.add("not_mr_like")
    return [f for f in QC_FLAGS if f in found] + sorted(found - set(QC_FLAGS))


def hip_flags(
    hips: Sequence[dict], head_ml_range: tuple[float, float], implausible_centres: Sequence[np.ndarray],
    partial_centres: Sequence[np.ndarray] = (),
) -> list[list[str]]:
    """Each hip's own QC flags: head volume outside ``head_ml_range`` (not for a partial head); an
    implausible head or a head cut by the edge of the field of view (``partial_head``; anatomy gate).

    A head from the gate (its component centroid) belongs to the hip whose head centre is nearest to it.
    """
    centres = [h.get("head_centre_ras_mm") for h in hips]

    def nearest(point: np.ndarray) -> int | None:
        dist = [np.inf if c is None else float(np.linalg.norm(np.asarray(c) - point)) for c in centres]
        return int(np.argmin(dist)) if dist and np.isfinite(min(dist)) else None

    partial = {nearest(p) for p in partial_centres} - {None}
    lo, hi = head_ml_range
    flags = [["partial_head"] if i in partial else ([] if lo <= h["head_volume_ml"] <= hi else ["implausible_head_volume"])
             for i, h in enumerate(hips)]
    for bad in implausible_centres:
        i = nearest(bad)
        if i is not None:
            flags[i].append("implausible_head_shape")
    return flags


def without_classes(hip: dict) -> dict:
    """A partial head's hip: volumes kept, but no share of the head and no extent or JIC class."""
    return {**hip, "percent_head_involved": None, "arco_extent": "not_assessed", "jic_type": "not_assessed"}


def with_scan_flags(flags: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``flags`` plus the scan flags ``extra`` (found while reading the image), in contract order."""
    found = set(flags) | set(extra)
    return [f for f in QC_FLAGS if f in found] + sorted(found - set(QC_FLAGS))


def mark_trust(hips: Sequence[dict], scan_flags: Sequence[str]) -> list[dict]:
    """Hips with ``trusted``: False when the hip has a flag of its own or the scan an untrusting one.

    Scan-level ``implausible_head_volume`` / ``implausible_head_shape`` are the
    union of the hips' own flags, so they do not untrust the other hip.
    """
    scan_wide = [f for f in scan_flags if f in UNTRUSTED_FLAGS and f not in HIP_FLAGS]
    return [{**h, "trusted": not (h.get("qc_flags") or scan_wide)} for h in hips]

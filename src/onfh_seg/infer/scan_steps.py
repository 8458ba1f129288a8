"""The per-scan steps of ``infer.pipeline.process_scan`` between reading and writing: the segmenter on the scan
(``segment_scan``), the anatomy gate and the measurements (``measure_scan``), and the second look when the gate
refused every head found or doubted one of two (``second_look``)."""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np

from onfh_seg.config_schemas import InferSettings
from onfh_seg.infer.gate import measure_gated
from onfh_seg.infer.inputs import LoadedScan
from onfh_seg.quality import mark_trust, with_scan_flags

NOT_HIP_ANATOMY = "not_hip_anatomy"  # onfh_seg.io.dicom_select.NOT_HIP_ANATOMY (not imported: pydicom only for DICOM)
IMPLAUSIBLE = "implausible_head_shape"
SET_ASIDE = "head_set_aside"  # onfh_seg.quality.QC_FLAGS: a refused structure left out, fewer than two hips reported
SAME_HEAD_MM = 30.0  # a found head centre and a gate head's component centroid this close are the same structure


def segment_scan(scan: LoadedScan, segmenter: Any, timings: dict[str, Any], meas: dict,
                 exclude: list[np.ndarray] | None = None) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """The segmenter on one loaded scan: (labels on the input grid, mean confidence, head centres found);
    engine timings and the head search go into ``timings`` and ``meas``. ``exclude``: centres the segmenter must
    not confirm as heads."""
    t = time.perf_counter()
    result = segmenter.segment(scan.image, scan.affine, exclude=exclude) if exclude else \
        segmenter.segment(scan.image, scan.affine)
    labels = np.asarray(result.labels)
    if labels.shape != scan.image.shape:
        raise RuntimeError(f"segmenter returned labels of shape {labels.shape} for an image of shape {scan.image.shape}")
    labels = labels.astype(np.uint8, copy=False)
    confidence = float(result.mean_confidence)
    timings["segment"] = time.perf_counter() - t
    timings["engine"] = dict(getattr(result, "timings", {}) or {})
    meas["head_search"] = dict(getattr(result, "search", {}) or {})  # heads the coarse stage missed (infer.search)
    return labels, confidence, [np.asarray(c, float) for c in (getattr(result, "head_centres_ras", None) or [])]


def _accepts_exclude(segmenter: Any) -> bool:
    """Whether the segmenter's ``segment`` takes ``exclude`` (the engine's does; test doubles may not)."""
    try:
        return "exclude" in inspect.signature(segmenter.segment).parameters
    except (TypeError, ValueError):
        return False


def exclusion_sets(found: list[np.ndarray]) -> list[list[np.ndarray]]:
    """What the second look excludes, in turn: with two refused heads each one alone (a real head paired with a
    false one, e.g. a bladder at an implausible distance, is not lost with it), then both; else all found."""
    if len(found) == 2:
        return [[found[1]], [found[0]], list(found)]
    return [list(found)]


def doubted_heads(found: list[np.ndarray], anatomy: dict | None) -> list[np.ndarray]:
    """The found head centres whose structure the gate passed the scan without (``failures`` in its record), when
    two were found: one convincing head kept with a second that is no head (``implausible_head_shape``)."""
    if len(found) != 2 or not anatomy or not anatomy.get("passed"):
        return []
    bad = [np.asarray(h["component_centre_ras_mm"], float) for h in anatomy.get("heads", []) if h.get("failures")]
    return [c for c in found if any(np.linalg.norm(c - b) < SAME_HEAD_MM for b in bad)][:1]


def _convincing(hips: list[dict]) -> int:
    """Hips without ``implausible_head_shape``."""
    return sum(IMPLAUSIBLE not in h.get("qc_flags", []) for h in hips)


def second_look(scan: LoadedScan, segmenter: Any, settings: InferSettings, limits: Any, meas: dict,
                timings: dict[str, Any], found: list[np.ndarray], first: tuple) -> tuple:
    """Look again with structures found excluded, so the head search goes on to the candidates behind them:
    - when the anatomy gate refused every head found (``not_hip_anatomy``; a bladder or bowel pair taken for heads
      hides the real ones), excluding ``exclusion_sets`` in turn: a look the gate accepts with two hips is kept at
      once, else the first look it accepts with one;
    - when it kept one of two heads and doubted the other (``doubted_heads``: e.g. a midline structure taken for
      the partner, which hides a real partner at the edge of the field of view), excluding the doubted one: the
      look is kept if it has more convincing hips.
    Else the first result stands. Either way the record says so (``head_search.second_look``). A look kept after a
    refusal that reports fewer than two hips is flagged ``head_set_aside`` (the refused structure may have been a
    head: the user looks). Returns (labels, hips, flags, confidence)."""
    refused = NOT_HIP_ANATOMY in first[2]
    doubted = [] if refused else doubted_heads(found, meas.get("anatomy"))
    if not (refused or doubted) or not found or not _accepts_exclude(segmenter):
        return first
    t = time.perf_counter()
    first_search, first_anatomy = meas.get("head_search", {}), meas.get("anatomy")
    best, n_looks = None, 0
    for exclude in exclusion_sets(found) if refused else [doubted]:
        n_looks += 1
        labels, confidence, _ = segment_scan(scan, segmenter, {}, meas, exclude=exclude)
        labels, hips, flags = measure_scan(scan, labels, confidence, settings, limits, meas)
        if NOT_HIP_ANATOMY in flags or not hips or (doubted and _convincing(hips) <= _convincing(first[1])):
            continue
        if best is None or len(hips) > len(best[1][1]):
            best = (exclude, (labels, hips, flags, confidence), meas.get("head_search", {}), meas.get("anatomy"))
        if len(hips) >= 2:
            break
    excluded = best[0] if best is not None else (found if refused else doubted)
    look = {"excluded_ras_mm": [[round(float(v), 1) for v in c] for c in excluded], "kept": best is not None,
            "looks": n_looks, "seconds": round(time.perf_counter() - t, 3), "why": "refused" if refused else "doubted"}
    timings["second_look"] = look["seconds"]
    if best is None:  # the first result stands, with its own records
        meas["head_search"], meas["anatomy"] = {**first_search, "second_look": look}, first_anatomy
        return first
    meas["head_search"], meas["anatomy"] = {**best[2], "second_look": look}, best[3]
    labels, hips, flags, confidence = best[1]
    if refused and len(hips) < 2:
        flags = with_scan_flags(flags, [SET_ASIDE])
        meas.setdefault("qc_reasons", {})[SET_ASIDE] = [
            "the anatomy gate refused the structure(s) first found as heads at RAS "
            + ", ".join(f"({', '.join(f'{v:.0f}' for v in c)})" for c in look["excluded_ras_mm"])
            + f" mm; {len(hips)} hip reported without them"]
    return labels, hips, flags, confidence


def measure_scan(scan: LoadedScan, labels: np.ndarray, confidence: float, settings: InferSettings, limits: Any,
                 meas: dict) -> tuple[np.ndarray, list[dict], list[str]]:
    """The anatomy gate, then per-hip measurements and QC flags: (labels, hips, scan flags)."""
    lo, hi = settings.qc.head_ml_range
    gated = measure_gated(  # anatomy gate (infer/anatomy.py), then per-hip measurements and QC flags
        scan.image, labels, scan.affine, confidence, str(settings.reference), (float(lo), float(hi)),
        float(settings.qc.min_confidence), limits,
        gate=bool(settings.anatomy["enabled"]),
    )
    labels, hips, flags = gated.labels, gated.hips, gated.flags
    if scan.qc_flags:  # found while reading (sheared_geometry, suspect_image_content, fat_suppressed): none trusted
        flags = with_scan_flags(flags, scan.qc_flags)
        hips = mark_trust(hips, flags)
        meas["qc_reasons"] = dict(scan.qc_reasons)
    meas["anatomy"] = gated.anatomy
    if scan.orientation_unknown:  # no sform/qform (allow_unknown_orientation): no left/right claim
        hips = [{**hip, "side": "unknown"} for hip in hips]
    return labels, hips, flags

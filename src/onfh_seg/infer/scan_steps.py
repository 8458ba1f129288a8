"""The per-scan steps of ``infer.pipeline.process_scan`` between reading and writing: the segmenter on the scan
(``segment_scan``), the anatomy gate and the measurements (``measure_scan``), and the second look when the gate
refused every head found (``second_look``)."""

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


def second_look(scan: LoadedScan, segmenter: Any, settings: InferSettings, limits: Any, meas: dict,
                timings: dict[str, Any], found: list[np.ndarray], first: tuple) -> tuple:
    """When the anatomy gate refused every head the segmenter found (``not_hip_anatomy``), look once more with
    those structures excluded, so the head search goes on to the candidates behind them (a bladder or bowel pair
    taken for heads hides the real ones). The second result is kept only if the gate accepts it; either way the
    record says so (``head_search.second_look``). Returns (labels, hips, flags, confidence)."""
    if NOT_HIP_ANATOMY not in first[2] or not found or not _accepts_exclude(segmenter):
        return first
    t = time.perf_counter()
    first_search, first_anatomy = meas.get("head_search", {}), meas.get("anatomy")
    labels, confidence, _ = segment_scan(scan, segmenter, {}, meas, exclude=found)
    labels, hips, flags = measure_scan(scan, labels, confidence, settings, limits, meas)
    kept = NOT_HIP_ANATOMY not in flags and bool(hips)
    look = {"excluded_ras_mm": [[round(float(v), 1) for v in c] for c in found], "kept": kept,
            "seconds": round(time.perf_counter() - t, 3)}
    timings["second_look"] = look["seconds"]
    if not kept:  # the first result stands, with its own records
        meas["head_search"], meas["anatomy"] = {**first_search, "second_look": look}, first_anatomy
        return first
    meas["head_search"] = {**meas.get("head_search", {}), "second_look": look}
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
    if scan.qc_flags:  # found while reading (sheared_geometry, suspect_image_content): no hip is trusted
        flags = with_scan_flags(flags, scan.qc_flags)
        hips = mark_trust(hips, flags)
        meas["qc_reasons"] = dict(scan.qc_reasons)
    meas["anatomy"] = gated.anatomy
    if scan.orientation_unknown:  # no sform/qform (allow_unknown_orientation): no left/right claim
        hips = [{**hip, "side": "unknown"} for hip in hips]
    return labels, hips, flags

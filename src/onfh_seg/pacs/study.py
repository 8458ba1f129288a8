"""One received study -> onfh-infer's DICOM path -> DICOM SEG + SR ready to send.

:func:`process_study` chooses the T1 series with the existing rules
(:func:`onfh_seg.infer.dicom_jobs.dicom_job`), segments and measures it with
:func:`onfh_seg.run.jobs.run_job`, as onfh-infer runs every scan (anatomy gate included), then
finishes the objects for a PACS (:func:`finish_objects`): the SR is rebuilt so
that it references the SEG and the source series, and unless ``deidentify``
the Patient module is copied from the source into both.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from onfh_seg.config_schemas import InferSettings
from onfh_seg.infer.dicom_jobs import dicom_job
from onfh_seg.infer.scan_record import result_settings
from onfh_seg.io.dicom_derived import copy_patient_module
from onfh_seg.io.dicom_sr import build_dicom_sr
from onfh_seg.io.files import atomic_write_bytes
from onfh_seg.pacs.state import settings_key
from onfh_seg.run.jobs import run_job
from onfh_seg.run.outputs import output_paths

OUR_MODALITIES = ("SEG", "SR")  # never taken as input (our own results stored back in the same study)


@dataclass
class StudyOutcome:
    """What happened to one study: ``status`` "ready" (``files`` to send), "refused" or "error"."""

    status: str
    reason: str | None = None
    series: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    hips: list[dict[str, Any]] = field(default_factory=list)
    qc_flags: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def study_settings_key(segmenter: Any, infer_cfg: InferSettings, deidentify: bool) -> str:
    """The ledger key: model version, onfh-infer's result settings and ``deidentify``."""
    version = str(getattr(segmenter, "version", "unknown"))
    return settings_key(version, {**result_settings(infer_cfg), "deidentify": bool(deidentify)})


def _save(ds: Dataset, path: Path) -> None:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(path, buffer.getvalue())


def finish_objects(seg_path: Path, sr_path: Path | None, meas: Mapping[str, Any], sources: Sequence[Dataset],
                   deidentify: bool) -> list[Path]:
    """Make SEG (+ SR) ready for a PACS, in place; returns the files to send.

    The SR is rebuilt from the measurements so that each hip group references
    the SEG's necrotic segment and the source series; with ``deidentify=False``
    the Patient module of the first source instance is copied into both.
    """
    seg = dcmread(seg_path)
    if not deidentify:
        copy_patient_module(seg, sources[0])
        _save(seg, seg_path)
    files = [seg_path]
    if sr_path is not None:
        hips = [h for h in meas.get("hips") or [] if h.get("side") in ("right", "left") and h.get("trusted", True)]
        sr = build_dicom_sr({**meas, "hips": hips}, sources, str(meas.get("model_version")), seg=seg)
        if not deidentify:
            copy_patient_module(sr, sources[0])
        _save(sr, sr_path)
        files.append(sr_path)
    return files


def _hip_summary(hip: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("side", "head_volume_ml", "lesion_volume_ml", "percent_head_involved", "arco_extent", "trusted")
    return {k: hip.get(k) for k in keys}


def _not_written(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return str(value.get("reason") or value.get("error") or value.get("status"))
    return None if value else "not written"


def process_study(folder: Path, out_dir: Path, segmenter: Any, infer_cfg: InferSettings,
                  deidentify: bool = False) -> StudyOutcome:
    """Segment and measure the T1 series of the study in ``folder``; never raises for a bad study."""
    t0 = time.perf_counter()
    job = dicom_job(Path(folder), str(folder), infer_cfg.dicom.rules or None, exclude=Path(out_dir))
    series = dict(job.dicom or {})
    series = {k: series[k] for k in ("series_instance_uid", "series_number", "series_description",
                                      "selection_reason", "n_files", "n_series_found") if k in series}
    result = run_job(job, Path(out_dir), segmenter, infer_cfg)
    timings = {"process_s": round(time.perf_counter() - t0, 3)}
    paths = output_paths(out_dir, job.name)
    try:
        meas = json.loads(paths["measurements"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return StudyOutcome("error", f"no measurements written: {exc}", series or None, timings=timings)
    flags = list(meas.get("qc_flags") or [])
    if result["status"] not in ("ok", "skipped"):
        error = str(result["error"])
        refused = error.startswith("not_hip_anatomy") or job.error is not None
        return StudyOutcome("refused" if refused else "error", error, series or None, qc_flags=flags, timings=timings)
    outputs = meas.get("outputs") or {}
    seg_missing = _not_written(outputs.get("dicom_seg"))
    hips = [_hip_summary(h) for h in meas.get("hips") or []]
    if seg_missing:
        return StudyOutcome("refused", f"no DICOM SEG: {seg_missing}", series or None, hips=hips, qc_flags=flags,
                            timings=timings)
    sr_path = paths["dicom_sr"] if _not_written(outputs.get("dicom_sr")) is None else None
    sources = [dcmread(p, stop_before_pixels=True) for p in job.series.files]
    try:
        files = finish_objects(paths["dicom_seg"], sr_path, meas, sources, deidentify)
    except Exception as exc:  # a writer failure is this study's error, never the service's
        return StudyOutcome("error", f"finishing SEG/SR failed: {type(exc).__name__}: {exc}", series or None,
                            hips=hips, qc_flags=flags, timings=timings)
    timings["process_s"] = round(time.perf_counter() - t0, 3)
    reason = None if sr_path else f"SEG only: {_not_written(outputs.get('dicom_sr'))}"
    return StudyOutcome("ready", reason, series or None, files=files, hips=hips, qc_flags=flags, timings=timings)

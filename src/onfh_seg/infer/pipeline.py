"""Per-scan inference: load -> validate -> segment -> measure -> QC -> write outputs.

For a job named ``<name>`` (see :mod:`onfh_seg.infer.inputs`) the outputs in
``out_dir`` are (docs/CONTRACTS.md):

* ``<name>_seg.nii.gz``: uint8 label map with the input's exact shape, affine,
  sform and qform (codes included), so it overlays the input in ITK-SNAP/Slicer;
* ``<name>_overlay.png``: label contours through each head centre (``overlay``);
* ``<name>_seg.dcm`` / ``<name>_sr.dcm``: DICOM SEG and TID 1500 SR (DICOM
  input only; no SR without a right/left hip);
* ``<name>_measurements.json``: written last, so it marks a complete scan.

Every file is written atomically (temporary name, then rename). A scan that
fails leaves only ``<name>_measurements.json`` with ``status: "error"`` and
the one-line reason; its other outputs (from this or an earlier run) are
removed so what is on disk always belongs together.

numpy/scipy/nibabel/matplotlib only (no torch); the segmenter is any object
with the ``onfh_seg.infer.engine.Segmenter`` interface.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import time
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from onfh_seg.config_schemas import DicomSettings, InferSettings
from onfh_seg.errors import one_line
from onfh_seg.infer.inputs import LoadedScan, load_scan
from onfh_seg.infer.scan_jobs import ScanJob
from onfh_seg.infer.scan_steps import NOT_HIP_ANATOMY, SET_ASIDE, measure_scan, second_look, segment_scan
from onfh_seg.io.files import atomic_write_bytes, atomic_write_text
from onfh_seg.io.nifti import make_image
from onfh_seg.labels import LABELS
from onfh_seg.infer.anatomy import limits_from_config
from onfh_seg.infer.scan_record import output_errors, result_settings, rows_from_measurements
from onfh_seg.report.overlay import overlay_png
from onfh_seg.run.outputs import output_paths
from onfh_seg.version import __version__

OVERLAY_TITLE_NOTE = "synthetic-trained model, research only"
NO_FEMORAL_HEAD = "no_femoral_head_found"  # the anatomy gate's flag when no head is found (infer.anatomy)


# ---------------------------------------------------------------- small helpers


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def software_versions() -> dict[str, str | None]:
    """Versions of onfh-seg and the libraries the inference path uses (no imports needed)."""
    return {
        "onfh_seg": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _package_version("scipy"),
        "nibabel": nib.__version__,
        "onnxruntime": _package_version("onnxruntime", "onnxruntime-gpu"),
        "SimpleITK": _package_version("SimpleITK", "simpleitk"),
        "matplotlib": _package_version("matplotlib"),
        "pydicom": _package_version("pydicom"),
        "highdicom": _package_version("highdicom"),
    }


def segmenter_info(segmenter: Any) -> dict[str, Any]:
    """Model version, model sha256 and execution providers of a segmenter."""
    return {
        "model_version": str(getattr(segmenter, "version", "unknown")),
        "model_sha256": getattr(segmenter, "sha256", None),
        "providers": list(getattr(segmenter, "providers", []) or []),
        # the execution provider actually used (ONNX Runtime may fall back from the one asked for)
        "provider": getattr(segmenter, "provider", None) or next(iter(getattr(segmenter, "providers", []) or []), None),
        "provider_options": dict(getattr(segmenter, "provider_options", None) or {}),
    }


def _round_timings(timings: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in timings.items():
        if isinstance(value, Mapping):
            out[key] = _round_timings(value)
        elif isinstance(value, (int, float)):
            out[key] = round(float(value), 3)
    return out


# ---------------------------------------------------------------- writers


def seg_image_like(source: nib.Nifti1Image, labels: np.ndarray) -> nib.Nifti1Image:
    """A uint8 label image carrying ``source``'s header geometry (affine, sform, qform and their codes)."""
    hdr = source.header.copy()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(labels.shape)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0.0, float(max(LABELS))
    hdr["descrip"] = b"onfh-seg labels 0-4"
    hdr.set_intent("label")
    cls = type(source) if isinstance(source, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    return cls(np.asarray(labels, np.uint8), None, hdr)


def write_seg(path: str | Path, source: nib.Nifti1Image, labels: np.ndarray) -> None:
    """Write the label map atomically as gzip NIfTI (mtime 0: byte-reproducible)."""
    raw = seg_image_like(source, labels).to_bytes()
    atomic_write_bytes(path, gzip.compress(raw, compresslevel=6, mtime=0))


def _orientation(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


# ---------------------------------------------------------------- the scan


def input_path(job: ScanJob) -> str:
    """The job's input as an absolute, normalised path (symlinks resolved): what onfh-track matches on."""
    return os.path.realpath(job.path)


def _base_record(job: ScanJob, info: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "input": job.image_ref,
        "input_path": input_path(job),
        "input_kind": job.kind,
        "name": job.name,
        "settings": dict(settings),
        "input_sha256": None,
        "model_version": info["model_version"],
        "model_sha256": info["model_sha256"],
        "status": "error",
        "error": None,
        "qc_flags": [],
        "mean_confidence": None,
        "hips": [],
    }


def _job_context(job: ScanJob) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    extra.update(job.meta or {})
    if "months" in extra:  # a number in JSON, as in the manifest
        try:
            extra["months"] = float(extra["months"])
        except (TypeError, ValueError):
            pass
    if job.labels is not None:
        extra["labels"] = str(job.labels)
    if job.kind == "dicom" and job.dicom:
        extra["dicom"] = dict(job.dicom)
    return extra


def _write_dicom_outputs(
    scan: LoadedScan, labels: np.ndarray, meas: dict, paths: dict[str, Path], dicom: DicomSettings
) -> tuple[dict[str, Any], list[str]]:
    """SEG (always) and SR (when a right/left hip was measured) next to the NIfTI seg.

    A writer that fails does not fail the scan: its entry in ``outputs`` becomes
    ``{"status": "error", "error": "..."}`` and a warning is returned, so the
    NIfTI segmentation, JSON and CSV rows are kept.
    """
    # function-level import: highdicom only for DICOM inputs; tests replace these writers on their modules
    from onfh_seg.io.dicom_out import write_dicom_seg
    from onfh_seg.io.dicom_sr import write_dicom_sr

    out: dict[str, Any] = {}
    warnings: list[str] = []
    version = meas["model_version"]

    def attempt(key: str, what: str, write: Any) -> None:
        try:
            write()
            out[key] = paths[key].name
        except Exception as exc:  # a writer's failure is recorded per output, never loses the scan
            out[key] = {"status": "error", "error": one_line(exc)}
            warnings.append(f"{what} not written: {one_line(exc)}")

    no_head = [f for f in meas["qc_flags"] if f in ("no_femoral_head_found", "not_hip_anatomy")]
    if dicom.write_seg:
        if no_head:  # the anatomy gate failed: no SEG that claims a femoral head
            out["dicom_seg"] = {"status": "not_written", "reason": f"{no_head[0]}: no femoral head to segment"}
        else:
            attempt("dicom_seg", "DICOM SEG", lambda: write_dicom_seg(
                make_image(labels, scan.affine, np.uint8), scan.source_datasets, paths["dicom_seg"],
                model_version=version))
    seg_failed = isinstance(out.get("dicom_seg"), Mapping) and out["dicom_seg"].get("status") == "error"
    if dicom.write_sr:
        sided = [h for h in meas["hips"] if h["side"] in ("right", "left") and h.get("trusted", True)]
        if seg_failed and not dicom.sr_without_seg:  # never an SR alone unless asked for
            out["dicom_sr"] = {"status": "not_written", "reason": "the DICOM SEG could not be written (see dicom_seg); "
                                                                  "dicom.sr_without_seg=true writes the SR alone"}
        elif sided:
            attempt("dicom_sr", "DICOM SR", lambda: write_dicom_sr(
                {**meas, "hips": sided}, scan.source_datasets, paths["dicom_sr"], model_version=version))
        else:  # nothing trustworthy to report
            why = no_head or [f for h in meas["hips"] for f in h.get("qc_flags") or []] or meas["qc_flags"]
            out["dicom_sr"] = {"status": "not_written",
                               "reason": f"no trusted right/left hip ({', '.join(dict.fromkeys(why)) or 'side unknown'})"}
    return out, warnings


def _remove(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _write_outputs(job: ScanJob, scan: LoadedScan, labels: np.ndarray, hips: list[dict], paths: dict[str, Path],
                   settings: InferSettings, produced: list[Path]) -> tuple[dict[str, Any], list[str]]:
    """The NIfTI segmentation and the overlay (DICOM outputs come after the measurements): (outputs, warnings);
    every file written is appended to ``produced``."""
    outputs: dict[str, Any] = {}
    write_seg(paths["seg"], scan.header_image, labels)
    produced.append(paths["seg"])
    outputs["seg"] = paths["seg"].name
    if settings.overlay:
        centres = {h["side"]: h["head_centre_ras_mm"] for h in hips if h["head_centre_ras_mm"] is not None}
        overlay_png(scan.image, labels, scan.affine, centres, paths["overlay"],
                    f"{job.name} | {OVERLAY_TITLE_NOTE}")
        produced.append(paths["overlay"])
        outputs["overlay"] = paths["overlay"].name
    return outputs, []


def _finish(meas: dict, job: ScanJob, scan: LoadedScan, info: Mapping[str, Any], outputs: dict[str, Any],
            writer_warnings: list[str], timings: dict[str, Any]) -> None:
    """The rest of a measured scan's record: warnings, image geometry, outputs, context, provider, timings."""
    meas.update(
        warnings=scan.warnings + writer_warnings,
        image={
            "shape": list(scan.image.shape),
            "spacing_mm": [round(float(s), 4) for s in np.linalg.norm(scan.affine[:3, :3], axis=0)],
            "orientation": _orientation(scan.affine),
        },
        outputs=outputs,
        **_job_context(job),
        providers=info["providers"], provider=info["provider"],
        timings=_round_timings(timings),
        software=software_versions(),
    )


def _fail(meas: dict, job: ScanJob, info: Mapping[str, Any], paths: dict[str, Path], timings: dict[str, Any],
          t_start: float, error: str) -> None:
    """A failed scan: its outputs removed, its record written with the one-line error."""
    _remove([p for k, p in paths.items() if k != "measurements"])
    timings["total"] = time.perf_counter() - t_start
    refused = [NOT_HIP_ANATOMY] if error.startswith(f"{NOT_HIP_ANATOMY}:") else []  # DICOM headers: not a hip
    meas.update(status="error", error=error, qc_flags=refused, mean_confidence=None, hips=[])
    meas.update(**_job_context(job), providers=info["providers"], provider=info["provider"], timings=_round_timings(timings),
                software=software_versions())
    atomic_write_text(paths["measurements"], json.dumps(meas, indent=2) + "\n")


def process_scan(job: ScanJob, out_dir: str | Path, segmenter: Any, settings: InferSettings) -> dict:
    """Segment and measure one scan, write its outputs; never raises for a bad scan.

    ``settings`` (onfh-infer's, :func:`onfh_seg.config.infer_settings`): ``reference``, ``overlay``,
    ``anatomy``, ``qc.*`` and ``dicom.*`` are read here.

    Returns ``{"name", "input", "input_path", "input_sha256", "settings",
    "status": "ok"|"error", "error", "rows", "timings", "model_version",
    "model_sha256", "providers", "outputs"}``;
    ``rows`` are this scan's ``measurements.csv`` rows (empty on error).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, job.name)
    info = segmenter_info(segmenter)
    result_keys = result_settings(settings)
    meas = _base_record(job, info, result_keys)
    timings: dict[str, Any] = {}
    produced: list[Path] = []
    try:
        limits = limits_from_config(settings.anatomy)  # a bad anatomy setting fails before any work
        t = time.perf_counter()
        scan = load_scan(job)
        meas["input_sha256"] = scan.sha256
        timings["load"] = time.perf_counter() - t
        labels, confidence, found = segment_scan(scan, segmenter, timings, meas)
        t = time.perf_counter()
        labels, hips, flags = measure_scan(scan, labels, confidence, settings, limits, meas)
        timings["measure"] = time.perf_counter() - t
        labels, hips, flags, confidence = second_look(scan, segmenter, settings, limits, meas, timings, found,
                                                      (labels, hips, flags, confidence))
        t = time.perf_counter()
        outputs, writer_warnings = _write_outputs(job, scan, labels, hips, paths, settings, produced)
        meas.update(status="ok", qc_flags=flags, mean_confidence=round(confidence, 4), hips=hips)
        if job.kind == "dicom":
            dicom_out, writer_warnings = _write_dicom_outputs(scan, labels, meas, paths, settings.dicom)
            produced += [paths[k] for k, v in dicom_out.items() if isinstance(v, str)]
            outputs.update(dicom_out)
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        _finish(meas, job, scan, info, outputs, writer_warnings, timings)
        # outputs of an earlier run that this run did not produce (overlay off, no SR now)
        _remove([p for k, p in paths.items() if k != "measurements" and p not in produced])
        atomic_write_text(paths["measurements"], json.dumps(meas, indent=2) + "\n")
        status, error, rows = "ok", None, rows_from_measurements(meas)
    except KeyboardInterrupt:
        _remove(produced)
        raise
    except Exception as exc:  # failure isolation: any problem with this scan is reported, not raised
        error = one_line(exc)
        _fail(meas, job, info, paths, timings, t_start, error)
        status, rows = "error", []
    return {
        "name": job.name,
        "input": job.image_ref,
        "input_path": meas["input_path"],
        "input_sha256": meas["input_sha256"],
        "settings": result_keys,
        "status": status,
        "error": error,
        "rows": rows,
        "timings": _round_timings(timings),
        "outputs": sorted(p.name for p in produced) + [paths["measurements"].name],
        "output_errors": output_errors(meas),
        # refused as not a hip (anatomy gate or DICOM headers): the console counts these apart
        "no_hip": any(f in (NO_FEMORAL_HEAD, NOT_HIP_ANATOMY) for f in meas.get("qc_flags") or []),
        "set_aside": SET_ASIDE in (meas.get("qc_flags") or []),  # a refused structure left out: named apart too
        **info,
    }

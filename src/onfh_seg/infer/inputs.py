"""Inference inputs: expand ``input=PATH`` into scan jobs, load and validate one scan.

``input`` may be

* one NIfTI file (``.nii`` / ``.nii.gz``, any case) -> one job named after the
  file (``scan.nii.gz`` -> ``scan``: the file name without its extension; each
  scan's measurements JSON records its name, image and resolved path, which is
  how onfh-track finds the outputs of a manifest's images);
* a folder: its top-level NIfTI files (sorted by name), one job each; a folder
  without NIfTI files but with DICOM files (at any depth) is one DICOM study
  -> one job, named after the chosen T1 series (``<SeriesNumber>_<description>``; ``series=all-t1``:
  one job per T1 candidate, each named so);
* a cohort manifest CSV (``.csv``): one job per row with a non-empty ``image``
  (a NIfTI file or a DICOM study folder, relative to the manifest's folder);
  ``labels``, ``patient_id``, ``timepoint`` and ``months`` are kept with the job
  (an image listed on several rows is one job, with the first row's values).

Duplicate names (e.g. ``a/scan.nii.gz`` and ``b/scan.nii.gz`` in a manifest)
get their parent folder name prepended, then a numeric suffix.

Inputs are only inputs: files named like this tool's outputs (``*_seg.nii.gz``,
``*_seg.dcm``, ``*_sr.dcm``, ...) are never taken as scans, a folder search
skips ``out_dir`` when it lies inside the folder, and a manifest row naming an
image inside ``out_dir`` fails (unless the manifest itself lies there).

Scan names and ``ScanJob`` are in ``infer.scan_jobs``, the jobs of a DICOM study
folder in ``infer.dicom_jobs``. The image itself is read and checked by
``infer.image_read`` (regular files only, a size cap, the header gate) and
``infer.image_checks``.

:func:`load_scan` reads and validates one job. Every problem is a
``ValueError`` (or ``FileNotFoundError``) with a one-line message, so a batch
can record it and carry on. No torch.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from onfh_seg.geometry import voxel_volume_ml
from onfh_seg.infer.content_qc import SUSPECT_IMAGE_CONTENT, content_problems
from onfh_seg.infer.header_gate import GEOMETRY_CHOICES, geometry_flags
from onfh_seg.infer.image_checks import validate_image
from onfh_seg.infer.image_read import DEFAULT_MAX_IMAGE_MB, check_size_limit, load_nifti_gated
from onfh_seg.infer.input_files import InputError, require_regular_file, sha256_regular_file
from onfh_seg.infer.scan_jobs import (
    ScanJob,
    absolute_path,
    dedupe_names,
    is_nifti_name,
    is_within,
)
from onfh_seg.io.manifest import ManifestError, read_manifest
from onfh_seg.run.outputs import is_tool_output, scan_name

MANIFEST_KEEP = ("patient_id", "timepoint", "months")
FAT_SUPPRESSED = "fat_suppressed"  # QC flag of a series whose DICOM headers say fat suppression (quality.QC_FLAGS)


@dataclass
class LoadedScan:
    """A validated scan: float32 3-D image on its grid plus provenance."""

    image: np.ndarray
    affine: np.ndarray
    header_image: nib.Nifti1Image  # the source image (header carries sform/qform codes)
    sha256: str
    warnings: list[str] = field(default_factory=list)
    source_datasets: list[Any] | None = None  # DICOM headers of the chosen series
    orientation_unknown: bool = False  # no sform/qform (allow_unknown_orientation): no left/right claim
    qc_flags: list[str] = field(default_factory=list)  # scan QC flags found while reading (sheared_geometry, ...)
    qc_reasons: dict[str, list[str]] = field(default_factory=dict)  # flag -> why (suspect_image_content)


def _exclusion(folder: Path, out_dir: Path | None) -> Path | None:
    """``out_dir`` when it lies strictly inside ``folder`` (to be skipped by a recursive search), else None."""
    if out_dir is None or absolute_path(out_dir) == absolute_path(folder) or not is_within(out_dir, folder):
        return None
    return out_dir


def _manifest_jobs(manifest: Path, rules: dict | None, out_dir: Path | None = None,
                   series: str = "auto") -> list[ScanJob]:
    """One job per manifest row with an image (an image on several rows once; see the module docstring)."""
    require_regular_file(manifest)
    guard_out_dir = out_dir is not None and not is_within(manifest.parent, out_dir)
    try:
        rows = read_manifest(manifest, required=("image",))
    except ManifestError as exc:
        raise InputError(str(exc)) from None
    jobs = []
    seen: set[Path] = set()
    for row in rows:
        ref = (row.get("image") or "").strip()
        if not ref:
            continue  # a clinic visit without a scan
        path = Path(ref) if Path(ref).is_absolute() else manifest.parent / ref
        key = Path(os.path.normpath(path.absolute()))
        if key in seen:
            continue  # the same image on several rows (e.g. one row per hip) is segmented once
        seen.add(key)
        label_ref = (row.get("labels") or "").strip()
        labels = None
        if label_ref:
            labels = Path(label_ref) if Path(label_ref).is_absolute() else manifest.parent / label_ref
        meta = {k: row[k] for k in MANIFEST_KEEP if row.get(k) not in (None, "")}
        if path.is_dir():
            # function-level import: pydicom (heavy) loads only for DICOM input, off a NIfTI run's start-up
            from onfh_seg.infer.dicom_jobs import dicom_jobs

            row_jobs = dicom_jobs(path, ref, rules, exclude=_exclusion(path, out_dir),
                                  patient_id=row.get("patient_id"), series=series)
        else:
            row_jobs = [ScanJob("nifti", path, scan_name(path), ref)]
        for job in row_jobs:  # several only for series=all-t1
            if is_tool_output(path):
                job.error = f"{ref} is an onfh-infer output (*_seg.nii.gz, *_seg.dcm, *_sr.dcm, ...), not a scan"
            elif guard_out_dir and is_within(path, out_dir):
                job.error = f"{ref} lies in out_dir {out_dir}; outputs are never taken as inputs"
            job.labels, job.meta = labels, dict(meta)
            jobs.append(job)
    if not jobs:
        raise InputError(f"manifest {manifest} lists no images")
    return jobs


def expand_input(
    input_path: str | Path,
    dicom_rules: dict | None = None,
    out_dir: str | Path | None = None,
    max_image_mb: float | None = None,
    allow_unknown_orientation: bool = False,
    series: str = "auto",
    geometry: str = "auto",
) -> list[ScanJob]:
    """Scan jobs for ``input=PATH`` (see the module docstring); one-line errors if none.

    ``out_dir`` (the run's results folder) is never searched for inputs;
    ``max_image_mb``, ``allow_unknown_orientation`` and ``geometry`` (NIfTI: which of sform/qform) are kept with each job
    for :func:`load_scan`; ``series`` picks the series of a DICOM study (``auto``, a SeriesNumber or
    SeriesInstanceUID, ``all-t1``: one job per T1 candidate).
    """
    if input_path is None or str(input_path).strip() == "":
        raise InputError("input is empty; give input=FILE.nii.gz, a folder or a manifest .csv")
    path = Path(str(input_path))
    out = Path(str(out_dir)) if out_dir not in (None, "") else None
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        niftis = sorted(
            p for p in path.iterdir()
            if not p.is_dir() and is_nifti_name(p) and not p.name.startswith(".") and not is_tool_output(p)
        )  # a FIFO or device named like a scan is a job that fails with one line, never skipped silently
        exclude = _exclusion(path, out)
        if niftis:
            jobs = [ScanJob("nifti", p, scan_name(p), str(p)) for p in niftis]
        else:
            # function-level import: pydicom (heavy) loads only for a folder without NIfTI files
            from onfh_seg.infer.dicom_jobs import dicom_jobs, folder_has_dicom

            if not folder_has_dicom(path, exclude):
                raise InputError(
                    f"no NIfTI (.nii/.nii.gz) or DICOM files found in folder {path} "
                    "(onfh-infer outputs such as *_seg.nii.gz are not inputs)"
                )
            jobs = dicom_jobs(path, str(path), dicom_rules, exclude=exclude, series=series)
    elif path.suffix.lower() == ".csv":
        jobs = _manifest_jobs(path, dicom_rules, out, series)
    else:
        require_regular_file(path)
        if is_tool_output(path):
            raise InputError(f"{path} is an onfh-infer output (*_seg.nii.gz, *_seg.dcm, ...), not a scan")
        jobs = [ScanJob("nifti", path, scan_name(path), str(path))]
    limit = DEFAULT_MAX_IMAGE_MB if max_image_mb is None else float(max_image_mb)
    if not limit > 0:
        raise InputError(f"max_image_mb must be positive, got {max_image_mb!r}")
    if geometry not in GEOMETRY_CHOICES:
        raise InputError(f"geometry={geometry!r} is not allowed: expected one of {', '.join(GEOMETRY_CHOICES)}")
    for job in jobs:
        job.max_image_mb, job.allow_unknown_orientation = limit, bool(allow_unknown_orientation)
        job.geometry = geometry
    return dedupe_names(jobs)


# ---------------------------------------------------------------- hashing


def _dicom_files(job: ScanJob) -> list[Path]:
    return sorted(Path(p) for p in job.series.files)


def dicom_sha256(files: list[Path]) -> str:
    """Hash of a DICOM series: every file's bytes in sorted path order."""
    h = hashlib.sha256()
    for p in sorted(files):
        h.update(p.name.encode("utf-8") + b"\0")
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def input_sha256(job: ScanJob) -> str | None:
    """sha256 of the job's input (file bytes; a DICOM series' files), None if unreadable."""
    try:
        if job.kind == "dicom":
            return None if job.series is None else dicom_sha256(_dicom_files(job))
        return sha256_regular_file(Path(job.path))
    except (OSError, InputError):
        return None


def content_check(scan: LoadedScan) -> LoadedScan:
    """``scan`` with ``suspect_image_content`` (flag, reasons, warnings) when its voxels look damaged
    (``infer.content_qc``: constant slabs, slices whose intensity scale jumps)."""
    reasons = content_problems(scan.image, voxel_volume_ml(scan.affine))
    if reasons:
        scan.qc_flags = [*scan.qc_flags, SUSPECT_IMAGE_CONTENT]
        scan.qc_reasons = {**scan.qc_reasons, SUSPECT_IMAGE_CONTENT: reasons}
        scan.warnings = [*scan.warnings, *(f"{SUSPECT_IMAGE_CONTENT}: {r}" for r in reasons)]
    return scan


def _load_dicom(job: ScanJob) -> LoadedScan:
    """Read and validate a DICOM job's chosen series (size cap from its headers before any pixel is read)."""
    # function-level import: pydicom (heavy) loads only for DICOM input, off a NIfTI run's start-up
    from onfh_seg.io.dicom import load_series
    from onfh_seg.io.dicom_geometry import series_shape

    files = _dicom_files(job)
    for f in files:
        require_regular_file(f)
    shape = series_shape(job.series.headers)
    check_size_limit(shape, math.prod(shape) * 4, job.max_image_mb, job.name)
    sha = dicom_sha256(files)
    img = load_series(job.series)
    image, warnings = validate_image(np.asanyarray(img.dataobj), img.affine)
    skipped = (job.dicom or {}).get("non_regular_files_skipped") or []
    if skipped:
        warnings.append(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''} that "
                        f"{'are' if len(skipped) > 1 else 'is'} not a regular file: {', '.join(skipped)}")
    scan = LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, warnings, list(job.series.headers))
    if (job.dicom or {}).get("fat_suppressed"):
        why = (f"series {job.series.series_number} is fat-suppressed (its name, ScanOptions or Dixon water image): the model was not "
               "trained to measure lesions on fat-suppressed T1, its hips are not trusted")
        scan.qc_flags, scan.qc_reasons = [FAT_SUPPRESSED], {FAT_SUPPRESSED: [why]}
        scan.warnings = [*scan.warnings, f"{FAT_SUPPRESSED}: {why}"]
    return scan


def _load_nifti(job: ScanJob) -> LoadedScan:
    """Read and validate a NIfTI job's file (streamed, size-capped, header gate)."""
    img, sha, gate_warnings, unknown = load_nifti_gated(Path(job.path), job.max_image_mb, job.allow_unknown_orientation,
                                                        job.geometry)
    image, warnings = validate_image(np.asanyarray(img.dataobj), img.affine)
    return LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, gate_warnings + warnings,
                      orientation_unknown=unknown, qc_flags=geometry_flags(img.affine))


def load_scan(job: ScanJob) -> LoadedScan:
    """Read and validate one job's image (NIfTI file or DICOM series), then check its content."""
    if job.error:
        raise InputError(job.error)
    return content_check(_load_dicom(job) if job.kind == "dicom" else _load_nifti(job))

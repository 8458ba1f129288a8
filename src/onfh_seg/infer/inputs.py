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

The image itself is read and checked by ``infer.image_read`` (regular files
only, a size cap, the header gate).

:func:`load_scan` reads and validates one job. Every problem is a
``ValueError`` (or ``FileNotFoundError``) with a one-line message, so a batch
can record it and carry on. No torch; pydicom is imported only for DICOM jobs.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from onfh_seg.geometry import voxel_volume_ml
from onfh_seg.infer.content_qc import SUSPECT_IMAGE_CONTENT, content_problems
from onfh_seg.infer.image_read import (
    DEFAULT_MAX_IMAGE_MB,
    GEOMETRY_CHOICES,
    InputError,
    check_size_limit,
    file_kind,
    geometry_flags,
    load_nifti_gated,
    require_regular_file,
    sha256_regular_file,
    validate_image,
)
from onfh_seg.io.manifest import ManifestError, read_manifest
from onfh_seg.run.outputs import NIFTI_SUFFIXES, is_tool_output, scan_name

MANIFEST_KEEP = ("patient_id", "timepoint", "months")


@dataclass
class ScanJob:
    """One scan to segment.

    ``kind`` is "nifti" or "dicom". ``image_ref`` is the image as the user
    named it (manifest entry or path), used in the CSV ``image`` column.
    ``series`` holds the chosen DICOM series (``onfh_seg.io.dicom.SeriesInfo``)
    and ``dicom`` its description; ``error`` is a problem found while
    expanding the input (the job then fails with it).
    """

    kind: str
    path: Path
    name: str
    image_ref: str
    labels: Path | None = None
    meta: dict[str, str] = field(default_factory=dict)
    series: Any = None
    dicom: dict[str, Any] | None = None
    error: str | None = None
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB
    allow_unknown_orientation: bool = False
    geometry: str = "auto"  # NIfTI: auto (sform and qform must agree) | sform | qform (configs/infer.yaml)


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


# ---------------------------------------------------------------- names


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _absolute(path: Path | str) -> Path:
    """Absolute, normalised path (symlinks resolved where possible)."""
    return Path(os.path.realpath(os.path.abspath(str(path))))


def is_within(path: Path, folder: Path | None) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both made absolute)."""
    if folder is None:
        return False
    path, folder = _absolute(path), _absolute(folder)
    return path == folder or folder in path.parents


def sanitise(text: str, max_len: int = 64) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``.-_``; runs of others -> ``_``)."""
    out = re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("._-")
    return out[:max_len].rstrip("._-")


def dicom_series_name(series_number: int | None, description: str) -> str:
    """``<SeriesNumber>_<sanitised description>``, e.g. ``3_t1_tse_cor``."""
    number = "S" if series_number is None else str(series_number)
    desc = sanitise(description)
    return f"{number}_{desc}" if desc else f"{number}_series"


def _dedupe(jobs: list[ScanJob]) -> list[ScanJob]:
    """Make job names unique: prepend the parent folder name, then add ``_2``, ``_3``..."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.name] = counts.get(job.name, 0) + 1
    for job in jobs:
        if counts[job.name] > 1:
            parent = sanitise(job.path.parent.name) if job.kind == "nifti" else sanitise(job.path.name)
            if parent:
                job.name = f"{parent}_{job.name}"
    seen: dict[str, int] = {}
    for job in jobs:
        base = job.name
        if base in seen:
            seen[base] += 1
            job.name = f"{base}_{seen[base]}"
            while job.name in seen:
                seen[base] += 1
                job.name = f"{base}_{seen[base]}"
        seen.setdefault(job.name, 1)
    return jobs


# ---------------------------------------------------------------- expansion


def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 file ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder: Path, exclude: Path | None = None) -> bool:
    """True if any regular file under ``folder`` (any depth, outside ``exclude``) is a DICOM file."""
    return any(
        p.is_file() and not is_tool_output(p) and not is_within(p, exclude) and _looks_like_dicom(p)
        for p in sorted(folder.rglob("*"))
    )


def _exclusion(folder: Path, out_dir: Path | None) -> Path | None:
    """``out_dir`` when it lies strictly inside ``folder`` (to be skipped by a recursive search), else None."""
    if out_dir is None or _absolute(out_dir) == _absolute(folder) or not is_within(out_dir, folder):
        return None
    return out_dir


def dicom_job(folder: Path, image_ref: str, rules: dict | None = None, exclude: Path | None = None,
              patient_id: str | None = None) -> ScanJob:
    """One job for a DICOM study folder: the series the rules choose (headers only)."""
    return dicom_jobs(folder, image_ref, rules, exclude, patient_id)[0]


def dicom_jobs(folder: Path, image_ref: str, rules: dict | None = None, exclude: Path | None = None,
               patient_id: str | None = None, series: str = "auto") -> list[ScanJob]:
    """Jobs for a DICOM study folder: the series chosen now (headers only).

    ``series`` is ``auto`` (the rules' choice, ``io.dicom_select``), a
    SeriesNumber or SeriesInstanceUID (that series), or ``all-t1`` (one job per
    T1 candidate). A folder without a usable series, holding more than one
    patient or study, or (``patient_id``: a manifest row's) of another patient
    still becomes one job (named after the folder) that fails with the one-line reason.
    """
    from onfh_seg.io.dicom import DicomError, check_manifest_patient, check_one_patient, find_series
    from onfh_seg.io.dicom_select import ALL_T1, select_series

    try:
        found = find_series(folder, exclude=exclude)
        if not found:
            raise DicomError(f"no DICOM image series found in {folder}")
        check_one_patient(found, folder)
        selection = select_series(found, rules, series)
        check_manifest_patient(selection.chosen, patient_id)
    except DicomError as exc:
        name = sanitise(folder.resolve().name) or "dicom"
        return [ScanJob("dicom", folder, name, image_ref, error=str(exc).splitlines()[0])]
    chosen = selection.chosen
    odd = non_regular_files(folder, exclude)
    if str(series).strip() != ALL_T1:
        return [_with_skipped(_series_job(folder, image_ref, chosen, selection.reason, selection.summary, len(found)),
                              odd)]
    total = len(selection.candidates)
    return [_with_skipped(_series_job(folder, image_ref, s,
                        f"series=all-t1: T1 candidate {k} of {total}; "
                        + (f"the rules' choice: {selection.reason}" if s is chosen
                           else f"the rules choose #{chosen.series_number}"),
                        f"series {s.series_number} '{s.description or s.protocol_name}' (series=all-t1, "
                        + ("the rules' choice)" if s is chosen else f"the rules choose {chosen.series_number})"),
                        len(found)), odd)
            for k, s in enumerate(selection.candidates, 1)]


def non_regular_files(folder: Path, exclude: Path | None = None) -> list[str]:
    """``"<relative path> (<kind>)"`` of every entry under ``folder`` that is neither a folder nor a regular file
    (FIFOs, devices, sockets; never opened), outside ``exclude``."""
    found = []
    for p in sorted(folder.rglob("*")):
        try:
            mode = p.stat().st_mode
        except OSError:
            continue  # a broken link: nothing to read
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) and not is_within(p, exclude):
            found.append(f"{p.relative_to(folder)} ({file_kind(mode)})")
    return found


def _with_skipped(job: ScanJob, skipped: list[str]) -> ScanJob:
    """``job`` recording the non-regular files its folder search skipped (``dicom.non_regular_files_skipped``)."""
    if skipped and job.dicom is not None:
        job.dicom["non_regular_files_skipped"] = list(skipped)
    return job


def _series_job(folder: Path, image_ref: str, chosen: Any, reason: str, summary: str, n_found: int) -> ScanJob:
    """The job for one chosen series of a study, named ``<SeriesNumber>_<description>``."""
    from onfh_seg.io.dicom import series_identifiers

    info: dict[str, Any] = {
        "series_instance_uid": chosen.series_uid,
        "series_number": chosen.series_number,
        "series_description": chosen.description,
        "protocol_name": chosen.protocol_name,
        "selection_reason": reason,
        "selection_summary": summary,
        "n_files": chosen.n_files,
        "n_series_found": n_found,
    }
    if chosen.duplicates:
        info["duplicate_instances_skipped"] = chosen.duplicates  # same SOPInstanceUID found twice
    info.update(series_identifiers(chosen))
    name = dicom_series_name(chosen.series_number, chosen.description or chosen.protocol_name)
    return ScanJob("dicom", folder, name, image_ref, series=chosen, dicom=info)


def selection_line(job: ScanJob) -> str | None:
    """Console line of a DICOM job's series choice, ``<patient>: <selection_summary>``, e.g.
    ``P01: series 26 '...' (T1 3D GRE, pre-contrast); not 25 (...)``."""
    if job.kind != "dicom" or not job.dicom or not job.dicom.get("selection_summary"):
        return None
    who = job.meta.get("patient_id") or job.dicom.get("PatientID") or job.name
    return f"{who}: {job.dicom['selection_summary']}"


def _manifest_jobs(manifest: Path, rules: dict | None, out_dir: Path | None = None,
                   series: str = "auto") -> list[ScanJob]:
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
        elif folder_has_dicom(path, exclude):
            jobs = dicom_jobs(path, str(path), dicom_rules, exclude=exclude, series=series)
        else:
            raise InputError(
                f"no NIfTI (.nii/.nii.gz) or DICOM files found in folder {path} "
                "(onfh-infer outputs such as *_seg.nii.gz are not inputs)"
            )
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
    return _dedupe(jobs)


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


def load_scan(job: ScanJob) -> LoadedScan:
    """Read and validate one job's image (NIfTI file or DICOM series), then check its content."""
    if job.error:
        raise InputError(job.error)
    if job.kind == "dicom":
        from onfh_seg.io.dicom import load_series, series_shape

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
        return content_check(LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, warnings,
                                        list(job.series.headers)))
    img, sha, gate_warnings, unknown = load_nifti_gated(Path(job.path), job.max_image_mb, job.allow_unknown_orientation,
                                                        job.geometry)
    image, warnings = validate_image(np.asanyarray(img.dataobj), img.affine)
    return content_check(LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, gate_warnings + warnings,
                                    orientation_unknown=unknown, qc_flags=geometry_flags(img.affine)))

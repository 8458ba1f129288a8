"""Inference inputs: expand ``input=PATH`` into scan jobs, load and validate one scan.

``input`` may be

* one NIfTI file (``.nii`` / ``.nii.gz``) -> one job named after the file
  (``scan.nii.gz`` -> ``scan``: the file name without its extension, unchanged,
  which is how onfh-track finds the outputs of a manifest's images);
* a folder: its top-level NIfTI files (sorted by name), one job each; a folder
  without NIfTI files but with DICOM files (at any depth) is one DICOM study
  -> one job, named after the chosen T1 series (``<SeriesNumber>_<description>``);
* a cohort manifest CSV (``.csv``): one job per row with a non-empty ``image``
  (a NIfTI file or a DICOM study folder, relative to the manifest's folder);
  ``labels``, ``patient_id``, ``timepoint`` and ``months`` are kept with the job
  (an image listed on several rows is one job, with the first row's values).

Duplicate names (e.g. ``a/scan.nii.gz`` and ``b/scan.nii.gz`` in a manifest)
get their parent folder name prepended, then a numeric suffix.

:func:`load_scan` reads and validates one job. Every problem is a
``ValueError`` (or ``FileNotFoundError``) with a one-line message, so a batch
can record it and carry on. No torch; pydicom is imported only for DICOM jobs.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from onfh_seg.io.manifest import ManifestError, read_manifest

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
CT_AIR_VALUE = -500.0  # same threshold as onfh_seg.measure.is_mr_like
CT_MAX_FRACTION = 0.05
MANIFEST_KEEP = ("patient_id", "timepoint", "months")


class InputError(ValueError):
    """An unusable input, described in one line."""


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


@dataclass
class LoadedScan:
    """A validated scan: float32 3-D image on its grid plus provenance."""

    image: np.ndarray
    affine: np.ndarray
    header_image: nib.Nifti1Image  # the source image (header carries sform/qform codes)
    sha256: str
    warnings: list[str] = field(default_factory=list)
    source_datasets: list[Any] | None = None  # DICOM headers of the chosen series


# ---------------------------------------------------------------- names


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def scan_stem(path: Path) -> str:
    """``scan.nii.gz`` -> ``scan``; ``scan.nii`` -> ``scan``; other files lose their last suffix."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "scan"
    return path.stem or name


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


def folder_has_dicom(folder: Path) -> bool:
    """True if any file under ``folder`` (any depth) is a DICOM file."""
    return any(p.is_file() and _looks_like_dicom(p) for p in sorted(folder.rglob("*")))


def dicom_job(folder: Path, image_ref: str, rules: dict | None = None) -> ScanJob:
    """One job for a DICOM study folder: choose the T1 series now (headers only).

    A folder without a usable T1 series still becomes a job (named after the
    folder) that fails with the one-line reason.
    """
    from onfh_seg.io.dicom import DicomError, find_series, select_t1_series, series_identifiers

    try:
        series = find_series(folder)
        if not series:
            raise DicomError(f"no DICOM image series found in {folder}")
        chosen, reason = select_t1_series(series, rules)
    except DicomError as exc:
        name = sanitise(folder.resolve().name) or "dicom"
        return ScanJob("dicom", folder, name, image_ref, error=str(exc).splitlines()[0])
    info: dict[str, Any] = {
        "series_instance_uid": chosen.series_uid,
        "series_number": chosen.series_number,
        "series_description": chosen.description,
        "protocol_name": chosen.protocol_name,
        "selection_reason": reason,
        "n_files": chosen.n_files,
        "n_series_found": len(series),
    }
    info.update(series_identifiers(chosen))
    name = dicom_series_name(chosen.series_number, chosen.description or chosen.protocol_name)
    return ScanJob("dicom", folder, name, image_ref, series=chosen, dicom=info)


def _manifest_jobs(manifest: Path, rules: dict | None) -> list[ScanJob]:
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
            job = dicom_job(path, ref, rules)
        else:
            job = ScanJob("nifti", path, scan_stem(path), ref)
        job.labels, job.meta = labels, meta
        jobs.append(job)
    if not jobs:
        raise InputError(f"manifest {manifest} lists no images")
    return jobs


def expand_input(input_path: str | Path, dicom_rules: dict | None = None) -> list[ScanJob]:
    """Scan jobs for ``input=PATH`` (see the module docstring); one-line errors if none."""
    if input_path is None or str(input_path).strip() == "":
        raise InputError("input is empty; give input=FILE.nii.gz, a folder or a manifest .csv")
    path = Path(str(input_path))
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        niftis = sorted(p for p in path.iterdir() if p.is_file() and is_nifti_name(p) and not p.name.startswith("."))
        if niftis:
            jobs = [ScanJob("nifti", p, scan_stem(p), str(p)) for p in niftis]
        elif folder_has_dicom(path):
            jobs = [dicom_job(path, str(path), dicom_rules)]
        else:
            raise InputError(f"no NIfTI (.nii/.nii.gz) or DICOM files found in folder {path}")
    elif path.suffix.lower() == ".csv":
        jobs = _manifest_jobs(path, dicom_rules)
    else:
        jobs = [ScanJob("nifti", path, scan_stem(path), str(path))]
    return _dedupe(jobs)


# ---------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        return sha256_bytes(Path(job.path).read_bytes())
    except OSError:
        return None


# ---------------------------------------------------------------- NIfTI reading


def _nifti_from_bytes(raw: bytes, path: Path) -> nib.Nifti1Image:
    """Parse NIfTI-1/-2 bytes (gzip or plain) into an in-memory image; one-line errors."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"corrupt or truncated gzip file: {path.name} ({exc})") from None
    if len(raw) < 348:
        raise InputError(f"not a NIfTI file (only {len(raw)} bytes): {path.name}")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizes and raw[344:347] in (b"n+1", b"ni1"):
        cls = nib.Nifti1Image
    elif 540 in sizes and len(raw) >= 540 and raw[4:7] in (b"n+2", b"ni2"):
        cls = nib.Nifti2Image
    else:
        raise InputError(f"not a NIfTI file (no NIfTI-1/2 header): {path.name}")
    if raw[344:347] == b"ni1" or raw[4:7] == b"ni2":
        raise InputError(f"NIfTI header/image pairs (.hdr/.img) are not supported; convert to .nii.gz: {path.name}")
    try:
        img = cls.from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for bad headers / short data
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"corrupt or truncated NIfTI image {path.name}: {msg}") from None
    return cls(data, img.affine, img.header)


def load_nifti_checked(path: Path) -> tuple[nib.Nifti1Image, str]:
    """Read a NIfTI file fully; return the image and the sha256 of the file bytes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        raise InputError(f"expected a NIfTI file, got a folder: {path}")
    raw = path.read_bytes()
    if not raw:
        raise InputError(f"empty file: {path.name}")
    return _nifti_from_bytes(raw, path), sha256_bytes(raw)


# ---------------------------------------------------------------- validation


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
    flat = image.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    sample = sample[np.isfinite(sample)]
    return sample.size > 0 and float(np.mean(sample <= CT_AIR_VALUE)) > CT_MAX_FRACTION


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
    if looks_like_ct(image):
        raise InputError("image is not MR-like (looks like CT)")
    return image, warnings


def _orientation_warnings(img: nib.Nifti1Image) -> list[str]:
    hdr = img.header
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        return ["header has no sform/qform orientation: left/right cannot be trusted"]
    return []


def load_scan(job: ScanJob) -> LoadedScan:
    """Read and validate one job's image (NIfTI file or DICOM series)."""
    if job.error:
        raise InputError(job.error)
    if job.kind == "dicom":
        from onfh_seg.io.dicom import load_series

        files = _dicom_files(job)
        sha = dicom_sha256(files)
        img = load_series(job.series)
        image, warnings = validate_image(np.asanyarray(img.dataobj), img.affine)
        return LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, warnings, list(job.series.headers))
    img, sha = load_nifti_checked(job.path)
    image, warnings = validate_image(np.asanyarray(img.dataobj), img.affine)
    return LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, _orientation_warnings(img) + warnings)

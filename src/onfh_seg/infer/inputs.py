"""Inference inputs: expand ``input=PATH`` into scan jobs, load and validate one scan.

``input`` may be

* one NIfTI file (``.nii`` / ``.nii.gz``, any case) -> one job named after the
  file (``scan.nii.gz`` -> ``scan``: the file name without its extension; each
  scan's measurements JSON records its name, image and resolved path, which is
  how onfh-track finds the outputs of a manifest's images);
* a folder: its top-level NIfTI files (sorted by name), one job each; a folder
  without NIfTI files but with DICOM files (at any depth) is one DICOM study
  -> one job, named after the chosen T1 series (``<SeriesNumber>_<description>``);
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

Only regular files are read (a FIFO or device is refused without being
opened for a blocking read). A NIfTI file passes a header gate before its
data are read: the image size (as float32) must fit ``max_image_mb``, a
single-file NIfTI needs ``vox_offset`` >= 352 (NIfTI-2: 544), at least one of
``qform_code``/``sform_code`` must be set (``allow_unknown_orientation``
measures such a file with sides "unknown" instead), the zooms and the affine
must be finite and non-degenerate, the sform and the qform (when both are set)
must agree on the orientation, and the data size must match the header
exactly (a gzip is decompressed with a cap, so a bomb is never unpacked).
A sheared affine is accepted with a warning.

:func:`load_scan` reads and validates one job. Every problem is a
``ValueError`` (or ``FileNotFoundError``) with a one-line message, so a batch
can record it and carry on. No torch; pydicom is imported only for DICOM jobs.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import stat
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
DEFAULT_MAX_IMAGE_MB = 1024.0  # float32 image size: 268 M voxels, e.g. 1024 x 1024 x 256; fits 2 workers in 24 GB
# Per-scan output names of onfh-infer (onfh_seg.infer.pipeline.OUTPUT_SUFFIXES): never inputs.
TOOL_OUTPUT_SUFFIXES = ("_seg.nii.gz", "_seg.dcm", "_sr.dcm", "_overlay.png", "_measurements.json")
MAX_VOX_OFFSET = 64 * 2**20  # header extensions larger than this are not plausible
MIN_VOX_OFFSET = {1: 352, 2: 544}  # single-file NIfTI-1 / NIfTI-2: header + 4 extension bytes
SHEAR_TOLERANCE = 1e-3  # |cos| between voxel axes above which an affine counts as sheared (0.06 degrees)
QFORM_SFORM_TOLERANCE_MM = 0.5  # sform and qform placing a grid corner farther apart than this: a warning


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
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB
    allow_unknown_orientation: bool = False


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


# ---------------------------------------------------------------- names


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_tool_output(path: Path) -> bool:
    """True for file names onfh-infer writes (``<name>_seg.nii.gz``, ``_seg.dcm``, ``_sr.dcm``, ...)."""
    return path.name.lower().endswith(TOOL_OUTPUT_SUFFIXES)


def _absolute(path: Path | str) -> Path:
    """Absolute, normalised path (symlinks resolved where possible)."""
    return Path(os.path.realpath(os.path.abspath(str(path))))


def is_within(path: Path, folder: Path | None) -> bool:
    """True when ``path`` is ``folder`` or lies below it (both made absolute)."""
    if folder is None:
        return False
    path, folder = _absolute(path), _absolute(folder)
    return path == folder or folder in path.parents


def file_kind(mode: int) -> str:
    """A short name for a non-regular file type (FIFO, device, socket, ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def require_regular_file(path: Path) -> os.stat_result:
    """``os.stat`` of ``path``; one-line error unless it is a regular file (never opens it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"input not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"not a regular file ({file_kind(st.st_mode)}): {path}; give a NIfTI file, a folder or a .csv")
    return st


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


def dicom_job(folder: Path, image_ref: str, rules: dict | None = None, exclude: Path | None = None) -> ScanJob:
    """One job for a DICOM study folder: choose the T1 series now (headers only).

    A folder without a usable T1 series still becomes a job (named after the
    folder) that fails with the one-line reason.
    """
    from onfh_seg.io.dicom import DicomError, find_series, select_t1_series, series_identifiers

    try:
        series = find_series(folder, exclude=exclude)
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
    if chosen.duplicates:
        info["duplicate_instances_skipped"] = chosen.duplicates  # same SOPInstanceUID found twice
    info.update(series_identifiers(chosen))
    name = dicom_series_name(chosen.series_number, chosen.description or chosen.protocol_name)
    return ScanJob("dicom", folder, name, image_ref, series=chosen, dicom=info)


def _manifest_jobs(manifest: Path, rules: dict | None, out_dir: Path | None = None) -> list[ScanJob]:
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
            job = dicom_job(path, ref, rules, exclude=_exclusion(path, out_dir))
        else:
            job = ScanJob("nifti", path, scan_stem(path), ref)
        if is_tool_output(path):
            job.error = f"{ref} is an onfh-infer output (*_seg.nii.gz, *_seg.dcm, *_sr.dcm, ...), not a scan"
        elif guard_out_dir and is_within(path, out_dir):
            job.error = f"{ref} lies in out_dir {out_dir}; outputs are never taken as inputs"
        job.labels, job.meta = labels, meta
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
) -> list[ScanJob]:
    """Scan jobs for ``input=PATH`` (see the module docstring); one-line errors if none.

    ``out_dir`` (the run's results folder) is never searched for inputs;
    ``max_image_mb`` and ``allow_unknown_orientation`` are kept with each job
    for :func:`load_scan`.
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
            if p.is_file() and is_nifti_name(p) and not p.name.startswith(".") and not is_tool_output(p)
        )
        exclude = _exclusion(path, out)
        if niftis:
            jobs = [ScanJob("nifti", p, scan_stem(p), str(p)) for p in niftis]
        elif folder_has_dicom(path, exclude):
            jobs = [dicom_job(path, str(path), dicom_rules, exclude=exclude)]
        else:
            raise InputError(
                f"no NIfTI (.nii/.nii.gz) or DICOM files found in folder {path} "
                "(onfh-infer outputs such as *_seg.nii.gz are not inputs)"
            )
    elif path.suffix.lower() == ".csv":
        jobs = _manifest_jobs(path, dicom_rules, out)
    else:
        require_regular_file(path)
        if is_tool_output(path):
            raise InputError(f"{path} is an onfh-infer output (*_seg.nii.gz, *_seg.dcm, ...), not a scan")
        jobs = [ScanJob("nifti", path, scan_stem(path), str(path))]
    limit = DEFAULT_MAX_IMAGE_MB if max_image_mb is None else float(max_image_mb)
    if not limit > 0:
        raise InputError(f"max_image_mb must be positive, got {max_image_mb!r}")
    for job in jobs:
        job.max_image_mb, job.allow_unknown_orientation = limit, bool(allow_unknown_orientation)
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


def sha256_regular_file(path: Path) -> str:
    """sha256 of a regular file, streamed in 1 MiB chunks (InputError for FIFOs, devices, folders)."""
    require_regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_sha256(job: ScanJob) -> str | None:
    """sha256 of the job's input (file bytes; a DICOM series' files), None if unreadable."""
    try:
        if job.kind == "dicom":
            return None if job.series is None else dicom_sha256(_dicom_files(job))
        return sha256_regular_file(Path(job.path))
    except (OSError, InputError):
        return None


# ---------------------------------------------------------------- NIfTI reading


def _header_of(head: bytes, path: Path) -> nib.Nifti1Header:
    """The NIfTI-1/-2 header at the start of ``head`` (decompressed bytes); one-line errors."""
    if len(head) < 348:
        raise InputError(f"not a NIfTI file (only {len(head)} bytes): {path.name}")
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 348 in sizes and head[344:347] in (b"n+1", b"ni1"):
        cls, size = nib.Nifti1Header, 348
    elif 540 in sizes and len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
        cls, size = nib.Nifti2Header, 540
    else:
        raise InputError(f"not a NIfTI file (no NIfTI-1/2 header): {path.name}")
    if head[344:347] == b"ni1" or head[4:7] == b"ni2":
        raise InputError(f"NIfTI header/image pairs (.hdr/.img) are not supported; convert to .nii.gz: {path.name}")
    try:
        return cls(head[:size], check=False)
    except Exception as exc:  # nibabel raises several types for bad headers
        raise InputError(f"corrupt NIfTI header in {path.name}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


def data_layout(hdr: nib.Nifti1Header, path: Path) -> tuple[tuple[int, ...], int, int]:
    """Shape, data offset and data size (bytes) promised by a header; one-line errors if unusable."""
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        itemsize = int(hdr.get_data_dtype().itemsize)
    except Exception as exc:  # bad dim[0] / unknown datatype code
        raise InputError(f"corrupt NIfTI header in {path.name}: {_first_line(exc)}") from None
    if not shape or any(n <= 0 for n in shape):
        raise InputError(f"corrupt NIfTI header in {path.name}: dimensions {shape}")
    offset = float(hdr["vox_offset"])
    version = 2 if isinstance(hdr, nib.Nifti2Header) else 1
    if not math.isfinite(offset) or offset != int(offset):
        raise InputError(f"corrupt NIfTI header in {path.name}: vox_offset {offset}")
    if offset > MAX_VOX_OFFSET:
        raise InputError(f"corrupt NIfTI header in {path.name}: vox_offset {offset:g} beyond {MAX_VOX_OFFSET} bytes")
    if offset < MIN_VOX_OFFSET[version]:
        raise InputError(
            f"vox_offset {offset:g} < {MIN_VOX_OFFSET[version]} in a single-file NIfTI-{version}: "
            f"header and image data overlap (corrupt header): {path.name}"
        )
    return shape, int(offset), math.prod(shape) * itemsize


def check_size_limit(shape: tuple[int, ...], nbytes: int, max_image_mb: float, name: str) -> None:
    """InputError when the image (as float32, or its stored data) exceeds ``max_image_mb``."""
    mb = max(math.prod(shape) * 4, nbytes) / 2**20
    if mb > max_image_mb:
        dims = "x".join(map(str, shape))
        raise InputError(
            f"image too large: {dims} voxels = {mb:.0f} MiB in memory, above max_image_mb={max_image_mb:g} "
            f"(raise max_image_mb if this machine has the memory): {name}"
        )


def read_nifti_bytes(path: Path, max_image_mb: float = DEFAULT_MAX_IMAGE_MB) -> tuple[bytes, str]:
    """The decompressed NIfTI bytes of a regular file (header + data, exactly) and the file's sha256.

    The header is read first; its promised size is checked against
    ``max_image_mb`` before any data are read, and reading (decompressing)
    stops one byte past what the header promises, so neither a huge file nor
    a gzip bomb is ever held in memory. The data must have exactly the
    promised size. The sha256 is a second, streamed pass over the file.
    """
    st = require_regular_file(path)
    if st.st_size == 0:
        raise InputError(f"empty file: {path.name}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks on a FIFO swapped in
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"not a regular file: {path}")
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        try:
            stream: Any = gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh
            head = stream.read(540)
            hdr = _header_of(head, path)
            shape, offset, nbytes = data_layout(hdr, path)
            check_size_limit(shape, nbytes, max_image_mb, path.name)
            expected = offset + nbytes
            data = head + stream.read(max(0, expected - len(head)) + 1)  # one byte more: longer data is seen
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"corrupt or truncated gzip file: {path.name} ({_first_line(exc)})") from None
    layout = f"{'x'.join(map(str, shape))} of {hdr.get_data_dtype()}"
    if len(data) < expected:
        raise InputError(
            f"truncated NIfTI data: {max(0, len(data) - offset)} bytes where the header promises {nbytes} "
            f"({layout}): {path.name}"
        )
    if len(data) > expected:
        raise InputError(
            f"data size does not match the header: more than the {nbytes} bytes it promises ({layout}); "
            f"corrupt dimensions or data type?: {path.name}"
        )
    return data, sha256_regular_file(path)


def _nifti_from_bytes(raw: bytes, path: Path) -> nib.Nifti1Image:
    """Parse decompressed NIfTI-1/-2 bytes into an in-memory image; one-line errors."""
    hdr = _header_of(raw[:540], path)
    cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    try:
        img = cls.from_bytes(raw)
        if not np.all(np.isfinite(img.affine)):
            raise InputError(f"image affine is not finite (sform/qform): {path.name}")
        data = np.asanyarray(img.dataobj)
        return cls(data, img.affine, img.header)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises several types for bad headers / short data / odd affines
        raise InputError(f"corrupt or truncated NIfTI image {path.name}: {_first_line(exc)}") from None


def load_nifti_checked(path: Path, max_image_mb: float = DEFAULT_MAX_IMAGE_MB) -> tuple[nib.Nifti1Image, str]:
    """Read a NIfTI file fully (size-capped, see :func:`read_nifti_bytes`); the image and the file's sha256."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        raise InputError(f"expected a NIfTI file, got a folder: {path}")
    raw, sha = read_nifti_bytes(path, max_image_mb)
    return _nifti_from_bytes(raw, path), sha


def load_nifti_gated(
    path: Path, max_image_mb: float = DEFAULT_MAX_IMAGE_MB, allow_unknown_orientation: bool = False
) -> tuple[nib.Nifti1Image, str, list[str], bool]:
    """:func:`load_nifti_checked` plus :func:`header_gate` on the header as stored: image, sha256,
    warnings and whether the orientation is unknown."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    raw, sha = read_nifti_bytes(path, max_image_mb)
    warnings, unknown = header_gate(_header_of(raw[:540], path), path.name, allow_unknown_orientation)
    return _nifti_from_bytes(raw, path), sha, warnings, unknown


# ---------------------------------------------------------------- header gate


def _axcodes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def shear_degrees(affine: np.ndarray) -> float:
    """Largest deviation from 90 degrees between two voxel axes of an affine."""
    axes = np.asarray(affine, np.float64)[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    cos = unit.T @ unit
    worst = float(np.max(np.abs(cos - np.eye(3))))
    return float(np.degrees(np.arcsin(min(1.0, worst))))


def header_gate(hdr: nib.Nifti1Header, name: str, allow_unknown_orientation: bool = False) -> tuple[list[str], bool]:
    """Refuse NIfTI headers that cannot be measured safely; return warnings and "orientation unknown".

    Refused (InputError, one line): invalid xform codes; no orientation at all
    (both codes 0) unless ``allow_unknown_orientation``; non-finite or zero
    zooms; an sform and a qform that disagree on the axis orientation (which
    side is left). Warned: sform and qform that differ by more than
    ``QFORM_SFORM_TOLERANCE_MM``, an unusable qform next to a good sform, and
    a sheared affine. ``hdr`` is the header as stored (before nibabel's fixes).
    """
    warnings: list[str] = []
    q_code, s_code = int(hdr["qform_code"]), int(hdr["sform_code"])
    if not (0 <= q_code <= 5 and 0 <= s_code <= 5):
        raise InputError(f"invalid qform_code {q_code} / sform_code {s_code} (0-5 allowed): {name}")
    zooms = np.asarray(hdr["pixdim"][1:4], np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms == 0.0):
        raise InputError(f"invalid voxel sizes (pixdim {zooms.tolist()}): {name}")
    unknown = q_code == 0 and s_code == 0
    if unknown and not allow_unknown_orientation:
        raise InputError(
            "no orientation in the header (qform_code and sform_code both 0): left and right cannot be told; "
            f"fix the header, or set allow_unknown_orientation=true to measure with sides 'unknown': {name}"
        )
    if unknown:
        warnings.append("header has no sform/qform orientation: sides reported as 'unknown'")
    if q_code > 0 and s_code > 0:
        warnings += _compare_qform_sform(hdr, name)
    try:
        affine = np.asarray(hdr.get_best_affine(), np.float64)
    except Exception:  # an unusable qform/sform: refused by check_affine on the loaded image
        affine = np.full((4, 4), np.nan)
    finite = np.all(np.isfinite(affine)) and np.all(np.linalg.norm(affine[:3, :3], axis=0) > 0)
    shear = shear_degrees(affine) if finite else 0.0
    if shear > np.degrees(np.arcsin(SHEAR_TOLERANCE)):
        warnings.append(
            f"sheared affine: voxel axes {shear:.2f} degrees from orthogonal (the DICOM reader refuses sheared "
            "stacks); volumes use the affine's voxel volume, check the geometry"
        )
    return warnings, unknown


def _compare_qform_sform(hdr: nib.Nifti1Header, name: str) -> list[str]:
    """Warnings when the sform (used) and the qform differ; InputError if they disagree on orientation."""
    sform = np.asarray(hdr.get_sform(), np.float64)
    try:
        qform = np.asarray(hdr.get_qform(), np.float64)
    except Exception:  # invalid quaternion
        return ["qform is invalid (the sform is used)"]
    if not (np.all(np.isfinite(qform)) and np.all(np.isfinite(sform))):
        return ["qform is not finite (the sform is used)"] if np.all(np.isfinite(sform)) else []
    try:
        q_axes, s_axes = _axcodes(qform), _axcodes(sform)
    except Exception:  # a singular matrix: refused later by check_affine (sform) or ignored (qform)
        return ["qform is degenerate (the sform is used)"]
    if q_axes != s_axes:
        raise InputError(
            f"sform ({s_axes}) and qform ({q_axes}) disagree on the orientation: left/right is ambiguous: {name}"
        )
    diff = corner_distance_mm(sform, qform, hdr.get_data_shape()[:3])
    if diff > QFORM_SFORM_TOLERANCE_MM:
        return [f"sform and qform place the image up to {diff:.3g} mm apart; the sform is used"]
    return []


def corner_distance_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where affines ``a`` and ``b`` put the corners of a grid of ``shape``."""
    extent = [max(int(n) - 1, 0) for n in tuple(shape)[:3]] + [0] * (3 - len(tuple(shape)[:3]))
    corners = np.array([[i, j, k, 1.0] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])])
    return float(np.max(np.linalg.norm((corners @ (a - b).T)[:, :3], axis=1)))


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


def load_scan(job: ScanJob) -> LoadedScan:
    """Read and validate one job's image (NIfTI file or DICOM series)."""
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
        return LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, warnings, list(job.series.headers))
    img, sha, gate_warnings, unknown = load_nifti_gated(Path(job.path), job.max_image_mb, job.allow_unknown_orientation)
    image, warnings = validate_image(np.asanyarray(img.dataobj), img.affine)
    return LoadedScan(image, np.asarray(img.affine, np.float64), img, sha, gate_warnings + warnings,
                      orientation_unknown=unknown)

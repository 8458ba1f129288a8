"""DICOM input: find the series of a study and build a NIfTI volume from one (``io.dicom_select`` picks the T1 series).

Geometry conventions (shared with :mod:`onfh_seg.io.dicom_out`):

* slices are sorted by the projection of ImagePositionPatient on the slice
  normal ``cross(row_direction, column_direction)`` (ascending);
* the NIfTI array is indexed ``[i, j, k] = [column, row, sorted slice]``, i.e.
  ``data[:, :, k] = pixel_array_of_slice_k.T``;
* the affine maps ``(i, j, k)`` to RAS+ millimetres (DICOM LPS with x and y
  negated); in-plane spacing comes from PixelSpacing = (row spacing, column
  spacing) and the slice spacing from the slice positions, never from
  SliceThickness.

Only patient/study identifiers (PatientID, StudyInstanceUID, AccessionNumber,
StudyDate) ever leave this module; names and birth dates are never copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from onfh_seg.io.nifti import make_image


class DicomError(ValueError):
    """A DICOM input problem, described in one line."""


# SOP classes that never hold an image volume (prefix match on SOPClassUID).
NON_IMAGE_SOP_CLASS_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key objects
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, SEG, fiducials
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.481.",  # radiotherapy objects
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.91.",  # bulk annotations
    "1.2.840.10008.5.1.4.1.1.67",  # real-world value mapping
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR spectroscopy
    "1.2.840.10008.5.1.4.38.",  # hanging protocols
    "1.2.840.10008.5.1.4.39.",  # colour palettes
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)

ORIENTATION_TOLERANCE = 1e-4  # direction cosine difference between slices
SPACING_TOLERANCE = 1e-3  # mm, pixel spacing difference between slices
PIXEL_SPACING_RANGE_MM = (1e-3, 1e3)  # PixelSpacing outside this is not an image grid (corrupt header)
SLICE_GAP_TOLERANCE = 0.05  # fraction of the slice spacing a gap may deviate
IN_PLANE_OFFSET_TOLERANCE = 0.05  # mm, slice origins off the slice-normal line


@dataclass(frozen=True, eq=False)
class SeriesInfo:
    """One DICOM image series: its files and their headers (no pixel data)."""

    series_uid: str
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]
    duplicates: int = 0  # files skipped because their SOPInstanceUID was already read (series copied twice)

    def _first(self, keyword: str, default: Any = None) -> Any:
        return self.headers[0].get(keyword, default) if self.headers else default

    @property
    def description(self) -> str:
        return str(self._first("SeriesDescription", "") or "")

    @property
    def protocol_name(self) -> str:
        return str(self._first("ProtocolName", "") or "")

    @property
    def series_number(self) -> int | None:
        value = self._first("SeriesNumber")
        return int(value) if value not in (None, "") else None

    @property
    def modality(self) -> str:
        return str(self._first("Modality", "") or "")

    @property
    def n_files(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """Short human-readable name, e.g. ``#3 't1_tse_cor'``."""
        return f"#{self.series_number} '{self.description or self.protocol_name}'"


# ---------------------------------------------------------------------------
# finding series


def _read_header(path: Path) -> Dataset | None:
    """Read a DICOM header without pixel data; ``None`` for non-DICOM files."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # unreadable or corrupt files belong to no series
        return None


def is_image_header(ds: Dataset) -> bool:
    """True for headers of image objects (not SR, SEG, presentation states, ...)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class or "SeriesInstanceUID" not in ds:
        return False
    if any(sop_class.startswith(prefix) for prefix in NON_IMAGE_SOP_CLASS_PREFIXES):
        return False
    return "Rows" in ds and "Columns" in ds


def _under(path: Path, folder: Path | None) -> bool:
    """True when ``path`` is ``folder`` or lies below it (absolute, symlinks resolved)."""
    if folder is None:
        return False
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return p == f or f in p.parents


def find_series(folder: str | Path, exclude: str | Path | None = None) -> list[SeriesInfo]:
    """Walk ``folder`` recursively and group its DICOM image files by SeriesInstanceUID.

    Only regular files are read, and none under ``exclude`` (e.g. the run's
    out_dir). An instance found twice (the same
    SOPInstanceUID, e.g. a series copied into two sub-folders) is read once:
    the first file in path order is kept and the others are counted in
    ``SeriesInfo.duplicates``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"not a folder: {folder}")
    skip = Path(exclude) if exclude is not None else None
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    seen: set[str] = set()
    duplicates: dict[str, int] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _under(p, skip)):
        ds = _read_header(path)
        if ds is None or not is_image_header(ds):
            continue
        uid = str(ds.SeriesInstanceUID)
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if sop and sop in seen:
            duplicates[uid] = duplicates.get(uid, 0) + 1
            continue
        if sop:
            seen.add(sop)
        groups.setdefault(uid, []).append((path, ds))
    series = [
        SeriesInfo(uid, tuple(p for p, _ in items), tuple(d for _, d in items), duplicates.get(uid, 0))
        for uid, items in groups.items()
    ]
    return sorted(series, key=lambda s: (s.series_number or 0, s.series_uid))


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# geometry


def _vector(ds: Dataset, keyword: str, length: int) -> np.ndarray:
    """A numeric multi-value attribute as a float array, or DicomError."""
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise DicomError(f"missing or invalid {keyword} in instance {ds.get('SOPInstanceUID', '?')}") from None
    if arr.shape != (length,) or not np.all(np.isfinite(arr)):
        raise DicomError(f"invalid {keyword} in instance {ds.get('SOPInstanceUID', '?')}")
    return arr


def slice_directions(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row direction, column direction and slice normal (LPS) of one instance.

    The row direction is the direction of increasing column index (first three
    ImageOrientationPatient values), the column direction that of increasing
    row index.
    """
    iop = _vector(ds, "ImageOrientationPatient", 6)
    row_dir, col_dir = iop[:3], iop[3:]
    if np.linalg.norm(row_dir) < 1e-6 or np.linalg.norm(col_dir) < 1e-6:
        raise DicomError("ImageOrientationPatient has a zero vector")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    if abs(float(np.dot(row_dir, col_dir))) > 1e-3:
        raise DicomError("ImageOrientationPatient rows and columns are not orthogonal")
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def slice_name(ds: Dataset) -> str:
    """How a message names one slice: its file name and InstanceNumber, e.g. ``IM0003.dcm (InstanceNumber 3)``."""
    file_name = Path(str(getattr(ds, "filename", "") or "")).name
    number = ds.get("InstanceNumber")
    parts = [file_name] if file_name else []
    if number not in (None, ""):
        parts.append(f"(InstanceNumber {number})")
    return " ".join(parts) or f"SOPInstanceUID {ds.get('SOPInstanceUID', '?')}"


# Tags every slice of a series must share exactly: pixel format, rescale and identity (a slice of another
# patient, study or frame of reference, or one whose values are scaled or stored differently, is refused).
SAME_VALUE_KEYWORDS: tuple[str, ...] = (
    "PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PhotometricInterpretation",
)
RESCALE_DEFAULTS: dict[str, float] = {"RescaleSlope": 1.0, "RescaleIntercept": 0.0}


def _tag_text(ds: Dataset, keyword: str) -> str:
    """A tag's value as text for comparisons and messages ("absent" when missing)."""
    if keyword not in ds:
        return "absent"
    value = ds.get(keyword)
    return "empty" if value in (None, "") else str(value)


def check_pixel_spacing(ds: Dataset) -> np.ndarray:
    """PixelSpacing of one slice: two finite values > 0 mm, else DicomError naming the slice."""
    spacing = _vector(ds, "PixelSpacing", 2)
    values = " \\ ".join(f"{v:g}" for v in spacing)
    if np.any(spacing <= 0.0):
        raise DicomError(f"invalid PixelSpacing {values} in slice {slice_name(ds)}: spacing must be positive")
    lo, hi = PIXEL_SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        raise DicomError(f"implausible PixelSpacing {values} in slice {slice_name(ds)} (expected {lo:g}-{hi:g} mm)")
    return spacing


def rescale_of(ds: Dataset) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of one slice (1, 0 when absent); DicomError if unusable."""
    values = []
    for keyword, default in RESCALE_DEFAULTS.items():
        raw = ds.get(keyword)
        value = default if raw in (None, "") else _float_or_none(raw)
        if value is None or not np.isfinite(value):
            raise DicomError(f"invalid {keyword} {raw!r} in slice {slice_name(ds)}")
        values.append(float(value))
    if values[0] <= 0.0:
        raise DicomError(f"invalid RescaleSlope {values[0]:g} in slice {slice_name(ds)}: slope must be positive")
    return values[0], values[1]


def _check_same_geometry(headers: Sequence[Dataset]) -> None:
    """DicomError (one line naming the tag and the slice) unless all slices share orientation, positive pixel
    spacing, matrix, pixel format, rescale, patient, study and frame of reference."""
    first = headers[0]
    iop0 = _vector(first, "ImageOrientationPatient", 6)
    ps0 = check_pixel_spacing(first)
    rescale0 = rescale_of(first)
    same0 = {key: _tag_text(first, key) for key in SAME_VALUE_KEYWORDS}
    for ds in headers[1:]:
        where = f"slice {slice_name(ds)} differs from slice {slice_name(first)}"
        if np.max(np.abs(_vector(ds, "ImageOrientationPatient", 6) - iop0)) > ORIENTATION_TOLERANCE:
            raise DicomError(f"mixed geometry: different ImageOrientationPatient within the series ({where})")
        if np.max(np.abs(check_pixel_spacing(ds) - ps0)) > SPACING_TOLERANCE:
            raise DicomError(f"mixed geometry: different PixelSpacing within the series ({where})")
        for key, value0 in same0.items():
            value = _tag_text(ds, key)
            if value != value0:
                what = "image matrix (Rows/Columns)" if key in ("Rows", "Columns") else key
                raise DicomError(f"inconsistent slices: different {what} within the series ({key} {value} in {where}, "
                                 f"which has {value0})")
        rescale = rescale_of(ds)
        for key, value, value0 in zip(RESCALE_DEFAULTS, rescale, rescale0):
            if value != value0:
                raise DicomError(f"inconsistent slices: different {key} within the series ({key} {value:g} in {where}, "
                                 f"which has {value0:g})")


def sort_slices(headers: Sequence[Dataset]) -> list[Dataset]:
    """Validate a single-frame series and sort it along the slice normal.

    Raises DicomError for multi-frame objects, a single slice, mixed geometry,
    duplicate positions, missing slices (non-uniform spacing) or sheared stacks.
    """
    headers = list(headers)
    if not headers:
        raise DicomError("series has no files")
    for ds in headers:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError("multi-frame (enhanced) DICOM images are not supported; export single-frame images")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise DicomError("colour (multi-sample) DICOM images are not supported")
    if len(headers) < 2:
        raise DicomError("single-slice series: a 3D volume needs at least 2 slices")
    _check_same_geometry(headers)
    _, _, normal = slice_directions(headers[0])
    positions = [_vector(ds, "ImagePositionPatient", 3) for ds in headers]
    order = np.argsort([float(np.dot(p, normal)) for p in positions], kind="stable")
    headers = [headers[i] for i in order]
    positions = [positions[i] for i in order]
    _check_slice_positions(np.asarray(positions), normal)
    return headers


def _check_slice_positions(positions: np.ndarray, normal: np.ndarray) -> None:
    """DicomError on duplicate, missing (uneven) or off-axis slice positions."""
    heights = positions @ normal
    gaps = np.diff(heights)
    if np.any(gaps < 1e-3):
        raise DicomError("duplicate slice positions in the series (several echoes, phases or time points?)")
    spacing = float(np.median(gaps))
    worst = float(np.max(np.abs(gaps - spacing)))
    if worst > SLICE_GAP_TOLERANCE * spacing:
        raise DicomError(
            f"missing slices: slice spacing not uniform (gaps {gaps.min():.3f}..{gaps.max():.3f} mm, "
            f"median {spacing:.3f} mm)"
        )
    offsets = positions - positions[0] - np.outer(heights - heights[0], normal)
    if float(np.max(np.linalg.norm(offsets, axis=1))) > IN_PLANE_OFFSET_TOLERANCE:
        raise DicomError("slices are not stacked along the slice normal (gantry tilt or sheared stack)")


def series_affine(sorted_headers: Sequence[Dataset]) -> np.ndarray:
    """RAS+ affine of the volume built from ``sorted_headers`` (see module docstring)."""
    row_dir, col_dir, normal = slice_directions(sorted_headers[0])
    row_spacing, col_spacing = check_pixel_spacing(sorted_headers[0])
    first = _vector(sorted_headers[0], "ImagePositionPatient", 3)
    last = _vector(sorted_headers[-1], "ImagePositionPatient", 3)
    slice_spacing = float(np.dot(last - first, normal)) / (len(sorted_headers) - 1)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i: column index, along the row direction
    lps[:3, 1] = col_dir * row_spacing  # j: row index, along the column direction
    lps[:3, 2] = normal * slice_spacing
    lps[:3, 3] = first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def series_shape(sorted_headers: Sequence[Dataset]) -> tuple[int, int, int]:
    """NIfTI array shape ``(columns, rows, slices)``."""
    first = sorted_headers[0]
    return int(first.Columns), int(first.Rows), len(sorted_headers)


# ---------------------------------------------------------------------------
# pixel data


def _decoder_available(syntax: UID) -> bool:
    """True when pydicom can decode pixel data of this transfer syntax here."""
    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _read_pixels(path: Path) -> tuple[np.ndarray, float, float]:
    """Pixel array (rows, columns) of one file and its rescale slope/intercept."""
    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DicomError(f"cannot read {path.name}: {exc}") from None
    if "PixelData" not in ds:
        raise DicomError(f"{path.name} has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax_name = getattr(syntax, "name", str(syntax))
    if syntax is not None and not _decoder_available(syntax):
        raise DicomError(
            f"compressed transfer syntax '{syntax_name}' has no available decoder; "
            "decompress the series first (e.g. gdcmconv --raw) or install a pydicom pixel plugin"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; report them in one line
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise DicomError(
            f"cannot decode pixel data with transfer syntax '{syntax_name}' in {path.name}: {detail}"
        ) from None
    if pixels.shape != (int(ds.Rows), int(ds.Columns)):
        raise DicomError(f"{path.name}: pixel array shape {pixels.shape} does not match Rows/Columns")
    slope, intercept = rescale_of(ds)
    return pixels, slope, intercept


def _stack_slices(slices: Sequence[tuple[np.ndarray, float, float]]) -> np.ndarray:
    """Stack (rows, cols) slices as [col, row, k]; int16 when exact, else float32."""
    raw = np.stack([s[0] for s in slices], axis=-1).transpose(1, 0, 2)
    slopes = np.array([s[1] for s in slices])
    intercepts = np.array([s[2] for s in slices])
    scaled = raw.astype(np.float64) * slopes + intercepts
    exact = np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts))
    if exact and scaled.min() >= np.iinfo(np.int16).min and scaled.max() <= np.iinfo(np.int16).max:
        return scaled.astype(np.int16)
    return scaled.astype(np.float32)


def load_series(series: SeriesInfo) -> nib.Nifti1Image:
    """Read a series into a NIfTI image (RAS+ affine, rescale applied, geometry checked)."""
    path_of = {id(ds): path for ds, path in zip(series.headers, series.files)}
    sorted_headers = sort_slices(series.headers)
    slices = [_read_pixels(path_of[id(ds)]) for ds in sorted_headers]
    data = _stack_slices(slices)
    affine = series_affine(sorted_headers)
    try:
        return make_image(data, affine, data.dtype)
    except Exception:  # nibabel cannot turn the affine into a qform (degenerate or non-finite axes)
        raise DicomError("the series geometry (PixelSpacing, ImageOrientationPatient, ImagePositionPatient) "
                         "gives a degenerate voxel grid") from None


# ---------------------------------------------------------------------------
# convenience


IDENTIFIER_KEYWORDS: tuple[str, ...] = ("PatientID", "StudyInstanceUID", "AccessionNumber", "StudyDate")


def _values_of(series: Sequence[SeriesInfo], keyword: str) -> dict[str, Dataset]:
    """The distinct values of ``keyword`` over every instance of ``series``, each with the first slice that has it."""
    found: dict[str, Dataset] = {}
    for s in series:
        for ds in s.headers:
            found.setdefault(str(ds.get(keyword, "") or ""), ds)
    return found


def check_one_patient(series: Sequence[SeriesInfo], folder: str | Path) -> None:
    """DicomError unless every image instance under ``folder`` belongs to one patient and one study.

    A folder holding two patients (PatientID) or two studies (StudyInstanceUID) is refused, naming each
    identifier and a slice that has it: the tool never picks one of them by ranking.
    """
    name = Path(folder).name or str(folder)
    for keyword, what, advice in (("PatientID", "patients", "one patient's study"), ("StudyInstanceUID", "studies", "one study")):
        values = _values_of(series, keyword)
        if len(values) > 1:
            listed = ", ".join(f"{v!r} in {slice_name(ds)}" for v, ds in values.items())
            raise DicomError(f"folder {name} holds {len(values)} {what} ({keyword} {listed}): "
                             f"give {advice} per folder or manifest row")


def check_manifest_patient(series: SeriesInfo, patient_id: str | None) -> None:
    """DicomError when a manifest row's ``patient_id`` differs from the PatientID of its DICOM series."""
    dicom_id = str(series.headers[0].get("PatientID", "") or "").strip() if series.headers else ""
    wanted = str(patient_id or "").strip()
    if wanted and dicom_id and wanted != dicom_id:
        raise DicomError(f"manifest patient_id {wanted!r} does not match the DICOM PatientID {dicom_id!r} of "
                         f"series {series.label()}: wrong folder on this row?")


def series_identifiers(series: SeriesInfo) -> dict[str, str]:
    """The only patient/study attributes that may be copied into outputs."""
    ds = series.headers[0]
    return {key: str(ds.get(key, "") or "") for key in IDENTIFIER_KEYWORDS}

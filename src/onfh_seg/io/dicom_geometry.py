"""DICOM input: the checks every slice of a series must pass, slice order and the voxel grid of the volume.

Geometry conventions (shared with :mod:`onfh_seg.io.dicom_out`):

* slices are sorted by the projection of ImagePositionPatient on the slice
  normal ``cross(row_direction, column_direction)`` (ascending);
* the NIfTI array is indexed ``[i, j, k] = [column, row, sorted slice]``, i.e.
  ``data[:, :, k] = pixel_array_of_slice_k.T``;
* the affine maps ``(i, j, k)`` to RAS+ millimetres (DICOM LPS with x and y
  negated); in-plane spacing comes from PixelSpacing = (row spacing, column
  spacing) and the slice spacing from the slice positions, never from
  SliceThickness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from onfh_seg.io.dicom_series import DicomError, float_or_none, slice_name

ORIENTATION_TOLERANCE = 1e-4  # direction cosine difference between slices
SPACING_TOLERANCE = 1e-3  # mm, pixel spacing difference between slices
PIXEL_SPACING_RANGE_MM = (1e-3, 1e3)  # PixelSpacing outside this is not an image grid (corrupt header)
SLICE_GAP_TOLERANCE = 0.05  # fraction of the slice spacing a gap may deviate
IN_PLANE_OFFSET_TOLERANCE = 0.05  # mm, slice origins off the slice-normal line


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
        value = default if raw in (None, "") else float_or_none(raw)
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

"""DICOM input: build a NIfTI volume from one series (``load_series``): pixel data decoded, rescaled and stacked on
the grid of ``io.dicom_geometry``.

The DICOM reader is split in three: ``io.dicom_series`` finds the series of a study folder (and holds
``DicomError``, ``SeriesInfo`` and the identifiers that may leave the reader), ``io.dicom_geometry`` checks
and sorts the slices, this module reads the pixels. ``io.dicom_select`` picks the T1 series.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from onfh_seg.io.dicom_geometry import rescale_of, series_affine, sort_slices
from onfh_seg.io.dicom_series import DicomError, SeriesInfo
from onfh_seg.io.nifti import make_image


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

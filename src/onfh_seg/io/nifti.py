"""NIfTI images: built with sform and qform set, saved atomically and byte-reproducibly, loaded into memory."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from onfh_seg.io.files import atomic_write_bytes


def make_image(data: np.ndarray, affine: np.ndarray, dtype: type | np.dtype) -> nib.Nifti1Image:
    """Build a NIfTI-1 image with sform and qform both set to ``affine`` (code 1, scanner)."""
    arr = np.asarray(data).astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_data_dtype(dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["xyzt_units"] = 2  # mm
    return img


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path, dtype=np.int16) -> None:
    """Save an array as NIfTI atomically; ``.nii.gz`` output is gzip with mtime 0 (byte-reproducible)."""
    img = make_image(data, affine, dtype)
    raw = img.to_bytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    atomic_write_bytes(path, raw)


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI image fully into memory (raises on missing/corrupt files)."""
    img = nib.load(str(path))
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    return img

"""NIfTI reading and atomic, byte-reproducible writing."""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

TMP_MARK = ".onfh-tmp-"  # in the name of every temporary file this package writes (see atomic_write_bytes)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".<name>.onfh-tmp-<pid>-<random>.tmp": start-up clean-up removes only these, and only when <pid> is gone
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_dict(path: str | Path) -> dict | None:
    """A JSON object file as a dict; None when it is missing, unreadable, not JSON or not an object."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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

"""Reading one NIfTI input safely: regular files only, a streamed read with a size cap and the header gate
(used by ``infer.inputs.load_scan``).

Only regular files are read (``infer.input_files``). A NIfTI file passes a
header gate before its data are read: the image size (as float32) must fit
``max_image_mb``, a single-file NIfTI needs ``vox_offset`` >= 352 (NIfTI-2:
544), the orientation codes, zooms and sform/qform must pass
``infer.header_gate``, and the data size must match the header exactly (a gzip
is decompressed with a cap, so a bomb is never unpacked). The checks of the
loaded array are in ``infer.image_checks``.

Every problem is an ``InputError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from onfh_seg.infer.header_gate import header_gate
from onfh_seg.infer.input_files import InputError, require_regular_file, sha256_regular_file

DEFAULT_MAX_IMAGE_MB = 1024.0  # float32 image size: 268 M voxels, e.g. 1024 x 1024 x 256; fits 2 workers in 24 GB
MAX_VOX_OFFSET = 64 * 2**20  # header extensions larger than this are not plausible
MIN_VOX_OFFSET = {1: 352, 2: 544}  # single-file NIfTI-1 / NIfTI-2: header + 4 extension bytes


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
    """The first line of an exception's message, worded for a user where nibabel's is cryptic."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("Could not decompose affine"):
        return "the affine cannot be written as a qform (degenerate or non-finite voxel axes)"
    if isinstance(exc, KeyError):
        return f"unknown code {exc.args[0]!r}" if exc.args else "unknown code"
    return text


def data_layout(hdr: nib.Nifti1Header, path: Path) -> tuple[tuple[int, ...], int, int]:
    """Shape, data offset and data size (bytes) promised by a header; one-line errors if unusable."""
    code = int(hdr["datatype"])
    if code not in nib.nifti1.data_type_codes.code:
        raise InputError(f"corrupt NIfTI header in {path.name}: unknown datatype code {code}")
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
    path: Path, max_image_mb: float = DEFAULT_MAX_IMAGE_MB, allow_unknown_orientation: bool = False,
    geometry: str = "auto",
) -> tuple[nib.Nifti1Image, str, list[str], bool]:
    """:func:`load_nifti_checked` plus :func:`header_gate` on the header as stored: image, sha256,
    warnings and whether the orientation is unknown. ``geometry=qform`` measures on the qform."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    raw, sha = read_nifti_bytes(path, max_image_mb)
    hdr = _header_of(raw[:540], path)
    warnings, unknown = header_gate(hdr, path.name, allow_unknown_orientation, geometry)
    img = _nifti_from_bytes(raw, path)
    if geometry == "qform":
        img = type(img)(np.asanyarray(img.dataobj), np.asarray(hdr.get_qform(), np.float64), img.header)
    return img, sha, warnings, unknown

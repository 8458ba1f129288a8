"""Reading one input image safely: regular files only, a streamed NIfTI read with a size cap,
the header gate, and the checks of the loaded array (used by ``infer.inputs.load_scan``).

Only regular files are read (a FIFO or device is refused without being
opened for a blocking read). A NIfTI file passes a header gate before its
data are read: the image size (as float32) must fit ``max_image_mb``, a
single-file NIfTI needs ``vox_offset`` >= 352 (NIfTI-2: 544), at least one of
``qform_code``/``sform_code`` must be set (``allow_unknown_orientation``
measures such a file with sides "unknown" instead), the zooms and the affine
must be finite and non-degenerate, the sform and the qform (when both are set)
must agree on the orientation and place the grid within a voxel of each
other (unless ``geometry=sform|qform`` picks one), and the data size must
match the header exactly (a gzip is decompressed with a cap, so a bomb is
never unpacked). A sheared affine is measured but flagged ``sheared_geometry``
(its hips are untrusted).

Every problem is an ``InputError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
CT_AIR_VALUE = -500.0  # same threshold as onfh_seg.measure.is_mr_like
CT_MAX_FRACTION = 0.05
CT_OFFSET = 1024.0  # CT stored without its rescale intercept: air near 0, water near 1024
CT_SOFT_TISSUE_HU = (-150.0, 150.0)  # fat, muscle, organs and water: most of a CT body lies here
CT_BONE_HU = 300.0
DEFAULT_MAX_IMAGE_MB = 1024.0  # float32 image size: 268 M voxels, e.g. 1024 x 1024 x 256; fits 2 workers in 24 GB
MAX_VOX_OFFSET = 64 * 2**20  # header extensions larger than this are not plausible
MIN_VOX_OFFSET = {1: 352, 2: 544}  # single-file NIfTI-1 / NIfTI-2: header + 4 extension bytes
SHEAR_TOLERANCE = 1e-3  # |cos| between voxel axes above which an affine counts as sheared (0.06 degrees)
QFORM_SFORM_TOLERANCE_MM = 0.5  # sform and qform placing a grid corner farther apart than this: a warning
GEOMETRY_CHOICES = ("auto", "sform", "qform")  # configs/infer.yaml ``geometry``
SHEARED_GEOMETRY = "sheared_geometry"  # QC flag of a sheared affine (onfh_seg.measure.QC_FLAGS)


class InputError(ValueError):
    """An unusable input, described in one line."""


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


def sha256_regular_file(path: Path) -> str:
    """sha256 of a regular file, streamed in 1 MiB chunks (InputError for FIFOs, devices, folders)."""
    require_regular_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def header_gate(hdr: nib.Nifti1Header, name: str, allow_unknown_orientation: bool = False,
                geometry: str = "auto") -> tuple[list[str], bool]:
    """Refuse NIfTI headers that cannot be measured safely; return warnings and "orientation unknown".

    Refused (InputError, one line): invalid xform codes; no orientation at all
    (both codes 0) unless ``allow_unknown_orientation``; non-finite or zero
    zooms; with ``geometry=auto``, an sform and a qform that disagree on the
    axis orientation (which side is left) or place the grid more than a voxel
    apart; ``geometry=sform|qform`` naming a form the header does not set.
    Warned: sform and qform that differ by more than
    ``QFORM_SFORM_TOLERANCE_MM``, an unusable qform next to a good sform, and
    a sheared affine (flagged later, :func:`geometry_flags`). ``hdr`` is the
    header as stored (before nibabel's fixes).
    """
    if geometry not in GEOMETRY_CHOICES:
        raise InputError(f"geometry={geometry!r} is not allowed: expected one of {', '.join(GEOMETRY_CHOICES)}")
    warnings: list[str] = []
    q_code, s_code = int(hdr["qform_code"]), int(hdr["sform_code"])
    if not (0 <= q_code <= 5 and 0 <= s_code <= 5):
        raise InputError(f"invalid qform_code {q_code} / sform_code {s_code} (0-5 allowed): {name}")
    zooms = np.asarray(hdr["pixdim"][1:4], np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms == 0.0):
        raise InputError(f"invalid voxel sizes (pixdim {zooms.tolist()}): {name}")
    if geometry != "auto" and int(hdr[f"{geometry}_code"]) == 0:
        raise InputError(f"geometry={geometry} but the header has no {geometry} ({geometry}_code 0): {name}")
    unknown = q_code == 0 and s_code == 0
    if unknown and not allow_unknown_orientation:
        raise InputError(
            "no orientation in the header (qform_code and sform_code both 0): left and right cannot be told; "
            f"fix the header, or set allow_unknown_orientation=true to measure with sides 'unknown': {name}"
        )
    if unknown:
        warnings.append("header has no sform/qform orientation: sides reported as 'unknown'")
    if q_code > 0 and s_code > 0:
        warnings += _compare_qform_sform(hdr, name, geometry)
    try:
        affine = np.asarray(hdr.get_qform() if geometry == "qform" else hdr.get_best_affine(), np.float64)
    except Exception:  # an unusable qform/sform: refused by check_affine on the loaded image
        affine = np.full((4, 4), np.nan)
    finite = np.all(np.isfinite(affine)) and np.all(np.linalg.norm(affine[:3, :3], axis=0) > 0)
    shear = shear_degrees(affine) if finite else 0.0
    if shear > np.degrees(np.arcsin(SHEAR_TOLERANCE)):
        warnings.append(
            f"sheared affine: voxel axes {shear:.2f} degrees from orthogonal (the DICOM reader refuses sheared "
            f"stacks); flagged {SHEARED_GEOMETRY}: measured, but no hip is trusted"
        )
    return warnings, unknown


def geometry_flags(affine: np.ndarray) -> list[str]:
    """``["sheared_geometry"]`` when the voxel axes of ``affine`` are not orthogonal (beyond ``SHEAR_TOLERANCE``)."""
    sheared = shear_degrees(affine) > np.degrees(np.arcsin(SHEAR_TOLERANCE))
    return [SHEARED_GEOMETRY] if sheared else []


def _compare_qform_sform(hdr: nib.Nifti1Header, name: str, geometry: str = "auto") -> list[str]:
    """Warnings when the sform and the qform differ; InputError (``geometry=auto``) when they disagree on the
    orientation or by more than a voxel."""
    used = "sform" if geometry == "auto" else geometry
    sform = np.asarray(hdr.get_sform(), np.float64)
    try:
        qform = np.asarray(hdr.get_qform(), np.float64)
    except Exception:  # invalid quaternion
        return [f"qform is invalid (the {used} is used)"]
    if not (np.all(np.isfinite(qform)) and np.all(np.isfinite(sform))):
        return [f"qform is not finite (the {used} is used)"] if np.all(np.isfinite(sform)) else []
    try:
        q_axes, s_axes = _axcodes(qform), _axcodes(sform)
    except Exception:  # a singular matrix: refused later by check_affine (sform) or ignored (qform)
        return [f"qform is degenerate (the {used} is used)"]
    diff = corner_distance_mm(sform, qform, hdr.get_data_shape()[:3])
    if geometry != "auto":
        return [f"geometry={geometry}: the {geometry} is used (sform {s_axes} and qform {q_axes} "
                f"up to {diff:.3g} mm apart)"] if diff > QFORM_SFORM_TOLERANCE_MM or q_axes != s_axes else []
    if q_axes != s_axes:
        raise InputError(
            f"sform ({s_axes}) and qform ({q_axes}) disagree on the orientation: left/right is ambiguous; "
            f"choose one with geometry=sform or geometry=qform: {name}"
        )
    voxel = max(QFORM_SFORM_TOLERANCE_MM, float(np.min(np.linalg.norm(sform[:3, :3], axis=0))))
    if diff > voxel:
        raise InputError(
            f"sform and qform place the image up to {diff:.3g} mm apart (more than a voxel, {voxel:.3g} mm): "
            f"which geometry is right cannot be told; choose one with geometry=sform or geometry=qform: {name}"
        )
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


def looks_like_shifted_ct(image: np.ndarray) -> bool:
    """A CT stored without its -1024 intercept: no negatives, over 5 % air (<= 524), over 70 % of the body
    within soft tissue (874-1174) and some bone (over 1 % at >= 1324). A T1 MR body spreads far wider (fat is
    two to three times muscle)."""
    flat = image.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or float(sample.min()) < -100.0:
        return False
    air = sample <= CT_OFFSET + CT_AIR_VALUE
    body = sample[~air]
    if float(np.mean(air)) <= CT_MAX_FRACTION or body.size == 0:
        return False
    lo, hi = (CT_OFFSET + hu for hu in CT_SOFT_TISSUE_HU)
    soft = float(np.mean((body >= lo) & (body <= hi)))
    bone = float(np.mean(body >= CT_OFFSET + CT_BONE_HU))
    return soft >= 0.7 and bone >= 0.01


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
    if looks_like_shifted_ct(image):
        raise InputError("image is not MR-like (looks like CT stored without its -1024 offset: air near 0, "
                         "soft tissue near 1024)")
    return image, warnings

"""The NIfTI header gate: what a header must say before its image is measured (used by ``infer.image_read``).

At least one of ``qform_code``/``sform_code`` must be set
(``allow_unknown_orientation`` measures such a file with sides "unknown"
instead), the zooms must be finite and non-zero, and the sform and the qform
(when both are set) must agree on the orientation and place the grid within a
voxel of each other (unless ``geometry=sform|qform`` picks one). A sheared
affine is measured but flagged ``sheared_geometry`` (its hips are untrusted).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from onfh_seg.infer.input_files import InputError

SHEAR_TOLERANCE = 1e-3  # |cos| between voxel axes above which an affine counts as sheared (0.06 degrees)
QFORM_SFORM_TOLERANCE_MM = 0.5  # sform and qform placing a grid corner farther apart than this: a warning
GEOMETRY_CHOICES = ("auto", "sform", "qform")  # configs/infer.yaml ``geometry``
SHEARED_GEOMETRY = "sheared_geometry"  # QC flag of a sheared affine (onfh_seg.quality.QC_FLAGS)


def _axcodes(affine: np.ndarray) -> str:
    """Axis codes of an affine, e.g. ``RAS``."""
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

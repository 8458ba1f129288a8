"""Per-hip measurements from a label map (docs/CONTRACTS.md, ``hips`` entries).

numpy/scipy only (no torch). World coordinates are NIfTI RAS+ mm: +x is the
patient's right, so "lateral" is +x for the right hip and -x for the left hip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import box_centroid_ijk, mask_box, ras_to_voxel, voxel_spacing, voxel_to_ras, voxel_volume_ml
from onfh_seg.hips import split_hips
from onfh_seg.labels import ACETABULUM, BAND, HEAD, HEAD_LABELS, LESION_LABELS, NECROTIC
from onfh_seg.quality import UNTRUSTED_FLAGS

HIP_KEYS = (
    "side",
    "head_volume_ml",
    "lesion_volume_ml",
    "necrotic_core_volume_ml",
    "band_volume_ml",
    "percent_head_involved",
    "arco_extent",
    "jic_type",
    "sir_necrotic",
    "sir_reference",
    "lesion_centroid_ras_mm",
    "head_centre_ras_mm",
)
HIP_QC_KEYS = ("qc_flags", "trusted")  # added to each hip by infer.gate.measure_gated (after HIP_KEYS)
VECTOR_KEYS = ("lesion_centroid_ras_mm", "head_centre_ras_mm")
CSV_COLUMNS = (
    ["scan", "image"]
    + [c for k in HIP_KEYS for c in ([f"{k}_x", f"{k}_y", f"{k}_z"] if k in VECTOR_KEYS else [k])]
    + ["trusted", "hip_qc_flags", "qc_flags", "model_version", "output_errors"]
)
SIR_REFERENCES = ("acetabulum", "viable_head")
SIDE_ORDER = ("right", "left", "unknown")


# ---------------------------------------------------------------- small pieces


MIN_LESION_ML = 0.5  # smallest lesion that gets an ARCO / JIC class


def arco_extent(percent_head_involved: float, has_lesion: bool) -> str:
    """ARCO/Steinberg extent class: "none" without lesion, A < 15 %, B 15-30 %, C > 30 %."""
    if not has_lesion:
        return "none"
    if percent_head_involved < 15.0:
        return "A"
    if percent_head_involved <= 30.0:
        return "B"
    return "C"


def sir_of_mask(image: np.ndarray, mask: np.ndarray, ref_mask: np.ndarray) -> float | None:
    """Signal-intensity ratio: mean image over ``mask`` / mean over ``ref_mask``.

    None if either mask is empty or the reference mean is not positive.
    """
    if not np.any(mask) or not np.any(ref_mask):
        return None
    ref = float(np.mean(image[ref_mask], dtype=np.float64))
    if not np.isfinite(ref) or ref <= 0.0:
        return None
    return float(np.mean(image[mask], dtype=np.float64)) / ref


def eroded(mask: np.ndarray) -> np.ndarray:
    """Mask eroded by one voxel (face connectivity); the mask itself if erosion empties it."""
    out = ndimage.binary_erosion(mask)
    return out if out.any() else mask


def reference_mask(hip_labels: np.ndarray, reference: str) -> np.ndarray:
    """SIR reference region of one hip: eroded acetabulum (4) or eroded viable head (1)."""
    if reference == "acetabulum":
        return eroded(hip_labels == ACETABULUM)
    if reference == "viable_head":
        return eroded(hip_labels == HEAD)
    raise ValueError(f"unknown SIR reference {reference!r}; expected one of {SIR_REFERENCES}")


def _vector(v: np.ndarray | None) -> list[float] | None:
    return None if v is None else [round(float(a), 3) for a in v]


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(float(v), nd)


# ---------------------------------------------------------------- JIC type


def coronal_plane(
    labels: np.ndarray, affine: np.ndarray, centre_ras: np.ndarray, half_width_mm: float, step_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour sample of ``labels`` on the world plane y = centre y.

    Returns ``(plane, dx, dz)``: ``plane[a, b]`` is the label at world
    ``(centre_x + dx[a], centre_y, centre_z + dz[b])``; outside the grid is 0.
    """
    offs = np.arange(-half_width_mm, half_width_mm + 0.5 * step_mm, step_mm)
    DX, DZ = np.meshgrid(offs, offs, indexing="ij")
    xyz = np.stack([centre_ras[0] + DX, np.full_like(DX, centre_ras[1]), centre_ras[2] + DZ], axis=-1)
    ijk = np.rint(ras_to_voxel(affine, xyz)).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(labels.shape)), axis=-1)
    plane = np.zeros(DX.shape, dtype=labels.dtype)
    i = ijk[inside]
    plane[inside] = labels[i[:, 0], i[:, 1], i[:, 2]]
    return plane, offs, offs


def lateral_sign(side: str, head_x: float, acetabulum_x: float | None) -> float | None:
    """+1 if lateral is +x (right hip), -1 if -x (left hip).

    For side "unknown" the acetabulum in the mid-coronal plane lies medial to
    the head centre (roof plus medial wall), so lateral is away from it; None
    if that cannot be told.
    """
    if side == "right":
        return 1.0
    if side == "left":
        return -1.0
    if acetabulum_x is None or abs(head_x - acetabulum_x) < 1.0:
        return None
    return 1.0 if head_x > acetabulum_x else -1.0


def jic_type(
    hip_labels: np.ndarray,
    affine: np.ndarray,
    side: str,
    head_centre_ras: np.ndarray,
    head_radius_mm: float,
    contact_mm: float = 8.0,
) -> str:
    """JIC type ("none", "A", "B", "C1", "C2", or "unknown") on the mid-coronal plane.

    Definition (world space, ``hip_labels`` = labels restricted to this hip):

    * Plane: world y = head-centre y, sampled nearest-neighbour at
      ``min(voxel spacing)`` clipped to [0.3, 1] mm, +-2.5 head radii around the
      centre. Coordinates in the plane: ``u`` = lateral offset from the head
      centre (world x times +1 for the right hip, -1 for the left), ``z`` up.
    * Lateral acetabular edge ``u_L``: the most lateral acetabulum (4) sample
      in the plane.
    * Medial limit ``u_M``: the most medial point of the head's superior
      surface (head boundary samples with z >= head-centre z) that is covered
      by acetabulum, i.e. lies within ``contact_mm`` of an acetabulum sample.
    * Weight-bearing portion: u in [u_M, u_L], split into thirds.
    * Lesion extent ``e``: the most lateral lesion (2+3) sample in the plane;
      if the lesion misses the plane, the most lateral lesion voxel of the
      whole hip (its projection onto the plane).
    * A: e <= u_M + W/3; B: e <= u_M + 2W/3; C1: e <= u_L; C2: e > u_L
      (W = u_L - u_M).

    "none" if the hip has no lesion; "unknown" if there is no acetabulum in the
    plane, no covered superior surface, or the lateral direction is unknown.
    """
    lesion3d = np.isin(hip_labels, LESION_LABELS)
    if not lesion3d.any():
        return "none"
    step = float(np.clip(voxel_spacing(affine).min(), 0.3, 1.0))
    plane, dx, dz = coronal_plane(hip_labels, affine, head_centre_ras, 2.5 * head_radius_mm, step)
    acet = plane == ACETABULUM
    head = np.isin(plane, HEAD_LABELS)
    if not acet.any() or not head.any():
        return "unknown"
    DX, DZ = np.meshgrid(dx, dz, indexing="ij")
    sign = lateral_sign(side, float(head_centre_ras[0]), float(head_centre_ras[0] + DX[acet].mean()))
    if sign is None:
        return "unknown"
    U = sign * DX

    u_lat = float(U[acet].max())
    boundary = head & ~ndimage.binary_erosion(head)
    dist_to_acet = ndimage.distance_transform_edt(~acet, sampling=step)
    covered = boundary & (DZ >= 0.0) & (dist_to_acet <= contact_mm)
    if not covered.any():
        return "unknown"
    u_med = float(U[covered].min())
    width = u_lat - u_med
    if width <= 0.0:
        return "unknown"

    lesion = np.isin(plane, LESION_LABELS)
    if lesion.any():
        extent = float(U[lesion].max())
    else:
        lesion_x = (np.argwhere(lesion3d) @ np.asarray(affine, np.float64)[0, :3]) + affine[0, 3]
        extent = float((sign * (lesion_x - head_centre_ras[0])).max())

    if extent <= u_med + width / 3.0:
        return "A"
    if extent <= u_med + 2.0 * width / 3.0:
        return "B"
    if extent <= u_lat:
        return "C1"
    return "C2"


# ---------------------------------------------------------------- per hip / scan


def _centroid_ras(sub_mask: np.ndarray, lo: Sequence[int], affine: np.ndarray) -> np.ndarray | None:
    """World centroid of a mask given in a box starting at voxel ``lo`` (as ``mask_centroid_ras`` of the whole grid)."""
    ijk = box_centroid_ijk(sub_mask, lo)
    return None if ijk is None else voxel_to_ras(affine, ijk)


def measure_hip(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    hip_mask: np.ndarray,
    side: str,
    reference: str = "acetabulum",
    min_lesion_ml: float = MIN_LESION_ML,
) -> dict:
    """Measurements of one hip (the ``hips`` entry of CONTRACTS.md).

    A lesion smaller than ``min_lesion_ml`` is reported with its volumes but
    classed as no lesion (ARCO and JIC "none"): specks are not a diagnosis.

    Only voxels inside ``hip_mask`` count. Volumes are voxel counts x
    |det(affine[:3, :3])| / 1000 mL; head = 1+2+3, lesion = 2+3. SIR is the
    mean image over label 2 divided by the mean over the eroded ``reference``
    region of the same hip (``reference_mask``); None without necrotic core or
    reference. Centroids are world RAS+ mm. Values are rounded (volumes 4,
    percent 3, SIR 4 decimals, coordinates 3 decimals).
    """
    # counted in the hip's box (labels outside the hip are 0): the whole-grid numbers, less work
    box = mask_box(hip_mask)
    sub = np.where(hip_mask[box], labels[box], 0).astype(np.uint8)
    lo = np.array([sl.start for sl in box], np.int64)
    vml = voxel_volume_ml(affine)
    head_sub = np.isin(sub, HEAD_LABELS)
    n_head = int(head_sub.sum())
    n_nec = int((sub == NECROTIC).sum())
    n_band = int((sub == BAND).sum())
    n_lesion = n_nec + n_band
    head_ml = n_head * vml
    percent = 100.0 * n_lesion / n_head if n_head else 0.0

    head_centre = _centroid_ras(head_sub, lo, affine)
    lesion_centroid = _centroid_ras(np.isin(sub, LESION_LABELS), lo, affine)
    has_lesion = n_lesion * vml >= min_lesion_ml
    if not has_lesion:
        jic = "none"
    elif head_centre is not None:
        radius = (3.0 * head_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        hip_labels = np.where(hip_mask, labels, 0).astype(np.uint8)  # the JIC plane samples the whole grid
        jic = jic_type(hip_labels, affine, side, head_centre, radius)
    else:
        jic = "unknown"

    sir = sir_of_mask(image[box], sub == NECROTIC, reference_mask(sub, reference))
    return {
        "side": side,
        "head_volume_ml": round(head_ml, 4),
        "lesion_volume_ml": round(n_lesion * vml, 4),
        "necrotic_core_volume_ml": round(n_nec * vml, 4),
        "band_volume_ml": round(n_band * vml, 4),
        "percent_head_involved": round(percent, 3),
        "arco_extent": arco_extent(percent, has_lesion),
        "jic_type": jic,
        "sir_necrotic": _round(sir, 4),
        "sir_reference": reference,
        "lesion_centroid_ras_mm": _vector(lesion_centroid),
        "head_centre_ras_mm": _vector(head_centre),
    }


def measure_scan(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    reference: str = "acetabulum",
    body_centre_x: float | None = None,
) -> list[dict]:
    """Measure every hip found by ``split_hips`` (sorted right, left, unknown)."""
    hips = split_hips(labels, affine, body_centre_x=body_centre_x, image=image)
    return [measure_hip(image, labels, affine, hips[s], s, reference) for s in SIDE_ORDER if s in hips]


# ---------------------------------------------------------------- CSV


def measurements_row(
    scan_name: str, image_name: str, hip: dict | None, qc: Sequence[str], model_version: str,
    output_errors: str | None = None,
) -> dict:
    """One ``measurements.csv`` row (keys = ``CSV_COLUMNS``); vectors become ``_x,_y,_z``.

    ``output_errors`` names the outputs that could not be written (e.g. ``dicom_seg: SliceThickness missing
    in slice IM0003.dcm``); None when every output was written.

    ``hip`` None (no hip found) leaves the hip columns None (written empty).
    ``trusted`` (true/false) and ``hip_qc_flags`` (``;``-joined) come from the
    hip's own keys; a hip without ``trusted`` is trusted unless ``qc`` holds an
    untrusting flag.
    """
    row: dict = {"scan": scan_name, "image": image_name}
    for key in HIP_KEYS:
        value = None if hip is None else hip.get(key)
        if key in VECTOR_KEYS:
            vec = value if value is not None else (None, None, None)
            row.update({f"{key}_x": vec[0], f"{key}_y": vec[1], f"{key}_z": vec[2]})
        else:
            row[key] = value
    if hip is None:
        row["trusted"], row["hip_qc_flags"] = None, None
    else:
        trusted = hip.get("trusted")
        if trusted is None:
            trusted = not any(f in UNTRUSTED_FLAGS for f in qc)
        row["trusted"] = "true" if trusted else "false"
        row["hip_qc_flags"] = ";".join(hip.get("qc_flags") or [])
    row["qc_flags"] = ";".join(qc)
    row["model_version"] = model_version
    row["output_errors"] = output_errors
    return row

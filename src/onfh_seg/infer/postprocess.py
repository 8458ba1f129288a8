"""Post-processing of a predicted label map: speck removal and per-hip regions.

Everything here works on numpy arrays on the image grid plus its 4x4 affine
(voxel index -> NIfTI RAS+ mm). Left/right comes from world x (larger x =
patient's right), never from array index order. No torch.

Connected components use face connectivity (scipy.ndimage.label default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onfh_seg.labels import ACETABULUM, BACKGROUND, HEAD, HEAD_LABELS, LESION_LABELS

SIDES = ("right", "left", "unknown")


# ---------------------------------------------------------------- geometry


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det(affine[:3, :3])| / 1000."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (column norms of ``affine[:3, :3]``)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxel_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices ``(..., 3)`` to RAS+ mm ``(..., 3)``."""
    A = np.asarray(affine, dtype=np.float64)
    return np.asarray(ijk, dtype=np.float64) @ A[:3, :3].T + A[:3, 3]


def ras_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Map RAS+ mm ``(..., 3)`` to (fractional) voxel indices ``(..., 3)``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(xyz, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def mask_centroid_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """World centroid (RAS+ mm) of a boolean mask, or None if it is empty."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    return voxel_to_ras(affine, idx.mean(axis=0))


# ---------------------------------------------------------------- heads


@dataclass(frozen=True)
class Head:
    """One femoral-head connected component (labels 1-3)."""

    component: int  # id in the connected-component map
    volume_ml: float
    centre_ras: np.ndarray  # (3,) mm
    radius_mm: float  # radius of the sphere of equal volume


def find_heads(labels: np.ndarray, affine: np.ndarray, min_ml: float = 5.0) -> tuple[np.ndarray, list[Head]]:
    """Connected components of labels 1-3 with volume >= ``min_ml``, largest first.

    Returns the component-id map and the kept components.
    """
    cc, n = ndimage.label(np.isin(labels, HEAD_LABELS))
    if n == 0:
        return cc, []
    vml = voxel_volume_ml(affine)
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    ids = [i for i in range(1, n + 1) if counts[i] * vml >= min_ml]
    if not ids:
        return cc, []
    vox = np.nonzero(cc)  # centroids by bincount over the labelled voxels only (fast on large scans)
    comp = cc[vox]
    sums = np.stack([np.bincount(comp, weights=v, minlength=n + 1) for v in vox], axis=1)
    centres_ijk = [sums[i] / counts[i] for i in ids]
    heads = []
    for i, c in zip(ids, centres_ijk):
        vol = float(counts[i] * vml)
        radius = float((3.0 * vol * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))
        heads.append(Head(i, vol, voxel_to_ras(affine, np.asarray(c)), radius))
    heads.sort(key=lambda h: (-h.volume_ml, h.component))
    return cc, heads


def select_heads(heads: list[Head]) -> list[Head]:
    """At most two heads: the largest, plus the largest other one at least one head diameter away in x.

    ``heads`` must be sorted largest first. Fragments of the same head (closer
    than a head diameter in world x) are dropped, so there is at most one head
    per side.
    """
    if not heads:
        return []
    first = heads[0]
    for h in heads[1:]:
        if abs(h.centre_ras[0] - first.centre_ras[0]) >= 2.0 * first.radius_mm:
            return [first, h]
    return [first]


# ---------------------------------------------------------------- body centre


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of a 1-D sample (maximises between-class variance on a histogram)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def field_of_view_x_mm(shape: tuple[int, ...], affine: np.ndarray) -> float:
    """Extent of the image grid along world x (mm), from its 8 corner voxel centres."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    x = voxel_to_ras(affine, corners)[:, 0]
    return float(x.max() - x.min())


def estimate_body_centre_x(image: np.ndarray, affine: np.ndarray, min_fov_x_mm: float = 180.0) -> float | None:
    """World x of the centroid of the image foreground (intensity > Otsu threshold).

    Returns None when the field of view spans less than ``min_fov_x_mm`` along
    world x (a single-hip field of view cannot show where the pelvis centre is)
    or when there is no foreground.
    """
    if field_of_view_x_mm(image.shape, affine) < min_fov_x_mm:
        return None
    img = np.asarray(image, dtype=np.float32)
    step = max(1, img.size // 1_000_000)
    thr = otsu_threshold(img.ravel()[::step])
    fg = img > thr
    centre = mask_centroid_ras(fg, affine)
    return None if centre is None else float(centre[0])


# ---------------------------------------------------------------- hips


def ball_mask(shape: tuple[int, ...], affine: np.ndarray, centre_ras: np.ndarray, radius_mm: float) -> np.ndarray:
    """Boolean mask of voxels whose centres lie within ``radius_mm`` of a world point."""
    mask = np.zeros(shape, dtype=bool)
    corners = np.array(
        [[centre_ras[0] + sx * radius_mm, centre_ras[1] + sy * radius_mm, centre_ras[2] + sz * radius_mm]
         for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )
    ijk = ras_to_voxel(affine, corners)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, np.array(shape) - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, np.array(shape))
    if np.any(hi <= lo):
        return mask
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    d2 = np.sum((voxel_to_ras(affine, grid) - centre_ras) ** 2, axis=-1)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = d2 <= radius_mm**2
    return mask


def assign_sides(heads: list[Head], body_centre_x: float | None, min_offset_mm: float = 20.0) -> dict[str, Head]:
    """Patient side of each selected head (at most two).

    Two heads: larger world x is "right". One head: "right" if its x exceeds
    ``body_centre_x`` by more than ``min_offset_mm``, "left" if below by more than
    that, otherwise (or if the centre is unknown) "unknown".
    """
    if len(heads) == 2:
        a, b = sorted(heads, key=lambda h: -h.centre_ras[0])
        return {"right": a, "left": b}
    if len(heads) == 1:
        h = heads[0]
        if body_centre_x is None or abs(h.centre_ras[0] - body_centre_x) < min_offset_mm:
            return {"unknown": h}
        return {"right" if h.centre_ras[0] > body_centre_x else "left": h}
    return {}


def side_from_acetabulum(labels: np.ndarray, affine: np.ndarray, head: Head, min_offset_mm: float = 3.0) -> str | None:
    """Side of a single head from its acetabulum: the socket lies medial to the head centre.

    Medial is towards smaller x for the right hip and larger x for the left hip
    (RAS+). Uses label-4 voxels within 2.5 head radii; None if absent or ambiguous.
    """
    ball = ball_mask(labels.shape, affine, head.centre_ras, 2.5 * head.radius_mm)
    acet = mask_centroid_ras(ball & (labels == ACETABULUM), affine)
    if acet is None:
        return None
    dx = acet[0] - head.centre_ras[0]
    if abs(dx) < min_offset_mm:
        return None
    return "right" if dx < 0 else "left"


def split_hips(
    labels: np.ndarray,
    affine: np.ndarray,
    body_centre_x: float | None = None,
    image: np.ndarray | None = None,
    min_ml: float = 5.0,
    radius_factor: float = 2.5,
    min_fov_x_mm: float = 280.0,
) -> dict[str, np.ndarray]:
    """Per-hip region masks keyed "right" / "left" (or "unknown"), in that order.

    Femoral heads are connected components of labels 1-3 of at least ``min_ml``
    mL (see ``select_heads``: at most one per side). Sides come from world x
    (``assign_sides``). With a single head (a one-hip field of view) the side
    comes from anatomy first (``side_from_acetabulum``: the socket lies medial to
    its head), then from ``body_centre_x`` if given or estimated from a wide
    enough ``image`` (``estimate_body_centre_x``), else unknown. Each hip region is the ball of radius ``radius_factor`` x head
    radius (equal-volume sphere) around the head centroid, so acetabulum voxels
    near that head belong to that hip; a voxel in two balls goes to the nearer
    centre.
    """
    _, heads = find_heads(labels, affine, min_ml)
    heads = select_heads(heads)
    sides = None
    if len(heads) == 1 and body_centre_x is None:
        side = side_from_acetabulum(labels, affine, heads[0])
        if side is not None:
            sides = {side: heads[0]}
        elif image is not None:
            body_centre_x = estimate_body_centre_x(image, affine, min_fov_x_mm)
    if sides is None:
        sides = assign_sides(heads, body_centre_x)
    balls = {s: ball_mask(labels.shape, affine, h.centre_ras, radius_factor * h.radius_mm) for s, h in sides.items()}
    if len(balls) == 2:
        both = balls["right"] & balls["left"]
        if both.any():
            xyz = voxel_to_ras(affine, np.argwhere(both))
            d_r = np.sum((xyz - sides["right"].centre_ras) ** 2, axis=1)
            d_l = np.sum((xyz - sides["left"].centre_ras) ** 2, axis=1)
            idx = tuple(np.argwhere(both).T)
            balls["right"][idx] = d_r <= d_l
            balls["left"][idx] = d_r > d_l
    return {s: balls[s] for s in SIDES if s in balls}


# ---------------------------------------------------------------- cleaning


def _small_components(mask: np.ndarray, max_voxels: float) -> np.ndarray:
    """Voxels of ``mask`` in face-connected components with fewer than ``max_voxels`` voxels."""
    cc, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    small = counts < max_voxels
    small[0] = False
    return small[cc]


def clean_labels(labels: np.ndarray, affine: np.ndarray, min_speck_ml: float = 0.05) -> np.ndarray:
    """Remove implausible bits of a label map; returns a new uint8 array.

    1. Head components (labels 1-3 connected) smaller than ``min_speck_ml`` mL,
       or without any viable-head (1) voxel (a necrotic/band blob not connected
       to a head), become background.
    2. Inside the surviving heads, lesion (2+3) components smaller than
       ``min_speck_ml`` become viable head (1), so no holes are punched.
    3. Acetabulum (4) components smaller than ``min_speck_ml`` become background.

    Works on the bounding box of the labelled voxels (components never reach outside it).
    """
    result = np.asarray(labels).astype(np.uint8, copy=True)
    box = ndimage.find_objects((result > 0).astype(np.uint8))
    if not box:
        return result
    out = result[box[0]]  # a view: edits land in ``result``
    min_vox = min_speck_ml / voxel_volume_ml(affine)

    head = np.isin(out, HEAD_LABELS)
    cc, n = ndimage.label(head)
    if n > 0:
        counts = np.bincount(cc.ravel(), minlength=n + 1)
        viable = np.bincount(cc[out == HEAD], minlength=n + 1) > 0
        keep = (counts >= min_vox) & viable
        keep[0] = True
        out[~keep[cc]] = BACKGROUND

    out[_small_components(np.isin(out, LESION_LABELS), min_vox)] = HEAD
    out[_small_components(out == ACETABULUM, min_vox)] = BACKGROUND
    return result

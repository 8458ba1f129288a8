"""Ground floor: finding femoral heads and hips in a label map (numpy/scipy only).

Works on a label map on the image grid plus its 4x4 affine (voxel index ->
NIfTI RAS+ mm). Left/right comes from world x (larger x = patient's right),
never from array index order. Connected components use face connectivity
(scipy.ndimage.label default). Used by infer (coarse stage, anatomy gate),
measure, track, evaluate and training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from onfh_seg.arrays import every_nth
from onfh_seg.geometry import (
    ball_mask,
    box_centroid_ijk,
    field_of_view_x_mm,
    mask_box,
    mask_centroid_ras,
    voxel_to_ras,
    voxel_volume_ml,
)
from onfh_seg.labels import ACETABULUM, HEAD_LABELS

# the field of view cuts the body at a side where the end plane there holds this share of the largest plane's body
# voxels or more (an ellipse's depth at 92% of its half-width); ``infer.search`` uses it on the coarse grid
CUT_SHARE = 0.4

SIDES = ("right", "left", "unknown")


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
    head = np.isin(labels, HEAD_LABELS)
    cc = np.zeros(head.shape, np.int32)
    # labelled in the box of all head voxels: the raster order there, hence the numbering, is the same
    outer = mask_box(head, pad=0)
    cc[outer], n = ndimage.label(head[outer])
    if n == 0:
        return cc, []
    vml = voxel_volume_ml(affine)
    counts = np.bincount(cc[outer].ravel(), minlength=n + 1)
    ids = [i for i in range(1, n + 1) if counts[i] * vml >= min_ml]
    if not ids:
        return cc, []
    # centroids from each kept component's own box (exactly the whole-grid centroids)
    boxes = ndimage.find_objects(cc[outer])
    centres_ijk = []
    for i in ids:
        box = tuple(slice(o.start + b.start, o.start + b.stop) for o, b in zip(outer, boxes[i - 1]))
        centres_ijk.append(box_centroid_ijk(cc[box] == i, [sl.start for sl in box]))
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


def lateral_axis(affine: np.ndarray) -> int:
    """The image axis nearest to world x (left-right): across it lie the field of view's sides."""
    aff = np.asarray(affine, np.float64)
    return int(np.argmax(np.abs(aff[0, :3]) / np.sqrt((aff[:3, :3] ** 2).sum(0))))


def cut_on_one_side(fg: np.ndarray, affine: np.ndarray, share: float = CUT_SHARE) -> bool:
    """Whether the field of view cuts the body (``fg``) at one of its sides only: of the two end planes across the
    image axis nearest to world x, exactly one holds at least ``share`` of the largest plane's body voxels (a body
    edge tapering in the last plane is where the body ends, not a cut)."""
    ax = lateral_axis(affine)
    area = np.asarray(fg, bool).sum(axis=tuple(a for a in range(3) if a != ax))
    if area.size < 2 or area.max() == 0:
        return False
    return bool(area[0] >= share * area.max()) != bool(area[-1] >= share * area.max())


def estimate_body_centre_x(image: np.ndarray, affine: np.ndarray, min_fov_x_mm: float = 180.0) -> float | None:
    """World x of the centroid of the image foreground (intensity > Otsu threshold).

    Returns None when the field of view spans less than ``min_fov_x_mm`` along
    world x (a single-hip field of view cannot show where the pelvis centre is),
    when it cuts the body at one side only (``cut_on_one_side``: the centroid of
    what is in view is off the midline) or when there is no foreground.
    """
    if field_of_view_x_mm(image.shape, affine) < min_fov_x_mm:
        return None
    img = np.asarray(image, dtype=np.float32)
    step = max(1, img.size // 1_000_000)
    thr = otsu_threshold(every_nth(img, step))
    fg = img > thr
    if cut_on_one_side(fg, affine):
        return None
    centre = mask_centroid_ras(fg, affine)
    return None if centre is None else float(centre[0])


# ---------------------------------------------------------------- sides and hip regions


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
    far_mm: float = 50.0,
) -> dict[str, np.ndarray]:
    """Per-hip region masks keyed "right" / "left" (or "unknown"), in that order.

    Femoral heads are connected components of labels 1-3 of at least ``min_ml``
    mL (see ``select_heads``: at most one per side). Sides come from world x
    (``assign_sides``). With a single head the side comes from ``body_centre_x`` if
    given; else, when a wide enough ``image`` shows the body's centre
    (``estimate_body_centre_x``) and the head lies at least ``far_mm`` from it,
    from that centre (a wide field of view shows the side plainly; the socket
    label can be wrong: a real scan's socket segmented lateral to its head gave
    the left head "right"); else from anatomy (``side_from_acetabulum``: the
    socket lies medial to its head), then from the centre if it is 20 mm away,
    else unknown. Each hip region is the ball of radius ``radius_factor`` x head
    radius (equal-volume sphere) around the head centroid, so acetabulum voxels
    near that head belong to that hip; a voxel in two balls goes to the nearer
    centre.
    """
    _, heads = find_heads(labels, affine, min_ml)
    heads = select_heads(heads)
    sides = None
    if len(heads) == 1 and body_centre_x is None:
        if image is not None:
            body_centre_x = estimate_body_centre_x(image, affine, min_fov_x_mm)
        far = body_centre_x is not None and abs(heads[0].centre_ras[0] - body_centre_x) >= far_mm
        side = None if far else side_from_acetabulum(labels, affine, heads[0])
        if side is not None:
            sides = {side: heads[0]}
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

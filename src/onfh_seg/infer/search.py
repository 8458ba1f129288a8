"""A second way to find femoral heads, for when the coarse stage confirms fewer than two.

The coarse network can miss heads on acquisitions it has not seen (thin oblique
slabs, gradient echo near opposed phase, heads at the edge of the field of view).
This module proposes *candidate centres* from the image alone; the fine network
stays the judge (``engine.Segmenter`` runs it on each candidate in turn):

* ``partner_candidates``: one head found, so the other lies about one
  intercapital distance (150-230 mm) away in x at a similar height and depth;
  a lattice there, nearest to the mirror position first;
* ``coarse_peaks``: where the coarse network saw something head-like but too
  weakly to call a head (local maxima of its smoothed head-and-lesion
  probability), strongest first;
* ``sphere_candidates``: no head found: a gradient Hough transform for spheres
  of femoral-head radius (20-28 mm) on the coarse grid, either contrast
  polarity, local maxima strongest first;
* ``mirror_candidate``: one head from the coarse stage on a wide field of view: its mirror image about the
  body midline;
* ``lattice_candidates``: still no head: a lattice over the body in the field of
  view (the fine network slid over it), nearest to the body's centre first.

numpy/scipy only (the inference image has no torch).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from onfh_seg.hips import CUT_SHARE, estimate_body_centre_x, lateral_axis

INTERCAPITAL_MM = (150.0, 230.0)  # centre-to-centre distance of the two femoral heads in adults
HEAD_RADII_MM = (20.0, 24.0, 28.0)
LATTICE_MM = 35.0  # candidate spacing: a 105 mm fine crop then holds any 56 mm head whole from some candidate
SEPARATION_MM = 45.0  # a candidate this close to a known head is the same head
LATERAL_MM = 50.0  # a femoral head centre lies at least this far from the body's midline (adults: 80-100 mm)
MIN_BODY_SPAN_MM = 200.0  # the midline is estimated only when the body spans at least this much in x
PEAK_MIN_PROB = 0.02  # a coarse probability peak this weak is still worth one fine judgement
CUT_DEPTH = CUT_SHARE  # the field of view cuts the body at a side where the body there is this deep (front-to-back)
# or more, as a share of its deepest column (hips.estimate_body_centre_x's rule); a shallower edge is where it ends
PELVIS_FOV_MM = 240.0  # a field of view at least this wide in x, cutting the body on both sides, is over the pelvis
SCAN_MM = 60.0  # lattice spacing of the last-resort scan: with the judge's re-centring, a head anywhere is caught
TILT_MARGIN_MM = 10.0  # the heads' x distance can be this much under INTERCAPITAL_MM[0] (a rotated pelvis)
PAIR_YZ_MM = 45.0  # two femoral heads lie at most this far apart front-to-back and in height (tilt, obliquity)


def inside_fov(centre: np.ndarray, shape: tuple[int, ...], affine: np.ndarray, margin_mm: float) -> bool:
    """Whether a world point lies within the image's field of view, or at most ``margin_mm`` outside it."""
    ijk = np.linalg.inv(affine) @ np.append(np.asarray(centre, float), 1.0)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    lo = -margin_mm / spacing
    hi = np.asarray(shape[:3]) - 1 + margin_mm / spacing
    return bool(np.all(ijk[:3] >= lo) and np.all(ijk[:3] <= hi))


def head_centre(head: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """World centre (mm) of a crop's head voxels (a boolean mask on the grid of ``affine``); None when empty."""
    if not head.any():
        return None
    return affine[:3, :3] @ np.argwhere(head).mean(0) + affine[:3, 3]


def far_from(centre: np.ndarray, known: list[np.ndarray], distance_mm: float = SEPARATION_MM) -> bool:
    """Whether ``centre`` is at least ``distance_mm`` from every known head centre."""
    return all(np.linalg.norm(np.asarray(centre) - np.asarray(k)) >= distance_mm for k in known)


def _image_index(to_in_row: np.ndarray, grid_shape: tuple[int, ...]) -> np.ndarray:
    """One image voxel coordinate of every grid voxel (``to_in_row``: a row of grid-to-image index affine), as index
    vectors broadcast against each other: the same sums as on a full meshgrid, without building it."""
    g = [np.arange(n, dtype=np.float32).reshape([-1 if a == ax else 1 for a in range(3)])
         for ax, n in enumerate(grid_shape[:3])]
    return to_in_row[0] * g[0] + to_in_row[1] * g[1] + to_in_row[2] * g[2] + to_in_row[3]


def in_field_of_view(grid_affine: np.ndarray, grid_shape: tuple[int, ...], affine: np.ndarray,
                     shape: tuple[int, ...]) -> np.ndarray:
    """Voxels of a grid whose centres fall inside an image's voxel grid (half a voxel of margin)."""
    to_in = np.linalg.inv(affine) @ grid_affine
    inside = np.ones(tuple(grid_shape[:3]), bool)
    for r in range(3):
        v = _image_index(to_in[r], grid_shape)
        inside &= (v >= -0.5) & (v <= shape[r] - 0.5)
    return inside


def lateral_faces(grid_affine: np.ndarray, grid_shape: tuple[int, ...], affine: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray:
    """Voxels of a grid within one grid step of the two faces of an image's field of view across the image axis
    nearest to world x: where the field of view can cut the body at its sides. A thin slab's top and bottom faces
    (the slice axis) are not among them: the body touches those everywhere."""
    aff = np.asarray(affine, np.float64)
    ax = lateral_axis(aff)
    v = _image_index((np.linalg.inv(aff) @ np.asarray(grid_affine, np.float64))[ax], grid_shape)
    tol = float(np.sqrt((np.asarray(grid_affine)[:3, :3] ** 2).sum(0)).max()) / float(np.linalg.norm(aff[:3, ax]))
    return np.broadcast_to((v < -0.5 + tol) | (v > shape[ax] - 0.5 - tol), tuple(grid_shape[:3]))


def body_midline_x(xc: np.ndarray, g_aff: np.ndarray, fov: np.ndarray | None = None,
                   min_span_mm: float = MIN_BODY_SPAN_MM, lateral: np.ndarray | None = None) -> float | None:
    """World x (mm) of the body's midline, the x-centroid of the signal on an RAS grid (normalised image;
    ``fov``: the grid voxels inside the image's field of view, default all; ``lateral``: those on its lateral
    faces, ``lateral_faces``, default its whole boundary), or None when it cannot be told:

    * the body spans less than ``min_span_mm`` in x (one hip at most);
    * (a side is cut where the body touches the field's side there and is at least ``CUT_DEPTH`` of its depth;)
    * the field of view cuts the body on one side only (a field of view off to one side);
    * it cuts the body on both sides and is narrower than ``PELVIS_FOV_MM`` in x (a one-hip field of view
      centred on that hip would put its "midline" on the head).
    """
    fov = np.ones(np.shape(xc), bool) if fov is None else np.asarray(fov, bool)
    body = (np.asarray(xc) > 0.1) & fov
    cols = body.sum(axis=(1, 2)).astype(float)
    idx = np.flatnonzero(cols)
    step = abs(float(g_aff[0, 0]))
    if idx.size == 0 or (idx[-1] - idx[0] + 1) * step < min_span_mm:
        return None
    border = fov & ~ndimage.binary_erosion(fov, border_value=0)  # the field of view's own boundary
    if lateral is not None:  # its sides only (a thin slab's top and bottom touch the body everywhere)
        border &= np.asarray(lateral, bool)
    touching = np.flatnonzero((body & border).sum(axis=(1, 2)))
    depth = body.any(axis=2).sum(axis=1)  # front-to-back extent of the body per column (rows holding it)
    deep = depth >= CUT_DEPTH * depth.max()  # a body edge tapering in the field's last columns is the body's own
    cut = (touching.size > 0 and touching.min() <= idx[0] + 1 and bool(deep[idx[0]]),
           touching.size > 0 and touching.max() >= idx[-1] - 1 and bool(deep[idx[-1]]))
    fov_cols = np.flatnonzero(fov.any(axis=(1, 2)))
    if cut[0] != cut[1] or (all(cut) and fov_cols.size * step < PELVIS_FOV_MM):
        return None
    i = float((cols * np.arange(cols.size)).sum() / cols.sum())
    return float(g_aff[0, 0] * i + g_aff[0, 3])


def plausible_head(centre: np.ndarray, midline_x: float | None, partner: np.ndarray | None = None) -> bool:
    """Whether a head found by the search sits where a femoral head can: away from the body's midline,
    and on the other side of it from a head already found (both only when the midline is known)."""
    if midline_x is None:
        return True
    dx = float(centre[0]) - midline_x
    if abs(dx) < LATERAL_MM:
        return False
    return partner is None or np.sign(dx) != np.sign(float(partner[0]) - midline_x)


def pair_plausible(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two head centres (RAS mm) can be one patient's two femoral heads: an intercapital distance in x
    (``INTERCAPITAL_MM`` widened by ``TILT_MARGIN_MM``) and within ``PAIR_YZ_MM`` front-to-back and in height."""
    d = np.abs(np.asarray(a, float) - np.asarray(b, float))
    lo, hi = INTERCAPITAL_MM[0] - TILT_MARGIN_MM, INTERCAPITAL_MM[1] + TILT_MARGIN_MM
    return bool(lo <= d[0] <= hi and d[1] <= PAIR_YZ_MM and d[2] <= PAIR_YZ_MM)


def first_plausible_pair(centres: list[np.ndarray]) -> tuple[int, int] | None:
    """Indices (i, j), i < j, of the first two head centres, in the order found, that can be one patient's two
    femoral heads (``pair_plausible``); None when no two can."""
    for j in range(1, len(centres)):
        for i in range(j):
            if pair_plausible(centres[i], centres[j]):
                return i, j
    return None


def last_resort(confirmed: list[np.ndarray], reserve: list[np.ndarray], midline_x: float | None) -> list[int]:
    """Indices into ``reserve`` (heads the search set aside: cut caps that pass the anatomy gate only by its
    lower radius limit for cut heads) taken after the search, in the order found: while fewer than two heads are
    known, one at least 2 x ``SEPARATION_MM`` from every known head that can be a known head's partner."""
    known, taken = list(confirmed), []
    for i, c in enumerate(reserve):
        if len(known) >= 2 or not far_from(c, known, 2 * SEPARATION_MM):
            continue
        if known and not (plausible_head(c, midline_x, known[0]) and pair_plausible(known[0], c)):
            continue
        known.append(c)
        taken.append(i)
    return taken


def partner_out_of_view(found: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> bool:
    """Whether no voxel of the other femoral head can lie in the image's field of view (a one-hip field of
    view): every point of it is nearer in x to the head found than the smallest intercapital distance less the
    largest head radius and ``TILT_MARGIN_MM``."""
    edges = [(-0.5, n - 0.5) for n in shape[:3]]
    corners = np.array([[a, b, c] for a in edges[0] for b in edges[1] for c in edges[2]])
    x = corners @ np.asarray(affine, float)[0, :3] + float(affine[0, 3])
    reach = float(np.max(np.abs(x - float(found[0]))))
    return reach < INTERCAPITAL_MM[0] - max(HEAD_RADII_MM) - TILT_MARGIN_MM


def partner_candidates(found: np.ndarray, shape: tuple[int, ...], affine: np.ndarray,
                       midline_x: float | None = None, max_n: int = 12) -> list[np.ndarray]:
    """Where the other femoral head can be, given one head: in x across the midline (both ways when it
    is unknown), at a similar height and depth, nearest to the mirror position first."""
    found = np.asarray(found, float)
    steps = (-LATTICE_MM, 0.0, LATTICE_MM)
    dxs = np.arange(INTERCAPITAL_MM[0], INTERCAPITAL_MM[1] + 1e-6, LATTICE_MM)
    mid = float(np.mean(INTERCAPITAL_MM))
    signs = (-1.0, 1.0) if midline_x is None else (-1.0 if found[0] > midline_x else 1.0,)
    cands = [found + np.array([s * dx, dy, dz]) for s in signs for dx in dxs for dy in steps for dz in steps]
    cands.sort(key=lambda c: float(np.hypot(abs(c[0] - found[0]) - mid, np.linalg.norm(c[1:] - found[1:]))))
    out: list[np.ndarray] = []
    for c in cands:  # a thin oblique slab holds few lattice points: move each into the field of view instead
        c = into_fov(c, shape, affine)
        if all(np.linalg.norm(c - o) >= LATTICE_MM / 3 for o in out):
            out.append(c)
    return out[:max_n]


def mirror_candidate(image: np.ndarray, affine: np.ndarray, centre: np.ndarray) -> list[np.ndarray]:
    """Where the other hip should be: ``centre`` mirrored about the body midline (wide fields of view only).

    The coarse stage sometimes misses one head; the fine stage then checks this candidate.
    """
    bx = estimate_body_centre_x(image, affine, min_fov_x_mm=280.0)
    if bx is None or abs(centre[0] - bx) < 50:
        return []
    cand = np.array([2 * bx - centre[0], centre[1], centre[2]])
    v = np.linalg.inv(affine) @ np.append(cand, 1.0)
    if np.any(v[:3] < 0) or np.any(v[:3] > np.array(image.shape) - 1):
        return []
    return [cand]


def into_fov(centre: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The nearest point (in voxel index space) of the image's field of view to a world point."""
    ijk = np.linalg.inv(affine) @ np.append(np.asarray(centre, float), 1.0)
    ijk = np.clip(ijk[:3], 0, np.asarray(shape[:3]) - 1)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def sphere_votes(x: np.ndarray, spacing_mm: float, radii_mm: tuple[float, ...] = HEAD_RADII_MM) -> np.ndarray:
    """Gradient Hough accumulator for spheres of the given radii (voxel grid of ``x``, isotropic spacing).

    Each strong-edge voxel votes at the points one radius away along and against its
    gradient, weighted by the gradient magnitude, so bright-in-dark and dark-in-bright
    balls both peak at their centres.
    """
    xs = ndimage.gaussian_filter(np.asarray(x, np.float32), 1.0)
    g = np.stack(np.gradient(xs))
    mag = np.sqrt((g * g).sum(0))
    body = xs > 0.05
    if not body.any():
        return np.zeros(x.shape, np.float32)
    strong = body & (mag >= np.percentile(mag[body], 80))
    idx = np.argwhere(strong).astype(np.float32)
    w = mag[strong]
    d = g[:, strong].T / np.maximum(w[:, None], 1e-6)
    acc = np.zeros(x.shape, np.float32)
    shape = np.array(x.shape)
    for r in radii_mm:
        for sign in (-1.0, 1.0):
            p = np.rint(idx + sign * (r / spacing_mm) * d).astype(int)
            ok = np.all((p >= 0) & (p < shape), axis=1)
            np.add.at(acc, tuple(p[ok].T), w[ok])
    return ndimage.gaussian_filter(acc, 1.0)


def strongest_peaks(score: np.ndarray, affine: np.ndarray, strong: np.ndarray, known: list[np.ndarray],
                    midline_x: float | None, max_n: int) -> list[np.ndarray]:
    """Centres (RAS mm) of the local maxima of ``score`` (an RAS grid, ``affine``) where ``strong`` is true,
    strongest first, at least ``SEPARATION_MM`` apart and from known heads, and, when the midline is known,
    at least ``LATERAL_MM`` from it."""
    spacing = float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).mean())
    size = max(3, int(round(SEPARATION_MM / spacing)) | 1)
    peaks = (score == ndimage.maximum_filter(score, size=size)) & strong
    ijk = np.argwhere(peaks)
    ijk = ijk[np.argsort(-score[peaks], kind="stable")]
    out: list[np.ndarray] = []
    for v in ijk:
        c = affine[:3, :3] @ v + affine[:3, 3]
        if far_from(c, known + out) and plausible_head(c, midline_x):
            out.append(c)
        if len(out) >= max_n:
            break
    return out


def sphere_candidates(x: np.ndarray, affine: np.ndarray, known: list[np.ndarray], midline_x: float | None = None,
                      max_n: int = 8) -> list[np.ndarray]:
    """Centres (RAS mm) of the strongest head-sized spheres in ``x`` (an RAS grid), away from known heads
    and, when the midline is known, at least ``LATERAL_MM`` from it."""
    spacing = float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).mean())
    acc = sphere_votes(x, spacing)
    if not acc.any():
        return []
    return strongest_peaks(acc, affine, acc > 0.2 * acc.max(), known, midline_x, max_n)


def coarse_peaks(fg_prob: np.ndarray, affine: np.ndarray, known: list[np.ndarray], midline_x: float | None = None,
                 max_n: int = 4, min_prob: float = PEAK_MIN_PROB) -> list[np.ndarray]:
    """Centres (RAS mm) of the strongest local maxima of the coarse network's smoothed head-and-lesion
    probability (``fg_prob``, on the coarse RAS grid ``affine``) above ``min_prob``, away from known
    heads and, when the midline is known, at least ``LATERAL_MM`` from it."""
    sm = ndimage.gaussian_filter(np.asarray(fg_prob, np.float32), 1.5)
    return strongest_peaks(sm, affine, sm >= min_prob, known, midline_x, max_n)


def lattice_candidates(xc: np.ndarray, affine: np.ndarray, fov: np.ndarray, known: list[np.ndarray],
                       midline_x: float | None = None, max_n: int = 48) -> list[np.ndarray]:
    """Points of a ``SCAN_MM`` lattice over the body (signal) inside the field of view on the coarse RAS grid
    (``xc``, ``affine``, ``fov``), away from known heads and, when the midline is known, at least
    ``LATERAL_MM`` from it; nearest to the body's centre first (the last resort when nothing else found a head)."""
    body = (np.asarray(xc) > 0.1) & np.asarray(fov, bool)
    if not body.any():
        return []
    ijk = np.argwhere(body)
    world = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    lo, hi = world.min(0), world.max(0)
    axes = [np.arange(a + (b - a) % SCAN_MM / 2, b + 1e-6, SCAN_MM) if b - a >= SCAN_MM else np.array([(a + b) / 2])
            for a, b in zip(lo, hi)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inv = np.linalg.inv(affine)
    vox = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((vox >= 0) & (vox < np.array(body.shape)), axis=1)
    pts, vox = pts[ok], vox[ok]
    pts = pts[body[tuple(vox.T)]]
    centre = world.mean(0)
    pts = pts[np.argsort(np.linalg.norm(pts - centre, axis=1), kind="stable")]
    return [p for p in pts if far_from(p, known) and plausible_head(p, midline_x)][:max_n]

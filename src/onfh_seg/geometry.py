"""Ground floor: voxel grids in world space (NIfTI RAS+ mm), numpy/scipy only.

Everything that infer, measure, track, evaluate and training need about an
image grid given its 4x4 affine (voxel index -> RAS+ mm): voxel spacing and
volume, voxel <-> world points, world boxes to voxel bounds, ball masks, the
RAS-aligned grids of model space, and the one resampler (world to world, any
orientation, optionally through a rigid/affine world map).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

# ---------------------------------------------------------------- voxels


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (column norms of ``affine[:3, :3]``)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det(affine[:3, :3])| / 1000."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def voxel_to_ras(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices ``(..., 3)`` to RAS+ mm ``(..., 3)``."""
    A = np.asarray(affine, dtype=np.float64)
    return np.asarray(ijk, dtype=np.float64) @ A[:3, :3].T + A[:3, 3]


def ras_to_voxel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Map RAS+ mm ``(..., 3)`` to (fractional) voxel indices ``(..., 3)``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(xyz, dtype=np.float64) @ inv[:3, :3].T + inv[:3, 3]


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points ``(..., 3)``."""
    M = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ M[:3, :3].T + M[:3, 3]


def mask_centroid_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """World centroid (RAS+ mm) of a boolean mask, or None if it is empty.

    The mean voxel index per axis comes from the mask's voxel counts per index along that axis (integer sums,
    exact), so it equals ``np.argwhere(mask).mean(axis=0)`` bit for bit without listing every voxel (6x faster
    on a body mask of a wide pelvic scan).
    """
    mask = np.asarray(mask, dtype=bool)
    n = int(np.count_nonzero(mask))
    if n == 0:
        return None
    mean = [float(np.dot(np.arange(mask.shape[ax], dtype=np.int64),
                         np.count_nonzero(mask, axis=tuple(b for b in range(mask.ndim) if b != ax)))) / n
            for ax in range(mask.ndim)]
    return voxel_to_ras(affine, np.array(mean))


# ---------------------------------------------------------------- boxes


def mask_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """Index box of a mask's voxels, ``pad`` voxels wider (clipped to the grid); the whole grid if empty."""
    axes = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if not len(hit):
            return tuple(slice(0, n) for n in mask.shape)
        axes.append(slice(max(0, int(hit[0]) - pad), min(mask.shape[ax], int(hit[-1]) + 1 + pad)))
    return tuple(axes)


def box_centroid_ijk(sub_mask: np.ndarray, lo: Sequence[int]) -> np.ndarray | None:
    """Voxel-index centroid, on the whole grid, of a mask given in a box that starts at voxel ``lo``;
    None if empty. Index sums are integers, so this equals the whole-grid mean exactly."""
    idx = np.nonzero(sub_mask)
    n = len(idx[0])
    if n == 0:
        return None
    sums = np.array([v.sum(dtype=np.int64) for v in idx], np.int64) + n * np.asarray(lo, np.int64)
    return sums.astype(np.float64) / n


def world_bounds(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world (RAS) bounding box of a grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)
    w = corners @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    return w.min(0), w.max(0)


def sampled_box(src_shape: Sequence[int], src_affine: np.ndarray, dst_affine: np.ndarray,
                dst_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Destination voxel bounds ``(lo, hi)`` (hi exclusive, clipped) holding every destination voxel whose
    centre lies within the source grid's voxel centres, one voxel of margin; empty (some hi <= lo) if none.

    ``resample`` gives ``cval`` outside that hull (scipy's constant mode does not interpolate beyond the
    edge voxels), so only this box needs computing."""
    n = np.asarray(src_shape[:3], np.float64) - 1
    corners = np.array([[i, j, k] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])], np.float64)
    to_dst = np.linalg.inv(np.asarray(dst_affine, np.float64)) @ np.asarray(src_affine, np.float64)
    d = corners @ to_dst[:3, :3].T + to_dst[:3, 3]
    m = np.array(dst_shape[:3])
    lo = np.clip(np.floor(d.min(0)).astype(int) - 1, 0, m)
    hi = np.clip(np.ceil(d.max(0)).astype(int) + 2, 0, m)
    return lo, hi


def covered_box(src_shape: Sequence[int], src_affine: np.ndarray, dst_affine: np.ndarray,
                dst_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Destination voxel bounds ``(lo, hi)`` (hi exclusive, at least one voxel, clipped) of the box around the
    source grid's corner voxel centres: the destination voxels a crop grid covers."""
    n = np.asarray(src_shape[:3], np.float64) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], float)
    inv = np.linalg.inv(dst_affine)
    vox = (corners @ src_affine[:3, :3].T + src_affine[:3, 3]) @ inv[:3, :3].T + inv[:3, 3]
    m = np.array(dst_shape[:3])
    return np.clip(np.floor(vox.min(0)).astype(int), 0, m - 1), np.clip(np.ceil(vox.max(0)).astype(int) + 1, 1, m)


def field_of_view_x_mm(shape: tuple[int, ...], affine: np.ndarray) -> float:
    """Extent of the image grid along world x (mm), from its 8 corner voxel centres."""
    lo, hi = world_bounds(shape, affine)
    return float(hi[0] - lo[0])


def voxel_box(shape: Sequence[int], affine: np.ndarray, centre_ras: np.ndarray, half_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel bounds ``(lo, hi)`` (hi exclusive, clipped to the grid) covering the axis-aligned
    world box of half-width ``half_mm`` around a point; empty (some hi <= lo) if it misses the grid."""
    c = np.asarray(centre_ras, np.float64)
    corners = np.array([c + half_mm * np.array([sx, sy, sz]) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    ijk = ras_to_voxel(affine, corners)
    n = np.array(shape[:3])
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, n)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, n)
    return lo, hi


def crop_box(arr: np.ndarray, affine: np.ndarray, centre_ras: np.ndarray, half_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-array covering the axis-aligned world box of half-width ``half_mm`` around a point.

    Returns (crop, crop affine); the crop may be empty if the box misses the grid.
    """
    lo, hi = voxel_box(arr.shape, affine, centre_ras, half_mm)
    crop = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    aff = np.array(affine, np.float64, copy=True)
    aff[:3, 3] = aff[:3, :3] @ lo + aff[:3, 3]
    return crop, aff


def ball_mask(shape: tuple[int, ...], affine: np.ndarray, centre_ras: np.ndarray, radius_mm: float) -> np.ndarray:
    """Boolean mask of voxels whose centres lie within ``radius_mm`` of a world point."""
    mask = np.zeros(shape, dtype=bool)
    lo, hi = voxel_box(shape, affine, centre_ras, radius_mm)
    if np.any(hi <= lo):
        return mask
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    d2 = np.sum((voxel_to_ras(affine, grid) - centre_ras) ** 2, axis=-1)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = d2 <= radius_mm**2
    return mask



def share_in_ball(labels: np.ndarray, affine: np.ndarray, centre_ras: np.ndarray, radius_mm: float, value: int) -> float:
    """Share of the grid's voxels within ``radius_mm`` of a world point (those in the grid only) where ``labels``
    equals ``value``; 0 where the ball misses the grid."""
    lo, hi = voxel_box(labels.shape, affine, centre_ras, radius_mm)
    if np.any(hi <= lo):
        return 0.0
    box_affine = np.array(affine, np.float64, copy=True)
    box_affine[:3, 3] = voxel_to_ras(affine, lo)
    ball = ball_mask(tuple(int(v) for v in hi - lo), box_affine, np.asarray(centre_ras, np.float64), radius_mm)
    n = int(ball.sum())
    return float(np.count_nonzero(labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball] == value) / n) if n else 0.0

def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points`` (n, 3): centre and radius (algebraic fit)."""
    p = np.asarray(points, np.float64)
    a = np.column_stack([2.0 * p, np.ones(len(p))])
    b = np.sum(p * p, axis=1)
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = sol[:3]
    radius = float(np.sqrt(max(sol[3] + centre @ centre, 0.0)))
    return centre, radius


def robust_sphere(points: np.ndarray, keep: float = 0.8) -> tuple[np.ndarray, float, float]:
    """Sphere fit, refitted on the ``keep`` share of points nearest to it.

    Returns centre, radius and the RMS distance of the kept points from the
    refitted sphere.
    """
    centre, radius = fit_sphere(points)
    dist = np.abs(np.linalg.norm(points - centre, axis=1) - radius)
    n_keep = max(4, int(round(keep * len(points))))
    inner = points[np.argsort(dist)[:n_keep]]
    centre, radius = fit_sphere(inner)
    resid = np.linalg.norm(inner - centre, axis=1) - radius
    return centre, radius, float(np.sqrt(np.mean(resid**2)))


def axis_ratio(points: np.ndarray) -> float:
    """sqrt(smallest / largest eigenvalue) of the covariance of ``points``: 1 for a ball, ~0 for a disc."""
    if len(points) < 4:
        return 0.0
    ev = np.linalg.eigvalsh(np.cov(np.asarray(points, np.float64).T))
    return float(np.sqrt(max(ev[0], 0.0) / ev[-1])) if ev[-1] > 0 else 0.0


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors on the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])

# ---------------------------------------------------------------- RAS-aligned grids


def ras_grid(lo: np.ndarray, shape: tuple[int, int, int], spacing: float) -> np.ndarray:
    """Affine of an RAS-aligned grid with voxel (0,0,0) at ``lo``."""
    A = np.eye(4)
    A[:3, :3] *= spacing
    A[:3, 3] = lo
    return A


def covering_grid(shape: tuple[int, ...], affine: np.ndarray, spacing: float, multiple: int = 1) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS grid at ``spacing`` covering a scan; sizes rounded up to ``multiple`` (centred)."""
    lo, hi = world_bounds(shape, affine)
    n = np.ceil((hi - lo) / spacing).astype(int) + 1
    n = (np.ceil(n / multiple) * multiple).astype(int)
    centre = (lo + hi) / 2
    lo = centre - (n - 1) * spacing / 2
    return ras_grid(lo, tuple(int(v) for v in n), spacing), tuple(int(v) for v in n)


def crop_grid(centre_ras: np.ndarray, size_vox: int, spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cubic RAS grid of ``size_vox`` voxels centred on a world point."""
    lo = np.asarray(centre_ras, float) - (size_vox - 1) * spacing / 2
    return ras_grid(lo, (size_vox,) * 3, spacing), (size_vox,) * 3


def centred_grid(centre_ras: np.ndarray, half_mm: float, step_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """RAS-aligned isotropic grid (shape, affine) of odd size centred on a world point, reaching ``half_mm``."""
    n = int(np.ceil(half_mm / step_mm))
    shape = (2 * n + 1,) * 3
    aff = np.diag([step_mm, step_mm, step_mm, 1.0])
    aff[:3, 3] = np.asarray(centre_ras, np.float64) - n * step_mm
    return shape, aff


# ---------------------------------------------------------------- the resampler


def _source_transform(src_affine: np.ndarray, dst_affine: np.ndarray, src_to_dst: np.ndarray | None) -> np.ndarray:
    """4x4 map from destination voxel indices to source voxel indices (world to world)."""
    vox = np.linalg.inv(np.asarray(src_affine, np.float64))
    if src_to_dst is not None:
        vox = vox @ np.linalg.inv(np.asarray(src_to_dst, np.float64))
    return vox @ np.asarray(dst_affine, np.float64)


def source_coordinates(vox: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Source voxel coordinates (3, ...) of the destination voxels ``lo`` to ``hi`` (exclusive).

    Computed as scipy's ``affine_transform`` computes them (offset, then each
    index times its matrix column, in axis order), so ``map_coordinates`` on a
    box of them gives exactly the values of the whole-grid call.
    """
    idx = [np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi)]
    shape = tuple(len(i) for i in idx)
    out = np.empty((3,) + shape, np.float64)
    for h in range(3):  # ((offset + i m0) + j m1) + k m2: the sums along the first two axes once, then one pass
        first_two = (vox[h, 3] + idx[0] * vox[h, 0])[:, None] + (idx[1] * vox[h, 1])[None, :]
        np.add(first_two[:, :, None], (idx[2] * vox[h, 2])[None, None, :], out=out[h])
    return out


def resample(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int],
             order: int = 1, cval: float = 0.0, src_to_dst: np.ndarray | None = None,
             box: tuple[Sequence[int], Sequence[int]] | None = None, threads: int = 1) -> np.ndarray:
    """Resample an array onto another grid, world to world (any orientation).

    Each destination voxel centre p (world) samples the source at
    ``inv(src_to_dst) @ p`` (``src_to_dst``: a 4x4 world map from the source's
    world to the destination's, e.g. follow-up -> baseline; None: the same
    world). ``order`` 1 = trilinear (float32 out), 0 = nearest neighbour
    (dtype kept). Outside the source: ``cval``.

    ``box`` = (lo, hi) computes only those destination voxels (an array of
    shape hi - lo); ``threads`` > 1 splits the work along the first axis. Both
    give exactly the values of the plain whole-grid call.
    """
    vox = _source_transform(src_affine, dst_affine, src_to_dst)
    src = np.asarray(data) if order == 0 else np.asarray(data).astype(np.float32, copy=False)
    dst_shape = tuple(int(s) for s in dst_shape)
    if box is None and threads <= 1:
        out = ndimage.affine_transform(src, vox[:3, :3], offset=vox[:3, 3], output_shape=dst_shape,
                                       order=order, mode="constant", cval=cval, prefilter=False)
        return out.astype(src.dtype, copy=False)
    lo, hi = (np.zeros(3, int), np.array(dst_shape)) if box is None else (np.asarray(box[0], int), np.asarray(box[1], int))
    out = np.empty(tuple(int(v) for v in hi - lo), src.dtype)

    def part(a: int, b: int) -> None:
        coords = source_coordinates(vox, (lo[0] + a, lo[1], lo[2]), (lo[0] + b, hi[1], hi[2]))
        ndimage.map_coordinates(src, coords, output=out[a:b], order=order, mode="constant", cval=cval, prefilter=False)

    n = out.shape[0]
    chunks = [(n * i // max(1, threads), n * (i + 1) // max(1, threads)) for i in range(max(1, threads))]
    chunks = [c for c in chunks if c[1] > c[0]]
    if len(chunks) <= 1 or out.size == 0:
        for a, b in chunks:
            part(a, b)
    else:  # scipy's interpolation releases the GIL
        with ThreadPoolExecutor(len(chunks)) as pool:
            list(pool.map(lambda ab: part(*ab), chunks))
    return out


def resample_labels(labels: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int],
                    num_classes: int) -> np.ndarray:
    """Resample a label map by linear interpolation of each class's one-hot mask, then argmax."""
    best = np.full(tuple(dst_shape), -1.0, np.float32)
    out = np.zeros(tuple(dst_shape), np.uint8)
    for c in range(num_classes):
        p = resample((labels == c).astype(np.float32), src_affine, dst_affine, dst_shape, 1, 1.0 if c == 0 else 0.0)
        better = p > best
        out[better] = c
        best[better] = p[better]
    return out


def resample_probs(probs: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int]) -> np.ndarray:
    """Resample class probabilities (C, ...) linearly; outside the source -> background."""
    out = np.empty((probs.shape[0],) + tuple(int(s) for s in dst_shape), np.float32)
    for c in range(probs.shape[0]):
        out[c] = resample(probs[c], src_affine, dst_affine, dst_shape, 1, 1.0 if c == 0 else 0.0)
    return out

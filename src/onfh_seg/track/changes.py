"""Change measures of one hip between two scans (numpy/scipy, no I/O).

Hips are matched by head centre (``match_hips``, ``hip_names``). On a common
grid in baseline space both label maps give the regenerated and new-necrosis
volumes (``lesion_changes``: only the net change counts within
``boundary_width`` of the baseline lesion border); ``ray_extent`` along rays
within a cone towards the baseline lesion gives the head height whose loss is
the collapse indicator (docs/CONTRACTS.md, onfh-track outputs).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import apply, crop_box, voxel_spacing
from onfh_seg.labels import HEAD, LESION_LABELS
from onfh_seg.track.inputs import ScanData
from onfh_seg.track.params import TrackParams


def match_hips(base: list[dict], follow: list[dict], max_mm: float) -> dict[int, int]:
    """Baseline hip index -> follow-up hip index, nearest head centres (world, no transform).

    Poses differ by a few cm at most while the hips are ~18 cm apart. Greedy by
    distance; pairs further than ``max_mm`` are not matched.
    """
    pairs = []
    for i, a in enumerate(base):
        for j, b in enumerate(follow):
            d = float(np.linalg.norm(np.subtract(a["head_centre_ras_mm"], b["head_centre_ras_mm"])))
            if d <= max_mm:
                pairs.append((d, i, j))
    out: dict[int, int] = {}
    used = set()
    for d, i, j in sorted(pairs):
        if i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def hip_names(base: list[dict], matches: list[dict[int, int]], follows: list[list[dict]]) -> list[str]:
    """Name of each baseline hip: its side, or the first known side at a follow-up if baseline says unknown."""
    names = []
    for i, h in enumerate(base):
        name = h["side"]
        if name not in ("right", "left"):
            for m, f in zip(matches, follows):
                if i in m and f[m[i]]["side"] in ("right", "left"):
                    name = f[m[i]]["side"]
                    break
        names.append(name)
    seen: dict[str, int] = {}
    out = []
    for n in names:  # keep names unique
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}{seen[n]}")
    return out


# ---------------------------------------------------------------- on a common grid


def hip_crop(d: ScanData, side: str, centre: np.ndarray, half_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, hip labels, hip region, affine) cropped to a box around ``centre``."""
    labels = np.where(d.regions[side], d.labels, 0).astype(np.uint8)
    lab, aff = crop_box(labels, d.affine, centre, half_mm)
    img, _ = crop_box(d.image, d.affine, centre, half_mm)
    reg, _ = crop_box(d.regions[side], d.affine, centre, half_mm)
    return img, lab, reg, aff


def fibonacci_cap(direction: np.ndarray, cone_deg: float, n: int = 64) -> np.ndarray:
    """``n`` deterministic unit vectors spread over the cap within ``cone_deg`` of ``direction``."""
    d = direction / np.linalg.norm(direction)
    cmin = math.cos(math.radians(cone_deg))
    k = np.arange(n) + 0.5
    z = 1.0 - (1.0 - cmin) * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rr = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    local = np.stack([rr * np.cos(phi), rr * np.sin(phi), z], axis=1)
    a = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(d, a)
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return local @ np.stack([u, v, d])


def ray_extent(head: np.ndarray, affine: np.ndarray, origin_ras: np.ndarray, dirs_ras: np.ndarray,
               max_mm: float, to_grid: np.ndarray | None = None, step_mm: float = 0.25) -> float:
    """Median distance from ``origin_ras`` to the head surface along ``dirs_ras``.

    ``head`` is a boolean mask on a grid with ``affine``; ``to_grid`` maps the
    (baseline) world of the rays into that grid's world (None: identity). The
    mask is sampled trilinearly; the surface is the first 0.5 crossing after
    the ray has been inside. NaN if no ray finds a surface.
    """
    t = np.arange(0.0, max_mm + step_mm, step_mm)
    pts = origin_ras[None, None, :] + t[None, :, None] * dirs_ras[:, None, :]
    if to_grid is not None:
        pts = apply(to_grid, pts)
    vox = apply(np.linalg.inv(affine), pts)
    vals = ndimage.map_coordinates(head.astype(np.float32), vox.reshape(-1, 3).T, order=1, mode="constant",
                                   cval=0.0, prefilter=False).reshape(pts.shape[:2])
    lengths = []
    for row in vals:
        inside = row >= 0.5
        if not inside.any():
            continue
        first_in = int(np.argmax(inside))
        out = np.nonzero(~inside[first_in:])[0]
        if out.size == 0:
            continue
        j = first_in + int(out[0])  # first sample outside
        a, b = row[j - 1], row[j]
        frac = (a - 0.5) / (a - b) if a != b else 0.0
        lengths.append(t[j - 1] + frac * step_mm)
    return float(np.median(lengths)) if lengths else float("nan")


def boundary_width(params: TrackParams, *affines: np.ndarray) -> float:
    """Width (mm) of the ambiguous shell around the baseline lesion border.

    ``params.boundary_mm`` if set, else half the coarsest voxel edge of the
    scans plus 1 mm (nearest-neighbour label borders move by up to half a voxel
    in each scan; 1 mm for registration error).
    """
    if params.boundary_mm is not None:
        return float(params.boundary_mm)
    return round(0.5 * max(float(voxel_spacing(a).max()) for a in affines) + 1.0, 3)


def lesion_changes(base: np.ndarray, follow: np.ndarray, d_in: np.ndarray | None, d_out: np.ndarray | None,
                   width_mm: float) -> tuple[int, int]:
    """Voxel counts (regenerated, new necrosis) on a common grid.

    ``base``/``follow`` are label maps on the same grid (baseline space);
    ``d_in``/``d_out`` the distances (mm) to the baseline lesion border inside /
    outside the baseline lesion. Deeper than ``width_mm`` from the border:
    regenerated = baseline lesion now viable (1), new necrosis = baseline
    viable (1) now lesion (2+3), counted as they are. Within the border shell,
    voxel-size and registration noise moves the border both ways by similar
    amounts, so only the net change counts there: regenerated gets
    max(0, shell lesion->viable - shell viable->lesion), new necrosis the
    opposite. (A border that shrinks on one side and grows on the other by
    similar volumes therefore nets out.) Counts of 0 without a baseline lesion
    (then everything current is new necrosis).
    """
    b_les = np.isin(base, LESION_LABELS)
    f_les = np.isin(follow, LESION_LABELS)
    f_viable = follow == HEAD
    if d_in is None or not b_les.any():
        return 0, int(f_les.sum())
    to_viable = b_les & f_viable
    to_lesion = (base == HEAD) & f_les
    deep_in = d_in > width_mm
    deep_out = d_out > width_mm
    shell_regen = int((to_viable & ~deep_in).sum())
    shell_new = int((to_lesion & ~deep_out).sum())
    regen = int((to_viable & deep_in).sum()) + max(0, shell_regen - shell_new)
    new = int((to_lesion & deep_out).sum()) + max(0, shell_new - shell_regen)
    return regen, new

"""Anatomy gate: is what the segmentation found a femoral head in a hip joint?

Header-free plausibility check run on the label map before any measurement
(docs/CONTRACTS.md, QC flags ``no_femoral_head_found``, ``not_hip_anatomy``,
``implausible_head_shape``). For every femoral head the post-processing would
measure (``hips.find_heads`` + ``select_heads``: at most one per side):

* a sphere is fitted to the head's surface voxels (least squares, then refitted
  on the 80 % of points nearest to the sphere: the flat head-neck cut and a
  collapsed dome are partly ignored); its radius must lie in an adult range (a
  head cut by the field of view: from a lower limit, as a cut cap fits small) and
  the RMS distance of the kept surface points from the sphere must be small
  relative to the radius;
* the head must not be a flat or elongated blob: sqrt of the smallest over the
  largest eigenvalue of its voxel covariance (1 for a ball);
* a socket must surround it: acetabulum (label 4) within a shell around the
  fitted sphere, covering a share of the directions of the superior cap (world
  +z, within ``cap_deg`` of straight up) and amounting to a minimum volume;
  only cap directions whose socket lies in the image's field of view count (a
  thin slab can cut off the roof of a whole head), and with fewer than half of
  them in view the socket is not judged;
* the lesion (2+3) must leave some viable head (1).

With two heads their centres must lie at an adult inter-head distance. A scan
passes when every head passes and the pair distance (if two) is plausible; a
scan with two heads of which only one passes keeps the plausible one and flags
the other ``implausible_head_shape`` (whatever their distance); two plausible
heads at an implausible distance, or no plausible head, make the scan
``not_hip_anatomy`` (``no_femoral_head_found`` without any head component).

numpy/scipy only. Thresholds: ``AnatomyLimits`` (configs/infer.yaml
``anatomy``); how they were chosen: docs/CONTRACTS.md, "Anatomy gate".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
from scipy import ndimage

from onfh_seg.geometry import (
    axis_ratio, fibonacci_directions, ras_to_voxel, robust_sphere, share_in_ball, voxel_box, voxel_to_ras,
    voxel_volume_ml,
)
from onfh_seg.hips import Head, find_heads, select_heads
from onfh_seg.labels import ACETABULUM, HEAD, HEAD_LABELS, LESION_LABELS


@dataclass(frozen=True)
class AnatomyLimits:
    """Thresholds of the anatomy gate (all world mm unless stated)."""

    min_head_ml: float = 5.0  # smallest head component considered (as split_hips)
    radius_mm: tuple[float, float] = (16.0, 31.0)  # fitted sphere radius
    # lower limit of that radius for a head cut by the field of view: a cut cap fits small (true-label caps of
    # 6.4-8.3 mL: 0.68-0.74 of their radius, scripts/cap_fit_bias.py); the head search takes such a head only as
    # a last resort (engine._judge). Structures refused for their radius alone on development data: 12.2-12.5 mm
    partial_min_radius_mm: float = 14.0
    # a cut head must fill its fitted sphere where the grid holds it (|head in ball| / |ball in grid|): a flat
    # structure can fit a sphere well with its surface alone (a real neck T2: 0.11; cut heads passing on seven
    # development cohorts, two networks: 0.73 or more)
    min_cut_fill: float = 0.5
    max_rel_rms: float = 0.11  # RMS surface-to-sphere distance / radius (inner 80 % of points)
    min_axis_ratio: float = 0.58  # sqrt(smallest / largest covariance eigenvalue) of the head voxels
    shell_mm: tuple[float, float] = (-4.0, 20.0)  # acetabulum searched from r + lo to r + hi around the sphere
    cap_deg: float = 45.0  # superior cap: directions within this angle of world +z
    # share of cap directions with acetabulum in the shell (whole heads): 0.35 until 2026-12-04, when a network took a
    # real greater trochanter for a head at 0.42; whole heads of the development data (style-C dev, retest, real
    # dev: 81 heads, shipped network) had 0.73 or more
    min_cap_coverage: float = 0.6
    min_acetabulum_ml: float = 10.0  # acetabulum volume in the shell
    max_lesion_fraction: float = 0.93  # lesion (2+3) / head (1+2+3)
    pair_distance_mm: tuple[float, float] = (130.0, 230.0)  # centre-to-centre distance of two heads
    # a lone head's distance from the body's midline where a wide field of view shows it: a femoral head lies about
    # 65 mm or more out (pairs 130-230 mm apart); development heads: synthetic 47 mm or more, real 77-93 mm
    min_midline_mm: float = 30.0


def limits_from_config(cfg: Mapping[str, Any] | None) -> AnatomyLimits:
    """``AnatomyLimits`` with the keys given in ``cfg`` (a mapping; unknown keys are an error)."""
    known = {f.name for f in fields(AnatomyLimits)}
    values: dict[str, Any] = {}
    for key, value in dict(cfg or {}).items():
        if key == "enabled":
            continue
        if key not in known:
            raise ValueError(f"unknown anatomy setting '{key}' (known: {sorted(known)})")
        if isinstance(getattr(AnatomyLimits(), key), tuple):
            pair = [float(v) for v in value]
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"anatomy.{key} must be [low, high], got {value!r}")
            values[key] = (pair[0], pair[1])
        else:
            values[key] = float(value)
    return AnatomyLimits(**values)


@dataclass
class HeadCheck:
    """Measured shape and context of one head component, and what failed."""

    centre_ras_mm: list[float]  # fitted sphere centre
    component_centre_ras_mm: list[float]  # centroid of the head component (what measure.py calls the head centre)
    volume_ml: float
    radius_fit_mm: float
    rel_rms: float
    axis_ratio: float
    cap_coverage: float
    acetabulum_ml: float
    lesion_fraction: float
    partial: bool = False  # the head touches the edge of the field of view (cut off)
    cap_in_view: float = 1.0  # share of the superior cap's directions whose socket lies in the field of view
    sphere_fill: float = 1.0  # a cut head: share of its fitted sphere's voxels in the grid that it holds
    failures: list[str] = field(default_factory=list)

    @property
    def plausible(self) -> bool:
        return not self.failures


@dataclass
class AnatomyResult:
    """Verdict of the gate: ``flag`` is None (pass), "no_femoral_head_found" or "not_hip_anatomy"."""

    flag: str | None
    reasons: list[str]
    heads: list[HeadCheck]
    pair_distance_mm: float | None = None

    @property
    def passed(self) -> bool:
        return self.flag is None

    def partial_centres(self) -> list[np.ndarray]:
        """Component centroids of plausible heads cut by the edge of the field of view (``partial_head``)."""
        return [np.asarray(h.component_centre_ras_mm) for h in self.heads if h.plausible and h.partial]

    def implausible_centres(self) -> list[np.ndarray]:
        """Component centroids of the heads that failed (per-hip ``implausible_head_shape`` when the scan passed)."""
        return [np.asarray(h.component_centre_ras_mm) for h in self.heads if not h.plausible]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "flag": self.flag,
            "reasons": list(self.reasons),
            "pair_distance_mm": None if self.pair_distance_mm is None else round(self.pair_distance_mm, 1),
            "heads": [_rounded(asdict(h)) for h in self.heads],
        }


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = round(v, 3) if np.isfinite(v) else None  # JSON has no inf/nan
        elif isinstance(v, list) and v and isinstance(v[0], float):
            out[k] = [round(x, 2) for x in v]
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- geometry pieces


def edge_voxels(mask: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], depth: int = 1) -> np.ndarray:
    """Voxels of ``mask`` (a box at index ``offset`` of a volume of ``shape``) within ``depth`` voxels of its faces."""
    out = np.zeros(mask.shape, bool)
    for ax in range(3):
        n, lo = mask.shape[ax], int(offset[ax])
        near = (slice(0, max(0, min(n, depth - lo))), slice(max(0, min(n, shape[ax] - depth - lo)), n))
        for sl in near:
            idx = (slice(None),) * ax + (sl,)
            out[idx] |= mask[idx]
    return out


CAP_DIRECTIONS = fibonacci_directions(400)
CAP_ROWS = 4096  # offsets per block of dot products in ``cap_coverage`` (13 MB)
# more than the lattice's covering radius (about 7.8 degrees: every unit vector lies that close to some direction)
CAP_MARGIN_DEG = 15.0
SOCKET_DEPTH_MM = 5.0  # where the socket of a cap direction is looked for: this far beyond the fitted sphere
MIN_CAP_IN_VIEW = 0.5  # share of cap directions in view below which the socket is not judged
# a cut head's boundary this near a face of the view may be the cut too (partial volume, a slab profile fading at the
# face): a cut head is fitted with and without it and judged on the better fit (until 2026-12-07: with it)
CUT_FACE_VOX = 2


def cap_in_view(centre: np.ndarray, radius: float, affine: np.ndarray, shape: tuple[int, ...],
                cap_deg: float) -> np.ndarray:
    """Per superior-cap direction (``CAP_DIRECTIONS`` within ``cap_deg`` of +z, in order): whether the socket
    there, ``SOCKET_DEPTH_MM`` beyond the fitted sphere, lies inside the image's field of view."""
    cap = CAP_DIRECTIONS[CAP_DIRECTIONS[:, 2] >= np.cos(np.radians(cap_deg))]
    vox = ras_to_voxel(affine, np.asarray(centre, np.float64) + cap * (radius + SOCKET_DEPTH_MM))
    return np.all((vox >= -0.5) & (vox <= np.asarray(shape[:3], np.float64) - 0.5), axis=1)


def cap_coverage(offsets: np.ndarray, cap_deg: float, seen: np.ndarray | None = None) -> float:
    """Share of the superior-cap directions (within ``cap_deg`` of +z) hit by some offset vector; with ``seen``
    (``cap_in_view``), the share of the directions in view.

    ``offsets`` (n, 3) are world vectors from the head centre to acetabulum
    voxels; each is assigned to its nearest direction of a 400-point lattice.
    A vector's nearest direction lies within ``CAP_MARGIN_DEG`` of it, so only
    vectors within ``cap_deg`` + that margin of +z can hit a cap direction, and
    only directions within ``cap_deg`` + twice the margin can be their nearest:
    the same hits as comparing every vector with every direction.
    """
    cap = CAP_DIRECTIONS[:, 2] >= np.cos(np.radians(cap_deg))
    seen = np.ones(int(cap.sum()), bool) if seen is None else np.asarray(seen, bool)
    if not len(offsets) or not seen.any():
        return 0.0
    unit = offsets / np.maximum(np.linalg.norm(offsets, axis=1, keepdims=True), 1e-9)
    unit = unit[unit[:, 2] >= np.cos(np.radians(min(cap_deg + CAP_MARGIN_DEG, 180.0)))]
    near = np.flatnonzero(CAP_DIRECTIONS[:, 2] >= np.cos(np.radians(min(cap_deg + 2 * CAP_MARGIN_DEG, 180.0))))
    hit = np.zeros(len(CAP_DIRECTIONS), bool)  # complete for the cap directions only
    for a in range(0, len(unit), CAP_ROWS):  # in row blocks: all rows at once take ~100 MB for a large socket
        hit[near[np.argmax(unit[a:a + CAP_ROWS] @ CAP_DIRECTIONS[near].T, axis=1)]] = True
    return float(hit[cap][seen].mean())


# ---------------------------------------------------------------- per head and scan


def head_sphere(mask: np.ndarray, box_affine: np.ndarray, offset: np.ndarray, shape: tuple[int, ...],
                fallback: np.ndarray, cut_vox: int) -> tuple[np.ndarray, float, float]:
    """``robust_sphere`` of a head component's boundary (``mask``, a box at ``offset`` of a volume of ``shape``)
    without the voxels within ``cut_vox`` of the volume's faces; (``fallback``, 0, inf) under 10 points."""
    boundary = mask & ~ndimage.binary_erosion(mask) & ~edge_voxels(mask, offset, shape, cut_vox)
    pts = voxel_to_ras(box_affine, np.argwhere(boundary))
    return robust_sphere(pts) if len(pts) >= 10 else (np.asarray(fallback, np.float64), 0.0, np.inf)


def check_head(
    labels: np.ndarray, affine: np.ndarray, cc: np.ndarray, head: Head, limits: AnatomyLimits,
    component_box: tuple[slice, ...] | None = None,
) -> HeadCheck:
    """Shape, socket and lesion checks of one head component (``cc == head.component``).

    Works on the index box around the head that holds its socket shell and
    ``component_box`` (the component's own bounding box, if given).
    """
    half = 2.0 * head.radius_mm + limits.shell_mm[1] + 10.0
    lo, hi = voxel_box(labels.shape, affine, head.centre_ras, half)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    if component_box is not None:
        box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box, component_box))
    lab = labels[box]
    offset = np.array([s.start for s in box], np.float64)
    box_affine = np.asarray(affine, np.float64).copy()
    box_affine[:3, 3] = voxel_to_ras(affine, offset)
    mask = cc[box] == head.component

    # a head cut by the edge of the field of view: the cut face is not head surface, and the visible
    # part of a sphere is flatter than a ball, with its socket possibly out of view
    partial = bool(edge_voxels(mask, offset, labels.shape).any())
    centre, radius, rms = head_sphere(mask, box_affine, offset, labels.shape, head.centre_ras, 1)
    if partial:  # the cut may take the slice next to the face too: the better of the two fits
        fit = head_sphere(mask, box_affine, offset, labels.shape, head.centre_ras, CUT_FACE_VOX)
        if fit[1] > 0 and (radius <= 0 or fit[2] / fit[1] < rms / radius):
            centre, radius, rms = fit
    ratio = axis_ratio(voxel_to_ras(box_affine, np.argwhere(mask)))

    acet_idx = np.argwhere(lab == ACETABULUM)
    acet_off = voxel_to_ras(box_affine, acet_idx) - centre
    dist = np.linalg.norm(acet_off, axis=1)
    in_shell = (dist >= radius + limits.shell_mm[0]) & (dist <= radius + limits.shell_mm[1])
    seen = cap_in_view(centre, radius, affine, labels.shape, limits.cap_deg)
    coverage = cap_coverage(acet_off[in_shell], limits.cap_deg, seen)
    acet_ml = float(in_shell.sum()) * voxel_volume_ml(affine)

    n_head = int(mask.sum())
    n_lesion = int(np.isin(lab[mask], LESION_LABELS).sum())
    lesion_fraction = n_lesion / n_head if n_head else 0.0
    has_viable = bool(np.any(lab[mask] == HEAD))

    check = HeadCheck(
        centre_ras_mm=[float(v) for v in centre], component_centre_ras_mm=[float(v) for v in head.centre_ras],
        volume_ml=head.volume_ml, radius_fit_mm=radius,
        rel_rms=float(rms / radius) if radius > 0 else float("inf"), axis_ratio=ratio,
        cap_coverage=coverage, acetabulum_ml=acet_ml, lesion_fraction=lesion_fraction, partial=partial,
        cap_in_view=float(seen.mean()) if len(seen) else 0.0,
    )
    lo, hi = limits.radius_mm
    lo = min(lo, limits.partial_min_radius_mm) if partial else lo
    if not lo <= radius <= hi:
        check.failures.append(f"head sphere radius {radius:.1f} mm outside {lo:g}-{hi:g} mm")
    if not check.rel_rms <= limits.max_rel_rms:
        check.failures.append(f"head surface not spherical (RMS {check.rel_rms:.2f} x radius > {limits.max_rel_rms:g})")
    if partial and lo <= radius <= hi:
        check.sphere_fill = share_in_ball(cc, affine, centre, radius, head.component)
        if check.sphere_fill < limits.min_cut_fill:
            check.failures.append(f"cut head fills {100 * check.sphere_fill:.0f}% of its sphere in view "
                                  f"(< {100 * limits.min_cut_fill:.0f}%)")
    # a head cut by the field of view: only its radius, the sphericity of its visible surface and its lesion
    # can be checked; a whole head whose socket is mostly out of view (a thin slab): not its socket
    if not partial and ratio < limits.min_axis_ratio:
        check.failures.append(f"head flat or elongated (axis ratio {ratio:.2f} < {limits.min_axis_ratio:g})")
    if not partial and check.cap_in_view >= MIN_CAP_IN_VIEW:
        if coverage < limits.min_cap_coverage:
            check.failures.append(f"no acetabulum over the head (superior cap {100 * coverage:.0f}% covered "
                                  f"< {100 * limits.min_cap_coverage:.0f}%)")
        if acet_ml < limits.min_acetabulum_ml:
            check.failures.append(f"too little acetabulum around the head ({acet_ml:.1f} mL < {limits.min_acetabulum_ml:g} mL)")
    if lesion_fraction > limits.max_lesion_fraction or not has_viable:
        check.failures.append(f"lesion fills the head ({100 * lesion_fraction:.0f}%)")
    return check


def cut_cap_only(check: HeadCheck, limits: AnatomyLimits | None = None) -> bool:
    """Whether a plausible head passed only by ``partial_min_radius_mm`` (cut by the field of view, fitted under
    the whole-head radius range)."""
    limits = limits or AnatomyLimits()
    return check.plausible and check.partial and check.radius_fit_mm < limits.radius_mm[0]


def check_anatomy(labels: np.ndarray, affine: np.ndarray, limits: AnatomyLimits | None = None) -> AnatomyResult:
    """The anatomy gate on a cleaned label map (see the module docstring)."""
    limits = limits or AnatomyLimits()
    labels = np.asarray(labels)
    cc, heads = find_heads(labels, affine, limits.min_head_ml)
    heads = select_heads(heads)
    if not heads:
        if np.isin(labels, HEAD_LABELS).any():
            return AnatomyResult("no_femoral_head_found", ["no head component of at least "
                                                           f"{limits.min_head_ml:g} mL"], [])
        return AnatomyResult("no_femoral_head_found", ["no femoral head label"], [])
    boxes = ndimage.find_objects(cc)
    checks = [check_head(labels, affine, cc, h, limits, boxes[h.component - 1]) for h in heads]
    reasons = [f"head at {_xyz(c.component_centre_ras_mm)}: {f}" for c in checks for f in c.failures]
    distance = None
    if len(checks) == 2:
        distance = float(np.linalg.norm(np.subtract(checks[0].centre_ras_mm, checks[1].centre_ras_mm)))
        lo, hi = limits.pair_distance_mm
        if not lo <= distance <= hi:
            why = f"two heads {distance:.0f} mm apart (a hip pair: {lo:g}-{hi:g} mm)"
            if sum(c.plausible for c in checks) != 1:
                return AnatomyResult("not_hip_anatomy", reasons + [why], checks, distance)
            for c in checks:  # one convincing head: keep it, the other one is not its partner
                if not c.plausible:
                    c.failures.append(why)
            reasons.append(why)
    if not any(c.plausible for c in checks):
        return AnatomyResult("not_hip_anatomy", reasons, checks, distance)
    return AnatomyResult(None, reasons, checks, distance)


def midline_check(result: AnatomyResult, body_centre_x: float | None, limits: AnatomyLimits | None = None) -> AnatomyResult:
    """A scan the gate passed on one plausible head: that head must lie ``min_midline_mm`` or more from the body's
    midline (``body_centre_x``, world x; None where the field of view cannot show it: no check), else the scan is
    ``not_hip_anatomy`` (a structure near the midline, e.g. in an abdomen, is not a femoral head)."""
    limits = limits or AnatomyLimits()
    plausible = [h for h in result.heads if h.plausible]
    if not result.passed or body_centre_x is None or len(plausible) != 1:
        return result
    off = abs(plausible[0].centre_ras_mm[0] - body_centre_x)
    if off >= limits.min_midline_mm:
        return result
    why = f"{off:.0f} mm from the body's midline (a femoral head: {limits.min_midline_mm:g} mm or more)"
    heads = [replace(h, failures=[*h.failures, why]) if h is plausible[0] else h for h in result.heads]
    reasons = [*result.reasons, f"head at {_xyz(plausible[0].component_centre_ras_mm)}: {why}"]
    return AnatomyResult("not_hip_anatomy", reasons, heads, result.pair_distance_mm)


def _xyz(v: list[float]) -> str:
    return "(" + ", ".join(f"{a:.0f}" for a in v) + ") mm"

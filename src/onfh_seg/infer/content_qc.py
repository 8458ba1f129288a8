"""Image content QC: damaged voxels that a header check cannot see (issue 24).

A run of bytes overwritten on disk or in transfer (0xFF, zeros, NaN) shows up
as a *slab*: a long run of one value in storage order (``data[:, :, k]`` with
x fastest, as NIfTI and DICOM store a slice) where the slices beside it hold
something else. A slice whose values were scaled differently from its
neighbours (a wrong per-slice rescale, wrapped bits) shows up as a *scale
jump*: its voxels are a steady multiple of the mean of the two slices beside
it. Either makes the image's numbers untrustworthy: the scan gets the QC flag
``suspect_image_content`` and one reason per finding.

Not a finding: background of one value (zero-filled air) whose neighbours are
background too, air at the edge of a body that moves between thick slices
(the slice beside holds tissue, but its own slice holds more air beside the
run), and whole constant slices at either end of the volume (padding). numpy only; memory is a few slices at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from onfh_seg.arrays import every_nth

SUSPECT_IMAGE_CONTENT = "suspect_image_content"  # QC flag (onfh_seg.quality.QC_FLAGS)
MIN_SLAB_ML = 0.1  # smallest slab worth a flag (the smallest lesion classed is 0.5 mL)
MIN_SLAB_VOXELS = 8
SLAB_NEIGHBOUR_FRACTION = 0.4  # share of a run's voxels whose slice neighbours hold a clearly other value
IN_PLANE_UNLIKE = 0.6  # share of the voxels beside a run, in its own slice, that hold a clearly other value
SLAB_CONTRAST = 0.05  # "clearly other": more than this fraction of the image's 1st-99th percentile range
SCALE_JUMP = 1.35  # a slice's median ratio to its neighbours' mean beyond this (or below 1/this): a jump
NEIGHBOUR_AGREEMENT = 0.2  # neighbours used for the ratio differ by at most this fraction of their mean
RATIO_SPREAD = 0.15  # a scale error moves every voxel alike: most ratios lie within this of the median
MIN_RATIO_VOXELS = 64
MIN_RATIO_FRACTION = 0.02  # of the slice


def min_slab_voxels(voxel_ml: float) -> int:
    """Run length (voxels) from which a constant run counts as a slab: ``MIN_SLAB_ML`` of tissue, at least 8."""
    if not (math.isfinite(voxel_ml) and voxel_ml > 0):
        return MIN_SLAB_VOXELS
    return max(MIN_SLAB_VOXELS, math.ceil(MIN_SLAB_ML / voxel_ml))


class _Planes:
    """Slices of a volume as arrays, each made once and kept while the next two are used (a rolling window)."""

    def __init__(self, image: np.ndarray, make: Callable[[np.ndarray], np.ndarray]) -> None:
        self.image, self.make, self.kept = image, make, {}

    def __getitem__(self, k: int) -> np.ndarray:
        if k not in self.kept:
            self.kept = {j: v for j, v in self.kept.items() if abs(j - k) <= 2}
            self.kept[k] = self.make(self.image[:, :, k])
        return self.kept[k]


def _storage_order(plane: np.ndarray) -> np.ndarray:
    """A slice in storage order (x fastest)."""
    return np.asarray(plane).ravel(order="F")


def _every_other(plane: np.ndarray) -> np.ndarray:
    """Every other voxel of a slice in x and y, as float32 (a scale error moves every voxel alike)."""
    return np.asarray(plane[::2, ::2], np.float32)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of equal consecutive values of a 1-D array."""
    cuts = np.flatnonzero(values[1:] != values[:-1]) + 1
    bounds = np.concatenate([[0], cuts, [values.size]])
    return bounds[:-1], np.diff(bounds)


def _constant_value(image: np.ndarray, k: int) -> float | None:
    """The one value of slice ``k``, or None when it holds several."""
    plane = image[:, :, k]
    value = plane.flat[0]
    return float(value) if np.all(plane == value) else None


def _padding_slices(image: np.ndarray) -> set[int]:
    """Whole constant slices at either end of the volume that share one value (zero padding, not damage)."""
    depth = image.shape[2]
    padded: set[int] = set()
    for order in (range(depth), range(depth - 1, -1, -1)):
        first = None
        for k in order:
            value = _constant_value(image, k)
            if value is None or (first is not None and value != first):
                break
            first = value
            padded.add(k)
    return padded


def _sample(image: np.ndarray) -> np.ndarray:
    """About 200,000 voxels of ``image`` (every n-th in memory order)."""
    return every_nth(image, max(1, image.size // 200_000))


def constant_slabs(image: np.ndarray, voxel_ml: float) -> list[str]:
    """One reason per slice that holds a long constant run unlike the slices beside it."""
    depth = image.shape[2]
    min_run = min_slab_voxels(voxel_ml)
    lo, hi = np.percentile(_sample(image), [1.0, 99.0])
    contrast = SLAB_CONTRAST * float(hi - lo)
    padded = _padding_slices(image)
    planes = _Planes(image, _storage_order)
    hits: list[tuple[int, int, float]] = []  # slice, voxels, value
    for k in range(depth):
        if k in padded:
            continue
        plane = planes[k]
        starts, lengths = _runs(plane)
        long = lengths >= min_run
        if not np.any(long):
            continue
        in_long = np.flatnonzero(np.repeat(long, lengths))  # only the long runs' voxels are compared
        differ = np.zeros(plane.size, bool)
        for j in (k - 1, k + 1):
            if 0 <= j < depth:
                differ[in_long] |= np.abs(planes[j][in_long] - plane[in_long]) > contrast
        counts = np.add.reduceat(differ, starts)[long]
        values = plane[starts[long]]
        suspect = counts >= SLAB_NEIGHBOUR_FRACTION * lengths[long]
        for i in np.flatnonzero(suspect):  # background at a body edge that moves between slices is not damage
            start, length = int(starts[long][i]), int(lengths[long][i])
            suspect[i] = _in_plane_unlike(plane, start, length, image.shape[0], contrast)
        if np.any(suspect):
            hits.append((k, int(lengths[long][suspect].sum()), float(values[suspect][0])))
    return [_slab_reason(hits)] if hits else []


def _in_plane_unlike(plane: np.ndarray, start: int, length: int, nx: int, contrast: float) -> bool:
    """Whether the voxels beside a run in its own slice (the rows above and below it and its two ends, outside
    the run) mostly hold a clearly other value: damage overwrites tissue, while a run of zero-filled air at the
    edge of a body that moves between thick slices lies beside more air in its own slice."""
    idx = np.arange(start, start + length)
    near = np.concatenate([idx - nx, idx + nx, [start - 1] if start % nx else [], [start + length] if (start + length) % nx else []])
    near = near[(near >= 0) & (near < plane.size) & ((near < start) | (near >= start + length))].astype(np.int64)
    if near.size == 0:  # the run fills its slice
        return True
    same = np.abs(plane[near] - plane[start]) <= contrast  # NaN beside or in the run: unlike
    return float(np.mean(~same)) >= IN_PLANE_UNLIKE


def _slab_reason(hits: list[tuple[int, int, float]]) -> str:
    slices = [k for k, _, _ in hits]
    where = f"slice {slices[0]}" if len(slices) == 1 else f"slices {slices[0]}-{slices[-1]}"
    voxels = sum(n for _, n, _ in hits)
    return (f"constant slab: {voxels} voxels of value {hits[0][2]:g} in {where} (storage order), unlike the "
            "slices beside them (damaged data?)")


def _steady_ratio(here: np.ndarray, ref: np.ndarray, agree: np.ndarray, floor: float, least: int) -> float | None:
    """Median of ``here / ref`` over voxels where the reference is above ``floor`` and its slices ``agree``;
    None when too few voxels count or the ratios scatter (anatomy changing, not a scale error)."""
    use = agree & (ref > floor)
    if np.count_nonzero(use) < least:
        return None
    ratios = here[use] / ref[use]
    ratio = float(np.median(ratios))
    steady = np.mean(np.abs(ratios - ratio) <= RATIO_SPREAD * abs(ratio)) >= 0.5  # one factor for every voxel
    return ratio if steady else None


def _slice_ratio(planes: _Planes, k: int, depth: int, floor: float, least: int) -> float | None:
    """Steady ratio of slice ``k`` to the mean of its two neighbours (at either end: to the next slice, which
    must agree with the one after it)."""
    here = planes[k]
    if 0 < k < depth - 1:
        below, above = planes[k - 1], planes[k + 1]
        ref = 0.5 * (below + above)
        agree = (np.minimum(below, above) > floor) & (np.abs(below - above) <= NEIGHBOUR_AGREEMENT * ref)
    else:
        step = 1 if k == 0 else -1
        ref, far = planes[k + step], planes[k + 2 * step]
        agree = (far > floor) & (np.abs(ref - far) <= NEIGHBOUR_AGREEMENT * ref)
    return _steady_ratio(here, ref, agree, floor, least)


def scale_jumps(image: np.ndarray) -> list[str]:
    """One reason per slice whose intensities are a steady multiple (beyond ``SCALE_JUMP``) of its neighbours'.

    Checked on every other voxel in-plane, twice: over every voxel above a tenth of the 99th percentile
    (tissue, and air that is not dark), and over the bright tissue only (above a quarter), so neither a dim
    background nor a few bright structures hide a jump.
    """
    depth = image.shape[2]
    if depth < 3:
        return []
    p99 = float(np.percentile(_sample(image), 99))
    planes = _Planes(image, _every_other)
    size = planes[0].size
    least = max(MIN_RATIO_VOXELS // 4, int(MIN_RATIO_FRACTION * size))
    jumps = []
    for k in range(depth):
        for floor in (0.1 * p99, 0.25 * p99):
            ratio = _slice_ratio(planes, k, depth, floor, least)
            if ratio is not None and not (1.0 / SCALE_JUMP <= ratio <= SCALE_JUMP):
                jumps.append((k, ratio))
                break
    if not jumps:
        return []
    listed = ", ".join(f"{k} (x{r:.2f})" for k, r in jumps[:5]) + (" ..." if len(jumps) > 5 else "")
    return [f"intensity scale jumps against the neighbouring slices in slice {listed} (wrong per-slice rescale?)"]


def content_problems(image: np.ndarray, voxel_ml: float) -> list[str]:
    """Reasons to distrust a validated 3-D float image's voxels (empty when none): slabs, then scale jumps."""
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        return []
    return constant_slabs(image, voxel_ml) + scale_jumps(image)

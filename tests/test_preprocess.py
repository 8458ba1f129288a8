"""Unit tests of the preprocessing shared by training and inference (onfh_seg.preprocess)."""

from __future__ import annotations

import numpy as np
import pytest

from onfh_seg.geometry import (
    covering_grid,
    crop_grid,
    resample,
    resample_labels,
    resample_probs,
    voxel_spacing,
    world_bounds,
)
from onfh_seg.preprocess import normalise


def _oblique_affine(spacing=(0.8, 0.9, 4.0), angle_deg=20.0, origin=(-100.0, 40.0, 12.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def test_normalise_scales_by_the_99th_percentile_of_positive_voxels_and_clips() -> None:
    rng = np.random.default_rng(0)
    x = np.zeros((20, 20, 20), np.float32)
    x[2:18, 2:18, 2:18] = rng.uniform(100, 1000, (16, 16, 16))
    scale = np.percentile(x[x > 0], 99.0)
    out = normalise(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[5, 5, 5], min(x[5, 5, 5] / scale, 2.0), rtol=1e-5)
    assert out.min() == 0.0 and out.max() <= 2.0
    # scanner units do not matter: the same image x 37 normalises to the same values
    np.testing.assert_allclose(normalise(37.0 * x), out, rtol=1e-5)
    # non-finite voxels become 0; an outlier is clipped to 2
    y = x.copy()
    y[0, 0, 0], y[0, 0, 1], y[10, 10, 10] = np.nan, np.inf, 1e9
    z = normalise(y)
    assert z[0, 0, 0] == 0.0 and z[0, 0, 1] == 0.0 and z[10, 10, 10] == 2.0 and np.isfinite(z).all()


def test_normalise_refuses_an_almost_empty_image() -> None:
    x = np.zeros((10, 10, 10), np.float32)
    x[0, 0, :5] = 1.0
    with pytest.raises(ValueError, match="almost no positive voxels"):
        normalise(x)


def test_spacing_and_world_bounds_of_an_oblique_grid() -> None:
    aff = _oblique_affine()
    np.testing.assert_allclose(voxel_spacing(aff), [0.8, 0.9, 4.0])
    shape = (11, 7, 5)
    lo, hi = world_bounds(shape, aff)
    corners = np.array([[i, j, k, 1] for i in (0, 10) for j in (0, 6) for k in (0, 4)], float) @ aff.T
    np.testing.assert_allclose(lo, corners[:, :3].min(0))
    np.testing.assert_allclose(hi, corners[:, :3].max(0))


def test_covering_grid_is_ras_aligned_covers_the_scan_and_is_a_multiple() -> None:
    aff = _oblique_affine()
    shape = (101, 87, 13)
    g_aff, g_shape = covering_grid(shape, aff, 4.0, multiple=16)
    assert all(n % 16 == 0 for n in g_shape)
    np.testing.assert_allclose(g_aff[:3, :3], 4.0 * np.eye(3))
    lo, hi = world_bounds(shape, aff)
    g_lo, g_hi = world_bounds(g_shape, g_aff)
    assert np.all(g_lo <= lo + 1e-6) and np.all(g_hi >= hi - 1e-6)
    np.testing.assert_allclose((g_lo + g_hi) / 2, (lo + hi) / 2, atol=1e-6)  # centred on the scan


def test_crop_grid_is_centred_on_the_point() -> None:
    centre = np.array([12.5, -30.0, 7.25])
    aff, shape = crop_grid(centre, 96, 1.1)
    assert shape == (96, 96, 96)
    mid = aff @ np.array([47.5, 47.5, 47.5, 1.0])
    np.testing.assert_allclose(mid[:3], centre)


def test_resample_is_world_to_world_whatever_the_array_order() -> None:
    """A linear ramp in world x resamples exactly (linear interpolation), from a flipped, permuted grid."""
    shape = (30, 40, 20)
    aff = np.array([[0, -1.5, 0, 30.0], [2.0, 0, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ aff[:3, :3].T + aff[:3, 3]
    ramp = (world[:, 0] + 0.5 * world[:, 2]).reshape(shape).astype(np.float32)
    dst_aff, dst_shape = crop_grid(np.array([0.0, 5.0, 30.0]), 16, 1.0)
    out = resample(ramp, aff, dst_aff, dst_shape, order=1)
    dijk = np.stack(np.meshgrid(*[np.arange(n) for n in dst_shape], indexing="ij"), -1).reshape(-1, 3)
    dworld = dijk @ dst_aff[:3, :3].T + dst_aff[:3, 3]
    expected = (dworld[:, 0] + 0.5 * dworld[:, 2]).reshape(dst_shape)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # outside the source: the fill value
    far_aff, far_shape = crop_grid(np.array([1000.0, 0.0, 0.0]), 4, 1.0)
    assert np.all(resample(ramp, aff, far_aff, far_shape, cval=-7.0) == -7.0)


def test_resample_onto_the_same_grid_is_identity() -> None:
    """Exact inside; on an oblique grid the outermost voxels may fall a rounding error outside
    the source (scipy's ``constant`` mode then gives ``cval``), so only the interior is compared there."""
    rng = np.random.default_rng(1)
    x = rng.random((9, 8, 7)).astype(np.float32)
    np.testing.assert_allclose(resample(x, np.eye(4), np.eye(4), x.shape, order=1), x, atol=1e-6)
    aff = _oblique_affine()
    np.testing.assert_allclose(resample(x, aff, aff, x.shape, order=1)[1:-1, 1:-1, 1:-1], x[1:-1, 1:-1, 1:-1],
                               atol=1e-5)
    lab = rng.integers(0, 5, (9, 8, 7)).astype(np.uint8)
    np.testing.assert_array_equal(resample_labels(lab, np.eye(4), np.eye(4), lab.shape, 5), lab)
    np.testing.assert_array_equal(resample_labels(lab, aff, aff, lab.shape, 5)[1:-1, 1:-1, 1:-1], lab[1:-1, 1:-1, 1:-1])


def test_resample_labels_keeps_a_block_on_a_finer_grid() -> None:
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[3:7, 3:7, 3:7] = 2
    src = np.diag([2.0, 2.0, 2.0, 1.0])
    dst = np.diag([1.0, 1.0, 1.0, 1.0])
    out = resample_labels(lab, src, dst, (20, 20, 20), num_classes=3)
    assert set(np.unique(out)) == {0, 2}
    # world extent of the block: voxel centres 6..12 mm in the source -> about 7 fine voxels per axis
    assert abs(int((out == 2).sum()) ** (1 / 3) - 7) <= 1


def test_resample_probs_outside_is_background_and_sums_stay_one() -> None:
    rng = np.random.default_rng(2)
    p = rng.random((3, 8, 8, 8)).astype(np.float32)
    p /= p.sum(0, keepdims=True)
    src = np.eye(4)
    dst_aff, dst_shape = crop_grid(np.array([3.5, 3.5, 3.5]), 16, 1.0)  # half outside the source
    out = resample_probs(p, src, dst_aff, dst_shape)
    assert out.shape == (3, 16, 16, 16)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert np.all(out[0, 0, 0, 0] == 1.0) and np.all(out[1:, 0, 0, 0] == 0.0)


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = rng.normal(0, 1.5, (3, 3))
    aff[:3, 3] = rng.normal(0, 10, 3)
    return aff


def _overlapping_grids(rng: np.random.Generator, src_shape, dst_shape) -> tuple[np.ndarray, np.ndarray]:
    """A random oblique source grid and a destination grid (rotated, scaled 0.6-1.4, shifted) whose centre
    falls near the source's centre, so that most destination voxels sample the source."""
    src = _random_affine(rng)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag(rng.uniform(0.6, 1.4, 3))
    to_src = np.eye(4)  # destination index -> source index
    to_src[:3, :3] = rot
    to_src[:3, 3] = (np.array(src_shape) - 1) / 2 + rng.uniform(-2, 2, 3) - rot @ (np.array(dst_shape) - 1) / 2
    return src, src @ to_src


@pytest.mark.parametrize("seed", range(12))
def test_resample_in_a_box_or_in_threads_equals_the_whole_grid_bit_for_bit(seed: int) -> None:
    """A box of destination voxels, or the grid split across threads, gives exactly the plain call's
    values (the engine restricts and splits its resampling and must not change a label)."""
    rng = np.random.default_rng(seed)
    src = rng.random(tuple(int(v) for v in rng.integers(5, 30, 3)), dtype=np.float32)
    order = 1
    if seed % 3 == 0:
        src, order = (src * 5).astype(np.uint8), 0
    to_dst = None
    if seed % 2:
        to_dst = np.eye(4)
        to_dst[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        to_dst[:3, 3] = rng.normal(0, 3, 3)
    shape = tuple(int(v) for v in rng.integers(3, 25, 3))
    a, b = _overlapping_grids(rng, src.shape, shape)
    if to_dst is not None:  # the source seen through a world map: the destination moves with it
        b = to_dst @ b
    cval = float(seed % 2)
    whole = resample(src, a, b, shape, order, cval, to_dst)
    assert (whole != cval).mean() > 0.15  # much of the destination samples the source
    for threads in (2, 3, 7):
        assert np.array_equal(resample(src, a, b, shape, order, cval, to_dst, threads=threads), whole)
    lo = rng.integers(0, np.array(shape))
    hi = lo + rng.integers(1, np.array(shape) - lo + 1)
    part = resample(src, a, b, shape, order, cval, to_dst, box=(lo, hi), threads=2)
    assert part.dtype == whole.dtype
    assert np.array_equal(part, whole[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])


@pytest.mark.parametrize("seed", range(8))
def test_outside_the_sampled_box_the_resampling_is_cval(seed: int) -> None:
    """``sampled_box`` holds every destination voxel that samples the source: resampling only it (the engine's
    crops at the edge of the field of view) and filling the rest with ``cval`` equals the whole grid exactly."""
    from onfh_seg.geometry import sampled_box

    rng = np.random.default_rng(200 + seed)
    src = rng.random(tuple(int(v) for v in rng.integers(5, 30, 3)), dtype=np.float32)
    shape = tuple(int(v) for v in rng.integers(10, 40, 3))
    a, b = _overlapping_grids(rng, src.shape, shape)
    b[:3, 3] += rng.normal(0, 15, 3)  # destinations partly, or wholly, off the source
    whole = resample(src, a, b, shape, 1, 0.0)
    lo, hi = sampled_box(src.shape, a, b, shape)
    part = np.zeros(shape, np.float32)
    if np.all(hi > lo):
        part[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = resample(src, a, b, shape, 1, 0.0, box=(lo, hi))
    assert part.tobytes() == whole.tobytes()


@pytest.mark.parametrize("seed", range(4))
def test_source_coordinates_are_the_ones_affine_transform_uses(seed: int) -> None:
    """On float64 data (where a last-bit difference in a coordinate shows in the value), map_coordinates on
    ``source_coordinates`` equals scipy's affine_transform exactly: the box and thread paths rest on this."""
    from scipy import ndimage

    from onfh_seg.geometry import _source_transform, source_coordinates

    rng = np.random.default_rng(100 + seed)
    src = rng.random((23, 19, 17))
    shape = (15, 13, 11)
    vox = _source_transform(*_overlapping_grids(rng, src.shape, shape), None)
    whole = ndimage.affine_transform(src, vox[:3, :3], offset=vox[:3, 3], output_shape=shape, order=1,
                                     mode="constant", cval=0.0, prefilter=False)
    coords = source_coordinates(vox, (0, 0, 0), shape)
    mine = ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    assert (whole != 0).mean() > 0.3
    assert np.array_equal(mine, whole)

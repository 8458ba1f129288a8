"""geometry: world centroids of masks."""

from __future__ import annotations

import numpy as np
import pytest

from onfh_seg.geometry import covered_box, mask_centroid_ras, voxel_to_ras


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_centroid_equals_the_mean_of_the_listed_voxels_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((61, 47, 23)) < rng.uniform(0.01, 0.9)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3) * 100
    assert np.array_equal(mask_centroid_ras(mask, affine), voxel_to_ras(affine, np.argwhere(mask).mean(axis=0)))
    assert mask_centroid_ras(np.zeros((4, 4, 4), bool), affine) is None


def test_covered_box_is_the_input_voxels_a_crop_spans_clipped_to_the_input() -> None:
    """A 10^3 crop of 2 mm voxels starting at input voxel (4, 4, 4) of a 1 mm grid spans voxels 4-22; one hanging
    over the input's edge is clipped, and one wholly outside keeps at least one voxel."""
    inp = np.eye(4)
    crop = np.diag([2.0, 2.0, 2.0, 1.0])
    crop[:3, 3] = 4.0
    lo, hi = covered_box((10, 10, 10), crop, inp, (30, 30, 30))
    assert lo.tolist() == [4, 4, 4] and hi.tolist() == [23, 23, 23]
    crop[:3, 3] = [-6.0, 20.0, 4.0]
    lo, hi = covered_box((10, 10, 10), crop, inp, (30, 30, 30))
    assert lo.tolist() == [0, 20, 4] and hi.tolist() == [13, 30, 23]
    crop[:3, 3] = 100.0
    lo, hi = covered_box((10, 10, 10), crop, inp, (30, 30, 30))
    assert lo.tolist() == [29, 29, 29] and hi.tolist() == [30, 30, 30]

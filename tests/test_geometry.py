"""geometry: world centroids of masks."""

from __future__ import annotations

import numpy as np
import pytest

from onfh_seg.geometry import mask_centroid_ras, voxel_to_ras


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_centroid_equals_the_mean_of_the_listed_voxels_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((61, 47, 23)) < rng.uniform(0.01, 0.9)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3) * 100
    assert np.array_equal(mask_centroid_ras(mask, affine), voxel_to_ras(affine, np.argwhere(mask).mean(axis=0)))
    assert mask_centroid_ras(np.zeros((4, 4, 4), bool), affine) is None

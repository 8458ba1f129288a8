"""arrays.every_nth: the elements of ``a.ravel()[::step]``, whatever the memory order."""

from __future__ import annotations

import numpy as np
import pytest

from onfh_seg.arrays import every_nth


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("step", [1, 2, 7, 21, 10_000])
def test_every_nth_is_ravel_then_step(order: str, step: int) -> None:
    a = np.asarray(np.random.default_rng(step).normal(size=(37, 29, 11)), np.float32, order=order)
    got = every_nth(a, step)
    assert got.dtype == a.dtype
    assert np.array_equal(got, a.ravel()[::step])


def test_every_nth_of_views_and_flat_arrays() -> None:
    a = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    for view in (a[:, ::2], a.transpose(2, 0, 1), a[1:4, :, 3:]):
        assert np.array_equal(every_nth(view, 3), view.ravel()[::3])
    assert np.array_equal(every_nth(np.arange(10), 4), np.array([0, 4, 8]))

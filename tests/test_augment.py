"""The separable bias field gives TorchIO's bias field (same draws, float rounding apart)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

tio = pytest.importorskip("torchio")

from onfh_seg.model.augment import _fast_bias_classes, build_dr_augment, polynomial_bias_field  # noqa: E402


@pytest.mark.parametrize("shape,order", [((20, 13, 8), 3), ((9, 16, 11), 2), ((12, 12, 12), 0)])
def test_polynomial_bias_field_is_torchios(shape, order):
    rng = np.random.default_rng(3)
    n = sum(1 for a in range(order + 1) for b in range(order + 1 - a) for _ in range(order + 1 - a - b))
    coefficients = list(rng.uniform(-0.5, 0.5, n))
    ref = tio.BiasField.generate_bias_field(torch.zeros((1, *shape)), order, coefficients)
    got = polynomial_bias_field(shape, order, coefficients)
    assert got.shape == ref.shape == shape and got.dtype == np.float32
    assert np.allclose(got, ref, rtol=1e-6, atol=0)
    assert not np.allclose(got, 1.0) or order == 0 and np.allclose(got, np.exp(coefficients[0]))


def test_fast_random_bias_field_draws_as_torchio():
    x = torch.from_numpy(np.random.default_rng(0).uniform(0.5, 1.0, (1, 24, 18, 10)).astype(np.float32))
    outs = []
    for cls in (tio.RandomBiasField, _fast_bias_classes()):
        torch.manual_seed(11)
        s = cls(coefficients=0.5, order=3, p=1.0, include=["image"])(
            tio.Subject(image=tio.ScalarImage(tensor=x.clone()), label=tio.LabelMap(tensor=torch.ones_like(x).long())))
        outs.append(s)
    assert torch.allclose(outs[0]["image"].data, outs[1]["image"].data, rtol=1e-6)
    assert not torch.allclose(outs[1]["image"].data, x)  # a field was applied
    assert torch.equal(outs[1]["label"].data, torch.ones_like(x).long())  # labels untouched
    acquisition, _ = build_dr_augment()
    assert type(acquisition.transforms[-1]).__name__ == "FastRandomBiasField"

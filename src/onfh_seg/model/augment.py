"""Training augmentation (TorchIO), with a separable bias field.

TorchIO's ``RandomBiasField`` evaluates its polynomial term by term on full-size meshgrids (20 terms of
third order on a 96^3 crop: 0.24 CPU-s, about a third of a domain-randomised sample's rendering). The same
polynomial is a sum of outer products of 1D powers: ``polynomial_bias_field`` evaluates it that way, with the
same coefficients drawn in the same order from the same torch generator (``FastRandomBiasField``), so samples
are TorchIO's up to float rounding. TorchIO loads only where these are built (training data workers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def polynomial_bias_field(shape: Sequence[int], order: int, coefficients: Sequence[float]) -> np.ndarray:
    """``exp`` of the polynomial of ``order`` in normalised voxel coordinates (float32, ``shape``), term order
    and coordinates as TorchIO's ``BiasField.generate_bias_field``: coordinates ``arange(-n/2, n/2) + 0.5``
    divided by their maximum, coefficient ``i`` for the ``i``-th (x, y, z) power triple with x outermost."""
    powers = []
    for n in shape:
        r = np.arange(-n / 2, n / 2) + 0.5
        if r.max() > 0:
            r = r / r.max()
        powers.append(np.stack([r ** p for p in range(order + 1)]))
    c = np.zeros((order + 1,) * 3)
    i = 0
    for a in range(order + 1):
        for b in range(order + 1 - a):
            for d in range(order + 1 - (a + b)):
                c[a, b, d] = coefficients[i]
                i += 1
    field = np.einsum("abd,ai,bj,dk->ijk", c, *powers, optimize=True)
    return np.exp(field).astype(np.float32)


def _fast_bias_classes():
    """``FastRandomBiasField``: TorchIO's ``RandomBiasField`` with ``polynomial_bias_field`` inside."""
    # function-level import: TorchIO (training extra) loads only in training data workers
    import torch
    import torchio as tio

    class FastBiasField(tio.BiasField):
        def apply_transform(self, subject):
            for name, image in self.get_images_dict(subject).items():
                field = polynomial_bias_field(image.data.shape[1:], self.order[name], self.coefficients[name])
                image.set_data(image.data * torch.as_tensor(field))
            return subject

    class FastRandomBiasField(tio.RandomBiasField):
        def apply_transform(self, subject):
            images = self.get_images_dict(subject)
            if not images:
                return subject
            coefficients = {name: self.get_params(self.order, self.coefficients_range) for name in images}
            orders = {name: self.order for name in images}
            return FastBiasField(coefficients=coefficients, order=orders, **self._get_base_args())(subject)

    return FastRandomBiasField


def build_augment():
    """Training-only augmentation (TorchIO). Left/right flips keep label meaning (labels are side-free)."""
    # function-level import: TorchIO (training extra) loads only in training data workers
    import torchio as tio

    return tio.Compose([
        tio.RandomFlip(axes=(0,), flip_probability=0.5),  # axis 0 = patient left-right in RAS model space
        tio.RandomAffine(scales=(0.9, 1.1), degrees=12, translation=4, p=0.5),
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.5, 4.0), p=0.2),
        _fast_bias_classes()(coefficients=0.3, p=0.3),
        tio.RandomGamma(log_gamma=(-0.3, 0.3), p=0.3),
        tio.RandomNoise(std=(0, 0.05), p=0.3),
        tio.RandomBlur(std=(0, 0.8), p=0.1),
    ])


def build_dr_augment(anisotropy: bool = True):
    """Acquisition effects for domain-randomised images (TorchIO), applied to the image only,
    then a spatial part applied to image and labels (rotating thick slices makes them oblique).
    ``anisotropy=False``: no TorchIO thick slices (``synth.contrast.thick_slices`` draws them instead)."""
    # function-level import: TorchIO (training extra) loads only in training data workers
    import torchio as tio

    acquisition = tio.Compose([
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.4, 7.0), p=0.8 if anisotropy else 0.0,
                             include=["image"]),  # 1.5-7.7 mm slices, one plane sampled per slice
        tio.RandomGhosting(num_ghosts=(2, 8), intensity=(0.2, 0.7), p=0.12, include=["image"]),
        tio.RandomMotion(degrees=4, translation=4, num_transforms=2, p=0.08, include=["image"]),
        _fast_bias_classes()(coefficients=0.5, order=3, p=0.7, include=["image"]),
    ])
    spatial = tio.Compose([
        tio.RandomFlip(axes=(0,), flip_probability=0.5),
        tio.RandomAffine(scales=(0.85, 1.15), degrees=25, translation=6, p=0.8),
        tio.RandomGamma(log_gamma=(-0.4, 0.4), p=0.4, include=["image"]),
    ])
    return acquisition, spatial

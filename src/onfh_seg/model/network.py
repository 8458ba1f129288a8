"""Network factory: a MONAI 3D U-Net (residual units, instance norm).

``up_kernel_size=2`` gives nnU-Net-style up-sampling (transposed convolution with kernel = stride):
MONAI's ``UNet`` only accepts odd up kernels (3 by default), and ONNX Runtime's CPU
ConvTranspose with kernel 3 / stride 2 took 30% of the fine model's run time.
"""

from __future__ import annotations

import torch.nn as nn
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet

ACTIVATIONS = {
    "prelu": "PRELU",
    "relu": "RELU",
    "leakyrelu": ("LEAKYRELU", {"negative_slope": 0.01}),
}


class UNetK2(UNet):
    """MONAI ``UNet`` whose decoder up-samples with kernel-2, stride-2 transposed convolutions."""

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        conv: nn.Module = Convolution(
            self.dimensions, in_channels, out_channels, strides=strides, kernel_size=strides, padding=0,
            output_padding=0, act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias,
            conv_only=is_top and self.num_res_units == 0, is_transposed=True, adn_ordering=self.adn_ordering,
        )
        if self.num_res_units > 0:
            ru = ResidualUnit(
                self.dimensions, out_channels, out_channels, strides=1, kernel_size=self.kernel_size, subunits=1,
                act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias, last_conv_only=is_top,
                adn_ordering=self.adn_ordering,
            )
            conv = nn.Sequential(conv, ru)
        return conv


def build_unet(channels: list[int], strides: list[int], num_res_units: int = 1, norm: str = "instance",
               dropout: float = 0.0, act: str = "prelu", up_kernel_size: int = 3, in_channels: int = 1,
               out_channels: int = 5) -> UNet:
    """MONAI ``UNet`` (3D). Input sizes must be divisible by prod(strides).

    ``act``: prelu (MONAI default), relu or leakyrelu (0.01, as nnU-Net). ``up_kernel_size``: 3 (MONAI
    default) or 2 (kernel = stride, see module docstring).
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    if up_kernel_size not in (2, 3):
        raise ValueError(f"up_kernel_size must be 2 or 3, got {up_kernel_size}")
    if up_kernel_size == 2 and any(s != 2 for s in strides):
        raise ValueError("up_kernel_size=2 needs all strides == 2")
    cls = UNetK2 if up_kernel_size == 2 else UNet
    return cls(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
               strides=tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout, act=ACTIVATIONS[act])

"""Network factory: a MONAI 3D U-Net (residual units, instance norm).

``up_kernel_size=2`` gives nnU-Net-style up-sampling (transposed convolution with kernel = stride):
MONAI's ``UNet`` only accepts odd up kernels (3 by default), and ONNX Runtime's CPU
ConvTranspose with kernel 3 / stride 2 took 30% of the fine model's run time.
"""

from __future__ import annotations

import torch
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


def _keep(weight_l1: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted) of the ``n`` channels with the largest L1 filter norm."""
    return weight_l1.topk(n).indices.sort().values


def narrow_unet_state(state: dict, channels: list[int]) -> dict:
    """Weights of a narrower ``UNetK2`` (one residual unit per level, as the fine network) taken from a wider one.

    Each encoder level keeps the channels whose filters have the largest L1 norm (main plus residual conv), each
    decoder level likewise; every later layer keeps the matching input channels, the concatenated skip inputs
    included. A starting point for training a narrower network (issue 23: "a fine network with half the
    channels"), not a network to use as it is.
    """
    depth = len(channels)
    down = ["model.0"] + ["model" + ".1.submodule" * i + ".0" for i in range(1, depth - 1)]
    bottom = "model" + ".1.submodule" * (depth - 1)
    up = ["model.2"] + ["model" + ".1.submodule" * i + ".2" for i in range(1, depth - 1)]
    new: dict = {}
    prev = torch.arange(state[f"{down[0]}.conv.unit0.conv.weight"].shape[1])
    enc: list = []
    for name, n in zip(down + [bottom], channels):
        w, r = state[f"{name}.conv.unit0.conv.weight"], state[f"{name}.residual.weight"]
        keep = _keep(w.abs().sum((1, 2, 3, 4)) + r.abs().sum((1, 2, 3, 4)), n)
        for p in ("conv.unit0.conv", "residual"):
            new[f"{name}.{p}.weight"] = state[f"{name}.{p}.weight"][keep][:, prev]
            new[f"{name}.{p}.bias"] = state[f"{name}.{p}.bias"][keep]
        enc.append((keep, state[f"{name}.conv.unit0.conv.weight"].shape[0]))
        prev = keep
    below = enc[-1][0]  # the channels coming up from the level below (first: the bottom)
    for level in range(depth - 2, -1, -1):
        name, (skip, n_skip) = up[level], enc[level]
        cat_in = torch.cat([skip, n_skip + below])
        t = state[f"{name}.0.conv.weight"]  # transposed conv: (in, out, k, k, k)
        n_out = channels[level - 1] if level > 0 else t.shape[1]
        keep = _keep(t.abs().sum((0, 2, 3, 4)), n_out) if level > 0 else torch.arange(t.shape[1])
        new[f"{name}.0.conv.weight"] = t[cat_in][:, keep]
        new[f"{name}.0.conv.bias"] = state[f"{name}.0.conv.bias"][keep]
        new[f"{name}.1.conv.unit0.conv.weight"] = state[f"{name}.1.conv.unit0.conv.weight"][keep][:, keep]
        new[f"{name}.1.conv.unit0.conv.bias"] = state[f"{name}.1.conv.unit0.conv.bias"][keep]
        below = keep
    return {k: v.clone() for k, v in new.items()}

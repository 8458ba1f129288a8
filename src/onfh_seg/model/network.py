"""Network factory: a MONAI 3D U-Net (residual units, instance norm)."""

from __future__ import annotations

from monai.networks.nets import UNet


def build_unet(channels: list[int], strides: list[int], num_res_units: int = 1, norm: str = "instance",
               dropout: float = 0.0, in_channels: int = 1, out_channels: int = 5) -> UNet:
    """MONAI ``UNet`` (3D). Input sizes must be divisible by prod(strides)."""
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout)

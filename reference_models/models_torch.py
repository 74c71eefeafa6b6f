"""PyTorch U-Nets: the authors' 3D U-Net and a 2D U-Net with four poolings, both with a width factor.

Each level is two blocks of ``Conv(k=3, padding=1) -> InstanceNorm -> LeakyReLU(0.01)``; the decoder
upsamples with a stride-2 transposed convolution, concatenates the encoder's skip and applies two more
blocks; a 1x1 convolution gives the class logits (no softmax).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet", "UNet2D", "UNet3D", "filters_for"]


def filters_for(base: int, depth: int, width: float) -> list[int]:
    """Channels per level: ``base * 2**level * width``, at least 2 (so InstanceNorm has something to do)."""
    return [max(2, round(base * 2**level * width)) for level in range(depth + 1)]


class _Block(nn.Sequential):
    def __init__(self, conv, norm, c_in: int, c_out: int) -> None:
        super().__init__(
            conv(c_in, c_out, kernel_size=3, padding=1),
            norm(c_out, affine=True),
            nn.LeakyReLU(0.01),
            conv(c_out, c_out, kernel_size=3, padding=1),
            norm(c_out, affine=True),
            nn.LeakyReLU(0.01),
        )


class UNet(nn.Module):
    """A U-Net of ``depth`` poolings over ``dims`` (2 or 3) spatial dimensions.

    Parameters
    ----------
    dims : {2, 3}
    in_channels, num_classes : int
    base : int
        Channels of the first level (the authors: 32 for 3D, 64 for 2D).
    depth : int
        Number of poolings (3 for the authors' 3D U-Net, 4 for the 2D one).
    width : float
        Multiplies every level's channels (``width=0.25`` gives a CPU-sized net).
    """

    def __init__(
        self, dims: int, in_channels: int, num_classes: int, *, base: int, depth: int, width: float = 1.0
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            msg = f"`dims` must be 2 or 3, got {dims}."
            raise ValueError(msg)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        channels = filters_for(base, depth, width)
        self.dims, self.depth, self.channels = dims, depth, channels
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in channels:
            self.down.append(_Block(conv, norm, c_prev, c))
            c_prev = c
        self.pool = pool(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(up(channels[level + 1], channels[level], kernel_size=2, stride=2))
            self.dec.append(_Block(conv, norm, 2 * channels[level], channels[level]))
        self.head = conv(channels[0], num_classes, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def UNet3D(in_channels: int = 1, num_classes: int = 8, width: float = 1.0) -> UNet:
    """The authors' 3D U-Net: 3 poolings, 32-64-128-256 channels (times ``width``)."""
    return UNet(3, in_channels, num_classes, base=32, depth=3, width=width)


def UNet2D(in_channels: int = 3, num_classes: int = 2, width: float = 1.0) -> UNet:
    """The 2D U-Net: 4 poolings, 64-128-256-512-1024 channels (times ``width``)."""
    return UNet(2, in_channels, num_classes, base=64, depth=4, width=width)

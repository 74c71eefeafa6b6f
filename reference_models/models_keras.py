"""Keras 3 U-Nets, channels-last, the same architecture as :mod:`reference_models.models_torch`.

Instance normalisation is ``GroupNormalization(groups=-1)`` (one group per channel), with ``epsilon=1e-5``
as in PyTorch's InstanceNorm.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
from keras import layers

from reference_models.models_torch import filters_for

__all__ = ["unet", "unet2d", "unet3d"]


def _block(x, dims: int, channels: int, name: str):
    conv = layers.Conv2D if dims == 2 else layers.Conv3D
    for i in (1, 2):
        x = conv(channels, 3, padding="same", name=f"{name}_conv{i}")(x)
        x = layers.GroupNormalization(groups=-1, epsilon=1e-5, name=f"{name}_norm{i}")(x)
        x = layers.LeakyReLU(negative_slope=0.01, name=f"{name}_act{i}")(x)
    return x


def unet(
    dims: int, in_channels: int, num_classes: int, *, base: int, depth: int, width: float = 1.0
) -> keras.Model:
    """A U-Net of ``depth`` poolings over ``dims`` spatial dimensions; inputs (B, *spatial, C), logits out.

    Spatial sizes are left open (``None``) so whole images can be fed at inference, as long as they are
    multiples of ``2**depth``.
    """
    if dims not in (2, 3):
        msg = f"`dims` must be 2 or 3, got {dims}."
        raise ValueError(msg)
    pool = layers.MaxPooling2D if dims == 2 else layers.MaxPooling3D
    up = layers.Conv2DTranspose if dims == 2 else layers.Conv3DTranspose
    conv = layers.Conv2D if dims == 2 else layers.Conv3D
    channels = filters_for(base, depth, width)
    inputs = keras.Input((None,) * dims + (in_channels,), name="image")
    x, skips = inputs, []
    for level, c in enumerate(channels):
        x = _block(x, dims, c, f"down{level}")
        if level < depth:
            skips.append(x)
            x = pool(2, name=f"pool{level}")(x)
    for level in reversed(range(depth)):
        x = up(channels[level], 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(axis=-1, name=f"skip{level}")([x, skips[level]])
        x = _block(x, dims, channels[level], f"dec{level}")
    logits = conv(num_classes, 1, name="head")(x)
    return keras.Model(inputs, logits, name=f"unet{dims}d")


def unet3d(in_channels: int = 1, num_classes: int = 8, width: float = 1.0) -> keras.Model:
    """The authors' 3D U-Net: 3 poolings, 32-64-128-256 channels (times ``width``)."""
    return unet(3, in_channels, num_classes, base=32, depth=3, width=width)


def unet2d(in_channels: int = 3, num_classes: int = 2, width: float = 1.0) -> keras.Model:
    """The 2D U-Net: 4 poolings, 64-128-256-512-1024 channels (times ``width``)."""
    return unet(2, in_channels, num_classes, base=64, depth=4, width=width)

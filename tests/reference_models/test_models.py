"""The U-Nets: architecture as documented, identical parameter counts in PyTorch and Keras."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
import torch
from torch import nn

from reference_models.models_torch import UNet, UNet2D, UNet3D, filters_for


def test_filters_follow_the_authors_and_scale_with_width():
    assert filters_for(32, 3, 1.0) == [32, 64, 128, 256]
    assert filters_for(64, 4, 1.0) == [64, 128, 256, 512, 1024]
    assert filters_for(32, 3, 0.25) == [8, 16, 32, 64]


def test_unet3d_structure():
    model = UNet3D(width=1.0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert all(m.kernel_size in ((3, 3, 3), (1, 1, 1)) for m in convs)
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in model.modules()) == 2 * (4 + 3)
    assert sum(isinstance(m, nn.LeakyReLU) for m in model.modules()) == 2 * (4 + 3)
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [m.out_channels for m in ups] == [128, 64, 32]  # 3 poolings, transposed-conv upsampling
    assert model.head.out_channels == 8 and model.head.kernel_size == (1, 1, 1)
    assert model.divisor == 8


@pytest.mark.parametrize(
    ("factory", "shape", "classes"),
    [(UNet3D, (2, 1, 16, 24, 8), 8), (UNet2D, (2, 3, 32, 48), 2)],
)
def test_torch_output_shape_and_gradients(factory, shape, classes):
    model = factory(width=0.125)
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == (shape[0], classes, *shape[2:])
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_rejects_other_dims():
    with pytest.raises(ValueError, match="`dims` must be 2 or 3"):
        UNet(1, 1, 2, base=8, depth=2)


@pytest.mark.parametrize(("dims", "width"), [(2, 0.125), (3, 0.25)])
def test_keras_matches_torch_parameter_count_and_shape(dims, width):
    from reference_models.models_keras import unet2d, unet3d

    torch_model = (UNet2D if dims == 2 else UNet3D)(width=width)
    keras_model = (unet2d if dims == 2 else unet3d)(width=width)
    n_torch = sum(p.numel() for p in torch_model.parameters())
    assert keras_model.count_params() == n_torch
    shape = (1, 32, 16, 3) if dims == 2 else (1, 16, 8, 24, 1)
    out = keras_model(np.zeros(shape, np.float32))
    assert tuple(out.shape) == (*shape[:-1], 2 if dims == 2 else 8)

"""Several predictions of one input in PyTorch, combined into uncertainty maps.

- [`mc_dropout_uncertainty`][selectivekit.adapters.torch_sampling.mc_dropout_uncertainty]: ``n_samples``
  forward passes with the dropout layers switched on and everything else (batch norm included) in eval mode.
- [`tta_uncertainty`][selectivekit.adapters.torch_sampling.tta_uncertainty]: test-time augmentation with
  mirroring over every subset of the spatial axes (nnU-Net's set) and optionally 90-degree rotations, each
  output mapped back before it is combined.
- [`ensemble_uncertainty`][selectivekit.adapters.torch_sampling.ensemble_uncertainty]: one prediction from
  each model of an ensemble, each in eval mode.

Each turns the outputs into class probabilities (softmax over axis 1 by default) and feeds them one at a
time to a [`PredictiveAccumulator`][selectivekit.PredictiveAccumulator]: only one prediction and the running
statistics are in memory at once. The result is a
[`PredictiveUncertainty`][selectivekit.PredictiveUncertainty] (mean prediction, total / aleatoric /
epistemic entropy, variance, vote disagreement).

A ``predictor`` called as ``predictor(inputs, model)`` replaces the plain forward pass, for example MONAI's
sliding-window inference: ``SlidingWindowInferer(roi_size, sw_batch_size)`` has that signature, or
``lambda x, m: sliding_window_inference(x, roi_size, sw_batch_size, m)``.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .._lib import check_choice, check_positive_int, check_seed
from ..predictive import PredictiveAccumulator, PredictiveUncertainty

__all__ = ["DROPOUT_LAYERS", "ensemble_uncertainty", "mc_dropout_uncertainty", "tta_uncertainty"]

#: The layers that MC dropout switches to train mode (every dropout layer of ``torch.nn``).
DROPOUT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

_ACTIVATIONS = ("softmax", "sigmoid", "none")

Predictor = Callable[[torch.Tensor, nn.Module], torch.Tensor]


# --- validation -------------------------------------------------------------------------------------------


def _check_model(model: Any, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        msg = f"`{name}` must be a torch.nn.Module, got {type(model).__name__}."
        raise TypeError(msg)
    return model


def _check_inputs(inputs: Any, min_ndim: int = 1) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor):
        msg = f"`inputs` must be a torch.Tensor, got {type(inputs).__name__}."
        raise TypeError(msg)
    if inputs.ndim < min_ndim:
        msg = (
            f"`inputs` must have at least {min_ndim} dimensions (batch, channel, spatial...), "
            f"got {inputs.ndim}."
        )
        raise ValueError(msg)
    return inputs


def _check_predictor(predictor: Any) -> Predictor:
    if predictor is None:
        return _forward
    if not callable(predictor):
        msg = f"`predictor` must be callable as predictor(inputs, model), got {type(predictor).__name__}."
        raise TypeError(msg)
    return predictor


def _forward(inputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return model(inputs)


def _probabilities(output: Any, activation: str) -> torch.Tensor:
    """Class probabilities of one output, class axis 1."""
    if not isinstance(output, torch.Tensor):
        msg = (
            f"`predictor` must return a tensor of shape (N, C, ...), got {type(output).__name__} "
            "(for deep supervision, return the full-resolution output only)."
        )
        raise TypeError(msg)
    if type(output) is not torch.Tensor:  # MONAI's MetaTensor: a plain view, without the metadata
        output = output.as_subclass(torch.Tensor)
    if output.ndim < 2 or not output.is_floating_point():
        msg = (
            f"`predictor` must return floating-point outputs of shape (N, C, ...), got {output.dtype} "
            f"of shape {tuple(output.shape)}."
        )
        raise ValueError(msg)
    if output.dtype in (torch.float16, torch.bfloat16):  # mixed precision: combine in float32
        output = output.float()
    if activation == "softmax":
        return torch.softmax(output, dim=1)
    if activation == "sigmoid":
        if output.shape[1] != 1:
            msg = (
                '`activation="sigmoid"` needs one output channel (a binary model: background 1 - p, '
                f"foreground p), got {output.shape[1]} channels."
            )
            raise ValueError(msg)
        return torch.cat([torch.sigmoid(-output), torch.sigmoid(output)], dim=1)
    return output


def _combine(outputs: Iterable[tuple[str, Any]], activation: str) -> PredictiveUncertainty:
    """Feed each output, named for error messages, to one accumulator."""
    accumulator = PredictiveAccumulator(axis=1)
    first: tuple[str, tuple[int, ...]] | None = None
    for name, output in outputs:
        probs = _probabilities(output, activation)
        if first is None:
            first = (name, tuple(probs.shape))
        elif tuple(probs.shape) != first[1]:
            msg = (
                f"{name} gives probabilities of shape {tuple(probs.shape)}, but {first[0]} gave "
                f"{first[1]}: every prediction must have the same shape."
            )
            raise ValueError(msg)
        accumulator.update(probs)
    return accumulator.result()


@contextlib.contextmanager
def _modes(models: Sequence[nn.Module], train: tuple[type[nn.Module], ...] = ()) -> Iterator[None]:
    """Every module in eval mode except those of the types ``train``; every flag restored on exit."""
    flags = [(module, module.training) for model in models for module in model.modules()]
    try:
        for model in models:
            model.eval()
            for module in model.modules():
                if train and isinstance(module, train):
                    module.training = True
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draws from the global generators seeded with ``seed``; their states restored on exit."""
    if seed is None:
        yield
    elif device.type == "cpu":
        with torch.random.fork_rng(devices=[]):  # the CPU generator only
            torch.default_generator.manual_seed(seed)
            yield
    else:
        # torch.manual_seed seeds the CPU and every device of each kind: fork them all. This branch runs only
        # on an accelerator (tests/adapters/test_torch_sampling.py checks it where CUDA is available)
        count = torch.get_device_module(device.type).device_count()
        with torch.random.fork_rng(devices=range(count), device_type=device.type):
            torch.manual_seed(seed)
            yield


# --- MC dropout -------------------------------------------------------------------------------------------


def mc_dropout_uncertainty(
    model: nn.Module,
    inputs: torch.Tensor,
    /,
    *,
    n_samples: int,
    seed: int | None = 0,
    predictor: Predictor | None = None,
    activation: str = "softmax",
    dropout_layers: tuple[type[nn.Module], ...] = DROPOUT_LAYERS,
) -> PredictiveUncertainty:
    """Monte Carlo dropout: ``n_samples`` predictions with dropout on, combined one at a time.

    Parameters
    ----------
    model : torch.nn.Module
        A model with at least one dropout layer of probability ``p > 0``.
    inputs : torch.Tensor
        The input, for example of shape (N, channels, *spatial), on the model's device.
    n_samples : int
        The number of forward passes (>= 1).
    seed : int or None, default 0
        Seeds the dropout masks, so that the same seed gives the same result; the caller's global random
        state is saved before and restored after (``torch.random.fork_rng``). ``None`` draws from the global
        generators as they are, and advances them.
    predictor : callable, optional
        Called as ``predictor(inputs, model)`` to get the logits of shape (N, C, ...); default
        ``model(inputs)``. For sliding-window inference, MONAI's ``SlidingWindowInferer(roi_size,
        sw_batch_size)``.
    activation : {"softmax", "sigmoid", "none"}, default "softmax"
        How outputs become probabilities: softmax over axis 1; the sigmoid of a single-channel binary
        output (classes background ``1 - p`` and foreground ``p``); ``"none"`` for outputs that are already
        probabilities summing to 1 over axis 1.
    dropout_layers : tuple of types, default DROPOUT_LAYERS
        The module classes switched to train mode (every ``torch.nn`` dropout layer); add your own, for
        example a stochastic-depth layer.

    Returns
    -------
    PredictiveUncertainty
        The mean prediction of shape (N, C, ...) and the per-voxel measures of shape (N, ...).

    Notes
    -----
    Only the modules of ``dropout_layers`` are put in train mode; every other module, batch norm included,
    is in eval mode (batch norm normalises with its running statistics and does not update them). Every
    module's ``training`` flag is restored afterwards, also when the predictor raises. Dropout written as
    ``torch.nn.functional.dropout(x, training=self.training)`` inside another module follows that module's
    flag and stays off. The passes run under ``torch.no_grad`` on the device of ``inputs``.

    References
    ----------
    Gal, Y. and Ghahramani, Z. (2016). Dropout as a Bayesian approximation: representing model uncertainty in
    deep learning. ICML.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Dropout2d(0.5), nn.Conv2d(8, 2, 1))
    >>> x = torch.randn(1, 1, 8, 8)
    >>> r = mc_dropout_uncertainty(model, x, n_samples=4, seed=0)
    >>> r.samples, tuple(r.mean.shape), tuple(r.epistemic.shape)
    (4, (1, 2, 8, 8), (1, 8, 8))
    >>> bool(r.epistemic.max() > 0)  # the masks differ from pass to pass
    True
    >>> model.training  # the flags are as they were
    True
    """
    model = _check_model(model, "model")
    inputs = _check_inputs(inputs)
    n_samples = check_positive_int(n_samples, "n_samples")
    seed = check_seed(seed, generator=False)
    predictor = _check_predictor(predictor)
    activation = check_choice(activation, "activation", _ACTIVATIONS)
    if not isinstance(dropout_layers, tuple) or not all(isinstance(t, type) for t in dropout_layers):
        msg = f"`dropout_layers` must be a tuple of module classes, got {dropout_layers!r}."
        raise TypeError(msg)
    active = [m for m in model.modules() if isinstance(m, dropout_layers) and getattr(m, "p", 1) > 0]
    if not active:
        names = ", ".join(t.__name__ for t in dropout_layers)
        msg = (
            f"`model` has no dropout layer with p > 0 ({names}): MC dropout would give {n_samples} identical "
            "predictions. Use a model with dropout, name its dropout classes in `dropout_layers`, or use "
            "tta_uncertainty or ensemble_uncertainty."
        )
        raise ValueError(msg)

    def outputs() -> Iterator[tuple[str, torch.Tensor]]:
        for s in range(n_samples):
            yield f"sample {s}", predictor(inputs, model)

    with torch.no_grad(), _modes([model], train=dropout_layers), _seeded(seed, inputs.device):
        return _combine(outputs(), activation)


# --- test-time augmentation -------------------------------------------------------------------------------


class _Transform:
    """Rotations by ``k`` quarter turns in planes, then flips; each invertible."""

    def __init__(self, rotations: tuple[tuple[int, tuple[int, int]], ...], flips: tuple[int, ...]) -> None:
        self.rotations = rotations
        self.flips = flips

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for k, plane in self.rotations:
            x = torch.rot90(x, k, plane)
        return torch.flip(x, self.flips) if self.flips else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        if self.flips:
            y = torch.flip(y, self.flips)
        for k, plane in reversed(self.rotations):
            y = torch.rot90(y, -k, plane)
        return y

    def __str__(self) -> str:
        parts = [f"rotation by {90 * k} degrees in plane {plane}" for k, plane in self.rotations]
        parts += [f"flip of axes {self.flips}"] if self.flips else []
        return "the " + (" then ".join(parts) if parts else "identity") + " output"


def _spatial_axis(axis: Any, ndim: int, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        msg = f"`{name}` must hold integers, got {type(axis).__name__}."
        raise TypeError(msg)
    if not (2 <= axis < ndim or -ndim + 2 <= axis < 0):
        msg = (
            f"`{name}` must name spatial axes of the input (2 to {ndim - 1}, or {-(ndim - 2)} to -1, for an "
            f"input of {ndim} dimensions (N, C, spatial...)), got {axis}."
        )
        raise ValueError(msg)
    return int(axis) % ndim


def _check_flip_axes(flip_axes: Any, ndim: int) -> tuple[int, ...]:
    if flip_axes is None:
        return tuple(range(2, ndim))
    if isinstance(flip_axes, numbers.Integral) and not isinstance(flip_axes, bool):
        flip_axes = (flip_axes,)
    if not isinstance(flip_axes, Iterable):
        msg = f"`flip_axes` must be None or a sequence of spatial axes, got {type(flip_axes).__name__}."
        raise TypeError(msg)
    axes = tuple(_spatial_axis(a, ndim, "flip_axes") for a in flip_axes)
    if len(set(axes)) != len(axes):
        msg = f"`flip_axes` must not repeat an axis, got {tuple(flip_axes)}."
        raise ValueError(msg)
    return axes


def _check_rotation_planes(planes: Any, ndim: int) -> tuple[tuple[int, int], ...]:
    if not isinstance(planes, Iterable):
        msg = f"`rotation_planes` must be a sequence of axis pairs, got {type(planes).__name__}."
        raise TypeError(msg)
    checked = []
    for plane in planes:
        if not isinstance(plane, Sequence) or len(plane) != 2:
            msg = f"`rotation_planes` must hold pairs of spatial axes such as (2, 3), got {plane!r}."
            raise ValueError(msg)
        a, b = (_spatial_axis(axis, ndim, "rotation_planes") for axis in plane)
        if a == b:
            msg = f"`rotation_planes` must hold pairs of two different axes, got {tuple(plane)}."
            raise ValueError(msg)
        checked.append((a, b))
    return tuple(checked)


def _transforms(
    ndim: int, flip_axes: tuple[int, ...], rotation_planes: tuple[tuple[int, int], ...]
) -> list[_Transform]:
    """Every rotation in each plane combined with every subset of flips, each distinct transform once
    (rotating by 180 degrees is flipping both axes), the identity first."""
    flip_sets = [s for r in range(len(flip_axes) + 1) for s in itertools.combinations(flip_axes, r)]
    # a probe of 3 voxels per spatial axis, all values distinct: two of these transforms are the same map
    # exactly when they move the probe the same way
    probe = torch.arange(3 ** (ndim - 2)).reshape((1, 1) + (3,) * (ndim - 2))
    transforms, images = [], []
    for turns in itertools.product(range(4), repeat=len(rotation_planes)):
        rotations = tuple((k, plane) for k, plane in zip(turns, rotation_planes, strict=True) if k)
        for flips in flip_sets:
            transform = _Transform(rotations, flips)
            image = transform.apply(probe)
            if not any(torch.equal(image, seen) for seen in images):
                transforms.append(transform)
                images.append(image)
    return transforms


def tta_uncertainty(
    model: nn.Module,
    inputs: torch.Tensor,
    /,
    *,
    flip_axes: Sequence[int] | None = None,
    rotation_planes: Sequence[tuple[int, int]] = (),
    predictor: Predictor | None = None,
    activation: str = "softmax",
) -> PredictiveUncertainty:
    """Test-time augmentation: predictions of mirrored (and rotated) inputs, each mapped back, combined.

    Parameters
    ----------
    model : torch.nn.Module
        The model, put in eval mode for the passes (its modules' flags are restored afterwards).
    inputs : torch.Tensor of shape (N, channels, *spatial)
        The input, on the model's device.
    flip_axes : sequence of int, optional
        The spatial axes to mirror; every subset of them is one prediction (the empty subset is the plain
        input). Default: every spatial axis, nnU-Net's mirroring: 4 predictions in 2D (axes 2, 3), 8 in 3D
        (axes 2, 3, 4). ``()`` for no flips.
    rotation_planes : sequence of (int, int), default ()
        Planes of spatial axes in which the input is also rotated by 90, 180 and 270 degrees, combined with
        every flip; a transform reached twice (rotating by 180 degrees is flipping both axes of its plane)
        is used once: ``flip_axes=(2, 3), rotation_planes=[(2, 3)]`` gives the 8 symmetries of the square,
        and all three planes of a 3D input with its flips give the 48 symmetries of the cube. With several
        planes, each combination of one rotation per plane (in the order given) is used.
        A rotation swaps the plane's two sizes, which a fully convolutional model accepts.
    predictor : callable, optional
        Called as ``predictor(inputs, model)`` to get the logits of shape (N, C, *spatial); default
        ``model(inputs)``. For sliding-window inference, MONAI's ``SlidingWindowInferer(roi_size,
        sw_batch_size)``.
    activation : {"softmax", "sigmoid", "none"}, default "softmax"
        How outputs become probabilities (see
        [`mc_dropout_uncertainty`][selectivekit.adapters.torch_sampling.mc_dropout_uncertainty]).

    Returns
    -------
    PredictiveUncertainty
        ``samples`` is the number of distinct transforms.

    Notes
    -----
    Each output is mapped back by the inverse transform (the flips again, then the rotations in reverse
    order by minus their angle) before it is added, so the output's spatial axes must be the input's. A model
    that commutes with the transforms (a 1 x 1 convolution) gives the same prediction every time: epistemic
    uncertainty and disagreement 0. The passes run under ``torch.no_grad`` on the device of ``inputs``.

    References
    ----------
    Isensee, F. et al. (2021). nnU-Net: a self-configuring method for deep learning-based biomedical image
    segmentation. Nature Methods 18, 203-211 (mirroring at test time).
    Wang, G. et al. (2019). Aleatoric uncertainty estimation with test-time augmentation for medical image
    segmentation with convolutional neural networks. Neurocomputing 338, 34-45.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(1, 1, 8, 8)
    >>> r = tta_uncertainty(nn.Conv2d(1, 3, 3, padding=1), x)
    >>> r.samples, tuple(r.mean.shape)
    (4, (1, 3, 8, 8))
    >>> pointwise = nn.Conv2d(1, 3, 1)  # commutes with flips and rotations
    >>> r = tta_uncertainty(pointwise, x, rotation_planes=[(2, 3)])
    >>> r.samples, bool(r.disagreement.max() == 0), bool(r.epistemic.max() < 1e-6)
    (8, True, True)
    """
    model = _check_model(model, "model")
    inputs = _check_inputs(inputs, min_ndim=3)
    axes = _check_flip_axes(flip_axes, inputs.ndim)
    planes = _check_rotation_planes(rotation_planes, inputs.ndim)
    predictor = _check_predictor(predictor)
    activation = check_choice(activation, "activation", _ACTIVATIONS)
    transforms = _transforms(inputs.ndim, axes, planes)

    def outputs() -> Iterator[tuple[str, torch.Tensor]]:
        for transform in transforms:
            output = predictor(transform.apply(inputs), model)
            if isinstance(output, torch.Tensor) and output.ndim != inputs.ndim:
                msg = (
                    f"`predictor` must return outputs with the input's axes (N, C, *spatial) to map the "
                    f"transforms back, got {output.ndim} dimensions for an input of {inputs.ndim}."
                )
                raise ValueError(msg)
            yield str(transform), (transform.invert(output) if isinstance(output, torch.Tensor) else output)

    with torch.no_grad(), _modes([model]):
        return _combine(outputs(), activation)


# --- ensembles --------------------------------------------------------------------------------------------


def ensemble_uncertainty(
    models: Sequence[nn.Module],
    inputs: torch.Tensor,
    /,
    *,
    predictor: Predictor | None = None,
    activation: str = "softmax",
) -> PredictiveUncertainty:
    """One prediction from each model of an ensemble (the folds of a cross-validation), combined.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        The members (a list or an ``nn.ModuleList``), each put in eval mode for its pass; their modules'
        flags are restored afterwards.
    inputs : torch.Tensor
        The input, on the models' device.
    predictor : callable, optional
        Called as ``predictor(inputs, member)`` for each member to get its logits of shape (N, C, ...);
        default ``member(inputs)``. For sliding-window inference, MONAI's ``SlidingWindowInferer(roi_size,
        sw_batch_size)``.
    activation : {"softmax", "sigmoid", "none"}, default "softmax"
        How outputs become probabilities (see
        [`mc_dropout_uncertainty`][selectivekit.adapters.torch_sampling.mc_dropout_uncertainty]).

    Returns
    -------
    PredictiveUncertainty
        ``samples`` is the number of members.

    Notes
    -----
    The members are run one after the other, and each prediction is added to the statistics before the next
    is made. Every member must give outputs of the same shape. The passes run under ``torch.no_grad`` on the
    device of ``inputs``.

    References
    ----------
    Lakshminarayanan, B., Pritzel, A. and Blundell, C. (2017). Simple and scalable predictive uncertainty
    estimation using deep ensembles. NeurIPS.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> members = [nn.Conv2d(1, 2, 3, padding=1) for _ in range(5)]
    >>> r = ensemble_uncertainty(members, torch.randn(1, 1, 8, 8))
    >>> r.samples, tuple(r.mean.shape), tuple(r.measure("mutual-information").shape)
    (5, (1, 2, 8, 8), (1, 8, 8))
    """
    if isinstance(models, nn.Module) and not isinstance(models, nn.ModuleList):
        msg = (
            f"`models` must be a sequence of modules (the members of the ensemble), got one "
            f"{type(models).__name__}; pass a list, such as [model]."
        )
        raise TypeError(msg)
    if not isinstance(models, Iterable):
        msg = f"`models` must be a sequence of torch.nn.Module, got {type(models).__name__}."
        raise TypeError(msg)
    members = [_check_model(m, f"models[{i}]") for i, m in enumerate(models)]
    if not members:
        msg = "`models` is empty: an ensemble needs at least one model."
        raise ValueError(msg)
    inputs = _check_inputs(inputs)
    predictor = _check_predictor(predictor)
    activation = check_choice(activation, "activation", _ACTIVATIONS)

    def outputs() -> Iterator[tuple[str, torch.Tensor]]:
        for i, member in enumerate(members):
            yield f"`models[{i}]`", predictor(inputs, member)

    with torch.no_grad(), _modes(members):
        return _combine(outputs(), activation)

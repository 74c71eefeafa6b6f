"""PyTorch losses: the uncertainty-aware margin ranking loss with a fast exact kernel.

- [`uncertainty_margin_loss`][selectivekit.adapters.torch.uncertainty_margin_loss]: functional, for a ``u``
  you computed yourself (MC dropout, ensembles).
- [`UncertaintyMarginLoss`][selectivekit.adapters.torch.UncertaintyMarginLoss]: ``forward(logits, target)``,
  ``u = 1 - max softmax`` and correctness from
  the argmax, ``ignore_index``.
- [`UncertaintyAwareLoss`][selectivekit.adapters.torch.UncertaintyAwareLoss]: ``L_seg + weight * L_unc`` (eq.
  3 of the paper), the two terms kept for
  logging.

The exact path is a kernel with a closed-form backward and the sampled path draws its pairs as the core
does (same seed, same pairs); both live in `selectivekit.adapters._torch_kernels`.

The torchmetrics metrics ``AURC`` and ``SelectiveDice`` are reachable here too; torchmetrics is imported
when one of them is first used, so the losses work where torchmetrics is missing or cannot be imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import array_api_compat.torch as xpt
import numpy as np
import torch
from torch import nn

from .._lib import (
    check_one_hot,
    compose_margin_loss,
    loss_instances,
    one_hot_bad,
    region_targets,
    target_layout,
    validate_loss_inputs,
)
from ..loss import MarginLossOptions, as_generator
from ..loss_setting import LossSetting, WeightSchedule, get_loss_setting
from ..uncertainty import sigmoid_uncertainty_from_logits, uncertainty_from_logits
from . import _torch_kernels

if TYPE_CHECKING:  # the metrics need torchmetrics: imported when first used (`__getattr__` below)
    from .torch_metrics import AURC, SelectiveDice, SelectiveDiceValue

__all__ = [
    "AURC",
    "SelectiveDice",
    "SelectiveDiceValue",
    "UncertaintyAwareLoss",
    "UncertaintyMarginLoss",
    "uncertainty_margin_loss",
]

_METRICS = ("AURC", "SelectiveDice", "SelectiveDiceValue")


def __getattr__(name: str) -> Any:
    """The torchmetrics metrics, beside the losses but imported on first use: the losses need torch only."""
    if name in _METRICS:
        from . import torch_metrics  # a clear ImportError when torchmetrics cannot be imported

        return getattr(torch_metrics, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def _numpy_generator(seed: Any) -> np.random.Generator:
    """The NumPy generator that draws the sampled pairs (the core's draw: one seed, the same pairs).

    An int or a ``numpy.random.Generator`` is used as the core uses it. A ``torch.Generator`` still in its
    freshly seeded state stands for its seed (``torch.Generator().manual_seed(3)`` draws as ``seed=3``);
    otherwise, and for ``None`` (the global torch generator, so ``torch.manual_seed`` makes runs
    reproducible), one 63-bit integer drawn from it seeds the draw, which advances the torch generator.
    """
    if seed is None or isinstance(seed, torch.Generator):
        if seed is not None:
            fresh = torch.Generator(device=seed.device).manual_seed(seed.initial_seed())
            if torch.equal(fresh.get_state(), seed.get_state()):
                value = seed.initial_seed()
                torch.randint(2**63 - 1, (1,), generator=seed, device=seed.device)  # advance it
                return np.random.default_rng(value)
        drawn = torch.randint(2**63 - 1, (1,), generator=seed, device=None if seed is None else seed.device)
        return np.random.default_rng(int(drawn))
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        msg = (
            "`seed` must be an int, a numpy.random.Generator, a torch.Generator or None, "
            f"got {type(seed).__name__}."
        )
        raise TypeError(msg)
    return as_generator(int(seed))


def uncertainty_margin_loss(
    uncertainty: torch.Tensor,
    correct: torch.Tensor,
    /,
    *,
    margin: float = 0.1,
    reduction: str = "mean",
    pairs: str = "exact",
    n_wrong: int = 300,
    n_correct: int = 6600,
    options: MarginLossOptions | None = None,
    seed: int | np.random.Generator | torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Margin ranking loss between every wrong and every correct instance, for PyTorch tensors.

    Same definition, options and errors as
    [`selectivekit.uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss] (lower is
    better): ``L_sum = sum_{j in W, k in C} max(u_k - u_j + margin, 0)``, ``"mean"`` divides by
    ``|W| |C|``. The exact path is a fast kernel with a closed-form backward (module docstring).

    Parameters
    ----------
    uncertainty : Tensor of any shape
        Per-instance uncertainty, finite; gradients flow into it on both sides. float16/bfloat16 are
        computed in float32.
    correct : Tensor of the same shape
        Boolean (or 0/1): whether the prediction is correct. No gradient.
    margin, reduction, pairs, n_wrong, n_correct, options, mask
        As in [`selectivekit.uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss].
    seed : int, numpy.random.Generator, torch.Generator or None
        Randomness of ``pairs="sampled"``. The pairs are drawn as the core draws them, so an int (or a
        NumPy generator in the same state) gives the same pairs as
        [`selectivekit.uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss] with that seed. A
        freshly seeded ``torch.Generator``
        stands for its seed; an advanced one, or ``None`` (the global torch generator: ``torch.manual_seed``
        makes runs reproducible), seeds the draw with one integer drawn from it.
    validate : bool, default True
        Check for NaN/inf in ``uncertainty`` and a ``correct`` that is not 0/1. This reads one boolean back
        from the device; ``validate=False`` skips it (shapes and dtypes are always checked), so the exact
        path never synchronises with the host on CUDA.

    Returns
    -------
    Tensor
        0-d, float32 (float64 for float64 input), on the input's device.

    Examples
    --------
    >>> import torch
    >>> u = torch.tensor([0.25, 0.5, 0.75, 0.0], requires_grad=True)
    >>> correct = torch.tensor([True, True, False, False])
    >>> loss = uncertainty_margin_loss(u, correct, margin=0.25, reduction="sum")
    >>> loss.backward()
    >>> float(loss.detach()), u.grad.tolist()
    (1.25, [1.0, 1.0, 0.0, -2.0])
    """
    if not isinstance(uncertainty, torch.Tensor):
        msg = f"`uncertainty` must be a torch.Tensor, got {type(uncertainty).__name__}."
        raise TypeError(msg)
    correct = torch.as_tensor(correct, device=uncertainty.device)
    if mask is not None:
        mask = torch.as_tensor(mask, device=uncertainty.device)
    options = MarginLossOptions.build(
        options, margin=margin, reduction=reduction, pairs=pairs, n_wrong=n_wrong, n_correct=n_correct
    )
    validate_loss_inputs(uncertainty, correct, mask, xpt, read=validate)
    u, is_c, is_w = loss_instances(uncertainty, correct, mask, xpt)
    rng = _numpy_generator(seed) if options.pairs == "sampled" else None
    return _torch_kernels.margin_loss(u, is_c, is_w, options, rng)


# --- modules -----------------------------------------------------------------------------------------------


def _labels_and_mask(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, validate: bool
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Class indices (B, *spatial), the mask of instances that count, and whether ``target`` is one-hot."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        msg = f"`logits` must be a tensor of shape (B, C, *spatial), got {shape}."
        raise ValueError(msg)
    if not logits.is_floating_point():
        msg = f"`logits` must be floating point, got dtype {logits.dtype}."
        raise TypeError(msg)
    k = logits.shape[1]
    target = torch.as_tensor(target, device=logits.device)
    if type(target) is not torch.Tensor:  # a subclass (MONAI's MetaTensor): no metadata in the loss
        target = target.as_subclass(torch.Tensor)
    layout = target_layout(logits.shape, target.shape, 1, "target")
    if layout == "one_hot":  # one-hot (or soft) labels, >= 0; all-zero rows are ignored
        bad_target = one_hot_bad(target, xpt)  # raises for a dtype that labels cannot have
        if validate:
            bad = ~torch.isfinite(logits).all()
            if bool(bad if bad_target is None else bad | bad_target):  # the one read
                check_one_hot(target, "target", xpt)
                uncertainty_from_logits(logits, axis=1)  # raises the shared message for non-finite logits
        return target.argmax(1), target.ne(0).any(1), True
    if layout == "indices_with_axis":
        target = target[:, 0]  # (B, 1, *spatial) class indices, as MONAI keeps them
    if target.dtype == torch.bool or target.is_complex():
        msg = (
            "`target` must hold integer class indices (or be one-hot like `logits`), "
            f"got dtype {target.dtype}."
        )
        raise TypeError(msg)
    mask = target != ignore_index
    if validate:
        bad_target = (mask & ((target < 0) | (target >= k))).any()
        bad = bad_target | ~torch.isfinite(logits).all()
        if target.is_floating_point():  # float labels (MONAI's LoadImaged) must be whole numbers, not NaN
            not_whole = (target != torch.round(target)).any()
            bad = bad | not_whole
        if bool(bad):  # the one read, for every check
            if target.is_floating_point() and bool(not_whole):
                msg = (
                    "`target` holds floating-point class indices that are not whole numbers (or NaN); "
                    "they must be integers in value, as MONAI's LoadImaged gives them."
                )
                raise ValueError(msg)
            if bool(bad_target):
                msg = (
                    f"`target` must hold class indices in [0, {k}) or `ignore_index` ({ignore_index}), "
                    "got values outside it."
                )
                raise ValueError(msg)
            uncertainty_from_logits(logits, axis=1)  # raises the shared message for non-finite logits
    if target.is_floating_point():
        target = target.long()  # whole numbers (checked above unless `validate=False`)
    return target, mask, False


class UncertaintyMarginLoss(nn.Module):
    """The uncertainty loss from logits: ``u = 1 - max softmax``, correctness from the argmax.

    Parameters
    ----------
    *args, **kwargs
        The loss options, by keyword (``margin`` may also come first, positionally): ``margin=0.1``,
        ``reduction="mean"``, ``pairs="exact"``, ``n_wrong=300``, ``n_correct=6600``; see
        [`selectivekit.loss.MarginLossOptions`][selectivekit.MarginLossOptions], which validates them.
        ``push="binary"`` (the default setting's; ``"uniform"`` is the paper's gradient) says where the
        gradient moves a wrong voxel: ``"binary"`` from its predicted to its true class only, ``"uniform"``
        towards the uniform distribution; the loss value is the same, and with two classes so is the
        gradient.
    options : MarginLossOptions, optional
        The options as one object instead.
    seed : int or None
        For ``pairs="sampled"``: seeds a NumPy generator owned by the module (advanced at every call), which
        draws the pairs as the core does.
    ignore_index : int, default -100
        Target value of instances that take no part (as `torch.nn.CrossEntropyLoss`).
    sigmoid : bool, default False
        Region (multi-label sigmoid) outputs, as nnU-Net's region training and BraTS' overlapping regions
        (whole tumour, tumour core, enhancing tumour): ``logits`` of shape (B, R, *spatial), one independent
        sigmoid per region, and a target of that shape with a 0/1 value per region channel (bool, integers
        or whole floats; ``ignore_index`` where a pair takes no part). See Notes.
    validate : bool, default True
        Check the target's class range and that the logits are finite, in one read from the device.
        ``False`` makes no read at all (no host synchronisation).

    Attributes
    ----------
    options : MarginLossOptions
        The validated options (``loss.options.margin``, ...).
    sigmoid : bool
        Whether the outputs are sigmoid regions.

    Notes
    -----
    ``forward(logits, target)``: ``logits`` of shape (B, C, *spatial); ``target`` of shape (B, *spatial)
    or (B, 1, *spatial) with integer class indices (a floating-point tensor of whole numbers, as MONAI's
    ``LoadImaged`` gives labels, is read as class indices; with ``validate=True`` any value that is not a
    whole number, or NaN, raises ``ValueError``), or one-hot/soft labels of shape (B, C, *spatial)
    (rows that are all zero take no part). ``u`` is
    [`selectivekit.uncertainty_from_logits`][selectivekit.uncertainty_from_logits] (no
    cancellation for saturated voxels), computed in float32 under autocast.

    With ``sigmoid=True`` every (region, voxel) pair is one instance: the decision is ``sigmoid(z) > 0.5``
    (``z > 0``, as nnU-Net predicts regions), its uncertainty the binary analogue of ``1 - max softmax``,
    ``u = 1 - max(p, 1 - p)``
    ([`selectivekit.sigmoid_uncertainty_from_logits`][selectivekit.sigmoid_uncertainty_from_logits]), and
    it is correct when the decision equals the target of its channel. The ranking runs over the wrong and
    correct pairs of all regions together (``"mean"`` divides by ``|W| |C|`` of all pairs), not region by
    region: the evaluation refers (region, voxel) pairs below one global threshold, so a wrong pair of
    one region must rank above the correct pairs of every region. ``push`` changes nothing (with two
    outcomes ``"binary"`` and ``"uniform"`` are the same gradient).

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[0.5, 0.0, 1.0], [0.0, 1.0, 0.0]]], requires_grad=True)  # (1, 2, 3)
    >>> target = torch.tensor([[0, 0, 1]])  # voxels 1 and 2 are wrong, voxel 0 is correct but unsure
    >>> loss = UncertaintyMarginLoss(margin=0.1)(logits, target)
    >>> loss.backward()
    >>> bool(loss > 0), logits.grad.shape
    (True, torch.Size([1, 2, 3]))
    >>> regions = torch.tensor([[[2.0, -1.0, 0.5], [-3.0, -2.0, 1.0]]], requires_grad=True)  # (1, 2, 3)
    >>> in_region = torch.tensor([[[1, 1, 0], [0, 0, 1]]])  # one target per region channel
    >>> loss = UncertaintyMarginLoss(sigmoid=True)(regions, in_region)  # 2 wrong pairs, 4 correct
    >>> round(float(loss.detach()), 4)  # one active pair: (0.269 + 0.1) - 0.269, over 2 x 4 pairs
    0.0125
    """

    def __init__(
        self,
        *args: Any,
        options: MarginLossOptions | None = None,
        seed: int | None = None,
        ignore_index: int = -100,
        sigmoid: bool = False,
        validate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.options = MarginLossOptions.build(options, *args, **kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            msg = f"`seed` must be an int or None, got {type(seed).__name__}."
            raise TypeError(msg)
        self.seed = seed
        self.ignore_index = int(ignore_index)
        if not isinstance(sigmoid, bool):
            msg = f"`sigmoid` must be True or False, got {sigmoid!r}."
            raise TypeError(msg)
        self.sigmoid = sigmoid
        self.validate = bool(validate)
        self._rng = None if seed is None else as_generator(seed)

    def extra_repr(self) -> str:
        text = ", ".join(f"{name}={value!r}" for name, value in self.options.to_config().items())
        return text + (", sigmoid=True" if self.sigmoid else "")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.sigmoid:
            return self._regions(logits, target)
        labels, mask, _ = _labels_and_mask(logits, target, self.ignore_index, self.validate)
        u = uncertainty_from_logits(logits, axis=1, validate=False)  # checked in _labels_and_mask
        pred = torch.argmax(logits, dim=1)
        correct = pred == labels
        if self.options.push == "binary":
            u = _torch_kernels.binary_push(u, logits, pred, torch.where(mask, labels, 0).long(), correct)
        return uncertainty_margin_loss(
            u,
            correct,
            options=self.options,
            seed=self._rng if self.options.pairs == "sampled" else None,
            mask=mask,
            validate=False,  # logits checked in _labels_and_mask, so u is finite; correct is boolean
        )

    def _regions(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sigmoid=True``: one instance per (region, voxel) pair, ranked over every region together."""
        if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            msg = f"`logits` must be a tensor of shape (B, R, *spatial), got {shape}."
            raise ValueError(msg)
        target = torch.as_tensor(target, device=logits.device)
        if type(target) is not torch.Tensor:  # a subclass (MONAI's MetaTensor): no metadata in the loss
            target = target.as_subclass(torch.Tensor)
        is_one, mask = region_targets(logits, target, self.ignore_index, self.validate, xpt)
        u = sigmoid_uncertainty_from_logits(logits, validate=False)  # checked in region_targets
        return uncertainty_margin_loss(
            u,
            (logits > 0) == is_one,
            options=self.options,
            seed=self._rng if self.options.pairs == "sampled" else None,
            mask=mask,
            validate=False,
        )


class UncertaintyAwareLoss(nn.Module):
    """The paper's objective ``L = L_seg + w(t) * L_unc`` (eq. 3), with the weight ``w(t)`` on a schedule.

    The default setting (`selectivekit.LOSS_SETTINGS` ``["default"]``) trains on segmentation alone for the
    first quarter of training, ramps the weight linearly to 200 over the next quarter, and moves a wrong
    voxel from its predicted to its true class (``push="binary"``). So the loss must know the length of
    training: give ``total_steps``, and every call that computes a gradient counts as one step.

    Parameters
    ----------
    seg_loss : callable ``(logits, target) -> loss``, optional
        The segmentation loss, e.g. a MONAI ``DiceCELoss``; it receives ``target`` as given. Default:
        `torch.nn.CrossEntropyLoss` with the margin loss's ``ignore_index`` (class indices, or
        one-hot as class probabilities); for region outputs (``sigmoid=True``), the binary cross-entropy
        with logits of every (region, voxel) pair whose target is not ``ignore_index``.
    weight : float, optional
        The full weight of the uncertainty term; default the setting's (200; the paper's 2000 with
        ``setting="authors"``).
    setting : {"default", "authors"} or LossSetting, default "default"
        The weight, push and schedule ([`LossSetting`][selectivekit.LossSetting]). ``"authors"`` is the
        paper's exact objective: weight 2000 from the first step and the plain gradient of ``u``
        (``push="uniform"``); use it to reproduce the paper.
    total_steps : int, optional
        The number of steps of all of training (calls that compute a gradient, e.g. ``epochs *
        len(loader)``). Required by a setting with a warm-up or a ramp: without it, the first call raises
        ``ValueError`` rather than train at full weight from the first step. The Lightning callback
        (`selectivekit.adapters.lightning.UncertaintyScheduleCallback`) sets it from the trainer.
    warmup, ramp, push : optional
        Change these fields of the setting (shares of training; ``"binary"`` or ``"uniform"``).
    margin_loss : UncertaintyMarginLoss, optional
        The uncertainty term. Default: ``UncertaintyMarginLoss(**kwargs)`` with the setting's ``push``.
    scale_weights : sequence of float, optional
        Deep supervision: the weight of each output when ``forward`` gets a list of outputs (one per scale,
        full resolution first). Default: MONAI's ``DeepSupervisionLoss`` default, ``max(0.5**i, 0.0625)``
        for output ``i``.
    **kwargs
        Passed to [`UncertaintyMarginLoss`][selectivekit.adapters.torch.UncertaintyMarginLoss] when
        ``margin_loss`` is not given (``margin``,
        ``reduction``, ``pairs``, ``n_wrong``, ``n_correct``, ``seed``, ``ignore_index``, ``sigmoid``,
        ``validate``).

    Attributes
    ----------
    unc_loss : UncertaintyMarginLoss
        The uncertainty term.
    schedule : WeightSchedule
        The setting and the step count (``schedule.step``, ``schedule.set_step(n)`` to resume).
    weight : float
        The weight at the current step (read-only: it follows the schedule).
    last_seg_loss, last_unc_loss, last_weight : Tensor, Tensor, float or None
        The two terms of the last call, detached (``last_unc_loss`` before the weight), and the weight it
        used, for logging; for a list of outputs, the terms' sums weighted with ``scale_weights``.

    Notes
    -----
    ``forward(logits, target)`` takes a tensor of shape (B, C, *spatial) and a target as
    [`UncertaintyMarginLoss`][selectivekit.adapters.torch.UncertaintyMarginLoss] does, or, for deep
    supervision, a list of outputs at several scales and a list of targets (one per output, as nnU-Net
    gives them) or one full-resolution target, resized to each output with nearest-neighbour
    interpolation (``"nearest-exact"``, as MONAI's ``DeepSupervisionLoss``). The result is then
    ``sum_i scale_weights[i] * (L_seg(output_i, target_i) + w(t) * L_unc(output_i, target_i))``.
    A call advances the schedule by one step when gradients are enabled and the logits require them;
    evaluation calls (``torch.no_grad()``) use the current weight and do not count. Wrapped in MONAI's
    ``DeepSupervisionLoss``, the loss is called once per output, so each output counts as a step: pass
    the list of outputs to the loss itself instead (one step), or multiply ``total_steps``.

    Examples
    --------
    >>> import torch
    >>> criterion = UncertaintyAwareLoss(total_steps=4)  # the default setting, 4 steps of training
    >>> logits = torch.randn(2, 3, 4, 4, requires_grad=True, generator=torch.Generator().manual_seed(0))
    >>> target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    >>> weights = []
    >>> for step in range(4):
    ...     loss = criterion(logits, target)
    ...     loss.backward()
    ...     weights.append(criterion.last_weight)
    >>> weights  # warm-up (25%), ramp (25%), then the full weight
    [0.0, 0.0, 200.0, 200.0]
    >>> torch.allclose(loss.detach(), criterion.last_seg_loss + 200.0 * criterion.last_unc_loss)
    True
    """

    def __init__(
        self,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        weight: float | None = None,
        *,
        setting: str | LossSetting = "default",
        total_steps: int | None = None,
        warmup: float | None = None,
        ramp: float | None = None,
        push: str | None = None,
        margin_loss: UncertaintyMarginLoss | None = None,
        scale_weights: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.scale_weights = None if scale_weights is None else _check_scale_weights(scale_weights)
        if seg_loss is not None and not callable(seg_loss):
            msg = f"`seg_loss` must be callable (logits, target) -> loss, got {type(seg_loss).__name__}."
            raise TypeError(msg)
        chosen = get_loss_setting(setting, weight=weight, push=push, warmup=warmup, ramp=ramp)
        if margin_loss is None:
            kwargs["push"] = chosen.push
        self.unc_loss = compose_margin_loss(UncertaintyMarginLoss, margin_loss, kwargs)
        chosen.check_push(self.unc_loss.options.push)
        self.schedule = WeightSchedule(chosen, total_steps)
        self._default_seg = seg_loss is None
        if seg_loss is None:
            seg_loss = nn.CrossEntropyLoss(ignore_index=self.unc_loss.ignore_index)
        self.seg_loss = seg_loss
        self.last_seg_loss: torch.Tensor | None = None
        self.last_unc_loss: torch.Tensor | None = None
        self.last_weight: float | None = None

    @property
    def setting(self) -> LossSetting:
        """The weight, push and schedule of the uncertainty term."""
        return self.schedule.setting

    @property
    def weight(self) -> float:
        """The weight of the uncertainty term at the current step of the schedule."""
        return self.schedule.weight

    @weight.setter
    def weight(self, value: Any) -> None:
        msg = (
            "`weight` follows the schedule and cannot be set: give `weight=` (the full weight) when building "
            "the loss, `total_steps=` for its schedule, or `warmup=0, ramp=0` for a constant weight."
        )
        raise AttributeError(msg)

    def extra_repr(self) -> str:
        s = self.setting
        return (
            f"weight={s.weight:g}, push={s.push!r}, warmup={s.warmup:g}, ramp={s.ramp:g}, "
            f"total_steps={self.schedule.total_steps}"
        )

    def _next_weight(self, logits: Any) -> float:
        """The weight of this call; a call that computes a gradient counts as one step of training."""
        weight = self.schedule.weight  # raises when the schedule needs a length it was not given
        outputs = logits if isinstance(logits, (list, tuple)) else [logits]
        if torch.is_grad_enabled() and any(getattr(o, "requires_grad", False) for o in outputs):
            self.schedule.advance()
        self.last_weight = weight
        return weight

    def forward(
        self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        weight = self._next_weight(logits)
        if isinstance(logits, (list, tuple)):
            return self._deep_supervision(logits, target, weight)
        if isinstance(target, (list, tuple)):
            msg = "`target` is a list: give `logits` as a list of outputs too (one per scale)."
            raise TypeError(msg)
        l_seg, l_unc = self._terms(logits, target)
        self.last_seg_loss = l_seg.detach()
        self.last_unc_loss = l_unc.detach()
        return l_seg + weight * l_unc

    def _terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l_unc = self.unc_loss(logits, target)  # first: it validates the target with a clear message
        if self._default_seg and self.unc_loss.sigmoid:
            return _region_cross_entropy(logits, target, self.unc_loss.ignore_index), l_unc
        seg_target = target
        if self._default_seg:
            target = torch.as_tensor(target, device=logits.device)
            if target.shape == logits.shape:
                seg_target = target.to(logits.dtype)  # one-hot: class probabilities
            else:
                seg_target = target[:, 0] if target.ndim == logits.ndim else target
                # cross-entropy takes int64 class indices: floats of whole numbers (checked by the margin
                # loss) and every other integer dtype (uint8 masks, int16 label maps) are widened
                if seg_target.dtype != torch.int64:
                    seg_target = seg_target.long()
        l_seg = self.seg_loss(logits, seg_target)
        if self._default_seg and seg_target.ndim < logits.ndim:
            # every target `ignore_index`: the cross-entropy's mean is 0/0 (NaN); the loss is 0 with a zero
            # gradient, as in Keras (a where, not a read: no host synchronisation)
            labelled = (seg_target != self.unc_loss.ignore_index).any()
            l_seg = torch.where(labelled, l_seg, torch.zeros_like(l_seg))
        return l_seg, l_unc

    def _deep_supervision(self, outputs: Sequence[torch.Tensor], target: Any, weight: float) -> torch.Tensor:
        n = len(outputs)
        if n == 0:
            msg = "`logits` is an empty list; give at least one output."
            raise ValueError(msg)
        if isinstance(target, (list, tuple)):
            if len(target) != n:
                msg = f"`target` must hold one target per output ({n}), got {len(target)}."
                raise ValueError(msg)
            targets = list(target)
        else:
            targets = [_resized_target(target, output) for output in outputs]
        weights = self.scale_weights or tuple(max(0.5**i, 0.0625) for i in range(n))
        if len(weights) != n:
            msg = f"`scale_weights` must have one weight per output ({n}), got {len(weights)}."
            raise ValueError(msg)
        total = seg_sum = unc_sum = None
        for w, output, t in zip(weights, outputs, targets, strict=True):
            l_seg, l_unc = self._terms(output, t)
            term = w * (l_seg + weight * l_unc)
            total = term if total is None else total + term
            seg_sum = w * l_seg.detach() if seg_sum is None else seg_sum + w * l_seg.detach()
            unc_sum = w * l_unc.detach() if unc_sum is None else unc_sum + w * l_unc.detach()
        self.last_seg_loss = seg_sum
        self.last_unc_loss = unc_sum
        return total


def _region_cross_entropy(logits: torch.Tensor, target: Any, ignore_index: int) -> torch.Tensor:
    """The default segmentation loss of region outputs: binary cross-entropy with logits, averaged over the
    (region, voxel) pairs whose target is not ``ignore_index`` (0, zero gradient, when there are none)."""
    target = torch.as_tensor(target, device=logits.device)
    keep = torch.ones_like(target, dtype=torch.bool) if target.dtype == torch.bool else target != ignore_index
    y = torch.where(keep, target, torch.zeros_like(target)).to(logits.dtype)
    terms = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    kept = keep.to(terms.dtype)
    return (terms * kept).sum() / kept.sum().clamp(min=1.0)


def _check_scale_weights(weights: Any) -> tuple[float, ...]:
    """Deep-supervision weights: a non-empty sequence of finite, non-negative numbers."""
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        msg = f"`scale_weights` must be a sequence of numbers, got {type(weights).__name__}."
        raise TypeError(msg)
    values = tuple(float(w) for w in weights)
    if not values or not all(math.isfinite(w) and w >= 0 for w in values):
        msg = f"`scale_weights` must be a non-empty sequence of finite numbers >= 0, got {list(weights)}."
        raise ValueError(msg)
    return values


def _resized_target(target: Any, logits: torch.Tensor) -> torch.Tensor:
    """``target`` at the spatial size of ``logits`` by nearest-neighbour interpolation (``"nearest-exact"``,
    as MONAI's ``DeepSupervisionLoss``), in its own dtype; unchanged when the size already fits."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        msg = f"`logits` outputs must be tensors of shape (B, C, *spatial), got {shape}."
        raise ValueError(msg)
    target = torch.as_tensor(target, device=logits.device)
    spatial = tuple(logits.shape[2:])
    with_axis = target.ndim == logits.ndim
    t = target if with_axis else target[:, None]
    if t.ndim != logits.ndim or tuple(t.shape[2:]) == spatial:
        return target  # the margin loss reports a shape that does not fit
    t = t if t.is_floating_point() else t.to(torch.float32)
    resized = torch.nn.functional.interpolate(t, size=spatial, mode="nearest-exact")
    resized = resized.to(target.dtype)
    return resized if with_axis else resized[:, 0]

"""Keras 3 losses: the uncertainty-aware margin ranking loss, with ``keras.ops`` only.

Runs on the TensorFlow (including ``jit_compile=True``), JAX (``jax.jit``) and PyTorch backends, all three
tested; channels-last by default. The classes are registered for Keras serialization (package
``selectivekit``): a model compiled with them saves with ``model.save`` and loads with
``keras.models.load_model``.

- [`uncertainty_margin_loss`][selectivekit.adapters.keras.uncertainty_margin_loss]: functional, for a ``u``
  you computed yourself.
- [`UncertaintyMarginLoss`][selectivekit.adapters.keras.UncertaintyMarginLoss]: ``call(y_true, y_pred)`` with
  ``u = 1 - max softmax`` and correctness from
  the argmax.
- [`UncertaintyAwareLoss`][selectivekit.adapters.keras.UncertaintyAwareLoss]: ``L_seg + weight * L_unc``; the
  segmentation loss defaults to sparse
  categorical cross-entropy from logits.

The kernels (the exact sum with static shapes, the sampled estimator, the uncertainty from logits or
probabilities) are the core formulas restated in ``keras.ops``, in `selectivekit.adapters._keras_ops`.
The sampled estimator draws its sample with ``keras.random``, not with the core's NumPy draw: inside a
compiled graph the sizes of the two sides are not known on the host, and a NumPy draw would run once, at
tracing, then repeat at every step. So one seed gives reproducible pairs in Keras, but not the pairs the core
and the PyTorch adapter draw for that seed.

Values are checked only where Keras can without reading back from the device (argument values, static
shapes); NaN in the logits or labels outside ``[0, K)`` cannot raise inside a compiled graph.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from .._lib import check_same_static_shape, compose_margin_loss, target_layout
from ..loss import MarginLossOptions
from ..loss_setting import LossSetting, WeightSchedule, get_loss_setting
from . import _keras_ops
from .keras_metrics import AURC, CalibrationError  # the metrics live beside the losses, one import away

__all__ = [
    "AURC",
    "CalibrationError",
    "UncertaintyAwareLoss",
    "UncertaintyMarginLoss",
    "UncertaintyScheduleCallback",
    "uncertainty_margin_loss",
]


def uncertainty_margin_loss(
    uncertainty: Any,
    correct: Any,
    /,
    *,
    margin: float = 0.1,
    reduction: str = "mean",
    pairs: str = "exact",
    n_wrong: int = 300,
    n_correct: int = 6600,
    options: MarginLossOptions | None = None,
    seed: Any = None,
    mask: Any = None,
) -> Any:
    """Margin ranking loss between every wrong and every correct instance, with ``keras.ops``.

    Same definition, options and argument errors as
    [`selectivekit.uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss] (lower
    is better). ``uncertainty`` is computed in float32; ``correct`` and ``mask`` are boolean (or 0/1).
    ``options`` as in the core. ``seed`` (``pairs="sampled"``): an int, a ``keras.random.SeedGenerator`` or
    None; the sample comes from ``keras.random`` (module docstring: why it cannot be the core's draw).
    Static shapes only, so it runs inside ``tf.function(jit_compile=True)`` and ``jax.jit``.

    Returns
    -------
    scalar tensor (float32) of the backend.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.array([0.25, 0.5, 0.75, 0.0], dtype="float32")
    >>> correct = np.array([True, True, False, False])
    >>> float(uncertainty_margin_loss(u, correct, margin=0.25, reduction="sum"))
    1.25
    """
    options = MarginLossOptions.build(
        options, margin=margin, reduction=reduction, pairs=pairs, n_wrong=n_wrong, n_correct=n_correct
    )
    u = ops.convert_to_tensor(uncertainty)
    correct = ops.convert_to_tensor(correct)
    check_same_static_shape("uncertainty", u, "correct", correct)
    if mask is not None:
        mask = ops.convert_to_tensor(mask)
        check_same_static_shape("uncertainty", u, "mask", mask)
    return _keras_ops.margin_loss(u, correct, mask, options, seed)


def _labels_and_mask(y_true: Any, y_pred: Any, axis: int, ignore_class: int | None):
    """Class indices with the class axis removed, the mask of instances that count, and one-hot or not."""
    rank = len(y_pred.shape)
    if rank < 2:
        msg = f"`y_pred` must have a batch and a class axis, got shape {tuple(y_pred.shape)}."
        raise ValueError(msg)
    axis = axis % rank
    layout = target_layout(y_pred.shape, y_true.shape, axis, "y_true")
    if layout == "one_hot":
        labels = ops.argmax(y_true, axis=axis)
        return labels, ops.any(ops.not_equal(y_true, 0), axis=axis), True
    if layout == "indices_with_axis":
        y_true = ops.squeeze(y_true, axis=axis)
    labels = ops.cast(y_true, "int32")
    mask = None if ignore_class is None else ops.not_equal(labels, ignore_class)
    return labels, mask, False


def _check_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"`{name}` must be an integer, got {type(value).__name__}."
        raise TypeError(msg)
    return value


@keras.saving.register_keras_serializable(package="selectivekit")
class UncertaintyMarginLoss(keras.losses.Loss):
    """The uncertainty loss of a segmentation output: ``u = 1 - max softmax``, correctness from the argmax.

    Parameters
    ----------
    *args, **kwargs
        The loss options, by keyword (``margin`` may also come first, positionally): ``margin=0.1``,
        ``reduction="mean"`` (over the pairs; the loss is one scalar per batch, so Keras' own reduction of it
        is the identity), ``pairs="exact"``, ``n_wrong=300``, ``n_correct=6600``; see
        [`selectivekit.loss.MarginLossOptions`][selectivekit.MarginLossOptions], which validates them.
        ``push="binary"`` (the default setting's; ``"uniform"`` is the paper's gradient) says where the
        gradient moves a wrong voxel: ``"binary"`` from its predicted to its true class only, ``"uniform"``
        towards the uniform distribution; the loss value is the same, and with two classes so is the
        gradient.
    options : MarginLossOptions, optional
        The options as one object instead.
    seed : int or None
        For ``pairs="sampled"``: seeds the loss's ``keras.random.SeedGenerator``.
    from_logits : bool, default True
        ``y_pred`` holds logits (``u`` computed without cancellation) or probabilities.
    axis : int, default -1
        The class axis of ``y_pred`` (channels-last).
    ignore_class : int or None
        Label value of instances that take no part (as Keras' sparse cross-entropy).
    sigmoid : bool, default False
        Region (multi-label sigmoid) outputs, as BraTS' overlapping regions: ``y_pred`` holds one sigmoid
        logit (or probability) per region channel and ``y_true`` a 0/1 target of the same shape. Every
        (region, voxel) pair is one instance, ``u = 1 - max(p, 1 - p)``, correct when ``(p > 0.5) ==
        target``, ranked over every region together (as the PyTorch loss and
        [`margin_loss_from_logits`][selectivekit.margin_loss_from_logits] with ``sigmoid=True``); ``push``
        changes nothing (two outcomes). ``ignore_class`` does not apply.
    name : str, optional

    Notes
    -----
    ``call(y_true, y_pred)``: ``y_pred`` of shape (B, *spatial, C); ``y_true`` integer labels of shape
    (B, *spatial) or (B, *spatial, 1), or one-hot of the shape of ``y_pred`` (all-zero rows take no part).
    ``sample_weight`` multiplies the batch's scalar loss (per-voxel weights are not supported; use
    ``ignore_class``).

    Examples
    --------
    >>> import numpy as np
    >>> logits = np.array([[[0.5, 0.0], [0.0, 1.0], [1.0, 0.0]]], dtype="float32")  # (1, 3, 2)
    >>> labels = np.array([[0, 0, 1]])
    >>> loss = UncertaintyMarginLoss(margin=0.1)
    >>> bool(loss(labels, logits) > 0)
    True
    """

    def __init__(
        self,
        *args: Any,
        options: MarginLossOptions | None = None,
        seed: int | None = None,
        from_logits: bool = True,
        axis: int = -1,
        ignore_class: int | None = None,
        sigmoid: bool = False,
        name: str = "uncertainty_margin_loss",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(sigmoid, bool):
            msg = f"`sigmoid` must be True or False, got {sigmoid!r}."
            raise TypeError(msg)
        if sigmoid and ignore_class is not None:
            msg = "`ignore_class` does not apply with `sigmoid=True` (each region's target is 0 or 1)."
            raise ValueError(msg)
        self.sigmoid = sigmoid
        self.options = MarginLossOptions.build(options, *args, **kwargs)
        super().__init__(name=name, reduction=self.options.reduction, dtype=dtype)
        self.seed = _check_int(seed, "seed", allow_none=True)
        self.from_logits = bool(from_logits)
        self.axis = _check_int(axis, "axis")
        self.ignore_class = _check_int(ignore_class, "ignore_class", allow_none=True)
        self._seed_generator = keras.random.SeedGenerator(seed) if self.options.pairs == "sampled" else None

    def call(self, y_true: Any, y_pred: Any) -> Any:
        if self.sigmoid:
            check_same_static_shape("y_pred", y_pred, "y_true", y_true)
            u = _keras_ops.sigmoid_uncertainty(y_pred, self.from_logits)
            decided = ops.greater(ops.cast(y_pred, "float32"), 0.0 if self.from_logits else 0.5)
            correct = ops.equal(decided, ops.not_equal(y_true, 0))
            return _keras_ops.margin_loss(u, correct, None, self.options, self._seed_generator)
        labels, mask, _ = _labels_and_mask(y_true, y_pred, self.axis, self.ignore_class)
        u = _keras_ops.uncertainty(y_pred, self.axis, self.from_logits)
        pred = ops.cast(ops.argmax(y_pred, axis=self.axis), "int32")
        correct = ops.equal(pred, ops.cast(labels, "int32"))
        if self.options.push == "binary":
            valid = ops.cast(labels, "int32")
            valid = valid if mask is None else ops.where(mask, valid, 0)
            u = _keras_ops.binary_push(u, y_pred, pred, valid, correct, self.axis, self.from_logits)
        return _keras_ops.margin_loss(u, correct, mask, self.options, self._seed_generator)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self.options.to_config())  # every option, whatever MarginLossOptions holds
        config.update(
            seed=self.seed,
            from_logits=self.from_logits,
            axis=self.axis,
            ignore_class=self.ignore_class,
            sigmoid=self.sigmoid,
        )
        return config


@keras.saving.register_keras_serializable(package="selectivekit")
class UncertaintyAwareLoss(keras.losses.Loss):
    """The paper's objective ``L = L_seg + w(t) * L_unc`` (eq. 3), for ``model.compile(loss=...)``.

    The weight ``w(t)`` follows a [`LossSetting`][selectivekit.LossSetting]: by default segmentation alone
    for the first quarter of training, then a linear ramp to 200 over the next quarter, and a wrong voxel
    moved from its predicted to its true class (``push="binary"``). Pass
    ``callbacks=[UncertaintyScheduleCallback(loss)]`` to ``model.fit``: it sets the weight at every epoch
    from the number of epochs. Without it, a setting with a warm-up or a ramp raises ``ValueError`` at the
    first call rather than train at full weight from the first step.

    Parameters
    ----------
    seg_loss : keras.losses.Loss or callable ``(y_true, y_pred) -> loss``, optional
        Default: sparse categorical cross-entropy (one-hot ``y_true``: categorical), averaged over the
        instances that are not ``ignore_class``, from logits unless ``from_logits=False``; with
        ``sigmoid=True`` (region outputs) the binary cross-entropy averaged over every (region, voxel) pair.
    weight : float, optional
        The full weight of the uncertainty term; default the setting's (200; 2000 with
        ``setting="authors"``).
    setting : {"default", "authors"} or LossSetting, default "default"
        ``"authors"`` is the paper's exact objective (weight 2000 from the first step, the plain gradient);
        see [`LOSS_SETTINGS`][selectivekit.LOSS_SETTINGS].
    warmup, ramp, push : optional
        Change these fields of the setting.
    margin_loss : UncertaintyMarginLoss, optional
        The uncertainty term. Default: ``UncertaintyMarginLoss(**kwargs)`` with the setting's ``push``.
    **kwargs
        Passed to [`UncertaintyMarginLoss`][selectivekit.adapters.keras.UncertaintyMarginLoss] when
        ``margin_loss`` is not given (``margin``,
        ``reduction``, ``pairs``, ``n_wrong``, ``n_correct``, ``seed``, ``from_logits``, ``axis``,
        ``ignore_class``, ``sigmoid``).

    Attributes
    ----------
    unc_loss : UncertaintyMarginLoss
        The uncertainty term; its ``from_logits``, ``axis`` and ``ignore_class`` also apply to the default
        segmentation loss.
    setting : LossSetting
        The weight, push and schedule.
    weight : float
        The weight in use (set by the callback; the setting's full weight for a constant setting).

    Examples
    --------
    >>> import numpy as np
    >>> loss = UncertaintyAwareLoss()  # the default setting: model.fit(..., callbacks=[callback])
    >>> callback = UncertaintyScheduleCallback(loss)
    >>> logits = np.array([[[0.5, 0.0], [0.0, 1.0], [1.0, 0.0]]], dtype="float32")
    >>> labels = np.array([[0, 0, 1]])
    >>> authors = UncertaintyAwareLoss(setting="authors")  # the paper's constant weight: no schedule
    >>> unc = UncertaintyMarginLoss(push="uniform")(labels, logits)
    >>> bool(authors(labels, logits) > 2000.0 * unc)  # plus the cross-entropy
    True
    """

    def __init__(
        self,
        seg_loss: Any = None,
        weight: float | None = None,
        *,
        setting: str | LossSetting | dict[str, Any] = "default",
        warmup: float | None = None,
        ramp: float | None = None,
        push: str | None = None,
        margin_loss: UncertaintyMarginLoss | None = None,
        name: str = "uncertainty_aware_loss",
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        if seg_loss is not None and not callable(seg_loss):
            msg = f"`seg_loss` must be callable (y_true, y_pred) -> loss, got {type(seg_loss).__name__}."
            raise TypeError(msg)
        if isinstance(setting, dict):  # from get_config
            setting = LossSetting(**setting)
        self.setting = get_loss_setting(setting, weight=weight, push=push, warmup=warmup, ramp=ramp)
        if margin_loss is None:
            kwargs["push"] = self.setting.push
        self.unc_loss = compose_margin_loss(UncertaintyMarginLoss, margin_loss, kwargs)
        self.setting.check_push(self.unc_loss.options.push)
        super().__init__(name=name, reduction=self.unc_loss.options.reduction, dtype=dtype)
        self.seg_loss = seg_loss
        self.weight = self.setting.weight
        self.scheduled = self.setting.constant  # set by UncertaintyScheduleCallback

    def _default_seg(self, y_true: Any, y_pred: Any) -> Any:
        unc = self.unc_loss
        if unc.sigmoid:  # region outputs: binary cross-entropy of every (region, voxel) pair
            targets = ops.cast(ops.not_equal(y_true, 0), y_pred.dtype)
            bce = keras.losses.binary_crossentropy(
                targets, y_pred, from_logits=unc.from_logits, axis=unc.axis
            )
            return ops.mean(bce)
        labels, mask, one_hot = _labels_and_mask(y_true, y_pred, unc.axis, unc.ignore_class)
        if one_hot:
            ce = keras.losses.categorical_crossentropy(
                ops.cast(y_true, y_pred.dtype), y_pred, from_logits=unc.from_logits, axis=unc.axis
            )
        else:
            safe = labels if mask is None else ops.where(mask, labels, 0)
            ce = keras.losses.sparse_categorical_crossentropy(
                safe, y_pred, from_logits=unc.from_logits, axis=unc.axis
            )
        if mask is None:
            return ops.mean(ce)
        weights = ops.cast(mask, ce.dtype)
        return ops.sum(ce * weights) / ops.maximum(ops.sum(weights), 1.0)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        if not self.scheduled:  # checked when traced, before the first step
            WeightSchedule(self.setting).require_length()
        l_unc = self.unc_loss.call(y_true, y_pred)
        if self.seg_loss is None:
            l_seg = self._default_seg(y_true, y_pred)
        else:
            l_seg = self.seg_loss(y_true, y_pred)
        return ops.cast(l_seg, "float32") + self.weight * l_unc

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            setting=self.setting.to_config(),
            current_weight=self.weight,  # a saved model keeps the weight its schedule reached
            scheduled=self.scheduled,
            seg_loss=None if self.seg_loss is None else keras.saving.serialize_keras_object(self.seg_loss),
            margin_loss=keras.saving.serialize_keras_object(self.unc_loss),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UncertaintyAwareLoss:
        config = dict(config)
        seg = config.pop("seg_loss", None)
        if seg is not None:
            seg = keras.saving.deserialize_keras_object(seg)
        margin_loss = config.pop("margin_loss", None)
        if margin_loss is not None:
            margin_loss = keras.saving.deserialize_keras_object(margin_loss)
            config.pop("reduction", None)  # the margin loss's own
        if "setting" not in config:  # saved before settings existed: a constant weight, the saved push
            push = margin_loss.options.push if margin_loss is not None else config.get("push", "uniform")
            weight = config.pop("weight", 2000.0)
            config["setting"] = LossSetting(weight=weight, push=push, warmup=0.0, ramp=0.0)
        current, scheduled = config.pop("current_weight", None), config.pop("scheduled", None)
        # configs written before `margin_loss` existed hold its options flat: they are passed on as such
        loss = cls(seg_loss=seg, margin_loss=margin_loss, **config)
        if current is not None:  # evaluates, or trains on, at the weight the schedule had reached
            loss.weight, loss.scheduled = float(current), bool(scheduled)
        return loss


class UncertaintyScheduleCallback(keras.callbacks.Callback):
    """Sets the weight of an [`UncertaintyAwareLoss`][selectivekit.adapters.keras.UncertaintyAwareLoss] at
    every epoch of ``model.fit``, from its setting's warm-up and ramp.

    The weight of epoch ``e`` of ``E`` is the setting's weight at the middle of the epoch,
    ``weight_at((e + 0.5) / E)``: the schedule moves once an epoch (a compiled step cannot read a Python
    number that changes at every step on every backend), and the training step is compiled again when
    the weight changes.

    Parameters
    ----------
    loss : UncertaintyAwareLoss
        The loss given to ``model.compile``.
    epochs : int, optional
        The number of epochs of all of training; default the ``epochs`` given to ``model.fit`` (give it
        when training is split over several ``fit`` calls).

    Examples
    --------
    >>> loss = UncertaintyAwareLoss()
    >>> callback = UncertaintyScheduleCallback(loss, epochs=8)
    >>> [callback.weight_of_epoch(e) for e in range(8)]
    [0.0, 0.0, 50.0, 150.0, 200.0, 200.0, 200.0, 200.0]
    """

    def __init__(self, loss: UncertaintyAwareLoss, epochs: int | None = None) -> None:
        super().__init__()
        if not isinstance(loss, UncertaintyAwareLoss):
            msg = f"`loss` must be an UncertaintyAwareLoss, got {type(loss).__name__}."
            raise TypeError(msg)
        self.loss = loss
        self.epochs = None if epochs is None else _check_int(epochs, "epochs")
        if self.epochs is not None and self.epochs < 1:
            msg = f"`epochs` must be >= 1, got {epochs}."
            raise ValueError(msg)

    def weight_of_epoch(self, epoch: int) -> float:
        """The weight used in (0-based) ``epoch``."""
        if self.epochs is None:
            msg = "`epochs` is not known yet: give it to the callback or use it in `model.fit`."
            raise ValueError(msg)
        return self.loss.setting.weight_at((epoch + 0.5) / self.epochs)

    def on_train_begin(self, logs: Any = None) -> None:
        if self.epochs is None:
            self.epochs = int(self.params["epochs"])
        self.loss.scheduled = True

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        weight = self.weight_of_epoch(epoch)
        if weight != self.loss.weight:
            self.loss.weight = weight
            self.model.make_train_function(force=True)  # the weight is a constant of the compiled step

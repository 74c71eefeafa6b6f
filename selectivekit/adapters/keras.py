"""Keras 3 losses: the uncertainty-aware margin ranking loss (SPEC section 6), with ``keras.ops`` only.

Runs on every Keras backend (tested on TensorFlow, including ``jit_compile=True``), channels-last by default.

- :func:`uncertainty_margin_loss`: functional, for a ``u`` you computed yourself.
- :class:`UncertaintyMarginLoss`: ``call(y_true, y_pred)`` with ``u = 1 - max softmax`` and correctness from
  the argmax.
- :class:`UncertaintyAwareLoss`: ``L_seg + weight * L_unc``; the segmentation loss defaults to sparse
  categorical cross-entropy from logits.

The exact kernel has static shapes and no ``searchsorted`` (XLA lowers it to a dense comparison of every
query with every element). It is the formula of :func:`selectivekit.loss.uncertainty_margin_loss` written
along one sort of ``v = u + margin * correct``: walking up the sorted ``v``, the cumulative number of wrong
instances and the cumulative sum of their ``u`` give, at every correct ``k``, ``cnt_k`` and ``S_k`` and its
term ``cnt_k v_k - S_k``. Wrong instances tied with ``v_k`` add ``max(0, 0) = 0`` to the value but must not
count as active (zero gradient). Where the backend has float64 the sort key carries the wrong flag below
float32 precision, so ties sort correct-first and one ``top_k`` gives the sorted values and flags; the
gradient (``+cnt_k`` for correct ``k``, ``-#{k : v_k > u_j}`` for wrong ``j``: the all-pairs one) is formed in
sorted order and moved back with one ``segment_sum``. Without float64 (JAX x32) an ``argsort`` of float32
``v`` is used and the counts are read at the first position of each group of equal ``v``.

Values are checked only where Keras can without reading back from the device (argument values, static
shapes); NaN in the logits or labels outside ``[0, K)`` cannot raise inside a compiled graph.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from .._validation import check_choice, check_margin
from ..loss import check_loss_options
from .keras_metrics import (
    AURC,
    uncertainty_from_logits,
)  # the metrics live beside the losses, one import away

__all__ = ["AURC", "UncertaintyAwareLoss", "UncertaintyMarginLoss", "uncertainty_margin_loss"]


#: Use the float64 sort key where the backend has float64 (tests set it to False for the other kernel).
_FLOAT64_KEYS = True


def _has_float64() -> bool:
    """Whether the backend computes in float64 (JAX only with x64 enabled)."""
    if keras.backend.backend() == "jax":
        import jax

        return bool(jax.config.read("jax_enable_x64"))
    return True


def _with_gradient(value: Any, u: Any, coef: Any) -> Any:
    """``value`` in the forward pass, ``coef`` (constant, shape of ``u``) as its gradient in ``u``.

    ``dot - stop_gradient(dot)`` is exactly 0 (the same tensor minus itself), so the value is unchanged on
    every backend, and its gradient is ``coef``.
    """
    dot = ops.sum(ops.cast(u, value.dtype) * ops.cast(ops.stop_gradient(coef), value.dtype))
    return ops.stop_gradient(value) + (dot - ops.stop_gradient(dot))


def _exact_sum_keyed(u: Any, c_flag: Any, w_flag: Any, margin: float) -> Any:
    """``L_sum`` and its all-pairs gradient from one float64 ``top_k``; no gathers, no tie fix.

    The sort key is ``v`` in float64 with the wrong flag in the bits below float32 precision: a wrong
    instance's key is moved up by less than half a float32 ulp, so the order of distinct float32 values is
    kept and, among equal ``v``, correct instances sort before wrong ones (a tied pair is not active).
    Sorted ``v`` (the key rounded to float32) and the flag (key != that value) come back from the keys.
    Instances outside the mask get ``+inf`` and sort last.

    In sorted order the gradient is ``coef = +cnt_k`` for a correct ``k`` (wrong instances before it) and
    ``-#{correct after j}`` for a wrong ``j``; as the loss is linear in ``v`` between kinks,
    ``L_sum = sum_i v_i coef_i``. ``coef`` goes back to the input order with one ``segment_sum``.
    """
    n = ops.shape(u)[0]
    v64 = ops.cast(u + margin * c_flag, "float64")
    bump = ops.cast(w_flag, "float64") * (ops.abs(v64) * 2.0**-30 + 2.0**-200)
    neg_key = ops.where((c_flag + w_flag) > 0, -(v64 + bump), float("-inf"))
    neg_sorted, order = ops.top_k(neg_key, k=n)  # descending -key: ascending key
    finite = neg_sorted > float("-inf")
    sv = ops.where(finite, ops.cast(ops.cast(neg_sorted, "float32"), "float64"), 0.0)  # -v, sorted
    is_w = ops.logical_and(finite, ops.not_equal(neg_sorted, sv))
    sw = ops.cast(is_w, "float32")  # flags and counts are exact in float32 (n < 2**24)
    sc = ops.cast(ops.logical_and(finite, ops.logical_not(is_w)), "float32")
    wrong_before = ops.cumsum(sw) - sw  # strictly smaller v: tied wrong instances sort after
    coef_sorted = ops.where(is_w, ops.cumsum(sc) - ops.sum(sc), sc * wrong_before)
    value = -ops.sum(sv * ops.cast(coef_sorted, "float64"))
    coef = ops.segment_sum(coef_sorted, order, num_segments=n)
    return _with_gradient(value, u, coef)


def _exact_sum_groups(u: Any, c_flag: Any, w_flag: Any, margin: float) -> Any:
    """``L_sum`` for backends without float64 (JAX x32): ``argsort`` of float32 ``v``, ties fixed by groups.

    Tied wrong instances may sort on either side of a correct ``k``; ``cnt_k`` and ``S_k`` are read at the
    first position of ``v_k``'s group of equal values (a ``segment_min`` over the groups).
    """
    n = ops.shape(u)[0]
    v = u + margin * c_flag
    order = ops.argsort(v)
    sv = ops.take(v, order)
    sc = ops.take(c_flag, order)
    sw = ops.take(w_flag, order)
    swu = sw * sv  # a wrong instance's v is its u
    wrong_before = ops.cumsum(sw) - sw
    wrong_u_before = ops.cumsum(swu) - swu
    new_group = ops.concatenate([ops.ones((1,), dtype="bool"), ops.not_equal(sv[1:], sv[:-1])])
    group = ops.cumsum(ops.cast(new_group, "int32")) - 1
    first = ops.segment_min(ops.arange(n, dtype="int32"), group, num_segments=n)
    start = ops.stop_gradient(ops.take(first, group))
    cnt = ops.stop_gradient(ops.take(wrong_before, start))
    s = ops.take(wrong_u_before, start)
    return ops.sum(sc * (cnt * sv - s))


def _exact_sum(u: Any, c_flag: Any, w_flag: Any, margin: float) -> Any:
    """``L_sum`` over all pairs; ``u`` (n,) float32, flags (n,) 0/1 float32 (mask already applied)."""
    if _FLOAT64_KEYS and _has_float64():
        return _exact_sum_keyed(u, c_flag, w_flag, margin)
    return _exact_sum_groups(u, c_flag, w_flag, margin)


def _sampled_sums(u: Any, c_flag: Any, w_flag: Any, margin: float, n_wrong: int, n_correct: int, seed: Any):
    """The authors' estimator with static shapes: random keys, the ``n`` smallest per side by ``top_k``.

    Every instance of a side gets a uniform key (others get 2); the ``n_wrong`` (``n_correct``) smallest keys
    are a uniform sample without replacement, or the whole side when it has fewer (the padding entries are
    invalid and weigh 0). Returns the sum over sampled pairs, their number, and ``|W| |C|``.
    """
    keys = keras.random.uniform(ops.shape(u), seed=seed)  # one draw: the two sides are disjoint

    def pick(flag: Any, k: int) -> tuple[Any, Any]:
        key = ops.concatenate([ops.where(flag > 0, keys, 2.0), ops.full((k,), 2.0)])
        values = ops.concatenate([u, ops.zeros((k,), dtype=u.dtype)])
        neg_key, idx = ops.top_k(-key, k=k)
        return ops.take(values, idx), ops.cast(neg_key > -1.5, u.dtype)

    uw, valid_w = pick(w_flag, n_wrong)
    uc, valid_c = pick(c_flag, n_correct)
    d = uc[None, :] - uw[:, None] + margin
    weights = valid_w[:, None] * valid_c[None, :]
    total = ops.sum(ops.where(d > 0, d, 0.0) * weights)  # where: zero gradient at ties
    return total, ops.sum(valid_w) * ops.sum(valid_c), ops.sum(w_flag) * ops.sum(c_flag)


def _margin_loss(u, correct, mask, margin, reduction, pairs, n_wrong, n_correct, seed):
    u = ops.reshape(ops.cast(u, "float32"), (-1,))
    c = ops.reshape(ops.cast(correct, "bool"), (-1,))
    keep = None if mask is None else ops.reshape(ops.cast(mask, "bool"), (-1,))
    c_flag = ops.cast(c if keep is None else ops.logical_and(c, keep), "float32")
    w_bool = ops.logical_not(c) if keep is None else ops.logical_and(ops.logical_not(c), keep)
    w_flag = ops.cast(w_bool, "float32")
    if pairs == "sampled":
        total, n_pairs, all_pairs = _sampled_sums(u, c_flag, w_flag, margin, n_wrong, n_correct, seed)
        safe = ops.maximum(n_pairs, 1.0)
        return total / safe if reduction == "mean" else total * (all_pairs / safe)
    total = _exact_sum(u, c_flag, w_flag, margin)
    if reduction == "sum":
        return ops.cast(total, "float32")
    n_pairs = ops.cast(ops.sum(w_flag), total.dtype) * ops.cast(ops.sum(c_flag), total.dtype)
    return ops.cast(total / ops.maximum(n_pairs, 1.0), "float32")


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
    seed: Any = None,
    mask: Any = None,
) -> Any:
    """Margin ranking loss between every wrong and every correct instance, with ``keras.ops``.

    Same definition, options and argument errors as :func:`selectivekit.uncertainty_margin_loss` (lower
    is better). ``uncertainty`` is computed in float32; ``correct`` and ``mask`` are boolean (or 0/1).
    ``seed`` (``pairs="sampled"``): an int, a ``keras.random.SeedGenerator`` or None. Static shapes only, so
    it runs inside ``tf.function(jit_compile=True)`` and ``jax.jit``.

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
    margin, reduction, pairs, n_wrong, n_correct = check_loss_options(
        margin, reduction, pairs, n_wrong, n_correct
    )
    u = ops.convert_to_tensor(uncertainty)
    correct = ops.convert_to_tensor(correct)
    _check_same_static_shape("uncertainty", u, "correct", correct)
    if mask is not None:
        mask = ops.convert_to_tensor(mask)
        _check_same_static_shape("uncertainty", u, "mask", mask)
    return _margin_loss(u, correct, mask, margin, reduction, pairs, n_wrong, n_correct, seed)


def _same_shape(a: tuple, b: tuple) -> bool:
    """Static shapes that can match (``None`` is an unknown dimension)."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def _check_same_static_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    sa, sb = tuple(a.shape), tuple(b.shape)
    if not _same_shape(sa, sb):
        msg = f"`{name_b}` must have the same shape as `{name_a}` {sa}, got {sb}."
        raise ValueError(msg)


def _uncertainty(y_pred: Any, axis: int, from_logits: bool) -> Any:
    """``1 - max softmax``; from logits without cancellation (keras.ops twin of the core function)."""
    if from_logits:
        return uncertainty_from_logits(y_pred, axis=axis)
    return 1.0 - ops.max(ops.cast(y_pred, "float32"), axis=axis)


def _labels_and_mask(y_true: Any, y_pred: Any, axis: int, ignore_class: int | None):
    """Class indices with the class axis removed, the mask of instances that count, and one-hot or not."""
    rank = len(y_pred.shape)
    if rank < 2:
        msg = f"`y_pred` must have a batch and a class axis, got shape {tuple(y_pred.shape)}."
        raise ValueError(msg)
    axis = axis % rank
    pred_shape = tuple(y_pred.shape)
    true_shape = tuple(y_true.shape)
    spatial = pred_shape[:axis] + pred_shape[axis + 1 :]

    if _same_shape(true_shape, pred_shape) and pred_shape[axis] not in (None, 1):
        labels = ops.argmax(y_true, axis=axis)
        return labels, ops.any(ops.not_equal(y_true, 0), axis=axis), True
    if len(true_shape) == rank and true_shape[axis] == 1:
        y_true = ops.squeeze(y_true, axis=axis)
        true_shape = tuple(y_true.shape)
    if not _same_shape(true_shape, spatial):
        msg = (
            f"`y_true` must have shape {spatial} or with a 1 at the class axis (class indices), or "
            f"{pred_shape} (one-hot), got {tuple(true_shape)}."
        )
        raise ValueError(msg)
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
    margin : float, default 0.1
    reduction : {"mean", "sum"}, default "mean"
        Over the pairs (as :func:`selectivekit.uncertainty_margin_loss`). The loss is one scalar per batch,
        so Keras' own reduction of it is the identity.
    pairs : {"exact", "sampled"}, default "exact"
    n_wrong, n_correct : int, default 300 and 6600
    seed : int or None
        For ``pairs="sampled"``: seeds the loss's ``keras.random.SeedGenerator``.
    from_logits : bool, default True
        ``y_pred`` holds logits (``u`` computed without cancellation) or probabilities.
    axis : int, default -1
        The class axis of ``y_pred`` (channels-last).
    ignore_class : int or None
        Label value of instances that take no part (as Keras' sparse cross-entropy).
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
        margin: float = 0.1,
        *,
        reduction: str = "mean",
        pairs: str = "exact",
        n_wrong: int = 300,
        n_correct: int = 6600,
        seed: int | None = None,
        from_logits: bool = True,
        axis: int = -1,
        ignore_class: int | None = None,
        name: str = "uncertainty_margin_loss",
        dtype: Any = None,
    ) -> None:
        margin, reduction, pairs, n_wrong, n_correct = check_loss_options(
            margin, reduction, pairs, n_wrong, n_correct
        )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin, self.pairs, self.n_wrong, self.n_correct = margin, pairs, n_wrong, n_correct
        self.seed = _check_int(seed, "seed", allow_none=True)
        self.from_logits = bool(from_logits)
        self.axis = _check_int(axis, "axis")
        self.ignore_class = _check_int(ignore_class, "ignore_class", allow_none=True)
        self._seed_generator = keras.random.SeedGenerator(seed) if pairs == "sampled" else None

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels, mask, _ = _labels_and_mask(y_true, y_pred, self.axis, self.ignore_class)
        u = _uncertainty(y_pred, self.axis, self.from_logits)
        correct = ops.equal(ops.cast(ops.argmax(y_pred, axis=self.axis), "int32"), ops.cast(labels, "int32"))
        return _margin_loss(
            u,
            correct,
            mask,
            self.margin,
            self.reduction,
            self.pairs,
            self.n_wrong,
            self.n_correct,
            self._seed_generator,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            margin=self.margin,
            pairs=self.pairs,
            n_wrong=self.n_wrong,
            n_correct=self.n_correct,
            seed=self.seed,
            from_logits=self.from_logits,
            axis=self.axis,
            ignore_class=self.ignore_class,
        )
        return config


@keras.saving.register_keras_serializable(package="selectivekit")
class UncertaintyAwareLoss(keras.losses.Loss):
    """The paper's objective ``L = L_seg + weight * L_unc`` (eq. 3), for ``model.compile(loss=...)``.

    Parameters
    ----------
    seg_loss : keras.losses.Loss or callable ``(y_true, y_pred) -> loss``, optional
        Default: sparse categorical cross-entropy (one-hot ``y_true``: categorical), averaged over the
        instances that are not ``ignore_class``, from logits unless ``from_logits=False``.
    weight : float, default 2000.0
        As the authors' code (the paper's ``lambda = 2`` on a loss scaled by 1000).
    margin, reduction, pairs, n_wrong, n_correct, seed, from_logits, axis, ignore_class
        As in :class:`UncertaintyMarginLoss`.

    Examples
    --------
    >>> import numpy as np
    >>> logits = np.array([[[0.5, 0.0], [0.0, 1.0], [1.0, 0.0]]], dtype="float32")
    >>> labels = np.array([[0, 0, 1]])
    >>> total = UncertaintyAwareLoss(weight=2000.0)(labels, logits)
    >>> unc = UncertaintyMarginLoss()(labels, logits)
    >>> bool(total > 2000.0 * unc)  # plus the cross-entropy
    True
    """

    def __init__(
        self,
        seg_loss: Any = None,
        weight: float = 2000.0,
        *,
        margin: float = 0.1,
        reduction: str = "mean",
        pairs: str = "exact",
        n_wrong: int = 300,
        n_correct: int = 6600,
        seed: int | None = None,
        from_logits: bool = True,
        axis: int = -1,
        ignore_class: int | None = None,
        name: str = "uncertainty_aware_loss",
        dtype: Any = None,
    ) -> None:
        if seg_loss is not None and not callable(seg_loss):
            msg = f"`seg_loss` must be callable (y_true, y_pred) -> loss, got {type(seg_loss).__name__}."
            raise TypeError(msg)
        self.unc_loss = UncertaintyMarginLoss(
            margin,
            reduction=reduction,
            pairs=pairs,
            n_wrong=n_wrong,
            n_correct=n_correct,
            seed=seed,
            from_logits=from_logits,
            axis=axis,
            ignore_class=ignore_class,
        )
        super().__init__(
            name=name, reduction=check_choice(reduction, "reduction", ("mean", "sum")), dtype=dtype
        )
        self.seg_loss = seg_loss
        self.weight = check_margin(weight, "weight")

    def _default_seg(self, y_true: Any, y_pred: Any) -> Any:
        unc = self.unc_loss
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
        l_unc = self.unc_loss.call(y_true, y_pred)
        if self.seg_loss is None:
            l_seg = self._default_seg(y_true, y_pred)
        else:
            l_seg = self.seg_loss(y_true, y_pred)
        return ops.cast(l_seg, "float32") + self.weight * l_unc

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        unc = self.unc_loss.get_config()
        for key in ("name", "reduction", "dtype"):
            unc.pop(key, None)
        config.update(unc)
        config.update(
            weight=self.weight,
            seg_loss=None if self.seg_loss is None else keras.saving.serialize_keras_object(self.seg_loss),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UncertaintyAwareLoss:
        config = dict(config)
        seg = config.pop("seg_loss", None)
        if seg is not None:
            seg = keras.saving.deserialize_keras_object(seg)
        return cls(seg_loss=seg, **config)

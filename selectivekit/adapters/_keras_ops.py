"""The Keras 3 restatements of the core formulas, in ``keras.ops`` (they run inside compiled graphs).

Only restatements live here (no API classes); ``tests/adapters/test_kernels.py`` checks each against the
core on the same inputs, values and gradients: the margin loss (exact and sampled), the two uncertainties
from model outputs, the grid cell of a value and the AURC step rule over grid cells. The split int32 counts of
the metric state (``add_split_counts``) are plain integer arithmetic, tested with the metric.

The exact kernel has static shapes and no ``searchsorted`` (XLA lowers it to a dense comparison of every
query with every element). It is the formula of
[`selectivekit.loss.uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss] written
along one sort of ``v = u + margin * correct``: walking up the sorted ``v``, the cumulative number of wrong
instances and the cumulative sum of their ``u`` give, at every correct ``k``, ``cnt_k`` and ``S_k`` and its
term ``cnt_k v_k - S_k``. Wrong instances tied with ``v_k`` add ``max(0, 0) = 0`` to the value but must not
count as active (zero gradient). Where the backend has float64 the sort key carries the wrong flag below
float32 precision, so ties sort correct-first and one ``top_k`` gives the sorted values and flags; the
gradient (``+cnt_k`` for correct ``k``, ``-#{k : v_k > u_j}`` for wrong ``j``: the all-pairs one) is formed in
sorted order and moved back with one ``segment_sum``. Without float64 (JAX x32) an ``argsort`` of float32
``v`` is used and the counts are read at the first position of each group of equal ``v``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from ..loss import MarginLossOptions

__all__ = [
    "COUNT_BITS",
    "FLOAT64_KEYS",
    "add_split_counts",
    "bfloat16_cells",
    "exact_sum",
    "has_float64",
    "margin_loss",
    "max_softmax_uncertainty",
    "sampled_sums",
    "split_count_value",
    "step_area_of_cells",
    "uncertainty",
    "uncertainty_from_logits",
]


def _non_max_sum(scores: Any, terms: Any, axis: int) -> Any:
    """Sum of ``terms`` over the class axis, without the term of the first arg-max of ``scores``.

    The one formula behind both uncertainties (as in the core): summing the non-maximal terms instead of
    forming ``1 - max`` keeps saturated voxels distinct and nonzero in float32.
    """
    k = ops.shape(scores)[axis]
    is_max = ops.cast(ops.one_hot(ops.argmax(scores, axis=axis), k, axis=axis), "bool")
    return ops.sum(ops.where(is_max, ops.zeros_like(terms), terms), axis=axis)


def uncertainty_from_logits(logits: Any, axis: int = -1) -> Any:
    """``1 - max softmax`` without cancellation:
    [`selectivekit.uncertainty_from_logits`][selectivekit.uncertainty_from_logits] in keras.ops."""
    logits = ops.cast(logits, "float32")
    terms = ops.exp(logits - ops.max(logits, axis=axis, keepdims=True))
    r = _non_max_sum(logits, terms, axis)
    return r / (1.0 + r)


def max_softmax_uncertainty(probs: Any, axis: int = -1) -> Any:
    """``1 - max p`` as the sum of the non-max probabilities:
    [`selectivekit.max_softmax_uncertainty`][selectivekit.max_softmax_uncertainty]."""
    probs = ops.cast(probs, "float32")
    return _non_max_sum(probs, probs, axis)


def sigmoid_uncertainty(scores: Any, from_logits: bool) -> Any:
    """``1 - max(p, 1 - p)`` of sigmoid outputs, elementwise:
    [`selectivekit.sigmoid_uncertainty_from_logits`][selectivekit.sigmoid_uncertainty_from_logits] in
    keras.ops (from logits ``exp(-|z|) / (1 + exp(-|z|))``, without cancellation; from probabilities
    ``min(p, 1 - p)``)."""
    scores = ops.cast(scores, "float32")
    if from_logits:
        r = ops.exp(-ops.abs(scores))
        return r / (1.0 + r)
    return ops.minimum(scores, 1.0 - scores)


def uncertainty(scores: Any, axis: int, from_logits: bool) -> Any:
    """``1 - max softmax`` from logits or probabilities, without cancellation (the core's two formulas)."""
    if from_logits:
        return uncertainty_from_logits(scores, axis=axis)
    return max_softmax_uncertainty(scores, axis=axis)


def bitcast_int32(x: Any) -> Any:
    if keras.backend.backend() == "tensorflow":
        # keras.ops.view checks the last dimension in Python, which fails on symbolic (unknown) shapes
        import tensorflow as tf

        return tf.bitcast(x, tf.int32)
    return ops.view(x, "int32")


def bfloat16_cells(u: Any) -> Any:
    """Grid cell of float32 values: the rule of
    [`selectivekit.streaming.grid_bins`][selectivekit.streaming.grid_bins] in keras.ops."""
    bits = bitcast_int32(ops.cast(u, "float32") + 0.0)  # + 0.0 folds -0.0 into +0.0
    high = ops.right_shift(ops.bitwise_and(bits, 0x7FFFFFFF), 16)
    return ops.where(bits >= 0, 32768 + high, 32767 - high)


def cumsum(x: Any) -> Any:
    """``ops.cumsum`` of a 1-d tensor in its own dtype (Keras' PyTorch backend returns float64 as float32)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cumsum(x, dim=0)
    return ops.cumsum(x)


def step_area_of_cells(count: Any, errors: Any) -> Any:
    """AURC over the occupied cells:
    [`selectivekit.risk_coverage.step_area`][selectivekit.risk_coverage.step_area] of the grid curve.

    ``(c_g - c_{g-1}) = count_g / N`` and ``risk_g = errors(<= g) / n(<= g)``, summed over cells with a
    nonzero count; static shapes (every cell is kept, the empty ones weigh 0).
    """
    total = ops.sum(count)
    n_total = ops.where(total > 0, total, ops.ones_like(total))
    cum_count = cumsum(count)
    cum_errors = cumsum(errors)
    occupied = count > 0
    risk = cum_errors / ops.where(occupied, cum_count, ops.ones_like(cum_count))
    return ops.sum(ops.where(occupied, count / n_total * risk, ops.zeros_like(risk)))


#: Bits of the low part of a split count: ``count = high * 2**COUNT_BITS + low``, ``low < 2**COUNT_BITS``.
COUNT_BITS = 20


def add_split_counts(low: Any, high: Any, batch: Any) -> tuple[Any, Any]:
    """``count + batch`` on int32 split counts (``count = high * 2**COUNT_BITS + low``), exactly.

    The int32 pair is exact up to ``2**(31 + COUNT_BITS)`` on every backend, JAX without 64-bit mode
    included (no int64 or float64 there; a float32 count stops growing at ``2**24``). ``batch`` (int32,
    non-negative) must stay below ``2**31 - 2**COUNT_BITS`` so that ``low + batch`` does not overflow.
    """
    total = low + batch
    return ops.bitwise_and(total, 2**COUNT_BITS - 1), high + ops.right_shift(total, COUNT_BITS)


def split_count_value(low: Any, high: Any, dtype: str) -> Any:
    """The counts ``high * 2**COUNT_BITS + low`` as floats of ``dtype`` (exact in float64 below 2**53)."""
    return ops.cast(high, dtype) * float(2**COUNT_BITS) + ops.cast(low, dtype)


#: Use the float64 sort key where the backend has float64 (tests set it to False for the other kernel).
FLOAT64_KEYS = True


def has_float64() -> bool:
    """Whether the backend computes in float64 (JAX only with x64 enabled)."""
    if keras.backend.backend() == "jax":
        import jax

        return bool(jax.config.read("jax_enable_x64"))
    return True


def with_gradient(value: Any, u: Any, coef: Any) -> Any:
    """``value`` in the forward pass, ``coef`` (constant, shape of ``u``) as its gradient in ``u``.

    ``dot - stop_gradient(dot)`` is exactly 0 (the same tensor minus itself), so the value is unchanged on
    every backend, and its gradient is ``coef``.
    """
    dot = ops.sum(ops.cast(u, value.dtype) * ops.cast(ops.stop_gradient(coef), value.dtype))
    return ops.stop_gradient(value) + (dot - ops.stop_gradient(dot))


def exact_sum_keyed(u: Any, c_flag: Any, w_flag: Any, margin: float) -> Any:
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
    return with_gradient(value, u, coef)


def exact_sum_groups(u: Any, c_flag: Any, w_flag: Any, margin: float) -> Any:
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


def exact_sum(u: Any, c_flag: Any, w_flag: Any, margin: float) -> Any:
    """``L_sum`` over all pairs; ``u`` (n,) float32, flags (n,) 0/1 float32 (mask already applied)."""
    if FLOAT64_KEYS and has_float64():
        return exact_sum_keyed(u, c_flag, w_flag, margin)
    return exact_sum_groups(u, c_flag, w_flag, margin)


def sampled_sums(u: Any, c_flag: Any, w_flag: Any, keys: Any, options: MarginLossOptions):
    """The authors' estimator with static shapes: given uniform ``keys``, the ``n`` smallest per side.

    Every instance of a side keeps its key in [0, 1) (others get 2); the ``n_wrong`` (``n_correct``) smallest
    keys are a uniform sample without replacement, or the whole side when it has fewer (the padding entries
    are invalid and weigh 0). Returns the sum over sampled pairs, their number, and ``|W| |C|``.

    Not the core's draw ([`selectivekit.loss.sample_indices`][selectivekit.loss.sample_indices]): inside a
    compiled graph the sizes of the
    two sides are not known on the host, and a NumPy draw would run once, at tracing, and then repeat at
    every step; the keys come from ``keras.random`` (the backend's counter-based generator, which cannot
    reproduce NumPy's stream). Given the keys, the value is the core's exact loss of the sampled instances.
    """
    n_wrong, n_correct, margin = options.n_wrong, options.n_correct, options.margin

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


def loss_flags(u: Any, correct: Any, mask: Any) -> tuple[Any, Any, Any]:
    """Flat float32 ``u`` and 0/1 float32 flags of the correct and wrong instances (0 outside ``mask``)."""
    u = ops.reshape(ops.cast(u, "float32"), (-1,))
    c = ops.reshape(ops.cast(correct, "bool"), (-1,))
    keep = None if mask is None else ops.reshape(ops.cast(mask, "bool"), (-1,))
    c_flag = ops.cast(c if keep is None else ops.logical_and(c, keep), "float32")
    w_bool = ops.logical_not(c) if keep is None else ops.logical_and(ops.logical_not(c), keep)
    return u, c_flag, ops.cast(w_bool, "float32")


def margin_loss(u: Any, correct: Any, mask: Any, options: MarginLossOptions, seed: Any) -> Any:
    """The loss (float32 scalar) of ``u``, boolean ``correct`` and optional ``mask``, any shape."""
    u, c_flag, w_flag = loss_flags(u, correct, mask)
    if options.pairs == "sampled":
        keys = keras.random.uniform(ops.shape(u), seed=seed)  # one draw: the two sides are disjoint
        total, n_pairs, all_pairs = sampled_sums(u, c_flag, w_flag, keys, options)
        safe = ops.maximum(n_pairs, 1.0)
        return total / safe if options.reduction == "mean" else total * (all_pairs / safe)
    total = exact_sum(u, c_flag, w_flag, options.margin)
    if options.reduction == "sum":
        return ops.cast(total, "float32")
    n_pairs = ops.cast(ops.sum(w_flag), total.dtype) * ops.cast(ops.sum(c_flag), total.dtype)
    return ops.cast(total / ops.maximum(n_pairs, 1.0), "float32")


def binary_push(
    u: Any, scores: Any, pred: Any, labels: Any, correct: Any, axis: int, from_logits: bool
) -> Any:
    """``u`` with its value unchanged and, on wrong voxels, the gradient of ``p_t / (p_m + p_t)``: the
    Keras restatement of `selectivekit.adapters._torch_kernels.binary_push` (``scores`` are logits
    or probabilities)."""
    k = ops.shape(scores)[axis]
    at_pred = ops.sum(scores * ops.one_hot(pred, k, axis=axis, dtype=scores.dtype), axis=axis)
    at_label = ops.sum(
        scores * ops.one_hot(ops.cast(labels, "int32"), k, axis=axis, dtype=scores.dtype), axis=axis
    )
    if from_logits:
        b = ops.sigmoid(at_label - at_pred)
    else:
        b = at_label / ops.maximum(at_label + at_pred, 1e-30)
    b = ops.cast(b, u.dtype)
    return ops.where(correct, u, ops.stop_gradient(u) + (b - ops.stop_gradient(b)))

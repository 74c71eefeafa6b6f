"""The uncertainty-aware margin ranking loss (SPEC section 6), exact in O(n log n), in the array API.

For one batch with wrong instances ``W`` and correct instances ``C``::

    L_sum  = sum_{j in W, k in C} max(u_k - u_j + m, 0)
    L_mean = L_sum / (|W| * |C|)

The exact path never materialises pairs. With ``v_k = u_k + m`` for a correct instance, the pairs of ``k``
that are active (strictly positive) are the wrong ``j`` with ``u_j < v_k``, and their sum is
``cnt_k * v_k - S_k`` where ``cnt_k = #{j in W : u_j < v_k}`` and ``S_k`` is the sum of those ``u_j``. Sorting
the wrong side once (static shape: the other instances are set to ``+inf`` and sort to the end) and one
``searchsorted`` per correct instance give ``cnt_k``; ``S_k`` is a prefix sum of the sorted wrong side.

The gradient follows by automatic differentiation of that expression and equals the all-pairs one: each
active pair adds ``+1`` to its correct instance and ``-1`` to its wrong instance. Exactly tied pairs
(``u_k + m == u_j``) contribute ``max(0, 0) = 0`` and are *not* active (``searchsorted(side="left")`` counts
strictly smaller values), so they get a zero gradient, as in the all-pairs definition with ``relu'(0) = 0``.

The framework adapters (:mod:`selectivekit.adapters.torch`, :mod:`selectivekit.adapters.keras`) have their
own fast kernels of the same formula.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from ._validation import (
    as_array,
    check_choice,
    check_correct,
    check_finite_real,
    check_margin,
    check_positive_int,
    check_same_shape,
    flatten,
    get_namespace,
)

__all__ = ["uncertainty_margin_loss"]

_REDUCTIONS = ("mean", "sum")
_PAIRS = ("exact", "sampled")


def check_loss_options(
    margin: Any, reduction: Any, pairs: Any, n_wrong: Any, n_correct: Any
) -> tuple[float, str, str, int, int]:
    """The scalar options of every variant of the loss (core, PyTorch, Keras)."""
    return (
        check_margin(margin),
        check_choice(reduction, "reduction", _REDUCTIONS),
        check_choice(pairs, "pairs", _PAIRS),
        check_positive_int(n_wrong, "n_wrong"),
        check_positive_int(n_correct, "n_correct"),
    )


def working_dtype(x: Any, xp: Any) -> Any:
    """float64 stays float64; everything else (half, bfloat16, float32, integers) is computed in float32."""
    if xp.isdtype(x.dtype, "real floating") and xp.finfo(x.dtype).bits >= 64:
        return x.dtype
    return xp.float32


def _check_static(u: Any, correct: Any, mask: Any, xp: Any) -> None:
    """Checks that need no value from the arrays: dtypes, shapes, emptiness."""
    if xp.isdtype(u.dtype, "bool") or not xp.isdtype(u.dtype, ("real floating", "integral")):
        msg = f"`uncertainty` must hold real numbers (float or int), got dtype {u.dtype}."
        raise TypeError(msg)
    if math.prod(u.shape) == 0:
        msg = f"`uncertainty` is empty (shape {tuple(u.shape)}); at least one value is needed."
        raise ValueError(msg)
    check_same_shape("uncertainty", u, "correct", correct)
    if not xp.isdtype(correct.dtype, ("bool", "real floating", "integral")):
        msg = f"`correct` must be boolean or 0/1, got dtype {correct.dtype}."
        raise TypeError(msg)
    if mask is not None:
        if not xp.isdtype(mask.dtype, "bool"):
            msg = f"`mask` must be a boolean array, got dtype {mask.dtype}."
            raise TypeError(msg)
        check_same_shape("uncertainty", u, "mask", mask)


def validate_loss_inputs(u: Any, correct: Any, mask: Any, xp: Any, *, read: bool = True) -> None:
    """SPEC section 7 for the loss, with at most one device-to-host read.

    The value checks (NaN/inf in ``u``, ``correct`` not 0/1) are combined into one boolean that is read
    once; only when it is true are the shared checks of :mod:`selectivekit._validation` run to raise their
    detailed message. ``read=False`` does only the static checks (no read at all).
    """
    _check_static(u, correct, mask, xp)
    if not read:
        return
    bad = None
    if xp.isdtype(u.dtype, "real floating"):
        bad = xp.any(~xp.isfinite(u))
    if not xp.isdtype(correct.dtype, "bool"):
        bad_c = xp.any((correct != 0) & (correct != 1))
        bad = bad_c if bad is None else (bad | bad_c)
    if bad is not None and bool(bad):  # the single device-to-host read
        check_finite_real(u, "uncertainty", xp)
        check_correct(correct, u, xp)


def _device(x: Any) -> Any:
    return array_api_compat.device(x)


def _exact_sum(u: Any, is_c: Any, is_w: Any, margin: float, xp: Any) -> Any:
    """``L_sum`` over all pairs, static shapes: one sort, one searchsorted, one prefix sum."""
    dev = _device(u)
    inf = xp.asarray(math.inf, dtype=u.dtype, device=dev)
    zero = xp.asarray(0.0, dtype=u.dtype, device=dev)
    # the |W| wrong values first, then +inf; unstable: tied values are interchangeable here
    wrong_sorted = xp.sort(xp.where(is_w, u, inf), stable=False)
    prefix = xp.cumulative_sum(xp.where(xp.isfinite(wrong_sorted), wrong_sorted, zero), include_initial=True)
    v = u + margin
    # cnt_k = #{j in W : u_j < v_k}: strictly smaller, so tied pairs are not active.
    cnt = xp.searchsorted(wrong_sorted, v, side="left")
    per_correct = xp.astype(cnt, u.dtype) * v - xp.take(prefix, cnt)
    return xp.sum(xp.where(is_c, per_correct, zero))


def _sampled_pairs(
    u: Any, is_c: Any, is_w: Any, margin: float, n_wrong: int, n_correct: int, seed: Any, xp: Any
) -> tuple[Any, Any, Any]:
    """The authors' estimator: samples without replacement, then every pair between them.

    Returns the sum over the sampled pairs, the number of sampled pairs, and ``|W| * |C|`` (all 0-d arrays).
    """
    dev = _device(u)
    idx_w = xp.nonzero(is_w)[0]
    idx_c = xp.nonzero(is_c)[0]
    nw, nc = int(idx_w.shape[0]), int(idx_c.shape[0])
    zero = xp.sum(u * 0.0)  # keeps the graph: a zero gradient instead of none
    if nw == 0 or nc == 0:
        return zero, zero + 1.0, zero
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    pick_w = rng.choice(nw, size=min(nw, n_wrong), replace=False)
    pick_c = rng.choice(nc, size=min(nc, n_correct), replace=False)
    uw = xp.take(u, xp.take(idx_w, xp.asarray(pick_w, device=dev)))
    uc = xp.take(u, xp.take(idx_c, xp.asarray(pick_c, device=dev)))
    d = xp.reshape(uc, (1, -1)) - xp.reshape(uw, (-1, 1)) + margin
    total = xp.sum(xp.where(d > 0, d, xp.zeros_like(d)))  # where, not maximum: 0 gradient at ties
    n_pairs = zero + float(pick_w.shape[0] * pick_c.shape[0])
    return total, n_pairs, zero + float(nw) * float(nc)


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
    validate: bool = True,
    xp: Any = None,
) -> Any:
    """Margin ranking loss between every wrong and every correct instance (eq. 2 of Ding et al., 2020).

    Lower is better. ``L_sum = sum_{j in W, k in C} max(u_k - u_j + m, 0)`` where ``W``/``C`` are the wrong
    and correct instances: it is zero exactly when every wrong instance is at least ``m`` more uncertain
    than every correct one.

    Parameters
    ----------
    uncertainty : array of any shape
        Per-instance uncertainty ``u`` (higher = less confident), finite. Gradients flow into it on both
        sides. Half precision and integers are computed in float32, float64 in float64.
    correct : array of the same shape
        Boolean, or 0/1 numbers: whether the prediction is correct. A constant (no gradient).
    margin : float, default 0.1
        The margin ``m``, finite and ``>= 0``.
    reduction : {"mean", "sum"}, default "mean"
        ``"sum"`` is ``L_sum``; ``"mean"`` divides it by ``|W| * |C|`` (what the authors' code trained with).
    pairs : {"exact", "sampled"}, default "exact"
        ``"exact"``: every pair, in O(n log n) with static shapes (runs under ``jax.jit``). ``"sampled"``:
        the authors' estimator: ``n_wrong`` wrong and ``n_correct`` correct instances drawn without
        replacement (all of a side that has fewer), then every pair between the samples. With
        ``reduction="sum"`` the sampled sum is scaled by ``|W| |C| / (n_w n_c)``, an unbiased estimate of
        ``L_sum``; with ``"mean"`` it is the mean over the sampled pairs, unbiased for ``L_mean``.
    n_wrong, n_correct : int, default 300 and 6600
        Sample sizes of ``pairs="sampled"`` (the paper's values).
    seed : int, numpy.random.Generator or None
        Randomness of ``pairs="sampled"``: the same seed gives the same samples.
    mask : bool array of the same shape, optional
        The instances that take part (e.g. not padding or ``ignore_index``).
    validate : bool, default True
        Check for NaN/inf in ``uncertainty`` and a ``correct`` that is not 0/1, which reads one boolean
        back from the device. Pass ``False`` inside ``jax.jit`` (a traced value cannot be read) or to
        avoid the synchronisation; dtypes and shapes are always checked.
    xp : array namespace, optional
        Inferred from the inputs.

    Returns
    -------
    0-d array
        In the input's namespace and device, float32 (float64 for float64 input).

    Raises
    ------
    ValueError
        Shape mismatch, empty ``uncertainty``, NaN/inf in ``uncertainty``, ``correct`` not 0/1, negative or
        non-finite ``margin``, unknown ``reduction``/``pairs``, sample sizes ``< 1``.
    TypeError
        Non-numeric ``uncertainty``/``correct``, non-boolean ``mask``.

    Notes
    -----
    Let ``v_k = u_k + m`` for ``k`` in ``C``. The pairs of ``k`` that are active (``max`` strictly positive)
    are the ``j`` in ``W`` with ``u_j < v_k``; with ``cnt_k`` their number and ``S_k`` the sum of their
    ``u_j``, ``L_sum = sum_k (cnt_k v_k - S_k)``. The exact path sorts the wrong side once (the other
    instances as ``+inf``, so the shape is static), finds ``cnt_k`` with one ``searchsorted`` and ``S_k``
    from a prefix sum. Its gradient is the all-pairs one: ``+cnt_k`` for correct ``k``,
    ``-#{k : v_k > u_j}`` for wrong ``j`` (divided by ``|W| |C|`` for ``"mean"``). Exactly tied pairs
    (``u_k + m == u_j``) add 0 and are inactive (zero gradient). When ``W`` or ``C`` is empty (also when
    ``mask`` selects nothing) the loss is 0 with a zero gradient.

    Validation reads one boolean from the device (NaN/inf in ``u`` or a ``correct`` that is not 0/1); the
    sampled path also reads the sizes of ``W`` and ``C``, so it has data-dependent shapes.

    References
    ----------
    Ding, Y., Liu, J., Xu, X., Huang, M., Zhuang, J., Xiong, J., Shi, Y. "Uncertainty-Aware Training of
    Neural Networks for Selective Medical Image Segmentation." MIDL 2020.

    Examples
    --------
    >>> import numpy as np
    >>> u = np.array([0.25, 0.5, 0.75, 0.0])
    >>> correct = np.array([True, True, False, False])
    >>> # pairs (wrong, correct): (0.75, 0.25) -> 0, (0.75, 0.5) -> 0, (0.0, 0.25) -> 0.5, (0.0, 0.5) -> 0.75
    >>> float(uncertainty_margin_loss(u, correct, margin=0.25, reduction="sum"))
    1.25
    >>> float(uncertainty_margin_loss(u, correct, margin=0.25))  # mean over the 2 x 2 pairs
    0.3125
    >>> float(uncertainty_margin_loss(u, correct, pairs="sampled", n_wrong=1, n_correct=2, seed=0)) >= 0
    True
    """
    u = as_array(uncertainty, "uncertainty")
    correct = as_array(correct, "correct")
    if mask is not None:
        mask = as_array(mask, "mask")
    xp = get_namespace(u, correct, mask, xp=xp)
    margin, reduction, pairs, n_wrong, n_correct = check_loss_options(
        margin, reduction, pairs, n_wrong, n_correct
    )
    validate_loss_inputs(u, correct, mask, xp, read=validate)

    u = flatten(xp.astype(u, working_dtype(u, xp)), xp)
    is_c = flatten(correct if xp.isdtype(correct.dtype, "bool") else correct == 1, xp)
    is_w = ~is_c
    if mask is not None:
        keep = flatten(mask, xp)
        is_c = is_c & keep
        is_w = is_w & keep

    if pairs == "sampled":
        total, n_pairs, all_pairs = _sampled_pairs(u, is_c, is_w, margin, n_wrong, n_correct, seed, xp)
        if reduction == "mean":
            return total / n_pairs
        return total * (all_pairs / n_pairs)

    total = _exact_sum(u, is_c, is_w, margin, xp)
    if reduction == "sum":
        return total
    n_w = xp.sum(xp.astype(is_w, u.dtype))
    n_c = xp.sum(xp.astype(is_c, u.dtype))
    n_pairs = n_w * n_c
    return total / xp.where(n_pairs > 0, n_pairs, xp.ones_like(n_pairs))

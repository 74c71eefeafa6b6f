"""The uncertainty-aware margin ranking loss, exact in O(n log n), in the array API.

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

The options are one frozen, validated [`MarginLossOptions`][selectivekit.MarginLossOptions], shared by this
function and by the
PyTorch and Keras classes: an option is defined once, there. The framework adapters
(`selectivekit.adapters.torch`, `selectivekit.adapters.keras`) restate the same formula in their
own vocabulary (fast kernels); the sampled estimator draws its pairs with
[`sample_indices`][selectivekit.loss.sample_indices] here and in
PyTorch, so one seed gives the same pairs in both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._lib import (
    as_array,
    check_axis,
    check_choice,
    check_margin,
    check_positive_int,
    check_same_library,
    check_seed,
    device,
    float_dtype,
    get_namespace,
    is_traced,
    loss_instances,
    region_targets,
    stop_gradient,
    target_layout,
    validate_loss_inputs,
)
from .loss_setting import LOSS_SETTINGS, PUSHES
from .typing import Array, Namespace
from .uncertainty import sigmoid_uncertainty_from_logits, uncertainty_from_logits

__all__ = [
    "MarginLossOptions",
    "as_generator",
    "margin_loss_from_logits",
    "sample_indices",
    "uncertainty_margin_loss",
]

_REDUCTIONS = ("mean", "sum")
_PAIRS = ("exact", "sampled")
_PUSHES = PUSHES


def _option(default: Any, check: Any) -> Any:
    """A field of [`MarginLossOptions`][selectivekit.MarginLossOptions]: its default and the check that
    validates (and normalizes) it."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class MarginLossOptions:
    """The options of the uncertainty margin loss, validated once (frozen: safe to share and to hash).

    One object carries them to the core function
    [`uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss], to
    [`selectivekit.adapters.torch.UncertaintyMarginLoss`][selectivekit.adapters.torch.UncertaintyMarginLoss]
    and to
    [`selectivekit.adapters.keras.UncertaintyMarginLoss`][selectivekit.adapters.keras.UncertaintyMarginLoss],
    whose constructors take these names as
    keywords (or an ``options=`` object), and Keras' ``get_config`` writes them. A new option is one new
    field here, with its default and its check; every class accepts and serializes it from then on.

    Parameters
    ----------
    margin : float, default 0.1
        The margin ``m``, finite and ``>= 0``.
    reduction : {"mean", "sum"}, default "mean"
        ``"sum"``: ``L_sum``; ``"mean"``: ``L_sum / (|W| |C|)``.
    pairs : {"exact", "sampled"}, default "exact"
        Every pair, or the paper's sampled estimator.
    n_wrong, n_correct : int, default 300 and 6600
        Sample sizes of ``pairs="sampled"``, each ``>= 1``.
    push : {"binary", "uniform"}, default "binary"
        Where the gradient moves a *wrong* voxel when the loss computes ``u = 1 - max softmax`` from
        logits (the PyTorch and Keras classes and
        [`margin_loss_from_logits`][selectivekit.margin_loss_from_logits]; the value of the loss is the same
        either way, and [`uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss], which receives
        ``u`` itself, ignores this option). ``"uniform"`` is the plain gradient of ``u`` (the paper's): it
        lowers the predicted class and raises every other class in proportion to its probability.
        ``"binary"`` takes a wrong voxel's gradient from ``p_t / (p_m + p_t)``, the uncertainty between its
        predicted class ``m`` and its true class ``t``, so it moves probability from ``m`` to ``t`` only:
        a descent direction of the loss's value, not its gradient, that reads the true label. With two
        classes both are the same. The default is the one of
        [`LOSS_SETTINGS`][selectivekit.LOSS_SETTINGS] ``["default"]``; choose ``"uniform"`` to train with
        the paper's gradient.

    Examples
    --------
    >>> options = MarginLossOptions(margin=0.2, pairs="sampled")
    >>> options.replace(n_wrong=50).n_wrong, options.to_config()["margin"]
    (50, 0.2)
    >>> MarginLossOptions(reduction="none")
    Traceback (most recent call last):
    ...
    ValueError: `reduction` must be one of "mean", "sum", got 'none'.
    """

    margin: float = _option(0.1, check_margin)
    reduction: str = _option("mean", lambda value: check_choice(value, "reduction", _REDUCTIONS))
    pairs: str = _option("exact", lambda value: check_choice(value, "pairs", _PAIRS))
    n_wrong: int = _option(300, lambda value: check_positive_int(value, "n_wrong"))
    n_correct: int = _option(6600, lambda value: check_positive_int(value, "n_correct"))
    push: str = _option(LOSS_SETTINGS["default"].push, lambda value: check_choice(value, "push", _PUSHES))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](getattr(self, f.name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> MarginLossOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict[str, Any]:
        """The options as a plain dict (JSON-serializable; Keras configs)."""
        return {name: getattr(self, name) for name in self.names()}

    @classmethod
    def build(
        cls, options: MarginLossOptions | None = None, /, *args: Any, **keywords: Any
    ) -> MarginLossOptions:
        """Options from an ``options`` object or from the options one by one (positional or keywords).

        Every class and function that takes the options builds them here from what it received, so that an
        unknown name fails with one message that lists the valid ones. With ``options``, the keywords must
        be left at their defaults (a function's signature cannot tell a default from the same value given).
        """
        unknown = sorted(set(keywords) - set(cls.names()))
        if unknown:
            listed = ", ".join(f"`{n}`" for n in unknown)
            msg = f"unknown option(s) {listed}; the options are {', '.join(cls.names())}."
            raise TypeError(msg)
        if options is None:
            return cls(*args, **keywords)
        defaults = cls()
        changed = [*cls.names()[: len(args)]]
        changed += [name for name, value in keywords.items() if value != getattr(defaults, name)]
        if changed:
            msg = f"give the options as `options` or as keywords, not both; got `options` and {changed}."
            raise TypeError(msg)
        if not isinstance(options, cls):
            msg = f"`options` must be a {cls.__name__}, got {type(options).__name__}."
            raise TypeError(msg)
        return options


def _accumulation_dtype(xp: Namespace) -> Any:
    """float64, or ``None`` where the namespace has none (JAX without x64): then sums are compensated."""
    acc = float_dtype(xp)
    return None if acc == xp.float32 else acc


def _compensated_prefix_sum(x: Array, xp: Namespace) -> tuple[Array, Array]:
    """Prefix sums ``p`` of ``x`` (``include_initial``) and the correction ``c``: ``p + c`` is accurate.

    For a namespace without float64. Every step ``p[i] = p[i-1] + x[i]`` loses a rounding error; the
    error-free transformation ``TwoSum`` recovers it exactly, whatever order the scan adds in, and the
    corrections (tiny) are summed by a second scan. The error of ``p + c`` no longer grows with ``N`` (a
    plain float32 scan loses ~1e-5 relative at 1e6 terms). The corrections carry no gradient (their
    derivative is exactly zero), so autodiff sees the plain prefix sum.
    """
    p = xp.cumulative_sum(x, include_initial=True)
    prev, cur = p[:-1], p[1:]
    s = prev + x
    b = s - prev
    err = (prev - (s - b)) + (x - b)  # TwoSum: s + err == prev + x exactly
    step = (s - cur) + err  # what the scan's step lost: prev + x - cur
    return p, xp.cumulative_sum(step, include_initial=True)


def _exact_sum(u: Array, is_c: Array, is_w: Array, margin: float, xp: Namespace) -> Array:
    """``L_sum`` over all pairs, static shapes: one sort, one searchsorted, one prefix sum.

    The prefix sum and the sum over the correct instances are accumulated in float64 whatever the dtype
    of ``u`` (a float32 scan loses precision as ``N`` grows, and overflows where ``u`` is near float32's
    largest value), or compensated where the namespace has no float64. Returns the accumulation dtype.
    """
    dev = device(u)
    acc = _accumulation_dtype(xp)
    inf = xp.asarray(math.inf, dtype=u.dtype, device=dev)
    # the |W| wrong values first, then +inf; unstable: tied values are interchangeable here
    wrong_sorted = xp.sort(xp.where(is_w, u, inf), stable=False)
    finite_sorted = xp.where(xp.isfinite(wrong_sorted), wrong_sorted, xp.zeros_like(wrong_sorted))
    # cnt_k = #{j in W : u_j < v_k}: strictly smaller, so tied pairs are not active.
    cnt = xp.searchsorted(wrong_sorted, u + margin, side="left")
    if acc is None:
        prefix, correction = _compensated_prefix_sum(finite_sorted, xp)
        v = u + margin
        per_correct = (xp.astype(cnt, u.dtype) * v - xp.take(prefix, cnt)) - xp.take(correction, cnt)
    else:
        prefix = xp.cumulative_sum(xp.astype(finite_sorted, acc), include_initial=True)
        v = xp.astype(u, acc) + margin  # in acc: u + m may overflow float32 where u is near its maximum
        per_correct = xp.astype(cnt, acc) * v - xp.take(prefix, cnt)
    return xp.sum(xp.where(is_c, per_correct, xp.zeros_like(per_correct)))


def as_generator(seed: Any) -> np.random.Generator:
    """The NumPy generator of ``seed``: a ``numpy.random.Generator`` is used as is (and advanced); ``None``
    or an integer ``>= 0`` seeds a new one (``numpy.random.default_rng``). Anything else raises
    ``TypeError``/``ValueError`` naming ``seed``."""
    seed = check_seed(seed)
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample_indices(
    n_w: int, n_c: int, options: MarginLossOptions, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The draw of the sampled estimator: positions among the wrong and among the correct instances.

    ``min(n_w, options.n_wrong)`` of ``range(n_w)`` and then ``min(n_c, options.n_correct)`` of
    ``range(n_c)``, without replacement, from ``rng`` (NumPy). The core function and the PyTorch adapter
    both draw with this function on the host, so one seed gives the same pairs in both. (The Keras adapter
    cannot: its loss runs inside compiled graphs, where the sizes of ``W`` and ``C`` are not known on the
    host and a NumPy draw would happen once, at tracing, and repeat at every step; it draws with
    ``keras.random`` instead.)

    Examples
    --------
    >>> import numpy as np
    >>> w, c = sample_indices(5, 100, MarginLossOptions(n_wrong=10, n_correct=3), np.random.default_rng(0))
    >>> sorted(w.tolist()), c.shape
    ([0, 1, 2, 3, 4], (3,))
    """
    pick_w = rng.choice(n_w, size=min(n_w, options.n_wrong), replace=False)
    pick_c = rng.choice(n_c, size=min(n_c, options.n_correct), replace=False)
    return pick_w, pick_c


def _sampled_pairs(
    u: Array, is_c: Array, is_w: Array, options: MarginLossOptions, seed: Any, xp: Namespace
) -> tuple[Array, Array, Array]:
    """The authors' estimator: samples without replacement, then every pair between them.

    Returns the sum over the sampled pairs, the number of sampled pairs, and ``|W| * |C|`` (all 0-d arrays).
    """
    dev = device(u)
    idx_w = xp.nonzero(is_w)[0]
    idx_c = xp.nonzero(is_c)[0]
    nw, nc = int(idx_w.shape[0]), int(idx_c.shape[0])
    zero = xp.sum(u * 0.0)  # keeps the graph: a zero gradient instead of none
    if nw == 0 or nc == 0:
        return zero, zero + 1.0, zero
    pick_w, pick_c = sample_indices(nw, nc, options, as_generator(seed))
    uw = xp.take(u, xp.take(idx_w, xp.asarray(pick_w, device=dev)))
    uc = xp.take(u, xp.take(idx_c, xp.asarray(pick_c, device=dev)))
    d = xp.reshape(uc, (1, -1)) - xp.reshape(uw, (-1, 1)) + options.margin
    acc = _accumulation_dtype(xp)
    d = d if acc is None else xp.astype(d, acc)  # up to 2e6 pairs: sum them in float64
    total = xp.sum(xp.where(d > 0, d, xp.zeros_like(d)))  # where, not maximum: 0 gradient at ties
    zero = xp.astype(zero, total.dtype)
    n_pairs = zero + float(pick_w.shape[0] * pick_c.shape[0])
    return total, n_pairs, zero + float(nw) * float(nc)


def uncertainty_margin_loss(
    uncertainty: Array,
    correct: Array,
    /,
    *,
    margin: float = 0.1,
    reduction: str = "mean",
    pairs: str = "exact",
    n_wrong: int = 300,
    n_correct: int = 6600,
    push: str = LOSS_SETTINGS["default"].push,
    options: MarginLossOptions | None = None,
    seed: Any = None,
    mask: Array | None = None,
    validate: bool = True,
    xp: Namespace | None = None,
) -> Array:
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
    push : {"binary", "uniform"}, default "binary"
        Validated and kept in the options, but it changes nothing here: it acts where ``u`` is computed
        from logits ([`margin_loss_from_logits`][selectivekit.margin_loss_from_logits], the PyTorch and
        Keras classes), and this function receives ``u`` itself.
    options : MarginLossOptions, optional
        All of the above as one object (then leave those keywords at their defaults); also the way to
        reach options that have no keyword here.
    seed : int, numpy.random.Generator or None
        Randomness of ``pairs="sampled"``: the same seed gives the same samples (drawn by
        [`sample_indices`][selectivekit.loss.sample_indices], as in the PyTorch adapter).
    mask : bool array of the same shape, optional
        The instances that take part (e.g. not padding or ``ignore_index``).
    validate : bool, default True
        Check for NaN/inf in ``uncertainty`` and a ``correct`` that is not 0/1, which reads one boolean
        back from the device. Skipped on its own for JAX tracers (inside ``jax.jit`` or ``jax.grad`` a
        value cannot be read); pass ``False`` to avoid the synchronisation. Dtypes and shapes are always
        checked.
    xp : array namespace, optional
        Inferred from the inputs.

    Returns
    -------
    0-d array
        In the input's namespace and device, float32 (float64 for float64 input). The sums behind it are
        accumulated in float64 whatever the input dtype (so float32 input neither loses precision as the
        number of instances grows nor overflows in a prefix sum), and rounded once at the end. Where the
        namespace has no float64 (JAX without ``jax_enable_x64``) the prefix sums are compensated
        (TwoSum) float32 sums instead: as accurate, but a value beyond float32's range still overflows.

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
    if xp is None:
        check_same_library(correct, "correct", u)
        if mask is not None:
            check_same_library(mask, "mask", u)
    xp = get_namespace(u, correct, mask, xp=xp)
    options = MarginLossOptions.build(
        options,
        margin=margin,
        reduction=reduction,
        pairs=pairs,
        n_wrong=n_wrong,
        n_correct=n_correct,
        push=push,
    )
    validate_loss_inputs(u, correct, mask, xp, read=validate)
    seed = check_seed(seed)

    u, is_c, is_w = loss_instances(u, correct, mask, xp)

    if options.pairs == "sampled":
        total, n_pairs, all_pairs = _sampled_pairs(u, is_c, is_w, options, seed, xp)
        if options.reduction == "mean":
            return xp.astype(total / n_pairs, u.dtype)
        return xp.astype(total * (all_pairs / n_pairs), u.dtype)

    total = _exact_sum(u, is_c, is_w, options.margin, xp)
    if options.reduction == "mean":
        n_pairs = xp.sum(xp.astype(is_w, total.dtype)) * xp.sum(xp.astype(is_c, total.dtype))
        total = total / xp.where(n_pairs > 0, n_pairs, xp.ones_like(n_pairs))
    return xp.astype(total, u.dtype)  # the float64 (or compensated) sums, rounded once


def _binary_push(u: Array, logits: Array, labels: Array, correct: Array, axis: int, xp: Namespace) -> Array:
    """``u`` with its value and, on wrong instances, the gradient of ``p_t / (p_m + p_t)``.

    ``p_t / (p_m + p_t) = 1 / (1 + exp(z_m - z_t))`` for the top logit ``z_m`` and the true class's
    ``z_t <= z_m`` (no overflow: the exponent is ``>= 0`` and an infinite one gives 0). Straight through:
    ``sg(u) + (b - sg(b))`` has the value of ``u`` and the gradient of ``b``.
    """
    z = xp.moveaxis(logits, axis, -1)
    z = xp.astype(z, u.dtype)
    classes = xp.arange(z.shape[-1], device=device(z))
    is_true = xp.astype(labels, classes.dtype)[..., None] == classes
    z_t = xp.sum(xp.where(is_true, z, xp.zeros_like(z)), axis=-1)
    b = 1.0 / (1.0 + xp.exp(xp.max(z, axis=-1) - z_t))
    return xp.where(correct, u, stop_gradient(u, xp) + (b - stop_gradient(b, xp)))


def margin_loss_from_logits(
    logits: Array,
    labels: Array,
    /,
    *,
    axis: int,
    ignore_index: int | None = None,
    sigmoid: bool = False,
    margin: float = 0.1,
    reduction: str = "mean",
    pairs: str = "exact",
    n_wrong: int = 300,
    n_correct: int = 6600,
    push: str = LOSS_SETTINGS["default"].push,
    options: MarginLossOptions | None = None,
    seed: Any = None,
    validate: bool = True,
    xp: Namespace | None = None,
) -> Array:
    """The uncertainty loss of a segmentation or classification output, from logits (lower is better).

    [`uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss] of
    ``u = 1 - max softmax(logits)`` ([`uncertainty_from_logits`][selectivekit.uncertainty_from_logits],
    without cancellation) and ``correct = argmax(logits) == labels``: the one-liner of the PyTorch and
    Keras loss classes for any array-API library (JAX, NumPy, CuPy, PyTorch). It runs under ``jax.jit``
    and ``jax.grad`` with the exact pairs; the gradient flows into ``logits`` through ``u``.

    Parameters
    ----------
    logits : array of shape (..., K, ...)
        Unnormalised class scores, the class axis at ``axis``; half precision is computed in float32.
    labels : array
        Integer class indices of the shape of ``logits`` without the class axis (or with a 1 there), or
        one-hot (soft) labels of the shape of ``logits``, whose all-zero rows take no part.
    axis : int
        The class axis of ``logits``: required, since Flax and Keras put it last (``-1``) and PyTorch
        second (``1``).
    ignore_index : int, optional
        Label value of instances that take no part (padding, unlabelled voxels).
    sigmoid : bool, default False
        Region (multi-label sigmoid) outputs, as in BraTS' overlapping regions or nnU-Net's region
        training: every channel of ``logits`` is its own binary decision ``p > 0.5`` (``z > 0``), and
        ``labels`` has the shape of ``logits`` with a 0/1 target per channel (or ``ignore_index``). Each
        (channel, instance) pair is one instance of the loss: ``u = 1 - max(p, 1 - p)``
        ([`sigmoid_uncertainty_from_logits`][selectivekit.sigmoid_uncertainty_from_logits]), correct when
        ``(z > 0) == (label == 1)``, and the ranking runs over all wrong and correct pairs of every channel
        together, as one global threshold refers them in the evaluation. ``push`` changes nothing here
        (with two outcomes ``"binary"`` and ``"uniform"`` are the same).
    margin, reduction, pairs, n_wrong, n_correct, options, seed
        As in [`uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss].
    push : {"binary", "uniform"}, default "binary"
        Where the gradient moves a wrong instance (see
        [`MarginLossOptions`][selectivekit.MarginLossOptions]); the default is the one of
        [`LOSS_SETTINGS`][selectivekit.LOSS_SETTINGS] ``["default"]``. ``"binary"`` uses the library's
        stop-gradient (JAX, PyTorch); a library without automatic differentiation (NumPy, CuPy) has only
        the value, which is the same.
    validate : bool, default True
        Check that ``logits`` are finite and ``labels`` lie in ``[0, K)`` (or equal ``ignore_index``), in one
        read from the device; skipped for JAX tracers (inside ``jax.jit``, where such labels simply count
        as wrong). Dtypes and shapes are always checked.
    xp : array namespace, optional
        Inferred from the inputs.

    Returns
    -------
    0-d array
        In the input's namespace and device: float32 (float64 for float64 logits).

    Raises
    ------
    ValueError
        Shapes that do not match, labels outside ``[0, K)``, non-finite logits, bad options.
    TypeError
        Labels that are not integers (nor one-hot like ``logits``), a non-integer ``axis``.

    Examples
    --------
    >>> import numpy as np
    >>> logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])  # (4 instances, 2 classes)
    >>> labels = np.array([0, 0, 1, 1])  # instances 1 and 2 are wrong, 2 confidently
    >>> round(float(margin_loss_from_logits(logits, labels, axis=-1, reduction="sum")), 4)
    0.8105
    >>> # class 0 ignored: one wrong (u = 0.047) and one correct (u = 0.378) instance are left
    >>> round(float(margin_loss_from_logits(logits, labels, axis=-1, ignore_index=0, reduction="sum")), 4)
    0.4301
    >>> # two sigmoid regions (rows) of 2 voxels: one wrong decision (z = -3, target 1), confidently wrong
    >>> region_logits = np.array([[-3.0, 0.5], [2.0, -2.0]])
    >>> region_targets = np.array([[1, 1], [1, 0]])
    >>> round(float(margin_loss_from_logits(region_logits, region_targets, axis=0, sigmoid=True)), 4)
    0.2579
    """
    logits = as_array(logits, "logits")
    labels = as_array(labels, "labels")
    xp = get_namespace(logits, labels, xp=xp)
    options = MarginLossOptions.build(
        options,
        margin=margin,
        reduction=reduction,
        pairs=pairs,
        n_wrong=n_wrong,
        n_correct=n_correct,
        push=push,
    )
    if logits.ndim == 0:
        msg = "`logits` must have a class axis, got a 0-d array."
        raise ValueError(msg)
    axis = check_axis(axis, logits.ndim)
    if sigmoid:
        is_one, mask = region_targets(logits, labels, ignore_index, validate, xp)
        u = sigmoid_uncertainty_from_logits(logits, validate=False, xp=xp)
        correct = (logits > 0) == is_one
        return uncertainty_margin_loss(
            u, correct, options=options, seed=seed, mask=mask, validate=False, xp=xp
        )
    if not xp.isdtype(logits.dtype, "real floating"):
        msg = f"`logits` must be floating point, got dtype {logits.dtype}."
        raise TypeError(msg)
    k = logits.shape[axis]
    layout = target_layout(logits.shape, labels.shape, axis, "labels")
    mask = None
    if layout == "one_hot":
        mask = xp.any(labels != 0, axis=axis)
        labels = xp.argmax(labels, axis=axis)
    else:
        if layout == "indices_with_axis":
            labels = xp.squeeze(labels, axis=axis)
        if not xp.isdtype(labels.dtype, "integral"):
            msg = (
                "`labels` must hold integer class indices (or be one-hot like `logits`), "
                f"got dtype {labels.dtype}."
            )
            raise TypeError(msg)
        if ignore_index is not None:
            mask = labels != ignore_index
    if validate and not is_traced(logits, labels):
        bad_logits = xp.any(~xp.isfinite(logits))
        out_of_range = (labels < 0) | (labels >= k)
        bad_labels = xp.any(out_of_range if mask is None else (out_of_range & mask))
        if bool(bad_logits | bad_labels):  # the one read, for both checks
            if bool(bad_labels):
                allowed = "" if ignore_index is None or layout == "one_hot" else f" or {ignore_index}"
                msg = f"`labels` must hold class indices in [0, {k}){allowed}, got values outside it."
                raise ValueError(msg)
            msg = "`logits` must be finite, got NaN or infinite values."
            raise ValueError(msg)
    u = uncertainty_from_logits(logits, axis=axis, validate=False, xp=xp)
    pred = xp.argmax(logits, axis=axis)
    correct = pred == xp.astype(labels, pred.dtype)
    if options.push == "binary":
        u = _binary_push(u, logits, labels, correct, axis, xp)
    return uncertainty_margin_loss(u, correct, options=options, seed=seed, mask=mask, validate=False, xp=xp)

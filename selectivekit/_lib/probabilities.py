"""Class probabilities and logits: validation in their working dtype, and the formulas shared by the
uncertainty measures of one prediction and of several (entropy, ``1 - max p`` without cancellation)."""

from __future__ import annotations

from typing import Any

from ..typing import Array, Namespace
from .array_api import as_array, device, get_namespace, working_float_dtype
from .validation import (
    check_axis,
    check_finite_real,
    check_labels,
    check_margin,
    check_probabilities,
    check_real_dtype,
)

__all__ = ["class_input", "class_labels", "entropy", "entropy_terms", "non_maximal_mass", "probs_input"]


def class_input(x: Array, name: str, axis: int, xp: Namespace, validate: bool = True) -> tuple[Any, int]:
    if x.ndim == 0:
        msg = f"`{name}` must have a class axis, got a 0-d array."
        raise ValueError(msg)
    axis = check_axis(axis, x.ndim)
    if validate:
        check_finite_real(x, name, xp)
    else:
        check_real_dtype(x, name, xp)
    dtype = working_float_dtype(x, xp)  # integers and half precision in float32
    return (x if dtype == x.dtype else xp.astype(x, dtype)), axis


def probs_input(
    probs: Any, axis: int, xp: Namespace | None, tolerance: float | None = None
) -> tuple[Array, int, Namespace]:
    """Validated probabilities in their working dtype, the class axis and the namespace."""
    probs = as_array(probs, "probs")
    xp = get_namespace(probs, xp=xp)
    dtype = probs.dtype
    if tolerance is not None:
        tolerance = check_margin(tolerance, "tolerance")  # finite and >= 0, as a margin
    probs, axis = class_input(probs, "probs", axis, xp)
    check_probabilities(probs, axis, xp, dtype, tolerance=tolerance)
    return probs, axis, xp


def entropy(probs: Array, axis: int, xp: Namespace) -> Array:
    """``-sum_k p_k log p_k`` over ``axis`` of validated probabilities (``0 log 0 = 0``)."""
    # `0.0 - sum` rather than `-sum`: a certain prediction gets +0.0, not -0.0.
    return 0.0 - xp.sum(entropy_terms(probs, xp), axis=axis)


def entropy_terms(probs: Array, xp: Namespace) -> Array:
    """``p log p`` elementwise (``0 log 0 = 0``): summed over the classes and negated, the entropy."""
    positive = probs > 0
    safe = xp.where(positive, probs, xp.ones_like(probs))
    return xp.where(positive, probs * xp.log(safe), xp.zeros_like(probs))


def non_maximal_mass(probs: Array, axis: int, xp: Namespace) -> Array:
    """``1 - max_k p_k`` of validated probabilities as the sum of the non-maximal ones (no cancellation)."""
    top = xp.argmax(probs, axis=axis)
    u = xp.zeros(top.shape, dtype=probs.dtype, device=device(probs))
    index: list[Any] = [slice(None)] * probs.ndim
    for k in range(probs.shape[axis]):
        index[axis] = k
        u = u + xp.where(top == k, xp.zeros_like(u), probs[tuple(index)])
    return u


def class_labels(label: Array, scores: Array, name: str, axis: int, xp: Namespace) -> Array:
    """``label`` checked against the class scores ``scores`` (named ``name``) with the classes on ``axis``:
    the shape of ``scores`` without that axis, integers in ``[0, C)``."""
    spatial = tuple(s for i, s in enumerate(scores.shape) if i != axis % scores.ndim)
    if tuple(label.shape) != spatial:
        msg = (
            f"`label` must have the shape of `{name}` without its class axis {spatial}, "
            f"got {tuple(label.shape)}."
        )
        raise ValueError(msg)
    return check_labels(label, "label", xp, num_classes=scores.shape[axis])

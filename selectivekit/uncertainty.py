"""Uncertainty from model outputs, and correctness.

All functions work on any array-API array (NumPy, PyTorch, CuPy, JAX, ...) with the class axis given by
``axis``; results keep the input's namespace and device. Higher uncertainty means *less* confident.
"""

from __future__ import annotations

import math

from ._lib import (
    as_array,
    check_finite_real,
    check_labels,
    check_real_dtype,
    check_same_library,
    check_same_shape,
    class_input,
    device,
    entropy,
    get_namespace,
    non_maximal_mass,
    probs_input,
    working_float_dtype,
)
from .typing import Array, Namespace

__all__ = [
    "correctness",
    "entropy_uncertainty",
    "max_softmax_uncertainty",
    "sigmoid_uncertainty_from_logits",
    "uncertainty_from_logits",
]


def max_softmax_uncertainty(
    probs: Array, /, *, axis: int = 1, tolerance: float | None = None, xp: Namespace | None = None
) -> Array:
    """Uncertainty ``1 - max_k p_k`` from class probabilities, computed without cancellation.

    Parameters
    ----------
    probs : array of shape (..., K, ...)
        Class probabilities in [0, 1], the class axis at ``axis``, summing to 1 over it within
        ``max(K, 10) * eps`` (``eps`` of the input's float dtype, at least float32's 1.2e-7).
    axis : int, default 1
        The class axis (1 for PyTorch's (N, C, H, W); -1 for channels-last).
    tolerance : float, optional
        How far from 1 a sum may be (default ``max(K, 10) * eps`` as above); for probabilities that were
        rounded when stored (``selectivekit.io`` reads files with ``1e-2``).

    Returns
    -------
    array
        Shape of ``probs`` without the class axis; higher means less confident. Half precision and integers
        are computed in float32.

    Notes
    -----
    Computed as the sum of the non-maximal probabilities (one class at a time, so no copy of the whole map),
    which equals ``1 - max p`` for probabilities that sum to 1 but keeps what ``1 - max p`` loses near 1:
    ``1 - (1 - 1e-12)`` is 0 in float32, the other classes still sum to 1e-12. Saturated voxels keep distinct
    values instead of tying at 0, as [`uncertainty_from_logits`][selectivekit.uncertainty_from_logits] does
    from logits (prefer that one when
    logits are at hand: a softmax may already have rounded the probabilities).

    Examples
    --------
    >>> import numpy as np
    >>> max_softmax_uncertainty(np.array([[0.9, 0.1], [0.5, 0.5], [1 - 1e-12, 1e-12]]), axis=-1)
    array([1.e-01, 5.e-01, 1.e-12])
    """
    probs, axis, xp = probs_input(probs, axis, xp, tolerance)
    return non_maximal_mass(probs, axis, xp)


def entropy_uncertainty(
    probs: Array, /, *, axis: int = 1, normalize: bool = False, xp: Namespace | None = None
) -> Array:
    """Predictive entropy ``-sum_k p_k log p_k`` (natural log, ``0 log 0 = 0``).

    Parameters
    ----------
    probs : array of shape (..., K, ...)
        Class probabilities in [0, 1], the class axis at ``axis``, summing to 1 over it within
        ``max(K, 10) * eps`` (``eps`` of the input's float dtype, at least float32's 1.2e-7).
    axis : int, default 1
        The class axis.
    normalize : bool, default False
        Divide by ``log K`` so the result lies in [0, 1].

    Returns
    -------
    array
        Shape of ``probs`` without the class axis; higher means less confident.

    Examples
    --------
    >>> import numpy as np
    >>> entropy_uncertainty(np.array([[1.0, 0.0], [0.5, 0.5]]), axis=-1, normalize=True)
    array([0., 1.])
    """
    probs, axis, xp = probs_input(probs, axis, xp)
    h = entropy(probs, axis, xp)
    if normalize:
        k = probs.shape[axis]
        h = h / math.log(k) if k > 1 else xp.zeros_like(h)
    return h


def uncertainty_from_logits(
    logits: Array, /, *, axis: int = 1, validate: bool = True, xp: Namespace | None = None
) -> Array:
    """Uncertainty ``1 - max softmax(logits)``, computed without cancellation.

    With ``z*`` the largest logit, ``1 - max softmax = r / (1 + r)`` where
    ``r = sum_{k != argmax} exp(z_k - z*)``. Summing the non-maximal terms directly (instead of forming
    ``1 - p_max``) keeps a distinct, nonzero value for saturated voxels: a logit margin of 30 gives
    ``u ~ 9.4e-14`` in float32, where ``1 - softmax`` would round to exactly 0 and tie every such voxel.

    Parameters
    ----------
    logits : array of shape (..., K, ...)
        Unnormalised class scores, the class axis at ``axis``. Half precision is computed in float32.
    axis : int, default 1
        The class axis.
    validate : bool, default True
        Check that the logits are finite (one read from the device). Losses that validate their inputs
        together in a single read pass ``False``.

    Returns
    -------
    array
        Shape of ``logits`` without the class axis, in [0, 1 - 1/K]. Differentiable in every framework
        whose array namespace is used (PyTorch autograd, JAX).

    Examples
    --------
    >>> import numpy as np
    >>> u = uncertainty_from_logits(np.array([[30.0, 0.0]], dtype=np.float32), axis=-1)
    >>> bool(u[0] > 0)
    True
    >>> float(abs(u[0] / np.exp(-30.0) - 1)) < 1e-5
    True
    """
    logits = as_array(logits, "logits")
    xp = get_namespace(logits, xp=xp)
    logits, axis = class_input(logits, "logits", axis, xp, validate)
    k = logits.shape[axis]
    z_max = xp.max(logits, axis=axis, keepdims=True)
    first_max = xp.argmax(logits, axis=axis, keepdims=True)
    shape = [1] * logits.ndim
    shape[axis] = k
    classes = xp.reshape(xp.arange(k, dtype=first_max.dtype, device=device(logits)), tuple(shape))
    is_max = classes == first_max
    terms = xp.exp(logits - z_max)
    r = xp.sum(xp.where(is_max, xp.zeros_like(terms), terms), axis=axis)
    return r / (1.0 + r)


def sigmoid_uncertainty_from_logits(
    logits: Array, /, *, validate: bool = True, xp: Namespace | None = None
) -> Array:
    """Uncertainty of sigmoid (multi-label, region) outputs: ``1 - max(p, 1 - p)`` with ``p = sigmoid(z)``.

    Each channel of a region output (BraTS' whole tumour, tumour core, enhancing tumour, nnU-Net's region
    training) is its own binary decision, ``p > 0.5``. Its uncertainty is the binary analogue of
    ``1 - max softmax``: exactly [`uncertainty_from_logits`][selectivekit.uncertainty_from_logits] of the
    two-class logits ``(0, z)``, whose softmax is ``(1 - p, p)``. It is computed as
    ``exp(-|z|) / (1 + exp(-|z|))``, without cancellation (a logit of 30 keeps ``u ~ 9.4e-14`` in float32)
    and without overflow.

    Parameters
    ----------
    logits : array of any shape
        Sigmoid logits, e.g. (B, R, *spatial) for R regions; elementwise, so no axis. Half precision and
        integers are computed in float32.
    validate : bool, default True
        Check that the logits are finite (one read from the device).

    Returns
    -------
    array
        The shape of ``logits``: one uncertainty per channel and voxel, in [0, 0.5]. Differentiable in every
        framework whose array namespace is used (PyTorch autograd, JAX).

    Examples
    --------
    >>> import numpy as np
    >>> u = sigmoid_uncertainty_from_logits(np.array([0.0, 2.0, -2.0, 30.0], dtype=np.float32))
    >>> [round(float(v), 4) for v in u[:3]], bool(u[3] > 0)
    ([0.5, 0.1192, 0.1192], True)
    >>> float(uncertainty_from_logits(np.array([0.0, 2.0]), axis=0))  # the same, as two classes
    0.11920292202211755
    """
    logits = as_array(logits, "logits")
    xp = get_namespace(logits, xp=xp)
    if validate:
        check_finite_real(logits, "logits", xp)
    else:
        check_real_dtype(logits, "logits", xp)
    dtype = working_float_dtype(logits, xp)
    z = logits if dtype == logits.dtype else xp.astype(logits, dtype)
    r = xp.exp(-xp.abs(z))
    return r / (1.0 + r)


def correctness(pred: Array, label: Array, /, *, xp: Namespace | None = None) -> Array:
    """Boolean array ``pred == label`` (the correctness score ``s_i`` of the paper).

    Parameters
    ----------
    pred, label : arrays of the same shape
        Predicted and true class labels: integers, booleans, or floats whose values are all finite whole
        numbers (label maps read as float, as MONAI's ``LoadImaged`` gives them).

    Raises
    ------
    ValueError
        Shapes differ; NaN, infinite or non-whole values in a float ``pred``/``label``.
    TypeError
        Complex, string or object labels; arrays of two array libraries.

    Examples
    --------
    >>> import numpy as np
    >>> correctness(np.array([0, 1, 2]), np.array([0, 2, 2]))
    array([ True, False,  True])
    """
    pred = as_array(pred, "pred")
    label = as_array(label, "label")
    if xp is None:
        check_same_library(label, "label", pred, "pred")
    xp = get_namespace(pred, label, xp=xp)
    check_same_shape("pred", pred, "label", label)
    return check_labels(pred, "pred", xp) == check_labels(label, "label", xp)

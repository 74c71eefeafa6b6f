"""Argument checks shared by every public function.

Every check raises ``ValueError`` (bad values or shapes) or ``TypeError`` (bad types) with a message that
names the argument in backticks, says what was expected and what was received. Checks that need a value
from the array (NaN, range) read one boolean back to the host; the loss (a hot path) combines its value
checks into a single read instead (``selectivekit._lib.validate_loss_inputs``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from ..typing import Array, Namespace
from .array_api import as_array, check_real_dtype, float_dtype, int_dtype, is_floating, is_traced

__all__ = [
    "check_axis",
    "check_choice",
    "check_correct",
    "check_coverage",
    "check_coverages",
    "check_edges",
    "check_finite_real",
    "check_margin",
    "check_mask",
    "check_num_classes",
    "check_positive_int",
    "check_probability",
    "check_risk",
    "check_same_shape",
    "check_uncertainty",
    "validate_loss_inputs",
]


def _any(x: Array, xp: Namespace) -> bool:
    """``any(x)`` read back to the host; False for a JAX tracer (inside ``jit``: no value to check)."""
    return False if is_traced(x) else bool(xp.any(x))


def check_same_shape(name_a: str, a: Array, name_b: str, b: Array) -> None:
    if tuple(a.shape) != tuple(b.shape):
        msg = f"`{name_b}` must have the same shape as `{name_a}` {tuple(a.shape)}, got {tuple(b.shape)}."
        raise ValueError(msg)


def check_finite_real(x: Array, name: str, xp: Namespace, *, allow_empty: bool = False) -> Array:
    """``x`` must hold real numbers (float or int, not bool/complex), be non-empty and finite."""
    check_real_dtype(x, name, xp)
    size = math.prod(x.shape)
    if size == 0 and not allow_empty:
        msg = f"`{name}` is empty (shape {tuple(x.shape)}); at least one value is needed."
        raise ValueError(msg)
    if size and is_floating(x, xp):
        bad = ~xp.isfinite(x)
        if _any(bad, xp):
            n_bad = int(xp.sum(xp.astype(bad, int_dtype(xp))))
            msg = f"`{name}` must be finite, got {n_bad} NaN or infinite value(s) of {size}."
            raise ValueError(msg)
    return x


def check_uncertainty(u: Array, xp: Namespace, name: str = "uncertainty") -> Array:
    """Validate an uncertainty array; returns it unchanged (any shape)."""
    return check_finite_real(u, name, xp)


def check_correct(correct: Array, like: Array, xp: Namespace, name: str = "correct") -> Array:
    """``correct`` must be boolean or hold only 0/1, with the shape of ``like``; returns a bool array."""
    check_same_shape("uncertainty", like, name, correct)
    if xp.isdtype(correct.dtype, "bool"):
        return correct
    if not xp.isdtype(correct.dtype, ("real floating", "integral")):
        msg = f"`{name}` must be boolean or 0/1, got dtype {correct.dtype}."
        raise TypeError(msg)
    if _any((correct != 0) & (correct != 1), xp):
        msg = f"`{name}` must be boolean or hold only 0 and 1, got other values."
        raise ValueError(msg)
    return correct == 1


def check_risk(risk: Array, like: Array, xp: Namespace, name: str = "risk") -> Array:
    """Per-instance risk: real, finite, in [0, 1], same shape as ``like``; returns floating array."""
    check_same_shape("uncertainty", like, name, risk)
    check_finite_real(risk, name, xp)
    if _any((risk < 0) | (risk > 1), xp):
        msg = f"`{name}` must lie in [0, 1], got values outside it."
        raise ValueError(msg)
    if not is_floating(risk, xp):
        risk = xp.astype(risk, float_dtype(xp))
    return risk


def check_mask(mask: Any, like: Array, xp: Namespace, name: str = "mask") -> Array | None:
    """``mask`` must be boolean with the shape of ``like`` and select at least one instance."""
    if mask is None:
        return None
    mask = as_array(mask, name)
    if not xp.isdtype(mask.dtype, "bool"):
        msg = f"`{name}` must be a boolean array, got dtype {mask.dtype}."
        raise TypeError(msg)
    check_same_shape("uncertainty", like, name, mask)
    if not _any(mask, xp):
        msg = f"`{name}` selects no instance; at least one is needed."
        raise ValueError(msg)
    return mask


def _real_scalar(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if array_api_compat.is_array_api_obj(value) and math.prod(value.shape) == 1:
            value = value.reshape(()) if hasattr(value, "reshape") else value
            try:
                value = float(value)
            except (TypeError, ValueError):
                pass
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            msg = f"`{name}` must be a real number, got {type(value).__name__}."
            raise TypeError(msg)
    return float(value)


def check_coverage(coverage: Any, name: str = "coverage") -> float:
    """A coverage must be a real number in (0, 1]."""
    c = _real_scalar(coverage, name)
    if not (math.isfinite(c) and 0.0 < c <= 1.0):
        msg = f"`{name}` must be in (0, 1], got {coverage!r}."
        raise ValueError(msg)
    return c


def check_probability(value: Any, name: str) -> float:
    """A real number in [0, 1] (e.g. a risk level)."""
    p = _real_scalar(value, name)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        msg = f"`{name}` must be in [0, 1], got {value!r}."
        raise ValueError(msg)
    return p


def check_margin(margin: Any, name: str = "margin") -> float:
    """The loss margin: finite and non-negative."""
    m = _real_scalar(margin, name)
    if not (math.isfinite(m) and m >= 0.0):
        msg = f"`{name}` must be a finite number >= 0, got {margin!r}."
        raise ValueError(msg)
    return m


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        msg = f"`{name}` must be an integer, got {type(axis).__name__}."
        raise TypeError(msg)
    if not -ndim <= axis < ndim:
        msg = f"`{name}` must be in [{-ndim}, {ndim}) for an array of {ndim} dimension(s), got {axis}."
        raise ValueError(msg)
    return int(axis) % ndim


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """``value`` must be one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(f'"{c}"' for c in choices)
        msg = f"`{name}` must be one of {options}, got {value!r}."
        raise ValueError(msg)
    return value


def check_positive_int(value: Any, name: str) -> int:
    """A sample size: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"`{name}` must be an integer, got {type(value).__name__}."
        raise TypeError(msg)
    if value < 1:
        msg = f"`{name}` must be >= 1, got {value}."
        raise ValueError(msg)
    return int(value)


def check_num_classes(num_classes: Any, include_background: bool) -> int:
    """Number of classes ``K``: an integer, at least 2 when background is excluded (1 otherwise)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        msg = f"`num_classes` must be an integer, got {type(num_classes).__name__}."
        raise TypeError(msg)
    low = 1 if include_background else 2
    if num_classes < low:
        msg = f"`num_classes` must be >= {low} (include_background={include_background}), got {num_classes}."
        raise ValueError(msg)
    return int(num_classes)


def check_coverages(coverages: Any) -> list[float]:
    """One coverage or a non-empty sequence of coverages, each in (0, 1]."""
    if isinstance(coverages, numbers.Real) and not isinstance(coverages, bool):
        coverages = [coverages]
    if array_api_compat.is_array_api_obj(coverages):
        coverages = [coverages[i] for i in range(coverages.shape[0])] if coverages.ndim else [coverages]
    if not isinstance(coverages, Sequence) or isinstance(coverages, str):
        msg = (
            "`coverages` must be a number or a sequence of numbers in (0, 1], "
            f"got {type(coverages).__name__}."
        )
        raise TypeError(msg)
    if len(coverages) == 0:
        msg = "`coverages` is empty; at least one coverage in (0, 1] is needed."
        raise ValueError(msg)
    return [check_coverage(c, "coverages") for c in coverages]


def check_edges(edges: Any) -> np.ndarray | None:
    """Cell edges of a threshold grid: None (the bfloat16 grid) or a finite, strictly increasing 1-d array."""
    if edges is None:
        return None
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        msg = f"`edges` must be a non-empty 1-d sequence of numbers, got shape {e.shape}."
        raise ValueError(msg)
    if not np.all(np.isfinite(e)):
        msg = "`edges` must be finite, got NaN or infinite values."
        raise ValueError(msg)
    if e.size > 1 and not np.all(np.diff(e) > 0):
        msg = "`edges` must be strictly increasing."
        raise ValueError(msg)
    return e


def _check_loss_static(u: Array, correct: Array, mask: Array | None, xp: Namespace) -> None:
    """Checks of the loss inputs that need no value from the arrays: dtypes, shapes, emptiness."""
    check_real_dtype(u, "uncertainty", xp)
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


def validate_loss_inputs(
    u: Array, correct: Array, mask: Array | None, xp: Namespace, *, read: bool = True
) -> None:
    """The checks of the loss (any framework whose tensors have an array namespace), with at most one read.

    The value checks (NaN/inf in ``u``, ``correct`` not 0/1) are combined into one boolean that is read
    once; only when it is true are the checks above run to raise their detailed message. ``read=False``
    does only the static checks (no read at all), and so do JAX tracers (inside ``jax.jit``/``grad``).
    """
    _check_loss_static(u, correct, mask, xp)
    if not read or is_traced(u, correct):
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

"""Argument checks shared by every public function (SPEC section 7).

Every check raises ``ValueError`` (bad values or shapes) or ``TypeError`` (bad types) with a message that
names the argument in backticks, says what was expected and what was received. Checks that need a value
from the array (NaN, range) read one boolean back to the host; the loss (a hot path) combines its value
checks into a single read instead (``selectivekit.loss.validate_loss_inputs``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "as_array",
    "check_axis",
    "check_choice",
    "check_correct",
    "check_coverage",
    "check_coverages",
    "check_finite_real",
    "check_margin",
    "check_mask",
    "check_num_classes",
    "check_positive_int",
    "check_probability",
    "check_risk",
    "check_same_shape",
    "check_uncertainty",
    "flatten",
    "float_dtype",
    "get_namespace",
    "int_dtype",
    "is_floating",
]


def as_array(x: Any, name: str) -> Any:
    """Return ``x`` if it is an array-API array, else ``np.asarray(x)`` (lists, tuples, scalars)."""
    if x is None:
        msg = f"`{name}` is required, got None."
        raise TypeError(msg)
    if array_api_compat.is_array_api_obj(x):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        msg = f"`{name}` must be an array (NumPy, PyTorch, CuPy, JAX, ...), got {type(x).__name__}."
        raise TypeError(msg) from exc


def get_namespace(*arrays: Any, xp: Any = None) -> Any:
    """The array namespace of ``arrays`` (``None`` entries ignored), or ``xp`` when given."""
    if xp is not None:
        return xp
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        msg = f"all arrays must come from one array library, got {', '.join(kinds)}."
        raise TypeError(msg) from exc


def _has_64bit(xp: Any) -> bool:
    if array_api_compat.is_jax_namespace(xp):
        import jax

        return bool(jax.config.read("jax_enable_x64"))
    return hasattr(xp, "float64")


def float_dtype(xp: Any) -> Any:
    """The float used for counts and rates: float64, or float32 where 64-bit is off (JAX's default)."""
    return xp.float64 if _has_64bit(xp) else xp.float32


def int_dtype(xp: Any) -> Any:
    """The integer used for counts: int64, or int32 where 64-bit is off (JAX's default)."""
    return xp.int64 if _has_64bit(xp) else xp.int32


def is_floating(x: Any, xp: Any) -> bool:
    return xp.isdtype(x.dtype, "real floating")


def flatten(x: Any, xp: Any) -> Any:
    return xp.reshape(x, (-1,))


def _any(x: Any, xp: Any) -> bool:
    return bool(xp.any(x))


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if tuple(a.shape) != tuple(b.shape):
        msg = f"`{name_b}` must have the same shape as `{name_a}` {tuple(a.shape)}, got {tuple(b.shape)}."
        raise ValueError(msg)


def check_finite_real(x: Any, name: str, xp: Any, *, allow_empty: bool = False) -> Any:
    """``x`` must hold real numbers (float or int, not bool/complex), be non-empty and finite."""
    if xp.isdtype(x.dtype, "bool") or not xp.isdtype(x.dtype, ("real floating", "integral")):
        msg = f"`{name}` must hold real numbers (float or int), got dtype {x.dtype}."
        raise TypeError(msg)
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


def check_uncertainty(u: Any, xp: Any, name: str = "uncertainty") -> Any:
    """Validate an uncertainty array; returns it unchanged (any shape)."""
    return check_finite_real(u, name, xp)


def check_correct(correct: Any, like: Any, xp: Any, name: str = "correct") -> Any:
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


def check_risk(risk: Any, like: Any, xp: Any, name: str = "risk") -> Any:
    """Per-instance risk: real, finite, in [0, 1], same shape as ``like``; returns floating array."""
    check_same_shape("uncertainty", like, name, risk)
    check_finite_real(risk, name, xp)
    if _any((risk < 0) | (risk > 1), xp):
        msg = f"`{name}` must lie in [0, 1], got values outside it."
        raise ValueError(msg)
    if not is_floating(risk, xp):
        risk = xp.astype(risk, float_dtype(xp))
    return risk


def check_mask(mask: Any, like: Any, xp: Any, name: str = "mask") -> Any:
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

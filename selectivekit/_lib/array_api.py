"""Namespace, device, dtypes and the few operations the array API lacks (bincount, scatter-max, bit views).

Modelled on SciPy's ``scipy/_lib/_array_api.py``: one home for the helpers every module needs, so that no
module restates them. Fast paths for NumPy and PyTorch, a generic array-API fallback for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from ..typing import Array, Namespace

__all__ = [
    "as_array",
    "bincount",
    "bits_int32",
    "check_not_masked",
    "check_real_dtype",
    "check_same_library",
    "device",
    "flatten",
    "float_dtype",
    "get_namespace",
    "int_dtype",
    "is_floating",
    "is_traced",
    "scatter_max",
    "stop_gradient",
    "to_numpy",
    "working_float_dtype",
]


def check_not_masked(x: Any, name: str) -> None:
    """Refuse a NumPy masked array: every computation here reads its data and would ignore its mask.

    The data under the mask (often NaN or a fill value) would be evaluated as if it were valid, so the
    values are refused instead; the functions that select instances take ``mask=`` for that.
    """
    if isinstance(x, np.ma.MaskedArray):
        msg = (
            f"`{name}` is a NumPy masked array, whose mask would be ignored; pass finite data "
            "(`x.filled(0)`) with the values to evaluate as `mask=~np.ma.getmaskarray(x)` where the "
            "function takes `mask=`, or drop the masked values first."
        )
        raise TypeError(msg)


def as_array(x: Any, name: str) -> Array:
    """Return ``x`` if it is an array-API array, else ``np.asarray(x)`` (lists, tuples, scalars).

    NumPy masked arrays are refused (``check_not_masked``).
    """
    if x is None:
        msg = f"`{name}` is required, got None."
        raise TypeError(msg)
    check_not_masked(x, name)
    if array_api_compat.is_array_api_obj(x):
        _check_has_values(x, name)
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        msg = f"`{name}` must be an array (NumPy, PyTorch, CuPy, JAX, ...), got {type(x).__name__}."
        raise TypeError(msg) from exc


def _check_has_values(x: Any, name: str) -> None:
    """Refuse a PyTorch tensor on the ``meta`` device: it has a shape and a dtype but no values to measure."""
    if array_api_compat.is_torch_array(x) and x.device.type == "meta":
        msg = (
            f"`{name}` must hold values, got a PyTorch tensor on the meta device (shape and dtype only); "
            "move it to a real device, e.g. `.to('cpu')`."
        )
        raise ValueError(msg)


def _kind(x: Any) -> str:
    return type(x).__module__.split(".")[0] + "." + type(x).__name__


def check_same_library(x: Array, name: str, like: Array, like_name: str = "uncertainty") -> None:
    """``x`` must be an array of the array library of ``like`` (NumPy with NumPy, PyTorch with PyTorch)."""
    try:
        array_api_compat.array_namespace(like, x)
    except TypeError:
        msg = (
            f"`{name}` is a {_kind(x)} but `{like_name}` is a {_kind(like)}; pass arrays of one "
            "array library."
        )
        raise TypeError(msg) from None


def get_namespace(*arrays: Any, xp: Namespace | None = None, names: Sequence[str] | None = None) -> Namespace:
    """The array namespace of ``arrays`` (``None`` entries ignored), or ``xp`` when given.

    ``names`` (one per array) lets the error for arrays of two libraries name the two arguments. NumPy
    masked arrays are refused (``check_not_masked``), also when ``xp`` is given.
    """
    for i, a in enumerate(arrays):
        check_not_masked(a, names[i] if names is not None else "arrays")
    if xp is not None:
        return xp
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        if names is not None:
            named = [(n, a) for n, a in zip(names, arrays, strict=True) if a is not None]
            first_name, first = named[0]
            for name, a in named[1:]:
                check_same_library(a, name, first, first_name)
        kinds = sorted({_kind(a) for a in present})
        msg = f"all arrays must come from one array library, got {', '.join(kinds)}."
        raise TypeError(msg) from exc


def device(x: Array) -> Any:
    """The device of ``x`` (``array_api_compat.device``), for ``device=`` of array constructors."""
    return array_api_compat.device(x)


def _has_64bit(xp: Namespace) -> bool:
    if array_api_compat.is_jax_namespace(xp):
        import jax

        return bool(jax.config.read("jax_enable_x64"))
    return hasattr(xp, "float64")


def float_dtype(xp: Namespace) -> Any:
    """The float used for counts and rates: float64, or float32 where 64-bit is off (JAX's default)."""
    return xp.float64 if _has_64bit(xp) else xp.float32


def int_dtype(xp: Namespace) -> Any:
    """The integer used for counts: int64, or int32 where 64-bit is off (JAX's default)."""
    return xp.int64 if _has_64bit(xp) else xp.int32


def working_float_dtype(x: Array, xp: Namespace) -> Any:
    """The dtype ``x`` is computed in: float32/float64 stay; integers and half precision become float32."""
    if xp.isdtype(x.dtype, "real floating") and xp.finfo(x.dtype).bits >= 32:
        return x.dtype
    return xp.float32


def is_traced(*arrays: Any) -> bool:
    """Whether one of ``arrays`` is a JAX tracer (inside ``jax.jit``, ``jax.grad``, ``jax.vmap``, ...).

    A tracer has no value to read, so value checks (NaN, 0/1, ranges) are skipped for it; the static
    checks (dtypes, shapes) still run. Imports nothing: JAX arrays exist only once JAX is imported.
    """
    for x in arrays:
        if x is not None and array_api_compat.is_jax_array(x):
            import jax

            if isinstance(x, jax.core.Tracer):
                return True
    return False


def stop_gradient(x: Array, xp: Namespace) -> Array:
    """``x`` as a constant for automatic differentiation (JAX, PyTorch); unchanged where there is none."""
    if array_api_compat.is_jax_namespace(xp):
        import jax

        return jax.lax.stop_gradient(x)
    if array_api_compat.is_torch_namespace(xp):
        return x.detach()
    return x


def is_floating(x: Array, xp: Namespace) -> bool:
    return xp.isdtype(x.dtype, "real floating")


def flatten(x: Array, xp: Namespace) -> Array:
    return xp.reshape(x, (-1,))


def check_real_dtype(x: Array, name: str, xp: Namespace) -> None:
    """``x`` must hold real numbers: float or integer, not bool or complex (no read from the device)."""
    if xp.isdtype(x.dtype, "bool") or not xp.isdtype(x.dtype, ("real floating", "integral")):
        msg = f"`{name}` must hold real numbers (float or int), got dtype {x.dtype}."
        raise TypeError(msg)


def bincount(x: Array, n: int, xp: Namespace, weights: Array | None = None) -> Array:
    """``bincount(x, minlength=n)`` (sum of ``weights`` per bin); fast paths for NumPy and PyTorch."""
    if array_api_compat.is_numpy_namespace(xp):
        return np.bincount(x, weights=weights, minlength=n)[:n]
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.bincount(x, weights=weights, minlength=n)[:n]
    # Generic array API: sort, cumulative sum, read the sums at the bin boundaries.
    order = xp.argsort(x, stable=False)
    xs = xp.take(x, order)
    if weights is None:
        cum = xp.cumulative_sum(xp.ones_like(xs), include_initial=True)
    else:
        cum = xp.cumulative_sum(xp.take(weights, order), include_initial=True)
    edges = xp.searchsorted(xs, xp.arange(n + 1, dtype=xs.dtype, device=device(xs)), side="left")
    return xp.take(cum, edges[1:]) - xp.take(cum, edges[:-1])


def scatter_max(out: Array, index: Array, values: Array, xp: Namespace) -> Array:
    """``out[index] = max(out[index], values)`` (in place for NumPy/PyTorch); returns ``out``."""
    if array_api_compat.is_numpy_namespace(xp):
        np.maximum.at(out, index, values)
        return out
    if array_api_compat.is_torch_namespace(xp):
        return out.scatter_reduce_(0, index, values, reduce="amax")
    host = np.asarray(out).copy()
    np.maximum.at(host, np.asarray(index), np.asarray(values))
    return xp.asarray(host)


def bits_int32(u32: Array, xp: Namespace) -> Array:
    """Reinterpret float32 as int32 (the array API has no bitcast: NumPy/PyTorch views, else via NumPy)."""
    if array_api_compat.is_numpy_namespace(xp):
        return u32.view(np.int32)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return u32.view(torch.int32)
    host = np.from_dlpack(u32) if hasattr(u32, "__dlpack__") else np.asarray(u32)
    return xp.asarray(np.ascontiguousarray(host).view(np.int32), device=device(u32))


def to_numpy(x: Any) -> np.ndarray:
    """Any array (NumPy, PyTorch incl. ``requires_grad`` and CUDA, DLPack producers, sequences) as NumPy."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError):
            pass
    return np.asarray(x)

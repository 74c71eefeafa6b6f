"""What the guarantee modules share: the lazy SciPy import, their argument checks and the resample weights."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .._lib import check_choice, check_seed

METHODS = ("BCa", "percentile", "basic")


def load_scipy() -> Any:
    """SciPy with the submodules used here (``special``, ``stats``, ``optimize``), or an error saying how to
    install it."""
    try:
        import scipy.optimize
        import scipy.special
        import scipy.stats
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        msg = (
            "selectivekit's intervals, tests and guaranteed thresholds need SciPy, which is not installed; "
            "install it with: pip install 'selectivekit[stats]' (or pip install scipy)."
        )
        raise ModuleNotFoundError(msg, name="scipy") from exc
    return scipy


def check_open_unit(value: Any, name: str) -> float:
    """A real number strictly inside (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"`{name}` must be a real number in (0, 1), got {type(value).__name__}."
        raise TypeError(msg)
    v = float(value)
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        msg = f"`{name}` must be in (0, 1), got {value!r}."
        raise ValueError(msg)
    return v


def check_method(method: Any) -> str:
    """One of `METHODS`, compared case-insensitively, spelled as there."""
    if isinstance(method, str):
        for m in METHODS:
            if method.lower() == m.lower():
                return m
    return check_choice(method, "method", METHODS)


def generator(seed: Any) -> np.random.Generator:
    """The NumPy generator of a ``seed`` argument (an integer, a generator or None)."""
    return np.random.default_rng(check_seed(seed))


def generator_keyword(func: Callable[..., Any], rng: np.random.Generator) -> dict[str, Any]:
    """SciPy >= 1.15 calls the generator ``rng``; older releases ``random_state``."""
    import inspect

    return {"rng" if "rng" in inspect.signature(func).parameters else "random_state": rng}


def multiplicities(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of the ``n`` units is drawn in every row of ``indices`` (shape (B, m)): float64 array
    of shape (B, n)."""
    b = indices.shape[0]
    flat = (indices + n * np.arange(b, dtype=np.int64)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)

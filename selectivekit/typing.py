"""Type aliases for annotations: ``Array`` and ``Namespace``.

selectivekit works on any array-API array (NumPy, PyTorch, CuPy, JAX, array_api_strict, ...), so an array
has no single static type. ``Array`` names the role in signatures and documentation; ``Namespace`` is an
array-API namespace module such as ``numpy`` or ``array_api_compat.torch`` (what ``xp=`` receives).

Examples
--------
>>> import numpy as np
>>> from selectivekit.typing import Array
>>> def first(x: Array) -> Array:
...     return x[:1]
>>> first(np.arange(3))
array([0])
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Array", "Namespace"]

Array: TypeAlias = Any
"""An array of any array-API library (NumPy, PyTorch, CuPy, JAX, ...)."""

Namespace: TypeAlias = Any
"""An array-API namespace (``numpy``, ``array_api_compat.torch``, ...), as passed to ``xp=``."""

"""Shared fixtures: one `xp` parametrization over NumPy, array_api_strict and PyTorch (CPU)."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

XP_NAMES = ["numpy", "array_api_strict", "torch"]


def namespace(name: str):
    """The array namespace used to build test inputs for backend ``name``."""
    if name == "numpy":
        return np
    if name == "torch":
        pytest.importorskip("torch")
        return importlib.import_module("array_api_compat.torch")
    return pytest.importorskip(name)


@pytest.fixture(params=XP_NAMES, scope="module")
def xp(request):
    """Array namespace; build inputs with ``xp.asarray(numpy_array)``, read back with ``to_numpy``."""
    return namespace(request.param)


def to_numpy(x) -> np.ndarray:
    """Any array (NumPy, array_api_strict, torch incl. requires_grad) as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)

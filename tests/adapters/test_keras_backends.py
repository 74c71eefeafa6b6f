"""The Keras test modules under the JAX and PyTorch backends, each in its own process.

Keras fixes its backend when it is first imported, so this suite's process runs them on TensorFlow and each
other backend gets a subprocess: ``KERAS_BACKEND=jax`` (in JAX's default 32-bit mode, where the float64
metric state used to fail) and ``KERAS_BACKEND=torch``. By hand:
``KERAS_BACKEND=jax python -m pytest tests/adapters/test_keras_loss.py tests/adapters/test_keras_metrics.py``.
The few tests that never touch a backend (``BACKEND_INDEPENDENT``) run on TensorFlow only.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["tests/adapters/test_keras_loss.py", "tests/adapters/test_keras_metrics.py"]
# option checks and config round trips: plain Python, the same on every backend (run on TensorFlow only)
BACKEND_INDEPENDENT = [
    "tests/adapters/test_keras_loss.py::test_rejects_bad_options",
    "tests/adapters/test_keras_loss.py::test_config_round_trip",
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_keras_modules_pass_on_backend(backend):
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec(backend) is None:
        pytest.skip(f"keras and {backend} are needed")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("already inside a backend's subprocess")
    env = dict(os.environ, KERAS_BACKEND=backend, SELECTIVEKIT_TEST_JAX_X64="0")
    env.pop("JAX_ENABLE_X64", None)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES),
            *(f"--deselect={test}" for test in BACKEND_INDEPENDENT),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and " failed" not in result.stdout, tail

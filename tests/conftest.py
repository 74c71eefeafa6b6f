"""Shared fixtures: one `xp` parametrization over NumPy, array_api_strict, PyTorch (CPU) and JAX (CPU), and
the helpers of the command-line tests (folders of cases, argument lists, runs here or in a subprocess).

JAX runs with 64-bit types on here (``jax_enable_x64``, set when the ``jax`` namespace is first built), so its
dtypes are NumPy's. 64-bit mode can only be chosen once per process: ``tests/test_jax.py`` runs the JAX
tests again in a subprocess with ``SELECTIVEKIT_TEST_JAX_X64=0`` (JAX's default 32-bit mode).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
from pathlib import Path

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

XP_NAMES = ["numpy", "array_api_strict", "torch", "jax"]

#: Environment variable that selects JAX's 64-bit mode for this test process ("1", the default, or "0").
JAX_X64_ENV = "SELECTIVEKIT_TEST_JAX_X64"


def jax_x64() -> bool:
    """Whether this test process runs JAX with 64-bit types (``SELECTIVEKIT_TEST_JAX_X64``, default on)."""
    return os.environ.get(JAX_X64_ENV, "1") != "0"


def import_jax():
    """``jax`` with the 64-bit mode of this process (set before any JAX array exists)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", jax_x64())
    return jax


def namespace(name: str):
    """The array namespace used to build test inputs for backend ``name``."""
    if name == "numpy":
        return np
    if name == "torch":
        pytest.importorskip("torch")
        return importlib.import_module("array_api_compat.torch")
    if name == "jax":
        return import_jax().numpy
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


def _namespace_name(xp) -> str:
    """A comparable name of a namespace: ``numpy`` and ``array_api_compat.numpy`` are the same library."""
    import array_api_compat

    for kind in ("numpy", "torch", "cupy", "jax", "dask"):
        if getattr(array_api_compat, f"is_{kind}_namespace")(xp):
            return kind
    return xp.__name__


def _check_array(actual, desired, xp, dtype, device) -> np.ndarray:
    """Namespace, dtype, shape and device of ``actual`` (SciPy's ``_lib/_array_api.py`` checks these too)."""
    import array_api_compat

    assert array_api_compat.is_array_api_obj(actual), f"expected an array, got {type(actual).__name__}"
    got = _namespace_name(array_api_compat.array_namespace(actual))
    assert got == _namespace_name(xp), f"namespace: expected {_namespace_name(xp)}, got {got}"
    desired_np = to_numpy(desired) if array_api_compat.is_array_api_obj(desired) else np.asarray(desired)
    if dtype is None:
        dtype = (
            desired.dtype
            if array_api_compat.is_array_api_obj(desired) and not isinstance(desired, np.ndarray)
            else getattr(xp, desired_np.dtype.name)
        )
    if _namespace_name(xp) == "jax":  # without 64-bit mode, JAX's float64 is float32 (int64: int32)
        import jax

        dtype = jax.dtypes.canonicalize_dtype(dtype)
    assert actual.dtype == dtype, f"dtype: expected {dtype}, got {actual.dtype}"
    assert tuple(actual.shape) == desired_np.shape, (
        f"shape: expected {desired_np.shape}, got {tuple(actual.shape)}"
    )
    expected_device = array_api_compat.device(xp.asarray(0)) if device is None else device
    got_device = array_api_compat.device(actual)
    assert got_device == expected_device, f"device: expected {expected_device}, got {got_device}"
    return desired_np


def xp_assert_close(actual, desired, *, xp, rtol=1e-7, atol=0.0, dtype=None, device=None) -> None:
    """``actual`` is an array of ``xp`` with the expected dtype, shape and device, close to ``desired``.

    ``desired`` is a reference, usually NumPy: the expected dtype is then ``xp``'s dtype of the same name
    (``dtype=`` overrides it) and the expected device ``xp``'s default (``device=`` overrides it).
    """
    desired_np = _check_array(actual, desired, xp, dtype, device)
    np.testing.assert_allclose(to_numpy(actual), desired_np, rtol=rtol, atol=atol)


def xp_assert_equal(actual, desired, *, xp, dtype=None, device=None) -> None:
    """As :func:`xp_assert_close`, with exact equality of the values."""
    desired_np = _check_array(actual, desired, xp, dtype, device)
    np.testing.assert_array_equal(to_numpy(actual), desired_np)


# --- the command line: folders of cases written here, argument lists, the report read back ----------------

#: The repository root (the working directory and ``PYTHONPATH`` of command lines run in a subprocess).
ROOT = Path(__file__).resolve().parents[1]


def noisy_cases(
    seed: int,
    shapes,
    *,
    num_classes: int = 3,
    error_rate: float = 0.15,
    noise: float = 0.6,
    wrong_class: str = "random",
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per-image (preds, labels, us): ``error_rate`` of the voxels wrong, ``noise`` more uncertain on average.

    A wrong voxel predicts a random other class (``wrong_class="random"``) or the next one (``"next"``).
    """
    rng = np.random.default_rng(seed)
    preds, labels, us = [], [], []
    for shape in shapes:
        label = rng.integers(0, num_classes, size=shape).astype(np.uint8)
        wrong = rng.random(shape) < error_rate
        shift = rng.integers(1, num_classes, size=shape) if wrong_class == "random" else 1
        preds.append(np.where(wrong, (label + shift) % num_classes, label).astype(np.uint8))
        labels.append(label)
        us.append((rng.random(shape) + noise * wrong).astype(np.float32))
    return preds, labels, us


def save_nifti(path: Path, array: np.ndarray) -> None:
    """``array`` as a NIfTI file with the identity affine."""
    import nibabel

    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)


def write_case_folders(
    root: Path, preds, labels, us, *, ext: str = ".nii.gz", stem: str = "case_{i:02d}", suffixes: bool = True
) -> dict[str, Path]:
    """Folders ``pred``, ``label`` and ``unc`` under ``root``, one file per image in each.

    Case ``i`` is named ``stem.format(i=i)``; with ``suffixes`` the prediction and uncertainty files end in
    ``_pred`` and ``_unc``. ``ext`` is ``".nii.gz"`` (identity affine) or ``".npy"``.
    """
    folders = {role: root / role for role in ("pred", "label", "unc")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    save = save_nifti if ext == ".nii.gz" else np.save
    for i, arrays in enumerate(zip(preds, labels, us, strict=True)):
        for role, array in zip(folders, arrays, strict=True):
            suffix = f"_{role}" if suffixes and role != "label" else ""
            save(folders[role] / f"{stem.format(i=i)}{suffix}{ext}", array)
    return folders


def cli_inputs(folders: dict[str, Path], *, num_classes: int = 3) -> list[str]:
    """The arguments naming the three input folders, the class count and ``--quiet``."""
    roles = {"--pred": "pred", "--label": "label", "--uncertainty": "unc"}
    paths = [x for flag, role in roles.items() for x in (flag, str(folders[role]))]
    return [*paths, "--num-classes", str(num_classes), "--quiet"]


def evaluate_argv(folders: dict[str, Path], out: Path, *extra: str, num_classes: int = 3) -> list[str]:
    """``selectivekit evaluate`` of ``folders`` into ``out``, then ``extra``."""
    return ["evaluate", *cli_inputs(folders, num_classes=num_classes), "--out", str(out), *extra]


def read_report(out: Path) -> dict:
    """The ``report.json`` of an output folder."""
    return json.loads((out / "report.json").read_text())


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``selectivekit.cli.main(argv)`` in this process: its exit status and what it printed on stderr (its
    stdout is left to pytest's capture, where ``capsys`` reads it)."""
    from selectivekit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def cli_command(*args: str) -> list[str]:
    """``python -m selectivekit ARGS`` with this interpreter, to run in a subprocess with ``cli_env()``."""
    return [sys.executable, "-m", "selectivekit", *args]


#: The environment when the tests started, before any test (or a library it imports) changed os.environ.
_START_ENVIRON = dict(os.environ)


def cli_env() -> dict[str, str]:
    """The environment of a command line run in a subprocess: this checkout, one thread, no display, and
    nothing an earlier test in this process left in ``os.environ``."""
    return {**_START_ENVIRON, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def noisy_case_folders(
    root: Path,
    seed: int,
    n_images: int,
    shape,
    *,
    error_rate: float,
    noise: float,
    num_classes: int = 3,
    ext: str = ".npy",
) -> dict[str, Path]:
    """Folders of ``n_images`` cases of one ``shape`` from :func:`noisy_cases` (a wrong voxel predicts the
    next class), named ``case_{i}`` (``ext=".npy"``) or ``case_{i:02d}`` (``ext=".nii.gz"``)."""
    shapes = [shape] * n_images
    cases = noisy_cases(
        seed, shapes, num_classes=num_classes, error_rate=error_rate, noise=noise, wrong_class="next"
    )
    if ext == ".nii.gz":
        return write_case_folders(root, *cases)
    return write_case_folders(root, *cases, ext=ext, stem="case_{i}")

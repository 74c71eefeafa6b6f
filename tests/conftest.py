"""Shared fixtures: one `xp` parametrization over NumPy, array_api_strict, PyTorch (CPU) and JAX (CPU), the
helpers of the command-line tests (folders of cases, argument lists, runs here or in a subprocess), and the
mutations and checks of the property-based fuzz tests of the public API.

JAX runs with 64-bit types on here (``jax_enable_x64``, set when the ``jax`` namespace is first built), so its
dtypes are NumPy's. 64-bit mode can only be chosen once per process: ``tests/test_jax.py`` runs the JAX
tests again in a subprocess with ``SELECTIVEKIT_TEST_JAX_X64=0`` (JAX's default 32-bit mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

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


#: JAX compiles every operation again for each new input shape, most of a JAX property test's time: under
#: JAX the property tests draw their sizes from these few (those up to their largest size), shared by the
#: tests, and reuse what was compiled. The other backends draw any size.
JAX_SIZES = (1, 2, 5, 12, 30, 40, 60)


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


#: Run by ``python -c`` before it execs the command: SIGINT and SIGTERM with their default action, unblocked.
#: An ignored or blocked signal is inherited through exec. In three full-suite runs (2026-12-05/06) SIGINT
#: was ignored in the pytest process, and every Ctrl-C of test_cli_interrupt went unnoticed: no test leaves
#: it so (every module run before it was checked test by test, 2026-12-06), the suite was started that way,
#: as a background job of a shell without job control (``pytest ... &`` in a script), which a shell starts
#: with SIGINT ignored. ``pytest_configure`` below now puts Python's handler back; a terminal's Ctrl-C never
#: meets that state either way, so the test starts the command as a shell would.
_AS_FROM_A_TERMINAL = (
    "import os, signal, sys; "
    "[signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)]; "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def cli_command_from_a_terminal(*args: str) -> list[str]:
    """``cli_command(*args)`` started with SIGINT and SIGTERM as a shell on a terminal gives them (default
    action, unblocked), whatever this test process has done with them; the same process id (``exec``)."""
    return [sys.executable, "-c", _AS_FROM_A_TERMINAL, "-m", "selectivekit", *args]


#: The environment when the tests started, before any test (or a library it imports) changed os.environ.
_START_ENVIRON = dict(os.environ)


def cli_env() -> dict[str, str]:
    """The environment of a command line run in a subprocess: this checkout, one thread, no display, and
    nothing an earlier test in this process left in ``os.environ``."""
    return {**_START_ENVIRON, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def npy_case_folders(root: Path, preds, labels, us) -> dict[str, Path]:
    """NumPy folders with one file ``case_{i}.npy`` per image in each."""
    return write_case_folders(root, preds, labels, us, ext=".npy", stem="case_{i}", suffixes=False)


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


# --- SIGINT and SIGTERM: as a terminal gives them, and as each test found them --------------------------

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STARTED_WITH_SIGINT_IGNORED = False


def pytest_configure(config):
    """A shell without job control starts a background command (``pytest ... &`` in a script) with SIGINT
    ignored, and every process the tests start inherits that: the tests that interrupt a command or this
    process saw nothing. The tests run with Python's own SIGINT handler, however they were started."""
    global _STARTED_WITH_SIGINT_IGNORED
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        _STARTED_WITH_SIGINT_IGNORED = True
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header(config):
    if _STARTED_WITH_SIGINT_IGNORED:
        return "SIGINT was ignored when pytest started (a background job of a shell?): Python's handler set"
    return None


@pytest.fixture(autouse=True)
def _signal_handlers_put_back():
    """A test (or the code it runs) must leave the SIGINT and SIGTERM handlers as it found them: a handler
    left behind, SIG_IGN above all, reaches every later test and every process they start."""
    before = [signal.getsignal(number) for number in _SIGNALS]
    yield
    after = [signal.getsignal(number) for number in _SIGNALS]
    if after != before:
        for number, handler in zip(_SIGNALS, before, strict=True):
            signal.signal(number, handler)
        pairs = zip(_SIGNALS, before, after, strict=True)
        changed = [f"{number.name}: {b!r} -> {a!r}" for number, b, a in pairs if a != b]
        pytest.fail(f"the test left a signal handler changed (now put back): {'; '.join(changed)}")


# --- integers and long doubles ---------------------------------------------------------------------------

#: Whether ``np.longdouble`` is wider than float64 on this platform.
LONG_DOUBLE_WIDE = np.finfo(np.longdouble).nmant > 52


def dense_ranks(u: np.ndarray) -> np.ndarray:
    """Ranks with ties kept (equal values, equal rank): the order of ``u`` in small float64 numbers."""
    return np.unique(u, return_inverse=True)[1].reshape(u.shape).astype(np.float64)


# --- property-based fuzzing of the public API: bad and extreme inputs keep the error contract -------------
#
# Every call either returns a correct value (finite where the definition is finite, equal to a slow reference
# where that is cheap) or raises ``ValueError``/``TypeError`` whose message names an argument in backticks.
# Never another exception, never a warning (the suite turns warnings into errors), never a NaN outside the
# documented places (``gamma`` with nothing referred).
#
# Inputs start from a valid call; one argument is then replaced by a mutation: NaN, infinities, huge or
# subnormal values, other dtypes (float16, int8, uint8, bool, complex, strings, objects), empty, 0-d, 2-d or
# shorter arrays, ``None``, nested lists, plain scalars, PyTorch tensors (so the fuzz tests need PyTorch).

# bounded for the suite (well under a minute on a loaded machine); SELECTIVEKIT_FUZZ_EXAMPLES=2000 with
# HYPOTHESIS_PROFILE=dev explores further
FUZZ = settings(max_examples=int(os.environ.get("SELECTIVEKIT_FUZZ_EXAMPLES", "60")), deadline=None)

#: Marks a test that needs PyTorch (the fuzz tests: one mutation is a tensor).
requires_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")

ARRAY_MUTATIONS = [
    "none", "none", "none", "nan", "inf", "neg_inf", "huge", "subnormal", "negative", "empty", "shorter",
    "2d", "0d", "float16", "float32", "int8", "uint8", "bool", "complex", "string", "object", "None",
    "nested_list", "list", "scalar", "torch", "huge_int",
]  # fmt: skip
SCALAR_MUTATIONS = [
    None, True, "0.5", math.nan, math.inf, -math.inf, -1, 0, 0.0, 1e-300, 1.5, 2**70, -(2**62),
    np.float32(0.9), np.int64(3), 1j, [0.5], (),
]  # fmt: skip


def mutate(x: np.ndarray, how: str, where: int) -> Any:
    """``x`` with one thing wrong (or extreme); ``where`` picks the position of a changed value."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = np.array(x, dtype=np.float64 if x.dtype.kind == "f" else x.dtype).reshape(-1)
        i = where % max(flat.size, 1)
        as_float = flat.astype(np.float64)
        if how == "none":
            return x
        if how in ("nan", "inf", "neg_inf", "huge", "subnormal", "negative"):
            value = {"nan": np.nan, "inf": np.inf, "neg_inf": -np.inf, "huge": 1e308,
                     "subnormal": 5e-324, "negative": -3.0}[how]  # fmt: skip
            if flat.size:
                as_float[i] = value
            return as_float.reshape(x.shape)
        casts = {"float16": np.float16, "float32": np.float32, "int8": np.int8, "uint8": np.uint8,
                 "bool": np.bool_, "complex": np.complex128, "string": np.str_, "object": object}  # fmt: skip
        if how in casts:
            return x.astype(casts[how])
        if how == "empty":
            return x[:0]
        if how == "shorter":
            return x[:-1] if x.shape and x.shape[0] > 1 else x[:0]
        if how == "2d":
            return np.stack([x, x])
        if how == "0d":
            return x.reshape(-1)[0] if x.size else np.float64(0.5)
        if how == "None":
            return None
        if how == "nested_list":
            return [x.tolist(), [x.tolist()]]
        if how == "list":
            return x.tolist()
        if how == "scalar":
            return 0.5
        if how == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(x))
        if how == "huge_int":
            out = flat.astype(np.int64)
            if out.size:
                out[i] = 2**62
            return out.reshape(x.shape)
    raise AssertionError(how)


def fuzz_contract(call):
    """Run ``call``; return its value, or ``None`` after an allowed error. Fails on anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return call()
        except (ValueError, TypeError) as exc:
            assert re.search(r"`[^`\s]+`", str(exc)), f"the message names no argument: {exc!r}"
            return None


def _scalars(value: Any, path: str = "result"):
    """Every float inside a result (dataclasses, named tuples, tuples, lists, arrays), with its path."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _scalars(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, (tuple, list)):
        names = getattr(value, "_fields", None)
        for i, v in enumerate(value):
            yield from _scalars(v, f"{path}.{names[i]}" if names else f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _scalars(v, f"{path}[{k!r}]")
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if arr.dtype.kind in "fc":
            for v in arr.reshape(-1).tolist():
                yield path, float(v)
    elif isinstance(value, (float, np.floating)):
        yield path, float(value)


def no_silent_nan(result: Any, allowed: tuple[str, ...] = (), minus_inf: tuple[str, ...] = ()) -> None:
    """No NaN outside the fields ``allowed``; no infinity, except ``-inf`` in the fields ``minus_inf``."""
    for path, v in _scalars(result):
        field = path.rsplit(".", 1)[-1]
        if math.isnan(v):
            assert field in allowed, f"NaN at {path}"
        elif not math.isfinite(v):
            assert v == -math.inf and field in minus_inf, f"infinite value at {path}: {v}"


def draw_instances(data, n_max: int = 12):
    n = data.draw(st.integers(1, n_max), label="n")
    u = np.asarray(data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0, 3.0, -2.0]),
                                      min_size=n, max_size=n), label="u"))  # fmt: skip
    c = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="correct"))
    return u, c


def draw_mutated(data, x: np.ndarray, label: str) -> Any:
    how = data.draw(st.sampled_from(ARRAY_MUTATIONS), label=f"{label} mutation")
    return mutate(x, how, data.draw(st.integers(0, 50), label=f"{label} position"))


def draw_instance_args(data, u: np.ndarray, c: np.ndarray) -> tuple[str, dict[str, Any]]:
    """Which input to break (or an option, or none) and the ``uncertainty``/``correct``/``mask`` arguments."""
    target = data.draw(st.sampled_from(["uncertainty", "correct", "mask", "option", "none"]), label="target")
    args = {"uncertainty": u, "correct": c, "mask": None}
    if target in ("uncertainty", "correct"):
        args[target] = draw_mutated(data, args[target], target)
    if target == "mask":
        args["mask"] = draw_mutated(data, np.ones_like(c), "mask")
    return target, args

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
from .array_api import (
    as_array,
    check_not_masked,
    check_real_dtype,
    check_same_library,
    device,
    float_dtype,
    int_dtype,
    is_floating,
    is_traced,
)

MAX_LOSS_MAGNITUDE = 2.0**960
"""The largest ``|u|`` the margin loss accepts in float64: sums of up to 2**63 such terms stay finite."""

MAX_NUM_CLASSES = 2**16
"""The largest ``num_classes`` accepted: label maps of up to 65,536 classes (16-bit labels).

Every segmentation metric keeps per-class state (counts per image and class; the streaming and framework
metrics a threshold grid per class), so a larger count is a mistake (a label value passed as the count),
not a label map: it would ask for terabytes instead of raising a clear error.
"""

__all__ = [
    "MAX_LOSS_MAGNITUDE",
    "MAX_NUM_CLASSES",
    "check_axis",
    "check_choice",
    "check_correct",
    "check_coverage",
    "check_coverages",
    "check_edges",
    "check_finite_real",
    "check_labels",
    "check_margin",
    "check_mask",
    "check_npz_sizes",
    "check_num_classes",
    "check_one_hot",
    "check_positive_int",
    "check_probabilities",
    "check_probability",
    "check_risk",
    "check_same_shape",
    "check_seed",
    "check_uncertainty",
    "labels_bad",
    "one_hot_bad",
    "probability_tolerance",
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
    check_not_masked(x, name)
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
    """Validate an uncertainty array; returns it unchanged (any shape).

    NumPy's long double (wider than float64 on most Linux machines) is refused: the metrics compare in at
    most float64, where distinct long doubles can tie.
    """
    if isinstance(u, np.ndarray) and u.dtype == np.longdouble and np.finfo(np.longdouble).nmant > 52:
        msg = (
            f"`{name}` has dtype {u.dtype} (long double), which would be rounded to float64 where distinct "
            "values can tie; pass float64 (`u.astype(np.float64)`) if ties are acceptable, or the ranks "
            "`scipy.stats.rankdata(u, method='dense')` to keep the order exactly."
        )
        raise TypeError(msg)
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
    check_not_masked(mask, name)
    if array_api_compat.is_array_api_obj(mask):
        check_same_library(mask, name, like)
    else:  # a list or tuple: an array of the library (and device) of `like`
        mask = as_array(mask, name)
        if mask.dtype == np.bool_:
            mask = xp.asarray(mask, device=device(like))
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
    """Number of classes ``K``: an integer, at least 2 when background is excluded (1 otherwise), at most
    ``MAX_NUM_CLASSES``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        msg = f"`num_classes` must be an integer, got {type(num_classes).__name__}."
        raise TypeError(msg)
    low = 1 if include_background else 2
    if num_classes < low:
        msg = f"`num_classes` must be >= {low} (include_background={include_background}), got {num_classes}."
        raise ValueError(msg)
    if num_classes > MAX_NUM_CLASSES:
        msg = (
            f"`num_classes` must be <= {MAX_NUM_CLASSES} (16-bit label maps; the per-class state grows with "
            f"it), got {num_classes}."
        )
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


def check_seed(seed: Any, name: str = "seed", *, generator: bool = True) -> Any:
    """A seed: ``None``, an integer ``>= 0`` or, with ``generator``, a ``numpy.random.Generator`` (returned
    as given)."""
    if seed is None or (generator and isinstance(seed, np.random.Generator)):
        return seed
    what = "None, an integer >= 0 or a numpy.random.Generator" if generator else "None or an integer >= 0"
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        msg = f"`{name}` must be {what}, got {type(seed).__name__}."
        raise TypeError(msg)
    if seed < 0:
        msg = f"`{name}` must be {what}, got {seed!r}."
        raise ValueError(msg)
    return int(seed)


def _label_dtype_kind(x: Array, name: str, xp: Namespace) -> str:
    """``"bool"``, ``"integral"`` or ``"real floating"``; anything else (complex, strings, objects) raises."""
    for kind in ("bool", "integral", "real floating"):
        if xp.isdtype(x.dtype, kind):
            return kind
    msg = (
        f"`{name}` must hold class labels (integers, booleans, or floats with whole values), "
        f"got dtype {x.dtype}."
    )
    raise TypeError(msg)


def _int_range(xp: Namespace) -> tuple[int, int]:
    """``[low, high)`` of the integer dtype labels are converted to (powers of two: exact in every float)."""
    bits = 64 if int_dtype(xp) == getattr(xp, "int64", None) else 32
    return -(2 ** (bits - 1)), 2 ** (bits - 1)


def _outside_int_range(x: Array, xp: Namespace) -> Array:
    """Float values outside the integer range of ``_int_range`` (all False for float16, whose finite values
    all fit and which cannot even hold the bounds)."""
    low, high = _int_range(xp)
    if float(xp.finfo(x.dtype).max) < high:
        return xp.zeros(x.shape, dtype=xp.bool, device=device(x))
    return (x < low) | (x >= high)


def labels_bad(x: Array, xp: Namespace, num_classes: int | None = None) -> Array | None:
    """A 0-d boolean array (nothing read from the device): some value of ``x`` is not a class label.

    Not a label: NaN, infinite or non-whole floats, floats outside the integer range, and (with
    ``num_classes``) values outside ``[0, num_classes)``. ``None`` when no value can be wrong (booleans
    without ``num_classes``). The dtype is checked (and raises) by
    ``check_labels``, which reads this once.
    """
    kind = _label_dtype_kind(x, "labels", xp)
    bad = None
    if kind == "real floating":
        bad = ~xp.isfinite(x) | (x != xp.round(x)) | _outside_int_range(x, xp)
        bad = xp.any(bad)
    if num_classes is not None and kind != "bool":
        # a float dtype whose finite values all lie below num_classes (float16): compare with 0 only
        above = kind == "real floating" and num_classes > float(xp.finfo(x.dtype).max)
        out = xp.any(x < 0) if above else xp.any((x < 0) | (x >= num_classes))
        bad = out if bad is None else (bad | out)
    elif num_classes is not None and num_classes < 2:  # bool labels hold 0 and 1
        out = xp.any(x)
        bad = out if bad is None else (bad | out)
    return bad


def check_labels(x: Array, name: str, xp: Namespace, *, num_classes: int | None = None) -> Array:
    """Class labels: returns ``x`` as an integer array (bools and whole-valued floats converted).

    Accepted: integer and boolean dtypes, and real floats whose every value is a finite whole number (what
    MONAI's ``LoadImaged`` and most NIfTI readers give for label maps); those become the namespace's
    int64 (int32 where 64-bit is off). NaN, infinite or non-whole floats raise ``ValueError``; complex,
    string and object dtypes raise ``TypeError``. With ``num_classes``, every value must lie in
    ``[0, num_classes)``. One boolean is read from the device (none for integer labels without
    ``num_classes``).
    """
    kind = _label_dtype_kind(x, name, xp)
    if math.prod(x.shape) and (bad := labels_bad(x, xp, num_classes)) is not None and bool(bad):
        if kind == "real floating":
            low, high = _int_range(xp)
            n_nonfinite = int(xp.sum(xp.astype(~xp.isfinite(x), int_dtype(xp))))
            if n_nonfinite:
                msg = f"`{name}` must hold class labels, got {n_nonfinite} NaN or infinite value(s)."
                raise ValueError(msg)
            if _any(x != xp.round(x), xp):
                msg = (
                    f"`{name}` must hold class labels (whole numbers), got non-integer values "
                    f"(dtype {x.dtype})."
                )
                raise ValueError(msg)
            if _any(_outside_int_range(x, xp), xp):
                msg = (
                    f"`{name}` must hold class labels, got values outside the integer range [{low}, {high})."
                )
                raise ValueError(msg)
        lo, hi = int(xp.min(xp.astype(x, int_dtype(xp)))), int(xp.max(xp.astype(x, int_dtype(xp))))
        msg = (
            f"`{name}` must hold labels in [0, {num_classes}) (num_classes={num_classes}), "
            f"got values in [{lo}, {hi}]"
            + (f"; if {hi} is a class, pass num_classes={hi + 1} (classes 0..K-1)." if lo >= 0 else ".")
        )
        raise ValueError(msg)
    if kind != "integral":
        x = xp.astype(x, int_dtype(xp))
    return x


def one_hot_bad(target: Array, xp: Namespace) -> Array | None:
    """A 0-d boolean array (no read): a one-hot (or soft) target holds a negative, NaN or infinite value.

    ``None`` for boolean targets (nothing can be wrong). Raises ``TypeError`` for a dtype that is not bool,
    integer or real float.
    """
    kind = _label_dtype_kind(target, "target", xp)
    if kind == "bool":
        return None
    bad = target < 0
    if kind == "real floating":
        bad = bad | ~xp.isfinite(target)
    return xp.any(bad)


def check_one_hot(target: Array, name: str, xp: Namespace) -> Array:
    """One-hot or soft labels (class axis included): every value finite and ``>= 0``; returns ``target``.

    Rows that are all zero are allowed (the framework losses ignore them). One read from the device.
    """
    try:
        bad = one_hot_bad(target, xp)
    except TypeError:
        msg = f"`{name}` (one-hot) must be boolean or hold real numbers, got dtype {target.dtype}."
        raise TypeError(msg) from None
    if bad is not None and bool(bad):
        msg = f"`{name}` (one-hot or soft labels) must hold finite values >= 0, got negative or non-finite."
        raise ValueError(msg)
    return target


def probability_tolerance(dtype: Any, n_classes: int, xp: Namespace) -> float:
    """How far from 1 a sum of class probabilities may be: ``max(K, 10) * eps``.

    ``eps`` is the machine epsilon of ``dtype`` but at least float32's (1.2e-7): probabilities are mostly
    computed in float32 and stored wider, so float32's rounding is the least to allow; float16 storage
    gets float16's (9.8e-4). Integer probabilities (one-hot) use float32's.
    """
    eps32 = float(xp.finfo(xp.float32).eps)
    eps = max(float(xp.finfo(dtype).eps), eps32) if xp.isdtype(dtype, "real floating") else eps32
    return max(n_classes, 10) * eps


def check_probabilities(
    probs: Array, axis: int, xp: Namespace, dtype: Any, name: str = "probs", tolerance: float | None = None
) -> None:
    """Class probabilities along ``axis``: each in [0, 1], each row summing to 1 within ``tolerance``
    (default: ``probability_tolerance`` of the input ``dtype``).

    ``probs`` is assumed finite (checked before). One boolean is read from the device.
    """
    k = probs.shape[axis]
    tol = probability_tolerance(dtype, k, xp) if tolerance is None else tolerance
    out_of_range = xp.any((probs < 0) | (probs > 1))
    off = xp.abs(xp.sum(probs, axis=axis) - 1.0) > tol
    if bool(out_of_range | xp.any(off)):
        if bool(out_of_range):
            msg = f"`{name}` must lie in [0, 1] (softmax probabilities), got values outside it."
            raise ValueError(msg)
        sums = xp.sum(probs, axis=axis)
        n_off = int(xp.sum(xp.astype(off, int_dtype(xp))))
        msg = (
            f"`{name}` must sum to 1 over the class axis (axis={axis}) within {tol:.2g}, got {n_off} "
            f"of {math.prod(sums.shape)} sum(s) outside it (sums in [{float(xp.min(sums)):.6g}, "
            f"{float(xp.max(sums)):.6g}])."
        )
        raise ValueError(msg)


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
        if xp.finfo(u.dtype).bits > 32:  # float32 and below are summed in float64: no bound is needed
            bad = bad | xp.any(xp.abs(u) > MAX_LOSS_MAGNITUDE)
    if not xp.isdtype(correct.dtype, "bool"):
        bad_c = xp.any((correct != 0) & (correct != 1))
        bad = bad_c if bad is None else (bad | bad_c)
    if bad is not None and bool(bad):  # the single device-to-host read
        check_finite_real(u, "uncertainty", xp)
        wide = xp.isdtype(u.dtype, "real floating") and xp.finfo(u.dtype).bits > 32
        if wide and _any(xp.abs(u) > MAX_LOSS_MAGNITUDE, xp):  # 2**960 overflows a float32 comparison
            msg = (
                f"`uncertainty` must lie within +-2**960 (about 1e289) for the loss, whose sums of pairwise "
                f"differences would overflow float64; got values up to {float(xp.max(xp.abs(u))):.3g}."
            )
            raise ValueError(msg)
        check_correct(correct, u, xp)


def check_npz_sizes(path: Any, name: str) -> None:
    """Every array of the ``.npz`` archive ``path`` is stored uncompressed with exactly the bytes its header
    declares, so that loading it needs no more memory than the file's size: a forged header cannot make
    ``np.load`` allocate terabytes. Raises ``ValueError`` naming ``name`` and the file."""
    import zipfile
    from pathlib import Path

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0  # 3.0 has 2.0's layout
                    )
                    shape, _, dtype = read_header(handle)
                    header_size = handle.tell()
                declared = math.prod(shape) * dtype.itemsize
                if info.compress_type != zipfile.ZIP_STORED or header_size + declared != info.file_size:
                    msg = (
                        f"`{name}` file {str(path)!r} is damaged: its array {info.filename!r} declares shape "
                        f"{tuple(shape)} of {dtype} ({declared:,} bytes) but stores {info.file_size:,} bytes."
                    )
                    raise ValueError(msg)
    except (zipfile.BadZipFile, EOFError, ValueError, TypeError) as exc:
        if str(exc).startswith(f"`{name}` file"):
            raise
        msg = f"`{name}` file {str(path)!r} is not a NumPy .npz archive ({type(exc).__name__}: {exc})."
        raise ValueError(msg) from None

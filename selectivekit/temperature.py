"""Temperature scaling: one temperature (or one per class) fitted on held-out logits by minimising the NLL.

Dividing the logits by ``T > 1`` softens the probabilities, ``T < 1`` sharpens them (Guo et al. 2017). What
a temperature changes:

- **never the argmax**, so never the segmentation or its Dice, with one temperature for all classes;
- with **two classes**, not the order of ``1 - max p`` either (it is a monotone function of the logit
  margin), so not the AURC or any risk-coverage metric of that uncertainty;
- with **more classes** the order of ``1 - max p`` and of the entropy can change, so the AURC can too;
- the **calibration** metrics (ECE, Brier, NLL) and the entropy-based measures, always.

One temperature per class (vector scaling without bias) fits better but **can change the argmax**, and
with it the segmentation: report the Dice after applying it.

The fit streams over the cases: each evaluation of the objective reads every case once, so the logits of
a calibration set that does not fit in memory can be read from disk for each step (give a sequence whose
items load lazily).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._lib import as_array, class_labels, device, float_dtype, get_namespace, probs_input
from .typing import Array, Namespace

__all__ = ["TemperatureScaling", "fit_temperature"]

_BOUNDS = (0.05, 20.0)


@dataclasses.dataclass(frozen=True)
class TemperatureScaling:
    """A fitted temperature: ``apply`` divides logits by it."""

    temperature: tuple[float, ...]
    """One temperature, or one per class."""
    nll_before: float
    """Mean NLL per voxel of the calibration cases at ``T = 1``."""
    nll_after: float
    """Mean NLL per voxel at the fitted temperature."""
    voxels: int
    """How many voxels the fit used."""

    def apply(self, logits: Array, /, *, axis: int = 1, xp: Namespace | None = None) -> Array:
        """``logits / T`` (per class along ``axis`` for one temperature per class), in the input's library.

        Examples
        --------
        >>> import numpy as np
        >>> TemperatureScaling((2.0,), 0.5, 0.4, 10).apply(np.array([[2.0, -4.0]]), axis=-1)
        array([[ 1., -2.]])
        """
        logits = as_array(logits, "logits")
        xp = get_namespace(logits, xp=xp)
        return logits / _broadcast(self.temperature, logits, axis, xp)

    def apply_to_probabilities(
        self, probs: Array, /, *, axis: int = 1, tolerance: float | None = None, xp: Namespace | None = None
    ) -> Array:
        """The probabilities the scaled logits would give: ``softmax(log(p) / T)`` along ``axis``.

        ``log p_k = z_k - logsumexp(z)`` differs from the logits ``z`` by one number per voxel, which a
        softmax ignores, so this equals ``softmax(z / T)`` for probabilities ``p = softmax(z)``, up to the
        rounding of the stored probabilities (a probability stored as 0 stays 0). With one temperature per
        class the per-voxel term no longer cancels: that needs the logits (``apply``), and is refused here.
        ``tolerance`` is how far from 1 the sums of ``probs`` may be (as in
        [`max_softmax_uncertainty`][selectivekit.max_softmax_uncertainty]); the result sums to 1.

        Examples
        --------
        >>> import numpy as np
        >>> p = np.array([[0.8, 0.2]])
        >>> TemperatureScaling((2.0,), 0.5, 0.4, 10).apply_to_probabilities(p, axis=-1).round(4)
        array([[0.6667, 0.3333]])
        """
        if len(self.temperature) != 1:
            msg = (
                f"`temperature` holds {len(self.temperature)} temperatures (one per class); scaling "
                "probabilities needs one (a per-class temperature must be applied to the logits)."
            )
            raise ValueError(msg)
        probs, axis, xp = probs_input(probs, axis, xp, tolerance)
        positive = probs > 0
        logs = xp.log(xp.where(positive, probs, xp.ones_like(probs))) / self.temperature[0]
        logs = logs - xp.max(
            xp.where(positive, logs, xp.full_like(logs, -math.inf)), axis=axis, keepdims=True
        )
        scaled = xp.where(positive, xp.exp(logs), xp.zeros_like(logs))
        return scaled / xp.sum(scaled, axis=axis, keepdims=True)

    def to_json(self, path: str | Path) -> None:
        """Write the temperature to a JSON file (what ``selectivekit evaluate --temperature`` reads)."""
        record = {"temperature": list(self.temperature), "nll_before": self.nll_before,
                  "nll_after": self.nll_after, "voxels": self.voxels}  # fmt: skip
        Path(path).write_text(json.dumps(record, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> TemperatureScaling:
        """Read a file written by ``to_json``; a clear error for anything else."""
        try:
            record = json.loads(Path(path).read_text())
            temperature = tuple(float(t) for t in record["temperature"])
            result = cls(
                temperature, float(record["nll_before"]), float(record["nll_after"]), int(record["voxels"])
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            msg = f"`path` {str(path)!r} is not a temperature file of TemperatureScaling.to_json ({exc})."
            raise ValueError(msg) from None
        if not temperature or not all(math.isfinite(t) and t > 0 for t in temperature):
            msg = f"`path` {str(path)!r} holds temperatures that are not finite and positive: {temperature}."
            raise ValueError(msg)
        return result


def _broadcast(temperature: Sequence[float], logits: Array, axis: int, xp: Namespace) -> Array:
    t = xp.asarray(np.asarray(temperature, dtype=np.float64), dtype=logits.dtype, device=device(logits))
    if t.shape[0] == 1:
        return t[0]
    axis = axis % logits.ndim
    if logits.shape[axis] != t.shape[0]:
        msg = (
            f"`logits` must have {t.shape[0]} classes on axis {axis} (one per temperature), "
            f"got {logits.shape[axis]}."
        )
        raise ValueError(msg)
    shape = [1] * logits.ndim
    shape[axis] = t.shape[0]
    return xp.reshape(t, tuple(shape))


def _case(logits: Any, label: Any, axis: int) -> tuple[Array, Array, Namespace]:
    logits = as_array(logits, "logits")
    label = as_array(label, "label")
    xp = get_namespace(logits, label, names=("logits", "label"))
    if not xp.isdtype(logits.dtype, "real floating"):
        msg = f"`logits` must be a float array, got dtype {logits.dtype}."
        raise TypeError(msg)
    axis = axis % logits.ndim
    c = logits.shape[axis]
    label = class_labels(label, logits, "logits", axis, xp)
    wide = float_dtype(xp)
    flat = xp.reshape(xp.moveaxis(xp.astype(logits, wide), axis, -1), (-1, c))
    if not bool(xp.all(xp.isfinite(flat))):
        msg = "`logits` must be finite, got NaN or infinite values."
        raise ValueError(msg)
    return flat, xp.reshape(label, (-1,)), xp


def _nll_and_gradient(
    flat: Array, label: Array, log_t: np.ndarray, xp: Namespace
) -> tuple[float, np.ndarray]:
    """Sum over voxels of ``logsumexp(z / T) - z_y / T`` and its gradient in ``log T`` (per temperature)."""
    c = flat.shape[1]
    t = xp.asarray(np.exp(log_t), dtype=flat.dtype, device=device(flat))
    scaled = flat / (t if t.shape[0] > 1 else t[0])
    top = xp.max(scaled, axis=1, keepdims=True)
    exp = xp.exp(scaled - top)
    total = xp.sum(exp, axis=1, keepdims=True)
    classes = xp.arange(c, dtype=label.dtype, device=device(label))
    onehot = xp.astype(label[:, None] == classes[None, :], flat.dtype)
    nll = xp.sum(xp.log(total[:, 0]) + top[:, 0] - xp.sum(scaled * onehot, axis=1))
    # d nll / d s_c = softmax_c - onehot_c, and d s_c / d log T_c = -s_c
    per_class = -xp.sum((exp / total - onehot) * scaled, axis=0)
    grad = (
        np.asarray([float(v) for v in per_class])
        if t.shape[0] > 1
        else np.asarray([float(xp.sum(per_class))])
    )
    return float(nll), grad


def fit_temperature(
    cases: Iterable[tuple[Array, Array]] | Callable[[], Iterable[tuple[Array, Array]]],
    /,
    *,
    axis: int = 1,
    per_class: bool = False,
    bounds: tuple[float, float] = _BOUNDS,
) -> TemperatureScaling:
    """Fit the temperature that minimises the mean NLL per voxel of calibration cases.

    Parameters
    ----------
    cases : sequence of (logits, label) pairs, or a callable returning an iterable of them
        Logits of shape (..., C, ...) with the class axis at ``axis`` and integer labels of the shape without
        it, in any array library. Read once per evaluation of the objective (a few dozen times): a list of
        arrays, a sequence that loads each case when indexed, or a function that opens the files anew.
    axis : int, default 1
        The class axis of the logits.
    per_class : bool, default False
        One temperature per class (L-BFGS-B with the exact gradient) instead of one for all (SciPy's bounded
        scalar minimiser on ``log T``). Per-class temperatures can change the argmax.
    bounds : (float, float), default (0.05, 20.0)
        The range searched for each temperature.

    Returns
    -------
    TemperatureScaling

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 2, 2000)
    >>> logits = np.stack([np.zeros(2000), 6.0 * (2 * label - 1) + 4 * rng.normal(size=2000)], axis=1)
    >>> fitted = fit_temperature([(logits, label)])
    >>> fitted.temperature[0] > 1, fitted.nll_after < fitted.nll_before  # over-confident: softened
    (True, True)
    """
    from scipy import optimize

    low, high = _check_bounds(bounds)
    read = cases if callable(cases) else (lambda: cases)
    first = list(_iter_cases(read, axis))
    if not first:
        msg = "`cases` is empty; at least one (logits, label) pair is needed."
        raise ValueError(msg)
    classes = {flat.shape[1] for flat, _, _ in first}
    if len(classes) > 1:
        msg = f"`cases` must all have the same number of classes, got {sorted(classes)}."
        raise ValueError(msg)
    c = classes.pop()
    voxels = sum(int(flat.shape[0]) for flat, _, _ in first)
    in_memory = not callable(cases) and isinstance(cases, Sequence)

    def objective(log_t: np.ndarray) -> tuple[float, np.ndarray]:
        nll, grad = 0.0, np.zeros(log_t.size)
        for flat, label, xp in first if in_memory else _iter_cases(read, axis):
            value, g = _nll_and_gradient(flat, label, log_t, xp)
            nll, grad = nll + value, grad + g
        return nll / voxels, grad / voxels

    before = objective(np.zeros(c if per_class else 1))[0]
    lo, hi = math.log(low), math.log(high)
    if per_class:
        res = optimize.minimize(objective, np.zeros(c), jac=True, method="L-BFGS-B", bounds=[(lo, hi)] * c)
        log_t = np.asarray(res.x)
    else:
        res = optimize.minimize_scalar(
            lambda v: objective(np.asarray([v]))[0],
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-6},
        )
        log_t = np.asarray([res.x])
    after = objective(log_t)[0]
    if after > before:  # never worse than no scaling (a flat objective can stop the search early)
        log_t, after = np.zeros_like(log_t), before
    return TemperatureScaling(tuple(float(t) for t in np.exp(log_t)), before, after, voxels)


def _iter_cases(read: Callable[[], Iterable], axis: int):
    for i, item in enumerate(read()):
        try:
            logits, label = item
        except (TypeError, ValueError):
            msg = f"`cases` must hold (logits, label) pairs; item {i} is a {type(item).__name__}."
            raise TypeError(msg) from None
        yield _case(logits, label, axis)


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        msg = f"`bounds` must be two numbers (low, high), got {bounds!r}."
        raise TypeError(msg) from None
    if not (0 < low < high < math.inf):
        msg = f"`bounds` must satisfy 0 < low < high < inf, got ({low}, {high})."
        raise ValueError(msg)
    return low, high

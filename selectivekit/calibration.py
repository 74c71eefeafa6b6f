"""Calibration of voxel probabilities: ECE, MCE, class-wise ECE, Brier score, NLL, and temperature scaling.

Per voxel, the confidence is ``conf = max_c p_c`` and the voxel is correct when ``argmax_c p_c`` is its
label (the first class on ties, as everywhere in this package). With ``B`` equal-width bins, bin ``b``
(``b = 1..B``) holds the voxels with ``(b-1)/B < conf <= b/B``, and the first bin also holds ``conf = 0``:
every confidence in ``[0, 1]``, saturated ones included, falls in exactly one of the ``B`` bins.

``ECE = sum_b (n_b / N) |acc_b - conf_b|`` and ``MCE = max_b |acc_b - conf_b|`` over the non-empty bins,
with ``acc_b`` the share of correct voxels in bin ``b`` and ``conf_b`` their mean confidence (Guo et al.
2017). Class-wise ECE (Kull et al. 2019) takes, for each evaluated class ``k``, the confidence ``p_k`` and
the outcome ``1[y = k]`` over every voxel, and averages the ECE of each class. The Brier score is
``(1/N) sum_i sum_c (p_ic - 1[y_i = c])^2`` and the NLL ``-(1/N) sum_i log p_{i, y_i}`` with ``p`` clipped
at the smallest normal number of its dtype. Lower is better for every one of them.

The bin statistics (counts, sums of confidences, counts of correct voxels) are integers and float64 sums,
so they merge exactly: [`CalibrationAccumulator`][selectivekit.CalibrationAccumulator] over images or
shards gives the numbers of one pass over all voxels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._lib import (
    as_array,
    bincount,
    check_positive_int,
    check_same_library,
    check_same_shape,
    class_labels,
    device,
    float_dtype,
    int_dtype,
    probs_input,
    to_numpy,
)
from .typing import Array, Namespace

__all__ = [
    "CalibrationAccumulator",
    "CalibrationBins",
    "CalibrationResult",
    "bin_statistics",
    "brier_nll_sums",
    "brier_score",
    "calibration_bins",
    "calibration_inputs",
    "classwise_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
]


# ---------------------------------------------------------------------------------------------- bins


@dataclasses.dataclass(frozen=True)
class CalibrationBins:
    """Bin statistics of confidences and outcomes: mergeable counts and sums.

    Bin ``b`` holds the confidences in ``(edges[b], edges[b + 1]]``; the first bin also holds ``edges[0]``.
    """

    edges: np.ndarray
    """Bin edges, increasing, float64, shape (B + 1,)."""
    counts: np.ndarray
    """Voxels per bin (int64)."""
    confidence_sums: np.ndarray
    """Sum of the confidences per bin (float64)."""
    correct_counts: np.ndarray
    """Correct voxels (or voxels of the class, for class-wise bins) per bin (int64)."""

    @property
    def mean_confidence(self) -> np.ndarray:
        """Mean confidence per bin (NaN for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.confidence_sums / np.maximum(self.counts, 1), np.nan)

    @property
    def accuracy(self) -> np.ndarray:
        """Share of correct voxels per bin (NaN for an empty bin)."""
        return np.where(self.counts > 0, self.correct_counts / np.maximum(self.counts, 1), np.nan)

    def expected_calibration_error(self) -> float:
        """``sum_b (n_b / N) |acc_b - conf_b|``; NaN when every bin is empty."""
        n = int(self.counts.sum())
        if n == 0:
            return math.nan
        gap = np.abs(self.correct_counts - self.confidence_sums)  # n_b |acc_b - conf_b|
        return float(gap.sum() / n)

    def maximum_calibration_error(self) -> float:
        """``max_b |acc_b - conf_b|`` over the non-empty bins; NaN when every bin is empty."""
        full = self.counts > 0
        if not full.any():
            return math.nan
        return float(np.max(np.abs(self.accuracy[full] - self.mean_confidence[full])))

    def merge(self, other: CalibrationBins) -> CalibrationBins:
        """The statistics of both sets of voxels (the edges must be the same)."""
        if not isinstance(other, CalibrationBins):
            msg = f"`other` must be CalibrationBins, got {type(other).__name__}."
            raise TypeError(msg)
        if self.edges.shape != other.edges.shape or not np.array_equal(self.edges, other.edges):
            msg = "`other` has other bin edges; only bins with the same edges merge."
            raise ValueError(msg)
        return CalibrationBins(
            self.edges,
            self.counts + other.counts,
            self.confidence_sums + other.confidence_sums,
            self.correct_counts + other.correct_counts,
        )


def _equal_width_edges(n_bins: int) -> np.ndarray:
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def _equal_mass_edges(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Edges at the quantiles of ``confidence`` so each bin holds about N / B voxels, a run of equal values
    never split between two bins (a value shared by more than N / B voxels makes fewer, larger bins)."""
    values = np.sort(confidence.astype(np.float64, copy=False))
    n = values.size
    # bin b ends at the value at position ceil(b N / B) - 1; the bins are by value, (edge, next edge], so a
    # run of equal values lies in one bin, and repeated edges (a long run) merge into one
    last = np.ceil(np.arange(1, n_bins) * n / n_bins).astype(np.int64) - 1
    edges = np.unique(np.concatenate([values[:1], values[last], values[-1:]]))
    return np.repeat(edges, 2) if edges.size == 1 else edges


def bin_statistics(
    confidence: Array, outcome: Array, edges: np.ndarray, xp: Namespace
) -> tuple[Array, Array, Array]:
    """Per bin, on the input's device: the count, the sum of ``confidence`` and the count of ``outcome``.

    A building block of the metrics and of the framework metric classes. ``confidence`` is a flat float
    array, ``outcome`` a flat boolean array of its length, ``edges`` increasing float64 edges: bin ``b``
    holds ``(edges[b], edges[b + 1]]``, the first bin also ``edges[0]``. Counts and sums are in the
    namespace's widest types (float64 and int64 unless 64-bit is off, as in JAX's default).
    """
    wide = float_dtype(xp)
    c = xp.astype(confidence, wide)
    e = xp.asarray(edges, dtype=wide, device=device(c))
    n_bins = edges.size - 1
    # searchsorted "left": edges[i-1] < c <= edges[i]; bin i - 1, and c == edges[0] goes to the first bin
    index = xp.clip(xp.searchsorted(e, c, side="left") - 1, 0, n_bins - 1)
    counts = xp.astype(bincount(index, n_bins, xp), int_dtype(xp))
    sums = bincount(index, n_bins, xp, weights=c)
    correct = xp.astype(
        xp.round(bincount(index, n_bins, xp, weights=xp.astype(outcome, wide))), int_dtype(xp)
    )
    return counts, sums, correct


def _bins_of(confidence: Array, outcome: Array, edges: np.ndarray, xp: Namespace) -> CalibrationBins:
    counts, sums, correct = (to_numpy(a) for a in bin_statistics(confidence, outcome, edges, xp))
    return CalibrationBins(
        edges.copy(), counts.astype(np.int64), sums.astype(np.float64), correct.astype(np.int64)
    )


# ---------------------------------------------------------------------------------------------- inputs


def calibration_inputs(
    probs: Any, label: Any, axis: int, mask: Any, xp: Namespace | None
) -> tuple[Array, Array, int, Namespace]:
    """Validated probabilities and integer labels in range, flattened to (voxels, C) and (voxels,) over the
    mask; the class count and the namespace. A building block of the metrics and the framework metrics."""
    probs_array = as_array(probs, "probs")
    label = as_array(label, "label")
    if xp is None:
        check_same_library(label, "label", probs_array, "probs")
    probs, axis, xp = probs_input(probs_array, axis, xp)
    c = probs.shape[axis]
    spatial = tuple(s for i, s in enumerate(probs.shape) if i != axis)
    if math.prod(spatial) == 0 and tuple(label.shape) == spatial:
        msg = f"`probs` must hold at least one voxel, got shape {tuple(probs.shape)}."
        raise ValueError(msg)
    label = class_labels(label, probs, "probs", axis, xp)
    flat = xp.reshape(xp.moveaxis(probs, axis, -1), (-1, c))
    label = xp.reshape(label, (-1,))
    if mask is not None:
        mask = as_array(mask, "mask")
        check_same_library(mask, "mask", probs_array, "probs")
        check_same_shape("label", xp.reshape(label, spatial), "mask", mask)
        if not xp.isdtype(mask.dtype, "bool"):
            msg = f"`mask` must be a boolean array, got dtype {mask.dtype}."
            raise TypeError(msg)
        keep = xp.reshape(mask, (-1,))
        if not bool(xp.any(keep)):
            msg = "`mask` selects no voxel; at least one is needed."
            raise ValueError(msg)
        flat, label = flat[keep, ...], label[keep]
    return flat, label, c, xp


def _n_bins(n_bins: Any) -> int:
    n_bins = check_positive_int(n_bins, "n_bins")
    return n_bins


def _top_label_bins(flat: Array, label: Array, n_bins: int, binning: str, xp: Namespace) -> CalibrationBins:
    confidence = xp.max(flat, axis=-1)
    correct = xp.argmax(flat, axis=-1) == label
    if binning == "width":
        edges = _equal_width_edges(n_bins)
    elif binning == "mass":
        edges = _equal_mass_edges(to_numpy(confidence), n_bins)
    else:
        msg = f"`binning` must be 'width' or 'mass', got {binning!r}."
        raise ValueError(msg)
    return _bins_of(confidence, correct, edges, xp)


def _class_bins(
    flat: Array, label: Array, classes: Sequence[int], n_bins: int, xp: Namespace
) -> list[CalibrationBins]:
    edges = _equal_width_edges(n_bins)
    return [_bins_of(flat[:, k], label == k, edges, xp) for k in classes]


def _evaluated_classes(c: int, include_background: bool) -> list[int]:
    if not include_background and c < 2:
        msg = "`include_background=False` needs at least 2 classes."
        raise ValueError(msg)
    return list(range(0 if include_background else 1, c))


def brier_nll_sums(flat: Array, label: Array, xp: Namespace) -> tuple[Array, Array]:
    """The sums over voxels of the Brier terms and of the negative log-likelihoods, 0-d arrays of the
    widest float on the device. A building block: ``flat`` (voxels, C) probabilities, ``label`` (voxels,)."""
    wide = float_dtype(xp)
    classes = xp.arange(flat.shape[1], dtype=label.dtype, device=device(label))
    onehot = xp.astype(label[:, None] == classes[None, :], flat.dtype)
    brier = xp.sum(xp.astype(xp.sum((flat - onehot) ** 2, axis=-1), wide))
    p_true = xp.sum(flat * onehot, axis=-1)
    tiny = xp.finfo(flat.dtype).smallest_normal
    nll = xp.sum(xp.astype(-xp.log(xp.maximum(p_true, xp.full_like(p_true, tiny))), wide))
    return brier, nll


def _sums(flat: Array, label: Array, c: int, xp: Namespace) -> tuple[float, float]:
    brier, nll = brier_nll_sums(flat, label, xp)
    return float(brier), float(nll)


# ---------------------------------------------------------------------------------------------- functions


def calibration_bins(
    probs: Array,
    label: Array,
    /,
    *,
    n_bins: int = 15,
    binning: str = "width",
    axis: int = 1,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> CalibrationBins:
    """The reliability statistics of the top-label confidence: counts, mean confidence, accuracy per bin.

    Parameters
    ----------
    probs : array of shape (..., C, ...)
        Class probabilities, the class axis at ``axis``.
    label : integer array
        True labels in ``[0, C)``, the shape of ``probs`` without the class axis.
    n_bins : int, default 15
        The number of bins.
    binning : {"width", "mass"}, default "width"
        Equal-width bins of [0, 1], or equal-mass bins at the quantiles of the confidences, a run of equal
        confidences never split (saturated voxels can make fewer, larger bins). Equal-mass edges depend on
        all the voxels, so only equal-width bins merge across images and shards.
    axis : int, default 1
        The class axis.
    mask : boolean array, optional
        The voxels to evaluate (shape of ``label``), for example a band around the foreground, so that easy
        background does not dominate.

    Returns
    -------
    CalibrationBins

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [1.0, 0.0]])
    >>> bins = calibration_bins(probs, np.array([0, 1, 0, 0]), n_bins=5, axis=-1)
    >>> bins.counts
    array([0, 0, 2, 0, 2])
    >>> bins.accuracy
    array([nan, nan, 0.5, nan, 1. ])
    """
    flat, label, _, xp = calibration_inputs(probs, label, axis, mask, xp)
    return _top_label_bins(flat, label, _n_bins(n_bins), binning, xp)


def expected_calibration_error(
    probs: Array,
    label: Array,
    /,
    *,
    n_bins: int = 15,
    binning: str = "width",
    axis: int = 1,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Expected calibration error of the top-label confidence, ``sum_b (n_b / N) |acc_b - conf_b|``.

    Lower is better; 0 for a calibrated model. The bins are those of
    [`calibration_bins`][selectivekit.calibration_bins] (the same arguments).

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [1.0, 0.0]])
    >>> round(expected_calibration_error(probs, np.array([0, 1, 0, 0]), n_bins=5, axis=-1), 4)
    0.075
    """
    bins = calibration_bins(probs, label, n_bins=n_bins, binning=binning, axis=axis, mask=mask, xp=xp)
    return bins.expected_calibration_error()


def maximum_calibration_error(
    probs: Array,
    label: Array,
    /,
    *,
    n_bins: int = 15,
    binning: str = "width",
    axis: int = 1,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Maximum calibration error ``max_b |acc_b - conf_b|`` over the non-empty bins (lower is better).

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [1.0, 0.0]])
    >>> round(maximum_calibration_error(probs, np.array([0, 1, 0, 0]), n_bins=5, axis=-1), 4)
    0.1
    """
    bins = calibration_bins(probs, label, n_bins=n_bins, binning=binning, axis=axis, mask=mask, xp=xp)
    return bins.maximum_calibration_error()


def classwise_calibration_error(
    probs: Array,
    label: Array,
    /,
    *,
    n_bins: int = 15,
    include_background: bool = True,
    axis: int = 1,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Class-wise ECE: the mean over the evaluated classes ``k`` of the ECE of ``p_k`` against ``1[y = k]``.

    Equal-width bins; ``p_k = 0`` (a saturated voxel of another class) falls in the first bin. With
    ``include_background=False`` class 0 is left out of the mean.

    Examples
    --------
    >>> import numpy as np
    >>> probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> round(classwise_calibration_error(probs, np.array([0, 1, 1]), n_bins=2, axis=-1), 4)
    0.1667
    """
    flat, label, c, xp = calibration_inputs(probs, label, axis, mask, xp)
    bins = _class_bins(flat, label, _evaluated_classes(c, include_background), _n_bins(n_bins), xp)
    return float(np.mean([b.expected_calibration_error() for b in bins]))


def brier_score(
    probs: Array, label: Array, /, *, axis: int = 1, mask: Array | None = None, xp: Namespace | None = None
) -> float:
    """Brier score per voxel, ``(1/N) sum_i sum_c (p_ic - 1[y_i = c])^2``, in [0, 2] (lower is better).

    Examples
    --------
    >>> import numpy as np
    >>> brier_score(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 1]), axis=-1)
    0.25
    """
    flat, label, c, xp = calibration_inputs(probs, label, axis, mask, xp)
    return _sums(flat, label, c, xp)[0] / flat.shape[0]


def negative_log_likelihood(
    probs: Array, label: Array, /, *, axis: int = 1, mask: Array | None = None, xp: Namespace | None = None
) -> float:
    """Mean negative log-likelihood per voxel, ``-(1/N) sum_i log p_{i, y_i}`` (lower is better).

    A probability of exactly 0 for the true class is clipped at the smallest normal number of the dtype
    (a finite, large penalty instead of infinity).

    Examples
    --------
    >>> import numpy as np
    >>> round(negative_log_likelihood(np.array([[0.5, 0.5], [0.25, 0.75]]), np.array([0, 1]), axis=-1), 6)
    0.490415
    """
    flat, label, c, xp = calibration_inputs(probs, label, axis, mask, xp)
    return _sums(flat, label, c, xp)[1] / flat.shape[0]


# ---------------------------------------------------------------------------------------------- streaming

_STATE_FORMAT = "selectivekit.calibration_state"


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """Every calibration metric of the voxels seen by a
    [`CalibrationAccumulator`][selectivekit.CalibrationAccumulator]."""

    expected_calibration_error: float
    """Pooled over every voxel (equal-width bins)."""
    maximum_calibration_error: float
    """Pooled over every voxel."""
    classwise_calibration_error: float
    """Mean of ``classwise`` over the evaluated classes."""
    classwise: dict[int, float]
    """ECE of each evaluated class's probability against its outcome, by class."""
    brier_score: float
    negative_log_likelihood: float
    voxels: int
    """How many voxels were evaluated."""
    bins: CalibrationBins
    """The pooled top-label bins (for a reliability diagram)."""
    per_image_expected_calibration_error: tuple[float, ...]
    """The ECE of each image on its own, in the order of ``update``."""


class CalibrationAccumulator:
    """Calibration metrics over images added one at a time, or over shards merged afterwards.

    Parameters
    ----------
    num_classes : int
        ``C``: the length of the class axis of every ``probs``.
    n_bins : int, default 15
        Equal-width bins (equal-mass bins depend on every voxel at once and do not merge).
    include_background : bool, default True
        Whether class 0 counts in the class-wise ECE.
    axis : int, default 1
        The class axis of ``probs``.

    Notes
    -----
    The state is integer counts and float64 sums per bin, a float64 sum of Brier terms and of negative
    log-likelihoods, and one ECE per image: merging shards gives the pooled numbers of one pass, to the
    rounding of the float64 sums.

    Examples
    --------
    >>> import numpy as np
    >>> acc = CalibrationAccumulator(2, n_bins=5, axis=-1)
    >>> acc.update(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
    >>> acc.update(np.array([[0.6, 0.4], [1.0, 0.0]]), np.array([0, 0]))
    >>> round(acc.compute().expected_calibration_error, 4)
    0.075
    """

    def __init__(
        self, num_classes: int, *, n_bins: int = 15, include_background: bool = True, axis: int = 1
    ) -> None:
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.n_bins = _n_bins(n_bins)
        self.include_background = bool(include_background)
        self.axis = axis
        self._classes = _evaluated_classes(self.num_classes, self.include_background)
        empty = CalibrationBins(
            _equal_width_edges(self.n_bins),
            np.zeros(self.n_bins, np.int64),
            np.zeros(self.n_bins),
            np.zeros(self.n_bins, np.int64),
        )
        self._bins = empty
        self._class_bins = [empty] * len(self._classes)
        self._brier = 0.0
        self._nll = 0.0
        self._voxels = 0
        self._per_image: list[float] = []

    def update(self, probs: Array, label: Array, /, *, mask: Array | None = None) -> None:
        """Add one image: probabilities with ``num_classes`` classes at ``axis`` and its labels."""
        flat, label, c, xp = calibration_inputs(probs, label, self.axis, mask, None)
        if c != self.num_classes:
            msg = f"`probs` must have {self.num_classes} classes on axis {self.axis}, got {c}."
            raise ValueError(msg)
        bins = _top_label_bins(flat, label, self.n_bins, "width", xp)
        self._bins = self._bins.merge(bins)
        self._class_bins = [
            a.merge(b)
            for a, b in zip(
                self._class_bins, _class_bins(flat, label, self._classes, self.n_bins, xp), strict=True
            )
        ]
        brier, nll = _sums(flat, label, c, xp)
        self._brier += brier
        self._nll += nll
        self._voxels += int(flat.shape[0])
        self._per_image.append(bins.expected_calibration_error())

    def merge(self, other: CalibrationAccumulator) -> CalibrationAccumulator:
        """A new accumulator holding the images of both (``other`` after ``self``)."""
        if not isinstance(other, CalibrationAccumulator):
            msg = f"`other` must be a CalibrationAccumulator, got {type(other).__name__}."
            raise TypeError(msg)
        settings = ("num_classes", "n_bins", "include_background")
        if any(getattr(self, k) != getattr(other, k) for k in settings):
            msg = (
                "`other` has other settings (num_classes, n_bins or include_background); they must be equal."
            )
            raise ValueError(msg)
        merged = CalibrationAccumulator(
            self.num_classes, n_bins=self.n_bins, include_background=self.include_background, axis=self.axis
        )
        merged._bins = self._bins.merge(other._bins)
        merged._class_bins = [a.merge(b) for a, b in zip(self._class_bins, other._class_bins, strict=True)]
        merged._brier = self._brier + other._brier
        merged._nll = self._nll + other._nll
        merged._voxels = self._voxels + other._voxels
        merged._per_image = self._per_image + other._per_image
        return merged

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The state as a JSON-able header and named NumPy arrays (no pickle), for
        [`from_arrays`][selectivekit.CalibrationAccumulator.from_arrays]: row 0 of ``counts``, ``sums`` and
        ``correct`` holds the top-label bins, row ``1 + i`` the bins of the ``i``-th evaluated class."""
        rows = [self._bins, *self._class_bins]
        header = {
            "format": _STATE_FORMAT,
            "num_classes": self.num_classes,
            "n_bins": self.n_bins,
            "include_background": self.include_background,
            "axis": self.axis,
        }
        return header, {
            "counts": np.stack([b.counts for b in rows]),
            "sums": np.stack([b.confidence_sums for b in rows]),
            "correct": np.stack([b.correct_counts for b in rows]),
            "scores": np.array([self._brier, self._nll], dtype=np.float64),
            "voxels": np.array(self._voxels, dtype=np.int64),
            "per_image": np.array(self._per_image, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> CalibrationAccumulator:
        """Rebuild an accumulator from [`to_arrays`][selectivekit.CalibrationAccumulator.to_arrays]; a state
        that ``to_arrays`` cannot have written raises ``ValueError``."""
        if not isinstance(header, dict) or header.get("format") != _STATE_FORMAT:
            msg = f"`header` is not a {_STATE_FORMAT} state."
            raise ValueError(msg)
        try:
            acc = cls(
                header["num_classes"],
                n_bins=header["n_bins"],
                include_background=header["include_background"],
                axis=header["axis"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            msg = f"`header` holds settings that are not valid ({exc})."
            raise ValueError(msg) from None
        shape = (1 + len(acc._classes), acc.n_bins)
        counts, sums, correct = (np.asarray(arrays.get(k)) for k in ("counts", "sums", "correct"))
        scores, voxels, per_image = (np.asarray(arrays.get(k)) for k in ("scores", "voxels", "per_image"))
        problem = None
        if counts.shape != shape or sums.shape != shape or correct.shape != shape:
            problem = f"`counts`, `sums` and `correct` must have shape {shape}"
        elif counts.dtype.kind not in "iu" or correct.dtype.kind not in "iu" or sums.dtype.kind != "f":
            problem = "`counts` and `correct` must be integers, `sums` floats"
        elif not (np.all(counts >= 0) and np.all((correct >= 0) & (correct <= counts))):
            problem = "`correct` must lie in [0, counts]"
        elif not np.all(np.isfinite(sums) & (sums >= 0) & (sums <= counts * (1 + 1e-9))):
            problem = "`sums` must lie in [0, counts] (confidences are in [0, 1])"
        elif voxels.shape != () or voxels.dtype.kind not in "iu" or not np.all(counts.sum(axis=1) == voxels):
            problem = "every row of `counts` must sum to `voxels`"
        elif scores.shape != (2,) or not np.all(np.isfinite(scores) & (scores >= 0)):
            problem = "`scores` must hold the Brier and NLL sums, finite and >= 0"
        elif per_image.ndim != 1 or not np.all(np.isnan(per_image) | ((per_image >= 0) & (per_image <= 1))):
            problem = "`per_image` must hold one ECE in [0, 1] per image"
        if problem is not None:
            msg = f"`arrays` do not hold a consistent {_STATE_FORMAT} state: {problem}."
            raise ValueError(msg)
        edges = _equal_width_edges(acc.n_bins)
        rows = [
            CalibrationBins(
                edges, counts[i].astype(np.int64), sums[i].astype(np.float64), correct[i].astype(np.int64)
            )
            for i in range(shape[0])
        ]
        acc._bins, acc._class_bins = rows[0], rows[1:]
        acc._brier, acc._nll = float(scores[0]), float(scores[1])
        acc._voxels = int(voxels)
        acc._per_image = [float(v) for v in per_image]
        return acc

    def compute(self) -> CalibrationResult:
        """The metrics of every voxel added so far (at least one image)."""
        if self._voxels == 0:
            msg = "no image was added: call `update` before `compute`."
            raise ValueError(msg)
        classwise = {
            k: b.expected_calibration_error() for k, b in zip(self._classes, self._class_bins, strict=True)
        }
        return CalibrationResult(
            expected_calibration_error=self._bins.expected_calibration_error(),
            maximum_calibration_error=self._bins.maximum_calibration_error(),
            classwise_calibration_error=float(np.mean(list(classwise.values()))),
            classwise=classwise,
            brier_score=self._brier / self._voxels,
            negative_log_likelihood=self._nll / self._voxels,
            voxels=self._voxels,
            bins=self._bins,
            per_image_expected_calibration_error=tuple(self._per_image),
        )

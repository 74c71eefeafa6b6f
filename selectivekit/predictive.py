"""Uncertainty from several predictions: ensembles, MC dropout, test-time augmentation.

Each of ``S`` predictions of one case is a probability map ``p_s`` over ``C`` classes. From them, per voxel:

- the mean prediction ``pbar = (1/S) sum_s p_s``;
- the total uncertainty, the entropy of the mean ``H(pbar) = -sum_c pbar_c log pbar_c``;
- the aleatoric part, the expected entropy ``EH = (1/S) sum_s H(p_s)``;
- the epistemic part, the mutual information ``MI = H(pbar) - EH >= 0`` (BALD; Houlsby et al. 2011,
  Gal et al. 2017), so that total = aleatoric + epistemic (Depeweg et al. 2018);
- the variance over the samples of the predicted class's probability ``p_s[argmax pbar]`` (ddof 0) and its
  square root (the spread);
- the vote disagreement ``1 - max_c #{s : argmax p_s = c} / S``.

Natural logarithms, ``0 log 0 = 0``. The samples are accumulated one at a time
([`PredictiveAccumulator`][selectivekit.PredictiveAccumulator]), so five 512 x 512 x 300 probability volumes
never sit in memory together: the accumulator keeps the running mean and squared deviations of each class
(Welford's update), the running sum of the entropies and the vote counts, about ``3 C + 1`` maps of one
sample's size. [`predictive_uncertainty`][selectivekit.predictive_uncertainty] takes a stack and feeds the
same accumulator.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from ._lib import (
    as_array,
    check_axis,
    check_same_library,
    device,
    entropy_terms,
    get_namespace,
    non_maximal_mass,
    probs_input,
)
from .typing import Array, Namespace

__all__ = ["UNCERTAINTY_MEASURES", "PredictiveAccumulator", "PredictiveUncertainty", "predictive_uncertainty"]

#: The per-voxel measures by name: what ``PredictiveUncertainty.measure`` and ``--uncertainty-measure`` take.
UNCERTAINTY_MEASURES = (
    "msp",
    "entropy",
    "expected-entropy",
    "mutual-information",
    "variance",
    "standard-deviation",
    "disagreement",
)


@dataclasses.dataclass(frozen=True)
class PredictiveUncertainty:
    """The per-voxel statistics of ``samples`` predictions, each of the maps' shape without the class axis
    (``mean`` keeps it). Higher means less confident for every measure."""

    mean: Array
    """The mean prediction ``pbar``, the shape of one sample."""
    total: Array
    """Predictive entropy ``H(pbar)``."""
    aleatoric: Array
    """Expected entropy ``(1/S) sum_s H(p_s)``."""
    epistemic: Array
    """Mutual information ``H(pbar) - (1/S) sum_s H(p_s)``, clipped at 0 against rounding."""
    variance: Array
    """Variance over the samples of ``p_s[argmax pbar]`` (ddof 0)."""
    disagreement: Array
    """``1 - max_c (votes for c) / S``: 0 when every sample predicts the same class."""
    samples: int
    """How many predictions were combined."""
    axis: int
    """The class axis of ``mean``."""

    @property
    def standard_deviation(self) -> Array:
        """The spread: the square root of ``variance``."""
        return get_namespace(self.variance).sqrt(self.variance)

    @property
    def prediction(self) -> Array:
        """The predicted class ``argmax pbar`` (the first on ties)."""
        return get_namespace(self.mean).argmax(self.mean, axis=self.axis)

    def measure(self, name: str) -> Array:
        """The map of one measure by name: ``"msp"`` (``1 - max pbar``), ``"entropy"`` (total),
        ``"expected-entropy"``, ``"mutual-information"``, ``"variance"``, ``"standard-deviation"`` or
        ``"disagreement"``."""
        if name == "msp":
            return non_maximal_mass(self.mean, self.axis, get_namespace(self.mean))
        fields = {
            "entropy": "total",
            "expected-entropy": "aleatoric",
            "mutual-information": "epistemic",
            "variance": "variance",
            "standard-deviation": "standard_deviation",
            "disagreement": "disagreement",
        }
        if name not in fields:
            msg = f"`name` must be one of {', '.join(UNCERTAINTY_MEASURES)}, got {name!r}."
            raise ValueError(msg)
        return getattr(self, fields[name])


class PredictiveAccumulator:
    """Combine predictions one at a time into [`PredictiveUncertainty`][selectivekit.PredictiveUncertainty].

    Parameters
    ----------
    axis : int, default 1
        The class axis of each prediction (1 for PyTorch's (N, C, H, W); -1 for channels-last).
    tolerance : float, optional
        How far from 1 a prediction's sum over the classes may be (see
        [`max_softmax_uncertainty`][selectivekit.max_softmax_uncertainty]).

    Notes
    -----
    Every prediction must have the same shape, array library and device as the first. The state is the
    running mean ``m`` and sum of squared deviations ``M2`` of each class's probability (Welford: ``d = p -
    m; m += d / s; M2 += d (p - m)``), the running sum of the samples' entropies and the vote counts, in the
    first sample's working dtype (float32 or float64). Feeding the samples in another order changes the
    results only by rounding.

    Examples
    --------
    >>> import numpy as np
    >>> acc = PredictiveAccumulator(axis=-1)
    >>> acc.update(np.array([[0.9, 0.1], [0.5, 0.5]]))
    >>> acc.update(np.array([[0.1, 0.9], [0.5, 0.5]]))
    >>> result = acc.result()
    >>> result.mean
    array([[0.5, 0.5],
           [0.5, 0.5]])
    >>> np.round(result.epistemic, 4)  # the samples disagree on the first voxel only
    array([0.3681, 0.    ])
    >>> result.disagreement
    array([0.5, 0. ])
    """

    def __init__(self, *, axis: int = 1, tolerance: float | None = None) -> None:
        if isinstance(axis, bool) or not isinstance(axis, int):
            msg = f"`axis` must be an integer, got {type(axis).__name__}."
            raise TypeError(msg)
        self._axis = axis
        self._tolerance = tolerance
        self._count = 0
        # per class: the running mean, the sum of squared deviations and the votes (lists of maps, so that
        # an update makes temporaries of one class's size)
        self._mean: list[Array] = []
        self._squares: list[Array] = []
        self._votes: list[Array] = []

    @property
    def samples(self) -> int:
        """How many predictions were added."""
        return self._count

    def update(self, probs: Array, /) -> None:
        """Add one prediction: class probabilities with the class axis at ``axis``."""
        probs = as_array(probs, "probs")
        if self._count:
            self._check_like_first(probs)
        probs, axis, xp = probs_input(probs, self._axis, None, self._tolerance)
        classes = [_take(probs, axis, k) for k in range(probs.shape[axis])]
        top = xp.argmax(probs, axis=axis)
        # one class at a time: the temporaries are maps of one class, not of the whole prediction
        h = entropy_terms(classes[0], xp)  # sum_k p_k log p_k, one class at a time
        for p in classes[1:]:
            h = h + entropy_terms(p, xp)
        if not self._count:
            self._shape, self._dtype, self._class_axis, self._xp = tuple(probs.shape), probs.dtype, axis, xp
            self._device = device(probs)
            self._mean = classes
            self._squares = [xp.zeros_like(p) for p in classes]
            self._entropy_sum = 0.0 - h
            self._votes = [xp.astype(top == k, probs.dtype) for k in range(len(classes))]
            self._count = 1
            return
        n = self._count + 1
        for k, p in enumerate(classes):
            delta = p - self._mean[k]
            self._mean[k] = self._mean[k] + delta / n
            self._squares[k] = self._squares[k] + delta * (p - self._mean[k])
            self._votes[k] = self._votes[k] + xp.astype(top == k, probs.dtype)
        self._entropy_sum = self._entropy_sum - h
        self._count = n

    def _check_like_first(self, probs: Array) -> None:
        check_same_library(probs, "probs", self._mean[0], "the first prediction")
        if tuple(probs.shape) != self._shape:
            got = tuple(probs.shape)
            msg = f"`probs` must have the shape of the first prediction {self._shape}, got {got}."
            raise ValueError(msg)
        if device(probs) != self._device:
            msg = f"`probs` must be on the first prediction's device ({self._device}), got {device(probs)}."
            raise ValueError(msg)

    def result(self) -> PredictiveUncertainty:
        """The statistics of the predictions added so far (at least one)."""
        self._check_any()
        xp, axis, s = self._xp, self._class_axis, self._count
        total = self._total()
        # >= 0 exactly; rounding can dip below
        epistemic = xp.maximum(total - self._aleatoric(), xp.zeros_like(total))
        mean = self.mean()
        return PredictiveUncertainty(
            mean, total, self._aleatoric(), epistemic, self._variance(), self._disagreement(), s, axis
        )

    def mean(self) -> Array:
        """The mean prediction, the shape of one prediction (at least one added)."""
        self._check_any()
        return self._xp.stack(self._mean, axis=self._class_axis)

    def measure(self, name: str) -> Array:
        """One measure's map by name, as
        [`PredictiveUncertainty.measure`][selectivekit.PredictiveUncertainty.measure] gives it, computed
        alone: less memory than ``result()``, which makes every map."""
        self._check_any()
        xp = self._xp
        if name == "msp":
            return non_maximal_mass(self.mean(), self._class_axis, xp)
        if name == "mutual-information":
            total = self._total()
            return xp.maximum(total - self._aleatoric(), xp.zeros_like(total))
        maps = {
            "entropy": self._total,
            "expected-entropy": self._aleatoric,
            "variance": self._variance,
            "standard-deviation": lambda: xp.sqrt(self._variance()),
            "disagreement": self._disagreement,
        }
        if name not in maps:
            msg = f"`name` must be one of {', '.join(UNCERTAINTY_MEASURES)}, got {name!r}."
            raise ValueError(msg)
        return maps[name]()

    def _check_any(self) -> None:
        if self._count == 0:
            msg = "no prediction was added: call `update` with at least one before `result`."
            raise ValueError(msg)

    def _total(self) -> Array:
        xp = self._xp
        total = 0.0 - entropy_terms(self._mean[0], xp)
        for m in self._mean[1:]:
            total = total - entropy_terms(m, xp)
        return total

    def _aleatoric(self) -> Array:
        return self._entropy_sum / self._count

    def _top(self) -> Array:
        """The class of the largest mean probability (the first on ties)."""
        xp = self._xp
        top = xp.zeros(self._mean[0].shape, dtype=xp.int64, device=self._device)
        best = self._mean[0]
        for k, m in enumerate(self._mean[1:], start=1):
            higher = m > best
            top = xp.where(higher, xp.asarray(k, dtype=xp.int64, device=self._device), top)
            best = xp.where(higher, m, best)
        return top

    def _variance(self) -> Array:
        xp = self._xp
        top = self._top()
        zero = xp.zeros_like(self._squares[0])
        variance = zero
        for k, q in enumerate(self._squares):
            variance = variance + xp.where(top == k, q, zero)
        return variance / self._count

    def _disagreement(self) -> Array:
        return 1.0 - functools.reduce(self._xp.maximum, self._votes) / self._count


def _take(x: Array, axis: int, k: int) -> Array:
    """``x`` at index ``k`` of ``axis`` (a view where the library has views)."""
    index: list[Any] = [slice(None)] * x.ndim
    index[axis] = k
    return x[tuple(index)]


def predictive_uncertainty(
    samples: Array, /, *, sample_axis: int = 0, axis: int = 1, xp: Namespace | None = None
) -> PredictiveUncertainty:
    """The statistics of a stack of predictions, one at a time through a
    [`PredictiveAccumulator`][selectivekit.PredictiveAccumulator].

    Parameters
    ----------
    samples : array of shape (S, ...)
        ``S`` probability maps stacked along ``sample_axis``.
    sample_axis : int, default 0
        The axis of the samples.
    axis : int, default 1
        The class axis of each sample *after* the sample axis is removed (1 for a stack of PyTorch's
        (N, C, H, W) outputs of shape (S, N, C, H, W)).

    Returns
    -------
    PredictiveUncertainty

    Examples
    --------
    >>> import numpy as np
    >>> stack = np.array([[[0.9, 0.1]], [[0.6, 0.4]], [[0.3, 0.7]]])  # 3 samples, 1 voxel, 2 classes
    >>> r = predictive_uncertainty(stack, axis=-1)
    >>> round(float(r.total[0] - r.aleatoric[0] - r.epistemic[0]), 12)
    0.0
    >>> r.disagreement
    array([0.33333333])
    """
    samples = as_array(samples, "samples")
    xp = get_namespace(samples, xp=xp)
    if samples.ndim < 2:
        msg = f"`samples` must have a sample axis and a class axis, got {samples.ndim} dimension(s)."
        raise ValueError(msg)
    sample_axis = check_axis(sample_axis, samples.ndim, "sample_axis")
    accumulator = PredictiveAccumulator(axis=axis)
    for s in range(samples.shape[sample_axis]):
        index = [slice(None)] * samples.ndim
        index[sample_axis] = s
        accumulator.update(samples[tuple(index)])
    return accumulator.result()

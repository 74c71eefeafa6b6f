"""Keras 3 metrics ``AURC`` and ``CalibrationError`` for ``model.compile(metrics=[...])`` (TensorFlow, JAX and
PyTorch backends).

The state is two dense vectors over the cells of the default threshold grid of `selectivekit.streaming`
(one cell per bfloat16 value, 65,536 cells): the instance count and the error count per cell. The cell of a
value is computed with the same bit rule as
[`selectivekit.streaming.grid_bins`][selectivekit.streaming.grid_bins], and the result is the
AURC step rule of [`selectivekit.risk_coverage.step_area`][selectivekit.risk_coverage.step_area] over the
occupied cells. Both are restated
with ``keras.ops`` in `selectivekit.adapters._keras_ops` because ``update_state``/``result`` run inside
compiled graphs, where NumPy and the array API are not available; the tests check them against the core.

The counts are int32 pairs (a low part below ``2**20`` and a high part; ``_keras_ops.add_split_counts``),
the same on every backend: JAX without 64-bit mode has neither int64 nor float64, and a float32 count
stops growing at ``2**24``. They are exact up to ``2**51`` instances per cell, with fewer than ``2**31 -
2**20`` instances per ``update_state`` call. The result is computed from them in float64, or in float32 under
JAX without 64-bit mode (the counts stay exact; the result has float32 rounding, about 1e-7 relative).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from .._lib import check_positive_int, target_layout
from ..calibration import CalibrationBins
from ..streaming import BFLOAT16_BINS
from ._keras_ops import (
    add_split_counts,
    bfloat16_cells,
    has_float64,
    split_count_value,
    step_area_of_cells,
    uncertainty,
    uncertainty_from_logits,
)

__all__ = ["AURC", "CalibrationError", "uncertainty_from_logits"]


@keras.saving.register_keras_serializable(package="selectivekit")
class AURC(keras.metrics.Metric):
    """Area under the risk-coverage curve of a segmentation or classification model (lower is better).

    Uncertainty is ``1 - max softmax`` of the logits (computed without cancellation), correctness is
    ``argmax == label``; every pixel/voxel is one instance, and one threshold applies to the whole
    evaluation set.

    Parameters
    ----------
    name : str, default "aurc"
        Metric name in logs.
    from_logits : bool, default True
        ``y_pred`` holds logits, or probabilities (``u`` is then the sum of the non-max probabilities,
        which equals ``1 - max p`` without its rounding near 1).
    **kwargs
        Passed to `keras.metrics.Metric`.

    Notes
    -----
    ``update_state(y_true, y_pred, sample_weight=None)``: ``y_pred`` are logits of shape (..., K)
    (channels-last, at least a batch and a class axis); ``y_true`` holds integer labels of shape (...) or
    (..., 1), or one-hot labels of shape (..., K). A ``sample_weight`` broadcastable to (...) acts as a
    mask: instances with weight 0 are ignored. The result equals
    [`selectivekit.streaming.RiskCoverageAccumulator.aurc`][selectivekit.RiskCoverageAccumulator.aurc] on its
    grid path (``max_memory=0``) on the same uncertainties:
    exact for bfloat16-representable ``u``, otherwise each grid cell is one operating point.

    The counts are exact up to ``2**51`` instances per grid cell on every backend (JAX's 32-bit mode
    included); the result is float64, or float32 under JAX without 64-bit mode. The metric is registered
    for Keras serialization: a model saved with it (``model.save``) loads with ``keras.models.load_model``.

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    >>> import numpy as np
    >>> metric = AURC()
    >>> logits = np.array([[4.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.5, 0.0]], dtype="float32")
    >>> metric.update_state(np.array([0, 0, 0, 1]), logits)
    >>> round(float(metric.result()), 6)
    0.208333
    """

    def __init__(self, name: str = "aurc", *, from_logits: bool = True, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.from_logits = bool(from_logits)
        self.n_bins = BFLOAT16_BINS
        # row 0: instances per cell, row 1: errors per cell; each count is high * 2**20 + low
        self.low = self.add_variable(shape=(2, self.n_bins), initializer="zeros", dtype="int32", name="low")
        self.high = self.add_variable(shape=(2, self.n_bins), initializer="zeros", dtype="int32", name="high")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        scores = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        rank = len(scores.shape)
        if rank < 2:
            msg = (
                "`y_pred` must have a batch and a class axis, shape (batch, ..., classes), "
                f"got shape {tuple(scores.shape)}."
            )
            raise ValueError(msg)
        layout = target_layout(scores.shape, y_true.shape, rank - 1, "y_true")
        if layout == "one_hot":
            y_true = ops.argmax(y_true, axis=-1)
        elif layout == "indices_with_axis":
            y_true = ops.squeeze(y_true, axis=-1)
        u = ops.reshape(uncertainty(scores, -1, self.from_logits), (-1,))
        pred = ops.reshape(ops.argmax(scores, axis=-1), (-1,))
        wrong = ops.cast(ops.not_equal(pred, ops.cast(ops.reshape(y_true, (-1,)), pred.dtype)), "int32")
        weight = ops.ones_like(wrong)
        if sample_weight is not None:
            sw = ops.broadcast_to(ops.convert_to_tensor(sample_weight), ops.shape(scores)[:-1])
            weight = ops.cast(ops.not_equal(ops.reshape(sw, (-1,)), 0), "int32")
        cells = ops.cast(bfloat16_cells(u), "int32")
        batch = ops.stack(
            [
                ops.segment_sum(weight, cells, num_segments=self.n_bins),
                ops.segment_sum(weight * wrong, cells, num_segments=self.n_bins),
            ]
        )
        low, high = add_split_counts(ops.convert_to_tensor(self.low), ops.convert_to_tensor(self.high), batch)
        self.low.assign(low)
        self.high.assign(high)

    def result(self) -> Any:
        counts = split_count_value(
            ops.convert_to_tensor(self.low),
            ops.convert_to_tensor(self.high),
            "float64" if has_float64() else "float32",
        )
        return step_area_of_cells(counts[0], counts[1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="selectivekit")
class CalibrationError(keras.metrics.Metric):
    """Calibration of voxel probabilities: the expected calibration error over equal-width bins (lower is
    better), with MCE, class-wise ECE, Brier score and NLL from ``values()``.

    Parameters
    ----------
    num_classes : int
        ``C``, the length of the last axis of ``y_pred``.
    n_bins : int, default 15
        Equal-width bins: bin ``b`` holds the confidences in ``(b/B, (b+1)/B]``, the first also 0, as in
        [`selectivekit.calibration_bins`][selectivekit.calibration_bins].
    include_background : bool, default True
        Whether class 0 counts in the class-wise ECE.
    from_logits : bool, default False
        ``y_pred`` holds logits (a softmax is applied) instead of probabilities.
    name : str, default "calibration_error"
        Metric name in logs.

    Notes
    -----
    ``update_state(y_true, y_pred, sample_weight=None)`` takes channels-last ``y_pred`` (..., C) and labels
    as [`AURC`][selectivekit.adapters.keras_metrics.AURC] does; a ``sample_weight`` is a mask (weight 0:
    left out). The state is the bin counts (exact int32 pairs, as ``AURC``'s) and float sums per bin, for the
    top label and for each class, and the sums of the Brier terms and of the NLL: the result over batches is
    that of [`CalibrationAccumulator`][selectivekit.CalibrationAccumulator] over the same voxels. The
    confidences are binned in float64 where the backend has it; under JAX without 64-bit mode in float32,
    where a confidence within rounding of a bin edge can fall in the neighbouring bin.

    Examples
    --------
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    >>> import numpy as np
    >>> metric = CalibrationError(2, n_bins=5)
    >>> metric.update_state(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]], dtype="float32"))
    >>> metric.update_state(np.array([0, 0]), np.array([[0.6, 0.4], [1.0, 0.0]], dtype="float32"))
    >>> round(float(metric.result()), 4)
    0.075
    """

    def __init__(
        self,
        num_classes: int,
        *,
        n_bins: int = 15,
        include_background: bool = True,
        from_logits: bool = False,
        name: str = "calibration_error",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.n_bins = check_positive_int(n_bins, "n_bins")
        if not include_background and self.num_classes < 2:
            msg = "`include_background=False` needs at least 2 classes."
            raise ValueError(msg)
        self.include_background = bool(include_background)
        self.from_logits = bool(from_logits)
        self.classes = list(range(0 if include_background else 1, self.num_classes))
        wide = "float64" if has_float64() else "float32"
        rows = 1 + len(self.classes)  # row 0: the top label; then one row per evaluated class
        # per bin: voxel counts and outcome counts as exact int32 pairs, and the sum of the confidences
        self.low = self.add_variable(
            shape=(2, rows, self.n_bins), initializer="zeros", dtype="int32", name="low"
        )
        self.high = self.add_variable(
            shape=(2, rows, self.n_bins), initializer="zeros", dtype="int32", name="high"
        )
        self.sums = self.add_variable(shape=(rows, self.n_bins), initializer="zeros", dtype=wide, name="sums")
        self.scores = self.add_variable(
            shape=(2,), initializer="zeros", dtype=wide, name="scores"
        )  # Brier, NLL

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        wide = "float64" if has_float64() else "float32"
        probs = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(probs.shape) < 2 or probs.shape[-1] != self.num_classes:
            msg = f"`y_pred` must have shape (batch, ..., {self.num_classes}), got {tuple(probs.shape)}."
            raise ValueError(msg)
        layout = target_layout(probs.shape, y_true.shape, len(probs.shape) - 1, "y_true")
        if layout == "one_hot":
            y_true = ops.argmax(y_true, axis=-1)
        elif layout == "indices_with_axis":
            y_true = ops.squeeze(y_true, axis=-1)
        given = keras.backend.standardize_dtype(probs.dtype)
        # the floor of p_true in the NLL is the smallest normal of the working dtype, as in the core
        tiny = float(np.finfo("float64" if given == "float64" else "float32").smallest_normal)
        probs = ops.cast(probs, wide)
        if self.from_logits:
            probs = ops.softmax(probs, axis=-1)
        flat = ops.reshape(probs, (-1, self.num_classes))
        label = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        keep = ops.ones_like(label)
        if sample_weight is not None:
            weight = ops.broadcast_to(ops.convert_to_tensor(sample_weight), ops.shape(probs)[:-1])
            keep = ops.cast(ops.not_equal(ops.reshape(weight, (-1,)), 0), "int32")
        onehot = ops.one_hot(label, self.num_classes, dtype=wide)
        # ops.take makes each class a contiguous copy (PyTorch warns on a strided searchsorted)
        confidences = [ops.max(flat, axis=-1), *(ops.take(flat, k, axis=1) for k in self.classes)]
        outcomes = [ops.equal(ops.cast(ops.argmax(flat, axis=-1), "int32"), label)]
        outcomes += [ops.equal(label, k) for k in self.classes]
        edges = ops.cast(ops.arange(self.n_bins + 1), wide) / self.n_bins
        counts, hits, sums = [], [], []
        for confidence, outcome in zip(confidences, outcomes, strict=True):
            # searchsorted "left": edges[b] < c <= edges[b + 1] is bin b; c == 0 goes to the first bin
            cell = ops.clip(ops.searchsorted(edges, confidence, side="left") - 1, 0, self.n_bins - 1)
            cell = ops.cast(cell, "int32")
            counts.append(ops.segment_sum(keep, cell, num_segments=self.n_bins))
            hits.append(ops.segment_sum(keep * ops.cast(outcome, "int32"), cell, num_segments=self.n_bins))
            sums.append(ops.segment_sum(ops.cast(keep, wide) * confidence, cell, num_segments=self.n_bins))
        low, high = add_split_counts(
            ops.convert_to_tensor(self.low),
            ops.convert_to_tensor(self.high),
            ops.stack([ops.stack(counts), ops.stack(hits)]),
        )
        self.low.assign(low)
        self.high.assign(high)
        self.sums.assign(ops.convert_to_tensor(self.sums) + ops.stack(sums))
        weight = ops.cast(keep, wide)
        brier = ops.sum(weight * ops.sum((flat - onehot) ** 2, axis=-1))
        nll = ops.sum(weight * -ops.log(ops.maximum(ops.sum(flat * onehot, axis=-1), tiny)))
        self.scores.assign(ops.convert_to_tensor(self.scores) + ops.stack([brier, nll]))

    def _bins(self) -> list[CalibrationBins]:
        counts = split_count_value(
            ops.convert_to_tensor(self.low),
            ops.convert_to_tensor(self.high),
            "float64" if has_float64() else "float32",
        )
        counts = np.asarray(ops.convert_to_numpy(counts), dtype=np.float64)
        sums = np.asarray(ops.convert_to_numpy(self.sums), dtype=np.float64)
        edges = np.arange(self.n_bins + 1, dtype=np.float64) / self.n_bins
        return [
            CalibrationBins(
                edges, counts[0, row].astype(np.int64), sums[row], counts[1, row].astype(np.int64)
            )
            for row in range(counts.shape[1])
        ]

    def values(self) -> dict[str, float]:
        """Every metric, as Python floats (NaN before any update): ``expected_calibration_error``,
        ``maximum_calibration_error``, ``classwise_calibration_error``, ``brier_score``,
        ``negative_log_likelihood``; outside compiled code (reads the state)."""
        top, *per_class = self._bins()
        voxels = int(top.counts.sum())
        brier, nll = (float(v) for v in ops.convert_to_numpy(self.scores))
        nan = float("nan")
        return {
            "expected_calibration_error": top.expected_calibration_error(),
            "maximum_calibration_error": top.maximum_calibration_error(),
            "classwise_calibration_error": (
                float(np.mean([b.expected_calibration_error() for b in per_class])) if voxels else nan
            ),
            "brier_score": brier / voxels if voxels else nan,
            "negative_log_likelihood": nll / voxels if voxels else nan,
        }

    def result(self) -> Any:
        counts = split_count_value(
            ops.convert_to_tensor(self.low)[:, 0],
            ops.convert_to_tensor(self.high)[:, 0],
            "float64" if has_float64() else "float32",
        )
        n, correct = counts[0], counts[1]
        total = ops.sum(n)
        gap = ops.sum(ops.abs(correct - ops.convert_to_tensor(self.sums)[0]))
        return ops.where(total > 0, gap / ops.maximum(total, 1.0), 0.0)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "n_bins": self.n_bins,
            "include_background": self.include_background,
            "from_logits": self.from_logits,
        }

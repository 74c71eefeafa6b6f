"""Keras 3 metric ``AURC`` for ``model.compile(metrics=[...])`` (TensorFlow, JAX and PyTorch backends).

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
from keras import ops

from .._lib import target_layout
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

__all__ = ["AURC", "uncertainty_from_logits"]


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

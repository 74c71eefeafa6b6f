"""Keras 3 metric ``AURC`` for ``model.compile(metrics=[...])`` (any backend; channels-last logits).

The state is two dense vectors over the cells of the default threshold grid of `selectivekit.streaming`
(one cell per bfloat16 value, 65,536 cells): the instance count and the error count per cell. The cell of a
value is computed with the same bit rule as
[`selectivekit.streaming.grid_bins`][selectivekit.streaming.grid_bins], and the result is the
AURC step rule of [`selectivekit.risk_coverage.step_area`][selectivekit.risk_coverage.step_area] over the
occupied cells. Both are restated
with ``keras.ops`` in `selectivekit.adapters._keras_ops` because ``update_state``/``result`` run inside
compiled graphs, where NumPy and the array API are not available; the tests check them against the core.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from ..streaming import BFLOAT16_BINS
from ._keras_ops import bfloat16_cells, step_area_of_cells, uncertainty_from_logits

__all__ = ["AURC", "uncertainty_from_logits"]


class AURC(keras.metrics.Metric):
    """Area under the risk-coverage curve of a segmentation or classification model (lower is better).

    Uncertainty is ``1 - max softmax`` of the logits (computed without cancellation), correctness is
    ``argmax == label``; every pixel/voxel is one instance, and one threshold applies to the whole
    evaluation set.

    Parameters
    ----------
    name : str, default "aurc"
        Metric name in logs.
    **kwargs
        Passed to `keras.metrics.Metric`.

    Notes
    -----
    ``update_state(y_true, y_pred, sample_weight=None)``: ``y_pred`` are logits of shape (..., K)
    (channels-last); ``y_true`` holds integer labels of shape (...) or (..., 1), or one-hot labels of shape
    (..., K). A ``sample_weight`` broadcastable to (...) acts as a mask: instances with weight 0 are ignored.
    The result equals
    [`selectivekit.streaming.RiskCoverageAccumulator.aurc`][selectivekit.RiskCoverageAccumulator.aurc] on the
    same uncertainties:
    exact for bfloat16-representable ``u``, otherwise each grid cell is one operating point.

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

    def __init__(self, name: str = "aurc", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.n_bins = BFLOAT16_BINS
        self.count = self.add_variable(
            shape=(self.n_bins,), initializer="zeros", dtype="float64", name="count"
        )
        self.errors = self.add_variable(
            shape=(self.n_bins,), initializer="zeros", dtype="float64", name="errors"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        logits = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(logits.shape):
            if y_true.shape[-1] == 1 and logits.shape[-1] != 1:
                y_true = ops.squeeze(y_true, axis=-1)
            else:
                y_true = ops.argmax(y_true, axis=-1)
        u = ops.reshape(uncertainty_from_logits(logits, axis=-1), (-1,))
        pred = ops.reshape(ops.argmax(logits, axis=-1), (-1,))
        wrong = ops.cast(ops.not_equal(pred, ops.cast(ops.reshape(y_true, (-1,)), pred.dtype)), "float64")
        weight = ops.ones_like(wrong)
        if sample_weight is not None:
            sw = ops.broadcast_to(ops.convert_to_tensor(sample_weight), ops.shape(logits)[:-1])
            weight = ops.cast(ops.not_equal(ops.reshape(sw, (-1,)), 0), "float64")
        cells = ops.cast(bfloat16_cells(u), "int32")
        self.count.assign_add(ops.segment_sum(weight, cells, num_segments=self.n_bins))
        self.errors.assign_add(ops.segment_sum(weight * wrong, cells, num_segments=self.n_bins))

    def result(self) -> Any:
        return step_area_of_cells(ops.convert_to_tensor(self.count), ops.convert_to_tensor(self.errors))

    def reset_state(self) -> None:
        self.count.assign(ops.zeros_like(self.count))
        self.errors.assign(ops.zeros_like(self.errors))

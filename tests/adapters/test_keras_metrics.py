"""Keras AURC metric: equal to the core on the same uncertainties, usable in model.compile/fit/evaluate."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import selectivekit as sk  # noqa: E402
from selectivekit.adapters.keras_metrics import AURC, uncertainty_from_logits  # noqa: E402
from selectivekit.streaming import RiskCoverageAccumulator  # noqa: E402


def _data(seed=0, shape=(4, 6, 5), k=3):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(*shape, k)) * 3).astype(np.float32)
    labels = rng.integers(0, k, size=shape)
    return labels, logits


@pytest.mark.parametrize("label_format", ["int", "trailing1", "onehot"])
def test_aurc_equals_streaming_and_core(label_format):
    labels, logits = _data(1)
    y_true = {"int": labels, "trailing1": labels[..., None], "onehot": np.eye(3)[labels]}[label_format]
    metric = AURC()
    metric.update_state(y_true[:2], logits[:2])
    metric.update_state(y_true[2:], logits[2:])
    u = np.asarray(uncertainty_from_logits(logits))
    correct = logits.argmax(-1) == labels
    acc = RiskCoverageAccumulator(max_memory=0)  # the Keras metric works on the grid
    acc.update(u, correct)
    assert float(metric.result()) == pytest.approx(acc.aurc(), abs=1e-12)
    # the bfloat16 grid changes the exact AURC only through ties inside a cell
    assert float(metric.result()) == pytest.approx(sk.aurc(u, correct), abs=2e-2)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_sample_weight_masks_instances():
    labels, logits = _data(2)
    mask = np.random.default_rng(0).random(labels.shape) < 0.6
    metric = AURC()
    metric.update_state(labels, logits, sample_weight=mask.astype("float32"))
    u = np.asarray(uncertainty_from_logits(logits))
    acc = RiskCoverageAccumulator(max_memory=0)  # the Keras metric works on the grid
    acc.update(u, logits.argmax(-1) == labels, mask=mask)
    assert float(metric.result()) == pytest.approx(acc.aurc(), abs=1e-12)


def test_in_model_compile_fit_evaluate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    y = (x[..., 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(2, 3, padding="same")])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[AURC()],
    )
    before = model.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)  # partial last batch
    assert np.isfinite(before["aurc"])
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["aurc"][0])
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    logits = model.predict(x, batch_size=16, verbose=0)
    u = np.asarray(uncertainty_from_logits(logits))
    acc = RiskCoverageAccumulator(max_memory=0)  # the Keras metric works on the grid
    acc.update(u, logits.argmax(-1) == y)
    assert logs["aurc"] == pytest.approx(acc.aurc(), abs=1e-5)

"""Keras AURC metric: equal to the core on the same uncertainties, usable in model.compile/fit/evaluate/save.

Runs on the backend that ``KERAS_BACKEND`` selects (TensorFlow by default); ``test_keras_backends.py`` runs
this module again under JAX (32-bit mode, as JAX starts) and PyTorch, each in its own process.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

keras = pytest.importorskip("keras")
BACKEND = keras.backend.backend()
pytest.importorskip(BACKEND)

import selectivekit as sk  # noqa: E402
from selectivekit.adapters import _keras_ops  # noqa: E402
from selectivekit.adapters.keras import UncertaintyAwareLoss  # noqa: E402
from selectivekit.adapters.keras_metrics import AURC, uncertainty_from_logits  # noqa: E402
from selectivekit.streaming import RiskCoverageAccumulator  # noqa: E402

# the result is float64, or float32 under JAX's 32-bit mode (the counts are exact either way)
ABS = 1e-12 if _keras_ops.has_float64() else 1e-6


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
    metric.reset_state()  # JAX: failed on the float64 state ("Could not convert <Variable ...>")
    metric.update_state(y_true[:2], logits[:2])
    metric.update_state(y_true[2:], logits[2:])
    u = np.asarray(uncertainty_from_logits(logits))
    correct = logits.argmax(-1) == labels
    acc = RiskCoverageAccumulator(max_memory=0)  # the Keras metric works on the grid
    acc.update(u, correct)
    assert float(metric.result()) == pytest.approx(acc.aurc(), abs=ABS)
    # the bfloat16 grid changes the exact AURC only through ties inside a cell
    assert float(metric.result()) == pytest.approx(sk.aurc(u, correct), abs=2e-2)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_from_probabilities_sums_the_non_max_probabilities():
    labels, logits = _data(3)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    probs[0, 0, 0] = [1 - 1e-9, 6e-10, 4e-10]  # saturated: 1 - max p is 0 in float32, the sum is not
    metric = AURC(from_logits=False)
    metric.update_state(labels, probs)
    u = sk.max_softmax_uncertainty(probs, axis=-1)
    assert u[0, 0, 0] > 0
    acc = RiskCoverageAccumulator(max_memory=0)  # its bfloat16 grid, as the metric
    acc.update(u, probs.argmax(-1) == labels)
    assert float(metric.result()) == pytest.approx(acc.aurc(), abs=ABS)


def test_sample_weight_masks_instances():
    labels, logits = _data(2)
    mask = np.random.default_rng(0).random(labels.shape) < 0.6
    metric = AURC()
    metric.update_state(labels, logits, sample_weight=mask.astype("float32"))
    u = np.asarray(uncertainty_from_logits(logits))
    acc = RiskCoverageAccumulator(max_memory=0)  # the Keras metric works on the grid
    acc.update(u, logits.argmax(-1) == labels, mask=mask)
    assert float(metric.result()) == pytest.approx(acc.aurc(), abs=ABS)


def _counts(metric):
    """The exact counts of the state, in NumPy int64: row 0 instances, row 1 errors per cell."""
    low, high = (
        np.asarray(keras.ops.convert_to_numpy(v)).astype(np.int64) for v in (metric.low, metric.high)
    )
    return high * 2**_keras_ops.COUNT_BITS + low


def test_counts_stay_exact_beyond_float32_and_int32():
    """A float32 count stops at 2**24 (all JAX's 32-bit mode had); the split int32 counts go on."""
    metric = AURC()
    logits = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=np.float32)  # one u, so one cell
    labels = np.zeros(3, dtype=np.int64)  # the third instance is wrong
    u = keras.ops.convert_to_numpy(uncertainty_from_logits(logits))
    cell = int(keras.ops.convert_to_numpy(_keras_ops.bfloat16_cells(u))[0])
    bits = _keras_ops.COUNT_BITS
    for start in (2**24, 2**33 + 5):  # beyond float32's consecutive integers, then beyond int32
        low = np.zeros((2, metric.n_bins), dtype=np.int32)
        high = np.zeros((2, metric.n_bins), dtype=np.int32)
        low[:, cell], high[:, cell] = start % 2**bits, start // 2**bits
        metric.low.assign(low)
        metric.high.assign(high)
        metric.update_state(labels, logits)
        counts = _counts(metric)
        assert counts[0, cell] == start + 3 and counts[1, cell] == start + 1
        assert np.count_nonzero(counts) == 2


def test_add_split_counts_is_exact_integer_addition():
    rng = np.random.default_rng(4)
    bits = _keras_ops.COUNT_BITS
    count = rng.integers(0, 2**45, size=1000)
    batch = rng.integers(0, 2**30, size=1000)
    low, high = (count % 2**bits).astype(np.int32), (count // 2**bits).astype(np.int32)
    new_low, new_high = _keras_ops.add_split_counts(
        keras.ops.convert_to_tensor(low),
        keras.ops.convert_to_tensor(high),
        keras.ops.convert_to_tensor(batch.astype(np.int32)),
    )
    new_low, new_high = (
        np.asarray(keras.ops.convert_to_numpy(t)).astype(np.int64) for t in (new_low, new_high)
    )
    assert np.all((new_low >= 0) & (new_low < 2**bits))
    np.testing.assert_array_equal(new_high * 2**bits + new_low, count + batch)


def test_rejects_inputs_without_a_class_axis():
    metric = AURC()
    with pytest.raises(ValueError, match="`y_pred` must have a batch and a class axis"):
        metric.update_state(np.array([0, 1, 0]), np.array([0.2, 0.9, 0.1], dtype=np.float32))
    labels, logits = _data(5)
    with pytest.raises(ValueError, match="`y_true` must have shape"):
        metric.update_state(labels[:, :3], logits)


def _model_and_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    y = (x[..., 0] > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(2, 3, padding="same")])
    return model, x, y


def test_in_model_compile_fit_evaluate():
    model, x, y = _model_and_data()
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


def test_model_save_and_load_with_the_loss_and_the_metric(tmp_path):
    """``model.save`` / ``keras.models.load_model`` with both classes (failed: AURC was not registered)."""
    model, x, y = _model_and_data()
    loss = UncertaintyAwareLoss(warmup=0, ramp=0, weight=10.0, margin=0.2, ignore_class=-1)
    model.compile(optimizer="adam", loss=loss, metrics=[AURC(name="my_aurc")])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, UncertaintyAwareLoss)
    assert loaded.loss.get_config() == loss.get_config()
    again = loaded.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert set(again) == set(logs) == {"loss", "my_aurc"}
    for key in logs:
        assert again[key] == pytest.approx(logs[key], rel=1e-6)
    restored = keras.metrics.deserialize(keras.metrics.serialize(AURC(from_logits=False)))
    assert isinstance(restored, AURC) and restored.from_logits is False


# --- CalibrationError ---------------------------------------------------------------------------------------


def test_calibration_error_equals_the_accumulator():
    from selectivekit.adapters.keras_metrics import CalibrationError

    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(3, 7, 6, 4)) * 3).astype(np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    probs[0, 0, 0] = [1.0, 0.0, 0.0, 0.0]  # saturated: a confidence of exactly 1 in the last bin
    probs[0, 0, 1] = [0.4, 0.2, 0.2, 0.2]  # on a bin edge (0.4 = 6/15)
    labels = rng.integers(0, 4, size=(3, 7, 6))
    weight = (rng.random((3, 7, 6)) < 0.8).astype(np.float32)
    for include_background in (True, False):
        metric = CalibrationError(4, include_background=include_background)
        metric.reset_state()
        metric.update_state(labels[:2], probs[:2], sample_weight=weight[:2])
        metric.update_state(np.eye(4)[labels[2:]], probs[2:], sample_weight=weight[2:])
        accumulator = sk.CalibrationAccumulator(4, include_background=include_background, axis=-1)
        for i in range(3):
            accumulator.update(probs[i], labels[i], mask=weight[i] > 0)
        want = accumulator.compute()
        got = metric.values()
        tol = dict(rel=1e-6, abs=1e-9) if _keras_ops.has_float64() else dict(rel=1e-4, abs=1e-6)
        assert float(metric.result()) == pytest.approx(want.expected_calibration_error, **tol)
        assert got["expected_calibration_error"] == pytest.approx(want.expected_calibration_error, **tol)
        assert got["maximum_calibration_error"] == pytest.approx(want.maximum_calibration_error, **tol)
        assert got["classwise_calibration_error"] == pytest.approx(want.classwise_calibration_error, **tol)
        assert got["brier_score"] == pytest.approx(want.brier_score, **tol)
        assert got["negative_log_likelihood"] == pytest.approx(want.negative_log_likelihood, **tol)
        if _keras_ops.has_float64():  # float32 binning may move the edge voxel by one bin
            np.testing.assert_array_equal(metric._bins()[0].counts, want.bins.counts)


def test_calibration_error_from_logits_in_fit_and_config():
    from selectivekit.adapters.keras_metrics import CalibrationError

    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 4, 4, 2)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(2, 1)])
    metric = CalibrationError(2, from_logits=True, n_bins=10)
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[metric]
    )
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    logits = np.asarray(model.predict(x, verbose=0))
    assert 0.0 <= history.history["calibration_error"][-1] <= 1.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    metric.reset_state()
    metric.update_state(y, logits)
    want = sk.expected_calibration_error(probs, y, n_bins=10, axis=-1)
    assert float(metric.result()) == pytest.approx(want, rel=1e-4, abs=1e-6)
    clone = CalibrationError.from_config(metric.get_config())
    assert (clone.num_classes, clone.n_bins, clone.from_logits) == (2, 10, True)
    with pytest.raises(ValueError, match=r"`y_pred` must have shape \(batch, \.\.\., 2\)"):
        metric.update_state(y, np.zeros((16, 4, 4, 3), np.float32))

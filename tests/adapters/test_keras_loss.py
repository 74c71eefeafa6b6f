"""Keras 3 adapter of the uncertainty loss: all-pairs references, the core, compiled graphs, fit.

Runs on the backend that ``KERAS_BACKEND`` selects (TensorFlow by default); ``test_keras_backends.py`` runs
this module again under JAX and PyTorch, each in its own process.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")
BACKEND = keras.backend.backend()
pytest.importorskip(BACKEND)

import selectivekit as sk  # noqa: E402
from selectivekit.adapters import _keras_ops  # noqa: E402
from selectivekit.adapters.keras import (  # noqa: E402
    UncertaintyAwareLoss,
    UncertaintyMarginLoss,
    uncertainty_margin_loss,
)
from selectivekit.loss import uncertainty_margin_loss as core_loss  # noqa: E402
from selectivekit.uncertainty import max_softmax_uncertainty, uncertainty_from_logits  # noqa: E402
from tests.conftest import JAX_SIZES  # noqa: E402
from tests.test_loss import all_pairs_reference, grid_batches  # noqa: E402

SMALL = settings(max_examples=25)  # TensorFlow calls are slow; the core and torch suites go wider
# JAX compiles each operation again for every new input shape (about a second a shape for this loss, most
# of this module's time under JAX): there the property tests draw their batch sizes from a few, shared by
# every test, and reuse what was compiled; the other backends draw any size
SIZES = JAX_SIZES if BACKEND == "jax" else None


@pytest.fixture(params=["float64_keys", "tie_groups"])
def kernel(request, monkeypatch):
    """The float64-key kernel (TF, torch, JAX x64) and the float32 tie-group kernel (JAX x32), both run."""
    monkeypatch.setattr(_keras_ops, "FLOAT64_KEYS", request.param == "float64_keys")
    return request.param


def gradient_fns(fn):
    """``x (NumPy) -> (value, gradient)`` of the scalar ``fn`` on the backend: eager, then compiled.

    TensorFlow: a tape, in ``tf.function`` and with XLA; JAX: ``value_and_grad`` and under ``jax.jit``;
    PyTorch: autograd (eager only: Keras compiles torch steps with ``torch.compile``, not tested here).
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = fn(x)
            return loss, tape.gradient(loss, x)

        steps = [step, tf.function(step), tf.function(step, jit_compile=True)]
        return [lambda x, s=s: tuple(np.asarray(t) for t in s(tf.constant(x))) for s in steps]
    if BACKEND == "jax":
        import jax

        steps = [jax.value_and_grad(fn), jax.jit(jax.value_and_grad(fn))]
        return [lambda x, s=s: tuple(np.asarray(t) for t in s(jax.numpy.asarray(x))) for s in steps]
    import torch

    def torch_step(x):
        leaf = torch.tensor(x, requires_grad=True)
        loss = fn(leaf)
        loss.backward()
        return loss.detach().numpy(), leaf.grad.numpy()

    return [torch_step]


def value_and_grad(u, correct, **kwargs):
    x = np.asarray(u, dtype=np.float32)
    value, grad = gradient_fns(lambda t: uncertainty_margin_loss(t, correct, **kwargs))[0](x)
    return float(value), grad


@SMALL
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(max_size=40, sizes=SIZES))
def test_exact_equals_all_pairs(kernel, reduction, batch):
    u, correct, margin = batch  # dyadic values: exact in float32, heavy ties
    expected, expected_grad = all_pairs_reference(u, correct, margin, reduction)
    value, grad = value_and_grad(u, correct, margin=margin, reduction=reduction)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-7)


def test_exact_on_a_larger_batch_and_compiled(kernel):
    rng = np.random.default_rng(0)
    u = (np.floor(rng.random(3000) * 50) / 64).astype(np.float32)  # many ties
    correct = rng.random(3000) < 0.9
    mask = rng.random(3000) < 0.95
    expected, expected_grad = all_pairs_reference(u[mask], correct[mask], 0.125, "mean")

    for step in gradient_fns(lambda x: uncertainty_margin_loss(x, correct, margin=0.125, mask=mask)):
        loss, grad = step(u)
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        np.testing.assert_allclose(grad[mask], expected_grad, rtol=1e-5, atol=1e-12)
        assert np.all(grad[~mask] == 0)


@pytest.mark.parametrize("which", ["all_correct", "all_wrong", "mask_empty"])
@pytest.mark.parametrize("pairs", ["exact", "sampled"])
def test_empty_side_gives_zero_with_zero_gradient(kernel, which, pairs):
    u = np.array([0.5, 0.1, 0.9, 0.3], dtype=np.float32)
    correct = np.array([which == "all_correct"] * 4) if which != "mask_empty" else np.array([1, 0, 1, 0])
    mask = np.zeros(4, dtype=bool) if which == "mask_empty" else None
    for reduction in ("sum", "mean"):
        value, grad = value_and_grad(u, correct, reduction=reduction, pairs=pairs, mask=mask, seed=0)
        assert value == 0.0
        assert np.all(grad == 0)


@SMALL
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(max_size=30, sizes=SIZES), seed=st.integers(0, 1000))
def test_sampled_with_caps_above_sizes_equals_exact(reduction, batch, seed):
    u, correct, margin = batch
    exact, exact_grad = value_and_grad(u, correct, margin=margin, reduction=reduction)
    kwargs = {"pairs": "sampled", "n_wrong": 40, "n_correct": 40, "seed": seed}
    value, grad = value_and_grad(u, correct, margin=margin, reduction=reduction, **kwargs)
    assert value == pytest.approx(exact, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-6, atol=1e-6)


def test_sampled_is_reproducible_and_draws_without_replacement():
    rng = np.random.default_rng(1)
    u = rng.random(400).astype(np.float32)
    correct = rng.random(400) < 0.8
    kwargs = {"pairs": "sampled", "n_wrong": 5, "n_correct": 20}
    a = float(uncertainty_margin_loss(u, correct, seed=4, **kwargs))
    b = float(uncertainty_margin_loss(u, correct, seed=4, **kwargs))
    assert a == b
    # one wrong instance and every correct one: the estimate is the loss of one drawn wrong instance
    values = [
        float(uncertainty_margin_loss(u, correct, seed=s, pairs="sampled", n_wrong=1, n_correct=10**4))
        for s in range(30)
    ]
    uc = u[correct].astype(np.float64)
    per_wrong = [np.mean(np.maximum(uc - w + 0.1, 0.0)) for w in u[~correct]]
    assert len(set(values)) > 1
    for value in values:
        assert min(abs(value - p) for p in per_wrong) <= 1e-6 * max(per_wrong)


# --- loss classes ----------------------------------------------------------------------------------------


def batch_channels_last(shape, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * 2).astype(np.float32)
    labels = rng.integers(0, shape[-1], shape[:-1])
    return logits, labels


@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 4, 4, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_margin_loss_agrees_with_core(shape, reduction):
    logits, labels = batch_channels_last(shape, 3)
    labels[0, 0] = 99  # ignored
    mask = labels != 99
    u = uncertainty_from_logits(logits.astype(np.float64), axis=-1)
    expected = float(core_loss(u, logits.argmax(-1) == labels, mask=mask, reduction=reduction))
    loss = UncertaintyMarginLoss(reduction=reduction, ignore_class=99)
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_margin_loss_gradient_agrees_with_torch_core():
    torch = pytest.importorskip("torch")
    logits, labels = batch_channels_last((2, 6, 6, 3), 5)
    # the core reference is the plain gradient of u: the paper's push
    loss, grad = gradient_fns(lambda x: UncertaintyMarginLoss(margin=0.2, push="uniform")(labels, x))[0](
        logits
    )
    leaf = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    u = uncertainty_from_logits(leaf, axis=-1)
    ref = core_loss(u, leaf.detach().argmax(-1) == torch.tensor(labels), margin=0.2)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-5)
    np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_keras_and_torch_modules_agree():
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyAwareLoss as TorchAware

    logits, labels = batch_channels_last((2, 5, 5, 4), 6)
    keras_value = float(UncertaintyAwareLoss(warmup=0, ramp=0)(labels, logits))
    torch_logits = torch.tensor(np.moveaxis(logits, -1, 1))
    torch_value = float(TorchAware(warmup=0, ramp=0)(torch_logits, torch.tensor(labels)))
    assert keras_value == pytest.approx(torch_value, rel=1e-5)


def test_label_layouts_agree():
    logits, labels = batch_channels_last((2, 4, 4, 3), 7)
    loss = UncertaintyMarginLoss()
    by_index = float(loss(labels, logits))
    by_channel = float(loss(labels[..., None], logits))
    one_hot = np.eye(3)[labels]
    by_one_hot = float(loss(one_hot, logits))
    assert by_index == by_channel == by_one_hot
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    from_probs = float(UncertaintyMarginLoss(from_logits=False)(labels, probs))
    assert from_probs == pytest.approx(by_index, rel=1e-4, abs=1e-6)


def test_from_probabilities_keeps_saturated_voxels_apart():
    """``from_logits=False`` sums the non-max probabilities as the core does; ``1 - max p`` tied them at 0."""
    labels = np.array([[0, 1, 0]])  # the middle voxel is wrong, between two correct ones in u
    probs = np.array([[[1 - 1e-10, 1e-10], [1 - 1e-9, 1e-9], [1 - 1e-8, 1e-8]]]).astype(np.float32)
    assert np.all(probs[0, :, 0] == 1.0)  # in float32 every max is exactly 1
    u = max_softmax_uncertainty(probs, axis=-1)
    assert 0 < u[0, 0] < u[0, 1] < u[0, 2]
    expected = float(core_loss(u, probs.argmax(-1) == labels, margin=0.0, reduction="sum"))
    assert expected == pytest.approx(float(u[0, 2] - u[0, 1]), rel=1e-6)  # > 0; 0 with 1 - max p
    loss = UncertaintyMarginLoss(margin=0.0, reduction="sum", from_logits=False)
    assert float(loss(labels, probs)) == pytest.approx(expected, rel=1e-6)


def test_aware_loss_is_ce_plus_weight_times_unc():
    logits, labels = batch_channels_last((2, 4, 4, 3), 8)
    labels[0, 0, 0] = -1
    aware = UncertaintyAwareLoss(warmup=0, ramp=0, weight=2000.0, ignore_class=-1)
    keep = labels != -1
    ce = keras.losses.sparse_categorical_crossentropy(labels[keep], logits[keep], from_logits=True)
    unc = UncertaintyMarginLoss(ignore_class=-1)(labels, logits)
    expected = float(keras.ops.mean(ce)) + 2000.0 * float(unc)
    assert float(aware(labels, logits)) == pytest.approx(expected, rel=1e-5)
    custom = UncertaintyAwareLoss(
        keras.losses.CategoricalCrossentropy(from_logits=True), weight=1.0, warmup=0, ramp=0
    )
    one_hot = np.eye(3)[np.where(keep, labels, 0)]
    expected = float(keras.losses.CategoricalCrossentropy(from_logits=True)(one_hot, logits))
    expected += float(UncertaintyMarginLoss()(one_hot, logits))
    assert float(custom(one_hot, logits)) == pytest.approx(expected, rel=1e-5)


def test_config_round_trip():
    loss = UncertaintyMarginLoss(0.2, reduction="sum", pairs="sampled", n_wrong=7, seed=3, ignore_class=255)
    clone = UncertaintyMarginLoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    aware = UncertaintyAwareLoss(
        keras.losses.CategoricalCrossentropy(from_logits=True), weight=5.0, margin=0.3
    )
    clone = UncertaintyAwareLoss.from_config(aware.get_config())
    assert clone.get_config() == aware.get_config()
    assert isinstance(clone.seg_loss, keras.losses.CategoricalCrossentropy)
    restored = keras.losses.deserialize(
        keras.losses.serialize(UncertaintyAwareLoss(warmup=0, ramp=0, weight=3.0))
    )
    assert isinstance(restored, UncertaintyAwareLoss) and restored.weight == 3.0


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit(jit_compile):
    if jit_compile and BACKEND == "torch":
        pytest.skip("Keras compiles PyTorch steps with torch.compile (not supported by this adapter's tests)")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int32) + (x[..., 1] > 1).astype(np.int32)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 1)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=UncertaintyAwareLoss(warmup=0, ramp=0, weight=10.0),
        jit_compile=jit_compile,
    )
    history = model.fit(x, y[..., None], batch_size=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        UncertaintyMarginLoss(-0.5)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        UncertaintyMarginLoss(reduction="sum_over_batch_size")
    with pytest.raises(ValueError, match="`pairs` must be one of"):
        UncertaintyAwareLoss(warmup=0, ramp=0, pairs="all")
    with pytest.raises(ValueError, match="`n_correct` must be >= 1"):
        UncertaintyMarginLoss(n_correct=0)
    with pytest.raises(ValueError, match="`weight` must be a finite number >= 0"):
        UncertaintyAwareLoss(warmup=0, ramp=0, weight=float("nan"))
    with pytest.raises(TypeError, match="`seg_loss` must be callable"):
        UncertaintyAwareLoss(warmup=0, ramp=0, seg_loss=3)
    with pytest.raises(TypeError, match="`axis` must be an integer"):
        UncertaintyMarginLoss(axis=1.0)


def test_rejects_bad_shapes():
    logits, labels = batch_channels_last((2, 4, 4, 3), 9)
    with pytest.raises(ValueError, match="`y_pred` must have a batch and a class axis"):
        UncertaintyMarginLoss()(np.array([0, 1, 1]), np.array([0.2, 0.5, 0.3], dtype=np.float32))
    with pytest.raises(ValueError, match="`y_true` must have shape"):
        UncertaintyMarginLoss()(labels[:, :3], logits)
    with pytest.raises(ValueError, match="`correct` must have the same shape"):
        uncertainty_margin_loss(np.zeros(4, np.float32), np.zeros(3, bool))
    with pytest.raises(ValueError, match="`mask` must have the same shape"):
        uncertainty_margin_loss(np.zeros(4, np.float32), np.zeros(4, bool), mask=np.zeros(2, bool))


def test_aware_loss_composes_one_margin_loss_and_reads_flat_configs():
    from selectivekit.loss import MarginLossOptions

    logits, labels = batch_channels_last((2, 4, 3), 9)
    options = MarginLossOptions(margin=0.3, reduction="sum")
    composed = UncertaintyAwareLoss(
        warmup=0, ramp=0, weight=2.0, margin_loss=UncertaintyMarginLoss(options=options)
    )
    by_keywords = UncertaintyAwareLoss(warmup=0, ramp=0, weight=2.0, margin=0.3, reduction="sum")
    assert composed.unc_loss.options == by_keywords.unc_loss.options == options
    assert float(composed(labels, logits)) == float(by_keywords(labels, logits))
    assert composed.get_config() == by_keywords.get_config()
    # a config written when the options were flat keys of UncertaintyAwareLoss still loads
    flat = dict(
        name="uncertainty_aware_loss", reduction="sum", dtype=None, margin=0.3, pairs="exact", n_wrong=300,
        n_correct=6600, seed=None, from_logits=True, axis=-1, ignore_class=None, weight=2.0, seg_loss=None,
    )  # fmt: skip
    restored = UncertaintyAwareLoss.from_config(flat)
    # such a config predates the push option: it trained with the paper's gradient, at a constant weight
    assert restored.unc_loss.options == options.replace(push="uniform") and restored.weight == 2.0
    assert restored.setting.constant
    with pytest.raises(TypeError, match="give `margin_loss` or its options"):
        UncertaintyAwareLoss(margin_loss=UncertaintyMarginLoss(), margin=0.2)


# --- region (multi-label sigmoid) outputs ----------------------------------------------------------------


def _region_batch(seed: int = 0):
    """Channels-last logits (2, 5, 5, 3) of three nested regions and their 0/1 targets."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.meshgrid(np.arange(5) - 2.0, np.arange(5) - 2.0, indexing="ij"))
    target = np.stack([r < 2.3, r < 1.5, r < 0.8], axis=-1)[None].repeat(2, axis=0)
    logits = (3.0 * (2 * target - 1) + 2.5 * rng.standard_normal(target.shape)).astype("float32")
    return logits, target


@pytest.mark.parametrize("from_logits", [True, False])
def test_region_loss_equals_all_pairs_over_regions_and_voxels(from_logits):
    logits, target = _region_batch()
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    u = np.minimum(p, 1.0 - p)
    correct = (p > 0.5) == target
    want, _ = all_pairs_reference(u, correct, 0.2, reduction="mean")
    y_pred = logits if from_logits else p.astype("float32")
    loss = UncertaintyMarginLoss(0.2, sigmoid=True, from_logits=from_logits)
    got = float(keras.ops.convert_to_numpy(loss(target.astype("float32"), y_pred)))
    assert got == pytest.approx(want, rel=1e-5)
    # the array-API core with the class axis last: the same value
    core = sk.margin_loss_from_logits(logits, target, axis=-1, sigmoid=True, margin=0.2)
    assert got == pytest.approx(float(core), rel=1e-5)
    # the aware loss: binary cross-entropy over every pair plus the weighted margin term (margin 0.1)
    want, _ = all_pairs_reference(u, correct, 0.1, reduction="mean")
    aware = UncertaintyAwareLoss(setting="authors", sigmoid=True, from_logits=from_logits)
    bce = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
    total = float(keras.ops.convert_to_numpy(aware(target.astype("float32"), y_pred)))
    assert total == pytest.approx(bce + 2000.0 * want, rel=1e-4)
    # the config round trip keeps the mode
    got = float(keras.ops.convert_to_numpy(loss(target.astype("float32"), y_pred)))
    again = UncertaintyMarginLoss.from_config(loss.get_config())
    assert again.sigmoid and float(keras.ops.convert_to_numpy(again(target.astype("float32"), y_pred))) == got


def test_region_loss_bad_options():
    with pytest.raises(TypeError, match="sigmoid"):
        UncertaintyMarginLoss(sigmoid="yes")
    with pytest.raises(ValueError, match="ignore_class"):
        UncertaintyMarginLoss(sigmoid=True, ignore_class=255)
    logits, target = _region_batch()
    with pytest.raises(ValueError, match="y_true"):
        UncertaintyMarginLoss(sigmoid=True)(target[..., :2].astype("float32"), logits)

"""Every restatement of a core formula in a framework's vocabulary, against the core on the same inputs.

``selectivekit/adapters/_torch_kernels.py`` and ``selectivekit/adapters/_keras_ops.py`` hold the only
restatements; each is checked here for values and, where it is differentiable, gradients. The core side
is computed with the array-API code (gradients through PyTorch's array namespace).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.loss import MarginLossOptions
from selectivekit.risk_coverage import step_area
from selectivekit.streaming import curve_from_grid, grid_bins
from tests.test_loss import grid_batches

SMALL = settings(max_examples=25)


# --- the core side -------------------------------------------------------------------------------------


def core_value_and_grad(u, correct, mask=None, **kwargs):
    """The core loss through PyTorch's array namespace: value and gradient in float64."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(np.asarray(u, dtype=np.float64), requires_grad=True)
    m = None if mask is None else torch.tensor(mask)
    loss = sk.uncertainty_margin_loss(x, torch.tensor(correct), mask=m, **kwargs)
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


# --- PyTorch ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["cpu_kernel", "static_kernel"])
def torch_kernel(request, monkeypatch):
    pytest.importorskip("torch")
    from selectivekit.adapters import _torch_kernels

    monkeypatch.setattr(_torch_kernels, "CPU_KERNEL", request.param == "cpu_kernel")
    return request.param


def torch_value_and_grad(u, correct, mask=None, **kwargs):
    import torch

    from selectivekit.adapters.torch import uncertainty_margin_loss

    x = torch.tensor(np.asarray(u, dtype=np.float64), requires_grad=True)
    m = None if mask is None else torch.tensor(mask)
    loss = uncertainty_margin_loss(x, torch.tensor(correct), mask=m, **kwargs)
    loss.backward()
    return float(loss.detach()), x.grad.numpy()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(max_size=50), data=st.data())
def test_torch_exact_kernels_equal_core(torch_kernel, reduction, batch, data):
    u, correct, margin = batch
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=u.size, max_size=u.size)))
    expected, expected_grad = core_value_and_grad(u, correct, mask, margin=margin, reduction=reduction)
    value, grad = torch_value_and_grad(u, correct, mask, margin=margin, reduction=reduction)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(min_size=2, max_size=60), seed=st.integers(0, 2**32 - 1))
def test_torch_sampled_draws_the_core_pairs(reduction, batch, seed):
    """One seed, the same pairs: equal values and gradients, with sample sizes below the side sizes."""
    u, correct, margin = batch
    kwargs = {"margin": margin, "reduction": reduction, "pairs": "sampled", "n_wrong": 3, "n_correct": 5}
    expected, expected_grad = core_value_and_grad(u, correct, seed=seed, **kwargs)
    value, grad = torch_value_and_grad(u, correct, seed=seed, **kwargs)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)
    # a NumPy generator in the same state, and a freshly seeded torch.Generator, stand for the seed
    torch = pytest.importorskip("torch")
    value_rng, _ = torch_value_and_grad(u, correct, seed=np.random.default_rng(seed), **kwargs)
    value_gen, _ = torch_value_and_grad(u, correct, seed=torch.Generator().manual_seed(seed), **kwargs)
    assert value_rng == value == value_gen


def test_torch_module_generator_follows_the_core_stream():
    """The module's own generator, advanced at every call, draws what the core draws from one generator."""
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    logits = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(2))
    options = MarginLossOptions(pairs="sampled", n_wrong=4, n_correct=9)
    module = UncertaintyMarginLoss(options=options, seed=11)
    rng = np.random.default_rng(11)
    u = sk.uncertainty_from_logits(logits, axis=1)
    correct = torch.argmax(logits, dim=1) == target
    for _ in range(3):
        expected = sk.uncertainty_margin_loss(u, correct, options=options, seed=rng)
        assert float(module(logits, target)) == pytest.approx(float(expected), rel=1e-12)


# --- Keras ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_ops():
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":  # pragma: no cover - the suite runs Keras on TensorFlow
        pytest.skip("these tests use the TensorFlow backend")
    from selectivekit.adapters import _keras_ops

    return _keras_ops


@pytest.fixture(params=["float64_keys", "tie_groups"])
def keras_kernel(request, monkeypatch, keras_ops):
    monkeypatch.setattr(keras_ops, "FLOAT64_KEYS", request.param == "float64_keys")
    return keras_ops


def keras_value_and_grad(fn, u):
    import tensorflow as tf

    x = tf.constant(np.asarray(u, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return float(value), tape.gradient(value, x).numpy()


@SMALL
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(max_size=40), data=st.data())
def test_keras_exact_kernels_equal_core(keras_kernel, reduction, batch, data):
    u, correct, margin = batch  # dyadic values: exact in float32
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=u.size, max_size=u.size)))
    options = MarginLossOptions(margin=margin, reduction=reduction)
    expected, expected_grad = core_value_and_grad(u, correct, mask, options=options)
    value, grad = keras_value_and_grad(lambda x: keras_kernel.margin_loss(x, correct, mask, options, None), u)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6)


@SMALL
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(min_size=2, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_keras_sampled_equals_core_on_the_sampled_instances(keras_ops, reduction, batch, seed):
    """Given the keys, the Keras estimator is the core's exact loss of the instances the keys select."""
    from keras import ops

    u, correct, margin = batch
    options = MarginLossOptions(margin=margin, reduction=reduction, pairs="sampled", n_wrong=3, n_correct=5)
    keys = np.random.default_rng(seed).random(u.size).astype(np.float32)
    chosen = np.zeros(u.size, dtype=bool)
    for side, k in ((~correct, options.n_wrong), (correct, options.n_correct)):
        idx = np.flatnonzero(side)
        chosen[idx[np.argsort(keys[idx], kind="stable")[:k]]] = True
    n_w, n_c = int((~correct).sum()), int(correct.sum())
    # the estimator: the mean over the sampled pairs, or their sum scaled by |W| |C| / (n_w n_c)
    expected, expected_grad = core_value_and_grad(u, correct, chosen, margin=margin, reduction="sum")
    n_pairs = min(n_w, 3) * min(n_c, 5)
    scale = (1.0 / n_pairs if reduction == "mean" else n_w * n_c / n_pairs) if n_pairs else 0.0

    def estimate(x):
        x, c_flag, w_flag = keras_ops.loss_flags(x, correct, None)
        total, pairs, all_pairs = keras_ops.sampled_sums(
            x, c_flag, w_flag, ops.convert_to_tensor(keys), options
        )
        safe = ops.maximum(pairs, 1.0)
        return total / safe if reduction == "mean" else total * (all_pairs / safe)

    value, grad = keras_value_and_grad(estimate, u)
    assert value == pytest.approx(expected * scale, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(grad, expected_grad * scale, rtol=1e-5, atol=1e-5)


def test_keras_uncertainties_equal_core(keras_ops):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 6, 5, 3)) * 3).astype(np.float32)
    logits[0, 0, 0] = [40.0, 0.0, 0.0]  # saturated: 1 - max softmax is 0 in float32, the sum is not
    u = np.asarray(keras_ops.uncertainty_from_logits(logits))
    np.testing.assert_allclose(u, sk.uncertainty_from_logits(logits, axis=-1), rtol=1e-5, atol=1e-7)
    assert u[0, 0, 0] > 0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs[0, 0, 0] = [1.0 - 1e-12, 5e-13, 5e-13]
    probs = probs.astype(np.float32)
    u = np.asarray(keras_ops.max_softmax_uncertainty(probs))
    np.testing.assert_allclose(u, sk.max_softmax_uncertainty(probs, axis=-1), rtol=1e-6, atol=0)
    assert u[0, 0, 0] == pytest.approx(1e-12, rel=1e-5)  # `1 - max p` would be 0


def test_keras_uncertainty_gradient_equals_core(keras_ops):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(5, 4)) * 2).astype(np.float32)
    weights = rng.normal(size=5).astype(np.float32)
    x = torch.tensor(logits, requires_grad=True)
    (sk.uncertainty_from_logits(x, axis=-1) * torch.tensor(weights)).sum().backward()
    from keras import ops

    _, grad = keras_value_and_grad(
        lambda z: ops.sum(keras_ops.uncertainty_from_logits(z, axis=-1) * weights), logits
    )
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_keras_grid_cells_equal_core(keras_ops):
    values = np.array([0.0, -0.0, 1e-30, 0.5, -2.0, 3e38], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(keras_ops.bfloat16_cells(values)), grid_bins(values))


def test_keras_step_area_of_cells_equals_core(keras_ops):
    rng = np.random.default_rng(2)
    count = rng.integers(0, 4, size=50).astype(np.float64)
    count[0] = 1
    errors = np.minimum(rng.integers(0, 3, size=50), count).astype(np.float64)
    top = np.where(count > 0, np.arange(50.0), -np.inf)
    curve = curve_from_grid(count.astype(np.int64), errors, top, xp=np)
    expected = step_area(curve.coverage, curve.risk, xp=np)
    assert float(keras_ops.step_area_of_cells(count, errors)) == pytest.approx(expected, rel=1e-12)

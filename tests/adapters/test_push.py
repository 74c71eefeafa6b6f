"""The ``push`` option of the from-logits losses: the same loss value; with ``"binary"`` a wrong voxel's
gradient is that of the two-class uncertainty between its predicted and its true class."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import torch

from selectivekit.adapters.torch import UncertaintyMarginLoss
from selectivekit.loss import MarginLossOptions


def all_pairs_binary_reference(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The mean hinge over every (wrong, correct) pair, written out with loops; a wrong voxel's ``u`` is
    its value ``1 - max p`` with the gradient of ``p_t / (p_m + p_t)`` (straight through)."""
    k = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, k)
    y = labels.reshape(-1)
    p = torch.softmax(z, dim=1)
    wrong_u, correct_u = [], []
    for i in range(len(y)):
        if y[i] < 0:
            continue
        m = int(torch.argmax(z[i].detach()))
        u = 1 - p[i, m]
        if m == int(y[i]):
            correct_u.append(u)
        else:
            b = p[i, y[i]] / (p[i, y[i]] + p[i, m])
            wrong_u.append(u.detach() + (b - b.detach()))
    terms = [torch.relu(c - w + margin) for w, c in itertools.product(wrong_u, correct_u)]
    return torch.stack(terms).mean()


def batch(seed: int, k: int = 5, shape=(2, 4, 3)):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape[0], k, *shape[1:], generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, k, (shape[0], *shape[1:]), generator=g)
    labels[0, 0, 0] = -100  # ignored
    return logits, labels


@pytest.mark.parametrize("seed", range(6))
def test_binary_push_equals_the_all_pairs_reference(seed):
    logits, labels = batch(seed)
    loss = UncertaintyMarginLoss(0.1, push="binary")(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = all_pairs_binary_reference(logits, labels, 0.1)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_binary_push_keeps_the_value_and_moves_wrong_voxels_between_two_classes(seed):
    logits, labels = batch(seed, k=6)
    binary = UncertaintyMarginLoss(0.1, push="binary")(logits, labels)
    uniform = UncertaintyMarginLoss(0.1)(logits, labels)
    assert torch.equal(binary, uniform)
    (g_bin,) = torch.autograd.grad(binary, logits)
    (g_uni,) = torch.autograd.grad(uniform, logits)
    pred = logits.detach().argmax(1)
    correct = (pred == labels) & (labels >= 0)
    wrong = (pred != labels) & (labels >= 0)
    assert torch.equal(g_bin.movedim(1, -1)[correct], g_uni.movedim(1, -1)[correct])
    touched = (g_bin.movedim(1, -1)[wrong] != 0).sum(1)
    assert int(touched.max()) <= 2  # only the predicted and the true class of a wrong voxel
    per_voxel = g_bin.movedim(1, -1)[wrong].sum(1)  # moves mass between two logits: sums to zero
    torch.testing.assert_close(per_voxel, torch.zeros_like(per_voxel), rtol=0, atol=1e-12)
    assert bool((g_bin.movedim(1, -1)[labels < 0] == 0).all())


def test_two_classes_binary_is_the_plain_gradient():
    logits, labels = batch(0, k=2, shape=(2, 6, 5))
    g = [
        torch.autograd.grad(UncertaintyMarginLoss(0.1, push=push)(logits, labels), logits)[0]
        for push in ("binary", "uniform")
    ]
    torch.testing.assert_close(g[0], g[1], rtol=1e-10, atol=1e-14)


def test_push_is_validated_and_serialized():
    with pytest.raises(ValueError, match="`push` must be one of"):
        MarginLossOptions(push="label")
    assert MarginLossOptions().push == "binary"  # the default setting's push
    assert MarginLossOptions(push="binary").to_config()["push"] == "binary"


@pytest.mark.parametrize("from_logits", [True, False])
def test_keras_binary_push_matches_torch(from_logits):
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from selectivekit.adapters.keras import UncertaintyMarginLoss as KerasLoss

    logits, labels = batch(3, k=5)
    expected = UncertaintyMarginLoss(0.1, push="binary")(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    z = tf.Variable(np.moveaxis(logits.detach().numpy(), 1, -1))
    y = np.where(labels.numpy() < 0, -1, labels.numpy())
    loss_fn = KerasLoss(margin=0.1, push="binary", from_logits=from_logits, ignore_class=-1)
    with tf.GradientTape() as tape:
        scores = z if from_logits else keras.ops.softmax(z, axis=-1)
        value = loss_fn(y, scores)
    grad = np.moveaxis(tape.gradient(value, z).numpy(), -1, 1)
    assert float(value) == pytest.approx(float(expected.detach()), rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad.numpy(), rtol=1e-4, atol=1e-7)


def test_keras_binary_push_without_an_ignore_class_matches_torch():
    pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from selectivekit.adapters.keras import UncertaintyMarginLoss as KerasLoss

    logits, labels = batch(5, k=4)
    labels = labels.clamp(min=0)  # every voxel takes part
    expected = UncertaintyMarginLoss(0.1, push="binary")(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    z = tf.Variable(np.moveaxis(logits.detach().numpy(), 1, -1))
    with tf.GradientTape() as tape:
        value = KerasLoss(margin=0.1, push="binary")(labels.numpy(), z)
    grad = np.moveaxis(tape.gradient(value, z).numpy(), -1, 1)
    assert float(value) == pytest.approx(float(expected.detach()), rel=1e-5)
    np.testing.assert_allclose(grad, expected_grad.numpy(), rtol=1e-4, atol=1e-7)

"""JAX: the core under ``jax.jit`` and ``jax.grad``, in 64-bit mode and in JAX's default 32-bit mode.

The rest of the suite runs JAX through the ``xp`` fixture with 64-bit types (``tests/conftest.py``). 64-bit
mode is chosen once per process, so this module also runs itself in a subprocess with it off
(``test_this_module_passes_in_32_bit_mode``); every test here holds in both modes.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from tests.conftest import JAX_X64_ENV, import_jax, jax_x64
from tests.test_loss import all_pairs_reference, grid_batches

jax = import_jax()
jnp = jax.numpy

import selectivekit as sk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOAT = np.float64 if jax_x64() else np.float32
RTOL = 1e-12 if jax_x64() else 2e-6  # float64, or float32 sums of a few hundred terms


def test_mode_is_the_requested_one():
    assert jnp.asarray(1.0).dtype == FLOAT
    assert jnp.asarray(np.arange(3)).dtype == (np.int64 if jax_x64() else np.int32)


PAD = 32  # every example padded to one shape (masked out), so that jit compiles once per option


@functools.partial(jax.jit, static_argnames=("margin", "reduction"))
def jitted_value_and_grad(u, correct, mask, *, margin, reduction):
    def loss(x):
        return sk.uncertainty_margin_loss(x, correct, margin=margin, reduction=reduction, mask=mask)

    return jax.value_and_grad(loss)(u)


@settings(max_examples=20)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(max_size=PAD - 2))
def test_loss_under_jit_and_grad_equals_all_pairs(reduction, batch):
    """Validation finds the tracers on its own (no TracerBoolConversionError), and the exact pairs hold."""
    u, correct, margin = batch  # dyadic values: exact in float32, heavy ties
    n = u.size
    mask = np.arange(PAD) % 5 != 4
    mask[n:] = False
    u_pad = np.concatenate([u, np.full(PAD - n, 7.0)])
    correct_pad = np.concatenate([correct, np.arange(PAD - n) % 2 == 0])  # padding of both kinds
    value, grad = jitted_value_and_grad(
        jnp.asarray(u_pad.astype(FLOAT)),
        jnp.asarray(correct_pad),
        jnp.asarray(mask),
        margin=margin,
        reduction=reduction,
    )
    expected, expected_grad = all_pairs_reference(u, correct, margin, reduction, mask=mask[:n])
    assert value.dtype == FLOAT
    np.testing.assert_allclose(float(value), expected, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[:n], expected_grad, rtol=RTOL, atol=1e-7)
    assert np.all(np.asarray(grad)[n:] == 0)


def test_validation_still_raises_outside_jit():
    u = jnp.asarray(np.array([0.1, np.nan, 0.3], dtype=FLOAT))
    correct = jnp.asarray([True, False, True])
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        sk.uncertainty_margin_loss(u, correct)
    with pytest.raises(ValueError, match="`correct` must be boolean or hold only 0 and 1"):
        sk.uncertainty_margin_loss(u[::2], jnp.asarray([0, 2]))
    # inside jit the same NaN cannot be seen: the value checks are skipped (no error), the static ones are not
    assert jax.jit(lambda x: sk.uncertainty_margin_loss(x, correct))(u).shape == ()
    with pytest.raises(ValueError, match="`correct` must have the same shape"):
        jax.jit(lambda x: sk.uncertainty_margin_loss(x, correct[:2]))(u)


def brute_force_loss_from_logits(logits, labels, margin, reduction, ignore_index=None):
    """``u = 1 - max softmax`` in float64 and the loop over all pairs (NumPy only)."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    u = 1.0 - p.max(-1)
    mask = None if ignore_index is None else labels != ignore_index
    return all_pairs_reference(u, z.argmax(-1) == labels, margin, reduction, mask=mask)[0]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_margin_loss_from_logits_under_jit_and_grad(reduction):
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 4, 3)) * 2  # channels-last, as Flax
    labels = rng.integers(0, 3, size=(2, 5, 4))
    labels[0, 0, :2] = 255

    def loss(z):
        return sk.margin_loss_from_logits(z, jnp.asarray(labels), axis=-1, ignore_index=255, margin=0.2,
                                          reduction=reduction)  # fmt: skip

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(logits.astype(FLOAT)))
    expected = brute_force_loss_from_logits(logits, labels, 0.2, reduction, ignore_index=255)
    np.testing.assert_allclose(float(value), expected, rtol=1e-9 if jax_x64() else 1e-5)
    # the gradient against the PyTorch adapter's closed-form backward (channels-first there)
    leaf = torch.tensor(np.moveaxis(logits, -1, 1), dtype=torch.float64, requires_grad=True)
    UncertaintyMarginLoss(margin=0.2, reduction=reduction, ignore_index=255)(
        leaf, torch.tensor(labels)
    ).backward()
    np.testing.assert_allclose(
        np.asarray(grad), np.moveaxis(leaf.grad.numpy(), 1, -1), rtol=1e-8 if jax_x64() else 1e-4, atol=1e-9
    )


def test_region_loss_under_jit_and_grad_equals_the_torch_adapter():
    """``sigmoid=True`` (BraTS-style regions): the core under jit and grad, against the PyTorch kernel."""
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 5, 4)) * 3  # (B, R regions, H, W)
    targets = (rng.random(size=logits.shape) < 0.5).astype(np.int32)
    targets[0, :, 0] = -1  # a row not annotated, in every region

    def loss(z):
        return sk.margin_loss_from_logits(z, jnp.asarray(targets), axis=1, sigmoid=True, ignore_index=-1)

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(logits.astype(FLOAT)))
    leaf = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    expected = UncertaintyMarginLoss(ignore_index=-1, sigmoid=True)(leaf, torch.tensor(targets))
    expected.backward()
    np.testing.assert_allclose(float(value), float(expected.detach()), rtol=1e-9 if jax_x64() else 1e-5)
    np.testing.assert_allclose(
        np.asarray(grad),
        leaf.grad.numpy(),
        rtol=1e-8 if jax_x64() else 1e-4,
        atol=1e-9 if jax_x64() else 1e-7,
    )


def test_margin_loss_from_logits_on_numpy_equals_the_torch_adapter():
    torch = pytest.importorskip("torch")
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 4, 6, 6)) * 3).astype(np.float32)  # channels-first, as PyTorch
    labels = rng.integers(0, 4, size=(3, 6, 6))
    labels[1, :2] = -100
    value = sk.margin_loss_from_logits(logits, labels, axis=1, ignore_index=-100)
    assert value.dtype == np.float32 and value.shape == ()  # as the core loss gives on NumPy
    expected = UncertaintyMarginLoss(ignore_index=-100)(torch.tensor(logits), torch.tensor(labels))
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
    one_hot = np.moveaxis(np.eye(4)[np.where(labels < 0, 0, labels)], -1, 1) * (labels >= 0)[:, None]
    np.testing.assert_allclose(
        float(sk.margin_loss_from_logits(logits, one_hot, axis=1)), float(value), rtol=1e-6
    )
    with_axis = sk.margin_loss_from_logits(logits, labels[:, None], axis=1, ignore_index=-100)
    assert float(with_axis) == float(value)


def test_margin_loss_from_logits_rejects_bad_input():
    logits = np.zeros((2, 3, 4), dtype=np.float32)
    labels = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2, 4\)"):
        sk.margin_loss_from_logits(logits, labels[:, :3], axis=1)
    with pytest.raises(ValueError, match=r"`labels` must hold class indices in \[0, 3\) or -1"):
        sk.margin_loss_from_logits(logits, labels + 3, axis=1, ignore_index=-1)
    with pytest.raises(TypeError, match="`labels` must hold integer class indices"):
        sk.margin_loss_from_logits(logits, labels.astype(np.float32), axis=1)
    with pytest.raises(ValueError, match="`logits` must be finite"):
        sk.margin_loss_from_logits(np.full((2, 3, 4), np.nan, np.float32), labels, axis=1)
    with pytest.raises(TypeError, match="`logits` must be floating point"):
        sk.margin_loss_from_logits(logits.astype(np.int32), labels, axis=1)
    with pytest.raises(ValueError, match="`axis` must be in"):
        sk.margin_loss_from_logits(logits, labels, axis=3)
    with pytest.raises(ValueError, match="`push` must be one of"):  # "binary" works here since 0.3
        sk.margin_loss_from_logits(logits, labels, axis=1, push="label")
    # ignored labels are not range-checked, and nothing left gives 0
    assert float(sk.margin_loss_from_logits(logits, labels - 1, axis=1, ignore_index=-1)) == 0.0


def test_core_metrics_equal_numpy():
    rng = np.random.default_rng(2)
    u = np.round(rng.random(500), 2).astype(np.float32)  # ties
    correct = rng.random(500) < 0.8
    ju, jc = jnp.asarray(u), jnp.asarray(correct)
    for name in ("aurc", "e_aurc", "augrc"):
        assert getattr(sk, name)(ju, jc) == pytest.approx(getattr(sk, name)(u, correct), rel=1e-6)
    curve, expected = sk.risk_coverage_curve(ju, jc), sk.risk_coverage_curve(u, correct)
    np.testing.assert_allclose(np.asarray(curve.risk), expected.risk, rtol=1e-6)
    assert sk.selective_split(ju, jc, 0.7) == sk.selective_split(u, correct, 0.7)


def test_check_theorem1_without_int64_warnings():
    """The counts use the namespace's default integer: no 'int64 is not available' warning in 32-bit mode."""
    rng = np.random.default_rng(3)
    u, correct = rng.random(200).astype(np.float32), rng.random(200) < 0.7
    got = sk.check_theorem1(jnp.asarray(u), jnp.asarray(correct), 0.6)  # warnings are errors in this suite
    expected = sk.check_theorem1(u, correct, 0.6)
    assert got.holds and expected.holds
    assert got.psi_1 == expected.psi_1 and got.gamma == expected.gamma


@pytest.mark.skipif(not jax_x64() or "PYTEST_XDIST_WORKER" in os.environ, reason="runs in the 64-bit process")
def test_this_module_passes_in_32_bit_mode():
    env = dict(os.environ, **{JAX_X64_ENV: "0"})
    env.pop("JAX_ENABLE_X64", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" in result.stdout  # this test itself skips there

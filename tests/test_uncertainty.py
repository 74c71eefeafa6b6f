"""Uncertainty helpers: precision of the logit path, agreement with float64 references, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import selectivekit as sk
from tests.conftest import to_numpy, xp_assert_close, xp_assert_equal


def softmax64(z, axis):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_saturated_logits_keep_distinct_nonzero_float32_u():
    margins = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)
    logits = np.stack([margins, np.zeros(4, np.float32), np.zeros(4, np.float32)], axis=1)
    u = sk.uncertainty_from_logits(logits, axis=1)
    assert u.dtype == np.float32
    assert np.all(u > 0) and np.unique(u).size == 4
    reference = 2 * np.exp(-margins.astype(np.float64)) / (1 + 2 * np.exp(-margins.astype(np.float64)))
    np.testing.assert_allclose(u, reference, rtol=1e-5)
    # the naive formula collapses these voxels into one tie at exactly 0
    naive = 1 - softmax64(logits.astype(np.float32), 1).astype(np.float32).max(axis=1)
    assert (naive[2:] == 0).all()


@given(
    z=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(2, 5), st.integers(1, 3)),
        elements=st.floats(-50, 50),
    ),
)
def test_logits_match_float64_reference(z):
    u = sk.uncertainty_from_logits(z, axis=1)
    np.testing.assert_allclose(u, 1 - softmax64(z, 1).max(axis=1), rtol=1e-9, atol=1e-12)


def test_torch_logits_differentiable_and_half_precision_upcast():
    torch = pytest.importorskip("torch")
    z = torch.tensor([[3.0, 1.0, 0.5], [0.0, 0.0, 0.0]], requires_grad=True)
    u = sk.uncertainty_from_logits(z, axis=-1)
    u.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    np.testing.assert_allclose(to_numpy(u), 1 - softmax64(to_numpy(z), -1).max(axis=-1), rtol=1e-6)
    half = sk.uncertainty_from_logits(z.detach().to(torch.bfloat16), axis=-1)
    assert half.dtype == torch.float32


def test_probability_helpers(xp):
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    u = sk.max_softmax_uncertainty(xp.asarray(p), axis=1)
    xp_assert_close(u, np.array([0.3, 2 / 3, 0.0]), xp=xp)
    h = sk.entropy_uncertainty(xp.asarray(p), axis=1, normalize=True)
    expected = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1) / np.log(3)
    xp_assert_close(h, expected, xp=xp)
    h = to_numpy(h)
    assert h[2] == 0.0 and h[1] == pytest.approx(1.0)


def test_channels_last_and_spatial_shapes():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 4, 5, 3))
    np.testing.assert_allclose(
        sk.uncertainty_from_logits(z, axis=-1),
        np.moveaxis(sk.uncertainty_from_logits(np.moveaxis(z, -1, 1)), 0, 0),
    )
    assert sk.uncertainty_from_logits(z, axis=-1).shape == (2, 4, 5)


def test_validate_false_skips_only_the_value_read():
    # the losses check logits in their own single read and then pass validate=False
    u = sk.uncertainty_from_logits(np.array([[np.nan, 1.0]]), axis=1, validate=False)
    assert np.isnan(u).all()
    with pytest.raises(TypeError, match="`logits` must hold real numbers"):
        sk.uncertainty_from_logits(np.array([[True, False]]), axis=1, validate=False)


def test_correctness(xp):
    c = sk.correctness(xp.asarray(np.array([0, 1, 2])), xp.asarray(np.array([0, 2, 2])))
    xp_assert_equal(c, np.array([True, False, True]), xp=xp)


@pytest.mark.parametrize(
    ("call", "exc", "text"),
    [
        (lambda: sk.uncertainty_from_logits(np.zeros((2, 3)), axis=2), ValueError, "`axis`"),
        (lambda: sk.uncertainty_from_logits(np.array(1.0)), ValueError, "`logits`"),
        (lambda: sk.uncertainty_from_logits(np.array([[np.nan, 1.0]])), ValueError, "`logits`"),
        (lambda: sk.max_softmax_uncertainty(np.array([[1.5, -0.5]])), ValueError, "`probs`"),
        (lambda: sk.entropy_uncertainty(np.array([["a", "b"]])), TypeError, "`probs`"),
        (lambda: sk.correctness(np.zeros(3), np.zeros(4)), ValueError, "`label`"),
        (lambda: sk.uncertainty_from_logits(np.zeros((2, 3)), axis=1.0), TypeError, "`axis`"),
    ],
)
def test_bad_inputs(call, exc, text):
    with pytest.raises(exc, match=text):
        call()

"""Uncertainty helpers: precision of the logit path, agreement with float64 references, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import selectivekit as sk
from tests.conftest import (
    FUZZ,
    draw_mutated,
    fuzz_contract,
    no_silent_nan,
    requires_torch,
    to_numpy,
    xp_assert_close,
    xp_assert_equal,
)


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


# --- fuzzing: bad and extreme inputs keep the error contract (the helpers: tests/conftest.py) ---------------


@requires_torch
@FUZZ
@given(data=st.data())
def test_fuzz_uncertainty_functions(data):
    k = data.draw(st.integers(1, 4), label="k")
    n = data.draw(st.integers(1, 5), label="n")
    logits = np.asarray(data.draw(st.lists(st.floats(-30, 30), min_size=n * k, max_size=n * k))).reshape(n, k)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    axis = data.draw(st.sampled_from([1, -1, 0, 2, -3, 1.0, "1", None]), label="axis")
    name = data.draw(st.sampled_from(["msp", "entropy", "logits", "correctness"]), label="function")
    x = {"msp": probs, "entropy": probs, "logits": logits, "correctness": np.argmax(probs, axis=1)}[name]
    x = draw_mutated(data, x, "input")
    calls = {
        "msp": lambda: sk.max_softmax_uncertainty(x, axis=axis),
        "entropy": lambda: sk.entropy_uncertainty(x, axis=axis),
        "logits": lambda: sk.uncertainty_from_logits(x, axis=axis),
        "correctness": lambda: sk.correctness(x, np.argmax(logits, axis=1)),
    }
    result = fuzz_contract(calls[name])
    if result is None:
        return
    no_silent_nan(result)
    half = to_numpy(x).dtype == np.float16  # probabilities rounded to float16 need not sum to 1 within 2e-6
    xn = to_numpy(x).astype(np.float64) if name != "correctness" else to_numpy(x)
    if name == "msp":
        ref = 1 - xn.max(axis=axis)
        np.testing.assert_allclose(to_numpy(result), ref, atol=1e-3 if half else 2e-6)
    elif name == "logits":
        z = xn - xn.max(axis=axis, keepdims=True)
        ref = 1 - 1 / np.exp(z).sum(axis=axis)
        np.testing.assert_allclose(to_numpy(result), ref, atol=1e-6)
    elif name == "correctness":
        np.testing.assert_array_equal(to_numpy(result), xn.astype(np.int64) == np.argmax(logits, axis=1))


# --- labels and probabilities that were accepted ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "exc", "words"),
    [
        (np.array([np.nan, 1.0, 2.0]), ValueError, "NaN or infinite"),
        (np.array([np.inf, 1.0, 2.0]), ValueError, "NaN or infinite"),
        (np.array([0.5, 1.0, 2.0]), ValueError, "whole numbers"),
        (np.array([1e30, 1.0, 2.0]), ValueError, "outside the integer range"),
        (np.array([0j, 1, 2]), TypeError, "dtype complex128"),
        (np.array(["0", "1", "2"]), TypeError, "dtype <U1"),
        (np.array([0, None, 2], dtype=object), TypeError, "dtype object"),
    ],
    ids=["nan", "inf", "half", "huge", "complex", "string", "object"],
)
def test_correctness_rejects_non_labels(pred, exc, words):
    label = np.array([0, 1, 2])
    with pytest.raises(exc, match=f"`pred` must hold class labels.*{words}"):
        sk.correctness(pred, label)
    with pytest.raises(exc, match="`label` must hold class labels"):
        sk.correctness(label, pred)


def test_correctness_accepts_whole_floats_and_bools():
    torch = pytest.importorskip("torch")
    label = np.array([0, 1, 2, 2])
    pred = np.array([0.0, 2.0, 2.0, -0.0], dtype=np.float32)  # as MONAI's LoadImaged reads label maps
    np.testing.assert_array_equal(sk.correctness(pred, label), [True, False, True, False])
    np.testing.assert_array_equal(
        sk.correctness(np.array([True, False]), np.array([1, 1])), np.array([True, False])
    )
    t = sk.correctness(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]))
    assert t.dtype == torch.bool and t.tolist() == [True, False]


def test_correctness_mixed_libraries():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"`label` is a numpy.ndarray but `pred` is a torch.Tensor"):
        sk.correctness(torch.tensor([0, 1]), np.array([0, 1]))


@pytest.mark.parametrize("fn", [sk.max_softmax_uncertainty, sk.entropy_uncertainty], ids=["msp", "entropy"])
def test_probabilities_must_sum_to_one(fn):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"`probs` must sum to 1 over the class axis.*sums in \[0.3, 0.3\]"):
        fn(np.array([[0.1, 0.1, 0.1]]), axis=-1)
    with pytest.raises(ValueError, match="`probs` must sum to 1"):
        fn(np.zeros((2, 3)), axis=1)
    # real softmax outputs in float32, float16 and float64 (from float32) are accepted
    logits = torch.randn(64, 5, 7, generator=torch.Generator().manual_seed(0)) * 4
    for probs in (
        torch.softmax(logits, dim=1),
        torch.softmax(logits, dim=1).half(),
        torch.softmax(logits, dim=1).double(),
    ):
        assert fn(probs, axis=1).shape == (64, 7)
    p = np.array([[0.5, 0.5 + 1e-9]])
    assert np.isfinite(fn(p, axis=-1)).all()  # within the tolerance
    with pytest.raises(ValueError, match="`probs` must sum to 1"):
        fn(np.array([[0.5, 0.5 + 1e-4]]), axis=-1)
    with pytest.raises(ValueError, match="`probs` must sum to 1"):
        fn(np.array([[0.5, 0.5 + 1e-4]], dtype=np.float32), axis=-1)


def test_msp_value_on_normalized_rows():
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(sk.max_softmax_uncertainty(p, axis=-1), 1 - p.max(axis=-1))


def test_sigmoid_uncertainty_and_region_loss_in_every_namespace(xp):
    """Region (sigmoid) outputs: ``1 - max(p, 1 - p)`` against a float64 sigmoid written out, and the core
    loss with ``sigmoid=True`` against a loop over every (wrong, correct) pair of (region, voxel)."""
    from tests.test_loss import all_pairs_reference

    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(2, 3, 4, 4)) * 3).astype(np.float32)  # (B, 3 regions, H, W)
    targets = (rng.random(logits.shape) < 0.4).astype(np.int64)
    targets[1, :, 0] = 9  # not annotated, in every region
    u = sk.sigmoid_uncertainty_from_logits(xp.asarray(logits))
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    xp_assert_close(u, xp.asarray(np.minimum(p, 1 - p).astype(np.float32)), xp=xp, rtol=1e-6)
    loss = sk.margin_loss_from_logits(
        xp.asarray(logits), xp.asarray(targets), axis=1, sigmoid=True, ignore_index=9, margin=0.2
    )
    correct = (p > 0.5) == (targets == 1)
    want, _ = all_pairs_reference(np.minimum(p, 1 - p), correct, 0.2, "mean", mask=targets != 9)
    np.testing.assert_allclose(float(to_numpy(loss)), want, rtol=1e-5)

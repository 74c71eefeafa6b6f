"""Uncertainty from several predictions: each statistic against its formula written here with loops over the
samples, the identities under hypothesis, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selectivekit import (
    UNCERTAINTY_MEASURES,
    PredictiveAccumulator,
    max_softmax_uncertainty,
    predictive_uncertainty,
)
from tests.conftest import to_numpy, xp_assert_close


def _reference(stack: np.ndarray) -> dict[str, np.ndarray]:
    """Stack (S, V, C): every statistic voxel by voxel, straight from the definitions."""
    s, v, c = stack.shape

    def h(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    out = {k: np.zeros(v) for k in ("total", "aleatoric", "epistemic", "variance", "disagreement", "msp")}
    for i in range(v):
        mean = [sum(stack[j, i, k] for j in range(s)) / s for k in range(c)]
        top = int(np.argmax(mean))
        out["total"][i] = h(mean)
        out["aleatoric"][i] = sum(h(stack[j, i]) for j in range(s)) / s
        out["epistemic"][i] = out["total"][i] - out["aleatoric"][i]
        values = [stack[j, i, top] for j in range(s)]
        mu = sum(values) / s
        out["variance"][i] = sum((x - mu) ** 2 for x in values) / s
        votes = [int(np.argmax(stack[j, i])) for j in range(s)]
        out["disagreement"][i] = 1 - max(votes.count(k) for k in range(c)) / s
        out["msp"][i] = 1 - max(mean)
    return out


def _stacks(max_samples: int = 5):
    """Stacks (S, V, C) of probabilities, with repeated samples and exact zeros."""

    @st.composite
    def build(draw):
        s = draw(st.integers(1, max_samples))
        v = draw(st.integers(1, 6))
        c = draw(st.integers(2, 4))
        raw = draw(
            st.lists(
                st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 10.0]) | st.floats(0.01, 5.0),
                min_size=s * v * c,
                max_size=s * v * c,
            )
        )
        x = np.asarray(raw, dtype=np.float64).reshape(s, v, c)
        x[..., 0] += 1e-3  # no all-zero row
        if draw(st.booleans()):
            x[1:] = x[0]  # every sample the same
        return x / x.sum(axis=-1, keepdims=True)

    return build()


def test_every_statistic_matches_its_definition(xp):
    rng = np.random.default_rng(0)
    stack = rng.dirichlet([0.5, 1.0, 2.0], size=(4, 30))  # (S=4, V=30, C=3)
    result = predictive_uncertainty(xp.asarray(stack), axis=-1)
    want = _reference(stack)
    atol = 1e-12 if to_numpy(result.total).dtype == np.float64 else 1e-6
    xp_assert_close(result.mean, stack.mean(axis=0), xp=xp, rtol=0, atol=atol, dtype=result.mean.dtype)
    for name, field in (("total", "total"), ("aleatoric", "aleatoric"), ("epistemic", "epistemic"),
                        ("variance", "variance"), ("disagreement", "disagreement")):  # fmt: skip
        xp_assert_close(
            getattr(result, field), want[name], xp=xp, rtol=0, atol=atol, dtype=result.total.dtype
        )
    np.testing.assert_allclose(to_numpy(result.standard_deviation), np.sqrt(want["variance"]), atol=atol)
    np.testing.assert_allclose(to_numpy(result.measure("msp")), want["msp"], atol=atol)
    assert result.samples == 4
    np.testing.assert_array_equal(to_numpy(result.prediction), stack.mean(axis=0).argmax(axis=-1))


@given(_stacks())
def test_identities(stack):
    """total = aleatoric + epistemic; MI >= 0; all zero when the samples agree; the reference's values."""
    r = predictive_uncertainty(stack, axis=-1)
    want = _reference(stack)
    np.testing.assert_allclose(r.total, r.aleatoric + r.epistemic, atol=1e-12)
    assert np.all(r.epistemic >= 0) and np.all(r.variance >= 0)
    for name in ("total", "aleatoric", "variance", "disagreement"):
        np.testing.assert_allclose(getattr(r, name), want[name], atol=1e-12)
    np.testing.assert_allclose(r.epistemic, np.maximum(want["epistemic"], 0), atol=1e-12)
    if np.all(stack == stack[:1]):
        assert np.all(r.epistemic <= 1e-15) and np.all(r.variance == 0) and np.all(r.disagreement == 0)


@given(_stacks(), st.randoms(use_true_random=False))
def test_order_of_the_samples_does_not_matter(stack, random):
    order = list(range(stack.shape[0]))
    random.shuffle(order)
    a, b = predictive_uncertainty(stack, axis=-1), predictive_uncertainty(stack[order], axis=-1)
    for name in ("mean", "total", "aleatoric", "epistemic", "variance", "disagreement"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-12)


def test_streamed_one_at_a_time_equals_the_stack_and_axes():
    """Samples of shape (N, C, H, W) streamed equal the stack along another sample axis."""
    rng = np.random.default_rng(1)
    stack = rng.dirichlet([1.0, 1.0, 1.0], size=(3, 2, 4, 5))  # (S, N, H, W, C)
    channels_first = np.moveaxis(stack, -1, 2)  # (S, N, C, H, W)
    accumulator = PredictiveAccumulator(axis=1)
    for sample in channels_first:
        accumulator.update(sample)
    streamed = accumulator.result()
    stacked = predictive_uncertainty(np.moveaxis(channels_first, 0, -1), sample_axis=-1, axis=1)
    want = _reference(stack.reshape(3, -1, 3))
    for name in ("total", "aleatoric", "epistemic", "variance", "disagreement"):
        np.testing.assert_allclose(getattr(streamed, name).reshape(-1), want[name], atol=1e-12)
        np.testing.assert_array_equal(getattr(streamed, name), getattr(stacked, name))


def test_measures_by_name():
    rng = np.random.default_rng(2)
    stack = rng.dirichlet([1.0, 2.0], size=(5, 7))
    r = predictive_uncertainty(stack, axis=-1)
    np.testing.assert_allclose(r.measure("msp"), max_softmax_uncertainty(stack.mean(axis=0), axis=-1))
    fields = {
        "entropy": r.total,
        "expected-entropy": r.aleatoric,
        "mutual-information": r.epistemic,
        "variance": r.variance,
        "standard-deviation": np.sqrt(r.variance),
        "disagreement": r.disagreement,
    }
    assert set(fields) | {"msp"} == set(UNCERTAINTY_MEASURES)
    for name, value in fields.items():
        np.testing.assert_array_equal(r.measure(name), value)
    with pytest.raises(ValueError, match="`name` must be one of msp, entropy"):
        r.measure("bald")


def test_one_measure_alone_equals_the_full_result(xp):
    """``PredictiveAccumulator.measure`` (one map, less memory) gives ``result().measure``'s values, and
    ``mean()`` the result's mean."""
    rng = np.random.default_rng(3)
    stack = rng.dirichlet([0.3, 1.0, 1.0, 2.0], size=(6, 5, 9))  # (S, N, V, C)
    stack[:, 0, :3] = stack[0, 0, :3]  # voxels where every sample agrees
    stack[:, 1, 0] = [0.25, 0.25, 0.25, 0.25]  # a four-way tie of the mean
    accumulator = PredictiveAccumulator(axis=-1)
    for sample in stack:
        accumulator.update(xp.asarray(sample))
    full = accumulator.result()
    for name in UNCERTAINTY_MEASURES:
        np.testing.assert_array_equal(to_numpy(accumulator.measure(name)), to_numpy(full.measure(name)))
    np.testing.assert_array_equal(to_numpy(accumulator.mean()), to_numpy(full.mean))
    with pytest.raises(ValueError, match="`name` must be one of msp, entropy"):
        accumulator.measure("bald")
    with pytest.raises(ValueError, match="no prediction was added"):
        PredictiveAccumulator().measure("msp")


def test_refusals():
    torch = pytest.importorskip("torch")
    accumulator = PredictiveAccumulator(axis=-1)
    with pytest.raises(ValueError, match="no prediction was added"):
        accumulator.result()
    accumulator.update(np.array([[0.2, 0.8]]))
    with pytest.raises(ValueError, match=r"`probs` must have the shape of the first prediction \(1, 2\)"):
        accumulator.update(np.array([[0.2, 0.8], [0.5, 0.5]]))
    with pytest.raises(TypeError, match=r"`probs` is a .* but `the first prediction`"):
        accumulator.update(torch.tensor([[0.2, 0.8]]))
    with pytest.raises(ValueError, match="`probs`"):
        accumulator.update(np.array([[0.2, 0.9]]))  # does not sum to 1
    with pytest.raises(ValueError, match="`probs`"):
        accumulator.update(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="`axis` must be an integer"):
        PredictiveAccumulator(axis=1.0)
    with pytest.raises(ValueError, match="`samples` must have a sample axis and a class axis"):
        predictive_uncertainty(np.array([0.5, 0.5]))
    assert accumulator.samples == 1

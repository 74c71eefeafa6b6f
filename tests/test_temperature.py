"""Temperature scaling: the fit against a brute-force grid of the NLL written here, the exact gradient
against finite differences, what a temperature changes and does not, streaming, the file, the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selectivekit import TemperatureScaling, aurc, fit_temperature, uncertainty_from_logits

special = pytest.importorskip("scipy.special")


def _nll(cases, temperature):
    """Mean NLL per voxel at ``temperature`` (a scalar or one per class), from scipy's log_softmax."""
    total, n = 0.0, 0
    for logits, label in cases:
        z = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1]) / np.asarray(temperature)
        total -= special.log_softmax(z, axis=1)[np.arange(len(z)), label.reshape(-1)].sum()
        n += len(z)
    return total / n


def _cases(seed, c=3, n_cases=3, scale=5.0):
    """Over-confident logits (N=1, C, H, W) with labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_cases):
        label = rng.integers(0, c, (1, 6, 7))
        signal = scale * (np.eye(c)[label].transpose(0, 3, 1, 2) - 0.5)
        out.append((signal + scale * rng.normal(size=signal.shape), label))
    return out


def test_one_temperature_minimises_the_nll_on_a_grid():
    cases = _cases(0)
    fitted = fit_temperature(cases)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 4001))
    values = np.array([_nll(cases, t) for t in grid])
    assert fitted.nll_after <= values.min() + 1e-9
    assert fitted.temperature[0] == pytest.approx(grid[values.argmin()], rel=2e-3)
    assert fitted.nll_before == pytest.approx(_nll(cases, 1.0), rel=1e-12)
    assert fitted.nll_after == pytest.approx(_nll(cases, fitted.temperature[0]), rel=1e-12)
    assert fitted.voxels == 3 * 42 and fitted.temperature[0] > 1  # over-confident: softened


def test_per_class_temperatures_fit_at_least_as_well_and_their_gradient_is_exact():
    from selectivekit.temperature import _case, _nll_and_gradient

    cases = _cases(1, c=4)
    one, per_class = fit_temperature(cases), fit_temperature(cases, per_class=True)
    assert len(per_class.temperature) == 4
    assert per_class.nll_after <= one.nll_after + 1e-9
    assert per_class.nll_after == pytest.approx(_nll(cases, np.asarray(per_class.temperature)), rel=1e-12)
    flat, label, xp = _case(*cases[0], axis=1)
    log_t = np.array([0.3, -0.2, 0.1, 0.5])
    _, grad = _nll_and_gradient(flat, label, log_t, xp)
    for k in range(4):
        step = np.zeros(4)
        step[k] = 1e-6
        up = _nll([cases[0]], np.exp(log_t + step)) * flat.shape[0]
        down = _nll([cases[0]], np.exp(log_t - step)) * flat.shape[0]
        assert grad[k] == pytest.approx((up - down) / 2e-6, rel=1e-5)


@given(st.integers(0, 2**32 - 1), st.floats(0.1, 10.0))
def test_one_temperature_keeps_the_argmax_and_with_two_classes_the_aurc(seed, t):
    rng = np.random.default_rng(seed)
    logits = 4 * rng.normal(size=(50, 2))
    label = rng.integers(0, 2, 50)
    scaled = TemperatureScaling((t,), 0.0, 0.0, 50).apply(logits, axis=-1)
    np.testing.assert_array_equal(scaled.argmax(axis=-1), logits.argmax(axis=-1))
    correct = logits.argmax(axis=-1) == label
    before = aurc(uncertainty_from_logits(logits, axis=-1), correct)
    after = aurc(uncertainty_from_logits(scaled, axis=-1), correct)
    assert after == pytest.approx(before, rel=1e-12, abs=1e-15)


def test_with_three_classes_a_temperature_can_reorder_the_uncertainty():
    """Voxel a: margin 1 over the runner-up and 9 over the third class; voxel b: margin 2 over two tied
    runners-up. At T = 1 a is less certain; at T = 4 b is (its two rivals gain together)."""
    logits = np.array([[1.0, 0.0, -8.0], [2.0, 0.0, 0.0]])
    u = [
        uncertainty_from_logits(TemperatureScaling((t,), 0, 0, 2).apply(logits, axis=-1), axis=-1)
        for t in (1, 4)
    ]
    assert u[0][0] > u[0][1] and u[1][0] < u[1][1]


def test_streaming_torch_and_lazy_sequences_give_the_same_fit():
    torch = pytest.importorskip("torch")
    cases = _cases(2)
    want = fit_temperature(cases)
    calls = []

    def read():
        calls.append(1)
        return iter(cases)

    streamed = fit_temperature(read)
    assert streamed == want and len(calls) > 5  # the callable was read once per evaluation
    as_torch = fit_temperature([(torch.from_numpy(z), torch.from_numpy(y)) for z, y in cases])
    assert as_torch.temperature[0] == pytest.approx(want.temperature[0], rel=1e-9)
    scaled = want.apply(torch.from_numpy(cases[0][0]))
    assert isinstance(scaled, torch.Tensor)
    np.testing.assert_allclose(scaled.numpy(), cases[0][0] / want.temperature[0])


def test_file_round_trip_and_refusals(tmp_path):
    fitted = fit_temperature(_cases(3), per_class=True)
    fitted.to_json(tmp_path / "t.json")
    assert TemperatureScaling.from_json(tmp_path / "t.json") == fitted
    (tmp_path / "bad.json").write_text(
        '{"temperature": [-1.0], "nll_before": 1, "nll_after": 1, "voxels": 1}'
    )
    with pytest.raises(ValueError, match="not finite and positive"):
        TemperatureScaling.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="is not a temperature file"):
        TemperatureScaling.from_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="`logits` must have 3 classes on axis 1"):
        fitted.apply(np.zeros((1, 2, 4)))
    z, y = _cases(4)[0]
    with pytest.raises(ValueError, match="`cases` is empty"):
        fit_temperature([])
    with pytest.raises(ValueError, match="same number of classes"):
        fit_temperature([(z, y), (z[:, :2], np.minimum(y, 1))])
    with pytest.raises(TypeError, match="item 0 is a int"):
        fit_temperature([3])
    with pytest.raises(ValueError, match="`bounds` must satisfy"):
        fit_temperature([(z, y)], bounds=(2.0, 1.0))
    with pytest.raises(TypeError, match="`bounds` must be two numbers"):
        fit_temperature([(z, y)], bounds=3)
    with pytest.raises(ValueError, match="`logits` must be finite"):
        fit_temperature([(np.where(z > 0, np.inf, z), y)])
    with pytest.raises(ValueError, match="`label` must have the shape of `logits`"):
        fit_temperature([(z, y[..., :3])])
    with pytest.raises(ValueError, match="`label`"):
        fit_temperature([(z, y + 5)])
    with pytest.raises(TypeError, match="`logits` must be a float array"):
        fit_temperature([(np.zeros((1, 3, 2), dtype=np.int64), np.zeros((1, 2), dtype=np.int64))])


@given(st.integers(0, 2**16), st.floats(0.1, 10.0), st.integers(2, 5))
def test_scaling_probabilities_equals_scaling_their_logits(seed, t, k):
    """softmax(log p / T) = softmax(z / T) for p = softmax(z): the per-voxel log-normaliser cancels."""
    z = np.random.default_rng(seed).normal(size=(6, k)) * 4
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scaled = z / t
    want = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    got = TemperatureScaling((t,), 1.0, 1.0, 1).apply_to_probabilities(p, axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_scaling_probabilities_in_every_library_and_its_refusals(xp):
    from selectivekit._lib import to_numpy

    p = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    got = TemperatureScaling((0.5,), 1.0, 1.0, 1).apply_to_probabilities(xp.asarray(p), axis=-1)
    want = p**2 / (p**2).sum(axis=-1, keepdims=True)  # T = 0.5: p_k^(1/T), renormalised; 0 stays 0
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-6)
    with pytest.raises(ValueError, match="holds 3 temperatures"):
        TemperatureScaling((1.0, 2.0, 3.0), 1.0, 1.0, 1).apply_to_probabilities(xp.asarray(p), axis=-1)
    with pytest.raises(ValueError, match="sum to 1"):
        TemperatureScaling((2.0,), 1.0, 1.0, 1).apply_to_probabilities(xp.asarray(p * 0.5), axis=-1)

"""Risk-coverage curve, AURC and relatives against loops over thresholds written here."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.risk_coverage import aurc_optimal
from selectivekit.testing.strategies import scored_instances
from tests.conftest import XP_NAMES, namespace, to_numpy, xp_assert_close, xp_assert_equal


def reference_curve(u, risk):
    """Loop over the distinct thresholds: coverage, selective risk, threshold, accepted risk sum."""
    u = np.asarray(u, dtype=np.float64).ravel()
    risk = np.asarray(risk, dtype=np.float64).ravel()
    rows = []
    for t in sorted(set(u.tolist())):
        accepted = u <= t
        rows.append((accepted.sum() / u.size, risk[accepted].sum() / accepted.sum(), t, risk[accepted].sum()))
    return [np.array(col) for col in zip(*rows, strict=True)]


def reference_aurc(u, risk):
    cov, r, _, _ = reference_curve(u, risk)
    prev = 0.0
    total = 0.0
    for c, rr in zip(cov, r, strict=True):
        total += (c - prev) * rr
        prev = c
    return total


@pytest.mark.parametrize("name", XP_NAMES)
@given(data=scored_instances())
def test_curve_matches_threshold_loop(name, data):
    xp = namespace(name)
    u, correct = data
    curve = sk.risk_coverage_curve(xp.asarray(u), xp.asarray(correct))
    cov, risk, thr, _ = reference_curve(u, ~correct)
    xp_assert_close(curve.coverage, cov, xp=xp, rtol=1e-12)
    xp_assert_close(curve.risk, risk, xp=xp, rtol=1e-12, atol=1e-15)
    xp_assert_equal(curve.threshold, thr, xp=xp)
    assert sk.aurc(xp.asarray(u), xp.asarray(correct)) == pytest.approx(
        reference_aurc(u, ~correct), abs=1e-12
    )


@pytest.mark.parametrize("name", XP_NAMES)
@given(data=scored_instances(), seed=st.integers(0, 2**32 - 1))
def test_soft_risk_matches_loop(name, data, seed):
    xp = namespace(name)
    u, _ = data
    risk = np.random.default_rng(seed).random(u.size)
    got = sk.aurc(xp.asarray(u), risk=xp.asarray(risk))
    assert got == pytest.approx(reference_aurc(u, risk), abs=1e-12)
    curve = sk.risk_coverage_curve(xp.asarray(u), risk=xp.asarray(risk))
    xp_assert_close(curve.risk, reference_curve(u, risk)[1], xp=xp, rtol=1e-12)


@given(data=scored_instances(ties=False, min_size=2))
def test_aurc_equals_geifman_mean_rule_without_ties(data):
    u, correct = data
    if np.unique(u).size != u.size:
        return  # the continuous strategy can still tie; the identity is stated for tie-free data
    order = np.argsort(u)
    errors = np.cumsum(~correct[order])
    geifman = np.mean(errors / np.arange(1, u.size + 1))
    assert sk.aurc(u, correct) == pytest.approx(geifman, abs=1e-12)


@given(data=scored_instances(), seed=st.integers(0, 2**32 - 1))
def test_every_metric_invariant_to_input_order(data, seed):
    u, correct = data
    perm = np.random.default_rng(seed).permutation(u.size)
    pu, pc = u[perm], correct[perm]
    for fn in (sk.aurc, sk.e_aurc, sk.augrc):
        assert fn(u, correct) == fn(pu, pc)
    for c in (0.1, 0.5, 0.9, 1.0):
        assert sk.risk_at_coverage(u, correct, c) == sk.risk_at_coverage(pu, pc, c)
        a, b = sk.selective_split(u, correct, c), sk.selective_split(pu, pc, c)
        assert dataclasses.replace(a, gamma=0.0) == dataclasses.replace(b, gamma=0.0)
        assert a.gamma == b.gamma or (math.isnan(a.gamma) and math.isnan(b.gamma))
    for r in (0.0, 0.3, 1.0):
        assert sk.coverage_at_risk(u, correct, r) == sk.coverage_at_risk(pu, pc, r)


@given(data=scored_instances())
def test_e_aurc_nonnegative_and_zero_for_perfect_ranking(data):
    u, correct = data
    assert sk.e_aurc(u, correct) >= 0.0
    perfect = np.where(correct, 0.0, 1.0) + 1e-3 * np.arange(u.size)  # wrong strictly above correct
    assert sk.e_aurc(perfect, correct) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("n", "e"), [(1, 0), (1, 1), (5, 2), (100, 37), (5000, 4999), (20000, 9000)])
def test_aurc_optimal_closed_form(n, e):
    correct = np.arange(n) >= e  # wrong first in index order...
    u = np.where(correct, 0.0, 1.0) + np.arange(n) * 1e-9  # ...but ranked last
    expected = np.mean(np.cumsum(~correct[np.argsort(u)]) / np.arange(1, n + 1))
    assert aurc_optimal(n, e) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@given(data=scored_instances())
def test_augrc_matches_loop(data):
    u, correct = data
    cov, _, _, accepted_err = reference_curve(u, ~correct)
    expected = float(np.sum(np.diff(np.concatenate([[0.0], cov])) * accepted_err / u.size))
    assert sk.augrc(u, correct) == pytest.approx(expected, abs=1e-12)


@given(data=scored_instances(), c=st.floats(0.01, 1.0), r=st.floats(0.0, 1.0))
def test_operating_points_agree_with_curve(data, c, r):
    u, correct = data
    curve = sk.risk_coverage_curve(u, correct)
    cov, risk = curve.coverage, curve.risk
    g = int(np.argmax(cov >= c - 1e-12))
    assert sk.risk_at_coverage(u, correct, c) == risk[g]
    t, realized = sk.coverage_threshold(u, c)
    assert realized == cov[g] and t == curve.threshold[g]
    ok = risk <= r
    assert sk.coverage_at_risk(u, correct, r) == (cov[ok].max() if ok.any() else 0.0)


def test_mask_excludes_instances():
    u = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    correct = np.array([True, False, True, False, True])
    mask = np.array([True, True, False, True, True])
    assert sk.aurc(u, correct, mask=mask) == sk.aurc(u[mask], correct[mask])
    assert sk.augrc(u, correct, mask=mask) == sk.augrc(u[mask], correct[mask])


def test_float32_precision_keeps_distinct_thresholds():
    u = np.array([1e-13, 2e-13, 3e-13, 0.5], dtype=np.float32)
    curve = sk.risk_coverage_curve(u, np.array([1, 1, 0, 0]))
    assert to_numpy(curve.threshold).size == 4 and curve.threshold.dtype == np.float32


def test_torch_returns_tensors_on_input_device():
    torch = pytest.importorskip("torch")
    curve = sk.risk_coverage_curve(torch.tensor([0.1, 0.2, 0.2]), torch.tensor([True, False, True]))
    assert isinstance(curve.coverage, torch.Tensor) and curve.coverage.device.type == "cpu"
    assert isinstance(sk.aurc(torch.tensor([0.1, 0.2]), torch.tensor([True, False])), float)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32])
@pytest.mark.parametrize("sign", ["nonnegative", "mixed"])
@given(data=scored_instances(min_size=1, max_size=200))
def test_numpy_sort_key_paths_match_loop(dtype, sign, data):
    # The NumPy fast path carries the error flag inside the sort key; each dtype/sign takes another key.
    u, correct = data
    u = np.abs(u) if sign == "nonnegative" else u
    u = (u * 8).astype(dtype)
    curve = sk.risk_coverage_curve(u, correct)
    cov, risk, thr, _ = reference_curve(u.astype(np.float64), ~correct)
    np.testing.assert_allclose(curve.coverage, cov, rtol=1e-12)
    np.testing.assert_allclose(curve.risk, risk, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(curve.threshold, dtype=np.float64), thr)


def test_negative_zero_ties_with_zero():
    u = np.array([-0.0, 0.0, 0.5, -0.0], dtype=np.float32)
    curve = sk.risk_coverage_curve(u, np.array([True, False, True, False]))
    np.testing.assert_array_equal(curve.coverage, [0.75, 1.0])
    np.testing.assert_allclose(curve.risk, [2 / 3, 0.5])
    mixed = np.array([-0.0, 0.0, -1.5, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(
        sk.risk_coverage_curve(mixed, np.array([1, 0, 1, 0])).coverage, [0.25, 0.75, 1.0]
    )

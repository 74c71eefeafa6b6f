"""Thresholds, psi_c and gamma against brute-force counting written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.testing.strategies import scored_instances
from tests.conftest import XP_NAMES, namespace


def brute_split(u, correct, c):
    n = u.size
    k = max(1, math.ceil(round(c * n, 9)))
    t = np.sort(u)[k - 1]
    acc = u <= t
    ref = ~acc
    wrong = ~correct
    return {
        "threshold": t,
        "coverage": acc.mean(),
        "n_accepted": int(acc.sum()),
        "n_referred": int(ref.sum()),
        "errors_accepted": int((wrong & acc).sum()),
        "errors_referred": int((wrong & ref).sum()),
        "psi_c": correct[acc].mean(),
        "psi_1": correct.mean(),
        "gamma": wrong[ref].mean() if ref.any() else math.nan,
    }


@pytest.mark.parametrize("name", XP_NAMES)
@given(data=scored_instances(), c=st.floats(0.001, 1.0))
def test_split_matches_brute_force(name, data, c):
    xp = namespace(name)
    u, correct = data
    got = sk.selective_split(xp.asarray(u), xp.asarray(correct), c)
    want = brute_split(u, correct, c)
    for key, value in want.items():
        g = getattr(got, key)
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(value, abs=1e-12), key
    assert sk.selective_accuracy(xp.asarray(u), xp.asarray(correct), c) == got.psi_c


@given(data=scored_instances(), c=st.floats(0.001, 1.0))
def test_threshold_is_smallest_observed_reaching_coverage(data, c):
    u, _ = data
    t, realized = sk.coverage_threshold(u, c)
    assert t in u
    assert realized == np.mean(u <= t) and realized >= c - 1e-12
    smaller = u[u < t]
    if smaller.size:  # the next smaller observed threshold falls short of c
        assert np.mean(u <= smaller.max()) < c - 1e-12


def test_ties_are_never_split():
    u = np.zeros(10)
    u[-1] = 1.0
    t, realized = sk.coverage_threshold(u, 0.5)
    assert (t, realized) == (0.0, 0.9)
    split = sk.selective_split(u, np.arange(10) % 2 == 0, 0.5)
    assert split.n_accepted == 9 and split.n_referred == 1


@pytest.mark.parametrize(
    ("c", "n", "k"), [(0.3, 10, 3), (0.7, 10, 7), (0.95, 20, 19), (0.1, 3, 1), (1.0, 7, 7)]
)
def test_required_count_robust_to_float_error(c, n, k):
    u = np.arange(n, dtype=np.float64)
    assert sk.coverage_threshold(u, c) == (float(k - 1), k / n)


def test_gamma_nan_only_when_nothing_referred():
    u = np.array([0.1, 0.2, 0.3])
    assert math.isnan(sk.gamma(u, np.array([1, 0, 1]), 1.0))
    assert sk.gamma(u, np.array([1, 0, 0]), 0.5) == 1.0
    assert sk.gamma(u, np.array([1, 0, 1]), 0.5) == 0.0


def test_mask_restricts_instances():
    u = np.array([0.1, 0.9, 0.2, 0.8])
    correct = np.array([True, False, True, True])
    mask = np.array([True, True, True, False])
    assert sk.selective_split(u, correct, 0.5, mask=mask) == sk.selective_split(u[:3], correct[:3], 0.5)
    assert sk.coverage_threshold(u, 0.5, mask=mask) == sk.coverage_threshold(u[:3], 0.5)

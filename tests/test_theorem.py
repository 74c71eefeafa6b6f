"""Theorem 1 of the paper: identities, bounds and the tie-aware statement of (i)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.testing.strategies import scored_instances
from tests.conftest import FUZZ, SCALAR_MUTATIONS, fuzz_contract, no_silent_nan


@given(data=scored_instances(), c=st.floats(0.001, 1.0))
def test_identity_ii_and_bounds_hold_on_data(data, c):
    u, correct = data
    chk = sk.check_theorem1(u, correct, c)
    assert chk.holds
    assert chk.lhs == pytest.approx(chk.rhs, abs=1e-12)
    if chk.coverage < 1:
        assert chk.gamma_low - 1e-12 <= chk.gamma <= chk.gamma_high + 1e-12
        slack = (1 - chk.gamma) * (1 - chk.coverage)
        assert chk.psi_1 - chk.coverage - 1e-12 <= slack <= chk.psi_1 + 1e-12


def gamma_maximal_everywhere(u, correct):
    """Loop over every achievable threshold: is the referred set as wrong as any ranking could make it?"""
    wrong = ~correct
    for t in np.unique(u):
        ref = u > t
        if ref.any() and (wrong & ref).sum() != min(wrong.sum(), ref.sum()):
            return False
    return True


@given(data=scored_instances())
def test_i_gamma_maximal_iff_no_correct_strictly_above_a_wrong(data):
    u, correct = data
    separates = not (correct.any() and (~correct).any()) or u[~correct].min() >= u[correct].max()
    assert gamma_maximal_everywhere(u, correct) == separates
    assert sk.check_theorem1(u, correct, 0.5).ranking_separates == separates


def test_i_with_ties_strict_separation_is_sufficient_not_necessary():
    # A wrong and a correct instance tie: no threshold splits them, gamma stays maximal everywhere,
    # although "every wrong u exceeds every correct u" (the paper's wording) is false.
    u = np.array([0.1, 0.5, 0.5])
    correct = np.array([True, False, True])
    assert gamma_maximal_everywhere(u, correct)
    assert sk.check_theorem1(u, correct, 0.3).gamma_maximal


@given(p1=st.floats(0, 1), g=st.floats(0, 1), c=st.floats(0.01, 0.99))
def test_derivatives_match_finite_differences(p1, g, c):
    h = 1e-6
    assert sk.dpsi_dgamma(c) == pytest.approx(
        (sk.psi_c_from(p1, min(g + h, 1), c) - sk.psi_c_from(p1, max(g - h, 0), c))
        / (min(g + h, 1) - max(g - h, 0)),
        rel=1e-5,
        abs=1e-7,
    )
    assert sk.dpsi_dpsi1(c) == pytest.approx(
        (sk.psi_c_from(min(p1 + h, 1), g, c) - sk.psi_c_from(max(p1 - h, 0), g, c))
        / (min(p1 + h, 1) - max(p1 - h, 0)),
        rel=1e-5,
    )
    assert sk.dpsi_dgamma(c) > 0 and sk.dpsi_dpsi1(c) > 0


def test_erratum_derivative_is_not_the_printed_one():
    c, g = 0.5, 0.2
    assert sk.dpsi_dgamma(c) == pytest.approx((1 - c) / c)
    assert sk.dpsi_dgamma(c) != pytest.approx(g * (1 - c) / c)


def test_bounds_at_full_coverage_are_undefined():
    low, high = sk.gamma_bounds(0.9, 1.0)
    assert math.isnan(low) and math.isnan(high)
    assert sk.psi_c_from(0.9, math.nan, 1.0) == 0.9


@pytest.mark.parametrize(
    ("fn", "args", "exc", "text"),
    [
        (sk.psi_c_from, (1.5, 0.5, 0.5), ValueError, "`psi_1`"),
        (sk.psi_c_from, (0.5, -0.1, 0.5), ValueError, "`gamma`"),
        (sk.psi_c_from, (0.5, 0.5, 0.0), ValueError, "`coverage`"),
        (sk.gamma_bounds, (0.5, 2.0), ValueError, "`coverage`"),
        (sk.dpsi_dgamma, ("0.5",), TypeError, "`coverage`"),
        (sk.dpsi_dpsi1, (math.nan,), ValueError, "`coverage`"),
    ],
)
def test_bad_scalars_raise(fn, args, exc, text):
    with pytest.raises(exc, match=text):
        fn(*args)


# --- fuzzing: bad and extreme inputs keep the error contract (the helpers: tests/conftest.py) ---------------


@FUZZ
@given(
    psi_1=st.sampled_from([0.0, 0.3, 1.0, *SCALAR_MUTATIONS]),
    gamma=st.sampled_from([0.0, 0.6, 1.0, *SCALAR_MUTATIONS]),
    coverage=st.sampled_from([0.5, 1.0, 1e-9, *SCALAR_MUTATIONS]),
)
def test_fuzz_theorem_scalars(psi_1, gamma, coverage):
    for call in (
        lambda: sk.psi_c_from(psi_1, gamma, coverage),
        lambda: sk.dpsi_dgamma(coverage),
        lambda: sk.dpsi_dpsi1(coverage),
    ):
        result = fuzz_contract(call)
        if result is not None:
            no_silent_nan(result)
    bounds = fuzz_contract(lambda: sk.gamma_bounds(psi_1, coverage))
    if bounds is not None:  # documented: both NaN at coverage 1 (nothing referred, gamma undefined)
        no_silent_nan(bounds, allowed=("result[0]", "result[1]") if coverage == 1 else ())
        assert 0 <= bounds[0] <= 1 or coverage == 1
    value = fuzz_contract(lambda: sk.psi_c_from(psi_1, gamma, coverage))
    if value is not None:
        p1, g, c = float(psi_1), float(gamma), float(coverage)  # reference in float64 (gamma: float32 too)
        expected = p1 if c == 1 else (p1 - (1 - g) * (1 - c)) / c
        assert value == pytest.approx(expected)


def test_gamma_is_checked_at_full_coverage():
    assert sk.psi_c_from(0.8, math.nan, 1.0) == 0.8  # gamma is undefined when nothing is referred
    with pytest.raises(TypeError, match="`gamma` must be a real number"):
        sk.psi_c_from(0.8, "0.5", 1.0)

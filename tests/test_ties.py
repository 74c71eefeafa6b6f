"""``ties="expected"``: the expectation over random orders of tied instances, against brute force and
scikit-learn; ``ties="step"`` stays the default."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, roc_auc_score

import selectivekit as sk
from selectivekit.risk_coverage import aurc_optimal, curve_area
from tests.conftest import XP_NAMES, namespace


def mean_rule(u_order_risk):
    """Tie-free mean rule of one order: (1/N) sum_k r(k) and (1/N) sum_k g(k)."""
    r = np.asarray(u_order_risk, dtype=np.float64)
    n = r.size
    cum = np.cumsum(r)
    k = np.arange(1, n + 1)
    return float(np.mean(cum / k)), float(np.mean(cum / n))


def exact_expectation(u, risk):
    """Average of the mean rule over every order of the tied instances (all permutations per group)."""
    u, risk = np.asarray(u, dtype=np.float64), np.asarray(risk, dtype=np.float64)
    groups = [risk[u == t] for t in np.unique(u)]
    total_a = total_g = 0.0
    count = 0
    for perm in itertools.product(*(itertools.permutations(g) for g in groups)):
        a, g = mean_rule(np.concatenate([np.array(p) for p in perm]))
        total_a, total_g, count = total_a + a, total_g + g, count + 1
    return total_a / count, total_g / count


tied_data = st.integers(1, 7).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 2), min_size=n, max_size=n), st.lists(st.booleans(), min_size=n, max_size=n)
    )
)


@settings(max_examples=60)
@given(data=tied_data)
def test_expected_equals_average_over_every_tie_order(data):
    u, correct = np.array(data[0], dtype=np.float64) / 4, np.array(data[1])
    want_aurc, want_augrc = exact_expectation(u, ~correct)
    assert sk.aurc(u, correct, ties="expected") == pytest.approx(want_aurc, rel=1e-12, abs=1e-15)
    assert sk.augrc(u, correct, ties="expected") == pytest.approx(want_augrc, rel=1e-12, abs=1e-15)
    want_e = want_aurc - aurc_optimal(u.size, int((~correct).sum()))
    assert sk.e_aurc(u, correct, ties="expected") == pytest.approx(want_e, abs=1e-12)


def test_expected_soft_risk_equals_average_over_every_tie_order():
    rng = np.random.default_rng(3)
    u = np.array([0.1, 0.1, 0.1, 0.3, 0.3, 0.5, 0.5, 0.5])
    risk = rng.random(u.size)
    want_aurc, want_augrc = exact_expectation(u, risk)
    assert sk.aurc(u, risk=risk, ties="expected") == pytest.approx(want_aurc, rel=1e-12)
    assert sk.augrc(u, risk=risk, ties="expected") == pytest.approx(want_augrc, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_expected_matches_random_tie_breaking_monte_carlo(seed):
    # Large tie groups (far past the harmonic table) averaged over many random tie-breakings.
    rng = np.random.default_rng(seed)
    n = 3000
    u = rng.integers(0, 4, n).astype(np.float32)  # 4 groups of ~750
    correct = rng.random(n) < np.where(u > 1, 0.5, 0.9)
    draws = []
    for _ in range(400):
        order = np.lexsort((rng.random(n), u))
        draws.append(mean_rule(~correct[order]))
    mc = np.array(draws)
    se = mc.std(axis=0) / math.sqrt(len(draws))
    got = (sk.aurc(u, correct, ties="expected"), sk.augrc(u, correct, ties="expected"))
    for g, m, s in zip(got, mc.mean(axis=0), se, strict=True):
        assert abs(g - m) < 5 * s + 1e-12
    # and the expectation over many draws differs from the step rule here
    assert abs(sk.aurc(u, correct) - got[0]) > 10 * se[0]


@pytest.mark.parametrize("with_ties", [False, True])
@pytest.mark.parametrize("n", [50, 40_000])
def test_expected_augrc_equals_sklearn_auroc_formula(with_ties, n):
    rng = np.random.default_rng(n)
    wrong = rng.random(n) < 0.3
    u = rng.random(n) + 0.3 * wrong
    if with_ties:
        u = np.round(u, 1)
    else:
        u = rng.permutation(n).astype(np.float64) + 0.5 * wrong  # distinct values
        u = np.argsort(np.argsort(u)).astype(np.float64)
    e, c = int(wrong.sum()), int((~wrong).sum())
    auroc = roc_auc_score(wrong, u)  # ties count one half
    want = (e * (e + 1) / 2 + (1 - auroc) * e * c) / n**2
    assert sk.augrc(u, ~wrong, ties="expected") == pytest.approx(want, rel=1e-12)
    if not with_ties:
        assert sk.augrc(u, ~wrong) == pytest.approx(want, rel=1e-12)


@given(data=tied_data, seed=st.integers(0, 2**32 - 1))
def test_expected_is_order_invariant(data, seed):
    u, correct = np.array(data[0], dtype=np.float64), np.array(data[1])
    perm = np.random.default_rng(seed).permutation(u.size)
    for fn in (sk.aurc, sk.augrc, sk.e_aurc):
        assert fn(u[perm], correct[perm], ties="expected") == fn(u, correct, ties="expected")


@pytest.mark.parametrize("name", XP_NAMES)
def test_expected_equals_step_without_ties(name):
    xp = namespace(name)
    rng = np.random.default_rng(5)
    u = rng.permutation(5000).astype(np.float64) / 5000
    correct = rng.random(5000) < 0.7
    du, dc = xp.asarray(u), xp.asarray(correct)
    for fn in (sk.aurc, sk.augrc, sk.e_aurc):
        # the same number up to rounding: the step rule takes a faster pass with another summation order
        assert fn(du, dc, ties="expected") == pytest.approx(fn(du, dc), rel=1e-13)
        assert fn(du, dc, ties="expected") == pytest.approx(fn(u, correct), rel=1e-12)


@pytest.mark.parametrize("name", XP_NAMES)
def test_expected_on_every_backend_matches_numpy(name):
    xp = namespace(name)
    rng = np.random.default_rng(6)
    u = np.round(rng.random(4000), 2).astype(np.float32)
    correct = rng.random(4000) < 0.6
    for fn in (sk.aurc, sk.augrc):
        got = fn(xp.asarray(u), xp.asarray(correct), ties="expected")
        assert got == pytest.approx(fn(u, correct, ties="expected"), rel=1e-12)


def test_curve_area_matches_the_functions():
    rng = np.random.default_rng(7)
    u = np.round(rng.random(3000), 2)
    correct = rng.random(3000) < 0.6
    curve = sk.risk_coverage_curve(u, correct)
    for ties in ("step", "expected"):
        assert curve_area(curve, ties=ties) == pytest.approx(sk.aurc(u, correct, ties=ties), rel=1e-13)
        got = curve_area(curve, generalized=True, ties=ties)
        assert got == pytest.approx(sk.augrc(u, correct, ties=ties), rel=1e-13)


def test_step_is_the_default_and_differs_on_ties():
    u = np.array([0.1, 0.2, 0.2])
    correct = np.array([True, True, False])
    assert sk.aurc(u, correct) == sk.aurc(u, correct, ties="step")
    # step: (1/3) 0 + (2/3)(1/3); expected: (1/3)(0 + (1/2)/2 + 1/3)
    assert sk.aurc(u, correct) == pytest.approx(2 / 9)
    assert sk.aurc(u, correct, ties="expected") == pytest.approx((0.25 + 1 / 3) / 3)


@pytest.mark.parametrize("bad", ["linear", None, 1])
def test_bad_ties_names_the_argument(bad):
    with pytest.raises(ValueError, match="`ties`"):
        sk.aurc([0.1, 0.2], [True, False], ties=bad)
    with pytest.raises(ValueError, match="`ties`"):
        sk.augrc([0.1, 0.2], [True, False], ties=bad)
    with pytest.raises(ValueError, match="`ties`"):
        sk.e_aurc([0.1, 0.2], [True, False], ties=bad)


def test_aurc_dice_refuses_expected_ties():
    pred, label = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 1]])
    u = np.array([[0.1, 0.9, 0.2, 0.3]])
    assert sk.aurc_dice(pred, label, u, num_classes=2, ties="step") == sk.aurc_dice(
        pred, label, u, num_classes=2
    )
    with pytest.raises(ValueError, match=r"`ties`.*Dice"):
        sk.aurc_dice(pred, label, u, num_classes=2, ties="expected")


@given(data=tied_data, c=st.floats(0.05, 1.0))
def test_theorem1_counts_match_sklearn_confusion_matrix(data, c):
    u, correct = np.array(data[0], dtype=np.float64), np.array(data[1])
    split = sk.selective_split(u, correct, c)
    accepted = u <= split.threshold
    # rows: referred/accepted, columns: correct/wrong
    (ref_ok, ref_wrong), (acc_ok, acc_wrong) = confusion_matrix(accepted, ~correct, labels=[False, True])
    assert (split.n_accepted, split.n_referred) == (acc_ok + acc_wrong, ref_ok + ref_wrong)
    assert (split.errors_accepted, split.errors_referred) == (acc_wrong, ref_wrong)
    if ref_ok + ref_wrong:
        assert split.gamma == pytest.approx(ref_wrong / (ref_ok + ref_wrong))
    assert split.psi_c == pytest.approx(acc_ok / (acc_ok + acc_wrong))

"""Risk-coverage curve, AURC and relatives against loops over thresholds written here."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, roc_auc_score

import selectivekit as sk
from selectivekit.risk_coverage import aurc_optimal, curve_area
from selectivekit.testing.strategies import scored_instances
from tests.conftest import (
    FUZZ,
    JAX_SIZES,
    SCALAR_MUTATIONS,
    XP_NAMES,
    draw_instance_args,
    draw_instances,
    fuzz_contract,
    namespace,
    no_silent_nan,
    requires_torch,
    to_numpy,
    xp_assert_close,
    xp_assert_equal,
)


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


def draw_scored(data, name, **kwargs):
    """A `scored_instances` example for backend ``name``: of any size, or of one of `JAX_SIZES` under JAX."""
    if name == "jax":
        n = data.draw(st.sampled_from([k for k in JAX_SIZES if k <= kwargs.get("max_size", 60)]), label="n")
        kwargs.update(min_size=n, max_size=n)
    return data.draw(scored_instances(**kwargs), label="instances")


@pytest.mark.parametrize("name", XP_NAMES)
@given(data=st.data())
def test_curve_matches_threshold_loop(name, data):
    xp = namespace(name)
    u, correct = draw_scored(data, name)
    curve = sk.risk_coverage_curve(xp.asarray(u), xp.asarray(correct))
    cov, risk, thr, _ = reference_curve(u, ~correct)
    xp_assert_close(curve.coverage, cov, xp=xp, rtol=1e-12)
    xp_assert_close(curve.risk, risk, xp=xp, rtol=1e-12, atol=1e-15)
    xp_assert_equal(curve.threshold, thr, xp=xp)
    assert sk.aurc(xp.asarray(u), xp.asarray(correct)) == pytest.approx(
        reference_aurc(u, ~correct), abs=1e-12
    )


@pytest.mark.parametrize("name", XP_NAMES)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_soft_risk_matches_loop(name, data, seed):
    xp = namespace(name)
    u, _ = draw_scored(data, name)
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


# ----------------------------------------------------------------------------------------------------------
# ties="expected": the expectation over random orders of tied instances, against brute force and
# scikit-learn; ties="step" stays the default (formerly tests/test_ties.py)


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


# --- fuzzing: bad and extreme inputs keep the error contract (the helpers: tests/conftest.py) ---------------


def _aurc_reference(u: np.ndarray, c: np.ndarray, generalized: bool) -> float:
    u, wrong = u.astype(np.float64).reshape(-1), ~c.reshape(-1)
    n, area, prev = u.size, 0.0, 0.0
    for t in np.unique(u):
        acc = u <= t
        risk = wrong[acc].sum() / (n if generalized else acc.sum())
        area += (acc.sum() / n - prev) * risk
        prev = acc.sum() / n
    return area


COVERAGE_METRICS = {
    "selective_split": sk.selective_split,
    "selective_accuracy": sk.selective_accuracy,
    "gamma": sk.gamma,
    "check_theorem1": sk.check_theorem1,
    "risk_at_coverage": sk.risk_at_coverage,
}


@requires_torch
@FUZZ
@given(data=st.data())
def test_fuzz_instance_metrics(data):
    u, c = draw_instances(data)
    target, args = draw_instance_args(data, u, c)
    option = data.draw(st.sampled_from([*SCALAR_MUTATIONS, 0.5, 1.0])) if target == "option" else 0.5
    name = data.draw(st.sampled_from(["aurc", "augrc", "e_aurc", "curve", "coverage_threshold",
                                      "coverage_at_risk", *COVERAGE_METRICS]), label="function")  # fmt: skip
    uu, cc, mask = args["uncertainty"], args["correct"], args["mask"]
    calls = {
        "aurc": lambda: sk.aurc(uu, cc, mask=mask),
        "augrc": lambda: sk.augrc(uu, cc, mask=mask),
        "e_aurc": lambda: sk.e_aurc(uu, cc, mask=mask),
        "curve": lambda: sk.risk_coverage_curve(uu, cc, mask=mask),
        "coverage_threshold": lambda: sk.coverage_threshold(uu, option, mask=mask),
        "coverage_at_risk": lambda: sk.coverage_at_risk(uu, cc, option, mask=mask),
    }
    calls.update({k: (lambda f=f: f(uu, cc, option, mask=mask)) for k, f in COVERAGE_METRICS.items()})
    result = fuzz_contract(calls[name])
    if result is None:
        return
    # gamma is NaN when nothing is referred (the field of check_theorem1's result, or gamma's own value);
    # the assertion below checks that this is the only case
    allowed = ("gamma", "rhs", "gamma_low", "gamma_high") if name != "aurc" else ()
    no_silent_nan(result, allowed=(*allowed, "result") if name == "gamma" else allowed)
    if name in ("aurc", "augrc") and mask is None:
        ref = _aurc_reference(to_numpy(uu), to_numpy(cc).astype(bool), name == "augrc")
        assert result == pytest.approx(ref, rel=1e-9, abs=1e-12)
    if name == "gamma" and math.isnan(result):
        assert sk.coverage_threshold(uu, option, mask=mask)[1] == 1.0  # NaN only when nothing is referred

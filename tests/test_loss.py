"""The uncertainty loss (SPEC 6) against an all-pairs loop, and its properties (SPEC 3 (i))."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selectivekit.loss import uncertainty_margin_loss
from tests.conftest import namespace, to_numpy, xp_assert_equal

# Values on a dyadic grid: every difference and margin below is exact in float32 and float64, so exactly
# tied pairs (u_k + m == u_j) really are tied in the implementation and in the reference.
GRID_MARGINS = [0.0, 0.125, 0.25, 0.5, 1.0]


def all_pairs_reference(u, correct, margin, reduction="sum", mask=None):
    """Value and gradient by a loop over every (wrong, correct) pair, in float64."""
    u = np.asarray(u, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    keep = np.ones_like(correct) if mask is None else np.asarray(mask, dtype=bool).ravel()
    wrong = [j for j in range(u.size) if keep[j] and not correct[j]]
    right = [k for k in range(u.size) if keep[k] and correct[k]]
    total = 0.0
    grad = np.zeros_like(u)
    for j in wrong:
        for k in right:
            d = u[k] - u[j] + margin
            if d > 0:  # active pair: +1 to the correct side, -1 to the wrong side
                total += d
                grad[k] += 1.0
                grad[j] -= 1.0
    if reduction == "mean" and wrong and right:
        total /= len(wrong) * len(right)
        grad /= len(wrong) * len(right)
    return total, grad


def brute_force_gamma_is_maximal(u, correct):
    """At every threshold t that refers something, gamma(t) equals the best any ranking could reach."""
    u = np.asarray(u, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n_errors = int((~correct).sum())
    for t in np.unique(u):
        referred = u > t
        n_referred = int(referred.sum())
        if n_referred == 0:
            continue
        gamma = float((~correct[referred]).sum()) / n_referred
        best = min(n_errors, n_referred) / n_referred
        if gamma != best:
            return False
    return True


@st.composite
def grid_batches(draw, max_size=40, min_size=1):
    """Uncertainty on a coarse dyadic grid (heavy ties), a correctness vector and a margin."""
    n = draw(st.integers(min_size, max_size))
    steps = draw(st.lists(st.integers(-4, 8), min_size=n, max_size=n))
    u = np.asarray(steps, dtype=np.float64) / 8.0
    correct = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    margin = draw(st.sampled_from(GRID_MARGINS))
    return u, correct, margin


def loss_np(u, correct, xp, **kwargs):
    """The loss as a float, after checking it is a 0-d array of the input's namespace, dtype and device."""
    u = xp.asarray(u)
    loss = uncertainty_margin_loss(u, xp.asarray(correct), **kwargs)
    value = to_numpy(loss)
    xp_assert_equal(loss, value.reshape(()), xp=xp, dtype=xp.float64 if u.dtype == xp.float64 else xp.float32)
    return float(value)


# --- exact == all pairs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches())
def test_exact_equals_all_pairs_value(xp, reduction, batch):
    u, correct, margin = batch
    expected, _ = all_pairs_reference(u, correct, margin, reduction)
    got = loss_np(u, correct, xp, margin=margin, reduction=reduction)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


@given(
    u=st.lists(st.floats(-3, 3, allow_nan=False, width=64), min_size=2, max_size=30),
    data=st.data(),
    margin=st.floats(0, 2, allow_nan=False),
)
def test_exact_equals_all_pairs_arbitrary_floats(xp, u, data, margin):
    u = np.asarray(u)
    correct = np.asarray(data.draw(st.lists(st.booleans(), min_size=u.size, max_size=u.size)))
    expected, _ = all_pairs_reference(u, correct, margin)
    got = loss_np(u, correct, xp, margin=margin, reduction="sum")
    # (u_k + m) - u_j and u_k - u_j + m round differently; pairs within rounding of 0 differ by ~1e-16.
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12 * u.size**2)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches())
def test_exact_gradient_equals_all_pairs(reduction, batch):
    torch = pytest.importorskip("torch")
    u, correct, margin = batch
    _, expected = all_pairs_reference(u, correct, margin, reduction)
    ut = torch.tensor(u, requires_grad=True)
    uncertainty_margin_loss(ut, torch.tensor(correct), margin=margin, reduction=reduction).backward()
    np.testing.assert_allclose(ut.grad.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_tied_pairs_have_zero_gradient():
    torch = pytest.importorskip("torch")
    # margin 0, every value tied: all pairs are max(0, 0) = 0 and none is active.
    u = torch.full((6,), 0.5, dtype=torch.float64, requires_grad=True)
    correct = torch.tensor([True, False, True, False, True, True])
    loss = uncertainty_margin_loss(u, correct, margin=0.0)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(u.grad) == 0
    # margin 0.25 with u_j = u_k + 0.25 exactly: tied again.
    u = torch.tensor([0.25, 0.5], dtype=torch.float64, requires_grad=True)
    loss = uncertainty_margin_loss(u, torch.tensor([True, False]), margin=0.25)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(u.grad) == 0


@given(batch=grid_batches())
def test_mask_equals_dropping_instances(xp, batch):
    u, correct, margin = batch
    mask = np.arange(u.size) % 3 != 1
    got = float(
        to_numpy(
            uncertainty_margin_loss(xp.asarray(u), xp.asarray(correct), margin=margin, mask=xp.asarray(mask))
        )
    )
    expected, _ = all_pairs_reference(u[mask], correct[mask], margin, "mean")
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_half_precision_is_accumulated_in_float32():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    u = rng.random(5000).astype(np.float16)
    correct = rng.random(5000) < 0.9
    for dtype in (torch.float16, torch.bfloat16):
        ut = torch.tensor(u.astype(np.float32)).to(dtype)
        loss = uncertainty_margin_loss(ut, torch.tensor(correct), reduction="sum")
        assert loss.dtype == torch.float32
        expected, _ = all_pairs_reference(ut.float().numpy(), correct, 0.1)  # same rounded inputs
        # float32 accumulation: ~1e-7 relative per operation; a float16 accumulator would be off by ~1e-2
        assert float(loss) == pytest.approx(expected, rel=1e-4)
    out = uncertainty_margin_loss(u, correct)
    assert out.dtype == np.float32


# --- properties --------------------------------------------------------------------------------------------


@given(batch=grid_batches())
def test_loss_is_nonnegative(xp, batch):
    u, correct, margin = batch
    assert loss_np(u, correct, xp, margin=margin) >= 0.0
    assert loss_np(u, correct, xp, margin=margin, reduction="sum") >= 0.0


@pytest.mark.parametrize("which", ["all_correct", "all_wrong", "mask_empty"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("pairs", ["exact", "sampled"])
def test_empty_side_gives_zero_with_zero_gradient(which, reduction, pairs):
    torch = pytest.importorskip("torch")
    u = torch.tensor([0.5, 0.1, 0.9, 0.3], requires_grad=True)
    correct = torch.tensor([True, True, True, True]) if which == "all_correct" else torch.zeros(4, dtype=bool)
    if which == "mask_empty":
        correct = torch.tensor([True, False, True, False])
    mask = torch.zeros(4, dtype=bool) if which == "mask_empty" else None
    loss = uncertainty_margin_loss(u, correct, reduction=reduction, pairs=pairs, mask=mask, seed=0)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert u.grad is not None
    assert torch.all(u.grad == 0)
    assert not torch.isnan(loss.detach())


def test_empty_side_numpy(xp):
    u = xp.asarray(np.array([0.5, 0.1, 0.9]))
    assert float(to_numpy(uncertainty_margin_loss(u, xp.asarray(np.ones(3, dtype=bool))))) == 0.0
    assert float(to_numpy(uncertainty_margin_loss(u, xp.asarray(np.zeros(3, dtype=bool))))) == 0.0


@st.composite
def batches_often_separated(draw):
    """Grid batches where, half of the time, the wrong instances are shifted above the correct ones."""
    u, correct, margin = draw(grid_batches())
    if draw(st.booleans()) and correct.any():
        shift = u[correct].max() - u.min() + draw(st.sampled_from([0.0, 0.125, 0.5, 2.0]))
        u = np.where(correct, u, u + shift)
    return u, correct, margin


@given(batch=batches_often_separated())
def test_zero_loss_with_positive_margin_implies_maximal_gamma(batch):
    u, correct, margin = batch
    margin = max(margin, 0.125)
    loss = float(uncertainty_margin_loss(u, correct, margin=margin))
    if loss == 0.0:
        # every wrong u_j >= u_k + m > u_k: strict separation, so gamma is maximal at every coverage
        assert brute_force_gamma_is_maximal(u, correct)


@given(batch=grid_batches())
def test_strict_separation_gives_zero_loss_at_margin_zero(batch):
    u, correct, _ = batch
    if correct.all() or not correct.any():
        return
    u = np.where(correct, u, u + u[correct].max() - u.min() + 0.125)
    assert float(uncertainty_margin_loss(u, correct, margin=0.0)) == 0.0
    assert brute_force_gamma_is_maximal(u, correct)


def test_ties_give_zero_loss_without_maximal_gamma_at_margin_zero():
    """The paper's condition is sufficient, not necessary: with m = 0 ties cost nothing but block referral."""
    u = np.array([0.0, 1.0, 1.0, 1.0])
    correct = np.array([True, True, False, False])
    assert float(uncertainty_margin_loss(u, correct, margin=0.0)) == 0.0
    # Coverage 0.5: the smallest threshold with coverage >= 0.5 is t = 1.0 (the tied group moves together),
    # so its realized coverage is 1 and nothing is referred: gamma is undefined, not the maximal 1.0 that a
    # strictly separating ranking reaches at coverage 0.5.
    c = 0.5
    k = math.ceil(c * u.size)
    t = np.sort(u)[k - 1]
    assert (u > t).sum() == 0
    separated = np.array([0.0, 0.5, 1.0, 1.0])
    t_sep = np.sort(separated)[k - 1]
    referred = separated > t_sep
    assert referred.sum() == 2 and (~correct[referred]).all()  # gamma = 1
    # and the same ties do cost something once the margin is positive
    assert float(uncertainty_margin_loss(u, correct, margin=0.125)) > 0.0


@given(batch=grid_batches(), extra=st.sampled_from([0.0, 0.125, 0.5]))
def test_nondecreasing_in_margin(xp, batch, extra):
    u, correct, margin = batch
    for reduction in ("sum", "mean"):
        low = loss_np(u, correct, xp, margin=margin, reduction=reduction)
        high = loss_np(u, correct, xp, margin=margin + extra, reduction=reduction)
        assert high >= low


@given(batch=grid_batches(), data=st.data())
def test_monotone_in_wrong_and_correct_uncertainty(batch, data):
    u, correct, margin = batch
    i = data.draw(st.integers(0, u.size - 1))
    raised = u.copy()
    raised[i] += data.draw(st.sampled_from([0.125, 0.5, 3.0]))
    before = float(uncertainty_margin_loss(u, correct, margin=margin, reduction="sum"))
    after = float(uncertainty_margin_loss(raised, correct, margin=margin, reduction="sum"))
    if correct[i]:
        assert after >= before  # a more uncertain correct instance never helps
    else:
        assert after <= before  # a more uncertain wrong instance never hurts


# --- the sampled estimator --------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(), seed=st.integers(0, 2**31))
def test_sampled_with_caps_above_sizes_equals_exact(xp, reduction, batch, seed):
    u, correct, margin = batch
    kwargs = {"margin": margin, "reduction": reduction}
    exact = loss_np(u, correct, xp, **kwargs)
    sampled = loss_np(u, correct, xp, pairs="sampled", n_wrong=u.size, n_correct=u.size, seed=seed, **kwargs)
    assert sampled == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_sampled_gradient_with_caps_above_sizes_equals_reference():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    u = rng.integers(0, 6, 30) / 4.0
    correct = rng.random(30) < 0.6
    _, expected = all_pairs_reference(u, correct, 0.25, "mean")
    ut = torch.tensor(u, requires_grad=True)
    uncertainty_margin_loss(ut, torch.tensor(correct), margin=0.25, pairs="sampled", seed=1).backward()
    np.testing.assert_allclose(ut.grad.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_sampled_is_reproducible_from_seed(xp):
    rng = np.random.default_rng(5)
    u = xp.asarray(rng.random(300))
    correct = xp.asarray(rng.random(300) < 0.8)
    kwargs = {"pairs": "sampled", "n_wrong": 7, "n_correct": 20}
    a = to_numpy(uncertainty_margin_loss(u, correct, seed=11, **kwargs))
    b = to_numpy(uncertainty_margin_loss(u, correct, seed=11, **kwargs))
    c = to_numpy(uncertainty_margin_loss(u, correct, seed=12, **kwargs))
    assert a == b
    assert a != c


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sampled_is_unbiased_over_seeds(reduction):
    """Mean over R seeds of the sampled loss vs the exact one.

    Each side is sampled without replacement, so each pair is drawn with the same probability and the
    sampled mean (and the scaled sum) is unbiased. The estimates are independent across seeds, so their
    average has standard error s / sqrt(R) with s the sample standard deviation; we allow 5 standard errors
    (a false failure has probability ~6e-7 by the central limit theorem; the seeds are fixed, so the test is
    deterministic) plus a relative 1e-9 for rounding.
    """
    rng = np.random.default_rng(7)
    u = rng.random(400) * 0.6
    correct = rng.random(400) < 0.85
    u[~correct] += 0.2 * rng.random((~correct).sum())
    exact = float(uncertainty_margin_loss(u, correct, reduction=reduction))
    runs = 400
    estimates = np.array(
        [
            float(
                uncertainty_margin_loss(
                    u, correct, reduction=reduction, pairs="sampled", n_wrong=8, n_correct=40, seed=s
                )
            )
            for s in range(runs)
        ]
    )
    stderr = estimates.std(ddof=1) / math.sqrt(runs)
    assert stderr > 0
    assert abs(estimates.mean() - exact) <= 5 * stderr + 1e-9 * exact
    # and the estimator does vary (it is not secretly exact)
    assert estimates.std() > 0.01 * exact


# --- bad inputs (SPEC section 7) ---------------------------------------------------------------------------

U = np.array([0.1, 0.4, 0.2])
C = np.array([True, False, True])


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="`correct` must have the same shape"):
        uncertainty_margin_loss(U, C[:2])


def test_rejects_empty():
    with pytest.raises(ValueError, match="`uncertainty` is empty"):
        uncertainty_margin_loss(np.array([]), np.array([], dtype=bool))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rejects_nonfinite_uncertainty(xp, bad):
    u = U.copy()
    u[1] = bad
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        uncertainty_margin_loss(xp.asarray(u), xp.asarray(C))


def test_rejects_non_numeric_uncertainty():
    with pytest.raises(TypeError, match="`uncertainty` must hold real numbers"):
        uncertainty_margin_loss(np.array([True, False]), np.array([True, False]))


def test_rejects_correct_not_zero_one(xp):
    with pytest.raises(ValueError, match="`correct` must be boolean or hold only 0 and 1"):
        uncertainty_margin_loss(xp.asarray(U), xp.asarray(np.array([0, 2, 1])))


def test_validate_false_skips_only_the_value_checks(xp):
    u = U.copy()
    u[0] = math.nan
    uncertainty_margin_loss(xp.asarray(u), xp.asarray(C), validate=False)  # no read, no error
    with pytest.raises(ValueError, match="`correct` must have the same shape"):
        uncertainty_margin_loss(xp.asarray(u), xp.asarray(C[:2]), validate=False)


def test_accepts_correct_as_zero_one(xp):
    a = loss_np(U, np.array([1, 0, 1]), xp)
    b = loss_np(U, C, xp)
    assert a == b


@pytest.mark.parametrize("margin", [-0.1, math.nan, math.inf])
def test_rejects_bad_margin(margin):
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        uncertainty_margin_loss(U, C, margin=margin)


def test_rejects_non_numeric_margin():
    with pytest.raises(TypeError, match="`margin` must be a real number"):
        uncertainty_margin_loss(U, C, margin="0.1")


def test_rejects_unknown_reduction():
    with pytest.raises(ValueError, match='`reduction` must be one of "mean", "sum"'):
        uncertainty_margin_loss(U, C, reduction="none")


def test_rejects_unknown_pairs():
    with pytest.raises(ValueError, match='`pairs` must be one of "exact", "sampled"'):
        uncertainty_margin_loss(U, C, pairs="all")


@pytest.mark.parametrize("name", ["n_wrong", "n_correct"])
def test_rejects_bad_sample_sizes(name):
    with pytest.raises(ValueError, match=f"`{name}` must be >= 1"):
        uncertainty_margin_loss(U, C, pairs="sampled", **{name: 0})
    with pytest.raises(TypeError, match=f"`{name}` must be an integer"):
        uncertainty_margin_loss(U, C, pairs="sampled", **{name: 2.5})


def test_rejects_bad_mask():
    with pytest.raises(TypeError, match="`mask` must be a boolean array"):
        uncertainty_margin_loss(U, C, mask=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="`mask` must have the same shape"):
        uncertainty_margin_loss(U, C, mask=np.array([True, False]))


def test_rejects_mixed_libraries():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one array library"):
        uncertainty_margin_loss(torch.tensor(U), namespace("array_api_strict").asarray(C))


# --- the options object ------------------------------------------------------------------------------------


def test_options_are_validated_frozen_and_match_the_function_defaults():
    import dataclasses
    import inspect

    from selectivekit.loss import MarginLossOptions

    options = MarginLossOptions()
    params = inspect.signature(uncertainty_margin_loss).parameters
    for name in MarginLossOptions.names():  # the functional keywords default to the options' defaults
        assert params[name].default == getattr(options, name), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.margin = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        options.replace(margin=-1.0)
    with pytest.raises(ValueError, match="`n_correct` must be >= 1"):
        MarginLossOptions(n_correct=0)
    assert MarginLossOptions(margin=1).margin == 1.0 and isinstance(MarginLossOptions(margin=1).margin, float)
    assert MarginLossOptions(**options.to_config()) == options
    assert hash(options) == hash(MarginLossOptions())


def test_options_build_names_the_valid_options():
    from selectivekit.loss import MarginLossOptions

    assert MarginLossOptions.build(None, 0.3, pairs="sampled") == MarginLossOptions(0.3, pairs="sampled")
    options = MarginLossOptions(margin=0.3)
    assert MarginLossOptions.build(options) is options
    with pytest.raises(TypeError, match=r"unknown option\(s\) `marginn`; the options are margin, reduction"):
        MarginLossOptions.build(None, marginn=0.3)
    with pytest.raises(TypeError, match="not both"):
        MarginLossOptions.build(options, margin=0.2)
    with pytest.raises(TypeError, match="`options` must be a MarginLossOptions"):
        MarginLossOptions.build({"margin": 0.2})


def test_options_object_equals_keywords(xp):
    from selectivekit.loss import MarginLossOptions

    u, correct = np.array([0.25, 0.5, 0.75, 0.0]), np.array([True, True, False, False])
    options = MarginLossOptions(margin=0.25, reduction="sum")
    assert loss_np(u, correct, xp, options=options) == loss_np(u, correct, xp, margin=0.25, reduction="sum")
    with pytest.raises(TypeError, match="as `options` or as keywords, not both"):
        uncertainty_margin_loss(xp.asarray(u), xp.asarray(correct), options=options, margin=0.5)

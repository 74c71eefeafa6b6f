"""The uncertainty loss (SPEC 6) against an all-pairs loop, and its properties (SPEC 3 (i))."""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.loss import uncertainty_margin_loss
from tests.conftest import (
    FUZZ,
    JAX_SIZES,
    SCALAR_MUTATIONS,
    draw_instance_args,
    draw_instances,
    fuzz_contract,
    namespace,
    no_silent_nan,
    requires_torch,
    to_numpy,
    xp_assert_equal,
)

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
def grid_batches(draw, max_size=40, min_size=1, sizes=None):
    """Uncertainty on a coarse dyadic grid (heavy ties), a correctness vector and a margin.

    The batch size is any in ``[min_size, max_size]``, or one of ``sizes`` in that range (`JAX_SIZES`).
    """
    if sizes is None:
        n = draw(st.integers(min_size, max_size))
    else:
        n = draw(st.sampled_from([k for k in sizes if min_size <= k <= max_size]))
    steps = draw(st.lists(st.integers(-4, 8), min_size=n, max_size=n))
    u = np.asarray(steps, dtype=np.float64) / 8.0
    correct = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    margin = draw(st.sampled_from(GRID_MARGINS))
    return u, correct, margin


def draw_grid_batch(data, xp, **kwargs):
    """A `grid_batches` example for backend ``xp``: of any size, or of one of `JAX_SIZES` under JAX."""
    sizes = JAX_SIZES if array_api_compat.is_jax_namespace(xp) else None  # the sizes up to max_size
    return data.draw(grid_batches(sizes=sizes, **kwargs), label="batch")


def loss_np(u, correct, xp, **kwargs):
    """The loss as a float, after checking it is a 0-d array of the input's namespace, dtype and device."""
    u = xp.asarray(u)
    loss = uncertainty_margin_loss(u, xp.asarray(correct), **kwargs)
    value = to_numpy(loss)
    xp_assert_equal(loss, value.reshape(()), xp=xp, dtype=xp.float64 if u.dtype == xp.float64 else xp.float32)
    return float(value)


# --- exact == all pairs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(data=st.data())
def test_exact_equals_all_pairs_value(xp, reduction, data):
    u, correct, margin = draw_grid_batch(data, xp)
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


@given(data=st.data())
def test_mask_equals_dropping_instances(xp, data):
    u, correct, margin = draw_grid_batch(data, xp)
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


@given(data=st.data())
def test_loss_is_nonnegative(xp, data):
    u, correct, margin = draw_grid_batch(data, xp)
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


@given(data=st.data(), extra=st.sampled_from([0.0, 0.125, 0.5]))
def test_nondecreasing_in_margin(xp, data, extra):
    u, correct, margin = draw_grid_batch(data, xp)
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
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_sampled_with_caps_above_sizes_equals_exact(xp, reduction, data, seed):
    u, correct, margin = draw_grid_batch(data, xp)
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


# --- fuzzing: bad and extreme inputs keep the error contract (the helpers: tests/conftest.py) ---------------


@requires_torch
@FUZZ
@given(data=st.data())
def test_fuzz_margin_loss(data):
    u, c = draw_instances(data, 10)
    target, args = draw_instance_args(data, u, c)
    options = {"margin": 0.1, "reduction": "mean", "pairs": "exact", "seed": 0}
    if target == "option":
        key = data.draw(st.sampled_from(["margin", "reduction", "pairs", "seed", "n_wrong"]), label="option")
        options[key] = data.draw(st.sampled_from([*SCALAR_MUTATIONS, "sum", "sampled", 1e30]), label="value")
    uu, cc, mask = args["uncertainty"], args["correct"], args["mask"]
    result = fuzz_contract(lambda: sk.uncertainty_margin_loss(uu, cc, mask=mask, **options))
    if result is None:
        return
    un = to_numpy(uu)
    work = un.astype(np.float32 if un.dtype != np.float64 else np.float64).astype(np.float64).reshape(-1)
    cn = to_numpy(cc).astype(bool).reshape(-1)
    keep = np.ones_like(cn) if mask is None else to_numpy(mask).reshape(-1)
    m = float(options["margin"])
    d = work[cn & keep][None, :] - work[~cn & keep][:, None] + m
    try:
        total = math.fsum(d[d > 0].tolist()) if np.isfinite(d).all() else math.inf
    except OverflowError:  # the exact sum is beyond float64
        total = math.inf
    n_pairs = d.size
    if options["pairs"] == "exact":
        ref = total if options["reduction"] == "sum" else (total / n_pairs if n_pairs else 0.0)
        if abs(ref) <= np.finfo(to_numpy(result).dtype).max:
            no_silent_nan(result)
            assert float(to_numpy(result)) == pytest.approx(ref, rel=1e-5, abs=1e-6)
        else:  # the true value is beyond the result's dtype: it rounds to inf, and nothing else
            assert float(to_numpy(result)) == math.inf
    elif math.isfinite(total):
        no_silent_nan(result)
        assert float(to_numpy(result)) >= 0


# --- float64 accumulation: exact references (all pairs in math.fsum, exact integers) ------------------------


def _all_pairs_fsum(u: np.ndarray, correct: np.ndarray, margin: float) -> float:
    """``sum_{j wrong, k correct} max(u_k - u_j + m, 0)``, every pair, summed exactly (``math.fsum``)."""
    u = u.astype(np.float64)
    d = u[correct][None, :] - u[~correct][:, None] + margin
    return math.fsum(d[d > 0].tolist())


def _exact_integer_loss(a: np.ndarray, correct: np.ndarray, m: int) -> int:
    """The all-pairs sum for integer ``u`` and margin, in exact integer arithmetic (Python ints).

    ``sum_k sum_{j: a_j < a_k + m} (a_k + m - a_j)``: counts and sums of the smaller wrong values by a
    sort of the wrong side and an int64 prefix sum (exact: no value exceeds 2**40 here), then a Python
    sum of the per-correct terms. Checked against the all-pairs loop below.
    """
    w = np.sort(a[~correct].astype(np.int64))
    prefix = np.concatenate([[0], np.cumsum(w)])
    v = a[correct].astype(np.int64) + m
    cnt = np.searchsorted(w, v, side="left")
    return sum((cnt * v - prefix[cnt]).tolist())


def test_integer_reference_matches_all_pairs():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, 300)
    correct = rng.random(300) < 0.6
    brute = sum(
        max(int(a[k]) + 7 - int(a[j]), 0) for j in np.flatnonzero(~correct) for k in np.flatnonzero(correct)
    )
    assert _exact_integer_loss(a, correct, 7) == brute


def test_small_all_pairs_float32():
    rng = np.random.default_rng(2)
    u = rng.random(400).astype(np.float32)
    correct = rng.random(400) < 0.5
    got = sk.uncertainty_margin_loss(u, correct, margin=0.1, reduction="sum")
    assert got.dtype == np.float32
    ref = _all_pairs_fsum(u, correct, float(np.float32(0.1)))
    assert abs(float(got) - ref) <= 2e-7 * ref


def _grid_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``u = a / 2**16`` with integer ``a``: exact in float32, so only accumulation can lose precision."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**16, n)
    correct = rng.random(n) < 0.5
    return a, (a / 2**16).astype(np.float32), correct, 6554  # margin 6554 / 2**16 ~ 0.1, exact


@pytest.mark.parametrize("n", [10**6, pytest.param(10**7, marks=pytest.mark.slow)], ids=["1e6", "1e7"])
def test_large_float32_numpy_exact_reference(n):
    a, u, correct, m = _grid_inputs(n, 3)
    exact = _exact_integer_loss(a, correct, m) / 2**16  # the loss in units of u, exactly (as a float)
    got = float(sk.uncertainty_margin_loss(u, correct, margin=m / 2**16, reduction="sum"))
    # the result is float32: one rounding of the exact value (before: 1e-5 at 1e6, 5e-4 at 1e7)
    assert abs(got - exact) <= 1.2e-7 * exact
    n_pairs = int(correct.sum()) * int((~correct).sum())
    got_mean = float(sk.uncertainty_margin_loss(u, correct, margin=m / 2**16))
    assert abs(got_mean - exact / n_pairs) <= 1.2e-7 * exact / n_pairs


def test_large_float32_torch_core_path():
    torch = pytest.importorskip("torch")
    a, u, correct, m = _grid_inputs(10**6, 4)
    exact = _exact_integer_loss(a, correct, m) / 2**16
    got = sk.uncertainty_margin_loss(
        torch.from_numpy(u), torch.from_numpy(correct), margin=m / 2**16, reduction="sum"
    )
    assert got.dtype == torch.float32
    assert abs(float(got) - exact) <= 1.2e-7 * exact


def test_jax_without_x64_compensated():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if jax.config.read("jax_enable_x64"):
        pytest.skip("this session runs JAX with 64-bit on; the float64 path is tested above")
    a, u, correct, m = _grid_inputs(2 * 10**5, 5)
    exact = _exact_integer_loss(a, correct, m) / 2**16
    loss = jax.jit(
        lambda u, c: sk.uncertainty_margin_loss(u, c, margin=m / 2**16, reduction="sum", validate=False)
    )
    got = loss(jnp.asarray(u), jnp.asarray(correct))
    assert got.dtype == jnp.float32
    assert abs(float(got) - exact) <= 1.2e-7 * exact
    # the gradient is the all-pairs one: +#active pairs for correct, -#active pairs for wrong
    small_u, small_c = u[:500], correct[:500]
    c_small = jnp.asarray(small_c)
    grad = jax.jit(
        jax.grad(lambda x: sk.uncertainty_margin_loss(x, c_small, reduction="sum", validate=False))
    )(jnp.asarray(small_u))
    d = small_u[small_c][None, :].astype(np.float64) - small_u[~small_c][:, None] + np.float32(0.1)
    expected = np.zeros(500)
    expected[small_c] = (d > 0).sum(0)
    expected[~small_c] = -(d > 0).sum(1)
    np.testing.assert_array_equal(np.asarray(grad), expected)


def test_no_overflow_near_float32_max():
    # the wrong side's prefix sum (6e38) exceeds float32; the loss itself (2e37) does not
    u = np.array([3.0e38, 3.0e38, 3.1e38], dtype=np.float32)
    correct = np.array([False, False, True])
    ref = _all_pairs_fsum(u, correct, float(np.float32(0.1)))
    got = sk.uncertainty_margin_loss(u, correct, reduction="sum")
    assert np.isfinite(got) and abs(float(got) - ref) <= 1.2e-7 * ref
    got_mean = sk.uncertainty_margin_loss(u, correct)
    assert abs(float(got_mean) - ref / 2) <= 1.2e-7 * ref / 2
    # u + margin near the top of float32: the mean of two pairs of ~2.4e38 and ~3.4e38
    u2 = np.array([1.0e37, 0.0, 3.4e38], dtype=np.float32)
    c2 = np.array([False, False, True])
    ref2 = _all_pairs_fsum(u2, c2, 0.1) / 2
    got2 = sk.uncertainty_margin_loss(u2, c2)
    assert np.isfinite(got2) and abs(float(got2) - ref2) <= 1.2e-7 * ref2


def test_sampled_path_float32_matches_fsum():
    rng = np.random.default_rng(6)
    u = rng.random(1500).astype(np.float32)
    correct = rng.random(1500) < 0.5
    got = sk.uncertainty_margin_loss(u, correct, pairs="sampled", n_wrong=10**4, n_correct=10**4, seed=0)
    ref = _all_pairs_fsum(u, correct, float(np.float32(0.1))) / (correct.sum() * (~correct).sum())
    assert got.dtype == np.float32 and abs(float(got) - ref) <= 2e-7 * ref


def test_float64_magnitude_bound():
    # before: inf - inf in the prefix difference gave a silent NaN (the true value is 0.2)
    u = np.array([1e308, 1e308, 1e308])
    correct = np.array([False, False, True])
    with pytest.raises(ValueError, match=r"`uncertainty` must lie within \+-2\*\*960"):
        sk.uncertainty_margin_loss(u, correct, reduction="sum")
    # large but allowed values: 2 pairs of margin 1e270 each
    ok = np.array([1e280, 1e280, 1e280])
    got = float(sk.uncertainty_margin_loss(ok, correct, margin=1e270, reduction="sum"))
    assert got == pytest.approx(2e270)

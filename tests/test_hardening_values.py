"""Wrong values and unclear errors found by attacking the library, each pinned by a test.

Numbered as in the hardening issue: 1 (torch loss NaN when every target is ignored), 2 (the core loss's
prefix sums in float32), 3 (labels, one-hot targets and probabilities that were accepted), 6 (huge
``num_classes``), 7 (``seed`` and ``mask`` messages). References are written here: all pairs in exact
integer or ``math.fsum`` arithmetic, scikit-learn style recomputation from scratch.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

import selectivekit as sk
from selectivekit.cli import main

torch = pytest.importorskip("torch")
skt = pytest.importorskip("selectivekit.adapters.torch")


# --- references ----------------------------------------------------------------------------------------


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


# --- 1. torch UncertaintyAwareLoss when every target is ignore_index ----------------------------------


@pytest.mark.parametrize("target_shape", [(2, 5), (2, 1, 5)], ids=["indices", "indices_with_axis"])
def test_1_all_ignored_is_zero_with_zero_gradient(target_shape):
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.full(target_shape, -100)
    loss = skt.UncertaintyAwareLoss(warmup=0, ramp=0)(logits, target)  # the weight from the first step
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_1_partly_ignored_unchanged():
    """One labelled voxel: the loss is still cross-entropy over the labelled voxels + weight * margin loss."""
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.full((2, 5), 7)
    target[0, 2], target[1, 4] = 1, 0
    crit = skt.UncertaintyAwareLoss(ignore_index=7, weight=3.0, warmup=0, ramp=0)
    got = crit(logits, target)
    keep = target != 7
    flat = logits.permute(0, 2, 1)[keep]
    ce = -torch.log_softmax(flat, dim=1)[torch.arange(2), target[keep]].mean()
    u = sk.uncertainty_from_logits(logits, axis=1)
    correct = logits.argmax(1) == target
    unc = sk.uncertainty_margin_loss(u, correct, mask=keep)
    torch.testing.assert_close(got, ce + 3.0 * unc)


# --- 2. the core loss accumulates in float64 --------------------------------------------------------------


def test_2_small_all_pairs_float32():
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
def test_2_large_float32_numpy_exact_reference(n):
    a, u, correct, m = _grid_inputs(n, 3)
    exact = _exact_integer_loss(a, correct, m) / 2**16  # the loss in units of u, exactly (as a float)
    got = float(sk.uncertainty_margin_loss(u, correct, margin=m / 2**16, reduction="sum"))
    # the result is float32: one rounding of the exact value (before: 1e-5 at 1e6, 5e-4 at 1e7)
    assert abs(got - exact) <= 1.2e-7 * exact
    n_pairs = int(correct.sum()) * int((~correct).sum())
    got_mean = float(sk.uncertainty_margin_loss(u, correct, margin=m / 2**16))
    assert abs(got_mean - exact / n_pairs) <= 1.2e-7 * exact / n_pairs


def test_2_large_float32_torch_core_path():
    a, u, correct, m = _grid_inputs(10**6, 4)
    exact = _exact_integer_loss(a, correct, m) / 2**16
    got = sk.uncertainty_margin_loss(
        torch.from_numpy(u), torch.from_numpy(correct), margin=m / 2**16, reduction="sum"
    )
    assert got.dtype == torch.float32
    assert abs(float(got) - exact) <= 1.2e-7 * exact


def test_2_jax_without_x64_compensated():
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


def test_2_no_overflow_near_float32_max():
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


def test_2_sampled_path_float32_matches_fsum():
    rng = np.random.default_rng(6)
    u = rng.random(1500).astype(np.float32)
    correct = rng.random(1500) < 0.5
    got = sk.uncertainty_margin_loss(u, correct, pairs="sampled", n_wrong=10**4, n_correct=10**4, seed=0)
    ref = _all_pairs_fsum(u, correct, float(np.float32(0.1))) / (correct.sum() * (~correct).sum())
    assert got.dtype == np.float32 and abs(float(got) - ref) <= 2e-7 * ref


# --- 3. labels, one-hot targets and probabilities -----------------------------------------------------------


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
def test_3_correctness_rejects_non_labels(pred, exc, words):
    label = np.array([0, 1, 2])
    with pytest.raises(exc, match=f"`pred` must hold class labels.*{words}"):
        sk.correctness(pred, label)
    with pytest.raises(exc, match="`label` must hold class labels"):
        sk.correctness(label, pred)


def test_3_correctness_accepts_whole_floats_and_bools():
    label = np.array([0, 1, 2, 2])
    pred = np.array([0.0, 2.0, 2.0, -0.0], dtype=np.float32)  # as MONAI's LoadImaged reads label maps
    np.testing.assert_array_equal(sk.correctness(pred, label), [True, False, True, False])
    np.testing.assert_array_equal(
        sk.correctness(np.array([True, False]), np.array([1, 1])), np.array([True, False])
    )
    t = sk.correctness(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]))
    assert t.dtype == torch.bool and t.tolist() == [True, False]


def test_3_correctness_mixed_libraries():
    with pytest.raises(TypeError, match=r"`label` is a numpy.ndarray but `pred` is a torch.Tensor"):
        sk.correctness(torch.tensor([0, 1]), np.array([0, 1]))


def test_3_one_hot_target_negative_or_nan_rejected():
    logits = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    for bad in (-1.0, math.nan):
        target = torch.zeros(1, 3, 4)
        target[0, 0] = 1.0
        target[0, 1, 2] = bad
        with pytest.raises(ValueError, match=r"`target` .*one-hot.* finite values >= 0"):
            skt.UncertaintyMarginLoss()(logits, target)
    # a valid one-hot target (with an all-zero, ignored voxel) still works
    target = torch.zeros(1, 3, 4)
    target[0, 0, :3] = 1.0
    assert torch.isfinite(skt.UncertaintyMarginLoss()(logits, target))


@pytest.mark.parametrize("fn", [sk.max_softmax_uncertainty, sk.entropy_uncertainty], ids=["msp", "entropy"])
def test_3_probabilities_must_sum_to_one(fn):
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


def test_3_msp_value_on_normalized_rows():
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(sk.max_softmax_uncertainty(p, axis=-1), 1 - p.max(axis=-1))


def test_3_segmentation_labels_whole_floats():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (2, 20))
    label = rng.integers(0, 3, (2, 20))
    u = rng.random((2, 20))
    ref = sk.aurc_dice(pred, label, u, num_classes=3)
    assert sk.aurc_dice(pred.astype(np.float32), label.astype(np.float64), u, num_classes=3) == ref
    bad = label.astype(np.float64)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="`label` must hold class labels, got 1 NaN"):
        sk.aurc_dice(pred, bad, u, num_classes=3)


# --- 6. huge num_classes ------------------------------------------------------------------------------


HUGE = [10**6, 2**32, 2**62]


@pytest.mark.parametrize("k", HUGE)
def test_6_huge_num_classes_core(k):
    pred = np.zeros((2, 4), dtype=np.int64)
    u = np.linspace(0, 1, 8).reshape(2, 4)
    calls = [
        lambda: sk.dice_at_coverage(pred, pred, u, [0.5], num_classes=k),
        lambda: sk.aurc_dice(pred, pred, u, num_classes=k),
        lambda: sk.dice_coverage_curve(pred, pred, u, num_classes=k),
        lambda: sk.streaming.SegmentationAccumulator(num_classes=k),
        lambda: skt.SelectiveDice(num_classes=k),
        lambda: sk.guaranteed_dice_threshold(pred, pred, u, num_classes=k, max_dice_loss=0.1),
        lambda: sk.bootstrap_ci("aurc_dice", pred, pred, u, num_classes=k, n_resamples=10),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="`num_classes` must be <= 65536"):
            call()


def _run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("k", ["1000000", str(2**62)])
@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_6_huge_num_classes_cli(tmp_path, k, command):
    for name in ("p", "l", "u"):
        (tmp_path / name).mkdir()
    argv = [
        command,
        "--pred",
        str(tmp_path / "p"),
        "--label",
        str(tmp_path / "l"),
        "--uncertainty",
        str(tmp_path / "u"),
        "--num-classes",
        k,
        "--out",
        str(tmp_path / "out"),
    ]
    if command == "calibrate":
        argv += ["--max-dice-loss", "0.1"]
    code, err = _run_cli(argv)
    assert code == 2
    assert err.count("\n") == 1 and "--num-classes" in err and "internal error" not in err
    assert not (tmp_path / "out").exists()


# --- 7. seeds and the mask of another array library -------------------------------------------------------

BAD_SEEDS = [(-1, ValueError), (1.5, TypeError), ("a", TypeError), (True, TypeError), ([1, 2], TypeError)]


@pytest.mark.parametrize(("seed", "exc"), BAD_SEEDS, ids=["negative", "float", "str", "bool", "list"])
def test_7_bad_seed_named(seed, exc):
    rng = np.random.default_rng(0)
    u = rng.random(20)
    c = rng.random(20) < 0.5
    pred = rng.integers(0, 2, (4, 5))
    calls = [
        lambda: sk.uncertainty_margin_loss(u, c, pairs="sampled", seed=seed),
        lambda: sk.uncertainty_margin_loss(u, c, seed=seed),
        lambda: sk.loss.as_generator(seed),
        lambda: skt.uncertainty_margin_loss(
            torch.from_numpy(u), torch.from_numpy(c), pairs="sampled", seed=seed
        ),
        lambda: skt.UncertaintyMarginLoss(pairs="sampled", seed=seed),
        lambda: sk.bootstrap_ci("aurc", u, c, n_resamples=10, seed=seed),
        lambda: sk.compare_models(
            pred, u.reshape(4, 5), pred, u.reshape(4, 5), pred, num_classes=2, n_resamples=10, seed=seed
        ),
    ]
    for call in calls:
        with pytest.raises(exc, match="`seed` must be"):
            call()


def test_7_cli_bad_seed(tmp_path):
    code, err = _run_cli(
        ["compare", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o"), "--seed", "-3"]
    )
    assert code == 2 and "`--seed` must be an integer >= 0" in err


def test_7_numpy_mask_with_torch_arrays():
    u = torch.rand(6, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([True, False, True, True, False, True])
    mask = np.ones(6, dtype=bool)
    for call in (
        lambda: sk.aurc(u, c, mask=mask),
        lambda: sk.selective_split(u, c, 0.5, mask=mask),
        lambda: sk.uncertainty_margin_loss(u, c, mask=mask),
    ):
        with pytest.raises(TypeError, match=r"`mask` is a numpy.ndarray but `uncertainty` is a torch.Tensor"):
            call()
    # a list is not another library's array: it becomes a mask of the arrays' library
    assert sk.aurc(u, c, mask=[True] * 6) == sk.aurc(u, c)
    with pytest.raises(TypeError, match=r"`correct` is a numpy.ndarray but `uncertainty` is a torch.Tensor"):
        sk.aurc(u, c.numpy())


# --- found by the fuzz test (tests/test_fuzz.py) ------------------------------------------------------------


def test_fuzz_found_loss_float64_magnitude_bound():
    # before: inf - inf in the prefix difference gave a silent NaN (the true value is 0.2)
    u = np.array([1e308, 1e308, 1e308])
    correct = np.array([False, False, True])
    with pytest.raises(ValueError, match=r"`uncertainty` must lie within \+-2\*\*960"):
        sk.uncertainty_margin_loss(u, correct, reduction="sum")
    # large but allowed values: 2 pairs of margin 1e270 each
    ok = np.array([1e280, 1e280, 1e280])
    got = float(sk.uncertainty_margin_loss(ok, correct, margin=1e270, reduction="sum"))
    assert got == pytest.approx(2e270)


def test_fuzz_found_theorem_gamma_checked_at_full_coverage():
    assert sk.psi_c_from(0.8, math.nan, 1.0) == 0.8  # gamma is undefined when nothing is referred
    with pytest.raises(TypeError, match="`gamma` must be a real number"):
        sk.psi_c_from(0.8, "0.5", 1.0)


def test_fuzz_found_bootstrap_too_few_units_names_argument():
    with pytest.raises(ValueError, match="at least 2 instances to resample \\(in `uncertainty`\\)"):
        sk.bootstrap_ci("aurc", np.array([0.5]), np.array([True]), n_resamples=10)

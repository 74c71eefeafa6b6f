"""Intervals, paired comparison and guaranteed thresholds: brute-force equality, simulations of the
guarantees, bad inputs.

The simulations use a known data-generating process: for the image methods, images of 64 voxels whose
wrong-voxel probability rises with ``u`` (and varies from image to image), with the population risk at every
threshold measured once on a pool of 20,000 images; for SGR, instances with ``P(wrong | u) = 0.3 u`` and
``u ~ U(0, 1)``, so that the selective risk at threshold ``t`` is ``0.15 t`` exactly.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import array_api_compat
import numpy as np
import pytest

import selectivekit as sk
from selectivekit.guarantees._bounds import binomial_upper_bound as _binomial_upper_bound
from selectivekit.guarantees._bounds import hb_p_value as _hb_p_value

from .conftest import to_numpy

scipy_stats = pytest.importorskip("scipy.stats")


def seg_data(rng, n=7, shape=(10, 12), k=3, rate=0.15, decimals=2):
    label = rng.integers(0, k, size=(n, *shape))
    wrong = rng.random(label.shape) < rate
    pred = np.where(wrong, (label + rng.integers(1, k, size=label.shape)) % k, label)
    u = rng.random(label.shape) * 0.5 + 0.5 * wrong * rng.random(label.shape)
    return pred, label, np.round(u, decimals).astype(np.float32)  # rounding: many ties, across images too


def exact_seg(pred, label, u, coverages, k):
    values = {"aurc_dice": sk.aurc_dice(pred, label, u, num_classes=k)}
    for c, r in zip(coverages, sk.dice_at_coverage(pred, label, u, coverages, num_classes=k), strict=True):
        values[f"mean@{c:g}"] = r.mean
        values[f"p5@{c:g}"] = r.p5
    return values


# ----------------------------------------------------------------------------------------------------
# the bootstrap equals the brute-force bootstrap (same seed, resampled set rebuilt, metric called)


def test_segmentation_bootstrap_equals_brute_force():
    rng = np.random.default_rng(0)
    k, cs = 3, [0.95, 0.8, 0.5]
    pred, label, u = seg_data(rng, k=k)
    res = sk.bootstrap_ci(
        [sk.aurc_dice, "dice_at_coverage"],
        pred,
        label,
        u,
        num_classes=k,
        coverages=cs,
        n_resamples=60,
        seed=3,
    )
    idx = np.random.default_rng(3).integers(0, pred.shape[0], (60, pred.shape[0]))
    for r in range(60):
        want = exact_seg(pred[idx[r]], label[idx[r]], u[idx[r]], cs, k)
        for key, value in want.items():
            assert res.distribution[key][r] == pytest.approx(value, abs=1e-12), (key, r)
    full = exact_seg(pred, label, u, cs, k)
    for key, value in full.items():
        assert res[key].estimate == pytest.approx(value, abs=1e-12)
        assert res[key].low <= res[key].high
    assert res.unit == "image" and res.n_units == pred.shape[0]


def test_segmentation_bootstrap_images_of_different_shapes():
    rng = np.random.default_rng(1)
    shapes = [(6, 7), (9, 4), (5, 5), (8, 8)]
    preds, labels, us = [], [], []
    for s in shapes:
        p, lab, u = seg_data(rng, n=1, shape=s, k=2)
        preds.append(p[0])
        labels.append(lab[0])
        us.append(u[0])
    res = sk.bootstrap_ci(
        "dice_at_coverage", preds, labels, us, num_classes=2, coverages=0.7, n_resamples=30, seed=5
    )
    idx = np.random.default_rng(5).integers(0, 4, (30, 4))
    for r in range(30):
        sel = idx[r]
        want = sk.dice_at_coverage(
            [preds[i] for i in sel], [labels[i] for i in sel], [us[i] for i in sel], 0.7, num_classes=2
        )[0]
        assert res.distribution["mean@0.7"][r] == pytest.approx(want.mean, abs=1e-12)
        assert res.distribution["p5@0.7"][r] == pytest.approx(want.p5, abs=1e-12)


@pytest.mark.parametrize("kind", ["correct", "risk", "groups", "mask"])
def test_instance_bootstrap_equals_brute_force(kind):
    rng = np.random.default_rng(2)
    n = 300
    u = np.round(rng.random(n), 2)
    correct = rng.random(n) > u * 0.5
    soft = rng.random(n)
    groups = rng.integers(0, 25, n) * 7 - 3  # arbitrary integer ids
    mask = rng.random(n) < 0.8
    metrics = [sk.aurc, sk.e_aurc, sk.augrc]
    kwargs = {"n_resamples": 40, "seed": 1}
    if kind == "correct":
        res = sk.bootstrap_ci(metrics, u, correct, **kwargs)
        units = [np.array([i]) for i in range(n)]
    elif kind == "risk":
        res = sk.bootstrap_ci(metrics, u, risk=soft, **kwargs)
        units = [np.array([i]) for i in range(n)]
    elif kind == "groups":
        res = sk.bootstrap_ci(metrics, u, correct, groups=groups, **kwargs)
        units = [np.nonzero(groups == g)[0] for g in np.unique(groups)]
    else:
        res = sk.bootstrap_ci(metrics, u, correct, mask=mask, **kwargs)
        units = [np.array([i]) for i in np.nonzero(mask)[0]]
    assert res.n_units == len(units)
    idx = np.random.default_rng(1).integers(0, len(units), (40, len(units)))
    for r in range(40):
        sel = np.concatenate([units[i] for i in idx[r]])
        for f in metrics:
            if kind == "risk":
                want = f(u[sel], risk=soft[sel])
            else:
                want = f(u[sel], correct[sel])
            assert res.distribution[f.__name__][r] == pytest.approx(want, abs=1e-12), (f.__name__, r)
    for f in metrics:
        if kind == "risk":
            est = f(u, risk=soft)
        elif kind == "mask":
            est = f(u, correct, mask=mask)
        else:
            est = f(u, correct)
        assert res[f.__name__].estimate == pytest.approx(est, abs=1e-12)


def test_intervals_match_scipy_on_the_same_distribution():
    """The intervals are SciPy's, computed from our bootstrap distribution."""
    rng = np.random.default_rng(4)
    u = rng.random(200)
    correct = rng.random(200) > u * 0.6
    for method in ("BCa", "percentile", "basic"):
        res = sk.bootstrap_ci("augrc", u, correct, n_resamples=300, seed=7, method=method)
        idx = np.random.default_rng(7).integers(0, 200, (300, 200))

        def brute(i, axis=-1):
            i = np.asarray(i).astype(np.int64)
            return np.asarray([sk.augrc(u[row], correct[row]) for row in i.reshape(-1, i.shape[-1])]).reshape(
                i.shape[:-1]
            )

        dist = brute(idx)
        np.testing.assert_allclose(res.distribution["augrc"], dist, atol=1e-14)

        def stat(i, axis=-1, drawn=idx, ours=res.distribution["augrc"]):
            """The brute-force statistic, except on SciPy's resamples: there, our distribution (the two
            differ in the last bit here and there, which moves BCa's bias correction where a resample ties
            with the estimate)."""
            if np.shape(i) == drawn.shape:
                np.testing.assert_array_equal(np.asarray(i).astype(np.int64), drawn)  # the documented draw
                return ours
            return brute(i)

        # SciPy's public API, with the generator of the same seed: the same draw, our distribution
        generator = "rng" if "rng" in inspect.signature(scipy_stats.bootstrap).parameters else "random_state"
        want = scipy_stats.bootstrap(
            (np.arange(200.0),),
            stat,
            n_resamples=300,
            method=method,
            vectorized=True,
            **{generator: np.random.default_rng(7)},
        )
        ci = res["augrc"]
        assert ci.method == method
        assert ci.low == pytest.approx(float(want.confidence_interval.low), abs=1e-12)
        assert ci.high == pytest.approx(float(want.confidence_interval.high), abs=1e-12)
        assert ci.standard_error == pytest.approx(float(np.std(dist, ddof=1)))


def test_bootstrap_same_seed_same_result_and_degenerate_statistic():
    rng = np.random.default_rng(5)
    pred, label, u = seg_data(rng, k=2)
    kwargs = {"num_classes": 2, "coverages": [0.9], "n_resamples": 50}
    a = sk.bootstrap_ci("dice_at_coverage", pred, label, u, seed=9, **kwargs)
    b = sk.bootstrap_ci("dice_at_coverage", pred, label, u, seed=np.random.default_rng(9), **kwargs)
    assert a.intervals == b.intervals
    for key in a.distribution:
        np.testing.assert_array_equal(a.distribution[key], b.distribution[key])
    c = sk.bootstrap_ci("dice_at_coverage", pred, label, u, seed=10, **kwargs)
    assert not np.array_equal(a.distribution["mean@0.9"], c.distribution["mean@0.9"])
    # a perfect model: Dice 1 in every resample, a single-valued interval (no BCa warning, no NaN)
    d = sk.bootstrap_ci("dice_at_coverage", label, label, u, seed=9, **kwargs)
    ci = d["mean@0.9"]
    assert ci.low == ci.high == ci.estimate == 1.0 and ci.standard_error == 0.0


def test_state_file_of_version_0_3_0_loads(tmp_path):
    """A state saved by 0.3.0 (its array names written by hand here) loads into the renamed fields, and a
    state saved now has the same arrays, so that 0.3.0 reads it too."""
    from selectivekit.guarantees import ImageState

    old = tmp_path / "old.npz"
    np.savez(
        old,
        format_version=np.int64(1),
        lengths=np.array([3, 2], dtype=np.int64),
        changes=np.array([1, 0], dtype=np.int64),
        n_vox=np.array([4, 2], dtype=np.int64),
        thr=np.array([0.1, 0.5, 0.9, 0.2, 0.3]),
        cnt=np.array([1, 3, 4, 1, 2], dtype=np.int32),
        chg_t=np.array([0.9]),
        chg_d=np.array([0.5]),
    )
    state = ImageState.load(old)
    assert state.n_items == 2 and state.n_voxels.tolist() == [4, 2]
    np.testing.assert_array_equal(state.thresholds[0], [0.1, 0.5, 0.9])
    np.testing.assert_array_equal(state.counts[1], [1, 2])
    np.testing.assert_array_equal(state.changed_thresholds[0], [0.9])
    np.testing.assert_array_equal(state.changed_dice[0], [0.5])
    assert state.changed_thresholds[1].shape == (0,)
    # the names of 0.3.0 still read the same arrays
    assert state.thr is state.thresholds and state.cnt is state.counts and state.n_vox is state.n_voxels
    assert state.chg_t is state.changed_thresholds and state.chg_d is state.changed_dice
    np.testing.assert_array_equal(state.dice(0, np.array([0.5, 0.9])), [1.0, 0.5])
    new = tmp_path / "new.npz"
    state.save(new)
    with np.load(old) as a, np.load(new) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_bootstrap_on_every_namespace(xp):
    rng = np.random.default_rng(6)
    # JAX compiles each operation again for every new shape, and each image brings shapes of its own (its
    # numbers of distinct uncertainties, of errors, ...): about 120 compilations an image. Under JAX the
    # bootstrap resamples 3 images and the thresholds see 5 (the fewest at which delta=0.2 refers less than
    # all); 7 elsewhere. The same comparisons.
    on_jax = array_api_compat.is_jax_namespace(xp)
    pred, label, u = seg_data(rng, n=5 if on_jax else 7, k=3)
    images = slice(0, 3 if on_jax else None)
    want = sk.bootstrap_ci(
        ["aurc_dice", "dice_at_coverage"],
        pred[images],
        label[images],
        u[images],
        num_classes=3,
        coverages=[0.9],
        n_resamples=20,
        seed=0,
    )
    got = sk.bootstrap_ci(
        ["aurc_dice", "dice_at_coverage"],
        xp.asarray(pred[images]),
        xp.asarray(label[images]),
        xp.asarray(u[images]),
        num_classes=3,
        coverages=[0.9],
        n_resamples=20,
        seed=0,
    )
    for key in want.distribution:
        np.testing.assert_allclose(got.distribution[key], want.distribution[key], atol=1e-12)
    uu, cc = xp.asarray(u.reshape(-1)[:200]), xp.asarray(pred.reshape(-1)[:200] == label.reshape(-1)[:200])
    got = sk.bootstrap_ci("aurc", uu, cc, n_resamples=20, seed=0)
    want = sk.bootstrap_ci("aurc", to_numpy(uu), to_numpy(cc), n_resamples=20, seed=0)
    np.testing.assert_allclose(got.distribution["aurc"], want.distribution["aurc"], atol=1e-12)
    res = sk.guaranteed_risk_threshold(uu, cc, target_risk=0.3, delta=0.1)
    assert res == sk.guaranteed_risk_threshold(to_numpy(uu), to_numpy(cc), target_risk=0.3, delta=0.1)
    for delta in (None, 0.2):
        res = sk.guaranteed_dice_threshold(
            xp.asarray(pred), xp.asarray(label), xp.asarray(u), num_classes=3, max_dice_loss=0.3, delta=delta
        )
        want = sk.guaranteed_dice_threshold(pred, label, u, num_classes=3, max_dice_loss=0.3, delta=delta)
        assert not res.refers_all
        got_fields, want_fields = dataclasses.asdict(res), dataclasses.asdict(want)
        assert got_fields.keys() == want_fields.keys()
        for name, value in want_fields.items():
            if value is None or isinstance(value, (str, bool)):  # pytest >= 9.2: approx takes numbers only
                assert got_fields[name] == value, name
            else:
                assert got_fields[name] == pytest.approx(value, rel=1e-12), name


# ----------------------------------------------------------------------------------------------------
# paired comparison


def test_compare_models_against_brute_force_permutations():
    rng = np.random.default_rng(7)
    k, n = 3, 6
    pa, label, ua = seg_data(rng, n=n, k=k)
    pb, _, ub = seg_data(rng, n=n, k=k, rate=0.08)
    pb = np.where(rng.random(label.shape) < 0.9, label, pb)
    cmp = sk.compare_models(pa, ua, pb, ub, label, num_classes=k, coverages=[0.9], n_resamples=50, seed=0)
    assert cmp.exact and cmp.n_permutations == 2**n
    want_aurc = sk.aurc_dice(pb, label, ub, num_classes=k) - sk.aurc_dice(pa, label, ua, num_classes=k)
    assert cmp["aurc_dice"].estimate == pytest.approx(want_aurc, abs=1e-12)

    def mean_at(p, uu):
        return sk.dice_at_coverage(p, label, uu, 0.9, num_classes=k)[0].mean

    want_dice = mean_at(pb, ub) - mean_at(pa, ua)
    assert cmp["mean@0.9"].estimate == pytest.approx(want_dice, abs=1e-12)
    # every swap of the two models' outputs, image by image
    null_aurc, null_dice = [], []
    for bits in range(2**n):
        swap = np.array([(bits >> i) & 1 for i in range(n)], dtype=bool)[:, None, None]
        xa, xua = np.where(swap, pb, pa), np.where(swap, ub, ua)
        xb, xub = np.where(swap, pa, pb), np.where(swap, ua, ub)
        null_aurc.append(
            sk.aurc_dice(xb, label, xub, num_classes=k) - sk.aurc_dice(xa, label, xua, num_classes=k)
        )
        null_dice.append(mean_at(xb, xub) - mean_at(xa, xua))
    for key, null, obs in (("aurc_dice", null_aurc, want_aurc), ("mean@0.9", null_dice, want_dice)):
        null = np.asarray(null)
        tol = 1e-12
        p = min(1.0, 2 * min(np.mean(null <= obs + tol), np.mean(null >= obs - tol)))
        assert cmp[key].p_value == pytest.approx(p), key
        assert cmp[key].low <= cmp[key].estimate <= cmp[key].high or cmp[key].method == "BCa"


def test_compare_models_detects_a_better_model_and_not_noise():
    rng = np.random.default_rng(8)
    label = rng.integers(0, 2, size=(16, 12, 12))

    def model(noise, seed):
        r = np.random.default_rng(seed)
        wrong = r.random(label.shape) < 0.1
        return np.where(wrong, 1 - label, label), (r.random(label.shape) + noise * wrong).astype(np.float32)

    pa, ua = model(0.1, 1)
    pb, ub = model(1.0, 2)
    cmp = sk.compare_models(pa, ua, pb, ub, label, num_classes=2, coverages=[0.9], n_resamples=300, seed=0)
    assert cmp["aurc_dice"].estimate < 0 and cmp["aurc_dice"].high < 0 and cmp["aurc_dice"].p_value < 0.01
    assert cmp["mean@0.9"].estimate > 0 and cmp["mean@0.9"].p_value < 0.01
    pc, uc = model(0.1, 3)  # same quality as A
    cmp = sk.compare_models(pa, ua, pc, uc, label, num_classes=2, n_resamples=300, seed=0)
    assert cmp["aurc_dice"].p_value > 0.05 and cmp["aurc_dice"].low < 0 < cmp["aurc_dice"].high
    assert not cmp.exact and cmp.n_permutations == 9999


# ----------------------------------------------------------------------------------------------------
# SGR


def test_binomial_bound_inverts_the_tail():
    for e, m, d in ((0, 10, 0.05), (3, 50, 0.01), (40, 1000, 0.2)):
        b = _binomial_upper_bound(e, m, d)
        assert scipy_stats.binom.cdf(e, m, b) == pytest.approx(d, rel=1e-8)
    assert _binomial_upper_bound(5, 5, 0.1) == 1.0


def test_sgr_ties_are_accepted_together():
    u = np.array([0.0] * 50 + [0.5] * 50 + [1.0] * 50)
    correct = np.array([True] * 50 + [True] * 45 + [False] * 5 + [False] * 50)
    res = sk.guaranteed_risk_threshold(u, correct, target_risk=0.2, delta=0.1)
    assert res.threshold == 0.5 and res.n_accepted == 100 and res.coverage == pytest.approx(100 / 150)
    assert res.selective_risk == pytest.approx(0.05) and res.risk_bound < 0.2 and not res.refers_all
    res = sk.guaranteed_risk_threshold(u, correct, target_risk=0.01, delta=0.1)  # 50 correct: bound ~ 0.07
    assert (
        res.refers_all and res.threshold == -math.inf and res.coverage == 0.0 and math.isnan(res.risk_bound)
    )
    res = sk.guaranteed_risk_threshold(u, correct, target_risk=0.5, delta=0.1, mask=u < 1.0)
    assert res.coverage == 1.0 and res.n_accepted == 100


def test_sgr_simulation_violation_rate_and_coverage():
    """P(selective risk > target) <= delta over calibration sets, with a coverage near the oracle's."""
    rng = np.random.default_rng(10)
    target, delta, m, trials = 0.05, 0.1, 20_000, 500
    oracle = target / 0.15  # selective risk 0.15 t, coverage t
    violations, coverages = 0, []
    for _ in range(trials):
        u = rng.random(m)
        correct = rng.random(m) >= 0.3 * u
        res = sk.guaranteed_risk_threshold(u, correct, target_risk=target, delta=delta)
        t = max(res.threshold, 0.0)
        violations += 0.15 * min(t, 1.0) > target
        coverages.append(min(t, 1.0))
    rate = violations / trials
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert np.mean(coverages) >= 0.8 * oracle  # not trivially conservative
    print(
        f"SGR: violation rate {rate:.3f} (delta {delta}); "
        f"coverage {np.mean(coverages):.3f}, oracle {oracle:.3f}"
    )


# ----------------------------------------------------------------------------------------------------
# image-level thresholds: CRC and LTT


V, LEVELS = 64, 200


def image_pool(rng, n):
    """Images of 64 voxels, 2 classes; P(wrong | u) = 0.5 s u^2 with a per-image difficulty s."""
    label = (rng.random((n, V)) < 0.5).astype(np.int64)
    u = np.floor(rng.random((n, V)) * LEVELS) / LEVELS  # a grid: ties within and across images
    s = rng.uniform(0.3, 1.7, size=(n, 1))
    wrong = rng.random((n, V)) < 0.5 * s * u**2
    pred = np.where(wrong, 1 - label, label)
    return pred, label, u


@pytest.fixture(scope="module")
def population():
    """Population risk E[1 - Dice after referral] and coverage at every grid threshold."""
    pred, label, u = image_pool(np.random.default_rng(11), 20_000)
    curve = sk.dice_coverage_curve(pred, label, u, num_classes=2)
    return np.asarray(curve.threshold), 1.0 - np.asarray(curve.mean_dice), np.asarray(curve.coverage)


def risk_at(population, t):
    thr, risk, coverage = population
    k = np.searchsorted(thr, t, side="right") - 1
    return (0.0, 0.0) if k < 0 else (float(risk[k]), float(coverage[k]))


def test_crc_simulation_mean_test_loss_and_coverage(population):
    rng = np.random.default_rng(12)
    alpha, n, trials = 0.05, 100, 600
    _, risk, coverage = population
    oracle = float(coverage[risk <= alpha].max())
    losses, coverages = [], []
    for _ in range(trials):
        res = sk.guaranteed_dice_threshold(*image_pool(rng, n), num_classes=2, max_dice_loss=alpha)
        assert res.method == "crc" and res.bound <= alpha
        r, c = risk_at(population, res.threshold)
        losses.append(r)
        coverages.append(c)
    mean_loss = float(np.mean(losses))
    se = float(np.std(losses)) / math.sqrt(trials)
    assert mean_loss <= alpha + 3 * se
    assert mean_loss >= alpha - 2.0 / (n + 1) - 3 * se  # tight: CRC loses at most about 1/(n+1)
    assert np.mean(coverages) >= oracle - 0.05
    print(
        f"CRC: mean test loss {mean_loss:.4f} (target {alpha}); "
        f"coverage {np.mean(coverages):.3f}, oracle {oracle:.3f}"
    )


def test_ltt_simulation_violation_rate_and_coverage(population):
    rng = np.random.default_rng(13)
    alpha, delta, n, trials = 0.05, 0.1, 500, 400
    _, risk, coverage = population
    oracle = float(coverage[risk <= alpha].max())
    violations, coverages = 0, []
    for _ in range(trials):
        res = sk.guaranteed_dice_threshold(
            *image_pool(rng, n), num_classes=2, max_dice_loss=alpha, delta=delta
        )
        assert res.method == "ltt" and (
            res.refers_all or (res.p_value <= delta and res.bound <= alpha + 1e-9)
        )
        r, c = risk_at(population, res.threshold)
        violations += r > alpha
        coverages.append(c)
    rate = violations / trials
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert np.mean(coverages) >= 0.8 * oracle  # Hoeffding–Bentkus costs some coverage, not most
    print(
        f"LTT: violation rate {rate:.3f} (delta {delta}); "
        f"coverage {np.mean(coverages):.3f}, oracle {oracle:.3f}"
    )


def test_dice_threshold_refers_everything_when_nothing_qualifies():
    pred, label, u = image_pool(np.random.default_rng(14), 5)
    res = sk.guaranteed_dice_threshold(pred, label, u, num_classes=2, max_dice_loss=0.1)  # 1/(n+1) > 0.1
    assert res.refers_all and res.threshold == -math.inf and res.coverage == 0.0 and res.loss == 0.0
    res = sk.guaranteed_dice_threshold(pred, label, u, num_classes=2, max_dice_loss=0.1, delta=0.05)
    assert res.refers_all and res.method == "ltt"


def test_hb_p_value():
    # below the target the p-value is small, at or above it is 1 (capped)
    assert _hb_p_value(0.01, 0.1, 500) < 1e-6
    assert _hb_p_value(0.1, 0.1, 500) == 1.0
    # Bentkus term: e * P(Bin(n, alpha) <= ceil(n loss))
    assert _hb_p_value(0.05, 0.1, 100) <= math.e * scipy_stats.binom.cdf(5, 100, 0.1) + 1e-15


def test_bootstrap_simulation_nominal_coverage(population):
    """95% intervals cover the population value about 95% of the time (instances and images)."""
    rng = np.random.default_rng(15)
    trials = 200
    # instances: u ~ U(0, 1), P(wrong | u) = 0.3 u -> selective risk 0.15 c at coverage c, AURC 0.075
    hits = 0
    for _ in range(trials):
        u = rng.random(400)
        correct = rng.random(400) >= 0.3 * u
        ci = sk.bootstrap_ci("aurc", u, correct, n_resamples=400, seed=rng)["aurc"]
        hits += ci.low <= 0.075 <= ci.high
    instance_rate = hits / trials
    # images: AURC of 1 - Dice on 30 images, population value from 20,000 images
    _, risk, coverage = population
    truth = float(np.sum(np.diff(coverage, prepend=0.0) * risk))
    hits = 0
    for _ in range(trials):
        ci = sk.bootstrap_ci("aurc_dice", *image_pool(rng, 30), num_classes=2, n_resamples=400, seed=rng)[
            "aurc_dice"
        ]
        hits += ci.low <= truth <= ci.high
    image_rate = hits / trials
    print(f"bootstrap coverage: instances {instance_rate:.3f}, images {image_rate:.3f} (nominal 0.95)")
    for rate in (instance_rate, image_rate):
        assert 0.88 <= rate <= 0.995


# ----------------------------------------------------------------------------------------------------
# bad inputs name the argument


def test_bad_inputs():
    rng = np.random.default_rng(16)
    pred, label, u = seg_data(rng, k=2)
    uu, cc = rng.random(20), rng.random(20) > 0.3
    cases = [
        (lambda: sk.bootstrap_ci("auroc", uu, cc), ValueError, "`metric`"),
        (lambda: sk.bootstrap_ci(["aurc", "aurc_dice"], uu, cc), ValueError, "`metric`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, confidence=1.0), ValueError, "`confidence`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, method="bootstrap"), ValueError, "`method`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, n_resamples=0), ValueError, "`n_resamples`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, seed=-1), ValueError, "`seed`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, groups=np.zeros(3, dtype=int)), ValueError, "`groups`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, groups=np.zeros(20)), TypeError, "`groups`"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, groups=np.zeros(20, dtype=int)), ValueError, "2 groups"),
        (lambda: sk.bootstrap_ci("aurc", uu[:1], cc[:1]), ValueError, "2 instances"),
        (lambda: sk.bootstrap_ci("aurc", uu, cc, num_classes=2), TypeError, "`num_classes`"),
        (lambda: sk.bootstrap_ci("aurc", np.full(20, np.nan), cc), ValueError, "`uncertainty`"),
        (lambda: sk.bootstrap_ci("aurc_dice", pred, label, u), TypeError, "`num_classes`"),
        (
            lambda: sk.bootstrap_ci("aurc_dice", pred, label, num_classes=2),
            TypeError,
            "`pred, label, uncertainty`",
        ),
        (
            lambda: sk.bootstrap_ci("dice_at_coverage", pred, label, u, num_classes=2),
            TypeError,
            "`coverages`",
        ),
        (
            lambda: sk.bootstrap_ci("dice_at_coverage", pred, label, u, num_classes=2, coverages=1.5),
            ValueError,
            "`coverages`",
        ),
        (
            lambda: sk.bootstrap_ci("aurc_dice", pred, label, u[:, :3], num_classes=2),
            ValueError,
            "`uncertainty`",
        ),
        (lambda: sk.bootstrap_ci("aurc_dice", pred + 5, label, u, num_classes=2), ValueError, "`pred`"),
        (
            lambda: sk.bootstrap_ci("aurc_dice", pred[:1], label[:1], u[:1], num_classes=2),
            ValueError,
            "2 images",
        ),
        (
            lambda: sk.bootstrap_ci("aurc_dice", pred, label, u, num_classes=2, mask=u > 0),
            TypeError,
            "`mask`",
        ),
        (lambda: sk.compare_models(pred, u, pred[:3], u[:3], label, num_classes=2), ValueError, "`"),
        (
            lambda: sk.compare_models(pred, u, pred, u, label, num_classes=2, n_permutations=0),
            ValueError,
            "`n_permutations`",
        ),
        (
            lambda: sk.guaranteed_risk_threshold(uu, cc, target_risk=0.0, delta=0.1),
            ValueError,
            "`target_risk`",
        ),
        (
            lambda: sk.guaranteed_risk_threshold(uu, cc, target_risk=1.0, delta=0.1),
            ValueError,
            "`target_risk`",
        ),
        (lambda: sk.guaranteed_risk_threshold(uu, cc, target_risk=0.1, delta=1.0), ValueError, "`delta`"),
        (
            lambda: sk.guaranteed_risk_threshold(uu, cc, target_risk="0.1", delta=0.1),
            TypeError,
            "`target_risk`",
        ),
        (
            lambda: sk.guaranteed_risk_threshold(uu[:0], cc[:0], target_risk=0.1, delta=0.1),
            ValueError,
            "empty",
        ),
        (
            lambda: sk.guaranteed_risk_threshold(uu, cc, target_risk=0.1, delta=0.1, mask=uu > 2),
            ValueError,
            "`mask`",
        ),
        (
            lambda: sk.guaranteed_risk_threshold(uu, cc[:5], target_risk=0.1, delta=0.1),
            ValueError,
            "`correct`",
        ),
        (
            lambda: sk.guaranteed_dice_threshold([], [], [], num_classes=2, max_dice_loss=0.1),
            ValueError,
            "`pred`",
        ),
        (
            lambda: sk.guaranteed_dice_threshold(pred, label, u, num_classes=2, max_dice_loss=1.5),
            ValueError,
            "`max_dice_loss`",
        ),
        (
            lambda: sk.guaranteed_dice_threshold(pred, label, u, num_classes=2, max_dice_loss=0.1, delta=0.0),
            ValueError,
            "`delta`",
        ),
        (
            lambda: sk.guaranteed_dice_threshold(pred, label, u, num_classes=1, max_dice_loss=0.1),
            ValueError,
            "`num_classes`",
        ),
        (
            lambda: sk.guaranteed_dice_threshold(
                pred, label, np.full(u.shape, np.inf), num_classes=2, max_dice_loss=0.1
            ),
            ValueError,
            "`uncertainty`",
        ),
    ]
    for call, exc, text in cases:
        with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
            call()


# --- too few instances to resample --------------------------------------------------------------------------


def test_bootstrap_too_few_units_names_argument():
    with pytest.raises(ValueError, match="at least 2 instances to resample \\(in `uncertainty`\\)"):
        sk.bootstrap_ci("aurc", np.array([0.5]), np.array([True]), n_resamples=10)

"""Per-structure and multi-risk thresholds, and the Waudby-Smith–Ramdas bound: brute force, properties and
simulated guarantees."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.guarantees import (
    guaranteed_class_thresholds,
    guaranteed_joint_threshold,
)
from selectivekit.guarantees._bounds import hb_p_value as _hb_p_value
from selectivekit.guarantees._bounds import wsr_p_value, wsr_upper_bound
from selectivekit.guarantees._joint import (
    Calibration,
    choose_threshold,
    class_thresholds,
)

scipy_stats = pytest.importorskip("scipy.stats")

K = 3  # classes 0 (background), 1, 2


# ----------------------------------------------------------------------------------------------------
# independent references: Dice from scratch, the capital process as a loop, the walk over every u


def dice_from_scratch(pred, label, refer, c):
    p = np.where(refer, label, pred) == c
    t = label == c
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else 2.0 * np.sum(p & t) / denom


def image_losses(pred, label, u, t):
    """Per image: {"mean", "worst", 1, 2} -> 1 - Dice after referring u > t, from scratch."""
    out = []
    for p, lab, v in zip(pred, label, u, strict=True):
        d = {c: dice_from_scratch(p, lab, v > t, c) for c in (1, 2)}
        out.append({"mean": 1 - (d[1] + d[2]) / 2, "worst": 1 - min(d.values()), 1: 1 - d[1], 2: 1 - d[2]})
    return out


def wsr_log_capital_loop(losses, r, delta):
    n = len(losses)
    total, sq, s2_prev, log_k, best = 0.0, 0.0, 0.25, 0.0, 0.0
    for i, x in enumerate(losses, start=1):
        nu = min(1.0, math.sqrt(2 * math.log(1 / delta) / (n * s2_prev)))
        factor = 1 - nu * (x - r)
        log_k += math.log(factor) if factor > 0 else -math.inf
        best = max(best, log_k)
        total += x
        mu = (0.5 + total) / (1 + i)
        sq += (x - mu) ** 2
        s2_prev = (0.25 + sq) / (1 + i)
    return best


def walk_reference(pred, label, u, limits, delta, bound):
    """Fixed-sequence over every candidate: -inf, then each distinct u increasing; the last that passes."""
    n = len(pred)
    chosen = -math.inf
    for t in np.concatenate([[-math.inf], np.unique(u)]):
        rows = image_losses(pred, label, u, t)
        ok = True
        for key, alpha in limits.items():
            x = [r[key] for r in rows]
            if delta is None:
                ok &= (n * np.mean(x) + 1) / (n + 1) <= alpha
            elif bound == "wsr":
                ok &= math.exp(-wsr_log_capital_loop(x, alpha, delta)) <= delta
            else:
                ok &= _hb_p_value(float(np.mean(x)), alpha, n) <= delta
        if not ok:
            break
        chosen = t
    return chosen


def small_images(rng, n, side=5, levels=6):
    label = rng.integers(0, K, size=(n, side, side))
    u = np.floor(rng.random(label.shape) * levels) / levels  # ties within and across images
    wrong = rng.random(label.shape) < 0.5 * u
    pred = np.where(wrong, (label + rng.integers(1, K, size=label.shape)) % K, label)
    return pred, label, u


@pytest.mark.parametrize(
    ("limits", "delta", "bound"),
    [
        ({"mean": 0.1}, None, "hoeffding-bentkus"),
        ({"mean": 0.12, "worst": 0.2}, None, "hoeffding-bentkus"),
        ({2: 0.15}, None, "hoeffding-bentkus"),
        ({"mean": 0.3, "worst": 0.4}, 0.2, "hoeffding-bentkus"),
        ({"mean": 0.3, "worst": 0.4}, 0.2, "wsr"),
        ({1: 0.35}, 0.2, "wsr"),
    ],
)
def test_joint_threshold_equals_the_walk_over_every_u(limits, delta, bound):
    rng = np.random.default_rng(len(limits) * 7 + (delta is None))
    for _ in range(4):
        pred, label, u = small_images(rng, 30)
        res = guaranteed_joint_threshold(
            pred, label, u, num_classes=K, max_dice_loss=limits, delta=delta, bound=bound
        )
        expected = walk_reference(pred, label, u, limits, delta, bound)
        assert res.threshold == expected
        assert res.refers_all == (expected == -math.inf)
        if not res.refers_all:
            rows = image_losses(pred, label, u, res.threshold)
            for key in limits:
                assert res.loss[key] == pytest.approx(np.mean([r[key] for r in rows]), abs=1e-12)
                assert res.bound[key] <= limits[key] + 1e-12
            assert res.coverage == np.mean(u <= res.threshold)


def test_wsr_matches_the_loop_and_bound_inverts_the_p_value():
    rng = np.random.default_rng(3)
    for n in (1, 5, 40):
        x = rng.beta(0.5, 3, size=n)
        for r in (0.05, 0.2, 0.6):
            assert wsr_p_value(x[None, :], r, 0.1)[0] == pytest.approx(
                math.exp(-wsr_log_capital_loop(list(x), r, 0.1)), rel=1e-12
            )
        ucb = wsr_upper_bound(x, 0.1)
        grid = np.linspace(0, 1, 2001)
        passing = [g for g in grid if wsr_log_capital_loop(list(x), g, 0.1) >= math.log(10)]
        assert (passing[0] if passing else 1.0) == pytest.approx(ucb, abs=1e-3)
        assert ucb >= 0


def test_wsr_upper_bound_covers_the_mean_at_its_level():
    """1,000 samples of 50 Beta losses: the bound falls below the true mean at most delta of the time."""
    rng = np.random.default_rng(4)
    trials, delta, a, b = 1000, 0.1, 1.0, 6.0
    misses = sum(wsr_upper_bound(rng.beta(a, b, size=50), delta) < a / (a + b) for _ in range(trials))
    assert misses <= scipy_stats.binom.ppf(0.999, trials, delta)
    print(f"WSR bound below the mean in {misses} of {trials} samples (delta {delta})")


def test_single_mean_risk_equals_guaranteed_dice_threshold():
    rng = np.random.default_rng(5)
    pred, label, u = small_images(rng, 60, side=8, levels=50)
    for delta in (None, 0.2):
        a = sk.guaranteed_dice_threshold(pred, label, u, num_classes=K, max_dice_loss=0.2, delta=delta)
        b = guaranteed_joint_threshold(
            pred, label, u, num_classes=K, max_dice_loss={"mean": 0.2}, delta=delta
        )
        assert (a.threshold, a.coverage) == (b.threshold, b.coverage)
        assert a.bound == pytest.approx(b.bound["mean"], abs=1e-12)
    wsr = sk.guaranteed_dice_threshold(
        pred, label, u, num_classes=K, max_dice_loss=0.2, delta=0.2, bound="wsr"
    )
    walk = walk_reference(pred, label, u, {"mean": 0.2}, 0.2, "wsr")
    assert wsr.threshold == walk and wsr.method == "ltt"


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), a=st.floats(0.05, 0.5), b=st.floats(0.05, 0.5))
def test_properties_of_joint_and_class_thresholds(seed, a, b):
    pred, label, u = small_images(np.random.default_rng(seed), 12)
    one = {
        key: guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={key: a})
        for key in ("mean", "worst")
    }
    both = guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={"mean": a, "worst": a})
    # two risks at once: the more cautious of the two alone
    assert both.threshold == min(r.threshold for r in one.values())
    # the worst structure's loss is at least the mean's, so its threshold is never less cautious
    assert one["worst"].threshold <= one["mean"].threshold
    per = guaranteed_class_thresholds(pred, label, u, num_classes=K, max_dice_loss={1: a, 2: b})
    assert per.threshold == min(r.threshold for r in per.per_class.values())
    for c, r in per.per_class.items():
        alone = guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={c: (a, b)[c - 1]})
        assert r.threshold == alone.threshold
    # LTT: each class at delta / 2
    ltt = guaranteed_class_thresholds(pred, label, u, num_classes=K, max_dice_loss=a, delta=0.2)
    assert ltt.delta_per_class == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------------
# simulated guarantees: calibration sets drawn with replacement from a pool, so the pool is the true
# distribution and every risk at a threshold is known exactly


SPLITS = 1000


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(21)
    n, v, levels = 400, 48, 40
    label = np.where(rng.random((n, v)) < 0.7, 0, rng.integers(1, K, size=(n, v)))
    label[:, 0], label[:, 1] = 1, 2  # every structure present
    u = np.floor(rng.random((n, v)) * levels) / levels
    s = rng.uniform(0.2, 1.8, size=(n, 1))  # per-image difficulty: the losses vary between images
    wrong = rng.random((n, v)) < 0.6 * s * u**2
    pred = np.where(wrong, (label + rng.integers(1, K, size=label.shape)) % K, label)
    cal = Calibration.of_images(pred, label, u, K, False, None)
    grid = np.unique(u)
    truth = {key: cal.loss_rows(key, grid).mean(axis=1) for key in ("mean", "worst", 1, 2)}
    return cal, grid, truth


def true_risk(pool, key, t):
    _, grid, truth = pool
    k = np.searchsorted(grid, t, side="right") - 1
    return 0.0 if k < 0 else float(truth[key][k])


def split_thresholds(pool, seed, n, run):
    cal = pool[0]
    rng = np.random.default_rng(seed)
    return [run(cal.take(rng.integers(0, cal.n_images, size=n))) for _ in range(SPLITS)]


@pytest.mark.parametrize("bound", ["hoeffding-bentkus", "wsr"])
def test_ltt_joint_and_per_class_hold_in_1000_splits(pool, bound):
    delta, limits = 0.1, {"mean": 0.06, "worst": 0.1}
    joint = split_thresholds(pool, 31, 120, lambda c: choose_threshold(c, limits, delta, bound))
    joint_bad = sum(any(true_risk(pool, k, r.threshold) > a for k, a in limits.items()) for r in joint)
    per = split_thresholds(pool, 32, 120, lambda c: class_thresholds(c, {1: 0.08, 2: 0.08}, delta, bound))
    # family-wise: any class above its limit at its own threshold counts as one violation
    per_bad = sum(
        any(true_risk(pool, c, r.threshold) > 0.08 for c, r in res.per_class.items()) for res in per
    )
    band = scipy_stats.binom.ppf(0.999, SPLITS, delta)  # violations above this: P < 0.001 if valid
    assert joint_bad <= band and per_bad <= band
    # not vacuous: the thresholds accept voxels in most splits
    assert np.mean([not r.refers_all for r in joint]) > 0.9
    print(
        f"LTT {bound}, {SPLITS} splits: joint violations {joint_bad}, per-class {per_bad} (band {band:.0f})"
    )


def test_crc_joint_and_per_class_hold_in_1000_splits(pool):
    limits = {"mean": 0.05, "worst": 0.09}
    joint = split_thresholds(pool, 41, 60, lambda c: choose_threshold(c, limits, None, "hoeffding-bentkus"))
    per = split_thresholds(pool, 42, 60, lambda c: class_thresholds(c, {1: 0.07, 2: 0.07}, None, "wsr"))
    checks = [(k, a, [r.threshold for r in joint]) for k, a in limits.items()]
    checks += [(c, 0.07, [res.per_class[c].threshold for res in per]) for c in (1, 2)]
    for key, alpha, thresholds in checks:
        risks = np.array([true_risk(pool, key, t) for t in thresholds])
        se = risks.std() / math.sqrt(SPLITS)
        assert risks.mean() <= alpha + 3 * se, key
        print(f"CRC {key}: mean risk {risks.mean():.4f} (limit {alpha}) over {SPLITS} splits")


def test_the_simulation_detects_an_uncorrected_threshold(pool):
    """The same simulation catches a threshold chosen by the plain calibration loss (no bound)."""
    cal = pool[0]
    grid = pool[1]
    rng = np.random.default_rng(51)
    bad = 0
    for _ in range(SPLITS // 4):
        sub = cal.take(rng.integers(0, cal.n_images, size=120))
        means = sub.loss_rows("worst", grid).mean(axis=1)
        t = grid[np.nonzero(means <= 0.1)[0].max()]
        bad += true_risk(pool, "worst", t) > 0.1
    assert bad > scipy_stats.binom.ppf(0.999, SPLITS // 4, 0.1)


def test_bad_arguments_name_the_argument():
    pred, label, u = small_images(np.random.default_rng(0), 4)
    with pytest.raises(ValueError, match="max_dice_loss"):
        guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={"median": 0.1})
    with pytest.raises(ValueError, match="max_dice_loss"):
        guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={0: 0.1})  # background
    with pytest.raises(TypeError, match="max_dice_loss"):
        guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss=0.1)
    with pytest.raises(ValueError, match=r"max_dice_loss\['mean'\]"):
        guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={"mean": 1.5})
    with pytest.raises(ValueError, match="bound"):
        guaranteed_joint_threshold(pred, label, u, num_classes=K, max_dice_loss={"mean": 0.1}, bound="wilson")
    with pytest.raises(ValueError, match="max_dice_loss"):
        guaranteed_class_thresholds(pred, label, u, num_classes=K, max_dice_loss={1: 0.1})  # class 2 missing
    with pytest.raises(ValueError, match="bound"):
        sk.guaranteed_dice_threshold(pred, label, u, num_classes=K, max_dice_loss=0.1, bound="x")
    with pytest.raises(ValueError, match="calibration image"):
        guaranteed_joint_threshold([], [], [], num_classes=K, max_dice_loss={"mean": 0.1})

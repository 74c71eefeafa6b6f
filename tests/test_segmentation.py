"""Coverage-aware Dice, exact Dice-coverage curves and aurc_dice against a brute-force reference.

The reference applies referral at a threshold (referred voxels take the true label) and recomputes every
class Dice from scratch with explicit counts; it shares no code with the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit.segmentation import (
    DiceAtCoverage,
    aurc_dice,
    compare_at_coverage,
    dice_at_coverage,
    dice_coverage_curve,
)
from tests.conftest import (
    FUZZ,
    SCALAR_MUTATIONS,
    draw_mutated,
    fuzz_contract,
    no_silent_nan,
    requires_torch,
    to_numpy,
    xp_assert_close,
    xp_assert_equal,
)

# ----------------------------------------------------------------------------------------------------
# brute-force reference


def ref_class_dice(pred, label, u, t, num_classes, include_background):
    """Per-class Dice of one image after referring every voxel with u > t."""
    after = np.where(u > t, label, pred).ravel()
    label = label.ravel()
    out = []
    for k in range(0 if include_background else 1, num_classes):
        tp = int(np.sum((after == k) & (label == k)))
        fp = int(np.sum((after == k) & (label != k)))
        fn = int(np.sum((after != k) & (label == k)))
        out.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return np.array(out)


def ref_threshold(images, c):
    """Smallest observed t with #{u <= t} >= ceil(c N) (computed with exact fractions)."""
    from fractions import Fraction

    u = np.sort(np.concatenate([im[2].ravel() for im in images]))
    n = u.size
    k = max(1, math.ceil(Fraction(c).limit_denominator(10**9) * n))
    return u[k - 1]


def ref_at_threshold(images, t, num_classes, include_background):
    per_class = np.stack(
        [ref_class_dice(p, lab, u, t, num_classes, include_background) for p, lab, u in images]
    )
    per_image = per_class.mean(axis=1)
    cov = np.array([np.mean(u <= t) for _, _, u in images])
    n_acc = sum(int(np.sum(u <= t)) for _, _, u in images)
    n = sum(u.size for _, _, u in images)
    return per_class, per_image, cov, n_acc / n


def ref_curve(images, num_classes, include_background):
    thresholds = np.unique(np.concatenate([im[2].ravel() for im in images]))
    cov, dice = [], []
    for t in thresholds:
        _, per_image, _, c = ref_at_threshold(images, t, num_classes, include_background)
        cov.append(c)
        dice.append(per_image.mean())
    return np.array(cov), np.array(dice), thresholds


def make_images(seed, n_images, num_classes, *, error_rate=0.3, ties=None, varying=False, ndim=2):
    rng = np.random.default_rng(seed)
    images = []
    base = tuple(int(s) for s in rng.integers(2, 6, size=ndim))
    for _ in range(n_images):
        shape = tuple(int(s) for s in rng.integers(1, 7, size=ndim)) if varying else base
        label = rng.integers(0, num_classes, size=shape)
        wrong = rng.random(shape) < error_rate
        pred = np.where(wrong, rng.integers(0, num_classes, size=shape), label)
        if ties:
            u = rng.integers(0, ties, size=shape).astype(np.float64) / ties
        else:
            u = rng.random(shape) + 0.3 * (pred != label)
        images.append((pred, label, u))
    return images


def as_inputs(images, xp, stacked):
    if stacked:
        return tuple(xp.asarray(np.stack([im[j] for im in images])) for j in range(3))
    return tuple([xp.asarray(im[j]) for im in images] for j in range(3))


images_strategy = st.builds(
    make_images,
    seed=st.integers(0, 2**32 - 1),
    n_images=st.integers(1, 4),
    num_classes=st.integers(2, 4),
    error_rate=st.sampled_from([0.0, 0.1, 0.4, 1.0]),
    ties=st.sampled_from([None, 2, 5]),
    varying=st.booleans(),
)


# ----------------------------------------------------------------------------------------------------
# exactness against the reference, on every backend


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("include_background", [False, True])
def test_curve_matches_reference(xp, stacked, include_background):
    images = make_images(1, 3, 4, ties=7, varying=not stacked)
    pred, label, u = as_inputs(images, xp, stacked)
    curve = dice_coverage_curve(pred, label, u, num_classes=4, include_background=include_background)
    cov, dice, thr = ref_curve(images, 4, include_background)
    xp_assert_close(curve.coverage, cov, xp=xp, rtol=0, atol=1e-12)
    xp_assert_close(curve.mean_dice, dice, xp=xp, rtol=0, atol=1e-12)
    xp_assert_equal(curve.threshold, thr, xp=xp)
    area = aurc_dice(pred, label, u, num_classes=4, include_background=include_background)
    ref_area = float(np.sum(np.diff(np.concatenate([[0.0], cov])) * (1 - dice)))
    assert isinstance(area, float)
    assert area == pytest.approx(ref_area, abs=1e-12)


@pytest.mark.parametrize("stacked", [True, False])
def test_dice_at_coverage_matches_reference(xp, stacked):
    images = make_images(2, 5, 3, ties=4, varying=not stacked)
    pred, label, u = as_inputs(images, xp, stacked)
    coverages = [1.0, 0.95, 0.9, 0.8, 0.7, 0.3, 0.01]
    results = dice_at_coverage(pred, label, u, coverages, num_classes=3)
    assert len(results) == len(coverages)
    for c, r in zip(coverages, results, strict=True):
        assert isinstance(r, DiceAtCoverage)
        t = ref_threshold(images, c)
        per_class, per_image, per_cov, realized = ref_at_threshold(images, t, 3, False)
        assert r.requested == c
        assert r.threshold == pytest.approx(float(t))
        assert r.coverage == pytest.approx(realized, abs=1e-15)
        assert r.coverage >= c - 1e-12
        assert r.classes == (1, 2)
        xp_assert_close(r.per_class_dice, per_class, xp=xp, atol=1e-12)
        xp_assert_close(r.per_image_dice, per_image, xp=xp, atol=1e-12)
        xp_assert_close(r.per_image_coverage, per_cov, xp=xp, atol=1e-12)
        assert r.mean == pytest.approx(per_image.mean(), abs=1e-12)
        assert r.std == pytest.approx(per_image.std(ddof=0), abs=1e-12)
        assert r.p5 == pytest.approx(np.percentile(per_image, 5), abs=1e-12)


def test_float_error_in_coverage_times_n():
    # 0.3 * 10 = 3.0000000000000004: k must be 3, not 4
    u = np.arange(10, dtype=np.float64).reshape(1, 10) / 10
    label = np.ones((1, 10), dtype=np.int64)
    r = dice_at_coverage(label, label, u, 0.3, num_classes=2)[0]
    assert r.threshold == pytest.approx(0.2)
    assert r.coverage == pytest.approx(0.3)


def test_ties_are_not_split():
    u = np.zeros((2, 6))
    u[0, :2] = 0.5
    pred = np.ones((2, 6), dtype=np.int64)
    label = pred.copy()
    label[0, 0] = 0
    r = dice_at_coverage(pred, label, u, 0.5, num_classes=2)[0]
    assert r.threshold == 0.0
    assert r.coverage == pytest.approx(10 / 12)
    np.testing.assert_allclose(r.per_image_coverage, [4 / 6, 1.0])


def test_empty_class_is_one_and_class_only_predicted_is_zero():
    label = np.zeros((1, 4), dtype=np.int64)
    pred = np.array([[0, 2, 0, 0]])
    u = np.array([[0.1, 0.2, 0.3, 0.4]])
    r = dice_at_coverage(pred, label, u, 1.0, num_classes=4)[0]
    np.testing.assert_allclose(r.per_class_dice, [[1.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------
# properties


@given(images=images_strategy, include_background=st.booleans())
def test_curve_exact_at_every_threshold(images, include_background):
    num_classes = int(max(max(p.max(), lab.max()) for p, lab, _ in images)) + 1
    num_classes = max(num_classes, 2)
    pred, label, u = as_inputs(images, np, stacked=False)
    curve = dice_coverage_curve(
        pred, label, u, num_classes=num_classes, include_background=include_background
    )
    cov, dice, thr = ref_curve(images, num_classes, include_background)
    np.testing.assert_array_equal(curve.threshold, thr)
    np.testing.assert_allclose(curve.coverage, cov, atol=1e-12)
    np.testing.assert_allclose(curve.mean_dice, dice, atol=1e-12)


@given(images=images_strategy)
def test_referral_never_lowers_dice_and_full_coverage_is_plain_dice(images):
    pred, label, u = as_inputs(images, np, stacked=False)
    curve = dice_coverage_curve(pred, label, u, num_classes=4)
    # mean Dice is non-increasing in coverage: referring more never lowers it
    assert np.all(np.diff(curve.mean_dice) <= 1e-12)
    plain = np.mean([ref_class_dice(p, lab, np.zeros_like(v), 1.0, 4, False).mean() for p, lab, v in images])
    assert curve.mean_dice[-1] == pytest.approx(plain, abs=1e-12)
    assert curve.coverage[-1] == 1.0
    r = dice_at_coverage(pred, label, u, [1.0, 0.5], num_classes=4)
    assert r[0].mean == pytest.approx(plain, abs=1e-12)
    # per image and per class too: referring more never lowers any Dice
    assert np.all(r[1].per_image_dice >= r[0].per_image_dice - 1e-12)
    assert np.all(r[1].per_class_dice >= r[0].per_class_dice - 1e-12)


@given(images=images_strategy, c=st.floats(0.001, 1.0))
def test_threshold_is_the_shared_tie_rule(images, c):
    from selectivekit.selective import coverage_threshold

    pred, label, u = as_inputs(images, np, stacked=False)
    r = dice_at_coverage(pred, label, u, c, num_classes=4)[0]
    t, realized = coverage_threshold(np.concatenate([v.ravel() for v in u]), c)
    assert (r.threshold, r.coverage) == (t, pytest.approx(realized, abs=1e-15))


@given(images=images_strategy, seed=st.integers(0, 1000))
def test_invariant_to_image_order(images, seed):
    perm = np.random.default_rng(seed).permutation(len(images))
    shuffled = [images[i] for i in perm]
    a = dice_coverage_curve(*as_inputs(images, np, False), num_classes=4)
    b = dice_coverage_curve(*as_inputs(shuffled, np, False), num_classes=4)
    np.testing.assert_allclose(a.mean_dice, b.mean_dice, atol=1e-12)
    np.testing.assert_array_equal(a.coverage, b.coverage)
    ra = dice_at_coverage(*as_inputs(images, np, False), 0.7, num_classes=4)[0]
    rb = dice_at_coverage(*as_inputs(shuffled, np, False), 0.7, num_classes=4)[0]
    np.testing.assert_allclose(ra.per_image_dice[perm], rb.per_image_dice, atol=1e-15)
    assert ra.mean == pytest.approx(rb.mean, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# MONAI at full coverage


def test_matches_monai_at_full_coverage():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    images = make_images(5, 4, 4, error_rate=0.3)
    # make class 3 absent from the truth of image 0 (present in its prediction) and from both in image 1
    p0, l0, u0 = images[0]
    images[0] = (p0, np.where(l0 == 3, 0, l0), u0)
    p1, l1, u1 = images[1]
    images[1] = (np.where(p1 == 3, 0, p1), np.where(l1 == 3, 0, l1), u1)
    pred, label, u = (np.stack([im[j] for im in images]) for j in range(3))
    ours = dice_at_coverage(pred, label, u, 1.0, num_classes=4)[0]

    def onehot(x):
        return torch.nn.functional.one_hot(torch.as_tensor(x), 4).movedim(-1, 1)

    # ignore_empty=False: Dice 1 when a class is absent from both, 0 when only predicted -- our convention
    metric = monai_metrics.DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    theirs = metric(onehot(pred), onehot(label)).numpy()
    np.testing.assert_allclose(ours.per_class_dice, theirs, atol=1e-6)
    # MONAI's default ignore_empty=True gives NaN for a class absent from the truth (we give 1.0 or 0.0)
    default = monai_metrics.DiceMetric(include_background=False, reduction="none")(
        onehot(pred), onehot(label)
    )
    assert np.isnan(default.numpy()[0, 2]) and np.isnan(default.numpy()[1, 2])
    assert ours.per_class_dice[0, 2] == 0.0 and ours.per_class_dice[1, 2] == 1.0


# ----------------------------------------------------------------------------------------------------
# Figure 2 helper


def test_compare_at_coverage_quadrants():
    images_a = make_images(7, 6, 3, ties=None)
    rng = np.random.default_rng(8)
    images_b = [
        (np.where(rng.random(la.shape) < 0.3, rng.integers(0, 3, la.shape), la), la, rng.random(la.shape))
        for _, la, _ in images_a
    ]
    ra = dice_at_coverage(*as_inputs(images_a, np, True), 0.8, num_classes=3)[0]
    rb = dice_at_coverage(*as_inputs(images_b, np, True), 0.8, num_classes=3)[0]
    cmp = compare_at_coverage(ra, rb)
    dc = rb.per_image_coverage - ra.per_image_coverage
    dd = rb.per_image_dice - ra.per_image_dice
    np.testing.assert_array_equal(cmp.coverage_difference, dc)
    np.testing.assert_array_equal(cmp.dice_difference, dd)
    expected = {
        1: np.mean((dc > 0) & (dd > 0)),
        2: np.mean((dc < 0) & (dd > 0)),
        3: np.mean((dc < 0) & (dd < 0)),
        4: np.mean((dc > 0) & (dd < 0)),
    }
    assert cmp.quadrant_share == pytest.approx(expected)
    assert sum(cmp.quadrant_share.values()) + cmp.on_axis_share == pytest.approx(1.0)
    with pytest.raises(ValueError, match="`result_b`"):
        compare_at_coverage(ra, dice_at_coverage(*as_inputs(images_b, np, True), 0.9, num_classes=3)[0])
    with pytest.raises(TypeError, match="`result_a`"):
        compare_at_coverage("x", rb)


# ----------------------------------------------------------------------------------------------------
# bad input


def _good():
    pred = np.array([[0, 1], [1, 1]])
    return pred, pred.copy(), np.array([[0.1, 0.2], [0.3, 0.4]])


def test_label_out_of_range():
    pred, label, u = _good()
    label[0, 0] = 2
    with pytest.raises(ValueError, match=r"`label` must hold labels in \[0, 2\)"):
        dice_at_coverage(pred, label, u, 0.9, num_classes=2)
    pred[0, 0] = -1
    with pytest.raises(ValueError, match="`pred`"):
        dice_coverage_curve(pred, label, u, num_classes=2)


def test_float_labels_whole_accepted_others_rejected():
    pred, label, u = _good()
    # whole-valued floats (label maps as MONAI's LoadImaged reads them) are labels
    assert aurc_dice(pred.astype(float), label.astype(np.float32), u, num_classes=2) == aurc_dice(
        pred, label, u, num_classes=2
    )
    bad = pred.astype(float)
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="`pred` must hold class labels"):
        aurc_dice(bad, label, u, num_classes=2)
    with pytest.raises(TypeError, match="`label` must hold class labels"):
        aurc_dice(pred, label.astype(complex), u, num_classes=2)


def test_shape_mismatch():
    pred, label, u = _good()
    with pytest.raises(ValueError, match="`uncertainty` must have the same shape as `pred`"):
        dice_at_coverage(pred, label, u[:, :1], 0.9, num_classes=2)
    with pytest.raises(ValueError, match=r"`label\[1\]` must have the same shape"):
        dice_at_coverage([pred[0], pred[1]], [label[0], label[1, :1]], [u[0], u[1]], 0.9, num_classes=2)
    with pytest.raises(ValueError, match="`label` must hold 2 images"):
        dice_at_coverage([pred[0], pred[1]], [label[0]], [u[0], u[1]], 0.9, num_classes=2)
    with pytest.raises(TypeError, match="`label` is not a sequence"):
        dice_at_coverage([pred[0]], label, [u[0]], 0.9, num_classes=2)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        dice_at_coverage(pred[0], label[0], u[0], 0.9, num_classes=2)


def test_nan_uncertainty():
    pred, label, u = _good()
    u[1, 1] = np.nan
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        dice_at_coverage(pred, label, u, 0.9, num_classes=2)


@pytest.mark.parametrize(
    ("coverages", "exc"), [(0.0, ValueError), ([0.5, 1.5], ValueError), ([], ValueError), ("a", TypeError)]
)
def test_bad_coverages(coverages, exc):
    pred, label, u = _good()
    with pytest.raises(exc, match="`coverages`"):
        dice_at_coverage(pred, label, u, coverages, num_classes=2)


def test_bad_num_classes_and_empty():
    pred, label, u = _good()
    with pytest.raises(ValueError, match="`num_classes` must be >= 2"):
        dice_coverage_curve(pred * 0, label * 0, u, num_classes=1)
    with pytest.raises(TypeError, match="`num_classes` must be an integer"):
        dice_coverage_curve(pred, label, u, num_classes=2.0)
    with pytest.raises(ValueError, match="`pred` is an empty sequence"):
        dice_coverage_curve([], [], [], num_classes=2)
    with pytest.raises(ValueError, match=r"`pred\[0\]` is empty"):
        dice_coverage_curve([pred[0, :0]], [label[0, :0]], [u[0, :0]], num_classes=2)


# ----------------------------------------------------------------------------------------------------
# ignore_empty: classes absent from an image's label left out (MONAI DiceMetric's default)


def ref_ignore_empty(images, t, num_classes):
    """Class Dice, NaN for classes absent from the label; per-image nan-mean; the scored images."""
    per_class = np.stack([ref_class_dice(p, lab, u, t, num_classes, False) for p, lab, u in images])
    present = np.stack([[np.any(lab == k) for k in range(1, num_classes)] for _, lab, _ in images])
    per_class = np.where(present, per_class, np.nan)
    per_image = np.array(
        [np.mean(row[~np.isnan(row)]) if np.any(~np.isnan(row)) else np.nan for row in per_class]
    )
    return per_class, per_image, per_image[~np.isnan(per_image)]


def _images_with_empty_classes():
    images = make_images(11, 5, 4, ties=6)
    p, lab, u = images[0]
    images[0] = (p, np.zeros_like(lab), u)  # no evaluated class in the label: left out entirely
    p, lab, u = images[1]
    images[1] = (p, np.where(lab == 2, 1, lab), u)  # class 2 absent from the label (predicted somewhere)
    return images


@pytest.mark.parametrize("stacked", [True, False])
def test_ignore_empty_matches_reference(xp, stacked):
    images = _images_with_empty_classes()
    pred, label, u = as_inputs(images, xp, stacked)
    curve = dice_coverage_curve(pred, label, u, num_classes=4, ignore_empty=True)
    thresholds = np.unique(np.concatenate([im[2].ravel() for im in images]))
    ref = np.array([ref_ignore_empty(images, t, 4)[2].mean() for t in thresholds])
    xp_assert_close(curve.mean_dice, ref, xp=xp, rtol=0, atol=1e-12)
    cov, dice_default, _ = ref_curve(images, 4, False)
    assert not np.allclose(ref, dice_default)  # the option changes the numbers on these images
    area = aurc_dice(pred, label, u, num_classes=4, ignore_empty=True)
    assert area == pytest.approx(float(np.sum(np.diff(np.concatenate([[0.0], cov])) * (1 - ref))), abs=1e-12)
    for r in dice_at_coverage(pred, label, u, [1.0, 0.8, 0.4], num_classes=4, ignore_empty=True):
        per_class, per_image, scored = ref_ignore_empty(images, ref_threshold(images, r.requested), 4)
        xp_assert_close(r.per_class_dice, per_class, xp=xp, atol=1e-12)
        xp_assert_close(r.per_image_dice, per_image, xp=xp, atol=1e-12)
        assert r.mean == pytest.approx(scored.mean(), abs=1e-12)
        assert r.std == pytest.approx(scored.std(ddof=0), abs=1e-12)
        assert r.p5 == pytest.approx(np.percentile(scored, 5), abs=1e-12)


def test_ignore_empty_without_any_class_is_nan_and_default_unchanged():
    images = _images_with_empty_classes()
    pred, label, u = (np.stack([im[j] for im in images]) for j in range(3))
    default = dice_coverage_curve(pred, label, u, num_classes=4)
    np.testing.assert_array_equal(
        default.mean_dice, dice_coverage_curve(pred, label, u, num_classes=4, ignore_empty=False).mean_dice
    )
    np.testing.assert_allclose(default.mean_dice, ref_curve(images, 4, False)[1], rtol=0, atol=1e-12)
    empty = np.zeros_like(label)
    assert math.isnan(aurc_dice(pred, empty, u, num_classes=4, ignore_empty=True))
    r = dice_at_coverage(pred, empty, u, 0.5, num_classes=4, ignore_empty=True)[0]
    assert math.isnan(r.mean) and math.isnan(r.std) and math.isnan(r.p5)
    assert np.isnan(r.per_image_dice).all()
    with pytest.raises(TypeError, match="`ignore_empty` must be True or False"):
        aurc_dice(pred, label, u, num_classes=4, ignore_empty="yes")


# ----------------------------------------------------------------------------------------------------
# the NumPy fast paths (float32 keys, int32 counts) and the run-end groups of aurc_dice


def make_float32_images(seed, n_images, num_classes, *, pool, error_rate, varying):
    """Images whose ``u`` is float32, drawn from ``pool`` (ties, negative values, -0.0 and +0.0) or, with
    ``pool=None``, continuous (the wrong voxels' values mostly distinct)."""
    rng = np.random.default_rng(seed)
    images = []
    base = tuple(int(s) for s in rng.integers(2, 7, size=2))
    values = np.array(pool, dtype=np.float32) if pool is not None else None
    for _ in range(n_images):
        shape = tuple(int(s) for s in rng.integers(1, 8, size=2)) if varying else base
        label = rng.integers(0, num_classes, size=shape).astype(np.uint8)
        wrong = rng.random(shape) < error_rate
        pred = np.where(wrong, (label + rng.integers(1, num_classes, size=shape)) % num_classes, label)
        if values is None:
            u = (rng.standard_normal(shape) + 0.5 * wrong).astype(np.float32)
        else:
            u = rng.choice(values, size=shape)
        images.append((pred.astype(np.uint8), label, u))
    return images


float32_images = st.builds(
    make_float32_images,
    seed=st.integers(0, 2**32 - 1),
    n_images=st.integers(1, 3),
    num_classes=st.integers(2, 4),
    pool=st.sampled_from([None, [0.5], [-0.0, 0.0, 0.25], [-2.0, -1.0, -0.0, 0.0, 1.0, 3.5], [0.1, 0.2]]),
    error_rate=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    varying=st.booleans(),
)


def _ref_area(cov, dice):
    return math.fsum(np.diff(np.concatenate([[0.0], cov])) * (1.0 - dice))


@given(images=float32_images, include_background=st.booleans(), stacked=st.booleans())
def test_float32_fast_path_matches_reference(images, include_background, stacked):
    """float32 ``u`` takes the NumPy key sort and the int32 counts: the curve and its area still equal the
    Dice recomputed from scratch at every threshold (negative values, signed zeros and ties included)."""
    if stacked and len({im[0].shape for im in images}) > 1:
        images = [images[0]] * len(images)
    num_classes = 4
    pred, label, u = as_inputs(images, np, stacked)
    opts = {"num_classes": num_classes, "include_background": include_background}
    curve = dice_coverage_curve(pred, label, u, **opts)
    cov, dice, thr = ref_curve(images, num_classes, include_background)
    np.testing.assert_array_equal(curve.threshold, thr)
    assert curve.threshold.dtype == np.float32
    np.testing.assert_allclose(curve.coverage, cov, rtol=0, atol=1e-15)
    np.testing.assert_allclose(curve.mean_dice, dice, rtol=0, atol=1e-12)
    area = aurc_dice(pred, label, u, **opts)
    assert area == pytest.approx(_ref_area(cov, dice), rel=1e-12, abs=1e-15)


def _groups(images, num_classes, include_background, runs, xp=np):
    from selectivekit.segmentation.engine import exact_groups
    from selectivekit.segmentation.images import collect_images

    pred, label, u = as_inputs(images, xp, stacked=False)
    collected, ns = collect_images(pred, label, u, num_classes)
    return exact_groups(collected, num_classes, include_background, xp=ns, runs=runs), ns


@given(images=float32_images | images_strategy, include_background=st.booleans())
def test_run_groups_are_the_groups_after_which_the_dice_changes(images, include_background):
    """``runs=True`` keeps, of the full groups, exactly the last one before each group holding a wrong
    voxel, and the last; its curve is the full curve at those points, to the last bit."""
    num_classes = 4
    full, _ = _groups(images, num_classes, include_background, runs=False)
    runs, _ = _groups(images, num_classes, include_background, runs=True)
    curve = full.curve(xp=np)
    short = runs.curve(xp=np)
    # brute force: the full groups whose value some wrong voxel has
    wrong_u = np.concatenate([im[2][im[0] != im[1]] for im in images])
    events = np.flatnonzero(np.isin(curve.threshold, wrong_u))
    kept = sorted({int(g) - 1 for g in events if g > 0} | {curve.threshold.size - 1})
    np.testing.assert_array_equal(short.threshold, curve.threshold[kept])
    np.testing.assert_array_equal(runs.cum_count, full.cum_count[kept])
    np.testing.assert_array_equal(short.coverage, curve.coverage[kept])
    np.testing.assert_array_equal(short.mean_dice, curve.mean_dice[kept])
    # between two kept groups the full curve's Dice does not move
    run_of = np.searchsorted(kept, np.arange(curve.threshold.size))
    np.testing.assert_array_equal(curve.mean_dice, short.mean_dice[run_of])


@given(images=float32_images | images_strategy, ignore_empty=st.booleans())
def test_aurc_dice_is_the_step_area_of_the_full_curve(images, ignore_empty):
    """aurc_dice sums over the run-end groups only; the full curve's step area differs by rounding."""
    from selectivekit.risk_coverage import step_area

    pred, label, u = as_inputs(images, np, stacked=False)
    curve = dice_coverage_curve(pred, label, u, num_classes=4, ignore_empty=ignore_empty)
    full = step_area(curve.coverage, 1.0 - curve.mean_dice, xp=np)
    area = aurc_dice(pred, label, u, num_classes=4, ignore_empty=ignore_empty)
    if math.isnan(full):
        assert math.isnan(area)
    else:
        assert area == pytest.approx(full, rel=1e-13, abs=1e-16)


@pytest.mark.parametrize("name", ["array_api_strict", "torch"])
@pytest.mark.parametrize("include_background", [False, True])
def test_generic_path_equals_the_numpy_fast_path(name, include_background):
    """Other namespaces take the array-API path (argsort, int64 counts): the same curve and area as the
    NumPy fast path on the same float32 values, ties and negative values included."""
    from tests.conftest import namespace, to_numpy

    xp = namespace(name)
    rng = np.random.default_rng(7)
    shape = (3, 9, 10, 11)
    label = rng.integers(0, 5, size=shape).astype(np.uint8)
    wrong = rng.random(shape) < 0.3
    pred = np.where(wrong, (label + rng.integers(1, 5, size=shape)) % 5, label).astype(np.uint8)
    u = rng.standard_normal(shape).astype(np.float32)
    u[rng.random(shape) < 0.3] = np.float32(0.25)  # a large tie, wrong and correct voxels in it
    u[rng.random(shape) < 0.05] = np.float32(-0.0)
    opts = {"num_classes": 5, "include_background": include_background}
    ref = dice_coverage_curve(pred, label, u, **opts)
    ref_area = aurc_dice(pred, label, u, **opts)
    args = [xp.asarray(a) for a in (pred, label, u)]
    got = dice_coverage_curve(*args, **opts)
    np.testing.assert_array_equal(to_numpy(got.threshold), ref.threshold)
    np.testing.assert_array_equal(to_numpy(got.coverage), ref.coverage)
    np.testing.assert_allclose(to_numpy(got.mean_dice), ref.mean_dice, rtol=0, atol=1e-14)
    assert aurc_dice(*args, **opts) == pytest.approx(ref_area, rel=1e-13)
    cov, dice, _ = ref_curve([(pred[i], label[i], u[i]) for i in range(3)], 5, include_background)
    np.testing.assert_allclose(ref.mean_dice, dice, rtol=0, atol=1e-12)
    assert ref_area == pytest.approx(_ref_area(cov, dice), rel=1e-12)


def test_fast_path_across_chunks_equals_unique_counts_and_the_generic_path():
    """More voxels than one chunk of the NumPy distinct-value pass (2**18): the thresholds and int32
    counts equal ``np.unique``'s, and the curve equals the torch (array-API) path's."""
    from tests.conftest import namespace, to_numpy

    rng = np.random.default_rng(3)
    shape = (2, 300_000)
    label = rng.integers(0, 3, size=shape).astype(np.uint8)
    wrong = rng.random(shape) < 0.1
    pred = np.where(wrong, (label + 1) % 3, label).astype(np.uint8)
    u = np.round(rng.random(shape) * 50_000).astype(np.float32) / np.float32(7.0)  # ~7 voxels a value
    groups, _ = _groups([(pred[i], label[i], u[i]) for i in range(2)], 3, False, runs=False)
    values, counts = np.unique(u, return_counts=True)
    np.testing.assert_array_equal(groups.thresholds, values)
    np.testing.assert_array_equal(groups.cum_count, np.cumsum(counts))
    ref = dice_coverage_curve(pred, label, u, num_classes=3)
    xt = namespace("torch")
    got = dice_coverage_curve(*(xt.asarray(a) for a in (pred, label, u)), num_classes=3)
    np.testing.assert_array_equal(to_numpy(got.coverage), ref.coverage)
    np.testing.assert_allclose(to_numpy(got.mean_dice), ref.mean_dice, rtol=0, atol=1e-14)
    assert aurc_dice(pred, label, u, num_classes=3) == pytest.approx(
        aurc_dice(*(xt.asarray(a) for a in (pred, label, u)), num_classes=3), rel=1e-13
    )


# --- fuzzing: bad and extreme inputs keep the error contract (the helpers: tests/conftest.py) ---------------


def _fuzz_images(data):
    shape = (data.draw(st.integers(1, 3), label="n_images"), data.draw(st.integers(1, 4), label="voxels"))
    size = shape[0] * shape[1]
    pred = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))).reshape(shape)
    label = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))).reshape(shape)
    u = np.asarray(data.draw(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]), min_size=size,
                                      max_size=size))).reshape(shape)  # fmt: skip
    return pred, label, u


def _dice_reference(pred, label, u, threshold, k) -> float:
    """Mean over images of the mean Dice of classes 1..k-1 after referring ``u > threshold``."""
    scores = []
    for p, t, v in zip(pred, label, u, strict=True):
        after = np.where(v > threshold, t, p)
        per = []
        for cls in range(1, k):
            tp = np.sum((after == cls) & (t == cls))
            den = np.sum(after == cls) + np.sum(t == cls)
            per.append(1.0 if den == 0 else 2 * tp / den)
        scores.append(np.mean(per))
    return float(np.mean(scores))


@requires_torch
@FUZZ
@given(data=st.data())
def test_fuzz_segmentation_and_guarantees(data):
    pred, label, u = _fuzz_images(data)
    target = data.draw(st.sampled_from(["pred", "label", "uncertainty", "num_classes", "option", "none"]))
    args = {"pred": pred, "label": label, "uncertainty": u}
    if target in args:
        args[target] = draw_mutated(data, args[target], target)
    k = data.draw(st.sampled_from([*SCALAR_MUTATIONS, 2**62, 10**6, 1])) if target == "num_classes" else 3
    option = data.draw(st.sampled_from([*SCALAR_MUTATIONS, 0.5])) if target == "option" else 0.5
    p, t, v = args["pred"], args["label"], args["uncertainty"]
    correct = p if target == "pred" else pred == label  # the instance functions get `correct` from pred
    seed = option if target == "option" else 0
    name = data.draw(st.sampled_from(["dice_at_coverage", "curve", "aurc_dice", "dice_threshold",
                                      "risk_threshold", "bootstrap"]), label="function")  # fmt: skip
    calls = {
        "dice_at_coverage": lambda: sk.dice_at_coverage(p, t, v, option, num_classes=k),
        "curve": lambda: sk.dice_coverage_curve(p, t, v, num_classes=k),
        "aurc_dice": lambda: sk.aurc_dice(p, t, v, num_classes=k),
        "dice_threshold": lambda: sk.guaranteed_dice_threshold(p, t, v, num_classes=k, max_dice_loss=option),
        "risk_threshold": lambda: sk.guaranteed_risk_threshold(v, correct, target_risk=option, delta=0.1),
        "bootstrap": lambda: sk.bootstrap_ci("aurc", v, correct, n_resamples=20, seed=seed),
    }
    result = fuzz_contract(calls[name])
    if result is None:
        return
    # documented: a guaranteed threshold is -inf when no threshold qualifies (everything is referred), and
    # then the selective risk of the accepted instances (none) and its bound are NaN
    refers_all = getattr(result, "refers_all", False)
    no_silent_nan(
        result,
        allowed=("selective_risk", "risk_bound") if refers_all else (),
        minus_inf=("threshold",) if refers_all else (),
    )
    if name == "dice_at_coverage":
        r = result[0]
        pred_np, label_np = to_numpy(p).astype(np.int64), to_numpy(t).astype(np.int64)
        ref = _dice_reference(pred_np, label_np, to_numpy(v), r.threshold, k)
        assert r.mean == pytest.approx(ref, rel=1e-12, abs=1e-12)


# --- labels as whole floats ---------------------------------------------------------------------------------


def test_labels_as_whole_floats_equal_integers():
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

"""Calibration metrics against loops written here from the definitions, against torchmetrics'
CalibrationError (an independent implementation), and the accumulator's merges against one pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selectivekit import (
    CalibrationAccumulator,
    brier_score,
    calibration_bins,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)
from tests.conftest import to_numpy


def _loop_bins(conf, outcome, n_bins):
    """Per bin (count, sum of confidences, outcomes): bin b holds (b-1)/B < conf <= b/B, the first also 0."""
    stats = [[0, 0.0, 0] for _ in range(n_bins)]
    for c, o in zip(conf, outcome, strict=True):
        b = next(b for b in range(1, n_bins + 1) if c <= b / n_bins)  # the first upper edge at or above c
        stats[b - 1][0] += 1
        stats[b - 1][1] += float(c)
        stats[b - 1][2] += int(o)
    return stats


def _loop_ece(conf, outcome, n_bins):
    stats = _loop_bins(conf, outcome, n_bins)
    n = len(conf)
    ece = sum(k / n * abs(r / k - s / k) for k, s, r in stats if k)
    mce = max(abs(r / k - s / k) for k, s, r in stats if k)
    return ece, mce


def _probs(rng, n, c, saturated=0.3):
    """Probabilities with a share of saturated rows (exactly 0 and 1) and rows on bin edges."""
    p = rng.dirichlet(np.full(c, 0.7), size=n)
    rows = rng.random(n) < saturated
    p[rows] = np.eye(c)[rng.integers(0, c, rows.sum())]
    p[: min(4, n)] = np.full(c, 1.0 / c)  # confidence 1/c: an edge for B a multiple of c
    return p


def test_top_label_bins_ece_mce_against_the_loop(xp):
    rng = np.random.default_rng(0)
    p = _probs(rng, 400, 3)
    y = rng.integers(0, 3, 400)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    for n_bins in (1, 3, 10, 15):
        bins = calibration_bins(xp.asarray(p), xp.asarray(y), n_bins=n_bins)
        stats = _loop_bins(conf, correct, n_bins)
        np.testing.assert_array_equal(bins.counts, [k for k, _, _ in stats])
        np.testing.assert_array_equal(bins.correct_counts, [r for _, _, r in stats])
        np.testing.assert_allclose(bins.confidence_sums, [s for _, s, _ in stats], rtol=1e-6)
        ece, mce = _loop_ece(conf, correct, n_bins)
        assert expected_calibration_error(xp.asarray(p), xp.asarray(y), n_bins=n_bins) == pytest.approx(
            ece, rel=1e-6
        )
        assert maximum_calibration_error(xp.asarray(p), xp.asarray(y), n_bins=n_bins) == pytest.approx(
            mce, rel=1e-6
        )


def test_saturated_confidences_fall_in_the_end_bins():
    """A confidence of exactly 1 is in the last bin, a class probability of exactly 0 in the first (the
    class-wise case), a confidence exactly on an inner edge in the bin below it."""
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.7, 0.3]])
    y = np.array([0, 1, 0, 0])
    bins = calibration_bins(p, y, n_bins=10, axis=-1)
    assert bins.counts.tolist() == [0, 0, 0, 0, 1, 0, 1, 0, 0, 2]  # 0.5 in (0.4, 0.5], 0.7 in (0.6, 0.7]
    assert bins.correct_counts[-1] == 1
    class_bins_zero = calibration_bins(np.array([[0.0, 1.0]]), np.array([1]), n_bins=4, axis=-1)
    assert class_bins_zero.counts.tolist() == [0, 0, 0, 1]
    # class-wise: p_k = 0 counts in the first bin, so the result is finite and exact
    got = classwise_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), n_bins=4, axis=-1)
    assert got == 0.0


def test_equals_torchmetrics_calibration_error():
    """torchmetrics bins [b/B, (b+1)/B) and puts a confidence of exactly 1 in an extra bin (its issue
    #3510); away from the edges and from 1 both binnings agree, and so must the results. Its binary metric
    (the ECE of p_1 against 1[y = 1], our class-wise ECE of class 1) keeps float64 and agrees to 1e-9; its
    multiclass metric casts the confidences to float32 and sums them in float32: the ECE agrees to 1e-6
    (measured at most 9e-7 here), the MCE, one bin's float32 mean, to 1e-5 (measured 1.5e-6)."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(1)

    def off_the_edges(conf, n_bins):
        edges = [torch.linspace(0, 1, n_bins + 1, dtype=d).numpy() for d in (torch.float32, torch.float64)]
        on_an_edge = np.isin(conf, np.concatenate([*edges, np.arange(n_bins + 1) / n_bins]))
        return (conf < 1) & ~on_an_edge

    for c, n_bins in ((2, 15), (4, 10), (5, 20)):
        # float32 values (torchmetrics' cast to float32 is then exact), in float64 arrays
        p = rng.dirichlet(np.full(c, 0.5), size=5000).astype(np.float32).astype(np.float64)
        y = rng.integers(0, c, 5000)
        keep = off_the_edges(p.max(axis=1), n_bins)
        p, y = p[keep], y[keep]
        for norm, ours, rel in (
            ("l1", expected_calibration_error, 1e-6),
            ("max", maximum_calibration_error, 1e-5),
        ):
            want = float(
                functional.multiclass_calibration_error(
                    torch.from_numpy(p), torch.from_numpy(y), num_classes=c, n_bins=n_bins, norm=norm
                )
            )
            assert ours(p, y, n_bins=n_bins, axis=-1) == pytest.approx(want, rel=rel)
    for n_bins in (10, 15):
        p1 = rng.beta(0.5, 0.5, 5000)
        y = (rng.random(5000) < p1**1.3).astype(np.int64)  # a miscalibrated positive class
        keep = off_the_edges(p1, n_bins)
        p1, y = p1[keep], y[keep]
        want = float(
            functional.binary_calibration_error(torch.from_numpy(p1), torch.from_numpy(y), n_bins=n_bins)
        )
        probs = np.stack([1 - p1, p1], axis=-1)
        got = classwise_calibration_error(probs, y, n_bins=n_bins, include_background=False, axis=-1)
        assert got == pytest.approx(want, rel=1e-9)


def test_equal_mass_bins_hold_equal_shares_and_never_split_ties():
    rng = np.random.default_rng(2)
    p = rng.dirichlet([1.0, 1.0], size=1000)
    y = rng.integers(0, 2, 1000)
    bins = calibration_bins(p, y, n_bins=10, binning="mass", axis=-1)
    assert bins.counts.tolist() == [100] * 10  # distinct confidences: exactly N / B each
    # 60% of the voxels saturated at 1: they make one bin; the rest is split into equal shares by value
    p[:600] = [1.0, 0.0]
    bins = calibration_bins(p, y, n_bins=10, binning="mass", axis=-1)
    conf = p.max(axis=1)
    assert bins.counts[-1] == 600 and bins.counts.sum() == 1000
    for b in range(len(bins.counts)):  # the counts are those of the edges, by value
        low, high = bins.edges[b], bins.edges[b + 1]
        inside = (conf > low) & (conf <= high) | ((conf == low) if b == 0 else False)
        assert inside.sum() == bins.counts[b]
    ece = expected_calibration_error(p, y, n_bins=10, binning="mass", axis=-1)
    by_hand = (
        sum(abs(bins.correct_counts[b] - bins.confidence_sums[b]) for b in range(len(bins.counts))) / 1000
    )
    assert ece == pytest.approx(by_hand)


def test_classwise_brier_nll_against_loops(xp):
    rng = np.random.default_rng(3)
    p = _probs(rng, 300, 4)
    y = rng.integers(0, 4, 300)
    for background in (True, False):
        classes = range(0 if background else 1, 4)
        want = np.mean([_loop_ece(p[:, k], y == k, 8)[0] for k in classes])
        got = classwise_calibration_error(
            xp.asarray(p), xp.asarray(y), n_bins=8, include_background=background
        )
        assert got == pytest.approx(want, rel=1e-6)
    brier = sum(sum((p[i, c] - (y[i] == c)) ** 2 for c in range(4)) for i in range(300)) / 300
    assert brier_score(xp.asarray(p), xp.asarray(y)) == pytest.approx(brier, rel=1e-6)
    tiny = np.finfo(np.float64).smallest_normal
    nll = sum(-math.log(max(p[i, y[i]], tiny)) for i in range(300)) / 300
    got = negative_log_likelihood(xp.asarray(p), xp.asarray(y))
    dtype = to_numpy(xp.asarray(p)).dtype
    if dtype == np.float32:  # JAX without 64-bit: clipped at float32's tiny instead
        nll = sum(-math.log(max(p[i, y[i]], np.finfo(np.float32).smallest_normal)) for i in range(300)) / 300
    assert got == pytest.approx(nll, rel=1e-5)


def test_mask_restricts_every_metric():
    rng = np.random.default_rng(4)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=(6, 7))  # (H, W, C)
    y = rng.integers(0, 3, (6, 7))
    mask = rng.random((6, 7)) < 0.5
    for f in (expected_calibration_error, brier_score, negative_log_likelihood, classwise_calibration_error):
        assert f(p, y, axis=-1, mask=mask) == pytest.approx(f(p[mask], y[mask], axis=-1))


@given(st.integers(1, 6), st.integers(0, 2**32 - 1), st.integers(2, 4), st.integers(1, 12))
def test_accumulator_over_images_and_shards_equals_one_pass(n_images, seed, c, n_bins):
    rng = np.random.default_rng(seed)
    images = [(_probs(rng, int(rng.integers(1, 40)), c), None) for _ in range(n_images)]
    images = [(p, rng.integers(0, c, len(p))) for p, _ in images]
    one = CalibrationAccumulator(c, n_bins=n_bins, axis=-1)
    shards = [CalibrationAccumulator(c, n_bins=n_bins, axis=-1) for _ in range(2)]
    for i, (p, y) in enumerate(images):
        one.update(p, y)
        shards[i % 2].update(p, y)
    merged = shards[0].merge(shards[1]).compute()
    pooled = one.compute()
    all_p = np.concatenate([p for p, _ in images])
    all_y = np.concatenate([y for _, y in images])
    assert pooled.expected_calibration_error == pytest.approx(
        expected_calibration_error(all_p, all_y, n_bins=n_bins, axis=-1), rel=1e-12, abs=1e-15
    )
    assert pooled.brier_score == pytest.approx(brier_score(all_p, all_y, axis=-1), rel=1e-12)
    assert pooled.classwise_calibration_error == pytest.approx(
        classwise_calibration_error(all_p, all_y, n_bins=n_bins, axis=-1), rel=1e-12, abs=1e-15
    )
    np.testing.assert_array_equal(merged.bins.counts, pooled.bins.counts)
    np.testing.assert_array_equal(merged.bins.correct_counts, pooled.bins.correct_counts)
    assert merged.expected_calibration_error == pytest.approx(
        pooled.expected_calibration_error, rel=1e-12, abs=1e-15
    )
    assert merged.negative_log_likelihood == pytest.approx(pooled.negative_log_likelihood, rel=1e-12)
    assert merged.voxels == pooled.voxels == len(all_y)
    per_image = [expected_calibration_error(p, y, n_bins=n_bins, axis=-1) for p, y in images]
    assert sorted(merged.per_image_expected_calibration_error) == pytest.approx(sorted(per_image))
    assert list(pooled.per_image_expected_calibration_error) == pytest.approx(per_image)


def test_refusals():
    p = np.array([[0.2, 0.8], [0.5, 0.5]])
    y = np.array([1, 0])
    with pytest.raises(ValueError, match="`label` must have the shape of `probs` without its class axis"):
        expected_calibration_error(p, np.array([1, 0, 1]), axis=-1)
    with pytest.raises(ValueError, match="`label`"):
        expected_calibration_error(p, np.array([1, 2]), axis=-1)
    with pytest.raises(ValueError, match="`n_bins`"):
        expected_calibration_error(p, y, n_bins=0, axis=-1)
    with pytest.raises(TypeError, match="`n_bins` must be an integer"):
        expected_calibration_error(p, y, n_bins=2.5, axis=-1)
    with pytest.raises(ValueError, match="`binning` must be 'width' or 'mass'"):
        expected_calibration_error(p, y, binning="quantile", axis=-1)
    with pytest.raises(ValueError, match="`mask` selects no voxel"):
        brier_score(p, y, axis=-1, mask=np.array([False, False]))
    with pytest.raises(TypeError, match="`mask` must be a boolean array"):
        brier_score(p, y, axis=-1, mask=np.array([1, 0]))
    with pytest.raises(ValueError, match="`probs`"):
        brier_score(np.array([[0.2, 0.9]]), np.array([0]), axis=-1)
    with pytest.raises(ValueError, match="`probs` is empty"):
        brier_score(np.zeros((0, 2)), np.zeros(0, dtype=int), axis=-1)
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        classwise_calibration_error(
            np.ones((3, 1)), np.zeros(3, dtype=int), axis=-1, include_background=False
        )
    acc = CalibrationAccumulator(3, axis=-1)
    with pytest.raises(ValueError, match="no image was added"):
        acc.compute()
    with pytest.raises(ValueError, match="`probs` must have 3 classes on axis -1, got 2"):
        acc.update(p, y)
    with pytest.raises(ValueError, match="other settings"):
        acc.merge(CalibrationAccumulator(3, n_bins=10, axis=-1))
    with pytest.raises(TypeError, match="`other` must be a CalibrationAccumulator"):
        acc.merge(3)
    bins = calibration_bins(p, y, axis=-1)
    with pytest.raises(ValueError, match="other bin edges"):
        bins.merge(calibration_bins(p, y, n_bins=4, axis=-1))


def test_accumulator_round_trips_through_arrays():
    import json

    rng = np.random.default_rng(8)
    acc = CalibrationAccumulator(3, n_bins=7, include_background=False, axis=0)
    for _ in range(3):
        z = rng.normal(size=(3, 5, 4))
        acc.update(np.exp(z) / np.exp(z).sum(axis=0), rng.integers(0, 3, (5, 4)))
    header, arrays = acc.to_arrays()
    back = CalibrationAccumulator.from_arrays(json.loads(json.dumps(header)), arrays)
    a, b = acc.compute(), back.compute()
    assert (a.expected_calibration_error, a.classwise, a.brier_score, a.negative_log_likelihood) == (
        b.expected_calibration_error,
        b.classwise,
        b.brier_score,
        b.negative_log_likelihood,
    )
    assert a.per_image_expected_calibration_error == b.per_image_expected_calibration_error
    np.testing.assert_array_equal(a.bins.counts, b.bins.counts)
    bad_cases = {
        "counts": arrays["counts"][:1],
        "correct": arrays["counts"] + 1,
        "sums": arrays["sums"] * -1,
        "voxels": arrays["voxels"] + 1,
        "scores": np.array([np.nan, 0.0]),
        "per_image": np.array([2.0]),
    }
    for key, bad in bad_cases.items():
        with pytest.raises(ValueError, match=r"consistent selectivekit\.calibration_state"):
            CalibrationAccumulator.from_arrays(header, {**arrays, key: bad})

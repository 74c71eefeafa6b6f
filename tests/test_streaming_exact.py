"""Streaming that is exact by default: the exact path equals the in-memory functions to the last bit, the
grid fallback's bounds contain the exact value (and are attained), merges keep the path rules."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit.risk_coverage as rc
from selectivekit.segmentation import aurc_dice, dice_at_coverage, dice_coverage_curve
from selectivekit.streaming import (
    DEFAULT_MAX_MEMORY,
    RiskCoverageAccumulator,
    SegmentationAccumulator,
    grid_bins,
    grid_size,
)
from tests.test_segmentation import make_images
from tests.test_streaming import to_bfloat16_grid

GRIDS = [{}, {"grid": "float32-24"}, {"edges": [0.2, 0.5, 0.55, 0.9]}]


def _risk_parts(seed, n, ties, parts, soft=False):
    rng = np.random.default_rng(seed)
    u = rng.random(n).astype(np.float32)
    if ties:
        u = (np.round(u * ties) / ties).astype(np.float32)
    target = rng.random(n) if soft else rng.random(n) < 0.7
    cuts = np.array_split(np.arange(n), min(parts, n))
    return u, target, [(u[c], target[c]) for c in cuts]


def _feed(acc, parts, soft):
    for pu, pt in parts:
        if soft:
            acc.update(pu, risk=pt)
        else:
            acc.update(pu, pt)
    return acc


# ----------------------------------------------------------------------------------------------------
# the exact path


@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 400),
    ties=st.sampled_from([None, 3, 40]),
    parts=st.integers(1, 4),
    soft=st.booleans(),
)
def test_exact_path_equals_core_to_the_last_bit(seed, n, ties, parts, soft):
    u, target, chunks = _risk_parts(seed, n, ties, parts, soft)
    acc = _feed(RiskCoverageAccumulator(), chunks, soft)
    assert acc.path == "exact"
    kw = {"risk": target} if soft else {}
    pos = () if soft else (target,)
    assert acc.aurc() == rc.aurc(u, *pos, **kw)
    assert acc.augrc() == rc.augrc(u, *pos, **kw)
    assert acc.aurc_bound() == (acc.aurc(), acc.aurc())
    curve, ref = acc.compute(), rc.risk_coverage_curve(u, *pos, **kw)
    for field in ("coverage", "risk", "threshold", "cumulative_risk"):
        np.testing.assert_array_equal(getattr(curve, field), getattr(ref, field))
    if not soft:
        assert acc.e_aurc() == rc.e_aurc(u, target)


@given(seed=st.integers(0, 2**31), n_images=st.integers(1, 4), num_classes=st.integers(2, 4))
def test_exact_segmentation_equals_core_to_the_last_bit(seed, n_images, num_classes):
    images = make_images(seed, n_images, num_classes, varying=True, ties=5 if seed % 2 else None)
    acc = SegmentationAccumulator(num_classes=num_classes)
    for p, lab, u in images:
        acc.update(p, lab, u)
    assert acc.path == "exact"
    pred, label, u = ([im[j] for im in images] for j in range(3))
    opts = {"num_classes": num_classes}
    curve, ref = acc.compute(), dice_coverage_curve(pred, label, u, **opts)
    for field in ("coverage", "mean_dice", "threshold"):
        np.testing.assert_array_equal(getattr(curve, field), getattr(ref, field))
    assert acc.aurc_dice() == aurc_dice(pred, label, u, **opts)
    assert acc.aurc_dice_bound() == (acc.aurc_dice(), acc.aurc_dice())
    cs = [1.0, 0.9, 0.5]
    for r, s in zip(acc.dice_at_coverage(cs), dice_at_coverage(pred, label, u, cs, **opts), strict=True):
        assert (r.threshold, r.coverage, r.mean, r.std, r.p5) == (
            s.threshold,
            s.coverage,
            s.mean,
            s.std,
            s.p5,
        )
        np.testing.assert_array_equal(r.per_class_dice, s.per_class_dice)
        np.testing.assert_array_equal(r.per_image_coverage, s.per_image_coverage)


def test_default_budget_and_bad_options():
    assert RiskCoverageAccumulator().max_memory == DEFAULT_MAX_MEMORY == 1 << 30
    with pytest.raises(ValueError, match="`max_memory` must be a non-negative int"):
        RiskCoverageAccumulator(max_memory=-1)
    with pytest.raises(TypeError, match="`max_memory` must be a non-negative int"):
        SegmentationAccumulator(num_classes=2, max_memory=1.5)
    with pytest.raises(ValueError, match="`grid` must be one of"):
        RiskCoverageAccumulator(grid="float16")
    with pytest.raises(ValueError, match="`grid` and `edges` exclude each other"):
        RiskCoverageAccumulator(grid="float32-24", edges=[0.5])


def test_budget_overflow_switches_to_the_grid_with_the_same_results():
    u, correct, chunks = _risk_parts(5, 3000, None, 6)
    budget = 5 * 1200  # float32 + bool: 5 bytes an instance, so the third chunk does not fit
    acc = _feed(RiskCoverageAccumulator(max_memory=budget), chunks, False)
    grid = _feed(RiskCoverageAccumulator(max_memory=0), chunks, False)
    assert (acc.path, grid.path) == ("grid", "grid")
    assert acc.aurc_bound(value=True) == grid.aurc_bound(value=True)
    assert acc.augrc_bound(value=True) == grid.augrc_bound(value=True)
    lo, hi = acc.aurc_bound()
    assert lo <= rc.aurc(u, correct) <= hi and hi - lo > 0


def test_merge_paths():
    u, correct, chunks = _risk_parts(8, 1000, 20, 2)
    (ua, ca), (ub, cb) = chunks
    a, b = RiskCoverageAccumulator(), RiskCoverageAccumulator()
    a.update(ua, ca)
    b.update(ub, cb)
    assert a.merge(b).path == "exact" and b.path == "exact"  # other is not changed
    assert a.aurc() == rc.aurc(u, correct)
    g = RiskCoverageAccumulator(max_memory=0)
    g.update(ub, cb)
    e = RiskCoverageAccumulator()
    e.update(ua, ca)
    merged = e.merge(g)
    assert merged.path == "grid"
    one = RiskCoverageAccumulator(max_memory=0)
    one.update(u, correct)
    assert merged.aurc_bound(value=True) == one.aurc_bound(value=True)
    small = RiskCoverageAccumulator(max_memory=ua.nbytes + ca.nbytes)
    small.update(ua, ca)
    assert small.merge(b).path == "grid"  # exact + exact past the budget: the grid
    s1, s2 = SegmentationAccumulator(num_classes=3), SegmentationAccumulator(num_classes=3, max_memory=0)
    images = make_images(3, 4, 3)
    for p, lab, uu in images[:2]:
        s1.update(p, lab, uu)
    for p, lab, uu in images[2:]:
        s2.update(p, lab, uu)
    assert s1.merge(s2).path == "grid"
    ref = SegmentationAccumulator(num_classes=3, max_memory=0)
    for p, lab, uu in images:
        ref.update(p, lab, uu)
    assert s1.aurc_dice_bound(value=True) == ref.aurc_dice_bound(value=True)


def test_pickle_and_arrays_round_trip():
    images = make_images(4, 3, 3, varying=True)
    for budget in (DEFAULT_MAX_MEMORY, 0):
        acc = SegmentationAccumulator(num_classes=3, max_memory=budget)
        for p, lab, u in images:
            acc.update(p, lab, u)
        for back in (pickle.loads(pickle.dumps(acc)), SegmentationAccumulator.from_arrays(*acc.to_arrays())):
            assert back.path == acc.path and back.n_images == 3
            assert back.aurc_dice_bound(value=True) == acc.aurc_dice_bound(value=True)
            r, s = back.dice_at_coverage([0.8])[0], acc.dice_at_coverage([0.8])[0]
            np.testing.assert_array_equal(r.per_image_coverage, s.per_image_coverage)
            np.testing.assert_array_equal(r.per_class_dice, s.per_class_dice)
    header, arrays = acc.to_arrays()
    with pytest.raises(ValueError, match="`header` is not a"):
        SegmentationAccumulator.from_arrays({"format": "something else"}, arrays)
    with pytest.raises(ValueError, match="state version"):
        SegmentationAccumulator.from_arrays({**header, "version": 99}, arrays)
    with pytest.raises(ValueError, match="do not hold a complete"):
        SegmentationAccumulator.from_arrays(header, {})


# ----------------------------------------------------------------------------------------------------
# the grid's bounds


floats32 = st.floats(0.0, 4.0, width=32)


@given(
    values=st.lists(floats32, min_size=1, max_size=120),
    data=st.data(),
    soft=st.booleans(),
    grid=st.sampled_from(GRIDS),
)
def test_exact_value_lies_inside_the_bound(values, data, soft, grid):
    u = np.array(values, dtype=np.float32)
    # ties and near-ties: many values share a cell
    u = np.where(np.arange(u.size) % 3 == 0, np.float32(0.5), u).astype(np.float32)
    if soft:
        target = np.array(data.draw(st.lists(st.floats(0, 1), min_size=u.size, max_size=u.size)))
    else:
        target = np.array(data.draw(st.lists(st.booleans(), min_size=u.size, max_size=u.size)))
    acc = RiskCoverageAccumulator(max_memory=0, **grid)
    if soft:
        acc.update(u, risk=target)
        exact = (rc.aurc(u, risk=target), rc.augrc(u, risk=target))
    else:
        acc.update(u, target)
        exact = (rc.aurc(u, target), rc.augrc(u, target))
    for (lo, hi), v in zip((acc.aurc_bound(), acc.augrc_bound()), exact, strict=True):
        assert lo <= v <= hi
    if not soft:
        lo, hi = acc.e_aurc_bound()
        assert lo <= rc.e_aurc(u, target) <= hi


@given(
    cells=st.lists(st.integers(0, 0x7F7F), min_size=1, max_size=80, unique=True),
    data=st.data(),
)
def test_bound_is_zero_wide_when_every_value_is_alone_in_its_cell(cells, data):
    # one bfloat16 value per cell: distinct upper 16 bits of finite, non-negative float32 patterns
    u = (np.array(cells, dtype=np.uint32) << 16).view(np.float32)
    correct = np.array(data.draw(st.lists(st.booleans(), min_size=u.size, max_size=u.size)))
    assert np.unique(grid_bins(u)).size == u.size
    acc = RiskCoverageAccumulator(max_memory=0)
    acc.update(u, correct)
    v, lo, hi = acc.aurc_bound(value=True)
    assert lo == v == hi
    assert v == pytest.approx(rc.aurc(u, correct), abs=1e-14)
    v, lo, hi = acc.augrc_bound(value=True)
    assert lo == v == hi
    seg = SegmentationAccumulator(num_classes=2, max_memory=0)
    label = np.arange(u.size) % 2
    seg.update(np.where(correct, label, 1 - label), label, u)
    v, lo, hi = seg.aurc_dice_bound(value=True)
    assert lo == v == hi


def _step_aurc(u, risk):
    """AURC by its definition: a loop over the distinct thresholds (the step rule)."""
    total, n = 0.0, len(u)
    prev = 0
    for t in sorted(set(u)):
        acc = [r for x, r in zip(u, risk, strict=True) if x <= t]
        total += (len(acc) - prev) / n * (sum(acc) / len(acc))
        prev = len(acc)
    return total


@pytest.mark.parametrize("seed", range(12))
def test_the_bound_is_attained(seed):
    """Every arrangement inside the cells (order and ties): its AURC lies in the bound, and the extremes are
    reached."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    cell = np.sort(rng.integers(0, 2, n))  # two coarse cells (edges below)
    wrong = rng.random(n) < 0.5
    values = set()
    for offsets in itertools.product(range(n), repeat=n):  # every order and tie pattern inside the cells
        u = cell + 0.1 * np.array(offsets) / n
        values.add(round(_step_aurc(list(u), list(wrong.astype(float))), 12))
    acc = RiskCoverageAccumulator(edges=[0.5], max_memory=0)
    acc.update(cell + 0.25, ~wrong)
    lo, hi = acc.aurc_bound()
    assert lo == pytest.approx(min(values), abs=1e-12)
    assert hi == pytest.approx(max(values), abs=1e-12)


@given(values=st.lists(floats32, min_size=2, max_size=100), data=st.data())
def test_finer_grid_gives_a_nested_bound(values, data):
    u = np.array(values, dtype=np.float32)
    correct = np.array(data.draw(st.lists(st.booleans(), min_size=u.size, max_size=u.size)))
    coarse, fine = (
        RiskCoverageAccumulator(max_memory=0),
        RiskCoverageAccumulator(max_memory=0, grid="float32-24"),
    )
    coarse.update(u, correct)
    fine.update(u, correct)
    (clo, chi), (flo, fhi) = coarse.aurc_bound(), fine.aurc_bound()
    # the in-memory value takes another summation order than the grid's: equal up to rounding (1e-12)
    assert clo - 1e-12 <= flo <= rc.aurc(u, correct) + 1e-12
    assert rc.aurc(u, correct) <= fhi + 1e-12 <= chi + 2e-12
    assert grid_size(bits=24) == 1 << 24


@given(seed=st.integers(0, 2**31), n_images=st.integers(1, 4), ties=st.sampled_from([None, 4, 30]))
def test_segmentation_exact_values_lie_inside_the_bounds(seed, n_images, ties):
    images = make_images(seed, n_images, 3, varying=True, ties=ties)
    images = [(p, lab, (u * 0.01 + 0.5).astype(np.float32)) for p, lab, u in images]  # crowded cells
    acc = SegmentationAccumulator(num_classes=3, max_memory=0)
    for p, lab, u in images:
        acc.update(p, lab, u)
    pred, label, u = ([im[j] for im in images] for j in range(3))
    lo, hi = acc.aurc_dice_bound()
    assert lo <= aurc_dice(pred, label, u, num_classes=3) <= hi
    cs = [1.0, 0.9, 0.6, 0.3]
    for bound, r in zip(
        acc.dice_bounds(cs), dice_at_coverage(pred, label, u, cs, num_classes=3), strict=True
    ):
        assert bound["mean"][0] - 1e-12 <= r.mean <= bound["mean"][1] + 1e-12
        assert bound["p5"][0] - 1e-12 <= r.p5 <= bound["p5"][1] + 1e-12
        assert bound["coverage"][0] <= r.coverage <= bound["coverage"][1]


def test_bfloat16_grid_values_keep_exact_results_on_the_grid():
    u = to_bfloat16_grid(np.random.default_rng(0).random(500))
    correct = np.random.default_rng(1).random(500) < 0.6
    acc = RiskCoverageAccumulator(max_memory=0)
    acc.update(u, correct)
    v, lo, hi = acc.aurc_bound(value=True)
    assert lo <= rc.aurc(u, correct) <= hi
    assert v == pytest.approx(rc.aurc(u, correct), abs=1e-14)

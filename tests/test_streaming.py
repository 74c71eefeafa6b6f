"""Streaming accumulators: exact on the grid, equal to the in-memory functions, merge == one pass."""

from __future__ import annotations

import itertools
import json
import pickle
import struct
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
import selectivekit.risk_coverage as rc
from selectivekit.segmentation import aurc_dice, dice_at_coverage, dice_coverage_curve
from selectivekit.streaming import (
    DEFAULT_MAX_MEMORY,
    RiskCoverageAccumulator,
    SegmentationAccumulator,
    grid_bins,
    grid_size,
)
from tests.conftest import dense_ranks, xp_assert_equal
from tests.test_segmentation import make_images


def to_bfloat16_grid(x):
    """Round float32 values down (toward zero) to bfloat16-representable values: one value per cell."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def ref_cell(value: float) -> tuple[int, int]:
    """Sort key of the bfloat16 cell of one float32, from its bytes (independent of grid_bins)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value + 0.0))
    sign, high = bits >> 31, (bits & 0x7FFFFFFF) >> 16
    return (0, -high) if sign else (1, high)


def cell_max(u, edges=None):
    """Replace every value by the largest value of its cell (reference grouping by bytes or edges)."""
    u = np.asarray(u)
    flat = u.ravel()
    if edges is None:
        keys = [ref_cell(float(v)) for v in flat.astype(np.float32)]
    else:
        keys = [int(np.sum(np.asarray(edges) < v)) for v in flat]
    top = {}
    for k, v in zip(keys, flat, strict=True):
        top[k] = max(top.get(k, -np.inf), v)
    return np.array([top[k] for k in keys], dtype=u.dtype).reshape(u.shape)


floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


# ----------------------------------------------------------------------------------------------------
# the grid


@given(st.lists(floats32, min_size=1, max_size=50))
def test_bfloat16_cells_are_ordered_and_match_bytes(values):
    u = np.array(values, dtype=np.float32)
    cells = grid_bins(u)
    assert cells.min() >= 0 and cells.max() < grid_size()
    order = np.argsort(u, kind="stable")
    assert np.all(np.diff(cells[order]) >= 0)  # monotone in u
    keys = [ref_cell(float(v)) for v in u]
    for i in range(len(values)):
        for j in range(len(values)):
            assert (cells[i] == cells[j]) == (keys[i] == keys[j])


@given(st.lists(floats32, min_size=1, max_size=60), st.integers(0, 59))
def test_cell_max_is_an_achievable_threshold(values, pick):
    u = np.array(values, dtype=np.float32)
    cells = grid_bins(u)
    c = cells[pick % u.size]
    top = u[cells == c].max()
    np.testing.assert_array_equal(u <= top, cells <= c)


def test_near_zero_values_keep_separate_cells():
    u = np.array([0.0, 1e-30, 2e-30, 1e-12, 1e-7, 1e-7 * (1 + 2**-7)], dtype=np.float32)
    assert len(np.unique(grid_bins(u))) == u.size


def test_grid_bins_backends(xp):
    u = np.random.default_rng(0).normal(size=200).astype(np.float32)
    u[:3] = [0.0, -0.0, 1e-30]
    expected = grid_bins(u)
    xp_assert_equal(grid_bins(xp.asarray(u)), expected, xp=xp)
    assert expected[0] == expected[1]  # -0.0 and +0.0 share a cell
    edges = [-1.0, 0.0, 0.5]
    xp_assert_equal(grid_bins(xp.asarray(u), edges=edges), np.searchsorted(edges, u, side="left"), xp=xp)


def test_bad_edges():
    with pytest.raises(ValueError, match="`edges` must be strictly increasing"):
        RiskCoverageAccumulator(edges=[0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="`edges` must be finite"):
        SegmentationAccumulator(num_classes=2, edges=[0.0, np.nan])
    with pytest.raises(ValueError, match="`edges` must be a non-empty 1-d"):
        RiskCoverageAccumulator(edges=[])


# ----------------------------------------------------------------------------------------------------
# risk-coverage


def _risk_data(seed, n, ties):
    rng = np.random.default_rng(seed)
    u = rng.random(n).astype(np.float32)
    if ties:
        u = np.round(u * ties) / ties
    correct = rng.random(n) < 0.7
    return u.astype(np.float32), correct


@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 300),
    ties=st.sampled_from([None, 3, 50]),
    parts=st.integers(1, 4),
)
def test_risk_accumulator_equals_in_memory_on_cell_maxima(seed, n, ties, parts):
    u, correct = _risk_data(seed, n, ties)
    parts = min(parts, n)  # an empty update is rejected like any empty input
    acc = RiskCoverageAccumulator(max_memory=0)
    for chunk_u, chunk_c in zip(np.array_split(u, parts), np.array_split(correct, parts), strict=True):
        acc.update(chunk_u, chunk_c)
    snapped = cell_max(u)
    curve = acc.compute()
    ref = rc.risk_coverage_curve(snapped, correct)
    np.testing.assert_array_equal(curve.threshold, ref.threshold)
    np.testing.assert_allclose(curve.coverage, ref.coverage, rtol=0, atol=1e-15)
    np.testing.assert_allclose(curve.risk, ref.risk, rtol=0, atol=1e-15)
    assert acc.aurc() == pytest.approx(rc.aurc(snapped, correct), abs=1e-14)
    assert acc.augrc() == pytest.approx(rc.augrc(snapped, correct), abs=1e-14)
    assert acc.e_aurc() == pytest.approx(rc.e_aurc(snapped, correct), abs=1e-12)


def test_risk_accumulator_on_grid_is_exact(xp):
    u, correct = _risk_data(3, 1000, None)
    u = to_bfloat16_grid(u)
    mask = np.arange(u.size) % 7 != 0
    acc = RiskCoverageAccumulator(max_memory=0)
    acc.update(xp.asarray(u), xp.asarray(correct), mask=xp.asarray(mask))
    assert acc.aurc() == rc.aurc(u, correct, mask=mask)
    soft = np.random.default_rng(1).random(u.size)
    acc_soft = RiskCoverageAccumulator(max_memory=0)
    acc_soft.update(xp.asarray(u), risk=xp.asarray(soft))
    assert acc_soft.aurc() == pytest.approx(rc.aurc(u, risk=soft), abs=1e-14)
    with pytest.raises(TypeError, match="`e_aurc` needs boolean"):
        acc_soft.e_aurc()


def test_risk_accumulator_user_edges():
    u, correct = _risk_data(4, 500, None)
    edges = [0.1, 0.2, 0.35, 0.5, 0.9]
    acc = RiskCoverageAccumulator(edges=edges, max_memory=0)
    acc.update(u, correct)
    snapped = cell_max(u, edges)
    assert acc.aurc() == pytest.approx(rc.aurc(snapped, correct), abs=1e-14)
    assert acc.compute().threshold.size == len(np.unique(snapped))


@given(seed=st.integers(0, 2**31), split=st.integers(1, 199))
def test_risk_merge_equals_one_pass(seed, split):  # both halves non-empty
    u, correct = _risk_data(seed, 200, None)
    one = RiskCoverageAccumulator(max_memory=0)
    one.update(u, correct)
    a, b = RiskCoverageAccumulator(max_memory=0), RiskCoverageAccumulator(max_memory=0)
    a.update(u[:split], correct[:split])
    b.update(u[split:], correct[split:])
    merged = a.merge(b)
    c1, c2 = merged.compute(), one.compute()
    for field in ("coverage", "risk", "threshold", "cumulative_risk"):
        np.testing.assert_array_equal(getattr(c1, field), getattr(c2, field))
    assert merged.aurc() == one.aurc()
    assert merged.aurc_bound() == one.aurc_bound()


@pytest.mark.parametrize("max_memory", [0, DEFAULT_MAX_MEMORY])
def test_risk_accumulator_counts_its_instances(max_memory):
    acc = RiskCoverageAccumulator(max_memory=max_memory)
    assert acc.n_instances == 0
    acc.update(np.array([0.5, 0.25, 0.25]), np.array([True, False, True]))
    acc.update(np.array([[0.125, 0.5]]), np.array([[True, True]]), mask=np.array([[True, False]]))
    assert acc.n_instances == 4
    assert acc.merge(acc).n_instances == 8


def test_risk_accumulator_errors():
    acc = RiskCoverageAccumulator(max_memory=0)
    with pytest.raises(ValueError, match="no instance was accumulated"):
        acc.compute()
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        acc.update(np.array([np.nan]), np.array([True]))
    with pytest.raises(ValueError, match="`other` must use the same grid"):
        acc.merge(RiskCoverageAccumulator(edges=[0.5]))
    with pytest.raises(TypeError, match="`other` must be a RiskCoverageAccumulator"):
        acc.merge(SegmentationAccumulator(num_classes=2, max_memory=0))


# ----------------------------------------------------------------------------------------------------
# segmentation


def _grid_images(seed, n_images, num_classes, **kw):
    return [(p, lab, to_bfloat16_grid(u)) for p, lab, u in make_images(seed, n_images, num_classes, **kw)]


def _assert_same_results(acc, images, num_classes, coverages=(1.0, 0.9, 0.7, 0.2)):
    pred, label, u = ([im[j] for im in images] for j in range(3))
    curve = acc.compute()
    ref = dice_coverage_curve(pred, label, u, num_classes=num_classes)
    np.testing.assert_array_equal(curve.threshold, ref.threshold)
    np.testing.assert_array_equal(curve.coverage, ref.coverage)
    # per-group sums of Dice changes are added in a different order on the two paths: float-close
    np.testing.assert_allclose(curve.mean_dice, ref.mean_dice, rtol=0, atol=1e-13)
    assert acc.aurc_dice() == pytest.approx(aurc_dice(pred, label, u, num_classes=num_classes), abs=1e-13)
    for r, s in zip(
        acc.dice_at_coverage(list(coverages)),
        dice_at_coverage(pred, label, u, list(coverages), num_classes=num_classes),
        strict=True,
    ):
        assert (r.requested, r.threshold, r.coverage, r.classes) == (
            s.requested,
            s.threshold,
            s.coverage,
            s.classes,
        )
        np.testing.assert_array_equal(r.per_class_dice, s.per_class_dice)
        np.testing.assert_array_equal(r.per_image_dice, s.per_image_dice)
        np.testing.assert_allclose(r.per_image_coverage, s.per_image_coverage, rtol=0, atol=1e-15)
        assert (r.mean, r.std, r.p5) == pytest.approx((s.mean, s.std, s.p5), abs=1e-15)


@given(
    seed=st.integers(0, 2**31),
    n_images=st.integers(1, 4),
    num_classes=st.integers(2, 4),
    varying=st.booleans(),
)
def test_segmentation_accumulator_equals_in_memory_on_grid(seed, n_images, num_classes, varying):
    images = _grid_images(seed, n_images, num_classes, varying=varying, ndim=3)
    acc = SegmentationAccumulator(num_classes=num_classes, max_memory=0)
    for p, lab, u in images:
        acc.update(p, lab, u)
    _assert_same_results(acc, images, num_classes)


@given(seed=st.integers(0, 2**31), n_images=st.integers(1, 3))
def test_segmentation_accumulator_off_grid_equals_cell_maxima(seed, n_images):
    images = make_images(seed, n_images, 3, ties=None)
    images = [(p, lab, u.astype(np.float32)) for p, lab, u in images]
    acc = SegmentationAccumulator(num_classes=3, max_memory=0)
    for p, lab, u in images:
        acc.update(p, lab, u)
    all_u = np.concatenate([u.ravel() for _, _, u in images])
    snapped_all = cell_max(all_u)
    snapped, start = [], 0
    for p, lab, u in images:
        snapped.append((p, lab, snapped_all[start : start + u.size].reshape(u.shape)))
        start += u.size
    _assert_same_results(acc, snapped, 3)


def test_segmentation_accumulator_backends_and_edges(xp):
    images = _grid_images(11, 3, 4, varying=True)
    acc = SegmentationAccumulator(num_classes=4, max_memory=0)
    for p, lab, u in images:
        acc.update(xp.asarray(p), xp.asarray(lab), xp.asarray(u))
    _assert_same_results(acc, images, 4)
    edges = [0.2, 0.4, 0.6, 0.8, 1.0]
    acc_e = SegmentationAccumulator(num_classes=4, edges=edges, max_memory=0)
    for p, lab, u in images:
        acc_e.update(xp.asarray(p), xp.asarray(lab), xp.asarray(u))
    all_u = np.concatenate([u.ravel() for _, _, u in images])
    snapped_all, start, snapped = cell_max(all_u, edges), 0, []
    for p, lab, u in images:
        snapped.append((p, lab, snapped_all[start : start + u.size].reshape(u.shape)))
        start += u.size
    _assert_same_results(acc_e, snapped, 4)


@given(seed=st.integers(0, 2**31), split=st.integers(0, 4))
def test_segmentation_merge_equals_one_pass(seed, split):
    images = make_images(seed, 4, 3, varying=True)
    one = SegmentationAccumulator(num_classes=3, max_memory=0)
    a, b = (
        SegmentationAccumulator(num_classes=3, max_memory=0),
        SegmentationAccumulator(num_classes=3, max_memory=0),
    )
    for i, (p, lab, u) in enumerate(images):
        one.update(p, lab, u)
        (a if i < split else b).update(p, lab, u)
    merged = a.merge(b)
    c1, c2 = merged.compute(), one.compute()
    for field in ("coverage", "mean_dice", "threshold"):
        np.testing.assert_array_equal(getattr(c1, field), getattr(c2, field))
    r1, r2 = merged.dice_at_coverage(0.8)[0], one.dice_at_coverage(0.8)[0]
    np.testing.assert_array_equal(r1.per_image_dice, r2.per_image_dice)
    assert r1.p5 == r2.p5


def test_state_does_not_grow_with_voxels():
    rng = np.random.default_rng(0)
    values = to_bfloat16_grid(rng.random(64))  # 64 possible u values

    def state_bytes(n_voxels):
        acc = SegmentationAccumulator(num_classes=3, max_memory=0)
        label = rng.integers(0, 3, n_voxels)
        pred = np.where(rng.random(n_voxels) < 0.2, rng.integers(0, 3, n_voxels), label)
        u = values[np.arange(n_voxels) % 64]
        acc.update(pred, label, u)
        _, arrays = acc.to_arrays()
        return sum(a.nbytes for name, a in arrays.items() if name.startswith("img_")), sum(
            a.nbytes for name, a in arrays.items() if name.startswith("cells_")
        )

    small, cells_small = state_bytes(10_000)
    large, cells_large = state_bytes(1_000_000)
    assert large == small and cells_small == cells_large <= 64 * 24  # <= 64 occupied cells: id, count, max
    assert small <= 64 * (2 * 3 * 12 + 6) + 8 * 8 + 8 * 8  # classes x cells events + cells + counts


def test_segmentation_accumulator_errors():
    acc = SegmentationAccumulator(num_classes=3, max_memory=0)
    with pytest.raises(ValueError, match="no image was accumulated"):
        acc.compute()
    with pytest.raises(ValueError, match=r"`label` must hold labels in \[0, 3\)"):
        acc.update(np.array([0, 1]), np.array([0, 3]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"`uncertainty\[0\]` must have the same shape"):
        acc.update(np.array([0, 1]), np.array([0, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        acc.update(np.array([0, 1]), np.array([0, 1]), np.array([0.1, np.inf]))
    acc.update(np.array([0, 1]), np.array([0, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="`coverages` must be in"):
        acc.dice_at_coverage([1.2])
    with pytest.raises(ValueError, match="`other` must evaluate the same classes"):
        acc.merge(SegmentationAccumulator(num_classes=4, max_memory=0))
    with pytest.raises(ValueError, match="`num_classes` must be >= 2"):
        SegmentationAccumulator(num_classes=1, max_memory=0)


# ----------------------------------------------------------------------------------------------------
# merging an accumulator with itself doubles its data, as merging a copy does


def _same_state(a, b) -> None:
    header_a, arrays_a = a.to_arrays()
    header_b, arrays_b = b.to_arrays()
    assert header_a == header_b
    assert sorted(arrays_a) == sorted(arrays_b)
    for name, value in arrays_a.items():
        np.testing.assert_array_equal(value, arrays_b[name])


# the whole state kept (exact), the grid from the start, and a budget that the doubled data overflows
@pytest.mark.parametrize("max_memory", [1 << 30, 0, 2_000])
@given(seed=st.integers(0, 2**31), n_parts=st.integers(1, 3))
def test_risk_merge_with_itself_equals_merging_a_copy(max_memory, seed, n_parts):
    import copy

    u, correct = _risk_data(seed, 300, 50)
    acc = RiskCoverageAccumulator(max_memory=max_memory)
    for chunk_u, chunk_c in zip(np.array_split(u, n_parts), np.array_split(correct, n_parts), strict=True):
        acc.update(chunk_u, chunk_c)
    reference = copy.deepcopy(acc)
    reference.merge(copy.deepcopy(acc))
    assert acc.merge(acc) is acc
    assert acc.path == reference.path
    for field in ("coverage", "risk", "threshold"):
        np.testing.assert_array_equal(getattr(acc.compute(), field), getattr(reference.compute(), field))
    assert acc.aurc_bound() == reference.aurc_bound()
    if acc.path == "exact":  # every instance twice: the in-memory value on the data repeated
        assert acc.aurc() == rc.aurc(np.tile(u, 2), np.tile(correct, 2))


@pytest.mark.parametrize("max_memory", [1 << 30, 0, 300])  # one image of 240 bytes fits 300, two do not
@given(seed=st.integers(0, 2**31), n_images=st.integers(1, 3))
def test_segmentation_merge_with_itself_equals_merging_a_copy(max_memory, seed, n_images):
    import copy

    images = _grid_images(seed, n_images, 3, ndim=2)
    acc = SegmentationAccumulator(num_classes=3, max_memory=max_memory)
    for p, lab, u in images:
        acc.update(p, lab, u)
    reference = copy.deepcopy(acc)
    reference.merge(copy.deepcopy(acc))
    assert acc.merge(acc) is acc
    assert acc.n_images == 2 * n_images == reference.n_images
    assert acc.path == reference.path
    _same_state(acc, reference)
    _assert_same_results(acc, images + images, 3)


# ----------------------------------------------------------------------------------------------------------
# exact by default: the exact path equals the in-memory functions to the last bit, the grid fallback's
# bounds contain the exact value (and are attained), merges keep the path rules (formerly
# tests/test_streaming_exact.py)


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


floats_0_to_4 = st.floats(0.0, 4.0, width=32)


@given(
    values=st.lists(floats_0_to_4, min_size=1, max_size=120),
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


@given(values=st.lists(floats_0_to_4, min_size=2, max_size=100), data=st.data())
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


@pytest.mark.parametrize("n", [1, 2, 57, 70_000])
def test_grid_with_every_value_alone_gives_the_exact_bits(n):
    # every instance alone in its cell: the grid holds the exact data, so the values must be the in-memory
    # functions' to the last bit (the fast in-memory pass sums in another order than the grid's curve)
    rng = np.random.default_rng(n)
    cells = rng.choice(np.arange(0x300000, 0x400000, dtype=np.uint32), size=n, replace=False)
    u = (cells << np.uint32(8)).view(np.float32)  # the float32-24 grid keeps the top 24 bits
    correct = rng.random(n) < 0.7
    acc = RiskCoverageAccumulator(max_memory=0, grid="float32-24")
    acc.update(u, correct)
    assert acc.path == "grid"
    assert acc.aurc_bound(value=True) == (rc.aurc(u, correct),) * 3
    assert acc.augrc_bound(value=True) == (rc.augrc(u, correct),) * 3
    assert acc.e_aurc_bound(value=True) == (rc.e_aurc(u, correct),) * 3


# --- integers beyond 2**53: exact or refused ----------------------------------------------------------------


def _to_lib(x: np.ndarray, lib: str):
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@given(
    offset=st.sampled_from([2**53, 2**60, 2**62, -(2**62)]),
    n=st.integers(4, 60),
    n_updates=st.integers(1, 4),
    ties=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_big_int64_risk_accumulator_exact(lib, offset, n, n_updates, ties, seed):
    rng = np.random.default_rng(seed)
    u = offset + rng.integers(0, ties, n)  # distinct values 1 apart: all tied in float64
    correct = rng.random(n) < 0.6
    acc = sk.RiskCoverageAccumulator()
    for part_u, part_c in zip(np.array_split(u, n_updates), np.array_split(correct, n_updates), strict=True):
        acc.update(_to_lib(part_u, lib), _to_lib(part_c, lib))
    assert acc.path == "exact"
    want = sk.aurc(dense_ranks(u), correct)
    assert sk.aurc(u, correct) == want  # the in-memory function is exact on int64
    assert acc.aurc() == want
    assert acc.augrc() == sk.augrc(dense_ranks(u), correct)
    assert acc.e_aurc() == sk.e_aurc(dense_ranks(u), correct)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@given(
    offset=st.sampled_from([2**53, 2**61, -(2**62)]),
    n_images=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_big_int64_segmentation_accumulator_exact(lib, offset, n_images, seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 3, (n_images, 30))
    label = rng.integers(0, 3, (n_images, 30))
    u = offset + rng.integers(0, 50, (n_images, 30))
    acc = sk.SegmentationAccumulator(num_classes=3)
    for i in range(n_images):
        acc.update(_to_lib(pred[i], lib), _to_lib(label[i], lib), _to_lib(u[i], lib))
    assert acc.path == "exact"
    want = sk.aurc_dice(pred, label, dense_ranks(u), num_classes=3)
    assert sk.aurc_dice(pred, label, u, num_classes=3) == want
    assert acc.aurc_dice() == want
    got = acc.dice_at_coverage([0.5])[0].mean
    assert got == sk.dice_at_coverage(pred, label, dense_ranks(u), [0.5], num_classes=3)[0].mean


def test_big_int64_mixed_with_floats():
    """Whole floats join the integers exactly; fractional floats cannot be compared exactly: refused."""
    rng = np.random.default_rng(3)
    big = 2**60 + rng.integers(0, 9, 20)
    small = rng.integers(0, 9, 20).astype(np.float64)
    c = rng.random(40) < 0.5
    acc = sk.RiskCoverageAccumulator()
    acc.update(small, c[:20])
    acc.update(big, c[20:])
    both = np.concatenate([small.astype(np.int64), big])
    assert acc.aurc() == sk.aurc(dense_ranks(both), c)
    acc = sk.RiskCoverageAccumulator()
    acc.update(small + 0.5, c[:20])
    acc.update(big, c[20:])
    with pytest.raises(ValueError, match=r"`uncertainty` holds integers beyond 2\*\*53"):
        acc.aurc()


@pytest.mark.parametrize("max_memory", [1 << 30, 0, 400], ids=["exact", "grid", "exact-then-grid"])
@pytest.mark.parametrize("soft", [False, True])
def test_risk_accumulator_round_trips_through_arrays(max_memory, soft):
    rng = np.random.default_rng(4)
    acc = RiskCoverageAccumulator(max_memory=max_memory)
    for _ in range(4):
        u = rng.random(60).astype(np.float32)
        if soft:
            acc.update(u, risk=rng.random(60))
        else:
            acc.update(u, rng.random(60) < 0.7)
    header, arrays = acc.to_arrays()
    back = RiskCoverageAccumulator.from_arrays(json.loads(json.dumps(header)), arrays)
    assert back.path == acc.path
    assert back.aurc_bound(value=True) == acc.aurc_bound(value=True)
    assert back.augrc_bound(value=True) == acc.augrc_bound(value=True)
    if not soft:
        assert back.e_aurc_bound(value=True) == acc.e_aurc_bound(value=True)
    # merging after the round trip is merging the originals
    again = RiskCoverageAccumulator(max_memory=max_memory).merge(back).merge(acc)
    twice = RiskCoverageAccumulator(max_memory=max_memory).merge(acc).merge(acc)
    assert again.aurc() == twice.aurc()
    # a state it could not have written is refused with ValueError, never used
    key = "u" if acc.path == "exact" else "cells_count"
    for bad in (arrays[key][:-1], np.full(arrays[key].shape, np.nan if key == "u" else -1)):
        with pytest.raises(ValueError, match=r"consistent selectivekit\.risk_coverage_state"):
            RiskCoverageAccumulator.from_arrays(header, {**arrays, key: bad})
    with pytest.raises(ValueError, match="state version"):
        RiskCoverageAccumulator.from_arrays({**header, "version": 9}, arrays)


# ----------------------------------------------------------------------------------------------------
# images and instances sorted one by one (evaluate --workers N), merged: the arrays and results of the whole


def _dtype_images(seed, n_images, num_classes, ties, dtypes):
    images = make_images(seed, n_images, num_classes, ties=ties, varying=True)
    return [(p, lab, u.astype(dtypes[i % len(dtypes)])) for i, (p, lab, u) in enumerate(images)]


@given(
    seed=st.integers(0, 2**31),
    n_images=st.integers(1, 5),
    ties=st.sampled_from([None, 2, 5]),
    dtypes=st.sampled_from([(np.float32,), (np.float64,), (np.float32, np.float64)]),
    include_background=st.booleans(),
    threads=st.integers(1, 3),
)
def test_sorted_images_merge_into_the_sorted_voxels_of_the_whole(
    seed, n_images, ties, dtypes, include_background, threads
):
    from selectivekit.segmentation.engine import event_keys
    from selectivekit.streaming._sorted import merged_voxels, sort_image

    k = 3
    images = _dtype_images(seed, n_images, k, ties, dtypes)
    sorted_images = [sort_image(p.ravel(), lab.ravel(), u.ravel(), k) for p, lab, u in images]
    with _merge_threads(threads):
        voxels, per_image = merged_voxels(sorted_images, k, include_background)
    # brute force: every voxel as a tuple, sorted by Python (u exact in float64 for both dtypes)
    rows = [
        (float(u), i, j, int(p), int(lab))
        for i, (pi, li, ui) in enumerate(images)
        for j, (p, lab, u) in enumerate(zip(pi.ravel(), li.ravel(), ui.ravel(), strict=True))
    ]
    everything = sorted(row[0] for row in rows)
    np.testing.assert_array_equal(voxels.sorted_u.astype(np.float64), everything)
    wrong = sorted(row for row in rows if row[3] != row[4])  # by (u, image, voxel)
    np.testing.assert_array_equal(voxels.wrong_u.astype(np.float64), [row[0] for row in wrong])
    first = 0 if include_background else 1
    image_w = np.array([row[1] for row in wrong], dtype=np.int64)
    pred_w = np.array([row[3] for row in wrong], dtype=np.int64)
    label_w = np.array([row[4] for row in wrong], dtype=np.int64)
    want = event_keys(image_w, pred_w, label_w, n_images, k - first, first, xp=np)
    np.testing.assert_array_equal(voxels.key_pred, want[0])
    np.testing.assert_array_equal(voxels.key_true, want[1])
    counts = [[int(np.sum(lab == c)) for c in range(first, k)] for _, lab, _ in images]
    np.testing.assert_array_equal(voxels.label_count, counts)
    for (_, _, u), run in zip(images, per_image, strict=True):
        np.testing.assert_array_equal(run.astype(np.float64), np.sort(u.ravel().astype(np.float64)))


@given(
    seed=st.integers(0, 2**31),
    n_images=st.integers(1, 5),
    ties=st.sampled_from([None, 2, 5]),
    dtypes=st.sampled_from([(np.float32,), (np.float64,), (np.float32, np.float64)]),
    negative=st.booleans(),
    include_background=st.booleans(),
)
def test_the_voxel_errors_key_read_from_the_merged_voxels_is_the_sorted_key(
    seed, n_images, ties, dtypes, negative, include_background
):
    """``key_of_voxels``: the key of every voxel with ``correct = pred == label`` read from the merged
    voxels without a sort equals ``bit_key`` of all voxels sorted (brute force: the keys of the
    concatenation, sorted), ties, zeros, -0.0 and negative values included (float64 below 0: no key)."""
    from selectivekit._lib.sorted_groups import bit_key
    from selectivekit.streaming._sorted import key_of_voxels, merged_voxels, sort_image

    k = 3
    images = _dtype_images(seed, n_images, k, ties, dtypes)
    if negative:
        images = [(p, lab, (u - u.dtype.type(0.5))) for p, lab, u in images]
    u0 = images[0][2]
    u0.flat[:3] = 0.0
    u0.flat[3:5] = -0.0
    sorted_images = [sort_image(p.ravel(), lab.ravel(), u.ravel(), k) for p, lab, u in images]
    voxels, _ = merged_voxels(sorted_images, k, include_background)
    u_all = np.concatenate([u.ravel() for _, _, u in images])  # NumPy's common dtype, as the merge's
    correct = np.concatenate([(p == lab).ravel() for p, lab, _ in images])
    whole = bit_key(u_all, correct, sort=False)
    got = key_of_voxels(voxels)
    if whole is None:
        assert got is None
        return
    np.testing.assert_array_equal(got[0], np.sort(whole[0]))
    np.testing.assert_array_equal(got[1](got[0]), whole[1](np.sort(whole[0])))


@contextmanager
def _merge_threads(threads: int):
    """Merges in ``threads`` threads, down to one value a thread (so that small runs are cut too)."""
    from selectivekit._lib import thread_budget
    from selectivekit.streaming import _sorted

    saved = _sorted._MIN_PER_THREAD
    _sorted._MIN_PER_THREAD = 1
    try:
        with thread_budget(threads):
            yield
    finally:
        _sorted._MIN_PER_THREAD = saved


@given(
    runs=st.lists(st.lists(st.integers(-3, 6), max_size=8), min_size=1, max_size=5),
    threads=st.integers(1, 4),
)
def test_merge_runs_equals_a_sort_of_the_concatenation(runs, threads):
    """Bit for bit, -0.0 and 0.0 (equal values) included: ties stay in run order, as in Python's stable
    sort of the concatenation, however the merge is cut into threads."""
    from selectivekit.streaming._sorted import merge_runs

    # 0 stands for -0.0 and 1 for 0.0 (the bits differ, the value does not): a tie whose order must stay
    values = {0: -0.0, 1: 0.0}
    arrays = [np.sort(np.array([values.get(v, v / 4) for v in run], dtype=np.float32)) for run in runs]
    with _merge_threads(threads):
        got = merge_runs(arrays)
    want = np.array(sorted(v for run in arrays for v in run.tolist()), dtype=np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _worker_style(images, num_classes, n_chunks, max_memory):
    """Accumulators of contiguous chunks whose kept images are sorted (as in a worker), merged in order."""
    chunks = np.array_split(np.arange(len(images)), n_chunks)
    merged = None
    for chunk in chunks:
        if chunk.size == 0:
            continue
        acc = SegmentationAccumulator(num_classes=num_classes, max_memory=max_memory)
        for i in chunk:
            acc.update(*images[i])
            acc._sort_kept()
        merged = (
            pickle.loads(pickle.dumps(acc))
            if merged is None
            else merged.merge(pickle.loads(pickle.dumps(acc)))
        )
    return merged


# every image kept; a budget the merge overflows (the grid built from sorted images); the grid at once
@pytest.mark.parametrize("max_memory", [1 << 30, 700, 0])
@given(
    seed=st.integers(0, 2**31),
    n_images=st.integers(1, 5),
    n_chunks=st.integers(1, 3),
    ties=st.sampled_from([None, 3]),
    dtypes=st.sampled_from([(np.float32,), (np.float32, np.float64)]),
)
def test_sorted_images_give_the_results_of_the_images(max_memory, seed, n_images, n_chunks, ties, dtypes):
    k = 3
    images = _dtype_images(seed, n_images, k, ties, dtypes)
    one = SegmentationAccumulator(num_classes=k, max_memory=max_memory)
    for image in images:
        one.update(*image)
    many = _worker_style(images, k, n_chunks, max_memory)
    assert many.path == one.path
    curve, ref = many.compute(), one.compute()
    for field in ("coverage", "mean_dice", "threshold"):
        np.testing.assert_array_equal(getattr(curve, field), getattr(ref, field))
    assert many.aurc_dice_bound(value=True) == one.aurc_dice_bound(value=True)
    coverages = [1.0, 0.9, 0.5, 0.1]
    for r, s in zip(many.dice_at_coverage(coverages), one.dice_at_coverage(coverages), strict=True):
        assert (r.threshold, r.coverage, r.mean, r.std, r.p5) == (
            s.threshold,
            s.coverage,
            s.mean,
            s.std,
            s.p5,
        )
        np.testing.assert_array_equal(r.per_class_dice, s.per_class_dice)
        np.testing.assert_array_equal(r.per_image_coverage, s.per_image_coverage)
    for a, b in zip(many.class_voxels(), one.class_voxels(), strict=True):
        np.testing.assert_array_equal(a, b)
    if one.path == "exact":
        # and the in-memory functions on the images, to the last bit
        pred, label, u = ([im[j] for im in images] for j in range(3))
        np.testing.assert_array_equal(
            curve.mean_dice, dice_coverage_curve(pred, label, u, num_classes=k).mean_dice
        )
        assert many.aurc_dice() == aurc_dice(pred, label, u, num_classes=k)
    else:
        _same_state(many, one)


@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 300),
    ties=st.sampled_from([None, 3, 40]),
    parts=st.integers(1, 4),
    negative=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
    threads=st.integers(1, 3),
)
def test_sorted_instances_give_the_areas_of_the_instances(seed, n, ties, parts, negative, dtype, threads):
    from selectivekit._lib.sorted_groups import bit_key
    from selectivekit.streaming._sorted import merged_key, sort_instances

    u, correct, chunks = _risk_parts(seed, n, ties, parts)
    u = (u - 0.5 * negative) * (1000 if dtype == np.int64 else 1)
    u = u.astype(dtype)
    chunks = [(u[c], ~correct[c]) for c in np.array_split(np.arange(n), min(parts, n))]
    one, many = RiskCoverageAccumulator(), RiskCoverageAccumulator()
    for part_u, wrong in chunks:
        one.update(part_u, ~wrong)
        worker = RiskCoverageAccumulator()
        worker.update(part_u, ~wrong)
        worker._sort_kept()
        many.merge(pickle.loads(pickle.dumps(worker)))
    sorted_parts = [sort_instances(part_u, wrong) for part_u, wrong in chunks]
    whole = bit_key(u, correct)
    if whole is None:  # float64 with negative values: no key, the areas come the general way
        assert any(part is None for part in sorted_parts) or (
            merged_key([p[0] for p in sorted_parts], [~p[1] for p in sorted_parts]) is None
        )
    else:
        # brute force: the key of every instance, sorted
        np.testing.assert_array_equal(whole[0], np.sort(bit_key(u, correct, sort=False)[0]))
        with _merge_threads(threads):
            got = merged_key([p[0] for p in sorted_parts], [~p[1] for p in sorted_parts])
        np.testing.assert_array_equal(got[0], whole[0])
    assert (many.aurc(), many.augrc(), many.e_aurc()) == (one.aurc(), one.augrc(), one.e_aurc())
    kept = one._u[0] if len(one._u) == 1 else u  # the accumulator keeps small integers as float64
    if kept.dtype == u.dtype:
        assert one.aurc() == rc.aurc(u, correct)
        assert one.augrc() == rc.augrc(u, correct)
        assert one.e_aurc() == rc.e_aurc(u, correct)

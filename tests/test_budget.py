"""The referral plans against every plan enumerated here with Dice from scratch, and the frontier's
promise: at every budget the mixed plan is at least as good as voxels only and cases only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import selectivekit as sk
from selectivekit import referral_plans


def _dice(pred, label, num_classes):
    """Mean over the foreground classes of 2|P & L| / (|P| + |L|), 1 when both are empty."""
    values = []
    for k in range(1, num_classes):
        p, g = pred == k, label == k
        den = p.sum() + g.sum()
        values.append(1.0 if den == 0 else 2.0 * (p & g).sum() / den)
    return float(np.mean(values))


def _every_plan(pred, label, u, scores, num_classes, a, b):
    """(cost, mean Dice) of every plan: the m highest-scored cases whole, voxels with u > t in the rest."""
    n = len(pred)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    plans = []
    for m in range(n + 1):
        rest = order[m:]
        cuts = [*sorted({float(x) for i in rest for x in u[i].reshape(-1)}), -math.inf]
        for t in cuts:
            dice, voxels = [1.0] * m, 0
            for i in rest:
                refer = u[i] > t
                fixed = np.where(refer, label[i], pred[i])
                voxels += int(refer.sum())
                dice.append(_dice(fixed, label[i], num_classes))
            plans.append((a * m + b * voxels, float(np.mean(dice))))
    return plans


@st.composite
def _cases(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(2, 3))
    out = []
    for _ in range(n):
        v = draw(st.integers(1, 5))
        pred = np.array(draw(st.lists(st.integers(0, c - 1), min_size=v, max_size=v)))
        label = np.array(draw(st.lists(st.integers(0, c - 1), min_size=v, max_size=v)))
        u = np.array(draw(st.lists(st.sampled_from([0.1, 0.2, 0.5, 0.9]), min_size=v, max_size=v)))
        out.append((pred, label, u))
    scores = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=n, max_size=n)))
    return out, scores, c, draw(st.sampled_from([1.0, 3.0, 10.0]))


@given(_cases())
def test_best_plan_per_budget_against_every_plan(case):
    data, scores, c, a = case
    pred, label, u = ([d[i] for d in data] for i in range(3))
    plans = referral_plans(pred, label, u, scores, num_classes=c, case_cost=a, voxel_cost=1.0)
    brute = _every_plan(pred, label, u, scores, c, a, 1.0)
    for budget in [*sorted({cost for cost, _ in brute}), 0.5, 1000000000.0]:
        want = max((d for cost, d in brute if cost <= budget), default=math.nan)
        got = plans.dice_within([budget])[0]
        assert got == pytest.approx(want, abs=1e-12) or (math.isnan(got) and math.isnan(want))
        voxel_only = plans.dice_within([budget], cases="none")[0]
        case_only = plans.dice_within([budget], cases="only")[0]
        for other in (voxel_only, case_only):
            assert math.isnan(other) or got >= other - 1e-12
    # the frontier: cheapest first, each plan strictly better than every cheaper one
    f = plans.frontier
    assert np.all(np.diff(plans.cost[f]) >= 0) and np.all(np.diff(plans.dice[f]) > 0)
    assert plans.dice[f[-1]] == pytest.approx(max(d for _, d in brute))


def test_refusals():
    p, u = [np.array([0, 1])], [np.array([0.1, 0.2])]
    with pytest.raises(ValueError, match="must hold one array per case"):
        referral_plans(p, p + p, u, np.array([0.1]), num_classes=2, case_cost=1, voxel_cost=1)
    with pytest.raises(ValueError, match="`scores` must hold one finite score per case"):
        referral_plans(p, p, u, np.array([0.1, 0.2]), num_classes=2, case_cost=1, voxel_cost=1)
    with pytest.raises(ValueError, match="`scores` must be finite"):
        referral_plans(p, p, u, np.array([np.nan]), num_classes=2, case_cost=1, voxel_cost=1)
    with pytest.raises(ValueError, match="`case_cost` must be finite and > 0"):
        referral_plans(p, p, u, np.array([0.1]), num_classes=2, case_cost=0, voxel_cost=1)
    with pytest.raises(TypeError, match="`voxel_cost` must be a number"):
        referral_plans(p, p, u, np.array([0.1]), num_classes=2, case_cost=1, voxel_cost="1")
    plans = referral_plans(p, p, u, np.array([0.1]), num_classes=2, case_cost=1, voxel_cost=1)
    with pytest.raises(ValueError, match="`cases` must be 'any', 'none' or 'only'"):
        plans.best_within(1.0, cases="all")
    assert plans.best_within(-1.0) == -1


def test_budget_curves_equal_the_best_of_every_plan():
    """From one state per case, the best Dice per budget equals referral_plans' enumeration of every plan."""
    from selectivekit.budget import budget_curves
    from selectivekit.guarantees import ImageState

    rng = np.random.default_rng(7)
    for _ in range(25):
        n, c = int(rng.integers(1, 6)), int(rng.integers(2, 4))
        shapes = [tuple(rng.integers(2, 6, size=2)) for _ in range(n)]
        label = [rng.integers(0, c, size=s) for s in shapes]
        pred = [
            np.where(rng.random(s) < 0.3, rng.integers(0, c, size=s), y)
            for s, y in zip(shapes, label, strict=True)
        ]
        u = [np.round(rng.random(s), 1) for s in shapes]  # ties within and across cases
        scores = np.round(rng.random(n), 1)  # tied scores: the lower index first
        a = float(rng.integers(1, 20))
        plans = referral_plans(pred, label, u, scores, num_classes=c, case_cost=a, voxel_cost=1.0)
        state = ImageState.concat(
            *[ImageState.of_image(p, y, v, num_classes=c) for p, y, v in zip(pred, label, u, strict=True)]
        )
        budgets = [*sorted(set(plans.cost.tolist())), 0.5, 3.3, 1e9]
        got = budget_curves(state, scores, case_cost=a, voxel_cost=1.0, budgets=budgets)
        for kind, values in (("any", got.mixed), ("none", got.voxels_only), ("only", got.cases_only)):
            np.testing.assert_allclose(values, plans.dice_within(budgets, cases=kind), atol=1e-12, rtol=0)
        assert np.all(got.mixed >= np.fmax(got.voxels_only, got.cases_only) - 1e-15)
        # the chosen plan is affordable and gives its Dice
        for i, budget in enumerate(budgets):
            opened = plans.order[: got.cases[i]]
            after = [
                y if j in opened else np.where(v > got.threshold[i], y, p)
                for j, (p, y, v) in enumerate(zip(pred, label, u, strict=True))
            ]
            voxels = sum(int(np.sum(v > got.threshold[i])) for j, v in enumerate(u) if j not in opened)
            assert a * got.cases[i] + voxels <= budget
            dice = sk.dice_at_coverage(after, label, u, 1.0, num_classes=c)[0].mean
            assert dice == pytest.approx(got.mixed[i], abs=1e-12)


def test_budget_curves_bad_arguments():
    from selectivekit.budget import budget_curves
    from selectivekit.guarantees import ImageState

    p = np.array([[0, 1], [1, 1]])
    state = ImageState.of_image(p, p, np.ones((2, 2)), num_classes=2)
    with pytest.raises(ValueError, match="scores"):
        budget_curves(state, np.array([0.1, 0.2]), case_cost=1, voxel_cost=1, budgets=[1])
    with pytest.raises(ValueError, match="budgets"):
        budget_curves(state, np.array([0.1]), case_cost=1, voxel_cost=1, budgets=[-1])
    with pytest.raises(ValueError, match="case_cost"):
        budget_curves(state, np.array([0.1]), case_cost=0, voxel_cost=1, budgets=[1])

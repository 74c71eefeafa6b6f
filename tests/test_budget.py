"""The referral plans against every plan enumerated here with Dice from scratch, and the frontier's
promise: at every budget the mixed plan is at least as good as voxels only and cases only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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

"""One expert budget over cases and voxels: which cases to refer whole, and which voxels to check in the rest.

Referring a whole case costs ``case_cost`` (a radiologist opens it and corrects it: its Dice becomes 1);
referring a voxel of a kept case costs ``voxel_cost`` (it gets its true label). Cases are referred in
decreasing case score (the first ``m`` of that order), voxels above one threshold ``t`` of the voxel
uncertainty in the remaining cases. For every ``m`` the exact Dice-coverage curve of the remaining cases
gives every achievable threshold, so the plans ``(m, t)`` are all enumerated exactly; the frontier keeps,
for each cost, the plan with the highest mean Dice over all cases. The voxel-only plans (``m = 0``) and the
case-only plans (no voxel referred) are among them, so the mixed frontier is at least as good as either at
every budget.

Cost: one Dice-coverage curve per ``m`` (``n + 1`` curves for ``n`` cases), each one sort of the remaining
voxels. [`budget_curves`][selectivekit.budget.budget_curves] answers the same question at a list of budgets
from each case's step functions (one sort per case), which is what ``selectivekit evaluate --case-cost``
uses on whole datasets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._lib import to_numpy
from .guarantees import ImageState
from .segmentation import dice_coverage_curve
from .typing import Array

__all__ = ["BudgetCurves", "ReferralPlans", "budget_curves", "referral_plans"]


@dataclasses.dataclass(frozen=True)
class ReferralPlans:
    """Every referral plan's cost and mean Dice, and the best plan per budget."""

    cost: np.ndarray
    """Cost of each plan (``case_cost * cases + voxel_cost * voxels``), increasing along the frontier."""
    dice: np.ndarray
    """Mean Dice over all cases after the plan's referral."""
    cases: np.ndarray
    """Cases referred whole (the first ``cases`` in referral order)."""
    threshold: np.ndarray
    """Voxel threshold in the kept cases: voxels with ``u > threshold`` are referred (``inf``: none;
    ``-inf``: all)."""
    voxels: np.ndarray
    """Voxels referred in the kept cases."""
    order: np.ndarray
    """Case indices in referral order (the highest score first, ties by index)."""
    frontier: np.ndarray
    """Indices of the plans on the frontier: cheapest first, each with a higher Dice than every cheaper
    plan."""

    def best_within(self, budget: float, *, cases: str = "any") -> int:
        """Index of the plan with the highest mean Dice among those costing at most ``budget``.

        ``cases="none"`` restricts to voxel-only plans, ``cases="only"`` to case-only plans (no voxel
        referred); ``-1`` when no plan fits the budget.
        """
        keep = self.cost <= budget
        if cases == "none":
            keep &= self.cases == 0
        elif cases == "only":
            keep &= self.voxels == 0
        elif cases != "any":
            msg = f"`cases` must be 'any', 'none' or 'only', got {cases!r}."
            raise ValueError(msg)
        if not keep.any():
            return -1
        candidates = np.flatnonzero(keep)
        return int(candidates[np.lexsort((self.cost[candidates], -self.dice[candidates]))[0]])

    def dice_within(self, budgets: Sequence[float], *, cases: str = "any") -> np.ndarray:
        """The best mean Dice for each budget (NaN where no plan fits)."""
        out = []
        for b in budgets:
            i = self.best_within(b, cases=cases)
            out.append(math.nan if i < 0 else float(self.dice[i]))
        return np.asarray(out)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        msg = f"`{name}` must be a number, got {type(value).__name__}."
        raise TypeError(msg)
    if not (0 < value < math.inf):
        msg = f"`{name}` must be finite and > 0, got {value}."
        raise ValueError(msg)
    return float(value)


def referral_plans(
    pred: Sequence[Array],
    label: Sequence[Array],
    uncertainty: Sequence[Array],
    scores: Array,
    /,
    *,
    num_classes: int,
    case_cost: float,
    voxel_cost: float,
    include_background: bool = False,
) -> ReferralPlans:
    """Every plan "refer the ``m`` highest-scored cases whole and the voxels above ``t`` in the rest".

    Parameters
    ----------
    pred, label, uncertainty : sequences of arrays, one per case
        Predicted and true labels and the voxel uncertainty of each case.
    scores : array of shape (n,)
        The case scores (higher = refer first), e.g. from [`case_scores`][selectivekit.case_scores].
    num_classes : int
        As for [`dice_coverage_curve`][selectivekit.dice_coverage_curve].
    case_cost, voxel_cost : float
        The cost of referring one case whole and one voxel (e.g. minutes).
    include_background : bool, default False
        As for the Dice functions.

    Returns
    -------
    ReferralPlans

    Examples
    --------
    >>> import numpy as np
    >>> pred = [np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])]
    >>> label = [np.array([1, 0, 0, 0]), np.array([0, 0, 1, 1])]
    >>> u = [np.array([0.1, 0.8, 0.2, 0.1]), np.array([0.3, 0.2, 0.4, 0.4])]
    >>> plans = referral_plans(pred, label, u, np.array([0.3, 0.9]), num_classes=2, case_cost=4, voxel_cost=1)
    >>> i = plans.best_within(4)  # for 4: check the 4 most uncertain voxels of both cases
    >>> int(plans.cases[i]), int(plans.voxels[i]), float(plans.dice[i])
    (0, 4, 1.0)
    >>> round(float(plans.dice[plans.best_within(4, cases="only")]), 4)  # or open case 1 (scored highest)
    0.8333
    """
    n = len(pred)
    if not (len(label) == len(uncertainty) == n):
        msg = (
            "`pred`, `label` and `uncertainty` must hold one array per case, "
            f"got {n}, {len(label)}, {len(uncertainty)}."
        )
        raise ValueError(msg)
    s = np.asarray(to_numpy(scores), dtype=np.float64).reshape(-1)
    if s.size != n or n == 0:
        msg = f"`scores` must hold one finite score per case ({n}), got {s.size}."
        raise ValueError(msg)
    if not np.all(np.isfinite(s)):
        msg = "`scores` must be finite, got NaN or infinite values."
        raise ValueError(msg)
    a, b = _positive(case_cost, "case_cost"), _positive(voxel_cost, "voxel_cost")
    order = np.lexsort((np.arange(n), -s))
    sizes = np.array([math.prod(to_numpy(u).shape) for u in uncertainty], dtype=np.int64)
    rows = []  # (cost, dice, cases, threshold, voxels)
    for m in range(n + 1):
        rest = order[m:]
        if rest.size == 0:
            rows.append((a * m, 1.0, m, -math.inf, 0))
            continue
        curve = dice_coverage_curve(
            [pred[i] for i in rest], [label[i] for i in rest], [uncertainty[i] for i in rest],
            num_classes=num_classes, include_background=include_background,
        )  # fmt: skip
        total = int(sizes[rest].sum())
        kept = np.rint(to_numpy(curve.coverage) * total).astype(np.int64)
        dice = (m + (n - m) * to_numpy(curve.mean_dice).astype(np.float64)) / n
        thresholds = to_numpy(curve.threshold).astype(np.float64)
        for k, d, t in zip(kept, dice, thresholds, strict=True):
            referred = total - int(k)
            rows.append(
                (a * m + b * referred, float(d), m, math.inf if referred == 0 else float(t), referred)
            )
        rows.append((a * m + b * total, 1.0, m, -math.inf, total))  # every voxel of the kept cases checked
    cost, dice, cases, threshold, voxels = (np.asarray(c) for c in zip(*rows, strict=True))
    by_cost = np.lexsort((-dice, cost))
    frontier, best = [], -math.inf
    for i in by_cost:
        if dice[i] > best:
            frontier.append(int(i))
            best = dice[i]
    return ReferralPlans(
        cost=cost.astype(np.float64),
        dice=dice.astype(np.float64),
        cases=cases.astype(np.int64),
        threshold=threshold.astype(np.float64),
        voxels=voxels.astype(np.int64),
        order=order,
        frontier=np.asarray(frontier, dtype=np.int64),
    )


@dataclasses.dataclass(frozen=True)
class BudgetCurves:
    """The best mean Dice within each budget: voxels only, whole cases only, and the best mix."""

    budgets: np.ndarray
    """The budgets, increasing."""
    voxels_only: np.ndarray
    """Best mean Dice when only voxels are referred (no case opened)."""
    cases_only: np.ndarray
    """Best mean Dice when only whole cases are referred, highest score first."""
    mixed: np.ndarray
    """Best mean Dice over every plan: the first ``cases`` opened, the voxels above ``threshold`` checked in
    the others (at least each of the two above)."""
    cases: np.ndarray
    """The cases opened by the best mixed plan of each budget."""
    threshold: np.ndarray
    """Its voxel threshold (``inf``: no voxel referred; ``-inf``: every voxel of the kept cases)."""


def budget_curves(
    states: ImageState, scores: Array, /, *, case_cost: float, voxel_cost: float, budgets: Sequence[float]
) -> BudgetCurves:
    """The best mean Dice within each budget, from each case's step functions.

    Parameters
    ----------
    states : ImageState
        One per case, in the order of ``scores``
        ([`ImageState.of_image`][selectivekit.guarantees.ImageState.of_image]: its Dice after referral at
        every threshold and its voxel counts).
    scores : array of shape (n,)
        The case scores (higher = refer first).
    case_cost, voxel_cost : float
        As for [`referral_plans`][selectivekit.referral_plans].
    budgets : sequence of float
        The budgets (each >= 0).

    Returns
    -------
    BudgetCurves

    Notes
    -----
    For ``m`` opened cases (the highest-scored) and a voxel threshold ``t``, the mean Dice is
    ``(m + sum over the other cases j of D_j(t)) / n`` and the cost ``a m + b sum_j #{u_j > t}``. Both fall as
    ``t`` rises, so for a budget the best ``t`` of each ``m`` is the smallest affordable one. Between two
    points where some case's Dice changes, the Dice is constant and the cost falls, so only the largest
    calibration value below each change point (and the largest value, and ``-inf``) can be best: a bisection
    over those candidates for every ``(m, budget)`` at once gives the same optimum as enumerating every plan
    ([`referral_plans`][selectivekit.referral_plans], against which it is tested), at the cost of one sort
    per case instead of one per ``m``.
    """
    n = states.n_items
    s = np.asarray(to_numpy(scores), dtype=np.float64).reshape(-1)
    if s.size != n or n == 0 or not np.all(np.isfinite(s)):
        msg = f"`scores` must hold one finite score per case ({n}), got {s.size} values."
        raise ValueError(msg)
    a, b = _positive(case_cost, "case_cost"), _positive(voxel_cost, "voxel_cost")
    want = np.asarray(budgets, dtype=np.float64).reshape(-1)
    if want.size == 0 or not np.all(np.isfinite(want)) or np.any(want < 0):
        msg = "`budgets` must be a non-empty sequence of finite numbers >= 0."
        raise ValueError(msg)
    order = np.lexsort((np.arange(n), -s))
    changes = [c for c in states.changed_thresholds if c.shape[0]]
    points = np.unique(np.concatenate(changes)) if changes else np.zeros(0)
    union = states.union
    # the candidates, increasing: -inf, the largest u below each change point, the largest u
    below = np.searchsorted(union, points, side="left") - 1
    candidates = np.unique(np.concatenate([[-math.inf], union[below[below >= 0]], union[-1:]]))
    sizes = states.n_voxels.astype(np.float64)[order]
    later = np.arange(n)[:, None, None] >= np.arange(n + 1)[None, :, None]  # case r is kept with m opened

    def kept_sum(per_case: Any, idx: np.ndarray) -> np.ndarray:
        """Sum over the kept cases (rank >= m) of ``per_case(rank, case, thresholds)``, shape of ``idx``."""
        t = candidates[idx]
        values = np.stack([per_case(r, j, t) for r, j in enumerate(order)])  # (n, n + 1, budgets)
        return np.where(later, values, 0.0).sum(axis=0)

    def referred(r: int, j: int, t: np.ndarray) -> np.ndarray:
        return sizes[r] - states.count_upto(j, t)

    def dice(r: int, j: int, t: np.ndarray) -> np.ndarray:
        return states.dice(j, t)

    m = np.arange(n + 1, dtype=np.float64)[:, None]
    money = want[None, :] - a * m  # left for voxels with m cases opened
    # the smallest candidate index whose voxels fit (their cost falls as the index rises); size: none fits
    lo = np.zeros((n + 1, want.size), dtype=np.int64)
    hi = np.full((n + 1, want.size), candidates.size, dtype=np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        fits = b * kept_sum(referred, np.minimum(mid, candidates.size - 1)) <= money
        open_ = lo < hi
        hi = np.where(open_ & fits, mid, hi)
        lo = np.where(open_ & ~fits, mid + 1, lo)
    found = np.minimum(lo, candidates.size - 1)
    affordable = (lo < candidates.size) & (money >= 0)
    value = np.where(affordable, (m + kept_sum(dice, found)) / n, -math.inf)
    no_voxel = np.full(found.shape, candidates.size - 1)
    cases_only = np.where(money >= 0, (m + kept_sum(dice, no_voxel)) / n, -math.inf).max(axis=0)
    best_m = np.argmax(value, axis=0)
    cols = np.arange(want.size)
    chosen = found[best_m, cols]
    threshold = np.where(chosen == candidates.size - 1, math.inf, candidates[chosen])
    return BudgetCurves(
        budgets=want,
        voxels_only=np.where(value[0] > -math.inf, value[0], math.nan),
        cases_only=cases_only,
        mixed=value[best_m, cols],
        cases=best_m.astype(np.int64),
        threshold=threshold,
    )

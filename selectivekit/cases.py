"""Which cases should a radiologist check first? Case scores from voxel maps, and case-level selective
prediction.

A **case score** ``s_i`` aggregates a case's voxel uncertainty map into one number (higher = less
confident); a **case risk** ``r_i`` in [0, 1] is what a failure costs (``1 - Dice_i`` by default; NSD, HD95
or a volume error scaled to [0, 1] work the same). Referring the cases of highest score first gives a
case risk-coverage curve with the step rule of the voxel functions (every point an achievable operating
point; tied scores are referred together), so the case AURC, e-AURC and AUGRC are
[`aurc`][selectivekit.aurc], [`e_aurc`][selectivekit.e_aurc] and [`augrc`][selectivekit.augrc] of the
scores with ``risk=`` the case risks. ``e_AUGRC = AUGRC - AUGRC*``, with ``AUGRC*`` that of the cases
accepted one at a time by increasing risk (the best strict order, as for ``e_aurc``). The failure AUROC at
a threshold ``tau`` is the AUROC of the scores for the label ``r_i > tau``, tied scores counted one half
(Traub et al. 2024, "Overcoming common flaws in the evaluation of selective classification systems";
Jaeger et al. 2023, fd-shifts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._lib import as_array, check_same_library, check_same_shape, get_namespace, to_numpy
from ._lib.tie_groups import tie_group_ends
from .risk_coverage import RiskCoverageCurve, augrc, aurc, e_aurc, risk_coverage_curve
from .typing import Array, Namespace

__all__ = [
    "CASE_SCORES",
    "CaseReferral",
    "case_referral",
    "case_score",
    "case_scores",
    "failure_auroc",
]

#: The aggregators of ``case_score`` by name.
CASE_SCORES = ("mean", "mean-foreground", "foreground-band", "quantile", "top-fraction", "above-threshold")


def _unit(value: Any, name: str, *, open_low: bool = False) -> float:
    """A number in [0, 1] (or (0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        msg = f"`{name}` must be a number, got {type(value).__name__}."
        raise TypeError(msg)
    if not (0 < value <= 1 if open_low else 0 <= value <= 1):  # NaN fails too
        msg = f"`{name}` must be in {'(0, 1]' if open_low else '[0, 1]'}, got {value}."
        raise ValueError(msg)
    return float(value)


def case_score(
    uncertainty: Array,
    /,
    *,
    method: str = "mean",
    pred: Array | None = None,
    quantile: float = 0.95,
    fraction: float = 0.01,
    threshold: float = 0.5,
    radius: int = 2,
    xp: Namespace | None = None,
) -> float:
    """One case's score from its voxel uncertainty map (higher = less confident).

    Parameters
    ----------
    uncertainty : array
        The case's voxel uncertainty map, any shape.
    method : str, default "mean"
        - ``"mean"``: the mean over every voxel;
        - ``"mean-foreground"``: the mean over the predicted foreground (``pred > 0``), the aggregation of
          Jungo et al. 2020 and ValUES (Kahl et al. 2024); a case with no predicted foreground takes the mean
          over every voxel;
        - ``"foreground-band"``: the mean over the predicted foreground dilated by ``radius`` voxels in
          every direction (a cube), so the boundary, where errors sit, counts; the whole image when nothing
          is predicted;
        - ``"quantile"``: the ``quantile`` of the voxel values (linear interpolation, NumPy's default);
        - ``"top-fraction"``: the mean of the ``fraction`` most uncertain voxels (at least one);
        - ``"above-threshold"``: the share of voxels with ``u > threshold``.
    pred : integer array, optional
        The predicted labels, the shape of ``uncertainty`` (needed by the foreground methods).
    quantile, fraction, threshold, radius
        The parameters of the methods above.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> u = np.array([[0.1, 0.9], [0.2, 0.4]])
    >>> case_score(u), case_score(u, method="mean-foreground", pred=np.array([[0, 1], [0, 1]]))
    (0.4, 0.65)
    >>> case_score(u, method="above-threshold", threshold=0.3)
    0.5
    """
    u = as_array(uncertainty, "uncertainty")
    xp = get_namespace(u, xp=xp)
    if not xp.isdtype(u.dtype, ("real floating", "integral")) or xp.isdtype(u.dtype, "bool"):
        msg = f"`uncertainty` must hold real numbers, got dtype {u.dtype}."
        raise TypeError(msg)
    values = to_numpy(u).astype(np.float64)
    if values.size == 0:
        msg = "`uncertainty` is empty; a case needs at least one voxel."
        raise ValueError(msg)
    if not np.all(np.isfinite(values)):
        msg = "`uncertainty` must be finite, got NaN or infinite values."
        raise ValueError(msg)
    if method not in CASE_SCORES:
        msg = f"`method` must be one of {', '.join(CASE_SCORES)}, got {method!r}."
        raise ValueError(msg)
    if method in ("mean-foreground", "foreground-band"):
        if pred is None:
            msg = f"`pred` is needed for method={method!r}."
            raise ValueError(msg)
        p = as_array(pred, "pred")
        check_same_library(p, "pred", u)
        check_same_shape("uncertainty", u, "pred", p)
        region = to_numpy(p) > 0
        if method == "foreground-band":
            region = _dilate(region, _count(radius, "radius"))
        return float(values[region].mean()) if region.any() else float(values.mean())
    if method == "mean":
        return float(values.mean())
    if method == "quantile":
        return float(np.quantile(values, _unit(quantile, "quantile")))
    if method == "top-fraction":
        k = max(1, math.ceil(_unit(fraction, "fraction", open_low=True) * values.size))
        return float(np.partition(values.reshape(-1), values.size - k)[values.size - k :].mean())
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        msg = f"`threshold` must be a number, got {type(threshold).__name__}."
        raise TypeError(msg)
    return float(np.mean(values > threshold))


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        msg = f"`{name}` must be an integer >= 0, got {value!r}."
        raise ValueError(msg)
    return int(value)


def _dilate(region: np.ndarray, radius: int) -> np.ndarray:
    """``region`` grown by ``radius`` voxels along every axis (a cube), by shifted maxima."""
    out = region.copy()
    for axis in range(region.ndim):
        grown = out.copy()
        for shift in range(1, radius + 1):
            lead = [slice(None)] * region.ndim
            trail = [slice(None)] * region.ndim
            lead[axis], trail[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(lead)] |= out[tuple(trail)]
            grown[tuple(trail)] |= out[tuple(lead)]
        out = grown
    return out


def case_scores(
    uncertainties: Sequence[Array], /, *, preds: Sequence[Array] | None = None, **options: Any
) -> np.ndarray:
    """``case_score`` of each case (``options`` as there); ``preds`` one per case for the foreground
    methods.

    Examples
    --------
    >>> import numpy as np
    >>> case_scores([np.array([0.1, 0.3]), np.array([0.5])])
    array([0.2, 0.5])
    """
    if preds is not None and len(preds) != len(uncertainties):
        msg = f"`preds` must hold one map per case ({len(uncertainties)}), got {len(preds)}."
        raise ValueError(msg)
    return np.asarray(
        [
            case_score(u, pred=None if preds is None else preds[i], **options)
            for i, u in enumerate(uncertainties)
        ],
        dtype=np.float64,
    )


def _scores_and_risks(scores: Any, risks: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(to_numpy(as_array(scores, "scores")), dtype=np.float64).reshape(-1)
    r = np.asarray(to_numpy(as_array(risks, "risks")), dtype=np.float64).reshape(-1)
    if s.shape != r.shape:
        msg = f"`scores` and `risks` must have one value per case, got {s.size} and {r.size}."
        raise ValueError(msg)
    if s.size == 0:
        msg = "`scores` is empty; at least one case is needed."
        raise ValueError(msg)
    if not np.all(np.isfinite(s)):
        msg = "`scores` must be finite, got NaN or infinite values."
        raise ValueError(msg)
    if not np.all((r >= 0) & (r <= 1)):  # NaN fails too
        msg = "`risks` must lie in [0, 1] (e.g. 1 - Dice), got values outside it or NaN."
        raise ValueError(msg)
    return s, r


def failure_auroc(scores: Array, risks: Array, /, *, threshold: float) -> float:
    """AUROC of the case scores for the failures ``risk > threshold`` (higher is better; 0.5 is chance).

    The probability that a failed case scores above a successful one, ties counted one half (the
    Mann-Whitney statistic). NaN when every case failed or none did.

    Examples
    --------
    >>> failure_auroc([0.9, 0.2, 0.5, 0.5], [0.6, 0.1, 0.3, 0.7], threshold=0.5)
    0.875
    """
    s, r = _scores_and_risks(scores, risks)
    tau = _unit(threshold, "threshold")
    failed = r > tau
    n_fail, n_ok = int(failed.sum()), int((~failed).sum())
    if n_fail == 0 or n_ok == 0:
        return math.nan
    # midranks of the scores: a tie between a failure and a success counts one half
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    ends = tie_group_ends(sorted_s, np)
    starts = np.r_[0, ends[:-1] + 1]
    midrank = np.empty(s.size)
    midrank[order] = np.repeat((starts + ends) / 2 + 1, ends - starts + 1)
    return float((midrank[failed].sum() - n_fail * (n_fail + 1) / 2) / (n_fail * n_ok))


@dataclasses.dataclass(frozen=True)
class CaseReferral:
    """Case-level selective prediction: what referring the highest-scored cases first achieves."""

    aurc: float
    """Area under the case risk-coverage curve (lower is better)."""
    e_aurc: float
    """``aurc`` minus that of the best order (by increasing risk)."""
    augrc: float
    """Area under the generalized risk-coverage curve."""
    e_augrc: float
    """``augrc`` minus that of the best order."""
    failure_auroc: float
    """AUROC of the scores for ``risk > failure_threshold`` (NaN without a threshold or one class)."""
    partial_aurc: float
    """Mean selective risk over ``coverage_range`` (the step curve's area over it, divided by its width)."""
    coverage_range: tuple[float, float]
    curve: RiskCoverageCurve
    """The case risk-coverage curve."""
    order: np.ndarray
    """Case indices in referral order: the highest score first (ties by index)."""


def case_referral(
    scores: Array,
    risks: Array,
    /,
    *,
    failure_threshold: float | None = None,
    coverage_range: tuple[float, float] = (0.5, 1.0),
) -> CaseReferral:
    """Every case-level metric of ``scores`` (higher = refer first) against ``risks`` in [0, 1].

    Parameters
    ----------
    scores : array of shape (n,)
        One score per case, e.g. from [`case_scores`][selectivekit.case_scores].
    risks : array of shape (n,)
        One risk per case in [0, 1], e.g. ``1 - Dice``.
    failure_threshold : float, optional
        A case fails when its risk exceeds it (e.g. 0.2 for "Dice below 0.8"); needed for the failure AUROC.
    coverage_range : (float, float), default (0.5, 1.0)
        The coverages over which ``partial_aurc`` averages the selective risk.

    Examples
    --------
    >>> import numpy as np
    >>> scores, risks = np.array([0.9, 0.2, 0.5, 0.4]), np.array([0.6, 0.1, 0.3, 0.2])
    >>> r = case_referral(scores, risks, failure_threshold=0.5)
    >>> r.order.tolist(), round(r.e_aurc, 12), r.failure_auroc
    ([0, 2, 3, 1], 0.0, 1.0)
    """
    s, r = _scores_and_risks(scores, risks)
    low, high = coverage_range
    _unit(low, "coverage_range[0]")
    _unit(high, "coverage_range[1]", open_low=True)
    if not low < high:
        msg = f"`coverage_range` must be increasing, got {coverage_range}."
        raise ValueError(msg)
    curve = risk_coverage_curve(s, risk=r)
    coverage = np.r_[0.0, to_numpy(curve.coverage)]
    overlap = np.clip(np.minimum(coverage[1:], high) - np.maximum(coverage[:-1], low), 0.0, None)
    # the best order accepts the cases by increasing risk, one at a time (a strict order: grouping tied
    # risks into one step would add area); its generalized risk after k cases is the k smallest risks / n
    best = float(np.sum(np.cumsum(np.sort(r))) / r.size**2)
    return CaseReferral(
        aurc=aurc(s, risk=r),
        e_aurc=e_aurc(s, risk=r),
        augrc=augrc(s, risk=r),
        e_augrc=augrc(s, risk=r) - best,
        failure_auroc=math.nan
        if failure_threshold is None
        else failure_auroc(s, r, threshold=failure_threshold),
        partial_aurc=float(np.sum(overlap * to_numpy(curve.risk)) / (high - low)),
        coverage_range=(float(low), float(high)),
        curve=curve,
        order=np.lexsort((np.arange(s.size), -s)),
    )

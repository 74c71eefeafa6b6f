"""Risk-coverage curve, AURC, e-AURC, AUGRC and operating points.

Every operating point is a threshold ``t`` on the uncertainty: instances with ``u <= t`` are accepted, tied
instances are accepted or referred together. Let ``t_1 < ... < t_G`` be the distinct uncertainty values,
``n_g = #{u <= t_g}``, ``e_g`` the summed instance risk of those instances and ``N`` the number of instances.
Then ``c_g = n_g / N`` and the selective risk is ``r_g = e_g / n_g``. Areas use the right-endpoint step rule
``sum_g (c_g - c_{g-1}) * v_g`` ([`step_area`][selectivekit.risk_coverage.step_area]) over these achievable
points only.

The pieces [`curve_from_groups`][selectivekit.risk_coverage.curve_from_groups],
[`curve_from_cumulative`][selectivekit.risk_coverage.curve_from_cumulative] and
[`step_area`][selectivekit.risk_coverage.step_area] are shared with the
streaming accumulators, the segmentation metrics and the framework adapters.
"""

# Maintainers: every value here is computed from the tie groups (thresholds, n_g, e_g). The sorting that
# finds them lives in _lib/sorted_groups.py, the per-group area terms (both tie rules, selective and
# generalized risk), the harmonic numbers and the e-AURC difference in _lib/tie_groups.py, shared with the
# streaming accumulators and the bootstrap of guarantees.py.

from __future__ import annotations

import math
from dataclasses import dataclass

import array_api_compat
import numpy as np

from ._lib import check_choice, check_coverage, check_probability, device, float_dtype, prepare_instances
from ._lib.sorted_groups import bit_key, fused_pass, host_view, key_groups, sorted_groups, step_areas
from ._lib.tie_groups import (
    area_terms,
    blocked_sum,
    excess_aurc,
    harmonic_difference,
    soft_optimal_aurc,
)
from .selective import group_at_coverage
from .typing import Array, Namespace

__all__ = [
    "RiskCoverageCurve",
    "augrc",
    "aurc",
    "aurc_optimal",
    "coverage_at_risk",
    "curve_area",
    "curve_from_cumulative",
    "curve_from_groups",
    "e_aurc",
    "risk_at_coverage",
    "risk_coverage_curve",
    "step_area",
]


@dataclass(frozen=True)
class RiskCoverageCurve:
    """Selective risk at every achievable threshold, in increasing coverage.

    Attributes
    ----------
    coverage : array of shape (G,)
        ``c_g = #{u <= t_g} / N`` (float64 where the namespace has it); the last entry is 1.
    risk : array of shape (G,)
        Selective risk ``r_g`` of the accepted instances (lower is better).
    threshold : array of shape (G,)
        The distinct uncertainty values ``t_g``, increasing, in the input's dtype.
    cumulative_risk : array of shape (G,)
        ``e_g``: summed instance risk (the error count for boolean input) of the accepted instances.
    n_total : int
        ``N``, the number of evaluated instances.
    """

    coverage: Array
    risk: Array
    threshold: Array
    cumulative_risk: Array
    n_total: int


def curve_from_cumulative(
    thresholds: Array, cum_count: Array, cum_risk: Array, n_total: int, /, *, xp: Namespace
) -> RiskCoverageCurve:
    """Build the curve from cumulative counts ``n_g`` and cumulative risk ``e_g`` at each threshold."""
    fdt = float_dtype(xp)
    coverage = xp.astype(cum_count, fdt)
    cum_risk = xp.astype(cum_risk, fdt)
    risk = cum_risk / coverage
    coverage /= n_total
    return RiskCoverageCurve(
        coverage=coverage, risk=risk, threshold=thresholds, cumulative_risk=cum_risk, n_total=int(n_total)
    )


def curve_from_groups(
    thresholds: Array, group_counts: Array, group_risk: Array, /, *, xp: Namespace
) -> RiskCoverageCurve:
    """Build the curve from per-group counts and summed risk (groups = distinct thresholds, increasing).

    Groups with a zero count must be dropped by the caller: every threshold must be achievable.
    """
    fdt = float_dtype(xp)
    cum_count = xp.cumulative_sum(xp.astype(group_counts, fdt))
    cum_risk = xp.cumulative_sum(xp.astype(group_risk, fdt))
    n_total = round(float(cum_count[-1]))
    return curve_from_cumulative(thresholds, cum_count, cum_risk, n_total, xp=xp)


def step_area(coverage: Array, values: Array, /, *, xp: Namespace) -> float:
    """Right-endpoint step rule ``sum_g (c_g - c_{g-1}) * v_g`` with ``c_0 = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> step_area(np.array([0.25, 0.75, 1.0]), np.array([0.0, 1 / 3, 0.5]), xp=np)
    0.29166666666666663
    """
    # blocked_sum: pairwise sums in blocks of 16,384 terms, the order the fused pass sums in (same bits)
    zero = xp.zeros((1,), dtype=coverage.dtype, device=device(coverage))
    return blocked_sum(xp.diff(coverage, prepend=zero) * values, xp)


def curve_area(curve: RiskCoverageCurve, /, *, generalized: bool = False, ties: str = "step") -> float:
    """Area under a risk-coverage curve: AURC (selective risk) or AUGRC (``generalized=True``).

    ``ties="step"`` is the right-endpoint step rule over the curve's points; ``ties="expected"`` the
    expectation over random orders of tied instances (see [`aurc`][selectivekit.aurc]).

    Examples
    --------
    >>> import numpy as np
    >>> curve = risk_coverage_curve(np.array([0.1, 0.2, 0.2, 0.9]), np.array([1, 1, 0, 0]))
    >>> curve_area(curve), curve_area(curve, ties="expected"), curve_area(curve, generalized=True)
    (0.29166666666666663, 0.27083333333333337, 0.25)
    """
    check_choice(ties, "ties", _TIES)
    xp = array_api_compat.array_namespace(curve.coverage)
    n_total = curve.n_total
    e = curve.cumulative_risk
    if ties == "step":  # the curve's own coverage and risk: the same bits as area_terms' step terms
        v = e / n_total if generalized else curve.risk
        return step_area(curve.coverage, v, xp=xp)
    return _group_areas(xp.round(curve.coverage * n_total), e, n_total, [(generalized, ties)], xp)[0]


_TIES = ("step", "expected")


def _group_areas(
    n: Array, e: Array, n_total: int, areas: list[tuple[bool, str]], xp: Namespace
) -> list[float]:
    """The areas ``[(generalized, ties), ...]`` from the tie groups' cumulative counts ``n_g`` and risk
    ``e_g`` (float arrays of shape (G,))."""
    zero = xp.zeros((1,), dtype=n.dtype, device=device(n))
    n_prev, e_prev = xp.concat([zero, n[:-1]]), xp.concat([zero, e[:-1]])
    return [blocked_sum(area_terms(n_prev, n, e_prev, e, n_total, g, t, xp), xp) for g, t in areas]


def aurc_optimal(n_total: int, n_errors: int) -> float:
    """AURC of the optimal ranking (every correct instance before every wrong one), in closed form.

    With ``N`` instances and ``E`` errors, no ties: ``(1/N) sum_{k=N-E+1}^{N} (k - (N - E)) / k
    = (E - (N - E) (H_N - H_{N-E})) / N`` with harmonic numbers ``H``.

    Examples
    --------
    >>> aurc_optimal(4, 2)  # (2 - 2 (1/3 + 1/4)) / 4
    0.20833333333333337
    """
    if n_total <= 0:
        msg = f"`n_total` must be positive, got {n_total}."
        raise ValueError(msg)
    if not 0 <= n_errors <= n_total:
        msg = f"`n_errors` must be in [0, {n_total}], got {n_errors}."
        raise ValueError(msg)
    n_correct = n_total - n_errors
    if n_errors == 0:
        return 0.0
    if n_correct == 0:
        return 1.0
    if n_errors < 4096:
        tail = math.fsum(1.0 / k for k in range(n_correct + 1, n_total + 1))
    else:
        tail = float(
            harmonic_difference(
                np.asarray([n_correct], dtype=np.float64), np.asarray([n_total], dtype=np.float64), np
            )[0]
        )
    return max(0.0, (n_errors - n_correct * tail) / n_total)


# ----------------------------------------------------------------------------------------------------
# the exact curve and its areas: one sort (the engine: selectivekit._lib.sorted_groups)


def _evaluate(inst, *, want_curve: bool, areas=()):
    """The curve (when asked), the areas ``[(generalized, ties), ...]`` and the error count, one sort.

    NumPy arrays, and PyTorch CPU tensors through a NumPy view of their memory, take the key of
    [`bit_key`][selectivekit._lib.sorted_groups.bit_key]; other namespaces (CUDA tensors, CuPy, JAX) one sort
    in their own namespace.
    """
    # NumPy's SIMD sort is about 20x faster than torch.sort on the CPU: CPU tensors are sorted as NumPy views
    xp, n_total = inst.xp, inst.u.shape[0]
    if inst.is_bool:
        host_u = inst.u if array_api_compat.is_numpy_namespace(xp) else host_view(inst.u)
        got = None
        if host_u is not None:
            host_c = inst.correct if isinstance(inst.correct, np.ndarray) else host_view(inst.correct)
            got = bit_key(host_u, np.ascontiguousarray(host_c))
        if got is not None and not want_curve and all(t == "step" for _, t in areas):
            # the step rule alone: the per-instance fast path (no tie groups formed)
            sums, errors = step_areas(got[0], n_total, [g for g, _ in areas])
            return None, sums, errors
        if got is not None:
            sums, errors, groups = fused_pass(*got, n_total, want_curve, areas)
            curve = None
            if groups is not None:
                thresholds, n, e = groups
                if not array_api_compat.is_numpy_namespace(xp):
                    thresholds, n, e = (xp.asarray(a, device=device(inst.u)) for a in (thresholds, n, e))
                curve = curve_from_cumulative(thresholds, n, e, n_total, xp=xp)
            return curve, sums, errors
        if not want_curve:
            groups = key_groups(inst.u, inst.correct, xp)
            if groups is not None:
                n, e = groups
                return None, _group_areas(n, e, n_total, areas, xp), float(e[-1])
    thresholds, n, e = sorted_groups(inst.u, inst.risk, xp)
    curve = curve_from_cumulative(thresholds, n, e, n_total, xp=xp)
    sums = [curve_area(curve, generalized=g, ties=t) for g, t in areas]
    return curve, sums, float(e[-1])


def _instances(uncertainty, correct, risk, mask, xp):
    return prepare_instances(uncertainty, correct, risk=risk, mask=mask, target="correct_or_risk", xp=xp)


def _curve(
    uncertainty: Array, correct: Array | None, risk: Array | None, mask: Array | None, xp: Namespace | None
) -> tuple[RiskCoverageCurve, Namespace]:
    """Validate, then the exact curve; returns the curve and the namespace."""
    inst = _instances(uncertainty, correct, risk, mask, xp)
    return _evaluate(inst, want_curve=True)[0], inst.xp


def _area(uncertainty, correct, risk, mask, xp, generalized: bool, ties: str) -> float:
    check_choice(ties, "ties", _TIES)
    inst = _instances(uncertainty, correct, risk, mask, xp)
    return _evaluate(inst, want_curve=False, areas=[(generalized, ties)])[1][0]


# ----------------------------------------------------------------------------------------------------
# public API


def risk_coverage_curve(
    uncertainty: Array,
    correct: Array | None = None,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> RiskCoverageCurve:
    """Selective risk at every distinct uncertainty threshold.

    Parameters
    ----------
    uncertainty : array of any shape
        Per-instance uncertainty, higher = less confident; finite real values.
    correct : array of the same shape, optional
        Boolean (or 0/1) correctness; instance risk is ``1 - correct``. Pass this or ``risk``.
    risk : array of the same shape, optional
        Per-instance loss in [0, 1] (keyword-only).
    mask : bool array of the same shape, optional
        Instances to evaluate (e.g. exclude padding).

    Returns
    -------
    RiskCoverageCurve
        ``coverage``, ``risk``, ``threshold`` (arrays of shape (G,), in the input's namespace and device),
        in increasing coverage, one entry per distinct uncertainty value.

    Notes
    -----
    ``risk_g = e(u <= t_g) / #{u <= t_g}``. Tied instances enter the accepted set together, so the curve does
    not depend on the order of tied scores. Cost: one sort of a key carrying the correctness flag (boolean
    input) or one argsort (float risk). Areas of the curve:
    [`curve_area`][selectivekit.risk_coverage.curve_area].

    Examples
    --------
    >>> import numpy as np
    >>> curve = risk_coverage_curve(np.array([0.1, 0.2, 0.2, 0.9]), np.array([1, 1, 0, 0]))
    >>> curve.coverage, curve.risk
    (array([0.25, 0.75, 1.  ]), array([0.        , 0.33333333, 0.5       ]))
    """
    return _curve(uncertainty, correct, risk, mask, xp)[0]


def aurc(
    uncertainty: Array,
    correct: Array | None = None,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    ties: str = "step",
    xp: Namespace | None = None,
) -> float:
    """Area under the risk-coverage curve (lower is better).

    Parameters
    ----------
    uncertainty, correct, risk, mask
        As for [`risk_coverage_curve`][selectivekit.risk_coverage_curve].
    ties : {"step", "expected"}
        How tied uncertainties count (see Notes). Both give the same value when no two values are equal.

    Returns
    -------
    float
        ``sum_g (c_g - c_{g-1}) * risk_g``, in [0, 1].

    Notes
    -----
    ``ties="step"`` (default): right-endpoint step rule over the achievable operating points. Without ties
    this equals Geifman & El-Yaniv's ``(1/N) sum_k r(k/N)`` exactly; with ties it is the area of the curve a
    user can actually operate on (no tie is split), the rule of scikit-learn's ``average_precision_score``.

    ``ties="expected"``: the exact expectation of ``(1/N) sum_k r(k/N)`` over uniformly random orders of the
    tied instances, in closed form. A tie group of ``m`` instances after ``a`` accepted ones, with ``w``
    errors (summed risk) in the group and ``e`` before it, adds
    ``(w + (e - a w / m) (H_{a+m} - H_a)) / N`` with harmonic numbers ``H``. This is what fd-shifts'
    linear interpolation across a tie approximates (they agree up to O(1/N)).

    Both rules are invariant to the order of the input. Cost: one sort (of a key that carries the
    correctness flag for boolean ``correct``, an argsort for soft ``risk``) and one pass; no temporary
    larger than the sort key. Different input types take different summation orders, so their values can
    differ in the last digits (relative differences far below 1e-11).

    References
    ----------
    Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019.

    Examples
    --------
    >>> import numpy as np
    >>> aurc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False]))
    0.20833333333333331
    >>> u, correct = np.array([0.1, 0.2, 0.2]), np.array([True, True, False])
    >>> aurc(u, correct), aurc(u, correct, ties="expected")
    (0.22222222222222218, 0.19444444444444445)
    """
    return _area(uncertainty, correct, risk, mask, xp, False, ties)


def augrc(
    uncertainty: Array,
    correct: Array | None = None,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    ties: str = "step",
    xp: Namespace | None = None,
) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., 2024; lower is better).

    Same rules as [`aurc`][selectivekit.aurc] with the generalized risk ``e(u <= t_g) / N`` (errors
    accepted, as a share of all instances) instead of the selective risk. With ``ties="expected"`` a tie
    group of ``m`` instances with ``w`` errors after ``e`` accepted errors adds ``(m e + w (m + 1) / 2) /
    N**2``; for boolean ``correct`` this equals ``(E (E + 1) / 2 + (1 - AUROC) E C) / N**2`` with ``E``
    errors, ``C`` correct instances and the AUROC of ``u`` for detecting errors, ties counted as one half.

    References
    ----------
    Traub et al., "Overcoming Common Flaws in the Evaluation of Selective Classification Systems", 2024.

    Examples
    --------
    >>> import numpy as np
    >>> augrc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False]))
    0.1875
    """
    return _area(uncertainty, correct, risk, mask, xp, True, ties)


def _optimal_aurc(n: int, soft_risk: Array | None, n_errors: float, xp: Namespace) -> float:
    if soft_risk is None:
        return aurc_optimal(n, round(n_errors))
    return soft_optimal_aurc(xp.sort(xp.astype(soft_risk, float_dtype(xp)), stable=False), xp)


def e_aurc(
    uncertainty: Array,
    correct: Array | None = None,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    ties: str = "step",
    xp: Namespace | None = None,
) -> float:
    """Excess AURC: ``aurc - aurc_optimal`` (lower is better; 0 for a perfect ranking).

    The optimal ranking accepts every correct instance before every wrong one; for boolean correctness its
    AURC has a closed form in the error count ([`aurc_optimal`][selectivekit.risk_coverage.aurc_optimal]). For
    a soft ``risk`` it sorts by risk. ``ties`` applies to the AURC of ``uncertainty`` (as for
    [`aurc`][selectivekit.aurc]); the optimal ranking has no ties.

    Examples
    --------
    >>> import numpy as np
    >>> e_aurc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False]))
    0.0
    """
    check_choice(ties, "ties", _TIES)
    inst = _instances(uncertainty, correct, risk, mask, xp)
    _, (area,), n_errors = _evaluate(inst, want_curve=False, areas=[(False, ties)])
    return float(excess_aurc(area, _optimal_aurc(inst.u.shape[0], inst.soft_risk, n_errors, inst.xp)))


def risk_at_coverage(
    uncertainty: Array,
    correct: Array,
    coverage: float,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Selective risk at the operating point chosen for ``coverage`` (lower is better).

    The operating point is that of [`selectivekit.coverage_threshold`][selectivekit.coverage_threshold]: the
    smallest observed threshold
    whose coverage is at least ``coverage``; its realized coverage may be higher when ties straddle it.

    Examples
    --------
    >>> import numpy as np
    >>> risk_at_coverage(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 0]), 0.75)
    0.3333333333333333
    """
    c = check_coverage(coverage)
    curve, xp = _curve(uncertainty, correct, risk, mask, xp)
    return float(curve.risk[group_at_coverage(curve.coverage * curve.n_total, c, xp=xp)])


def coverage_at_risk(
    uncertainty: Array,
    correct: Array,
    max_risk: float,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Largest achievable coverage whose selective risk is ``<= max_risk`` (higher is better).

    Returns 0.0 when no threshold reaches that risk.

    Examples
    --------
    >>> import numpy as np
    >>> coverage_at_risk(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 0]), 0.25)
    0.5
    """
    r = check_probability(max_risk, "max_risk")
    curve, xp = _curve(uncertainty, correct, risk, mask, xp)
    ok = curve.risk <= r
    if not bool(xp.any(ok)):
        return 0.0
    return float(xp.max(xp.where(ok, curve.coverage, xp.zeros_like(curve.coverage))))

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
streaming accumulators, the segmentation metrics and the framework adapters: each formula lives here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import array_api_compat

from ._lib import check_coverage, check_probability, device, float_dtype, int_dtype, prepare_instances
from .selective import group_at_coverage
from .typing import Array, Namespace

__all__ = [
    "RiskCoverageCurve",
    "augrc",
    "aurc",
    "aurc_optimal",
    "coverage_at_risk",
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
    """Right-endpoint step rule ``sum_g (c_g - c_{g-1}) * v_g`` with ``c_0 = 0``."""
    zero = xp.zeros((1,), dtype=coverage.dtype, device=device(coverage))
    return float(xp.vecdot(xp.diff(coverage, prepend=zero), values))


def _harmonic(n: int) -> float:
    """H_n = sum_{k=1}^n 1/k, exact summation for small n, asymptotic series (error < 1e-17) beyond."""
    if n < 256:
        return math.fsum(1.0 / k for k in range(1, n + 1))
    inv = 1.0 / n
    inv2 = inv * inv
    return math.log(n) + 0.5772156649015329 + 0.5 * inv - inv2 / 12 + inv2 * inv2 / 120


def aurc_optimal(n_total: int, n_errors: int) -> float:
    """AURC of the optimal ranking (every correct instance before every wrong one), in closed form.

    With ``N`` instances and ``E`` errors, no ties: ``(1/N) sum_{k=N-E+1}^{N} (k - (N - E)) / k
    = (E - (N - E) (H_N - H_{N-E})) / N`` with harmonic numbers ``H``.
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
        tail = _harmonic(n_total) - _harmonic(n_correct)
    return max(0.0, (n_errors - n_correct * tail) / n_total)


# ----------------------------------------------------------------------------------------------------
# the exact curve: one sort


def _cumulative(u: Array, inst: Array, is_bool: bool, xp: Namespace) -> RiskCoverageCurve:
    """The curve from flat ``u`` and instance risk, with one sort of ``u``."""
    n = u.shape[0]
    if is_bool and array_api_compat.is_numpy_namespace(xp):
        s, cum_all = _sort_with_error_bit(u, inst)
    else:
        # Unstable sorts: the order of tied values never matters here, every tie group is used whole.
        order = xp.argsort(u, stable=False)
        s = xp.take(u, order)
        cum_all = xp.cumulative_sum(xp.take(xp.astype(inst, float_dtype(xp)), order))
    true = xp.ones((1,), dtype=xp.bool, device=device(u))
    ends = xp.nonzero(xp.concat([s[1:] != s[:-1], true]))[0]
    if ends.shape[0] < n:  # ties: keep the last position of each group of equal values
        s, cum_all = xp.take(s, ends), xp.take(cum_all, ends)
    return curve_from_cumulative(s, ends + 1, cum_all, n, xp=xp)


def _sort_with_error_bit(u: Array, wrong: Array) -> tuple[Array, Array]:
    """NumPy fast path: sort ``u`` once with each instance's error flag riding in the key's lowest bit.

    An argsort is ~4x slower than sorting values (PERF_NOTES), so the flag travels inside the sorted key:
    for non-negative floats the IEEE bit pattern is monotone and its top bit is free, so
    ``(bits << 1) | wrong`` sorts like ``u`` and keeps tied values adjacent (-0.0 is normalised first).
    Negative float32 values use float64 keys instead: the flag goes into a mantissa bit that float32 does
    not have, which never moves a key past another float32 value. Other inputs take the argsort path.
    Returns the sorted values and the cumulative error count along them.
    """
    import numpy as np

    if u.dtype not in (np.float32, np.float64):
        u = u.astype(np.float64 if u.dtype.itemsize > 2 else np.float32)
    flag = wrong.view(np.uint8)
    # The left shift drops the sign bit, so -0.0 lands on +0.0's key (they compare equal).
    if u.dtype == np.float32 and u.min() >= 0:
        key = u.view(np.uint32) << np.uint32(1)
        key |= flag
        key.sort()
        s = (key >> np.uint32(1)).view(np.float32)
        key &= np.uint32(1)
    elif u.dtype == np.float64 and u.min() >= 0:
        key = u.view(np.uint64) << np.uint64(1)
        key |= flag
        key.sort()
        s = (key >> np.uint64(1)).view(np.float64)
        key &= np.uint64(1)
    elif u.dtype == np.float32:
        key = (u + np.float32(0.0)).astype(np.float64).view(np.uint64)  # + 0.0: -0.0 -> +0.0
        key |= flag
        key.view(np.float64).sort()
        s = (key & ~np.uint64(1)).view(np.float64).astype(np.float32)
        key &= np.uint64(1)
    else:
        order = np.argsort(u)
        return u[order], np.cumsum(wrong[order], dtype=np.int64)
    return s, np.cumsum(key, dtype=np.int64 if key.shape[0] >= 2**31 else np.int32)


def _curve(
    uncertainty: Array, correct: Array | None, risk: Array | None, mask: Array | None, xp: Namespace | None
) -> tuple[RiskCoverageCurve, Namespace]:
    """Validate, then the exact curve; returns the curve and the namespace."""
    inst = prepare_instances(uncertainty, correct, risk=risk, mask=mask, target="correct_or_risk", xp=xp)
    return _cumulative(inst.u, inst.risk, inst.is_bool, inst.xp), inst.xp


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
    not depend on the order of tied scores. Cost: one sort of ``u`` and one of the wrong instances' ``u``
    (boolean input) or one argsort (float risk).

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
    xp: Namespace | None = None,
) -> float:
    """Area under the risk-coverage curve (lower is better).

    Parameters
    ----------
    uncertainty, correct, risk, mask
        As for [`risk_coverage_curve`][selectivekit.risk_coverage_curve].

    Returns
    -------
    float
        ``sum_g (c_g - c_{g-1}) * risk_g``, in [0, 1].

    Notes
    -----
    Right-endpoint step rule over the achievable operating points. Without ties this equals Geifman &
    El-Yaniv's ``(1/N) sum_k r(k/N)`` exactly; with ties it is the area of the curve a user can actually
    operate on (no tie is split), and it does not depend on input order.

    References
    ----------
    Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019.

    Examples
    --------
    >>> import numpy as np
    >>> aurc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False]))
    0.20833333333333331
    """
    curve, xp = _curve(uncertainty, correct, risk, mask, xp)
    return step_area(curve.coverage, curve.risk, xp=xp)


def augrc(
    uncertainty: Array,
    correct: Array | None = None,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., 2024; lower is better).

    Same step rule as [`aurc`][selectivekit.aurc] with the generalized risk ``e(u <= t_g) / N`` (errors
    accepted, as a
    share of all instances) instead of the selective risk.

    References
    ----------
    Traub et al., "Overcoming Common Flaws in the Evaluation of Selective Classification Systems", 2024.

    Examples
    --------
    >>> import numpy as np
    >>> augrc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False]))
    0.1875
    """
    curve, xp = _curve(uncertainty, correct, risk, mask, xp)
    return step_area(curve.coverage, curve.cumulative_risk / curve.n_total, xp=xp)


def _optimal_aurc(u_risk: Array, is_bool: bool, xp: Namespace) -> float:
    n = u_risk.shape[0]
    if is_bool:
        return aurc_optimal(n, int(xp.sum(xp.astype(u_risk, int_dtype(xp)))))
    # Soft risk: the best ranking accepts the lowest-risk instances first.
    ordered = xp.cumulative_sum(xp.sort(xp.astype(u_risk, float_dtype(xp)), stable=False))
    k = xp.arange(1, n + 1, dtype=ordered.dtype, device=device(ordered))
    return float(xp.sum(ordered / k)) / n


def e_aurc(
    uncertainty: Array,
    correct: Array | None = None,
    /,
    *,
    risk: Array | None = None,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """Excess AURC: ``aurc - aurc_optimal`` (lower is better; 0 for a perfect ranking).

    The optimal ranking accepts every correct instance before every wrong one; for boolean correctness its
    AURC has a closed form in the error count ([`aurc_optimal`][selectivekit.risk_coverage.aurc_optimal]). For
    a soft ``risk`` it sorts by risk.

    Examples
    --------
    >>> import numpy as np
    >>> e_aurc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False]))
    0.0
    """
    inst = prepare_instances(uncertainty, correct, risk=risk, mask=mask, target="correct_or_risk", xp=xp)
    risk_, xp = inst.risk, inst.xp
    curve = _cumulative(inst.u, risk_, inst.is_bool, xp)
    value = step_area(curve.coverage, curve.risk, xp=xp) - _optimal_aurc(risk_, inst.is_bool, xp)
    return max(value, 0.0) if abs(value) < 1e-12 else value


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

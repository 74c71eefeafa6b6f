"""Thresholds, coverage, selective accuracy ``psi_c`` and ``gamma``.

An operating point is a threshold ``t`` on the uncertainty: accept ``X_l = {u <= t}``, refer
``X_h = {u > t}``. Tied instances are accepted or referred together; nothing splits a tie, so the realized
coverage can exceed the requested one. Every identity of Theorem 1 uses the realized coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._lib import check_coverage, device, int_dtype, prepare_instances
from .typing import Array, Namespace

__all__ = [
    "SelectiveSplit",
    "coverage_threshold",
    "gamma",
    "group_at_coverage",
    "required_count",
    "selective_accuracy",
    "selective_split",
]


@dataclass(frozen=True)
class SelectiveSplit:
    """One operating point.

    Attributes
    ----------
    threshold : float
        ``t``; instances with ``u <= t`` are accepted.
    coverage : float
        Realized coverage ``|X_l| / N``.
    n_accepted, n_referred : int
        ``|X_l|`` and ``|X_h|``.
    errors_accepted, errors_referred : int
        Wrong instances in ``X_l`` and ``X_h``.
    psi_c : float
        Selective accuracy on ``X_l`` (higher is better).
    psi_1 : float
        Plain accuracy on all instances.
    gamma : float
        Share of wrong instances among the referred; NaN when nothing is referred.
    """

    threshold: float
    coverage: float
    n_accepted: int
    n_referred: int
    errors_accepted: int
    errors_referred: int
    psi_c: float
    psi_1: float
    gamma: float


def required_count(coverage: float, n: Any) -> Any:
    """``k = ceil(c * N)``: how many instances the operating point for ``coverage`` must accept.

    Robust to float error in ``c * N`` (``0.3 * 10`` is ``3.0000000000000004``, which must give 3), and
    clipped to ``[1, N]``. ``n`` is an int (the result is an int) or a NumPy array of counts (the result
    is an array of the same shape, e.g. one count per bootstrap resample).

    Examples
    --------
    >>> required_count(0.3, 10), required_count(0.31, 10), required_count(1e-9, 10)
    (3, 4, 1)
    >>> required_count(0.5, np.array([3.0, 10.0]))
    array([2., 5.])
    """
    n_float = np.asarray(n, dtype=np.float64)
    k = np.minimum(n_float, np.maximum(1.0, np.ceil(coverage * n_float * (1.0 - 1e-12))))
    return int(k) if np.ndim(n) == 0 else k


def group_at_coverage(cum_count: Array, coverage: float, /, *, xp: Namespace) -> int:
    """Index of the group (distinct threshold or grid cell) that the operating point for ``coverage`` reaches.

    Parameters
    ----------
    cum_count : array of shape (G,)
        Instances accepted at each group's threshold, increasing (integers, or floats holding integers);
        the last entry is ``N``.
    coverage : float in (0, 1]
        The requested coverage.

    Returns
    -------
    int
        The first ``g`` with ``cum_count[g] >= k``, ``k = required_count(coverage, N)``: the smallest
        achievable threshold whose coverage is at least ``coverage`` (ties are never split). Shared by the
        risk-coverage functions, the Dice groups, the streaming accumulators and the framework metrics.

    Examples
    --------
    >>> import numpy as np
    >>> group_at_coverage(np.array([2, 3, 6, 10]), 0.5, xp=np)  # k = 5: the third group holds it
    2
    """
    n = round(float(cum_count[-1]))
    k = required_count(coverage, n)
    if xp.isdtype(cum_count.dtype, "integral"):
        target = xp.asarray([k], dtype=cum_count.dtype, device=device(cum_count))
    else:  # float counts (coverage * N) may be off by rounding: compare with k - 1/2
        target = xp.asarray([k - 0.5], dtype=cum_count.dtype, device=device(cum_count))
    return int(xp.searchsorted(cum_count, target, side="left")[0])


def _threshold_from_sorted(s: Array, coverage: float, xp: Namespace) -> tuple[float, int]:
    """Threshold ``u_(k)`` and the number of instances ``<= u_(k)`` in sorted ``s``."""
    n = s.shape[0]
    t = s[required_count(coverage, n) - 1]
    n_accepted = int(xp.searchsorted(s, xp.reshape(t, (1,)), side="right")[0])
    return float(t), n_accepted


def coverage_threshold(
    uncertainty: Array, coverage: float, /, *, mask: Array | None = None, xp: Namespace | None = None
) -> tuple[float, float]:
    """Smallest observed threshold whose coverage is at least ``coverage``.

    Parameters
    ----------
    uncertainty : array of any shape
        Per-instance uncertainty (higher = less confident).
    coverage : float in (0, 1]
        Requested coverage ``c``.
    mask : bool array of the same shape, optional
        Instances to consider.

    Returns
    -------
    (threshold, realized_coverage) : tuple of float
        ``t = u_(k)``, the k-th smallest value with ``k = ceil(c N)``, and ``#{u <= t} / N``.

    Notes
    -----
    With ties at ``u_(k)`` the realized coverage exceeds ``c``: the tie is accepted whole.

    Examples
    --------
    >>> import numpy as np
    >>> coverage_threshold(np.array([0.0, 0.0, 0.0, 0.5]), 0.5)
    (0.0, 0.75)
    """
    c = check_coverage(coverage)
    u, _, _, xp = prepare_instances(uncertainty, mask=mask, target="none", xp=xp)
    t, n_accepted = _threshold_from_sorted(xp.sort(u, stable=False), c, xp)
    return t, n_accepted / u.shape[0]


def _split(u: Array, correct: Array, coverage: float, xp: Namespace) -> SelectiveSplit:
    n = u.shape[0]
    t, n_accepted = _threshold_from_sorted(xp.sort(u, stable=False), coverage, xp)
    wrong = ~correct
    n_errors = int(xp.sum(xp.astype(wrong, int_dtype(xp))))
    accepted = u <= t
    errors_accepted = int(xp.sum(xp.astype(wrong & accepted, int_dtype(xp))))
    n_referred = n - n_accepted
    errors_referred = n_errors - errors_accepted
    return SelectiveSplit(
        threshold=t,
        coverage=n_accepted / n,
        n_accepted=n_accepted,
        n_referred=n_referred,
        errors_accepted=errors_accepted,
        errors_referred=errors_referred,
        psi_c=(n_accepted - errors_accepted) / n_accepted,
        psi_1=(n - n_errors) / n,
        gamma=errors_referred / n_referred if n_referred else math.nan,
    )


def selective_split(
    uncertainty: Array,
    correct: Array,
    coverage: float,
    /,
    *,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> SelectiveSplit:
    """Accept/refer split at the threshold chosen for ``coverage``, with every count and rate.

    Parameters
    ----------
    uncertainty : array of any shape
        Per-instance uncertainty (higher = less confident).
    correct : array of the same shape
        Boolean (or 0/1) correctness of each prediction.
    coverage : float in (0, 1]
        Requested coverage; the threshold is [`coverage_threshold`][selectivekit.coverage_threshold]'s.
    mask : bool array of the same shape, optional
        Instances to evaluate.

    Returns
    -------
    SelectiveSplit

    Examples
    --------
    >>> import numpy as np
    >>> s = selective_split(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 1, 0]), 0.5)
    >>> s.coverage, s.psi_c, s.gamma
    (0.5, 1.0, 0.5)
    """
    c = check_coverage(coverage)
    u, correct, _, xp = prepare_instances(uncertainty, correct, mask=mask, xp=xp)
    return _split(u, correct, c, xp)


def selective_accuracy(
    uncertainty: Array,
    correct: Array,
    coverage: float,
    /,
    *,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """``psi_c``: accuracy on the accepted instances at ``coverage`` (higher is better).

    Examples
    --------
    >>> import numpy as np
    >>> selective_accuracy(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 1, 0]), 0.5)
    0.5
    """
    return selective_split(uncertainty, correct, coverage, mask=mask, xp=xp).psi_c


def gamma(
    uncertainty: Array,
    correct: Array,
    coverage: float,
    /,
    *,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> float:
    """``gamma``: share of wrong predictions among the referred instances (higher is better).

    NaN when nothing is referred (realized coverage 1), where it is undefined.

    Examples
    --------
    >>> import numpy as np
    >>> gamma(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 1]), 0.5)
    0.5
    """
    return selective_split(uncertainty, correct, coverage, mask=mask, xp=xp).gamma

"""Theorem 1 of Ding et al. (2020): how ``psi_c``, ``psi_1`` and ``gamma`` are tied.

For a realized coverage ``c`` in (0, 1):

(ii)  ``psi_c = (psi_1 - (1 - gamma)(1 - c)) / c`` with ``(1 - gamma)(1 - c)`` in ``[psi_1 - c, psi_1]``;
(iii) ``d psi_c / d gamma = (1 - c) / c`` and ``d psi_c / d psi_1 = 1 / c``, both positive.
      (The paper's Appendix B prints ``gamma (1 - c) / c`` for the first; differentiating (ii) gives
      ``(1 - c) / c``. This module implements the corrected form.)
(i)   ``gamma`` is maximal at every achievable threshold iff no correct instance has a strictly higher
      uncertainty than a wrong one. (With ties the paper's "every wrong u exceeds every correct u" is
      sufficient but not necessary: a tie is never split, so a tied correct/wrong pair never hurts gamma.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._lib import check_coverage, check_probability, int_dtype, prepare_instances
from .selective import selective_split
from .typing import Array, Namespace

__all__ = [
    "Theorem1Check",
    "check_theorem1",
    "dpsi_dgamma",
    "dpsi_dpsi1",
    "gamma_bounds",
    "psi_c_from",
]


def psi_c_from(psi_1: float, gamma: float, coverage: float) -> float:
    """Selective accuracy implied by Theorem 1 (ii): ``(psi_1 - (1 - gamma)(1 - c)) / c``.

    At ``c == 1`` nothing is referred and the result is ``psi_1`` whatever ``gamma`` (NaN allowed).

    Examples
    --------
    >>> psi_c_from(0.9, 0.5, 0.8)
    1.0
    """
    p1 = check_probability(psi_1, "psi_1")
    c = check_coverage(coverage)
    undefined = isinstance(gamma, float) and math.isnan(gamma)  # gamma with nothing referred
    g = math.nan if c == 1.0 and undefined else check_probability(gamma, "gamma")
    if c == 1.0:
        return p1
    return (p1 - (1.0 - g) * (1.0 - c)) / c


def gamma_bounds(psi_1: float, coverage: float) -> tuple[float, float]:
    """Range of ``gamma`` compatible with ``psi_1`` at coverage ``c`` (from the constraint in (ii)).

    ``(1 - gamma)(1 - c)`` in ``[psi_1 - c, psi_1]`` gives
    ``gamma`` in ``[max(0, (1 - c - psi_1) / (1 - c)), min(1, (1 - psi_1) / (1 - c))]``: the referred set
    cannot hold more errors than exist, nor fewer than those the accepted set has no room for.
    At ``c == 1`` nothing is referred and both bounds are NaN (``gamma`` is undefined).

    Examples
    --------
    >>> gamma_bounds(0.9, 0.8)
    (0.0, 0.5)
    """
    p1 = check_probability(psi_1, "psi_1")
    c = check_coverage(coverage)
    if c == 1.0:
        return math.nan, math.nan
    low = max(0.0, (1.0 - c - p1) / (1.0 - c))
    high = min(1.0, (1.0 - p1) / (1.0 - c))
    return low, high


def dpsi_dgamma(coverage: float) -> float:
    """``d psi_c / d gamma = (1 - c) / c`` (the corrected Appendix B derivative; >= 0).

    Examples
    --------
    >>> dpsi_dgamma(0.8)
    0.24999999999999994
    """
    c = check_coverage(coverage)
    return (1.0 - c) / c


def dpsi_dpsi1(coverage: float) -> float:
    """``d psi_c / d psi_1 = 1 / c`` (> 0).

    Examples
    --------
    >>> dpsi_dpsi1(0.5)
    2.0
    """
    return 1.0 / check_coverage(coverage)


@dataclass(frozen=True)
class Theorem1Check:
    """Both sides of Theorem 1 computed from data at one operating point.

    Attributes
    ----------
    holds : bool
        (ii) holds to float precision and ``gamma`` lies within
        [`gamma_bounds`][selectivekit.theorem.gamma_bounds].
    lhs : float
        ``psi_c`` measured on the accepted instances.
    rhs : float
        ``psi_c_from(psi_1, gamma, c)`` from the measured ``psi_1``, ``gamma`` and realized ``c``.
    coverage, psi_1, gamma : float
        The realized operating point (``gamma`` NaN when nothing is referred).
    gamma_low, gamma_high : float
        [`gamma_bounds`][selectivekit.theorem.gamma_bounds] at this point.
    gamma_maximal : bool
        ``gamma`` equals the largest value any ranking could reach with these referred counts.
    ranking_separates : bool
        No correct instance has a strictly higher uncertainty than a wrong one (Theorem 1 (i): this holds
        iff ``gamma`` is maximal at every achievable threshold).
    """

    holds: bool
    lhs: float
    rhs: float
    coverage: float
    psi_1: float
    gamma: float
    gamma_low: float
    gamma_high: float
    gamma_maximal: bool
    ranking_separates: bool


def check_theorem1(
    uncertainty: Array,
    correct: Array,
    coverage: float,
    /,
    *,
    mask: Array | None = None,
    xp: Namespace | None = None,
) -> Theorem1Check:
    """Verify Theorem 1 (ii) on data at the operating point chosen for ``coverage``.

    Parameters
    ----------
    uncertainty, correct, coverage, mask
        As for [`selectivekit.selective_split`][selectivekit.selective_split].

    Returns
    -------
    Theorem1Check

    Examples
    --------
    >>> import numpy as np
    >>> chk = check_theorem1(np.array([0.1, 0.1, 0.3, 0.9]), np.array([1, 0, 1, 0]), 0.5)
    >>> chk.holds, chk.coverage, chk.lhs == chk.rhs
    (True, 0.5, True)
    """
    c = check_coverage(coverage)
    u, correct, _, xp = prepare_instances(uncertainty, correct, mask=mask, xp=xp)
    split = selective_split(u, correct, c, xp=xp)  # on the validated, flat, masked instances
    rc = split.coverage
    rhs = psi_c_from(split.psi_1, split.gamma, rc)
    low, high = gamma_bounds(split.psi_1, rc)
    tol = 1e-12
    if split.n_referred:
        most_errors = min(split.errors_accepted + split.errors_referred, split.n_referred)
        in_bounds = low - tol <= split.gamma <= high + tol
    else:
        most_errors, in_bounds = 0, True
    wrong = ~correct
    n_wrong = int(xp.sum(xp.astype(wrong, int_dtype(xp))))
    separates = True
    if 0 < n_wrong < u.shape[0]:
        separates = bool(xp.min(u[wrong]) >= xp.max(u[correct]))
    return Theorem1Check(
        holds=bool(abs(split.psi_c - rhs) <= 1e-9 and in_bounds),
        lhs=split.psi_c,
        rhs=rhs,
        coverage=rc,
        psi_1=split.psi_1,
        gamma=split.gamma,
        gamma_low=low,
        gamma_high=high,
        gamma_maximal=split.errors_referred == most_errors,
        ranking_separates=separates,
    )

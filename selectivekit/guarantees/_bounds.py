"""The upper confidence bounds behind the guaranteed thresholds: the exact binomial (Clopper–Pearson) bound,
Hoeffding–Bentkus, and the Waudby-Smith–Ramdas betting bound."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import load_scipy


def binomial_upper_bound(errors: int, n: int, delta: float) -> float:
    """Largest ``b`` with ``P(Binomial(n, b) <= errors) >= delta``: the exact (Clopper–Pearson) bound.

    ``P(Bin(n, b) <= e) = I_{1-b}(n - e, e + 1)`` (regularized incomplete beta), so the equation
    ``P(Bin(n, b) <= e) = delta`` is solved by SciPy's numerical inverse ``betaincinv``.
    """
    if errors >= n:
        return 1.0
    scipy = load_scipy()
    return float(scipy.special.betaincinv(errors + 1, n - errors, 1.0 - delta))


def hb_p_value(loss: Any, alpha: float, n: int) -> Any:
    """Hoeffding–Bentkus p-value of ``H0: risk > alpha`` for a mean ``loss`` of ``n`` losses in [0, 1]; a
    float for a float ``loss``, an array of p-values for an array of mean losses."""
    scipy = load_scipy()
    mean = np.asarray(loss, dtype=np.float64)
    a = np.minimum(mean, alpha)
    # a log(a / alpha) + (1 - a) log((1 - a) / (1 - alpha)), with 0 log 0 = 0 (alpha may be 0 here: the
    # upper bound's search starts at alpha = loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(a > 0, a * np.log(a / alpha), 0.0) + np.where(
            a < 1, (1 - a) * np.log((1 - a) / (1 - alpha)), 0.0
        )
    hoeffding = np.exp(-n * h1)
    bentkus = math.e * scipy.special.bdtr(np.ceil(n * mean - 1e-9), n, alpha)  # the binomial CDF
    p = np.minimum(1.0, np.minimum(hoeffding, bentkus))
    return float(p) if p.ndim == 0 else p


# brentq's tolerances for the bound: |found - root| <= xtol + rtol |root|. The 60-step bisection this replaced
# was exact to the last bit or two; these keep the reported bound within about 1e-15 of it, at a handful of
# evaluations instead of 61 (rtol is brentq's smallest allowed, 4 machine epsilons).
BOUND_XTOL = 1e-15
BOUND_RTOL = 4 * float(np.finfo(np.float64).eps)


def hb_upper_bound(loss: float, n: int, delta: float) -> float:
    """Smallest ``alpha`` whose Hoeffding–Bentkus p-value at ``loss`` is at most ``delta``.

    The p-value falls continuously as ``alpha`` rises from ``loss`` (where it is 1), so the bound is the root
    of ``p(alpha) - delta`` on ``[loss, 1)``, found by ``scipy.optimize.brentq``; 1.0 when even ``alpha``
    just below 1 does not reach ``delta``.
    """
    scipy = load_scipy()
    top = 1.0 - 1e-12  # p-value at alpha = 1 divides by 1 - alpha

    def excess(alpha: float) -> float:
        return hb_p_value(loss, alpha, n) - delta

    if excess(top) > 0:
        return 1.0
    if excess(loss) <= 0:  # brentq needs a sign change; not reached for delta < 1 (p-value 1 at alpha = loss)
        return loss
    bound = float(scipy.optimize.brentq(excess, loss, top, xtol=BOUND_XTOL, rtol=BOUND_RTOL))
    # brentq's root may lie just below the true one, where the p-value is still above delta; the bound must
    # be on the side that passes, as the bisection's upper end was, so step past the tolerance when needed.
    step = BOUND_XTOL + BOUND_RTOL * bound
    while excess(bound) > 0:
        bound = min(bound + step, top)
    return bound


def wsr_log_capital(losses: np.ndarray, level: float, delta: float) -> np.ndarray:
    """``max_i log K_i(level)`` of each row of ``losses`` (shape (m, n), values in [0, 1], read in order).

    The Waudby-Smith–Ramdas hedged capital process of Bates et al. (2021), Proposition 5:
    ``mu_i = (1/2 + sum_{j<=i} L_j) / (1 + i)``, ``s2_i = (1/4 + sum_{j<=i} (L_j - mu_j)^2) / (1 + i)``,
    ``nu_i = min(1, sqrt(2 log(1/delta) / (n s2_{i-1})))`` with ``s2_0 = 1/4``, and
    ``K_i(R) = prod_{j<=i} (1 - nu_j (L_j - R))``. Under ``E[L] >= R`` the capital is a nonnegative
    supermartingale, so by Ville's inequality ``P(max_i K_i(R) >= 1/delta) <= delta``. ``K_0 = 1`` is included
    (the maximum is at least 0).
    """
    n = losses.shape[1]
    steps = np.arange(1, n + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(losses, axis=1)) / (1.0 + steps)
    s2 = (0.25 + np.cumsum((losses - mu) ** 2, axis=1)) / (1.0 + steps)
    s2_before = np.concatenate([np.full((losses.shape[0], 1), 0.25), s2[:, :-1]], axis=1)
    nu = np.minimum(1.0, np.sqrt(2.0 * math.log(1.0 / delta) / (n * s2_before)))
    with np.errstate(divide="ignore"):
        log_k = np.cumsum(np.log1p(-nu * (losses - level)), axis=1)
    return np.maximum(log_k.max(axis=1), 0.0)


def wsr_p_value(losses: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """The p-value ``min(1, 1 / max_i K_i(alpha))`` of ``H0: E[L] > alpha`` for each row of ``losses``;
    ``delta`` sets the betting fractions (the level the test is run at)."""
    return np.exp(-wsr_log_capital(losses, alpha, delta))


def wsr_upper_bound(losses: np.ndarray, delta: float) -> float:
    """The Waudby-Smith–Ramdas upper confidence bound on the mean of ``losses`` (one 1-D array in [0, 1], read
    in order): the smallest ``R`` with ``max_i K_i(R) >= 1/delta``, valid with probability ``1 - delta``."""
    row = np.asarray(losses, dtype=np.float64).reshape(1, -1)
    target = math.log(1.0 / delta)

    def excess(r: float) -> float:
        return float(wsr_log_capital(row, r, delta)[0]) - target

    if excess(1.0) < 0:
        return 1.0
    if excess(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 1.0  # the capital rises with R: bisection to 2**-52
    for _ in range(53):
        mid = 0.5 * (lo + hi)
        if excess(mid) >= 0:
            hi = mid
        else:
            lo = mid
    return hi

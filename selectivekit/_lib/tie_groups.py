"""Tie groups and the areas computed from them: the one home of each AURC-family formula.

A tie group is a run of equal values in sorted order. Every area of the risk-coverage family (AURC, AUGRC,
e-AURC; exact, fused, streamed or weighted by a bootstrap) is computed from the groups' cumulative counts
``n_g`` and cumulative risk ``e_g`` by [`area_terms`][] and summed by [`blocked_sum`][]; the public
documentation of the formulas is in ``selectivekit.risk_coverage``.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ..typing import Array, Namespace
from .array_api import device, int_dtype

__all__ = [
    "BLOCK",
    "area_terms",
    "blocked_sum",
    "excess_aurc",
    "harmonic_difference",
    "run_ends",
    "soft_optimal_aurc",
    "tie_group_ends",
]


def run_ends(changed: Array, xp: Namespace) -> Array:
    """Index of the last entry of each run, from ``changed[i]``: entry ``i + 1`` starts a new run.

    ``changed`` has one entry fewer than the sequence; the last entry always ends a run (so a sequence of
    length 0 or 1 gives ``[0]``).
    """
    true = xp.ones((1,), dtype=xp.bool, device=device(changed))
    return xp.nonzero(xp.concat([changed, true]))[0]


def tie_group_ends(sorted_values: Array, xp: Namespace) -> Array:
    """Index of the last entry of each group of equal values in the sorted 1-D ``sorted_values``."""
    return run_ends(sorted_values[1:] != sorted_values[:-1], xp)


#: Terms are summed in consecutive blocks of this many (pairwise within a block, in order across blocks), on
#: the whole curve and in the fused one-pass areas alike, so both give the same bits.
BLOCK = 1 << 14


def blocked_sum(terms: Array, xp: Namespace) -> float:
    """Sum in blocks of ``BLOCK`` terms (NumPy), or one reduction (other namespaces).

    For non-negative terms the relative rounding error is at most about ``(14 + G / 16384) * 2**-53``, below
    1e-13 for ``G = 10**7`` terms.
    """
    if not array_api_compat.is_numpy_namespace(xp):
        return float(xp.sum(terms))
    total = 0.0
    for start in range(0, terms.shape[0], BLOCK):
        total += float(terms[start : start + BLOCK].sum())
    return total


_HARMONIC_TABLE_SIZE = 256
_HARMONIC_TABLE = [math.fsum(1.0 / k for k in range(1, n + 1)) for n in range(_HARMONIC_TABLE_SIZE + 1)]


def harmonic_difference(a: Array, b: Array, xp: Namespace) -> Array:
    """``H_b - H_a = sum_{k=a+1}^{b} 1/k`` for float arrays of integers ``0 <= a <= b``, to a few ulps.

    Split at ``K = 256``: ``H_min(b,K) - H_min(a,K)`` from a table of exact sums, plus ``H_max(b,K) -
    H_max(a,K)`` from the asymptotic series of ``H_n`` up to ``n**-4`` (the first omitted term is below
    ``1 / (252 n**6)``), written as differences (``log1p``, products of ``b - a``) so that a short stretch
    far out keeps its relative precision. Both parts are non-negative: nothing cancels.
    """
    k = float(_HARMONIC_TABLE_SIZE)
    table = xp.asarray(_HARMONIC_TABLE, dtype=a.dtype, device=device(a))
    # below K: the table
    low = xp.take(table, xp.astype(xp.clip(b, 0.0, k), int_dtype(xp))) - xp.take(
        table, xp.astype(xp.clip(a, 0.0, k), int_dtype(xp))
    )
    # above K: the series, as differences (0 when b <= K)
    a_ = xp.where(a < k, k, a)
    b_ = xp.where(b < k, k, b)
    d = b_ - a_
    x, y = 1.0 / a_, 1.0 / b_
    xy = x * y
    high = xp.log1p(d * x) - 0.5 * d * xy + d * (a_ + b_) * xy * xy / 12.0
    high = high - d * (a_ + b_) * (a_ * a_ + b_ * b_) * (xy * xy) * (xy * xy) / 120.0
    return low + high


def area_terms(
    n_prev: Array,
    n: Array,
    e_prev: Array,
    e: Array,
    n_total: int | float | Array,
    generalized: bool,
    ties: str,
    xp: Namespace,
) -> Array:
    """Per-group area terms from the cumulative counts and risk before (``*_prev``) and through each group.

    ``"step"``: ``(c_g - c_{g-1}) v_g`` with ``c_g = n_g / N`` and ``v_g = e_g / n_g`` (selective) or
    ``e_g / N`` (generalized). ``"expected"``: the expectation over uniformly random orders inside the group
    of the tie-free mean rule ``(1/N) sum_k r(k)``. With ``a = n_{g-1}``, ``b = n_g``, ``m = b - a`` and ``w =
    e_g - e_{g-1}`` the group's risk, ``E[risk of the first j of the group] = j w / m``, so the group adds
    ``(w + (e_{g-1} - a w / m)(H_b - H_a)) / N`` (selective risk, harmonic numbers ``H``) or
    ``(m e_{g-1} + w (m + 1) / 2) / N**2`` (generalized risk). A group of one takes the step term, which is
    then the same number. Element-wise: ``n_total`` may broadcast (one ``N`` per row of a bootstrap).
    """
    step = (n / n_total - n_prev / n_total) * (e / n_total if generalized else e / n)
    if ties == "step":
        return step
    m = n - n_prev
    w = e - e_prev
    if generalized:
        expected = (m * e_prev + w * (m + 1.0) * 0.5) / n_total / n_total
    else:
        expected = (w + (e_prev - n_prev * (w / m)) * harmonic_difference(n_prev, n, xp)) / n_total
    return xp.where(m == 1.0, step, expected)


def soft_optimal_aurc(sorted_risk: Array, xp: Namespace) -> float:
    """AURC of the best ranking of soft instance risks: ``(1/N) sum_k (r_(1) + ... + r_(k)) / k`` with the
    risks ``r_(1) <= ... <= r_(N)`` (the lowest-risk instances accepted first)."""
    cumulative = xp.cumulative_sum(sorted_risk)
    k = xp.arange(1, cumulative.shape[0] + 1, dtype=cumulative.dtype, device=device(cumulative))
    return float(xp.sum(cumulative / k)) / cumulative.shape[0]


def excess_aurc(area: np.ndarray | float, optimal: np.ndarray | float) -> np.ndarray:
    """e-AURC ``area - optimal`` (NumPy or floats); a difference within 1e-12 of 0 (rounding) is clipped at 0
    from below."""
    value = np.subtract(area, optimal)
    return np.where(np.abs(value) < 1e-12, np.maximum(value, 0.0), value)

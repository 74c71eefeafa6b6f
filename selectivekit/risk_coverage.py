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

from ._lib import (
    bits_int32,
    check_choice,
    check_coverage,
    check_probability,
    device,
    float_dtype,
    int_dtype,
    prepare_instances,
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


#: Terms are summed in consecutive blocks of this many (pairwise within a block, in order across blocks),
#: on the whole curve and in the fused one-pass areas alike, so both give the same bits.
_BLOCK = 1 << 14


def _blocked_sum(terms: Array, xp: Namespace) -> float:
    """Sum in blocks of ``_BLOCK`` terms (NumPy), or one reduction (other namespaces)."""
    if not array_api_compat.is_numpy_namespace(xp):
        return float(xp.sum(terms))
    total = 0.0
    for start in range(0, terms.shape[0], _BLOCK):
        total += float(terms[start : start + _BLOCK].sum())
    return total


def step_area(coverage: Array, values: Array, /, *, xp: Namespace) -> float:
    """Right-endpoint step rule ``sum_g (c_g - c_{g-1}) * v_g`` with ``c_0 = 0``.

    Terms are summed in blocks of 16,384 (pairwise inside a block): the relative rounding error is at most
    about ``(14 + G / 16384) * 2**-53`` for non-negative terms, below 1e-13 for ``G = 10**7``.
    """
    zero = xp.zeros((1,), dtype=coverage.dtype, device=device(coverage))
    return _blocked_sum(xp.diff(coverage, prepend=zero) * values, xp)


_HARMONIC_TABLE_SIZE = 256
_HARMONIC_TABLE = [math.fsum(1.0 / k for k in range(1, n + 1)) for n in range(_HARMONIC_TABLE_SIZE + 1)]
_EULER_GAMMA = 0.5772156649015329


def _harmonic_diff(a: Array, b: Array, xp: Namespace) -> Array:
    """``H_b - H_a`` for float arrays of integers ``0 <= a < b``, to a few ulps.

    Below 256 from a table of exact sums; beyond, the asymptotic series of ``H_n`` up to ``n**-4`` (the
    first omitted term is below ``1 / (252 n**6)``), written as differences (``log1p``, products of
    ``b - a``) so that a short group far out keeps its relative precision.
    """
    k = float(_HARMONIC_TABLE_SIZE)
    table = xp.asarray(_HARMONIC_TABLE, dtype=a.dtype, device=device(a))
    small = a < k
    # a >= K: H_b - H_a from the series, as differences
    a_ = xp.where(small, k, a)
    b_ = xp.where(small, k + 1.0, b)
    d = b_ - a_
    x, y = 1.0 / a_, 1.0 / b_
    xy = x * y
    large = xp.log1p(d * x) - 0.5 * d * xy + d * (a_ + b_) * xy * xy / 12.0
    large = large - d * (a_ + b_) * (a_ * a_ + b_ * b_) * (xy * xy) * (xy * xy) / 120.0
    # a < K: table value of H_a; H_b from the table or the series
    ia = xp.astype(xp.where(small, a, 0.0), int_dtype(xp))
    ib = xp.astype(xp.clip(b, 0.0, k), int_dtype(xp))
    bb = xp.where(b > k, b, k + 1.0)
    ib2 = 1.0 / (bb * bb)
    h_b_series = xp.log(bb) + _EULER_GAMMA + 0.5 / bb - ib2 / 12.0 + ib2 * ib2 / 120.0
    h_b = xp.where(b > k, h_b_series, xp.take(table, ib))
    return xp.where(small, h_b - xp.take(table, ia), large)


def _area_terms(
    n_prev: Array,
    n: Array,
    e_prev: Array,
    e: Array,
    n_total: int,
    generalized: bool,
    ties: str,
    xp: Namespace,
) -> Array:
    """Per-group area terms from the cumulative counts and risk before (``*_prev``) and through each group.

    ``"step"``: ``(c_g - c_{g-1}) v_g`` with ``v_g = e_g / n_g`` (selective) or ``e_g / N`` (generalized).
    ``"expected"``: the expectation over uniformly random orders inside the group of the tie-free mean rule
    ``(1/N) sum_k r(k)``. With ``a = n_{g-1}``, ``b = n_g``, ``m = b - a`` and ``w = e_g - e_{g-1}`` the
    group's risk, ``E[risk of the first j of the group] = j w / m``, so the group adds
    ``(w + (e_{g-1} - a w / m)(H_b - H_a)) / N`` (selective risk, harmonic numbers ``H``) or
    ``(m e_{g-1} + w (m + 1) / 2) / N**2`` (generalized risk). A group of one takes the step term, which is
    then the same number.
    """
    step = (n / n_total - n_prev / n_total) * (e / n_total if generalized else e / n)
    if ties == "step":
        return step
    m = n - n_prev
    w = e - e_prev
    if generalized:
        expected = (m * e_prev + w * (m + 1.0) * 0.5) / n_total / n_total
    else:
        expected = (w + (e_prev - n_prev * (w / m)) * _harmonic_diff(n_prev, n, xp)) / n_total
    return xp.where(m == 1.0, step, expected)


def curve_area(curve: RiskCoverageCurve, /, *, generalized: bool = False, ties: str = "step") -> float:
    """Area under a risk-coverage curve: AURC (selective risk) or AUGRC (``generalized=True``).

    ``ties="step"`` is the right-endpoint step rule over the curve's points; ``ties="expected"`` the
    expectation over random orders of tied instances (see [`aurc`][selectivekit.aurc]).
    """
    check_choice(ties, "ties", _TIES)
    xp = array_api_compat.array_namespace(curve.coverage)
    n_total = curve.n_total
    n = xp.round(curve.coverage * n_total)
    e = curve.cumulative_risk
    zero = xp.zeros((1,), dtype=n.dtype, device=device(n))
    n_prev = xp.concat([zero, n[:-1]])
    e_prev = xp.concat([zero, e[:-1]])
    if ties == "step":  # the curve's own coverage and risk: the same bits as step_area
        v = e / n_total if generalized else curve.risk
        return step_area(curve.coverage, v, xp=xp)
    return _blocked_sum(_area_terms(n_prev, n, e_prev, e, n_total, generalized, ties, xp), xp)


_TIES = ("step", "expected")


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
# the exact curve and its areas: one sort


#: The key is built, and the step-rule pass reads the sorted key, in chunks of this many instances (about
#: 1 MiB of buffers); the pass first probes every ``_STRIDE``-th key to skip the inside of tie groups.
_CHUNK = 1 << 16
_STRIDE = 1024


def _numpy_key(u, correct):
    """NumPy: one sort with each instance's correctness riding in the lowest bit of the sort key.

    An argsort is ~4x slower than sorting values (PERF_NOTES), so the flag travels inside the key:
    - non-negative floats: the IEEE bit pattern is monotone and its top bit is free, so
      ``(bits << 1) | correct`` sorts like ``u`` and keeps tied values adjacent (the shift drops the sign
      bit, so -0.0 lands on +0.0's key; they compare equal);
    - float32 with negative values: the order-preserving map of the bits to uint32 (negative: every bit
      flipped; non-negative: the sign bit set; -0.0 first becomes +0.0), shifted into a uint64 key;
    - integers: the offset ``u - min(u)`` (exact in uint64), shifted, when the range allows it.
    Half precision and small integers become float32 first (exact). Returns the sorted key (unsigned, in
    the order of ``u``: ``key >> 1`` identifies the value, ``key & 1`` is the flag) and a function that
    maps keys back to values in the input's dtype; ``None`` when no key fits (float64 with negative
    values).
    """
    import numpy as np

    flag = correct.view(np.uint8)
    if u.dtype.kind in "iu" and u.dtype.itemsize > 2:
        lo = int(u.min())
        span = int(u.max()) - lo
        if span >= 2**63:
            return None
        base = np.uint64(lo % 2**64)
        d = u.astype(np.uint64) - base  # exact: the difference modulo 2**64 is below 2**63
        ut = np.uint64 if span >= 2**31 else np.uint32
        key = d.astype(ut, copy=False) << ut(1)
        key |= flag
        key.sort()
        return key, lambda k: ((k >> ut(1)).astype(np.uint64) + base).view(np.int64).astype(u.dtype)
    if u.dtype not in (np.float32, np.float64):
        u = u.astype(np.float32)  # float16 and 8/16-bit integers, exactly
    ut = np.uint32 if u.dtype == np.float32 else np.uint64
    if u.min() >= 0:
        key = np.empty(u.shape, dtype=ut)
        bits, one = u.view(ut), ut(1)
        for start in range(0, u.shape[0], _CHUNK):  # both steps on one cache-sized stretch
            part = key[start : start + _CHUNK]
            np.left_shift(bits[start : start + _CHUNK], one, out=part)
            np.bitwise_or(part, flag[start : start + _CHUNK], out=part)
        key.sort()
        return key, lambda k: (k >> ut(1)).view(u.dtype)
    if u.dtype == np.float32:
        sign, rest = np.uint32(0x80000000), np.uint32(0x7FFFFFFF)
        key = np.empty(u.shape, dtype=np.uint64)
        for start in range(0, u.shape[0], _CHUNK):
            bits = (u[start : start + _CHUNK] + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 -> +0.0
            mapped = bits >> np.uint32(31)  # 1 for a negative value: flip every bit, else the sign bit
            mapped *= rest
            mapped |= sign
            mapped ^= bits
            part = key[start : start + _CHUNK]
            part[...] = mapped
            part <<= np.uint64(1)
            part |= flag[start : start + _CHUNK]
        key.view(np.int64).sort()  # keys below 2**33: the same order; NumPy sorts int64 faster than uint64

        def decode(k):
            m = (k >> np.uint64(1)).astype(np.uint32)
            mask = m >> np.uint32(31)  # 0 for a negative value: flip every bit back, else the sign bit
            mask ^= np.uint32(1)
            mask *= rest
            mask |= sign
            m ^= mask
            return m.view(np.float32)

        return key, decode
    return None


def _fused_pass(key, decode, n_total: int, want_curve: bool, areas):
    """One pass over the sorted key in cache-sized chunks: group ends, cumulative errors, area terms.

    ``areas`` lists ``(generalized, ties)`` pairs; returns their values, the error count and, when asked,
    the curve's ``(thresholds, n_g, e_g)``. No array of length N is allocated: every temporary is one
    chunk. Each group's step term is computed as [`step_area`][selectivekit.risk_coverage.step_area]
    computes it from the curve (``c_g = n_g / N``, ``r_g = e_g / n_g``) and the terms are summed in the
    same blocks, so both give the same bits.
    """
    import numpy as np

    one = key.dtype.type(1)
    sums = [0.0] * len(areas)
    bufs = [np.empty(_BLOCK, dtype=np.float64) for _ in areas]
    fill = 0
    last_n = last_e = last_c = 0.0
    n_correct = 0  # correct instances before the chunk
    parts = []
    is_end = np.empty(_BLOCK, dtype=bool)
    for start in range(0, n_total, _BLOCK):
        stop = min(start + _BLOCK, n_total)
        k = key[start:stop]
        ids = k >> one
        size = stop - start
        end = is_end[:size]
        np.not_equal(ids[1:], ids[:-1], out=end[:-1])
        end[-1] = stop == n_total or (key[stop] >> one) != ids[-1]
        ends = None
        if ids[0] == ids[-1] and not end[-1]:  # inside one tie group: nothing ends here
            continue
        if not end.all():
            ends = np.flatnonzero(end)
        if ends is not None and 8 * ends.size < size:
            # Few groups (heavy ties): in a group the keys of wrong instances (flag 0) come first, so
            # its error count is the position of its first correct key minus its start; one binary
            # search per group instead of a cumulative sum over every instance.
            n = (ends + (start + 1)).astype(np.float64)
            first_correct = np.searchsorted(key, k[ends] | one, side="left").astype(np.float64)
            starts = np.empty_like(n)
            starts[0] = last_n
            starts[1:] = n[:-1]
            e = np.cumsum(first_correct - starts)
            e += last_e
        else:
            # correct instances before the chunk: a group may straddle its start
            wrong_open = 0
            if last_n < start:
                fc = int(np.searchsorted(key, key[start - 1] | one, side="left"))
                wrong_open = min(fc, start) - int(last_n)
            n_correct = start - int(last_e) - wrong_open
            n = np.arange(start + 1, stop + 1, dtype=np.float64)
            e = np.cumsum(k & one).astype(np.float64)  # correct among the chunk's first n (integer sum)
            e += n_correct
            new_correct = int(e[-1])
            np.subtract(n, e, out=e)  # errors among the first n
            n_correct = new_correct
            if ends is not None:
                n, e = n[ends], e[ends]
        cov = n / n_total
        dcov = np.empty_like(cov)
        dcov[0] = cov[0] - last_c
        np.subtract(cov[1:], cov[:-1], out=dcov[1:])
        terms = []
        for generalized, ties in areas:
            t = dcov * (e / n_total if generalized else e / n)
            if ties != "step" and ends is not None:
                n_prev = np.concatenate([[last_n], n[:-1]])
                e_prev = np.concatenate([[last_e], e[:-1]])
                t = _area_terms(n_prev, n, e_prev, e, n_total, generalized, ties, np)
            terms.append(t)
        if want_curve:
            parts.append((decode(k if ends is None else k[ends]), n, e))
        last_n, last_e, last_c = float(n[-1]), float(e[-1]), float(cov[-1])
        # sum in blocks of _BLOCK groups, as step_area does on the whole curve
        if fill == 0 and n.shape[0] == _BLOCK:
            for i, t in enumerate(terms):
                sums[i] += float(t.sum())
            continue
        done = 0
        while done < n.shape[0]:
            take = min(_BLOCK - fill, n.shape[0] - done)
            for b, t in zip(bufs, terms, strict=True):
                b[fill : fill + take] = t[done : done + take]
            fill += take
            done += take
            if fill == _BLOCK:
                for i, b in enumerate(bufs):
                    sums[i] += float(b.sum())
                fill = 0
    if fill:
        for i, b in enumerate(bufs):
            sums[i] += float(b[:fill].sum())
    curve = None
    if want_curve:
        curve = tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
    return sums, last_e, curve


def _step_areas(key, n_total: int, generalized: list[bool]) -> tuple[list[float], float]:
    """Step-rule areas (AURC and/or AUGRC) and the error count from a sorted monotone key, one pass.

    ``key`` is sorted, ``key >> 1`` orders like ``u`` and bit 0 is the correctness flag, so inside a tie
    group the wrong instances come first. Writing ``E_q`` for the errors among the first ``q`` keys and
    ``b(q)`` for the last position of ``q``'s tie group, ``N * AURC = sum_q E_b(q) / b(q)`` and
    ``N**2 * AUGRC = sum_q E_b(q)``. Few distinct values: a probe of every 1024th key finds the stretches
    that hold a group boundary, a binary search per boundary finds it, and each group's error count is the
    position of its first correct key minus its start (work ~ groups x log N). Otherwise
    `_step_dense` reads every key once.
    """
    import numpy as np

    one = key.dtype.type(1)
    n_probe = n_total // _STRIDE
    if n_probe >= 8:
        probe = key[_STRIDE - 1 :: _STRIDE] >> one
        lo_ids = np.concatenate((key[:1] >> one, probe))
        hi_ids = np.concatenate((probe, key[-1:] >> one))
        changed = np.flatnonzero(lo_ids != hi_ids)
        if 8 * changed.shape[0] <= n_probe:
            got = _step_sparse(key, n_total, generalized, lo_ids[changed], hi_ids[changed])
            if got is not None:
                return got
    return _step_dense(key, n_total, generalized)


def _scale(sums: list, n_total: int, generalized: list[bool]) -> list[float]:
    """Areas from the sums: ``N * AURC`` (a float) and ``N**2 * AUGRC`` (an exact integer, divided once
    with correct rounding, so that equal rationals give equal floats)."""
    n2 = n_total * n_total
    return [int(s) / n2 if g else s / n_total for s, g in zip(sums, generalized, strict=True)]


def _step_sparse(
    key, n_total: int, generalized: list[bool], lo_ids, hi_ids
) -> tuple[list[float], float] | None:
    """The few-groups case: every stretch between two probes whose ids differ (``lo_ids < hi_ids``) holds
    one or more group boundaries; find them by binary search, one round per boundary of a stretch (``None``
    after 64 rounds: the caller reads every key instead)."""
    import numpy as np

    one = key.dtype.type(1)
    ends = []
    while lo_ids.shape[0]:
        if len(ends) == 64:  # a stretch with many boundaries: reading every key is cheaper
            return None
        nxt = np.searchsorted(key, (lo_ids + one) << one, side="left")  # first key of the next group
        ends.append(nxt - 1)
        ids = key[nxt] >> one
        more = ids != hi_ids
        lo_ids, hi_ids = ids[more], hi_ids[more]
    last = np.asarray([n_total - 1])
    ends = np.unique(np.concatenate([*ends, last])) if ends else last  # stretches share their edge probes
    first_correct = np.searchsorted(key, ((key[ends] >> one) << one) | one, side="left")
    starts = np.concatenate(([0], ends[:-1] + 1))
    errors = np.cumsum(first_correct - starts)  # integers: E at each group's end
    n = ends + 1
    m = np.diff(n, prepend=0)
    sums = [int(np.sum(m * errors)) if g else float(np.sum(m * (errors / n))) for g in generalized]
    return _scale(sums, n_total, generalized), float(errors[-1])


def _step_dense(key, n_total: int, generalized: list[bool]) -> tuple[list[float], float]:
    """The many-groups case, in chunks: ``sum_q f(q)`` over every key (``f(q) = E_q / q`` or ``E_q``),
    minus ``f`` at the keys that are not the last of their group, plus, for each such group, ``f`` at its
    last key once per key it holds besides that one. ``E_q`` is a running integer count (one integer
    cumulative sum, exact); only the ``E_q / q`` divisions round."""
    import numpy as np

    one = key.dtype.type(1)
    count_dtype = key.dtype if n_total < 2**32 else np.dtype(np.uint64)
    positions = np.arange(1, _CHUNK + 1, dtype=np.float64)
    int_buf = np.empty(_CHUNK, dtype=key.dtype)
    err_buf = np.empty(_CHUNK, dtype=count_dtype)
    tied_buf = np.empty(_CHUNK, dtype=bool)
    div_buf = np.empty(_CHUNK, dtype=np.float64)
    sums = [0] * len(generalized)
    errors = 0  # errors before the chunk
    pending = 0  # keys of an open tie group (continued from earlier chunks) that are not its last
    for start in range(0, n_total, _CHUNK):
        stop = min(start + _CHUNK, n_total)
        size = stop - start
        k = key[start:stop]
        tied_on = stop < n_total and (key[stop] >> one) == (k[-1] >> one)
        if tied_on and (k[0] >> one) == (k[-1] >> one):  # inside one group: no key here ends it
            pending += size
            errors += size - int(np.count_nonzero(k & one))
            continue
        tied = tied_buf[:size]  # the key is not the last of its group
        ids = np.right_shift(k, one, out=int_buf[:size])
        np.equal(ids[1:], ids[:-1], out=tied[:-1])
        tied[-1] = tied_on
        inner = np.flatnonzero(tied)
        err = np.bitwise_and(k, one, out=int_buf[:size])
        err = np.bitwise_xor(err, one, out=err_buf[:size])
        err[0] += errors
        np.cumsum(err, out=err)  # E_q
        errors = int(err[-1])
        # groups with inner keys: runs of consecutive inner positions, each ended by the next position
        group_end = count = None
        n_inner = inner.shape[0]
        if n_inner:
            # run_last[i]: index in `inner` of the last inner key of run i; count: inner keys of the run
            run_last = np.empty(0, dtype=np.intp)
            if n_inner > 1:
                run_last = np.flatnonzero((inner[1:] - inner[:-1]) != 1)
            run_last = np.concatenate((run_last, [n_inner - 1]))
            count = run_last + 1
            count[1:] -= run_last[:-1] + 1
            group_end = inner[run_last] + 1
            if pending and inner[0] == 0:
                count[0] += pending
            elif pending:
                group_end, count = np.concatenate(([0], group_end)), np.concatenate(([pending], count))
            pending = 0
            if group_end[-1] == size:  # the last group goes on in the next chunk
                pending = int(count[-1])
                group_end, count = group_end[:-1], count[:-1]
        elif pending:
            group_end, count, pending = np.zeros(1, dtype=np.intp), np.asarray([pending]), 0
        for i, g in enumerate(generalized):
            if g:  # E_q: integer sums, exact
                f, to = err, int
            else:
                f = np.add(positions[:size], float(start), out=div_buf[:size])
                f, to = np.divide(err, f, out=f), float
            part = to(np.sum(f))
            if inner.shape[0]:
                part -= to(np.sum(f[inner]))
            if group_end is not None and group_end.shape[0]:
                part += to(np.sum(count * f[group_end]))
            sums[i] += part
    return _scale(sums, n_total, generalized), float(errors)


def _sorted_groups(u: Array, inst: Array, xp: Namespace) -> tuple[Array, Array, Array]:
    """Any namespace: thresholds, ``n_g`` and ``e_g`` with one sort (a key with the flag for float32 and
    boolean risk where 64-bit integers exist, else one argsort)."""
    true = xp.ones((1,), dtype=xp.bool, device=device(u))
    order = xp.argsort(u, stable=False)
    s = xp.take(u, order)
    cum_all = xp.cumulative_sum(xp.take(xp.astype(inst, float_dtype(xp)), order))
    ends = xp.nonzero(xp.concat([s[1:] != s[:-1], true]))[0]
    if ends.shape[0] < u.shape[0]:  # ties: keep the last position of each group of equal values
        s, cum_all = xp.take(s, ends), xp.take(cum_all, ends)
    return s, xp.astype(ends + 1, float_dtype(xp)), cum_all


def _key_areas(u: Array, correct: Array, xp: Namespace, areas) -> tuple[list[float], float] | None:
    """Any namespace, areas only: one sort of an int64 key ``2 * monotone(float32 bits) + correct``."""
    if u.dtype != xp.float32 or int_dtype(xp) != xp.int64:
        return None
    b = xp.astype(bits_int32(u, xp), xp.int64)
    b = xp.where(b >= 0, b, -(b & 0x7FFFFFFF))  # monotone in u; -0.0 and +0.0 share 0
    key = xp.sort(b * 2 + xp.astype(correct, xp.int64))
    ids = key >> 1
    true = xp.ones((1,), dtype=xp.bool, device=device(u))
    ends = xp.nonzero(xp.concat([ids[1:] != ids[:-1], true]))[0]
    fdt = float_dtype(xp)
    n_all = u.shape[0]
    cum_err = xp.arange(1, n_all + 1, dtype=fdt, device=device(u)) - xp.cumulative_sum(
        xp.astype(key & 1, fdt)
    )
    n, e = xp.astype(ends + 1, fdt), xp.take(cum_err, ends)
    zero = xp.zeros((1,), dtype=fdt, device=device(u))
    n_prev, e_prev = xp.concat([zero, n[:-1]]), xp.concat([zero, e[:-1]])
    sums = [float(xp.sum(_area_terms(n_prev, n, e_prev, e, n_all, g, t, xp))) for g, t in areas]
    return sums, float(e[-1])


def _host_view(x: Array):
    """A CPU PyTorch tensor as a NumPy array sharing its memory (``None`` for anything else); bfloat16, which
    NumPy lacks, as a float32 copy (exact: every bfloat16 value is a float32 value)."""
    if array_api_compat.is_torch_array(x) and x.device.type == "cpu":
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.detach().numpy()
    return None


def _evaluate(inst, *, want_curve: bool, areas=()):
    """The curve (when asked), the areas ``[(generalized, ties), ...]`` and the error count, one sort.

    NumPy arrays, and PyTorch CPU tensors through a NumPy view of their memory (NumPy's SIMD sort is
    ~20x faster than ``torch.sort`` on the CPU), take the fused key pass; other namespaces (CUDA tensors,
    CuPy, JAX) one sort in their own namespace.
    """
    import numpy as np

    xp, n_total = inst.xp, inst.u.shape[0]
    if inst.is_bool:
        host_u = inst.u if array_api_compat.is_numpy_namespace(xp) else _host_view(inst.u)
        got = None
        if host_u is not None:
            host_c = inst.correct if isinstance(inst.correct, np.ndarray) else _host_view(inst.correct)
            got = _numpy_key(host_u, np.ascontiguousarray(host_c))
        if got is not None and not want_curve and all(t == "step" for _, t in areas):
            sums, errors = _step_areas(got[0], n_total, [g for g, _ in areas])
            return None, sums, errors
        if got is not None:
            sums, errors, parts = _fused_pass(*got, n_total, want_curve, areas)
            curve = None
            if parts is not None:
                thr, n, e = parts
                if not array_api_compat.is_numpy_namespace(xp):
                    thr, n, e = (xp.asarray(a, device=device(inst.u)) for a in (thr, n, e))
                curve = curve_from_cumulative(thr, n, e, n_total, xp=xp)
            return curve, sums, errors
        if not want_curve:
            got = _key_areas(inst.u, inst.correct, xp, areas)
            if got is not None:
                return None, got[0], got[1]
    thr, n, e = _sorted_groups(inst.u, inst.risk, xp)
    curve = curve_from_cumulative(thr, n, e, n_total, xp=xp)
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

    Both rules are invariant to the order of the input. Cost: one sort of a key that carries the
    correctness flag (boolean ``correct``) or one argsort (soft ``risk``), then one pass in cache-sized
    chunks; no temporary larger than the sort key.

    Rounding: for boolean ``correct`` on NumPy (and PyTorch CPU) arrays the step rule adds one term per
    instance, ``E_q / q`` with ``E_q`` the errors among the ``q`` lowest (an exact integer count), in
    chunks of 65,536 with pairwise sums. Its relative rounding error is at most
    ``(28 + N / 65536) (3 + 4 ln N) 2**-53`` (a worst case: 1.4e-12 at ``N = 10**7``); the AUGRC there is
    an exact integer sum divided once, so it is the correctly rounded value. Other paths (the
    curve's [`curve_area`][selectivekit.risk_coverage.curve_area], ``ties="expected"``, soft ``risk``, other
    array libraries) add one term per tie group in another order: the values agree within that bound, not
    always to the last bit.

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
    u_risk = soft_risk
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
    value = area - _optimal_aurc(inst.u.shape[0], inst.soft_risk, n_errors, inst.xp)
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

"""The NumPy sorting engine behind the risk-coverage family: sorted keys in, tie groups out.

Boolean correctness on NumPy arrays (and PyTorch CPU tensors, read through a NumPy view) is sorted once as
an unsigned key whose lowest bit is the correctness flag ([`bit_key`][]). The tie groups of the sorted key,
``(thresholds, n_g, e_g)`` (each group's value, the instances and the errors up to its end), then feed the
one area formula ([`selectivekit._lib.tie_groups.area_terms`][]) chunk by chunk ([`fused_pass`][]). Other
inputs (soft risk, other namespaces) take [`sorted_groups`][] or [`key_groups`][].

[`step_areas`][] is the one fast path with a formula of its own: for the step rule alone it adds one term per
instance, ``E_q / q``, from an exact integer count ``E_q``, without forming the groups. It is tested against
``area_terms`` to the rounding bound below.

Rounding (maintainers): the step pass sums in chunks of ``_CHUNK`` (65,536) with pairwise sums; its relative
rounding error is at most ``(28 + N / 65536) (3 + 4 ln N) 2**-53`` (a worst case: 1.4e-12 at ``N =
10**7``). Its AUGRC is an exact integer sum divided once, so it is the correctly rounded value. The other
paths add one term per tie group in blocks of ``BLOCK`` (16,384): they agree with it within that bound, not
always to the last bit.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..typing import Array, Namespace
from .array_api import bits_int32, device, float_dtype, int_dtype
from .tie_groups import BLOCK, area_terms, tie_group_ends

__all__ = ["bit_key", "fused_pass", "host_view", "key_groups", "sorted_groups", "step_areas"]


#: The key is built, and the step-rule pass reads the sorted key, in chunks of this many instances (about
#: 1 MiB of buffers); the pass first probes every ``_STRIDE``-th key to skip the inside of tie groups.
_CHUNK = 1 << 16
_STRIDE = 1024


def bit_key(u: np.ndarray, correct: np.ndarray, *, sort: bool = True) -> tuple[np.ndarray, Any] | None:
    """NumPy: one sort with each instance's correctness riding in the lowest bit of the sort key.

    An argsort is about 4x slower than sorting values, so the flag travels inside the key:
    - non-negative floats: the IEEE bit pattern is monotone and its top bit is free, so
      ``(bits << 1) | correct`` sorts like ``u`` and keeps tied values adjacent (the shift drops the sign
      bit, so -0.0 lands on +0.0's key; they compare equal);
    - float32 with negative values: the order-preserving map of the bits to uint32 (negative: every bit
      flipped; non-negative: the sign bit set; -0.0 first becomes +0.0), shifted into a uint64 key;
    - integers: the offset ``u - min(u)`` (exact in uint64), shifted, when the range allows it.
    Half precision and small integers become float32 first (exact). Returns the sorted key (unsigned, in
    the order of ``u``: ``key >> 1`` identifies the value, ``key & 1`` is the flag) and a function that
    maps keys back to values in the input's dtype; ``None`` when no key fits (float64 with negative
    values). ``sort=False`` leaves the key in the order of ``u``: the encoding is monotone, so runs sorted by
    ``(u, correct)`` stay sorted runs of keys, for a merge.
    """
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
        if sort:
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
        if sort:
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
        if sort:
            key.view(
                np.int64
            ).sort()  # keys below 2**33: the same order; NumPy sorts int64 faster than uint64

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


def fused_pass(
    key: np.ndarray, decode: Any, n_total: int, want_curve: bool, areas: list[tuple[bool, str]]
) -> tuple[list[float], float, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """One pass over the sorted key in chunks: the tie groups and the areas computed from them.

    ``areas`` lists ``(generalized, ties)`` pairs; returns their values, the error count and, when asked,
    the groups ``(thresholds, n_g, e_g)``. Each chunk's groups feed
    [`area_terms`][selectivekit._lib.tie_groups.area_terms], and the terms are summed in blocks of ``BLOCK``
    groups as [`blocked_sum`][selectivekit._lib.tie_groups.blocked_sum] sums the whole curve's, so both
    give the same bits. No array of length N is allocated: every temporary is one chunk.
    """
    one = key.dtype.type(1)
    sums = [0.0] * len(areas)
    bufs = [np.empty(BLOCK, dtype=np.float64) for _ in areas]
    fill = 0
    last_n = last_e = 0.0
    n_correct = 0  # correct instances before the chunk
    parts = []
    is_end = np.empty(BLOCK, dtype=bool)
    for start in range(0, n_total, BLOCK):
        stop = min(start + BLOCK, n_total)
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
                first_correct_open = int(np.searchsorted(key, key[start - 1] | one, side="left"))
                wrong_open = min(first_correct_open, start) - int(last_n)
            n_correct = start - int(last_e) - wrong_open
            n = np.arange(start + 1, stop + 1, dtype=np.float64)
            e = np.cumsum(k & one).astype(np.float64)  # correct among the chunk's first n (integer sum)
            e += n_correct
            new_correct = int(e[-1])
            np.subtract(n, e, out=e)  # errors among the first n
            n_correct = new_correct
            if ends is not None:
                n, e = n[ends], e[ends]
        terms = []
        if areas:
            n_prev = np.empty_like(n)
            n_prev[0] = last_n
            n_prev[1:] = n[:-1]
            e_prev = np.empty_like(e)
            e_prev[0] = last_e
            e_prev[1:] = e[:-1]
            # every group of the chunk holds one instance: the expected rule is the step rule (area_terms
            # would pick the step term for each group), without the harmonic numbers
            untied = ends is None and n[0] - last_n == 1.0
            terms = [
                area_terms(n_prev, n, e_prev, e, n_total, generalized, "step" if untied else ties, np)
                for generalized, ties in areas
            ]
        if want_curve:
            parts.append((decode(k if ends is None else k[ends]), n, e))
        last_n, last_e = float(n[-1]), float(e[-1])
        # sum in blocks of BLOCK groups, as blocked_sum does on the whole curve
        if fill == 0 and n.shape[0] == BLOCK:
            for i, t in enumerate(terms):
                sums[i] += float(t.sum())
            continue
        done = 0
        while done < n.shape[0]:
            take = min(BLOCK - fill, n.shape[0] - done)
            for b, t in zip(bufs, terms, strict=True):
                b[fill : fill + take] = t[done : done + take]
            fill += take
            done += take
            if fill == BLOCK:
                for i, b in enumerate(bufs):
                    sums[i] += float(b.sum())
                fill = 0
    if fill:
        for i, b in enumerate(bufs):
            sums[i] += float(b[:fill].sum())
    groups = None
    if want_curve:
        groups = tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
    return sums, last_e, groups


def step_areas(key: np.ndarray, n_total: int, generalized: list[bool]) -> tuple[list[float], float]:
    """Step-rule areas (AURC and/or AUGRC) and the error count from a sorted monotone key, one pass.

    ``key`` is sorted, ``key >> 1`` orders like ``u`` and bit 0 is the correctness flag, so inside a tie
    group the wrong instances come first. Writing ``E_q`` for the errors among the first ``q`` keys and
    ``b(q)`` for the last position of ``q``'s tie group, ``N * AURC = sum_q E_b(q) / b(q)`` and
    ``N**2 * AUGRC = sum_q E_b(q)``. Few distinct values: a probe of every 1024th key finds the stretches
    that hold a group boundary, a binary search per boundary finds it, and each group's error count is the
    position of its first correct key minus its start (work ~ groups x log N). Otherwise
    `_step_dense` reads every key once.
    """
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


def sorted_groups(u: Array, risk: Array, xp: Namespace) -> tuple[Array, Array, Array]:
    """Any namespace, any instance risk: the tie groups ``(thresholds, n_g, e_g)`` with one argsort."""
    order = xp.argsort(u, stable=False)
    s = xp.take(u, order)
    cum_all = xp.cumulative_sum(xp.take(xp.astype(risk, float_dtype(xp)), order))
    ends = tie_group_ends(s, xp)
    if ends.shape[0] < u.shape[0]:  # ties: keep the last position of each group of equal values
        s, cum_all = xp.take(s, ends), xp.take(cum_all, ends)
    return s, xp.astype(ends + 1, float_dtype(xp)), cum_all


def key_groups(u: Array, correct: Array, xp: Namespace) -> tuple[Array, Array] | None:
    """Any namespace with int64, float32 ``u`` and boolean ``correct``: ``n_g`` and ``e_g`` from one sort of
    the key ``2 * monotone(float32 bits) + correct`` (no argsort); ``None`` for other inputs."""
    if u.dtype != xp.float32 or int_dtype(xp) != xp.int64:
        return None
    b = xp.astype(bits_int32(u, xp), xp.int64)
    b = xp.where(b >= 0, b, -(b & 0x7FFFFFFF))  # monotone in u; -0.0 and +0.0 share 0
    key = xp.sort(b * 2 + xp.astype(correct, xp.int64))
    ends = tie_group_ends(key >> 1, xp)
    fdt = float_dtype(xp)
    n_all = u.shape[0]
    cum_err = xp.arange(1, n_all + 1, dtype=fdt, device=device(u)) - xp.cumulative_sum(
        xp.astype(key & 1, fdt)
    )
    return xp.astype(ends + 1, fdt), xp.take(cum_err, ends)


def host_view(x: Array) -> np.ndarray | None:
    """A CPU PyTorch tensor as a NumPy array sharing its memory (``None`` for anything else); bfloat16, which
    NumPy lacks, as a float32 copy (exact: every bfloat16 value is a float32 value)."""
    if array_api_compat.is_torch_array(x) and x.device.type == "cpu":
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.detach().numpy()
    return None

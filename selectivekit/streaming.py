"""Mergeable accumulators for evaluation sets that do not fit in memory: exact while they fit.

Exact first
-----------
An accumulator keeps the instances themselves (``u`` and the correctness or risk; for segmentation the
predicted labels, true labels and ``u`` of each image, in compact dtypes) while they fit in ``max_memory``
bytes (default [`DEFAULT_MAX_MEMORY`][selectivekit.streaming.DEFAULT_MAX_MEMORY], 1 GiB). Its results are
then those of the in-memory functions ([`selectivekit.aurc`][selectivekit.aurc],
[`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve], ...) on the concatenated inputs, to
the last bit, and ``path`` is ``"exact"``.

The grid beyond the budget
--------------------------
Past the budget the accumulator folds what it holds into a threshold grid and continues there (``path`` is
``"grid"``). By default the grid has one cell per bfloat16 value: a float32 ``u`` falls in the cell of its
upper 16 bits (relative resolution ``2**-8`` at every magnitude, so saturated-softmax voxels near 0 keep
separate thresholds); ``grid="float32-24"`` keeps the upper 24 bits (relative resolution ``2**-16``, a
tighter bound for a state of at most ``2**24`` occupied cells). A grid of user-given ``edges``
(right-closed cells ``(e_{j-1}, e_j]``) can be used instead. Each occupied cell keeps its instance count,
its summed risk and its largest ``u``, which is the reported threshold: accepting ``u <= max`` accepts
exactly the cells up to it, so every operating point is achievable.

Every grid result comes with a rigorous bound (the ``*_bound`` methods): the lowest and highest exact value
that any data with the same cell counts could give, whatever the order and the ties of the instances inside
each cell. For the risk-coverage areas each cell is ordered best case (correct instances first, and the ties
that lower the step rule most) and worst case (errors first), in closed form (harmonic sums). The bound is 0
wide when every value is alone in its cell (e.g. ``u`` already rounded to bfloat16); in exact mode it is the
value itself. Floating rounding is covered by widening a non-degenerate bound by ``8 eps`` per occupied cell.

``a.merge(b)`` equals one pass over both inputs: exact + exact stays exact (while the sum fits ``a``'s
budget), anything merged with a grid state is a grid state. The accumulators pickle (for process pools) and
[`SegmentationAccumulator.to_arrays`][selectivekit.SegmentationAccumulator.to_arrays] gives a pickle-free
form for files.

The accumulators reuse the in-memory pieces:
[`selectivekit.risk_coverage.curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] and
[`step_area`][selectivekit.risk_coverage.step_area] for the risk-coverage curve, and
[`selectivekit.segmentation.DiceGroups`][selectivekit.segmentation.engine.DiceGroups] for the Dice-coverage
computations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import risk_coverage as rc
from . import segmentation as seg
from ._lib import (
    as_array,
    bincount,
    bits_int32,
    check_choice,
    check_coverages,
    check_edges,
    check_num_classes,
    device,
    float_dtype,
    get_namespace,
    int_dtype,
    prepare_instances,
    scatter_max,
    to_numpy,
)
from ._lib.tie_groups import harmonic_difference
from .risk_coverage import RiskCoverageCurve, aurc_optimal, curve_from_groups, step_area
from .segmentation.engine import DiceGroups, summarize
from .segmentation.images import collect_images
from .segmentation.results import DiceAtCoverage, DiceCoverageCurve
from .selective import required_count
from .typing import Array, Namespace

__all__ = [
    "BFLOAT16_BINS",
    "DEFAULT_MAX_MEMORY",
    "GRIDS",
    "RiskCoverageAccumulator",
    "SegmentationAccumulator",
    "curve_from_grid",
    "grid_bins",
    "grid_dice_risk_bounds",
    "grid_risk_bounds",
    "grid_size",
    "grid_update",
    "image_events",
]

#: Number of cells of the default grid (every bfloat16 bit pattern, signs included).
BFLOAT16_BINS = 1 << 16

#: The named grids and the float32 bits each keeps: ``"bfloat16"`` (the default) and ``"float32-24"``.
GRIDS = {"bfloat16": 16, "float32-24": 24}

#: Default ``max_memory`` of the accumulators: 1 GiB of kept instances. That holds about 200 million
#: instances of [`RiskCoverageAccumulator`][selectivekit.RiskCoverageAccumulator] (float32 ``u`` and a bool,
#: 5 bytes each) or 180 million voxels of
#: [`SegmentationAccumulator`][selectivekit.SegmentationAccumulator] (float32 ``u`` and two uint8 labels):
#: about 85 volumes of 128^3. The exact computation at the end then needs temporary memory of about 8 times
#: the kept bytes (measured with tracemalloc for both accumulators: one sort of every ``u`` plus the wrong
#: voxels), so the default stays within a 16 GB workstation; lower it on smaller machines.
DEFAULT_MAX_MEMORY = 1 << 30

# Voxels handled per step inside ``update``: bounds the temporary memory independently of the volume size.
_CHUNK = 1 << 17
# Largest grid kept as dense per-chunk counts (above it: sorted unique cells).
_DENSE_LIMIT = 1 << 20
_EPS = float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------------------------
# the grid: shared with the framework metrics


def grid_size(edges: Any = None, *, bits: int = 16) -> int:
    """Number of cells of the grid: ``2**bits`` for the float32 grids (``2**16``: bfloat16), or
    ``len(edges) + 1`` for given edges."""
    return (1 << bits) if edges is None else len(edges) + 1


def grid_bins(u: Array, /, *, edges: Any = None, bits: int = 16, xp: Namespace | None = None) -> Array:
    """Grid cell of every value of ``u`` (int64, same shape), increasing with ``u``.

    Float32 grid of ``bits`` bits (``edges=None``; 16 bits: the bfloat16 grid): with ``b`` the float32 bits,
    ``s = 32 - bits`` and ``h = 2**(bits - 1)``, the cell is ``h + (b >> s)`` for ``u >= 0`` and
    ``h - 1 - ((b & 0x7fffffff) >> s)`` for ``u < 0`` (``-0.0`` is folded into ``+0.0``). Float64 input is
    rounded to float32 first (monotone, so cells stay ordered). Given ``edges``, the cell is the number of
    edges strictly below ``u`` (cells ``(e_{j-1}, e_j]``).

    Examples
    --------
    >>> import numpy as np
    >>> grid_bins(np.array([0.0, 1e-30, 0.5, 0.50001, -1.0], dtype=np.float32))
    array([32768, 36258, 48896, 48896, 16511])
    """
    xp = get_namespace(u, xp=xp)
    if edges is not None:
        e = xp.asarray(np.asarray(edges, dtype=np.float64), device=device(u))
        return xp.astype(xp.searchsorted(e, xp.astype(u, e.dtype), side="left"), int_dtype(xp))
    u32 = xp.astype(u, xp.float32) + 0.0  # -0.0 + 0.0 == +0.0
    bits_ = bits_int32(u32, xp)
    half = 1 << (bits - 1)
    high = (bits_ & 0x7FFFFFFF) >> (32 - bits)  # int32 arithmetic: small temporaries
    return xp.astype(xp.where(bits_ >= 0, high + half, (half - 1) - high), int_dtype(xp))


def grid_update(
    u: Array, risk: Array, n_bins: int, /, *, edges: Any = None, bits: int = 16, xp: Namespace
) -> tuple[Any, Any, Any]:
    """Per-cell instance count, summed risk and largest ``u`` of flat ``u`` and instance ``risk``.

    The update step shared by [`RiskCoverageAccumulator`][selectivekit.RiskCoverageAccumulator] and the
    framework ``AURC`` metrics. Returns
    dense arrays of shape (n_bins,): count (int64), risk sum (float64) and max ``u`` (float64, ``-inf`` in
    empty cells).
    """
    bins = grid_bins(u, edges=edges, bits=bits, xp=xp)
    fdt = float_dtype(xp)
    count = bincount(bins, n_bins, xp)
    risk_sum = bincount(bins, n_bins, xp, weights=xp.astype(risk, fdt))
    dev = device(u)
    top = xp.full((n_bins,), -math.inf, dtype=fdt, device=dev)
    top = scatter_max(top, bins, xp.astype(u, fdt), xp)
    return xp.astype(count, int_dtype(xp)), xp.astype(risk_sum, fdt), top


def curve_from_grid(count: Array, risk_sum: Array, top: Array, /, *, xp: Namespace) -> RiskCoverageCurve:
    """The risk-coverage curve over the occupied cells (thresholds: each cell's largest ``u``)."""
    occupied = xp.nonzero(count > 0)[0]
    if occupied.shape[0] == 0:
        msg = "no instance was accumulated; call `update` with at least one instance first."
        raise ValueError(msg)
    return curve_from_groups(
        xp.take(top, occupied), xp.take(count, occupied), xp.take(risk_sum, occupied), xp=xp
    )


def image_events(
    pred: Array, label: Array, bins: Array, first: int, /, *, xp: Namespace
) -> tuple[Any, Any, Any, Any]:
    """Wrong-voxel events of one image: (class slot, grid cell, FN count, FP count), one row per voxel side.

    A wrong voxel (prediction ``a``, truth ``b``) gives a FP event for ``a`` and a FN event for ``b``; classes
    below ``first`` (the background when it is not evaluated) are dropped.
    """
    wrong = xp.nonzero(pred != label)[0]
    b = xp.take(bins, wrong)
    p = xp.astype(xp.take(pred, wrong), int_dtype(xp)) - first
    t = xp.astype(xp.take(label, wrong), int_dtype(xp)) - first
    ones = xp.ones_like(p)
    zeros = xp.zeros_like(p)
    cls = xp.concat([p, t])
    cell = xp.concat([b, b])
    fn = xp.concat([zeros, ones])
    fp = xp.concat([ones, zeros])
    keep = cls >= 0
    return cls[keep], cell[keep], fn[keep], fp[keep]


# ----------------------------------------------------------------------------------------------------
# shared pieces of the accumulators


def _aggregate(key: np.ndarray, fn: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``fn``/``fp`` per distinct ``key``: (sorted distinct keys, sums, sums) as int64."""
    keys, inverse = np.unique(key, return_inverse=True)
    fn_sum = np.bincount(inverse, weights=fn, minlength=keys.size).astype(np.int64)
    fp_sum = np.bincount(inverse, weights=fp, minlength=keys.size).astype(np.int64)
    return keys, fn_sum, fp_sum


def _host(x: Any) -> np.ndarray:
    """``x`` as NumPy; half-precision tensors (bfloat16 has no NumPy dtype) are widened to float32 first."""
    return to_numpy(_widen_half(x))


def _widen_half(x: Any) -> Any:
    """bfloat16/float16 tensors as float32 (exact), anything else unchanged: the checks run on NumPy."""
    if hasattr(x, "detach") and str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
        return x.detach().float()
    return x


def _check_grid(grid: Any, edges: np.ndarray | None) -> int:
    name = check_choice(grid, "grid", tuple(GRIDS))
    if edges is not None and name != "bfloat16":
        msg = f"`grid` and `edges` exclude each other: give one of them, got grid={name!r} and edges."
        raise ValueError(msg)
    return GRIDS[name]


def _check_max_memory(max_memory: Any) -> int:
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 0:
        msg = f"`max_memory` must be a non-negative int (bytes; 0: always the grid), got {max_memory!r}."
        raise ValueError(msg) if isinstance(max_memory, (int, np.integer)) else TypeError(msg)
    return int(max_memory)


def _compact_labels(x: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds ``[0, num_classes)`` (lossless)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes <= np.iinfo(dtype).max + 1:
            return x.astype(dtype, copy=False)
    return x.astype(np.int64, copy=False)


_EXACT_INT = 2**53  # integers of larger magnitude are not all exact in float64


def _big_integers(u: np.ndarray) -> bool:
    """Integer ``u`` with a value that float64 would round (``|u| > 2**53``): such ``u`` stays integer."""
    return u.dtype.kind in "iu" and u.size > 0 and (int(u.max()) > _EXACT_INT or int(u.min()) < -_EXACT_INT)


def _compact_u(u: np.ndarray) -> np.ndarray:
    """``u`` as float32 or float64, or as int64/uint64 when it holds integers beyond ``2**53`` (float64
    would tie distinct values); no copy when it already is one (the exact paths copy what they keep)."""
    if u.dtype in (np.float32, np.float64):
        return u
    if _big_integers(u):
        return u.astype(np.int64 if u.dtype.kind == "i" or int(u.max()) < 2**63 else np.uint64, copy=False)
    return u.astype(np.float64, copy=False)


def _common_u(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The kept ``u`` of several updates in one dtype that keeps every value exactly.

    float32 with float64 becomes float64. Integers beyond ``2**53`` make every part integer (int64, or
    uint64 for values of 2**63 and more): float parts must then hold whole numbers in that range, else the
    values cannot be compared exactly and a ``ValueError`` says so.
    """
    dtypes = {u.dtype for u in parts}
    if len(dtypes) == 1:
        return parts
    big = [u for u in parts if _big_integers(u)]
    if not big:
        return [u.astype(np.float64, copy=False) for u in parts]
    target = np.dtype(np.uint64) if any(u.dtype == np.uint64 for u in big) else np.dtype(np.int64)
    info = np.iinfo(target)
    out = []
    for u in parts:
        whole = u.dtype.kind in "iu" or bool(np.all(u == np.round(u)))
        inside = u.size == 0 or (int(u.min()) >= info.min and int(u.max()) <= info.max) if whole else False
        if not inside:
            msg = (
                "`uncertainty` holds integers beyond 2**53 in some updates and values that are not "
                f"{target} integers in others; float64 would tie distinct values, so pass one integer "
                "or one float dtype to every update."
            )
            raise ValueError(msg)
        out.append(u.astype(target, copy=False))
    return out


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Cells:
    """The occupied cells of a grid: sorted cell ids with count, summed risk and largest ``u``.

    Sparse, so a fine grid costs only its occupied cells; additions wait in a buffer that is folded in once
    it is as large as the state (amortized: each cell is re-sorted O(log) times).
    """

    def __init__(self) -> None:
        empty_f = np.zeros(0, dtype=np.float64)
        self.ids = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)
        self.risk = empty_f
        self.top = empty_f
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_size = 0

    def add(self, ids: np.ndarray, count: np.ndarray, risk: np.ndarray, top: np.ndarray) -> None:
        self._pending.append((ids, count, risk, top))
        self._pending_size += ids.size
        if self._pending_size > max(self.ids.size, 1 << 16):
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        parts = [(self.ids, self.count, self.risk, self.top), *self._pending]
        ids, count, risk, top = (np.concatenate(p) for p in zip(*parts, strict=True))
        self.ids, inverse = np.unique(ids, return_inverse=True)
        n = self.ids.size
        self.count = np.bincount(inverse, weights=count, minlength=n).astype(np.int64)
        if np.any(np.abs(count) >= 2**53):  # float weights would round: exact integer sums instead
            self.count = np.zeros(n, dtype=np.int64)
            np.add.at(self.count, inverse, count)
        self.risk = np.bincount(inverse, weights=risk, minlength=n)
        self.top = np.full(n, -np.inf)
        np.maximum.at(self.top, inverse, top)
        self._pending, self._pending_size = [], 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self._fold()
        return self.ids, self.count, self.risk, self.top

    def add_values(
        self, u: np.ndarray, risk: np.ndarray | None, grid: tuple[Any, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add flat values (``risk`` None: count only); returns the cell of every value and the occupied
        cells with their counts."""
        edges, bits = grid
        bins = grid_bins(u, edges=edges, bits=bits, xp=np)
        n_bins = grid_size(edges, bits=bits)
        w = np.zeros(u.shape[0]) if risk is None else risk.astype(np.float64, copy=False)
        if n_bins <= _DENSE_LIMIT:
            count = np.bincount(bins, minlength=n_bins)
            ids = np.nonzero(count)[0]
            risk_sum = np.bincount(bins, weights=w, minlength=n_bins)[ids]
            top = np.full(n_bins, -np.inf)
            np.maximum.at(top, bins, u.astype(np.float64, copy=False))
            count = count[ids].astype(np.int64)
            self.add(ids, count, risk_sum, top[ids])
        else:
            ids, inverse, count = np.unique(bins, return_inverse=True, return_counts=True)
            top = np.full(ids.size, -np.inf)
            np.maximum.at(top, inverse, u.astype(np.float64, copy=False))
            count = count.astype(np.int64)
            self.add(ids, count, np.bincount(inverse, weights=w, minlength=ids.size), top)
        return bins, ids, count


def _check_same_grid(self: Any, other: Any) -> None:
    if type(other) is not type(self):
        msg = f"`other` must be a {type(self).__name__}, got {type(other).__name__}."
        raise TypeError(msg)
    mine, theirs = self._edges, other._edges
    same = (mine is None and theirs is None) or (
        mine is not None and theirs is not None and np.array_equal(mine, theirs)
    )
    if not same or self._bits != other._bits:
        msg = "`other` must use the same grid (`grid` and `edges`) as this accumulator."
        raise ValueError(msg)


def _slack(count: np.ndarray) -> float:
    """Rounding allowance of a bound: 0 when every cell holds one instance (the grid is then exact)."""
    return 0.0 if count.size == 0 or int(count.max()) <= 1 else 8.0 * _EPS * count.size


def _risk_deltas(count: np.ndarray, risk: np.ndarray) -> tuple[float, float, float]:
    """How far the exact AURC (low, high) and AUGRC (low) can lie from the grid's, from the cell counts.

    Within a cell of ``n`` instances with summed risk ``r`` (``n0`` instances and ``E0`` risk before it), the
    accepted risk after ``k`` of its instances is at least ``L(k) = max(0, k - (n - r))`` (risk-free
    instances first) and at most ``U(k) = min(k, r)`` (errors first), both achievable. The step rule gives
    each position the risk at the end of its tie group; over every grouping the lowest total is the sum of
    suffix minima of ``(E0 + L(k)) / (n0 + k)`` (a valley: constant ``r(m)`` up to its minimum ``m``, then
    increasing) and the highest the sum of suffix maxima of ``(E0 + U(k)) / (n0 + k)`` (a peak, then
    decreasing); the tails are harmonic sums. The generalized risk ``(E0 + L(k)) / N`` only increases, so the
    grid (each cell one tie group) is its worst case.
    """
    n = count.astype(np.float64)
    r = risk.astype(np.float64)
    cum_n = np.cumsum(n)
    cum_r = np.cumsum(r)
    n_total = float(cum_n[-1])
    grid_term = n * (cum_r / cum_n)  # the grid's n * risk at the cell end

    def risk_at(m: np.ndarray, level: np.ndarray) -> np.ndarray:  # (E0 + level) / (n0 + m), end-exact
        return (cum_r - (r - level)) / (cum_n - (n - m))

    def clip(m: np.ndarray) -> np.ndarray:
        return np.clip(m, 1.0, n)

    a = n - r  # the risk-free share of the cell
    lo_m = [clip(np.floor(a)), clip(np.ceil(a))]
    lo_v = [risk_at(m, np.maximum(0.0, m - a)) for m in lo_m]
    pick = lo_v[1] < lo_v[0]
    m_lo = np.where(pick, lo_m[1], lo_m[0])
    v_lo = np.where(pick, lo_v[1], lo_v[0])
    n0 = cum_n - n
    dh_lo = harmonic_difference(n0 + m_lo, cum_n, np)
    low = m_lo * v_lo + (n - m_lo) - (cum_n - cum_r) * dh_lo
    hi_m = [clip(np.floor(r)), clip(np.ceil(r))]
    hi_v = [risk_at(m, np.minimum(m, r)) for m in hi_m]
    pick = hi_v[1] > hi_v[0]
    m_hi = np.where(pick, hi_m[1], hi_m[0])
    v_hi = np.where(pick, hi_v[1], hi_v[0])
    high = m_hi * v_hi + cum_r * harmonic_difference(n0 + m_hi, cum_n, np)
    single = n <= 1
    d_lo = np.where(single, 0.0, np.minimum(low - grid_term, 0.0))
    d_hi = np.where(single, 0.0, np.maximum(high - grid_term, 0.0))
    # AUGRC: sum_k L(k) over the cell against the grid's n * r
    j0 = np.maximum(1.0, np.ceil(a))
    s_lo = np.where(j0 <= n, (n - j0 + 1.0) * ((n + j0) / 2.0 - a), 0.0)
    g_lo = np.where(single, 0.0, np.minimum(s_lo - n * r, 0.0))
    return (
        float(np.sum(d_lo)) / n_total,
        float(np.sum(d_hi)) / n_total,
        float(np.sum(g_lo)) / (n_total * n_total),
    )


def grid_risk_bounds(count: Any, risk_sum: Any, /) -> dict[str, tuple[float, float, float]]:
    """Grid AURC and AUGRC with their rigorous bounds, from the occupied cells in increasing order.

    Parameters
    ----------
    count, risk_sum : arrays of shape (G,)
        Instances and summed instance risk of each occupied cell, cells in increasing ``u`` (any namespace;
        read on the host).

    Returns
    -------
    dict
        ``{"aurc": (value, low, high), "augrc": (value, low, high)}``: the grid's value (each cell one tie
        group) and the lowest and highest exact value of any data with these cell counts (see the module
        notes); ``low == value == high`` when every cell holds one instance.
    """
    n = to_numpy(count).astype(np.int64)
    r = to_numpy(risk_sum).astype(np.float64)
    ones = np.ones(n.size)
    curve = curve_from_groups(ones, n, r, xp=np)
    aurc_v = step_area(curve.coverage, curve.risk, xp=np)
    augrc_v = step_area(curve.coverage, curve.cumulative_risk / curve.n_total, xp=np)
    d_lo, d_hi, g_lo = _risk_deltas(n, r)
    s = _slack(n)
    return {
        "aurc": (aurc_v, max(0.0, aurc_v + d_lo - s), min(1.0, aurc_v + d_hi + s)),
        "augrc": (augrc_v, max(0.0, augrc_v + g_lo - s), augrc_v + s),
    }


def grid_dice_risk_bounds(count: Any, risk: Any, /) -> tuple[float, float, float]:
    """``aurc_dice`` on the grid with its rigorous bound: ``(value, low, high)``.

    ``count`` holds the voxels of each occupied cell and ``risk`` the risk ``1 - mean Dice`` once the cells
    up to it are accepted (cells in increasing ``u``). Accepting a wrong voxel never raises a Dice, so
    inside a cell the risk only grows from the risk before the cell to ``risk``: the grid (the whole cell
    accepted at once) is the highest value, and the lowest keeps the risk before the cell until the cell's
    last voxel.
    """
    n = to_numpy(count).astype(np.float64)
    risk_ = to_numpy(risk).astype(np.float64)
    coverage = np.cumsum(n) / np.sum(n)
    v = step_area(coverage, risk_, xp=np)
    start = np.concatenate([[0.0], risk_[:-1]])  # the risk before each cell: nothing of it accepted
    d_lo = float(np.sum((n - 1.0) * (start - risk_))) / float(np.sum(n))
    s = _slack(to_numpy(count))
    return v, max(0.0, v + min(d_lo, 0.0) - s), v + s


# ----------------------------------------------------------------------------------------------------
# instance risk


class RiskCoverageAccumulator:
    """Streaming risk-coverage curve, AURC, AUGRC and e-AURC: exact while the instances fit ``max_memory``,
    then on a threshold grid with rigorous bounds.

    Parameters
    ----------
    edges : sequence of float, optional
        Cell edges of the grid (strictly increasing); default: the grid named by ``grid``.
    grid : {"bfloat16", "float32-24"}, default "bfloat16"
        The grid used past the budget: the upper 16 or 24 bits of float32 ``u`` (finer: a tighter bound, at
        most ``2**24`` occupied cells).
    max_memory : int, default DEFAULT_MAX_MEMORY (1 GiB)
        Bytes of kept instances (float32 ``u`` and a bool: 5 bytes each) before the grid takes over; 0:
        the grid from the start.

    Notes
    -----
    ``path`` is ``"exact"`` while the instances are kept: every result is then the in-memory function's on
    the concatenated updates (for example [`selectivekit.aurc`][selectivekit.aurc]), to the last bit, and
    each bound is that value twice. On the grid the state is the occupied cells (count, summed risk,
    largest ``u``), whatever the number of instances; the curve comes from
    [`selectivekit.risk_coverage.curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] over those
    cells and [`aurc_bound`][selectivekit.RiskCoverageAccumulator.aurc_bound] gives the lowest and highest
    exact AURC consistent with the cell counts (see the module notes).

    Examples
    --------
    >>> import numpy as np
    >>> acc = RiskCoverageAccumulator()
    >>> acc.update(np.array([0.125, 0.25]), np.array([True, False]))
    >>> acc.update(np.array([0.5, 0.25]), np.array([True, True]))
    >>> acc.aurc(), acc.path
    (0.22916666666666663, 'exact')
    >>> grid = RiskCoverageAccumulator(max_memory=0)
    >>> grid.update(np.array([0.5, 0.5001, 0.25]), np.array([True, False, True]))
    >>> grid.path, [round(b, 6) for b in grid.aurc_bound()]  # exact AURC: 1/9 to 5/18
    ('grid', [0.111111, 0.277778])
    """

    def __init__(
        self, *, edges: Any = None, grid: str = "bfloat16", max_memory: int = DEFAULT_MAX_MEMORY
    ) -> None:
        self._edges = check_edges(edges)
        self._bits = _check_grid(grid, self._edges)
        self.max_memory = _check_max_memory(max_memory)
        self._u: list[np.ndarray] = []  # exact path: the instances, update after update
        self._risk: list[np.ndarray] = []  # bool "wrong" flags, or float64 risks once one is soft
        self._nbytes = 0
        self._cells: _Cells | None = None  # grid path
        self._soft = False

    @property
    def path(self) -> str:
        """``"exact"`` while the instances are kept, ``"grid"`` after the budget was exceeded."""
        return "exact" if self._cells is None else "grid"

    @property
    def n_instances(self) -> int:
        """Number of instances accumulated so far: the kept ones on the exact path, the sum of the cell counts
        on the grid."""
        if self._cells is None:
            return sum(u.shape[0] for u in self._u)
        return int(self._cells.arrays()[1].sum())

    def update(
        self,
        uncertainty: Array,
        correct: Array | None = None,
        /,
        *,
        risk: Array | None = None,
        mask: Array | None = None,
    ) -> None:
        """Add instances: ``correct`` (bool) or ``risk`` (per-instance, in [0, 1]); arrays of any shape."""
        if uncertainty is None:
            msg = "`uncertainty` must be an array, got None."
            raise TypeError(msg)
        inst = prepare_instances(
            _widen_half(uncertainty),
            _widen_half(correct),
            risk=_widen_half(risk),
            mask=_widen_half(mask),
            target="correct_or_risk",
        )
        u = _compact_u(_host(inst.u))
        if inst.is_bool:
            r = ~_host(inst.correct).astype(bool, copy=False)
        else:
            r = _host(inst.soft_risk).astype(np.float64)
        self._add(u, r)

    def _add(self, u: np.ndarray, r: np.ndarray, copy: bool = True) -> None:
        if r.dtype != np.bool_ and not self._soft:
            self._soft = True
            self._risk = [x.astype(np.float64) for x in self._risk]
        if self._soft and r.dtype == np.bool_:
            r = r.astype(np.float64)
        if self._cells is None and self._nbytes + u.nbytes + r.nbytes <= self.max_memory:
            self._u.append(u.copy() if copy else u)  # a copy: the caller may reuse its buffer
            self._risk.append(r.copy() if copy else r)
            self._nbytes += u.nbytes + r.nbytes
            return
        self._to_grid()
        self._grid_add(u, r)

    def _grid_add(self, u: np.ndarray, r: np.ndarray) -> None:
        assert self._cells is not None
        for start in range(0, u.shape[0], _CHUNK):
            stop = start + _CHUNK
            self._cells.add_values(u[start:stop], r[start:stop], (self._edges, self._bits))

    def _to_grid(self) -> None:
        if self._cells is not None:
            return
        self._cells = _Cells()
        for u, r in zip(self._u, self._risk, strict=True):
            self._grid_add(u, r)
        self._u, self._risk, self._nbytes = [], [], 0

    def merge(self, other: RiskCoverageAccumulator) -> RiskCoverageAccumulator:
        """Add the state of ``other`` (same grid) into this accumulator; returns ``self``.

        Exact + exact stays exact while both fit this accumulator's ``max_memory``; otherwise the result is
        on the grid. ``other`` is not changed. ``acc.merge(acc)`` doubles the data, as merging a copy does.
        """
        _check_same_grid(self, other)
        if other._cells is None:
            # a snapshot: with ``other is self`` the loop would walk the lists it appends to
            for u, r in list(zip(other._u, other._risk, strict=True)):
                self._add(u, r, copy=False)  # kept arrays are never written: both may share them
        else:
            self._to_grid()
            assert self._cells is not None
            self._cells.add(*other._cells.arrays())
        if other._soft and not self._soft:
            self._soft = True
            self._risk = [x.astype(np.float64) for x in self._risk]
        return self

    def _instances(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not self._u:
            msg = "no instance was accumulated; call `update` with at least one instance first."
            raise ValueError(msg)
        if len(self._u) > 1:  # join once; later calls reuse the joined arrays
            self._u, self._risk = [_concat(_common_u(self._u))], [_concat(self._risk)]
        u, r = self._u[0], self._risk[0]
        return u, ({"risk": r} if self._soft else {"correct": ~r})

    def _grid_curve(self) -> RiskCoverageCurve:
        assert self._cells is not None
        _, count, risk, top = self._cells.arrays()
        return curve_from_grid(count, risk, top, xp=np)

    def compute(self) -> RiskCoverageCurve:
        """The risk-coverage curve (NumPy arrays): at every distinct ``u`` on the exact path, at every
        occupied cell on the grid."""
        if self._cells is None:
            u, target = self._instances()
            return rc.risk_coverage_curve(u, target.get("correct"), risk=target.get("risk"))
        return self._grid_curve()

    def aurc(self) -> float:
        """AURC (lower is better), as [`selectivekit.aurc`][selectivekit.aurc] (on the grid: at the cells)."""
        return self.aurc_bound(value=True)[0]

    def augrc(self) -> float:
        """AUGRC (lower is better), as [`selectivekit.augrc`][selectivekit.augrc] (on the grid: at the
        cells)."""
        return self.augrc_bound(value=True)[0]

    def e_aurc(self) -> float:
        """Excess AURC (boolean correctness only: the optimum needs the error count, not the soft risks)."""
        return self.e_aurc_bound(value=True)[0]

    def _alone(self) -> tuple[np.ndarray, np.ndarray] | None:
        """On the grid with boolean correctness and every instance alone in its cell, the state is exact:
        the cells in order as instances ``(u, correct)``, so that the values are computed as the in-memory
        functions compute them, to the last bit. ``None`` otherwise."""
        _, count, risk, _ = self._cells.arrays()
        occupied = count > 0
        if self._soft or count[occupied].max(initial=0) > 1:
            return None
        return np.arange(int(occupied.sum()), dtype=np.float64), risk[occupied] == 0

    def aurc_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)``: the lowest and highest exact AURC consistent with the state (``(v, v)`` on the
        exact path); with ``value=True``, ``(value, low, high)``."""
        if self._cells is None or (alone := self._alone()) is not None:
            u, target = self._instances() if self._cells is None else (alone[0], {"correct": alone[1]})
            v = rc.aurc(u, target.get("correct"), risk=target.get("risk"))
            return (v, v, v) if value else (v, v)
        _, count, risk, _ = self._cells.arrays()
        out = grid_risk_bounds(count[count > 0], risk[count > 0])["aurc"]
        return out if value else out[1:]

    def augrc_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)`` for the AUGRC, as [`aurc_bound`][selectivekit.RiskCoverageAccumulator.aurc_bound]
        (the grid value is the highest)."""
        if self._cells is None or (alone := self._alone()) is not None:
            u, target = self._instances() if self._cells is None else (alone[0], {"correct": alone[1]})
            v = rc.augrc(u, target.get("correct"), risk=target.get("risk"))
            return (v, v, v) if value else (v, v)
        _, count, risk, _ = self._cells.arrays()
        out = grid_risk_bounds(count[count > 0], risk[count > 0])["augrc"]
        return out if value else out[1:]

    def e_aurc_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)`` for the excess AURC: the AURC bound less the optimum (known exactly from the
        counts)."""
        if self._soft:
            msg = "`e_aurc` needs boolean `correct` inputs; this accumulator received a soft `risk`."
            raise TypeError(msg)
        if self._cells is None or (alone := self._alone()) is not None:
            u, target = self._instances() if self._cells is None else (alone[0], {"correct": alone[1]})
            v = rc.e_aurc(u, target["correct"])
            return (v, v, v) if value else (v, v)
        v, lo, hi = self.aurc_bound(value=True)
        _, count, risk, _ = self._cells.arrays()
        best = aurc_optimal(int(count.sum()), round(float(risk.sum())))
        out = (v - best, lo - best, hi - best)
        return out if value else out[1:]


# ----------------------------------------------------------------------------------------------------
# segmentation

# The per-image fields of a grid state and the names they are stored under (`img_<name>`, format version 1)
_IMAGE_FIELDS = {
    "label_count": "label_count",
    "event_class": "ev_class",
    "event_cell": "ev_cell",
    "event_fn": "ev_fn",
    "event_fp": "ev_fp",
    "cells": "cells",
    "cum_count": "cum_count",
}
_STATE_FORMAT = "selectivekit.SegmentationAccumulator"
_STATE_VERSION = 1


def _state_error(what: str) -> ValueError:
    return ValueError(f"`arrays` do not hold a consistent {_STATE_FORMAT} state: {what}.")


def _integers(arrays: dict[str, np.ndarray], name: str, low: int = 0, high: int | None = None) -> np.ndarray:
    """``arrays[name]``: 1-d integers in ``[low, high)``."""
    a = arrays[name]
    if isinstance(a, np.ndarray) and a.ndim == 1 and a.size == 0:  # an empty state: any dtype
        return a.astype(np.int64)
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu":
        raise _state_error(f"`{name}` must be a 1-d integer array, got {getattr(a, 'dtype', type(a))}")
    if a.size and (int(a.min()) < low or (high is not None and int(a.max()) >= high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise _state_error(f"`{name}` must hold values {bound}, got [{int(a.min())}, {int(a.max())}]")
    return a


def _increasing(a: np.ndarray, name: str) -> None:
    if a.size > 1 and not bool(np.all(a[1:] > a[:-1])):
        raise _state_error(f"`{name}` must be strictly increasing")


def _check_exact_state(arrays: dict[str, np.ndarray], num_classes: int) -> None:
    sizes = _integers(arrays, "raw_size", 1)
    total = int(sizes.sum())
    for name in ("raw_pred", "raw_label"):
        if _integers(arrays, name, 0, num_classes).size != total:
            raise _state_error(f"`{name}` must hold the {total} voxels of `raw_size`")
    u = arrays["raw_u"]
    if not isinstance(u, np.ndarray) or u.ndim != 1 or u.size != total:
        raise _state_error(f"`raw_u` must hold the {total} voxels of `raw_size`")
    if u.dtype not in (np.float32, np.float64, np.int64, np.uint64) or (
        u.dtype.kind == "f" and not bool(np.all(np.isfinite(u)))
    ):
        raise _state_error(f"`raw_u` must hold finite float32/float64 or 64-bit integers, got {u.dtype}")


def _check_grid_state(arrays: dict[str, np.ndarray], acc: SegmentationAccumulator) -> None:
    """Every invariant of a grid state: sorted cells inside the grid, their largest ``u`` increasing,
    per image cumulative counts that rise to its size, wrong-voxel events within the labelled counts, and
    global cell counts equal to the sum of the images' counts."""
    n_bins = acc._n_bins()
    n_classes = acc.num_classes - acc._first
    ids = _integers(arrays, "cells_id", 0, n_bins)
    _increasing(ids, "cells_id")
    count = _integers(arrays, "cells_count", 1)
    top = arrays["cells_top"]
    if count.size != ids.size or not isinstance(top, np.ndarray) or top.shape != ids.shape:
        raise _state_error("`cells_id`, `cells_count` and `cells_top` must have one entry per cell")
    if top.dtype.kind != "f" or not bool(np.all(np.isfinite(top))):
        raise _state_error("`cells_top` must hold finite floats")
    # distinct cells hold distinct values: their largest values increase with the cell (the cell of each
    # is not recomputed: integer u beyond 2**24 may round differently through float64 than directly)
    _increasing(top, "cells_top")
    sizes = _integers(arrays, "img_size", 1)
    fields = {}
    for stored in _IMAGE_FIELDS.values():
        lengths = _integers(arrays, f"img_{stored}_len", 0)
        values = arrays[f"img_{stored}"]
        if lengths.size != sizes.size or not isinstance(values, np.ndarray) or values.ndim != 1:
            raise _state_error(f"`img_{stored}_len` must have one entry per image")
        if int(lengths.sum()) != values.size:
            raise _state_error(f"`img_{stored}_len` must sum to the length of `img_{stored}`")
        fields[stored] = lengths
    if not np.all(fields["label_count"] == n_classes):
        raise _state_error(f"every image must have {n_classes} entries in `img_label_count`")
    for a, b in (
        ("ev_class", "ev_cell"),
        ("ev_class", "ev_fn"),
        ("ev_class", "ev_fp"),
        ("cells", "cum_count"),
    ):
        if not np.array_equal(fields[a], fields[b]):
            raise _state_error(f"`img_{a}` and `img_{b}` must have the same length per image")
    label_count = _integers(arrays, "img_label_count", 0)
    event_class = _integers(arrays, "img_ev_class", 0, n_classes)
    event_cell = _integers(arrays, "img_ev_cell", 0, n_bins)
    event_fn, event_fp = _integers(arrays, "img_ev_fn", 0), _integers(arrays, "img_ev_fp", 0)
    cells = _integers(arrays, "img_cells", 0, n_bins)
    cum = _integers(arrays, "img_cum_count", 1)
    per_cell = np.zeros(ids.size, dtype=np.int64)
    starts = {f: np.concatenate([[0], np.cumsum(fields[f])]) for f in ("label_count", "ev_class", "cells")}
    for i, size in enumerate(sizes.tolist()):
        labelled = label_count[starts["label_count"][i] : starts["label_count"][i + 1]]
        events = slice(starts["ev_class"][i], starts["ev_class"][i + 1])
        cell_range = slice(starts["cells"][i], starts["cells"][i + 1])
        image_cells, image_cum_count = cells[cell_range], cum[cell_range]
        _increasing(image_cells, "img_cells")
        _increasing(image_cum_count, "img_cum_count")
        if image_cum_count.size == 0 or int(image_cum_count[-1]) != size:
            raise _state_error(f"image {i}: `img_cum_count` must rise to its size {size}")
        if int(labelled.sum()) > size:
            raise _state_error(f"image {i}: `img_label_count` must sum to at most its size {size}")
        _increasing(
            event_class[events].astype(np.int64) * n_bins + event_cell[events], "img_ev_class/img_ev_cell"
        )
        if not bool(np.all(np.isin(event_cell[events], image_cells))):
            raise _state_error(f"image {i}: `img_ev_cell` must be among its `img_cells`")
        fn = np.bincount(event_class[events], weights=event_fn[events], minlength=n_classes)
        fp = np.bincount(event_class[events], weights=event_fp[events], minlength=n_classes)
        if np.any(fn > labelled) or np.any(fp > size - labelled):
            raise _state_error(f"image {i}: more wrong voxels than labelled ones in a class")
        at = np.searchsorted(ids, image_cells)
        if np.any(at >= ids.size) or not np.array_equal(ids[np.minimum(at, ids.size - 1)], image_cells):
            raise _state_error(f"image {i}: `img_cells` must be among `cells_id`")
        np.add.at(per_cell, at, np.diff(image_cum_count.astype(np.int64), prepend=0))
    if not np.array_equal(per_cell, count):
        raise _state_error("`cells_count` must be the sum of the images' voxels per cell")


class SegmentationAccumulator:
    """Streaming coverage-aware Dice, one image or volume per
    [`update`][selectivekit.SegmentationAccumulator.update]: exact while the images fit ``max_memory``, then
    on a threshold grid with rigorous bounds.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``.
    include_background : bool, default False
        Evaluate class 0 too (default: classes ``1..K-1``).
    edges : sequence of float, optional
        Cell edges of the grid (strictly increasing); default: the grid named by ``grid``.
    grid : {"bfloat16", "float32-24"}, default "bfloat16"
        The grid used past the budget (upper 16 or 24 bits of float32 ``u``).
    max_memory : int, default DEFAULT_MAX_MEMORY (1 GiB)
        Bytes of kept images (``u`` as given, float32 or float64, and both label maps in the smallest
        unsigned dtype: 6 bytes a voxel for float32 ``u`` and up to 256 classes) before the grid takes over;
        0: the grid from the start.

    Notes
    -----
    On the exact path (``path == "exact"``) the results are those of
    [`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve],
    [`selectivekit.aurc_dice`][selectivekit.aurc_dice] and
    [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage] on the images in update order, to the
    last bit. On the grid, per image the state holds the labelled-voxel count of each class, the wrong-voxel
    events aggregated per (class, occupied cell) and the cumulative voxel count per occupied cell (for the
    per-image coverage); globally it holds a count and the largest ``u`` per occupied cell. Nothing grows
    with the number of voxels. The results are computed by the same
    [`DiceGroups`][selectivekit.segmentation.engine.DiceGroups] code as the in-memory functions, and
    [`aurc_dice_bound`][selectivekit.SegmentationAccumulator.aurc_dice_bound] and
    [`dice_bounds`][selectivekit.SegmentationAccumulator.dice_bounds] bound the exact values. Accepting a
    wrong voxel never raises a Dice, so within a cell the risk ``1 - mean Dice`` only grows: the grid (the
    cell accepted at once) is the worst case, and the best case keeps the risk at the cell's start until
    its last voxel (a conservative low end: which wrong voxels come first is not ordered simply).

    Examples
    --------
    >>> import numpy as np
    >>> acc = SegmentationAccumulator(num_classes=2)
    >>> acc.update(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]), np.array([0.125, 0.875, 0.25, 0.375]))
    >>> acc.compute().mean_dice
    array([1.        , 1.        , 0.66666667, 0.5       ])
    >>> acc.dice_at_coverage([1.0])[0].mean, acc.path
    (0.5, 'exact')
    """

    def __init__(
        self,
        *,
        num_classes: int,
        include_background: bool = False,
        edges: Any = None,
        grid: str = "bfloat16",
        max_memory: int = DEFAULT_MAX_MEMORY,
    ) -> None:
        self.num_classes = check_num_classes(num_classes, include_background)
        self.include_background = bool(include_background)
        self._first = 0 if self.include_background else 1
        self._edges = check_edges(edges)
        self._bits = _check_grid(grid, self._edges)
        self.max_memory = _check_max_memory(max_memory)
        self._raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # exact path: (pred, label, u)
        self._nbytes = 0
        self._cells: _Cells | None = None  # grid path: global cells and per-image events
        self._images: list[dict[str, np.ndarray]] = []

    @property
    def path(self) -> str:
        """``"exact"`` while the images are kept, ``"grid"`` after the budget was exceeded."""
        return "exact" if self._cells is None else "grid"

    @property
    def n_images(self) -> int:
        """Number of images accumulated so far."""
        return len(self._raw) + len(self._images)

    @property
    def classes(self) -> tuple[int, ...]:
        """The evaluated classes: ``1..K-1``, or ``0..K-1`` with ``include_background``."""
        return tuple(range(self._first, self.num_classes))

    @property
    def grid(self) -> str:
        """The name of the grid used past the budget (``"bfloat16"`` also when ``edges`` are given)."""
        return next(name for name, bits in GRIDS.items() if bits == self._bits)

    def _n_bins(self) -> int:
        return grid_size(self._edges, bits=self._bits)

    def update(self, pred: Array, label: Array, uncertainty: Array, /) -> None:
        """Add one image: predicted and true labels and uncertainty of the same (any) shape."""
        pred = as_array(_widen_half(pred), "pred")
        label = as_array(_widen_half(label), "label")
        uncertainty = as_array(_widen_half(uncertainty), "uncertainty")
        images, _ = collect_images([pred], [label], [uncertainty], self.num_classes)
        p = _compact_labels(_host(images.pred), self.num_classes)
        t = _compact_labels(_host(images.label), self.num_classes)
        u = _compact_u(_host(images.u))
        self._add(p, t, u)

    def _add(self, p: np.ndarray, t: np.ndarray, u: np.ndarray, copy: bool = True) -> None:
        size = p.nbytes + t.nbytes + u.nbytes
        if self._cells is None and self._nbytes + size <= self.max_memory:
            # a copy of the caller's arrays (it may reuse its buffers); kept arrays are never written
            self._raw.append((p.copy(), t.copy(), u.copy()) if copy else (p, t, u))
            self._nbytes += size
            return
        self._to_grid()
        self._images.append(self._grid_image(p, t, u))

    def _to_grid(self) -> None:
        if self._cells is not None:
            return
        self._cells = _Cells()
        self._images = [self._grid_image(p, t, u) for p, t, u in self._raw]
        self._raw, self._nbytes = [], 0

    def _grid_image(self, p: np.ndarray, t: np.ndarray, u: np.ndarray) -> dict[str, np.ndarray]:
        """The grid state of one image (its cells also go into the global cells)."""
        assert self._cells is not None
        n_bins = self._n_bins()
        n_classes = self.num_classes - self._first
        label_count = np.zeros(self.num_classes, dtype=np.int64)
        cell_parts, count_parts, chunks = [], [], []
        for start in range(0, u.shape[0], _CHUNK):
            stop = start + _CHUNK
            bins, cells, counts = self._cells.add_values(u[start:stop], None, (self._edges, self._bits))
            cell_parts.append(cells)
            count_parts.append(counts)
            label_count += np.bincount(t[start:stop], minlength=self.num_classes)
            cls, cell, fn, fp = image_events(p[start:stop], t[start:stop], bins, self._first, xp=np)
            chunks.append(_aggregate(cls * n_bins + cell, fn, fp))  # per chunk: temporaries stay small
        # aggregate per (class, cell) into compact sorted arrays (the smallest dtypes that hold the values)
        compound, fn, fp = _aggregate(*(np.concatenate(parts) for parts in zip(*chunks, strict=True)))
        cells, inverse = np.unique(np.concatenate(cell_parts), return_inverse=True)
        per_cell = np.bincount(inverse, weights=np.concatenate(count_parts), minlength=cells.size)
        cell_dtype = np.uint16 if n_bins <= 1 << 16 else np.int64
        count_dtype = np.int32 if u.shape[0] < 2**31 else np.int64
        return {
            "size": np.int64(u.shape[0]),
            "label_count": label_count[self._first :],
            "event_class": (compound // n_bins).astype(np.int16 if n_classes < 2**15 else np.int64),
            "event_cell": (compound % n_bins).astype(cell_dtype),
            "event_fn": fn.astype(count_dtype),
            "event_fp": fp.astype(count_dtype),
            "cells": cells.astype(cell_dtype),
            "cum_count": np.cumsum(per_cell.astype(np.int64)).astype(count_dtype),
        }

    def _check_same(self, other: Any) -> None:
        _check_same_grid(self, other)
        if (other.num_classes, other.include_background) != (self.num_classes, self.include_background):
            msg = (
                f"`other` must evaluate the same classes (num_classes={self.num_classes}, "
                f"include_background={self.include_background}), got num_classes={other.num_classes}, "
                f"include_background={other.include_background}."
            )
            raise ValueError(msg)

    def merge(self, other: SegmentationAccumulator) -> SegmentationAccumulator:
        """Append the images of ``other`` (same classes and grid) after this one's; returns ``self``.

        Exact + exact stays exact while both fit this accumulator's ``max_memory``; otherwise the result is
        on the grid. ``other`` is not changed. ``acc.merge(acc)`` appends its images once more, as merging a
        copy does.
        """
        self._check_same(other)
        if other._cells is None:
            for p, t, u in list(other._raw):  # a snapshot: ``other`` may be ``self``
                self._add(p, t, u, copy=False)
            return self
        self._to_grid()
        assert self._cells is not None
        self._cells.add(*other._cells.arrays())
        self._images.extend(other._images)
        return self

    def class_voxels(self) -> tuple[np.ndarray, np.ndarray]:
        """Voxels labelled and voxels predicted as each evaluated class (``classes``), over all images:
        two int64 arrays of shape (len(classes),), exact on both paths (on the grid: the labelled counts
        less the wrong voxels of the class in the truth, plus those in the prediction)."""
        labelled = np.zeros(self.num_classes - self._first, dtype=np.int64)
        predicted = np.zeros_like(labelled)
        k = self.num_classes
        for p, t, _ in self._raw:
            labelled += np.bincount(t, minlength=k)[self._first :]
            predicted += np.bincount(p, minlength=k)[self._first :]
        for image in self._images:
            n = labelled.size
            labelled += image["label_count"].astype(np.int64)
            predicted += image["label_count"].astype(np.int64)
            event_class = image["event_class"]
            predicted -= np.bincount(event_class, weights=image["event_fn"], minlength=n).astype(np.int64)
            predicted += np.bincount(event_class, weights=image["event_fp"], minlength=n).astype(np.int64)
        return labelled, predicted

    # ------------------------------------------------------------------ exact path

    def _exact_inputs(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict[str, Any]]:
        if not self._raw:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        preds, labels, us = (list(x) for x in zip(*self._raw, strict=True))
        us = _common_u(us)  # float32 and float64 images: compared as float64 (exact)
        options = {"num_classes": self.num_classes, "include_background": self.include_background}
        return preds, labels, us, options

    # ------------------------------------------------------------------ grid path

    def groups(self) -> tuple[DiceGroups, np.ndarray]:
        """The [`DiceGroups`][selectivekit.segmentation.engine.DiceGroups] over the occupied cells, and the
        occupied cell ids (the state is moved to the grid first if it is exact)."""
        if self.n_images == 0:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        self._to_grid()
        assert self._cells is not None
        occupied, count, _, top = self._cells.arrays()
        n_classes = self.num_classes - self._first
        keys, groups, fns, fps = [], [], [], []
        for i, image in enumerate(self._images):
            keys.append(i * n_classes + image["event_class"].astype(np.int64))
            groups.append(np.searchsorted(occupied, image["event_cell"].astype(np.int64)))
            fns.append(image["event_fn"])
            fps.append(image["event_fp"])
        label_count = np.stack([image["label_count"] for image in self._images])
        dice_groups = DiceGroups.from_events(
            top,
            np.cumsum(count),
            label_count,
            np.concatenate(keys),
            np.concatenate(groups),
            np.concatenate(fns),
            np.concatenate(fps),
            xp=np,
        )
        return dice_groups, occupied

    def _grid_groups(self) -> tuple[DiceGroups, np.ndarray]:
        if self._cells is None:
            msg = "internal: the grid groups were asked on the exact path."
            raise RuntimeError(msg)
        return self.groups()

    def compute(self) -> DiceCoverageCurve:
        """The Dice-coverage curve (as
        [`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve]): at every distinct ``u`` on
        the exact path, at every occupied cell on the grid."""
        if self._cells is None:
            preds, labels, us, options = self._exact_inputs()
            return seg.dice_coverage_curve(preds, labels, us, **options)
        return self._grid_groups()[0].curve(xp=np)

    def aurc_dice(self) -> float:
        """``sum_g (c_g - c_{g-1}) (1 - meanDice_g)`` (lower is better), as
        [`selectivekit.aurc_dice`][selectivekit.aurc_dice]."""
        return self.aurc_dice_bound(value=True)[0]

    def aurc_dice_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)``: the lowest and highest exact ``aurc_dice`` consistent with the state (``(v, v)``
        on the exact path); with ``value=True``, ``(value, low, high)``."""
        if self._cells is None:
            preds, labels, us, options = self._exact_inputs()
            v = seg.aurc_dice(preds, labels, us, **options)
            return (v, v, v) if value else (v, v)
        groups, _ = self._grid_groups()
        curve = groups.curve(xp=np)
        out = grid_dice_risk_bounds(np.diff(groups.cum_count, prepend=0), 1.0 - curve.mean_dice)
        return out if value else out[1:]

    def dice_at_coverage(self, coverages: Any, /) -> list[DiceAtCoverage]:
        """Per-image Dice at each requested global coverage (as
        [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage])."""
        cs = check_coverages(coverages)
        if self._cells is None:
            preds, labels, us, options = self._exact_inputs()
            return seg.dice_at_coverage(preds, labels, us, cs, **options)
        groups, occupied = self._grid_groups()
        return [self._summary_at(groups, occupied, c, groups.group_at_coverage(c, xp=np)) for c in cs]

    def _summary_at(self, groups: DiceGroups, occupied: np.ndarray, c: float, g: int) -> DiceAtCoverage:
        """The [`DiceAtCoverage`][selectivekit.DiceAtCoverage] when cells ``0..g`` are accepted (``g = -1``:
        nothing)."""
        if g < 0:
            n_images, n_classes = groups.label_count.shape
            per_class = np.ones((n_images, n_classes))
            return summarize(c, -math.inf, 0.0, per_class, np.zeros(n_images), self.classes, xp=np)
        cell = occupied[g]
        per_image_coverage = np.array(
            [
                (
                    image["cum_count"][k - 1]
                    if (k := np.searchsorted(image["cells"], cell, side="right"))
                    else 0
                )
                / image["size"]
                for image in self._images
            ],
            dtype=np.float64,
        )
        realized = int(groups.cum_count[g]) / groups.n_total
        return summarize(
            c,
            float(groups.thresholds[g]),
            realized,
            groups.per_class_dice(g, xp=np),
            per_image_coverage,
            self.classes,
            xp=np,
        )

    def dice_bounds(self, coverages: Any, /) -> list[dict[str, tuple[float, float]]]:
        """Bounds on the exact results at each requested coverage: ``{"mean": (low, high), "p5": (low,
        high), "coverage": (low, high)}``.

        The exact operating point accepts every cell before the one the grid stops at, and part or all of
        that cell: its mean Dice and 5th percentile lie between their grid values (the whole cell accepted)
        and their values before the cell; its realized coverage between ``ceil(c N) / N`` and the grid's. On
        the exact path each bound is the value twice.
        """
        cs = check_coverages(coverages)
        if self._cells is None:
            results = self.dice_at_coverage(cs)
            return [
                {"mean": (r.mean, r.mean), "p5": (r.p5, r.p5), "coverage": (r.coverage, r.coverage)}
                for r in results
            ]
        groups, occupied = self._grid_groups()
        out = []
        for c in cs:
            g = groups.group_at_coverage(c, xp=np)
            at = self._summary_at(groups, occupied, c, g)
            before = self._summary_at(groups, occupied, c, g - 1)
            lowest = required_count(c, groups.n_total) / groups.n_total
            out.append(
                {
                    "mean": (at.mean, before.mean),
                    "p5": (at.p5, before.p5),
                    "coverage": (min(lowest, at.coverage), at.coverage),
                }
            )
        return out

    # ------------------------------------------------------------------ files

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The state as a JSON-able header and named NumPy arrays (no pickle), for
        [`from_arrays`][selectivekit.SegmentationAccumulator.from_arrays]: e.g. one ``.npz`` per shard."""
        header = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "include_background": self.include_background,
            "edges": None if self._edges is None else [float(e) for e in self._edges],
            "grid": self.grid,
            "max_memory": self.max_memory,
            "path": self.path,
            "n_images": self.n_images,
        }
        arrays: dict[str, np.ndarray] = {}
        if self._cells is None:
            for i, name in enumerate(("pred", "label", "u")):
                parts = [image[i] for image in self._raw]
                parts = _common_u(parts) if name == "u" and parts else parts  # one dtype, every value exact
                arrays[f"raw_{name}"] = _concat(parts) if parts else np.zeros(0)
            arrays["raw_size"] = np.array([image[0].size for image in self._raw], dtype=np.int64)
        else:
            ids, count, _, top = self._cells.arrays()
            arrays.update(cells_id=ids, cells_count=count, cells_top=top)
            arrays["img_size"] = np.array([image["size"] for image in self._images], dtype=np.int64)
            for field, stored in _IMAGE_FIELDS.items():
                arrays[f"img_{stored}"] = np.concatenate([image[field] for image in self._images])
                arrays[f"img_{stored}_len"] = np.array(
                    [image[field].size for image in self._images], dtype=np.int64
                )
        return header, arrays

    @classmethod
    def from_arrays(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> SegmentationAccumulator:
        """Rebuild an accumulator from [`to_arrays`][selectivekit.SegmentationAccumulator.to_arrays]; a header
        of another format or version raises ``ValueError``."""
        if not isinstance(header, dict) or header.get("format") != _STATE_FORMAT:
            msg = f"`header` is not a {_STATE_FORMAT} state."
            raise ValueError(msg)
        if header.get("version") != _STATE_VERSION:
            version = header.get("version")
            msg = f"`header` has state version {version!r}; this selectivekit reads {_STATE_VERSION}."
            raise ValueError(msg)
        try:
            acc = cls(
                num_classes=header["num_classes"],
                include_background=header["include_background"],
                edges=header["edges"],
                grid=header["grid"],
                max_memory=header["max_memory"],
            )
            n_images = header["n_images"]
            if (
                isinstance(n_images, bool)
                or not isinstance(n_images, int)
                or header["path"]
                not in (
                    "exact",
                    "grid",
                )
            ):
                msg = "`header` must hold `n_images` (an integer) and `path` (exact or grid)"
                raise _state_error(msg)
            if header["path"] == "exact":
                _check_exact_state(arrays, acc.num_classes)
            else:
                _check_grid_state(arrays, acc)
            if header["path"] == "exact":
                sizes = arrays["raw_size"]
                bounds = np.concatenate([[0], np.cumsum(sizes)])
                raw = [arrays[f"raw_{name}"] for name in ("pred", "label", "u")]
                acc._raw = [tuple(a[bounds[i] : bounds[i + 1]] for a in raw) for i in range(sizes.size)]
                acc._nbytes = sum(a.nbytes for image in acc._raw for a in image)
            else:
                acc._cells = _Cells()
                acc._cells.add(
                    arrays["cells_id"],
                    arrays["cells_count"],
                    np.zeros(arrays["cells_id"].size),
                    arrays["cells_top"],
                )
                split = {}
                for field, stored in _IMAGE_FIELDS.items():
                    ends = np.cumsum(arrays[f"img_{stored}_len"])
                    split[field] = np.split(arrays[f"img_{stored}"], ends[:-1]) if ends.size else []
                acc._images = [
                    {"size": np.int64(size), **{f: split[f][i] for f in _IMAGE_FIELDS}}
                    for i, size in enumerate(arrays["img_size"])
                ]
        except (KeyError, TypeError, IndexError) as exc:
            msg = f"`arrays` do not hold a complete {_STATE_FORMAT} state ({type(exc).__name__}: {exc})."
            raise ValueError(msg) from exc
        if acc.n_images != n_images:
            msg = f"`arrays` hold {acc.n_images} images, the header says {n_images}."
            raise ValueError(msg)
        return acc

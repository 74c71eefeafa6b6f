"""The threshold grid of the streaming accumulators: cells of float32 bits or of given edges, the
occupied cells of a state, and the rigorous bounds of grid results (see ``selectivekit.streaming``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._lib import bincount, bits_int32, device, float_dtype, get_namespace, int_dtype, scatter_max, to_numpy
from .._lib.tie_groups import harmonic_difference
from ..risk_coverage import RiskCoverageCurve, curve_area, curve_from_groups, step_area
from ..typing import Array, Namespace

__all__ = [
    "BFLOAT16_BINS",
    "GRIDS",
    "Cells",
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


class Cells:
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
    aurc_v = curve_area(curve)
    augrc_v = curve_area(curve, generalized=True)
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

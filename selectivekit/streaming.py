"""Mergeable accumulators for evaluation sets that do not fit in memory.

Uncertainty values are collected on a threshold grid. By default the grid has one cell per bfloat16 value:
a float32 ``u`` falls in the cell of its upper 16 bits (relative resolution ``2**-8`` at every magnitude, so
saturated-softmax voxels near 0 keep separate thresholds); the cells are ordered like the values. A grid of
user-given ``edges`` (right-closed cells ``(e_{j-1}, e_j]``) can be used instead.

Each occupied cell keeps the largest ``u`` seen in it, and that value is the reported threshold: accepting
``u <= max`` accepts exactly the cells up to it, so every operating point is achievable. Results are exact
for uncertainty values that are alone in their cell (e.g. ``u`` already rounded to bfloat16): then the
streaming results equal the in-memory functions. The state grows only with the number of images, classes
and occupied cells, never with the number of voxels; ``a.merge(b)`` equals one pass over both inputs.

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

from ._lib import (
    as_array,
    bincount,
    bits_int32,
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
from .risk_coverage import RiskCoverageCurve, aurc_optimal, curve_from_groups, step_area
from .segmentation.engine import DiceGroups, summarize
from .segmentation.images import collect_images
from .segmentation.results import DiceAtCoverage, DiceCoverageCurve
from .typing import Array, Namespace

__all__ = [
    "BFLOAT16_BINS",
    "RiskCoverageAccumulator",
    "SegmentationAccumulator",
    "curve_from_grid",
    "grid_bins",
    "grid_size",
    "grid_update",
    "image_events",
]

#: Number of cells of the default grid (every bfloat16 bit pattern, signs included).
BFLOAT16_BINS = 1 << 16

# Voxels handled per step inside ``update``: bounds the temporary memory independently of the volume size.
_CHUNK = 1 << 17


# ----------------------------------------------------------------------------------------------------
# the grid: shared with the framework metrics


def grid_size(edges: Any = None) -> int:
    """Number of cells of the grid: ``2**16`` for bfloat16, ``len(edges) + 1`` for given edges."""
    return BFLOAT16_BINS if edges is None else len(edges) + 1


def grid_bins(u: Array, /, *, edges: Any = None, xp: Namespace | None = None) -> Array:
    """Grid cell of every value of ``u`` (int64, same shape), increasing with ``u``.

    bfloat16 grid (``edges=None``): with ``b`` the float32 bits, the cell is ``32768 + (b >> 16)`` for
    ``u >= 0`` and ``32767 - ((b & 0x7fffffff) >> 16)`` for ``u < 0`` (``-0.0`` is folded into ``+0.0``).
    Float64 input is rounded to float32 first (monotone, so cells stay ordered). Given ``edges``, the cell
    is the number of edges strictly below ``u`` (cells ``(e_{j-1}, e_j]``).

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
    bits = bits_int32(u32, xp)
    high = (bits & 0x7FFFFFFF) >> 16  # int32 arithmetic: small temporaries
    return xp.astype(xp.where(bits >= 0, high + 32768, 32767 - high), int_dtype(xp))


def grid_update(
    u: Array, risk: Array, n_bins: int, /, *, edges: Any = None, xp: Namespace
) -> tuple[Any, Any, Any]:
    """Per-cell instance count, summed risk and largest ``u`` of flat ``u`` and instance ``risk``.

    The update step shared by [`RiskCoverageAccumulator`][selectivekit.RiskCoverageAccumulator] and the
    framework ``AURC`` metrics. Returns
    dense arrays of shape (n_bins,): count (int64), risk sum (float64) and max ``u`` (float64, ``-inf`` in
    empty cells).
    """
    bins = grid_bins(u, edges=edges, xp=xp)
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


def _aggregate(key: np.ndarray, fn: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``fn``/``fp`` per distinct ``key``: (sorted distinct keys, sums, sums) as int64."""
    keys, inverse = np.unique(key, return_inverse=True)
    fn_sum = np.bincount(inverse, weights=fn, minlength=keys.size).astype(np.int64)
    fp_sum = np.bincount(inverse, weights=fp, minlength=keys.size).astype(np.int64)
    return keys, fn_sum, fp_sum


def _check_same_grid(self: Any, other: Any) -> None:
    if type(other) is not type(self):
        msg = f"`other` must be a {type(self).__name__}, got {type(other).__name__}."
        raise TypeError(msg)
    mine, theirs = self._edges, other._edges
    same = (mine is None and theirs is None) or (
        mine is not None and theirs is not None and np.array_equal(mine, theirs)
    )
    if not same:
        msg = "`other` must use the same grid (`edges`) as this accumulator."
        raise ValueError(msg)


# ----------------------------------------------------------------------------------------------------
# instance risk


class RiskCoverageAccumulator:
    """Streaming risk-coverage curve, AURC, AUGRC and e-AURC over a threshold grid.

    Parameters
    ----------
    edges : sequence of float, optional
        Cell edges of the grid (strictly increasing); default: every bfloat16 value.

    Notes
    -----
    The state is three dense arrays over the grid cells (count, summed risk, largest ``u``), about 1.5 MB for
    the bfloat16 grid, whatever the number of instances.
    [`compute`][selectivekit.RiskCoverageAccumulator.compute] builds the curve with
    [`selectivekit.risk_coverage.curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] over the
    occupied cells.

    Examples
    --------
    >>> import numpy as np
    >>> acc = RiskCoverageAccumulator()
    >>> acc.update(np.array([0.125, 0.25]), np.array([True, False]))
    >>> acc.update(np.array([0.5, 0.25]), np.array([True, True]))
    >>> acc.aurc()
    0.22916666666666666
    """

    def __init__(self, *, edges: Any = None) -> None:
        self._edges = check_edges(edges)
        n = grid_size(self._edges)
        self.count = np.zeros(n, dtype=np.int64)
        self.risk_sum = np.zeros(n, dtype=np.float64)
        self.max_u = np.full(n, -np.inf)
        self._soft = False

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
        inst = prepare_instances(uncertainty, correct, risk=risk, mask=mask, target="correct_or_risk")
        u, risk_ = to_numpy(inst.u), to_numpy(inst.risk)
        self._soft |= not inst.is_bool
        n_bins = self.count.shape[0]
        for start in range(0, u.shape[0], _CHUNK):
            count, risk_sum, top = grid_update(
                u[start : start + _CHUNK], risk_[start : start + _CHUNK], n_bins, edges=self._edges, xp=np
            )
            self.count += count
            self.risk_sum += risk_sum
            np.maximum(self.max_u, top, out=self.max_u)

    def merge(self, other: RiskCoverageAccumulator) -> RiskCoverageAccumulator:
        """Add the state of ``other`` (same grid) into this accumulator; returns ``self``."""
        _check_same_grid(self, other)
        self.count += other.count
        self.risk_sum += other.risk_sum
        np.maximum(self.max_u, other.max_u, out=self.max_u)
        self._soft |= other._soft
        return self

    def compute(self) -> RiskCoverageCurve:
        """The risk-coverage curve at every occupied cell (NumPy arrays)."""
        return curve_from_grid(self.count, self.risk_sum, self.max_u, xp=np)

    def aurc(self) -> float:
        """AURC (lower is better), as [`selectivekit.aurc`][selectivekit.aurc] on the grid."""
        curve = self.compute()
        return step_area(curve.coverage, curve.risk, xp=np)

    def augrc(self) -> float:
        """AUGRC (lower is better), as [`selectivekit.augrc`][selectivekit.augrc] on the grid."""
        curve = self.compute()
        return step_area(curve.coverage, curve.cumulative_risk / curve.n_total, xp=np)

    def e_aurc(self) -> float:
        """Excess AURC (boolean correctness only: the optimum needs the error count, not the soft risks)."""
        if self._soft:
            msg = "`e_aurc` needs boolean `correct` inputs; this accumulator received a soft `risk`."
            raise TypeError(msg)
        curve = self.compute()
        n_errors = round(float(curve.cumulative_risk[-1]))
        return self.aurc() - aurc_optimal(curve.n_total, n_errors)


# ----------------------------------------------------------------------------------------------------
# segmentation


class SegmentationAccumulator:
    """Streaming coverage-aware Dice: one image or volume per
    [`update`][selectivekit.SegmentationAccumulator.update].

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``.
    include_background : bool, default False
        Evaluate class 0 too (default: classes ``1..K-1``).
    edges : sequence of float, optional
        Cell edges of the grid (strictly increasing); default: every bfloat16 value.

    Notes
    -----
    Per image the state holds the labelled-voxel count of each class, the wrong-voxel events aggregated per
    (class, occupied cell) and the cumulative voxel count per occupied cell (for the per-image coverage);
    globally it holds a count and the largest ``u`` per cell. Nothing grows with the number of voxels. The
    results are computed by the same [`DiceGroups`][selectivekit.segmentation.engine.DiceGroups] code as
    [`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve] and
    [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].

    Examples
    --------
    >>> import numpy as np
    >>> acc = SegmentationAccumulator(num_classes=2)
    >>> acc.update(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 1]), np.array([0.125, 0.875, 0.25, 0.375]))
    >>> acc.compute().mean_dice
    array([1.        , 1.        , 0.66666667, 0.5       ])
    >>> acc.dice_at_coverage([1.0])[0].mean
    0.5
    """

    def __init__(self, *, num_classes: int, include_background: bool = False, edges: Any = None) -> None:
        self.num_classes = check_num_classes(num_classes, include_background)
        self.include_background = bool(include_background)
        self._first = 0 if self.include_background else 1
        self._edges = check_edges(edges)
        n = grid_size(self._edges)
        self.count = np.zeros(n, dtype=np.int64)
        self.max_u = np.full(n, -np.inf)
        self._images: list[dict[str, np.ndarray]] = []

    @property
    def n_images(self) -> int:
        return len(self._images)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(range(self._first, self.num_classes))

    def update(self, pred: Array, label: Array, uncertainty: Array, /) -> None:
        """Add one image: predicted and true labels and uncertainty of the same (any) shape."""
        pred = as_array(pred, "pred")
        label = as_array(label, "label")
        uncertainty = as_array(uncertainty, "uncertainty")
        images, _ = collect_images([pred], [label], [uncertainty], self.num_classes)
        p, t, u = to_numpy(images.pred), to_numpy(images.label), to_numpy(images.u)
        n_bins = self.count.shape[0]
        n_cls = self.num_classes - self._first
        image_count = np.zeros(n_bins, dtype=np.int64)
        label_count = np.zeros(self.num_classes, dtype=np.int64)
        chunks = []
        for start in range(0, u.shape[0], _CHUNK):
            stop = start + _CHUNK
            bins = grid_bins(u[start:stop], edges=self._edges, xp=np)
            image_count += np.bincount(bins, minlength=n_bins)
            np.maximum.at(self.max_u, bins, u[start:stop].astype(np.float64))
            label_count += np.bincount(t[start:stop], minlength=self.num_classes)
            cls, cell, fn, fp = image_events(p[start:stop], t[start:stop], bins, self._first, xp=np)
            chunks.append(_aggregate(cls * n_bins + cell, fn, fp))  # per chunk: temporaries stay small
        # aggregate per (class, cell) into compact sorted arrays (the smallest dtypes that hold the values)
        compound, fn, fp = _aggregate(*(np.concatenate(parts) for parts in zip(*chunks, strict=True)))
        occupied = np.nonzero(image_count)[0]
        cell_dtype = np.uint16 if n_bins <= 1 << 16 else np.int64
        count_dtype = np.int32 if u.shape[0] < 2**31 else np.int64
        self.count += image_count
        self._images.append(
            {
                "size": np.int64(u.shape[0]),
                "label_count": label_count[self._first :],
                "ev_class": (compound // n_bins).astype(np.int16 if n_cls < 2**15 else np.int64),
                "ev_cell": (compound % n_bins).astype(cell_dtype),
                "ev_fn": fn.astype(count_dtype),
                "ev_fp": fp.astype(count_dtype),
                "cells": occupied.astype(cell_dtype),
                "cum_count": np.cumsum(image_count[occupied]).astype(count_dtype),
            }
        )

    def merge(self, other: SegmentationAccumulator) -> SegmentationAccumulator:
        """Append the images of ``other`` (same classes and grid) after this one's; returns ``self``."""
        _check_same_grid(self, other)
        if (other.num_classes, other.include_background) != (self.num_classes, self.include_background):
            msg = (
                f"`other` must evaluate the same classes (num_classes={self.num_classes}, "
                f"include_background={self.include_background}), got num_classes={other.num_classes}, "
                f"include_background={other.include_background}."
            )
            raise ValueError(msg)
        self.count += other.count
        np.maximum(self.max_u, other.max_u, out=self.max_u)
        self._images.extend(other._images)
        return self

    def groups(self) -> tuple[DiceGroups, np.ndarray]:
        """The [`DiceGroups`][selectivekit.segmentation.engine.DiceGroups] over the occupied cells, and the
        occupied cell ids."""
        if not self._images:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        occupied = np.nonzero(self.count)[0]
        lookup = np.zeros(self.count.shape[0], dtype=np.int64)
        lookup[occupied] = np.arange(occupied.size)
        n_cls = self.num_classes - self._first
        keys, groups, fns, fps = [], [], [], []
        for i, im in enumerate(self._images):
            keys.append(i * n_cls + im["ev_class"].astype(np.int64))
            groups.append(lookup[im["ev_cell"].astype(np.int64)])
            fns.append(im["ev_fn"])
            fps.append(im["ev_fp"])
        label_count = np.stack([im["label_count"] for im in self._images])
        dice_groups = DiceGroups.from_events(
            self.max_u[occupied],
            np.cumsum(self.count[occupied]),
            label_count,
            np.concatenate(keys),
            np.concatenate(groups),
            np.concatenate(fns),
            np.concatenate(fps),
            xp=np,
        )
        return dice_groups, occupied

    def compute(self) -> DiceCoverageCurve:
        """The Dice-coverage curve at every occupied cell (as
        [`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve])."""
        return self.groups()[0].curve(xp=np)

    def aurc_dice(self) -> float:
        """``sum_g (c_g - c_{g-1}) (1 - meanDice_g)`` (lower is better), as
        [`selectivekit.aurc_dice`][selectivekit.aurc_dice]."""
        curve = self.compute()
        return step_area(curve.coverage, 1.0 - curve.mean_dice, xp=np)

    def dice_at_coverage(self, coverages: Any, /) -> list[DiceAtCoverage]:
        """Per-image Dice at each requested global coverage (as
        [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage])."""
        cs = check_coverages(coverages)
        groups, occupied = self.groups()
        results = []
        for c in cs:
            g = groups.group_at_coverage(c, xp=np)
            cell = occupied[g]
            per_image_coverage = np.array(
                [
                    (im["cum_count"][k - 1] if (k := np.searchsorted(im["cells"], cell, side="right")) else 0)
                    / im["size"]
                    for im in self._images
                ],
                dtype=np.float64,
            )
            realized = int(groups.cum_count[g]) / groups.n_total
            results.append(
                summarize(
                    c,
                    float(groups.thresholds[g]),
                    realized,
                    groups.per_class_dice(g, xp=np),
                    per_image_coverage,
                    self.classes,
                    xp=np,
                )
            )
        return results

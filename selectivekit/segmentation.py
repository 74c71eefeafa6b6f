"""Selective segmentation with referral: coverage-aware Dice and exact Dice-coverage curves (SPEC section 5).

At a threshold ``t`` every voxel with ``u <= t`` keeps its prediction and every voxel with ``u > t`` is
referred to a radiologist, who labels it correctly (paper, Appendix C). Dice is then computed on **all**
voxels. Coverage is global: one threshold for the whole evaluated set.

How the exact curve is computed
-------------------------------
Referring a correct voxel changes nothing. A wrong voxel (prediction ``a``, truth ``b``) adds one false
positive to class ``a`` and one false negative to class ``b`` while accepted, and one true positive to class
``b`` once referred. With ``L`` the number of voxels labelled ``k`` in an image and ``FN``/``FP`` the accepted
wrong voxels whose truth/prediction is ``k``, the class Dice after referral is

    Dice_k = 2 (L - FN) / (2 L - FN + FP)        (1.0 when the denominator is 0: class absent from both)

So the whole curve only needs, per (image, class), the wrong voxels grouped by threshold: one sort of ``u``
(for the coverage) plus grouped cumulative sums over the wrong voxels. The same *groups* representation is
filled by the streaming accumulators (:mod:`selectivekit.streaming`), where a group is a grid bin instead of
a distinct value; :func:`dice_from_counts` and the functions on :class:`DiceGroups` are the single
implementation of the formula used by every path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat

from ._validation import (
    as_array,
    check_coverages,
    check_num_classes,
    check_uncertainty,
    float_dtype,
    get_namespace,
    int_dtype,
)
from .risk_coverage import step_area
from .selective import required_count

__all__ = [
    "DiceAtCoverage",
    "DiceCoverageCurve",
    "DiceGroups",
    "PerImageComparison",
    "aurc_dice",
    "compare_at_coverage",
    "dice_at_coverage",
    "dice_coverage_curve",
    "dice_from_counts",
]


# ----------------------------------------------------------------------------------------------------
# result types


@dataclass(frozen=True)
class DiceAtCoverage:
    """Coverage-aware Dice at one requested coverage.

    Attributes
    ----------
    requested : float
        The requested coverage ``c``.
    threshold : float
        The global threshold ``t`` (voxels with ``u <= t`` keep their prediction).
    coverage : float
        Realized global coverage ``#{u <= t} / N`` (at least ``requested``; ties are never split).
    per_image_dice : array of shape (n_images,)
        Mean Dice over the evaluated classes of each image, after referral (higher is better).
    per_image_coverage : array of shape (n_images,)
        Share of each image's voxels that keep their prediction.
    per_class_dice : array of shape (n_images, n_evaluated_classes)
        Dice of each evaluated class (``classes``) in each image; 1.0 where a class is absent from both.
    mean, std, p5 : float
        Mean, standard deviation (``ddof=0``) and 5th percentile (linear interpolation) of ``per_image_dice``.
    classes : tuple of int
        The evaluated class ids (columns of ``per_class_dice``).
    """

    requested: float
    threshold: float
    coverage: float
    per_image_dice: Any
    per_image_coverage: Any
    per_class_dice: Any
    mean: float
    std: float
    p5: float
    classes: tuple[int, ...]


@dataclass(frozen=True)
class DiceCoverageCurve:
    """Mean Dice after referral at every achievable threshold, in increasing coverage.

    Attributes
    ----------
    coverage : array of shape (G,)
        Realized global coverage at each threshold; the last entry is 1.
    mean_dice : array of shape (G,)
        Mean over images of the per-image Dice (higher is better).
    threshold : array of shape (G,)
        The thresholds, increasing (the distinct uncertainty values, or the per-bin maxima when streaming).
    """

    coverage: Any
    mean_dice: Any
    threshold: Any


@dataclass(frozen=True)
class PerImageComparison:
    """Per-image differences between two models at the same requested coverage (paper, Figure 2).

    Attributes
    ----------
    requested : float
        The requested coverage both results were computed at.
    coverage_difference : array of shape (n_images,)
        ``c_b - c_a`` per image (x axis of Figure 2).
    dice_difference : array of shape (n_images,)
        ``d_b - d_a`` per image (y axis of Figure 2).
    quadrant_share : dict of int to float
        Share of images in each open quadrant: 1 (both higher), 2 (lower coverage, higher Dice),
        3 (both lower), 4 (higher coverage, lower Dice).
    on_axis_share : float
        Share of images with a zero coverage or Dice difference (on an axis, in no quadrant).
    """

    requested: float
    coverage_difference: Any
    dice_difference: Any
    quadrant_share: dict[int, float]
    on_axis_share: float


# ----------------------------------------------------------------------------------------------------
# the shared pieces: one Dice formula, one groups representation


def _device(x: Any) -> Any:
    return array_api_compat.device(x)


def dice_from_counts(label_count: Any, fn: Any, fp: Any, /, *, xp: Any) -> Any:
    """Class Dice after referral from counts: ``2 (L - FN) / (2 L - FN + FP)``, 1.0 when ``0 / 0``.

    ``L`` is the number of voxels labelled with the class, ``FN``/``FP`` the *accepted* wrong voxels whose
    truth/prediction is the class. Arrays broadcast; the result is floating (float64 where available).
    """
    fdt = float_dtype(xp)
    label_count = xp.astype(label_count, fdt, copy=False)
    fn = xp.astype(fn, fdt, copy=False)
    fp = xp.astype(fp, fdt, copy=False)
    num = 2.0 * (label_count - fn)
    den = 2.0 * label_count - fn + fp
    empty = den == 0
    return xp.where(empty, xp.ones_like(den), num / xp.where(empty, xp.ones_like(den), den))


def _bincount(x: Any, n: int, xp: Any, weights: Any = None) -> Any:
    """``bincount(x, minlength=n)`` (sum of ``weights`` per bin); fast paths for NumPy and PyTorch."""
    if array_api_compat.is_numpy_namespace(xp):
        import numpy as np

        return np.bincount(x, weights=weights, minlength=n)[:n]
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.bincount(x, weights=weights, minlength=n)[:n]
    # Generic array API: sort, cumulative sum, read the sums at the bin boundaries.
    order = xp.argsort(x, stable=False)
    xs = xp.take(x, order)
    if weights is None:
        cum = xp.cumulative_sum(xp.ones_like(xs), include_initial=True)
    else:
        cum = xp.cumulative_sum(xp.take(weights, order), include_initial=True)
    edges = xp.searchsorted(xs, xp.arange(n + 1, dtype=xs.dtype, device=_device(xs)), side="left")
    return xp.take(cum, edges[1:]) - xp.take(cum, edges[:-1])


@dataclass(frozen=True)
class DiceGroups:
    """Everything the Dice-coverage computations need, for exact groups (distinct ``u``) or grid bins.

    Built by :meth:`from_events`; filled by the in-memory functions of this module and by
    :class:`selectivekit.streaming.SegmentationAccumulator`.

    Attributes
    ----------
    thresholds : array of shape (G,)
        Increasing thresholds; accepting group ``g`` means accepting every voxel with ``u <= thresholds[g]``.
    cum_count : array of shape (G,)
        Voxels accepted at each threshold (cumulative over groups, all images).
    label_count : array of shape (n_images, C)
        Voxels labelled with each evaluated class, per image.
    key, group, cum_fn, cum_fp, compound : arrays of shape (U,)
        Wrong-voxel events aggregated per (image, class, group) and sorted by ``compound = key * G + group``
        with ``key = image * C + class slot``; ``cum_fn``/``cum_fp`` are cumulative within each key.
    position, event_group : arrays, optional
        Only when the events were given sorted by group: for each aggregated entry the index of one of its
        events in that order, and the group of every event (lets :meth:`curve` skip a sort).
    """

    thresholds: Any
    cum_count: Any
    label_count: Any
    key: Any
    group: Any
    cum_fn: Any
    cum_fp: Any
    compound: Any
    position: Any = None
    event_group: Any = None

    @property
    def n_groups(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def n_total(self) -> int:
        return int(self.cum_count[-1])

    @classmethod
    def from_events(
        cls,
        thresholds: Any,
        cum_count: Any,
        label_count: Any,
        key: Any,
        group: Any,
        fn: Any,
        fp: Any,
        /,
        *,
        group_sorted: bool = False,
        xp: Any,
    ) -> DiceGroups:
        """Sort and aggregate wrong-voxel events; ``(key, group)`` pairs may repeat and come in any order
        (or, with ``group_sorted=True``, in increasing group).

        ``cum_count[g]`` is the number of voxels with ``u <= thresholds[g]`` (all images); ``key`` is
        ``image * C + class slot``, ``group`` indexes ``thresholds``, ``fn``/``fp`` count the wrong voxels of
        the event whose truth/prediction is the key's class.
        """
        n_groups = thresholds.shape[0]
        n_keys = label_count.shape[0] * label_count.shape[1]
        key = xp.astype(key, int_dtype(xp), copy=False)
        group = xp.astype(group, int_dtype(xp), copy=False)
        if group_sorted:
            # groups already increase: a stable sort on the (few) keys orders by (key, group); NumPy uses a
            # linear-time radix sort for 16-bit keys
            small = xp.int16 if n_keys < 2**15 else int_dtype(xp)
            order = xp.argsort(xp.astype(key, small), stable=True)
            event_group = group
            compound = xp.take(key, order) * n_groups + xp.take(group, order)
        else:
            compound = key * n_groups + group
            order = xp.argsort(compound, stable=False)
            compound = xp.take(compound, order)
            event_group = None
        cfn = xp.cumulative_sum(xp.take(xp.astype(fn, int_dtype(xp), copy=False), order))
        cfp = xp.cumulative_sum(xp.take(xp.astype(fp, int_dtype(xp), copy=False), order))
        position = order
        if compound.shape[0]:
            true = xp.ones((1,), dtype=xp.bool, device=_device(compound))
            ends = xp.nonzero(xp.concat([compound[1:] != compound[:-1], true]))[0]
            compound = xp.take(compound, ends)
            cfn = xp.take(cfn, ends)
            cfp = xp.take(cfp, ends)
            position = xp.take(order, ends)
        key = compound // n_groups
        group = compound - key * n_groups
        # cumulative within each key: subtract the running total before the key's first entry
        key_starts = xp.arange(n_keys, dtype=int_dtype(xp), device=_device(compound)) * n_groups
        start = xp.take(xp.searchsorted(compound, key_starts, side="left"), key)
        zero = xp.zeros((1,), dtype=int_dtype(xp), device=_device(compound))
        before_fn = xp.take(xp.concat([zero, cfn]), start)
        before_fp = xp.take(xp.concat([zero, cfp]), start)
        return cls(
            thresholds=thresholds,
            cum_count=cum_count,
            label_count=xp.astype(label_count, int_dtype(xp), copy=False),
            key=key,
            group=group,
            cum_fn=cfn - before_fn,
            cum_fp=cfp - before_fp,
            compound=compound,
            position=position if group_sorted else None,
            event_group=event_group,
        )

    def curve(self, *, xp: Any) -> DiceCoverageCurve:
        """Mean Dice at every group.

        Each aggregated event changes the Dice of one (image, class); the changes telescope, so the mean Dice
        after group ``g`` is ``1 + (sum of the changes of groups <= g) / (n_images C)``. The sums are formed
        for the groups that hold events and then repeated over the runs of groups without wrong voxels.
        """
        n_keys = self.label_count.shape[0] * self.label_count.shape[1]
        n_groups = self.n_groups
        fdt = float_dtype(xp)
        dev = _device(self.cum_count)
        coverage = xp.astype(self.cum_count, fdt)
        coverage /= self.n_total
        if self.key.shape[0] == 0:
            mean_dice = xp.ones((n_groups,), dtype=fdt, device=dev)
            return DiceCoverageCurve(coverage=coverage, mean_dice=mean_dice, threshold=self.thresholds)
        after = dice_from_counts(
            xp.take(xp.reshape(self.label_count, (-1,)), self.key), self.cum_fn, self.cum_fp, xp=xp
        )
        true = xp.ones((1,), dtype=xp.bool, device=dev)
        first = xp.concat([true, self.key[1:] != self.key[:-1]])
        one = xp.ones((1,), dtype=fdt, device=dev)
        before = xp.where(first, xp.ones_like(after), xp.concat([one, after[:-1]]))
        # sum the changes per group (in group order), then accumulate over groups
        if self.position is not None:
            # events came sorted by group: put each entry's change back at one of its events' positions
            groups = self.event_group
            running = xp.cumulative_sum(_bincount(self.position, groups.shape[0], xp, weights=after - before))
        else:
            order = xp.argsort(self.group, stable=False)
            groups = xp.take(self.group, order)
            running = xp.cumulative_sum(xp.take(after - before, order))
        ends = xp.nonzero(xp.concat([groups[1:] != groups[:-1], true]))[0]
        event_groups = xp.take(groups, ends)
        dice_at_events = 1.0 + xp.take(running, ends) / n_keys
        # groups before the first event keep Dice 1; each event group's value holds until the next one
        values = xp.concat([one, dice_at_events])
        bounds = xp.concat(
            [
                xp.zeros((1,), dtype=int_dtype(xp), device=dev),
                event_groups,
                xp.asarray([n_groups], dtype=int_dtype(xp), device=dev),
            ]
        )
        mean_dice = xp.repeat(values, bounds[1:] - bounds[:-1])
        return DiceCoverageCurve(coverage=coverage, mean_dice=mean_dice, threshold=self.thresholds)

    def group_at_coverage(self, coverage: float, *, xp: Any) -> int:
        """Index of the first group whose cumulative count reaches ``k = ceil(c N)`` (SPEC section 2)."""
        k = required_count(coverage, self.n_total)
        target = xp.asarray([k], dtype=int_dtype(xp), device=_device(self.cum_count))
        return int(xp.searchsorted(self.cum_count, target, side="left")[0])

    def per_class_dice(self, group: int, *, xp: Any) -> Any:
        """Dice of every (image, class) when groups ``0..group`` are accepted: shape (n_images, C)."""
        n_images, n_classes = self.label_count.shape
        n_keys = n_images * n_classes
        keys = xp.arange(n_keys, dtype=int_dtype(xp), device=_device(self.cum_count))
        fn = xp.zeros((n_keys,), dtype=int_dtype(xp), device=_device(self.cum_count))
        fp = fn
        if self.compound.shape[0]:
            idx = xp.searchsorted(self.compound, keys * self.n_groups + group, side="right") - 1
            safe = xp.clip(idx, 0, None)
            valid = (idx >= 0) & (xp.take(self.key, safe) == keys)
            fn = xp.where(valid, xp.take(self.cum_fn, safe), fn)
            fp = xp.where(valid, xp.take(self.cum_fp, safe), fp)
        dice = dice_from_counts(xp.reshape(self.label_count, (-1,)), fn, fp, xp=xp)
        return xp.reshape(dice, (n_images, n_classes))


def _percentile_linear(values: Any, q: float, xp: Any) -> float:
    """``numpy.percentile(values, q)`` with the default linear interpolation."""
    s = xp.sort(values, stable=False)
    n = s.shape[0]
    pos = q / 100.0 * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return float(s[lo]) + (pos - lo) * (float(s[hi]) - float(s[lo]))


def summarize(
    requested: float,
    threshold: float,
    coverage: float,
    per_class: Any,
    per_image_coverage: Any,
    classes: tuple[int, ...],
    /,
    *,
    xp: Any,
) -> DiceAtCoverage:
    """Assemble a :class:`DiceAtCoverage` (mean, ``ddof=0`` std and 5th percentile of the image Dice)."""
    per_image = xp.mean(per_class, axis=1)
    return DiceAtCoverage(
        requested=requested,
        threshold=threshold,
        coverage=coverage,
        per_image_dice=per_image,
        per_image_coverage=per_image_coverage,
        per_class_dice=per_class,
        mean=float(xp.mean(per_image)),
        std=float(xp.std(per_image)),
        p5=_percentile_linear(per_image, 5.0, xp),
        classes=classes,
    )


# ----------------------------------------------------------------------------------------------------
# validation


def _is_sequence(x: Any) -> bool:
    return isinstance(x, (list, tuple))


def _check_labels(x: Any, name: str, num_classes: int, xp: Any) -> Any:
    if xp.isdtype(x.dtype, "bool"):
        x = xp.astype(x, int_dtype(xp))
    if not xp.isdtype(x.dtype, "integral"):
        msg = f"`{name}` must hold integer class labels, got dtype {x.dtype}."
        raise TypeError(msg)
    if x.shape[0] and bool((xp.min(x) < 0) | (xp.max(x) >= num_classes)):
        msg = (
            f"`{name}` must hold labels in [0, {num_classes}) (num_classes={num_classes}), "
            f"got values in [{int(xp.min(x))}, {int(xp.max(x))}]."
        )
        raise ValueError(msg)
    return x


@dataclass(frozen=True)
class _Images:
    """Validated inputs, flattened and concatenated image after image."""

    pred: Any
    label: Any
    u: Any
    sizes: tuple[int, ...]
    stacked: bool


def _collect(pred: Any, label: Any, uncertainty: Any, num_classes: int, xp: Any) -> tuple[_Images, Any]:
    seqs = [_is_sequence(a) for a in (pred, label, uncertainty)]
    if any(seqs) and not all(seqs):
        names = ", ".join(
            f"`{n}`" for n, s in zip(("pred", "label", "uncertainty"), seqs, strict=True) if not s
        )
        msg = (
            "`pred`, `label` and `uncertainty` must all be stacked arrays of shape (n_images, *spatial) or "
            f"all sequences of per-image arrays; {names} is not a sequence."
        )
        raise TypeError(msg)
    if all(seqs):
        if len(pred) == 0:
            msg = "`pred` is an empty sequence; at least one image is needed."
            raise ValueError(msg)
        for name, seq in (("label", label), ("uncertainty", uncertainty)):
            if len(seq) != len(pred):
                msg = f"`{name}` must hold {len(pred)} images like `pred`, got {len(seq)}."
                raise ValueError(msg)
        preds = [as_array(p, "pred") for p in pred]
        labels = [as_array(p, "label") for p in label]
        us = [as_array(p, "uncertainty") for p in uncertainty]
        xp = get_namespace(*preds, *labels, *us, xp=xp)
        sizes = []
        for i, (p, lab, u) in enumerate(zip(preds, labels, us, strict=True)):
            for name, other in (("label", lab), ("uncertainty", u)):
                if tuple(other.shape) != tuple(p.shape):
                    msg = (
                        f"`{name}[{i}]` must have the same shape as `pred[{i}]` {tuple(p.shape)}, "
                        f"got {tuple(other.shape)}."
                    )
                    raise ValueError(msg)
            size = math.prod(p.shape)
            if size == 0:
                msg = f"`pred[{i}]` is empty (shape {tuple(p.shape)}); every image needs a voxel."
                raise ValueError(msg)
            sizes.append(size)
        flat = [[xp.reshape(a, (-1,)) for a in arrays] for arrays in (preds, labels, us)]
        p_all, l_all, u_all = (xp.concat(f) if len(f) > 1 else f[0] for f in flat)
        stacked = False
    else:
        pred = as_array(pred, "pred")
        label = as_array(label, "label")
        uncertainty = as_array(uncertainty, "uncertainty")
        xp = get_namespace(pred, label, uncertainty, xp=xp)
        if pred.ndim < 2:
            msg = (
                "`pred` must be a stacked array of shape (n_images, *spatial) with at least 2 dimensions "
                f"(or a list of per-image arrays), got shape {tuple(pred.shape)}."
            )
            raise ValueError(msg)
        for name, other in (("label", label), ("uncertainty", uncertainty)):
            if tuple(other.shape) != tuple(pred.shape):
                msg = (
                    f"`{name}` must have the same shape as `pred` {tuple(pred.shape)}, "
                    f"got {tuple(other.shape)}."
                )
                raise ValueError(msg)
        if math.prod(pred.shape) == 0:
            msg = f"`pred` is empty (shape {tuple(pred.shape)}); at least one voxel per image is needed."
            raise ValueError(msg)
        sizes = [math.prod(pred.shape[1:])] * pred.shape[0]
        p_all, l_all, u_all = (xp.reshape(a, (-1,)) for a in (pred, label, uncertainty))
        stacked = True
    check_uncertainty(u_all, xp)
    p_all = _check_labels(p_all, "pred", num_classes, xp)
    l_all = _check_labels(l_all, "label", num_classes, xp)
    return _Images(p_all, l_all, u_all, tuple(sizes), stacked), xp


# ----------------------------------------------------------------------------------------------------
# in-memory path: exact groups = distinct values of u


def _exact_groups(images: _Images, num_classes: int, include_background: bool, xp: Any) -> DiceGroups:
    u = images.u
    dev = _device(u)
    true = xp.ones((1,), dtype=xp.bool, device=dev)
    # coverage: one sort of every voxel's u (values only: an unstable SIMD sort is several times faster)
    s = xp.sort(u, stable=False)
    ends = xp.nonzero(xp.concat([s[1:] != s[:-1], true]))[0]
    thresholds = xp.take(s, ends)
    del s
    ends += 1  # in place: the number of voxels with u <= thresholds[g]
    cum_count = ends

    first = 0 if include_background else 1
    n_classes = num_classes - first
    n_images = len(images.sizes)

    # labelled voxels per (image, class): one bincount per image
    offsets = [0]
    for size in images.sizes:
        offsets.append(offsets[-1] + size)
    label_count = xp.stack(
        [
            _bincount(xp.astype(images.label[offsets[i] : offsets[i + 1]], int_dtype(xp)), num_classes, xp)[
                first:
            ]
            for i in range(n_images)
        ]
    )

    # wrong voxels, in increasing u: one event for the predicted class (FP while accepted), one for the true
    # class (FN while accepted, TP once referred). Only their own, small sort is needed.
    w_idx = xp.nonzero(images.pred != images.label)[0]
    u_w = xp.take(u, w_idx)
    order = xp.argsort(u_w, stable=False)
    w_idx = xp.take(w_idx, order)
    u_w = xp.take(u_w, order)
    if w_idx.shape[0]:
        w_ends = xp.nonzero(xp.concat([u_w[1:] != u_w[:-1], true]))[0]
        rank = xp.cumulative_sum(xp.astype(xp.concat([true, u_w[1:] != u_w[:-1]]), int_dtype(xp))) - 1
        # sorted queries into the sorted thresholds: each distinct wrong value's group index
        group_w = xp.take(xp.searchsorted(thresholds, xp.take(u_w, w_ends), side="left"), rank)
    else:
        group_w = xp.zeros((0,), dtype=int_dtype(xp), device=dev)
    if images.stacked:
        image_w = w_idx // images.sizes[0]
    else:
        bounds = xp.asarray(offsets[1:], dtype=w_idx.dtype, device=dev)
        image_w = xp.searchsorted(bounds, w_idx, side="right")
    base = xp.astype(image_w, int_dtype(xp)) * n_classes - first
    cls_pred = xp.astype(xp.take(images.pred, w_idx), int_dtype(xp))
    cls_true = xp.astype(xp.take(images.label, w_idx), int_dtype(xp))
    # interleave the two events of each wrong voxel so that the events stay sorted by group
    ones = xp.ones_like(cls_pred)
    zeros = xp.zeros_like(cls_pred)

    def pairs(a: Any, b: Any) -> Any:
        return xp.reshape(xp.stack([a, b], axis=1), (-1,))

    key = pairs(base + cls_pred, base + cls_true)
    group = pairs(group_w, group_w)
    fn = pairs(zeros, ones)
    fp = pairs(ones, zeros)
    if first:
        keep = pairs(cls_pred, cls_true) >= first
        key, group, fn, fp = key[keep], group[keep], fn[keep], fp[keep]
    return DiceGroups.from_events(
        thresholds, cum_count, label_count, key, group, fn, fp, group_sorted=True, xp=xp
    )


def _per_image_coverage(images: _Images, threshold: Any, xp: Any) -> Any:
    accepted = images.u <= threshold
    fdt = float_dtype(xp)
    if images.stacked:
        per = xp.sum(xp.astype(xp.reshape(accepted, (len(images.sizes), -1)), fdt), axis=1)
    else:
        parts, start = [], 0
        for size in images.sizes:
            parts.append(xp.sum(xp.astype(accepted[start : start + size], fdt)))
            start += size
        per = xp.stack(parts)
    sizes = xp.asarray(images.sizes, dtype=fdt, device=_device(per))
    return per / sizes


def _prepare(pred, label, uncertainty, num_classes, include_background, xp):
    num_classes = check_num_classes(num_classes, include_background)
    images, xp = _collect(pred, label, uncertainty, num_classes, xp)
    groups = _exact_groups(images, num_classes, bool(include_background), xp)
    return images, groups, num_classes, xp


# ----------------------------------------------------------------------------------------------------
# public API


def dice_at_coverage(
    pred: Any,
    label: Any,
    uncertainty: Any,
    coverages: Any,
    /,
    *,
    num_classes: int,
    include_background: bool = False,
    xp: Any = None,
) -> list[DiceAtCoverage]:
    """Coverage-aware Dice with referral at each requested global coverage (higher Dice is better).

    Parameters
    ----------
    pred, label : integer arrays of shape (n_images, *spatial), or sequences of per-image arrays
        Predicted and true class labels in ``[0, num_classes)``. Images in a sequence may differ in shape.
    uncertainty : array(s) like ``pred``
        Per-voxel uncertainty (higher = less confident); finite real values.
    coverages : float or sequence of float in (0, 1]
        Requested global coverages.
    num_classes : int
        Number of classes ``K``.
    include_background : bool, default False
        Evaluate class 0 too; by default the classes ``1..K-1`` are evaluated.

    Returns
    -------
    list of DiceAtCoverage
        One per requested coverage, in the order given; arrays in the input's namespace.

    Notes
    -----
    One global threshold per coverage (SPEC section 2): the smallest observed ``t`` with
    ``#{u <= t} >= ceil(c N)``; tied voxels are accepted or referred together, so the realized coverage can
    exceed ``c``. Referred voxels (``u > t``) take the true label and Dice is computed on all voxels. Class
    Dice ``2TP / (2TP + FP + FN)`` is 1.0 for a class absent from both prediction and truth; the image Dice
    is the mean over the evaluated classes.

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([[1, 1, 0, 0]])
    >>> label = np.array([[1, 0, 0, 1]])
    >>> u = np.array([[0.1, 0.9, 0.2, 0.3]])
    >>> [r.mean for r in dice_at_coverage(pred, label, u, [1.0, 0.75], num_classes=2)]
    [0.5, 0.6666666666666666]
    """
    cs = check_coverages(coverages)
    images, groups, num_classes, xp = _prepare(pred, label, uncertainty, num_classes, include_background, xp)
    first = 0 if include_background else 1
    classes = tuple(range(first, num_classes))
    results = []
    for c in cs:
        g = groups.group_at_coverage(c, xp=xp)
        threshold = groups.thresholds[g]
        per_class = groups.per_class_dice(g, xp=xp)
        per_image_cov = _per_image_coverage(images, threshold, xp)
        realized = int(groups.cum_count[g]) / groups.n_total
        results.append(summarize(c, float(threshold), realized, per_class, per_image_cov, classes, xp=xp))
    return results


def dice_coverage_curve(
    pred: Any,
    label: Any,
    uncertainty: Any,
    /,
    *,
    num_classes: int,
    include_background: bool = False,
    xp: Any = None,
) -> DiceCoverageCurve:
    """Exact mean Dice after referral at every distinct uncertainty threshold (Figure 3 of the paper).

    Parameters
    ----------
    pred, label, uncertainty, num_classes, include_background
        As for :func:`dice_at_coverage`.

    Returns
    -------
    DiceCoverageCurve
        ``coverage``, ``mean_dice`` and ``threshold`` arrays of shape (G,), one entry per distinct value of
        ``uncertainty``, in increasing coverage (the last point is coverage 1, the plain Dice).

    Notes
    -----
    Referring a correct voxel changes nothing; each wrong voxel changes the counts of two classes of its own
    image. The curve therefore costs one sort of ``u`` (for the coverage), a sort of the wrong voxels' events
    and grouped cumulative sums; no Dice is re-evaluated per threshold. Values equal the direct
    computation at every threshold to float precision.

    Examples
    --------
    >>> import numpy as np
    >>> pred, label = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 1]])
    >>> u = np.array([[0.1, 0.9, 0.2, 0.3]])
    >>> curve = dice_coverage_curve(pred, label, u, num_classes=2)
    >>> curve.coverage, curve.mean_dice
    (array([0.25, 0.5 , 0.75, 1.  ]), array([1.        , 1.        , 0.66666667, 0.5       ]))
    """
    _, groups, _, xp = _prepare(pred, label, uncertainty, num_classes, include_background, xp)
    return groups.curve(xp=xp)


def aurc_dice(
    pred: Any,
    label: Any,
    uncertainty: Any,
    /,
    *,
    num_classes: int,
    include_background: bool = False,
    xp: Any = None,
) -> float:
    """Area under the risk-coverage curve with risk ``1 - mean Dice`` (lower is better).

    Parameters
    ----------
    pred, label, uncertainty, num_classes, include_background
        As for :func:`dice_at_coverage`.

    Returns
    -------
    float
        ``sum_g (c_g - c_{g-1}) * (1 - meanDice_g)`` over the points of :func:`dice_coverage_curve`,
        with ``c_0 = 0`` (the step rule of :func:`selectivekit.aurc`).

    Examples
    --------
    >>> import numpy as np
    >>> pred, label = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 1]])
    >>> u = np.array([[0.1, 0.9, 0.2, 0.3]])
    >>> aurc_dice(pred, label, u, num_classes=2)
    0.20833333333333334
    """
    curve = dice_coverage_curve(
        pred, label, uncertainty, num_classes=num_classes, include_background=include_background, xp=xp
    )
    xp = get_namespace(curve.coverage)
    return step_area(curve.coverage, 1.0 - curve.mean_dice, xp=xp)


def compare_at_coverage(result_a: DiceAtCoverage, result_b: DiceAtCoverage, /) -> PerImageComparison:
    """Per-image coverage and Dice differences ``b - a`` between two models (paper, Figure 2).

    Parameters
    ----------
    result_a, result_b : DiceAtCoverage
        Results of two models on the same images at the same requested coverage (e.g. baseline and ours).

    Returns
    -------
    PerImageComparison
        Differences per image and the share of images in each quadrant (1: higher coverage and Dice,
        2: lower coverage and higher Dice, 3: both lower, 4: higher coverage and lower Dice); images with a
        zero difference lie on an axis and are counted in ``on_axis_share``.

    Examples
    --------
    >>> import numpy as np
    >>> pred_a = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    >>> pred_b = np.array([[1, 0, 0, 0], [1, 0, 1, 0]])
    >>> label = np.array([[1, 0, 0, 1], [1, 0, 1, 1]])
    >>> u_a = np.array([[0.1, 0.9, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])
    >>> u_b = np.array([[0.1, 0.2, 0.3, 0.9], [0.8, 0.15, 0.25, 0.85]])
    >>> a = dice_at_coverage(pred_a, label, u_a, 0.5, num_classes=2)[0]
    >>> b = dice_at_coverage(pred_b, label, u_b, 0.5, num_classes=2)[0]
    >>> cmp = compare_at_coverage(a, b)
    >>> cmp.coverage_difference, cmp.dice_difference
    (array([-0.25,  0.25]), array([0.33333333, 0.        ]))
    >>> cmp.quadrant_share, cmp.on_axis_share
    ({1: 0.0, 2: 0.5, 3: 0.0, 4: 0.0}, 0.5)
    """
    for name, r in (("result_a", result_a), ("result_b", result_b)):
        if not isinstance(r, DiceAtCoverage):
            msg = f"`{name}` must be a DiceAtCoverage, got {type(r).__name__}."
            raise TypeError(msg)
    na, nb = result_a.per_image_dice.shape[0], result_b.per_image_dice.shape[0]
    if na != nb:
        msg = f"`result_b` must cover the {na} images of `result_a`, got {nb}."
        raise ValueError(msg)
    if result_a.requested != result_b.requested:
        msg = (
            f"`result_b` must be computed at the requested coverage of `result_a` ({result_a.requested}), "
            f"got {result_b.requested}."
        )
        raise ValueError(msg)
    xp = get_namespace(result_a.per_image_dice, result_b.per_image_dice)
    dc = result_b.per_image_coverage - result_a.per_image_coverage
    dd = result_b.per_image_dice - result_a.per_image_dice

    def share(m: Any) -> float:
        return float(xp.sum(xp.astype(m, float_dtype(xp)))) / na

    shares = {
        1: share((dc > 0) & (dd > 0)),
        2: share((dc < 0) & (dd > 0)),
        3: share((dc < 0) & (dd < 0)),
        4: share((dc > 0) & (dd < 0)),
    }
    return PerImageComparison(
        requested=result_a.requested,
        coverage_difference=dc,
        dice_difference=dd,
        quadrant_share=shares,
        on_axis_share=share((dc == 0) | (dd == 0)),
    )

"""The Dice engine: one Dice formula and one groups representation, shared by every path.

A *group* is a set of voxels accepted together: a distinct uncertainty value (the exact, in-memory path,
[`exact_groups`][selectivekit.segmentation.engine.exact_groups]) or a cell of the threshold grid
([`selectivekit.streaming.SegmentationAccumulator`][selectivekit.SegmentationAccumulator], the framework
metrics). The update step turns
wrong voxels into events per (image, class, group)
([`DiceGroups.from_events`][selectivekit.segmentation.engine.DiceGroups.from_events]); the compute steps
read the curve ([`DiceGroups.curve`][selectivekit.segmentation.engine.DiceGroups.curve]), the per-class Dice
at one group ([`DiceGroups.per_class_dice`][selectivekit.segmentation.engine.DiceGroups.per_class_dice])
and the summary at one coverage ([`summarize`][selectivekit.segmentation.engine.summarize]).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib import bincount, device, float_dtype, int_dtype
from .._lib.tie_groups import run_ends, tie_group_ends
from ..selective import group_at_coverage
from ..typing import Array, Namespace
from .images import ImageSet
from .results import DiceAtCoverage, DiceCoverageCurve

__all__ = [
    "DiceGroups",
    "SortedVoxels",
    "argsort_values",
    "dice_from_counts",
    "empty_class_weights",
    "event_keys",
    "exact_groups",
    "groups_from_sorted",
    "sorted_voxels",
    "summarize",
]


def dice_from_counts(label_count: Array, fn: Array, fp: Array, /, *, xp: Namespace) -> Array:
    """Class Dice after referral from counts: ``2 (L - FN) / (2 L - FN + FP)``, 1.0 when ``0 / 0``.

    ``L`` is the number of voxels labelled with the class, ``FN``/``FP`` the *accepted* wrong voxels whose
    truth/prediction is the class. Arrays broadcast; the result is floating (float64 where available).
    """
    fdt = float_dtype(xp)
    label_count = xp.astype(label_count, fdt, copy=False)
    fn = xp.astype(fn, fdt, copy=False)
    fp = xp.astype(fp, fdt, copy=False)
    num = label_count - fn
    num *= 2.0  # in place on the new array: the same value as 2.0 * (label_count - fn)
    den = 2.0 * label_count - fn + fp
    empty = den == 0
    one = xp.asarray(1.0, dtype=fdt, device=device(den))
    return xp.where(empty, one, num / xp.where(empty, one, den))


@dataclass(frozen=True)
class DiceGroups:
    """Everything the Dice-coverage computations need, for exact groups (distinct ``u``) or grid bins.

    Built by [`from_events`][selectivekit.segmentation.engine.DiceGroups.from_events]; filled by the in-memory
    functions of this module and by
    [`selectivekit.streaming.SegmentationAccumulator`][selectivekit.SegmentationAccumulator].

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
        events in that order, and the group of every event (lets
        [`curve`][selectivekit.segmentation.engine.DiceGroups.curve] skip a sort).
    """

    thresholds: Array
    cum_count: Array
    label_count: Array
    key: Array
    group: Array
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
        thresholds: Array,
        cum_count: Array,
        label_count: Array,
        key: Array,
        group: Array,
        fn: Array,
        fp: Array,
        /,
        *,
        group_sorted: bool = False,
        xp: Namespace,
    ) -> DiceGroups:
        """Sort and aggregate wrong-voxel events; ``(key, group)`` pairs may repeat and come in any order
        (or, with ``group_sorted=True``, in increasing group).

        ``cum_count[g]`` is the number of voxels with ``u <= thresholds[g]`` (all images); ``key`` is
        ``image * C + class slot``, ``group`` indexes ``thresholds``, ``fn``/``fp`` count the wrong voxels of
        the event whose truth/prediction is the key's class. Events with ``key >= n_images * C`` are left out
        (the exact path marks the classes that are not evaluated so).
        """
        n_groups = thresholds.shape[0]
        n_keys = label_count.shape[0] * label_count.shape[1]
        idt = int_dtype(xp)
        events_group = group  # in the events' order, kept for the curve when it increases
        dev = device(key)
        if group_sorted:
            # groups already increase: a stable sort on the (few) keys orders by (key, group); NumPy uses a
            # linear-time radix sort for 16-bit keys
            small = xp.int16 if n_keys < 2**15 else idt
            order = xp.argsort(xp.astype(key, small, copy=False), stable=True)
        else:
            order = xp.argsort(xp.astype(key, idt) * n_groups + xp.astype(group, idt), stable=False)
        key = xp.take(key, order)
        if key.shape[0] and int(key[-1]) >= n_keys:  # marked events sort last: leave them out
            n_kept = int(xp.searchsorted(key, xp.asarray([n_keys], dtype=key.dtype, device=dev))[0])
            key, order = key[:n_kept], order[:n_kept]
        group = xp.take(group, order)
        # running totals of wrong voxels: below the number of voxels, so int32 when that fits
        cdt = xp.int32 if int(cum_count[-1]) < 2**31 else idt
        cfn = xp.cumulative_sum(xp.take(fn, order), dtype=cdt)
        cfp = xp.cumulative_sum(xp.take(fp, order), dtype=cdt)
        position = order
        if key.shape[0]:
            # the last event of each (key, group) pair holds the pair's running totals
            ends = run_ends((key[1:] != key[:-1]) | (group[1:] != group[:-1]), xp)
            if ends.shape[0] < key.shape[0]:  # some pairs repeat (ties)
                key, group, cfn, cfp, position = (xp.take(a, ends) for a in (key, group, cfn, cfp, order))
            del ends
        # int32 indices where they fit (every namespace takes them); the compound in the count type
        key = xp.astype(key, xp.int32 if n_keys < 2**31 else idt, copy=False)
        compound = xp.astype(key, idt)
        compound *= n_groups
        compound += xp.astype(group, idt, copy=False)
        if key.shape[0]:
            # cumulative within each key: subtract the running totals before the key's first entry
            start = xp.searchsorted(key, xp.arange(n_keys, dtype=key.dtype, device=dev), side="left")
            has_before = start > 0
            prev = xp.clip(start - 1, 0, None)
            cfn -= xp.take(xp.where(has_before, xp.take(cfn, prev), xp.zeros_like(cfn[:1])), key)
            cfp -= xp.take(xp.where(has_before, xp.take(cfp, prev), xp.zeros_like(cfp[:1])), key)
        return cls(
            thresholds=thresholds,
            cum_count=cum_count,
            label_count=xp.astype(label_count, idt, copy=False),
            key=key,
            group=group,
            cum_fn=cfn,
            cum_fp=cfp,
            compound=compound,
            position=position if group_sorted else None,
            event_group=events_group if group_sorted else None,
        )

    def curve(self, *, xp: Namespace, key_weight: Array | None = None) -> DiceCoverageCurve:
        """Mean Dice at every group.

        Each aggregated event changes the Dice of one (image, class); the changes telescope, so the mean Dice
        after group ``g`` is ``1 + (sum of the changes of groups <= g) / (n_images C)``. The sums are formed
        for the groups that hold events and then repeated over the runs of groups without wrong voxels.
        ``key_weight`` (shape (n_images C,), optional) replaces the plain mean by ``sum_key w_key Dice_key``
        ([`empty_class_weights`][selectivekit.segmentation.engine.empty_class_weights]).
        """
        # the per-event work first, so that its temporaries are gone before the (G,) arrays are written
        values, lengths = self._dice_steps(xp, key_weight)
        mean_dice = xp.repeat(values, lengths)
        del values, lengths
        coverage = xp.astype(self.cum_count, float_dtype(xp))
        coverage /= self.n_total
        return DiceCoverageCurve(coverage=coverage, mean_dice=mean_dice, threshold=self.thresholds)

    def _dice_steps(self, xp: Namespace, key_weight: Array | None) -> tuple[Array, Array]:
        """The mean Dice as steps: ``values[j]`` holds for ``lengths[j]`` consecutive groups."""
        n_keys = self.label_count.shape[0] * self.label_count.shape[1]
        n_groups = self.n_groups
        fdt = float_dtype(xp)
        dev = device(self.cum_count)
        one = xp.ones((1,), dtype=fdt, device=dev)
        # every Dice is 1 before any wrong voxel is accepted
        base = 1.0 if key_weight is None else xp.sum(key_weight)
        if self.key.shape[0] == 0:
            return base * one, xp.asarray([n_groups], dtype=int_dtype(xp), device=dev)
        labels = xp.astype(xp.reshape(self.label_count, (-1,)), fdt)
        after = dice_from_counts(xp.take(labels, self.key), self.cum_fn, self.cum_fp, xp=xp)
        true = xp.ones((1,), dtype=xp.bool, device=dev)
        first = xp.concat([true, self.key[1:] != self.key[:-1]])
        before = xp.where(first, xp.ones_like(after), xp.concat([one, after[:-1]]))
        del first
        change = after - before
        del after, before
        if key_weight is not None:
            change = change * xp.take(key_weight, self.key)
        # sum the changes per group (in group order), then accumulate over groups
        if self.position is not None:
            # events came sorted by group: put each entry's change back at one of its events' positions
            groups = self.event_group
            running = xp.cumulative_sum(bincount(self.position, groups.shape[0], xp, weights=change))
        else:
            order = xp.argsort(self.group, stable=False)
            groups = xp.take(self.group, order)
            running = xp.cumulative_sum(xp.take(change, order))
            del order
        del change
        ends = tie_group_ends(groups, xp)
        event_groups = xp.astype(xp.take(groups, ends), int_dtype(xp))
        if key_weight is None:
            dice_at_events = 1.0 + xp.take(running, ends) / n_keys
        else:
            dice_at_events = base + xp.take(running, ends)
        del running, ends
        # groups before the first event keep Dice 1; each event group's value holds until the next one
        values = xp.concat([base * one, dice_at_events])
        bounds = xp.concat(
            [
                xp.zeros((1,), dtype=int_dtype(xp), device=dev),
                event_groups,
                xp.asarray([n_groups], dtype=int_dtype(xp), device=dev),
            ]
        )
        return values, bounds[1:] - bounds[:-1]

    def group_at_coverage(self, coverage: float, *, xp: Namespace) -> int:
        """The group reached at ``coverage``
        ([`selectivekit.selective.group_at_coverage`][selectivekit.selective.group_at_coverage])."""
        return group_at_coverage(self.cum_count, coverage, xp=xp)

    def per_class_dice(self, group: int, *, xp: Namespace) -> Array:
        """Dice of every (image, class) when groups ``0..group`` are accepted: shape (n_images, C)."""
        n_images, n_classes = self.label_count.shape
        n_keys = n_images * n_classes
        keys = xp.arange(n_keys, dtype=int_dtype(xp), device=device(self.cum_count))
        fn = xp.zeros((n_keys,), dtype=int_dtype(xp), device=device(self.cum_count))
        fp = fn
        if self.compound.shape[0]:
            idx = xp.searchsorted(self.compound, keys * self.n_groups + group, side="right") - 1
            safe = xp.clip(idx, 0, None)
            valid = (idx >= 0) & (xp.take(self.key, safe) == keys)
            fn = xp.where(valid, xp.take(self.cum_fn, safe), fn)
            fp = xp.where(valid, xp.take(self.cum_fp, safe), fp)
        dice = dice_from_counts(xp.reshape(self.label_count, (-1,)), fn, fp, xp=xp)
        return xp.reshape(dice, (n_images, n_classes))


def _percentile_linear(values: Array, q: float, xp: Namespace) -> float:
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
    per_class: Array,
    per_image_coverage: Array,
    classes: tuple[int, ...],
    /,
    *,
    xp: Namespace,
) -> DiceAtCoverage:
    """Assemble a [`DiceAtCoverage`][selectivekit.DiceAtCoverage] (mean, ``ddof=0`` std and 5th percentile of
    the image Dice).

    NaN class Dice (a class left out, ``ignore_empty=True``) are left out of the image mean; an image with
    no class left has a NaN Dice and is left out of the summary statistics (NaN when no image is left).
    """
    missing = xp.isnan(per_class)
    if not bool(xp.any(missing)):
        per_image = xp.mean(per_class, axis=1)
        scored = per_image
    else:
        fdt = per_class.dtype
        n_cls = xp.sum(xp.astype(~missing, fdt), axis=1)
        total = xp.sum(xp.where(missing, xp.zeros_like(per_class), per_class), axis=1)
        nan = xp.full_like(total, math.nan)
        per_image = xp.where(n_cls > 0, total / xp.where(n_cls > 0, n_cls, xp.ones_like(n_cls)), nan)
        scored = per_image[n_cls > 0]
    if scored.shape[0] == 0:
        mean = std = p5 = math.nan
    else:
        mean, std, p5 = float(xp.mean(scored)), float(xp.std(scored)), _percentile_linear(scored, 5.0, xp)
    return DiceAtCoverage(
        requested=requested,
        threshold=threshold,
        coverage=coverage,
        per_image_dice=per_image,
        per_image_coverage=per_image_coverage,
        per_class_dice=per_class,
        mean=mean,
        std=std,
        p5=p5,
        classes=classes,
    )


def empty_class_weights(label_count: Array, /, *, xp: Namespace) -> Array:
    """Weights per (image, class) that leave out the classes absent from an image's label (``ignore_empty``).

    ``w = 1 / (n_scored * n_present(image))`` for a class present in the image's label, 0 otherwise, where
    ``n_present(image)`` counts the evaluated classes present in the image and ``n_scored`` the images with
    at least one: ``sum w Dice`` is the mean over those images of the mean Dice over their present classes
    (the reduction of MONAI's ``DiceMetric`` with ``ignore_empty=True``). All NaN when no image has a class.
    Returns an array of shape (n_images * C,), the keys' order of
    [`DiceGroups`][selectivekit.segmentation.engine.DiceGroups].
    """
    fdt = float_dtype(xp)
    present = xp.astype(label_count > 0, fdt)
    n_present = xp.sum(present, axis=1, keepdims=True)
    n_scored = xp.sum(xp.astype(n_present > 0, fdt))
    safe = xp.where(n_present > 0, n_present, xp.ones_like(n_present))
    w = present / safe
    w = w / n_scored if bool(n_scored > 0) else xp.full_like(w, math.nan)
    return xp.reshape(w, (-1,))


_FEW_CLASSES = 32  # NumPy: up to this many classes, counted by comparisons


def _label_counts(images: ImageSet, num_classes: int, first: int, xp: Namespace) -> Array:
    """Voxels labelled with each evaluated class, per image: array of shape (n_images, num_classes - first).

    NumPy with few classes: one ``count_nonzero`` per class and image (``bincount`` first casts the labels
    to 64-bit integers, a pass several times slower than the comparisons); otherwise one ``bincount`` per
    image.
    """
    offsets = [0, *itertools.accumulate(images.sizes)]
    rows = []
    for i in range(len(images.sizes)):
        part = images.label[offsets[i] : offsets[i + 1]]
        if isinstance(part, np.ndarray) and num_classes <= _FEW_CLASSES:
            counts = [np.count_nonzero(part == k) for k in range(first, num_classes)]
            rows.append(xp.asarray(counts, dtype=int_dtype(xp)))
        else:
            rows.append(bincount(xp.astype(part, int_dtype(xp)), num_classes, xp)[first:])
    return xp.stack(rows)


def argsort_values(values: Array, xp: Namespace) -> Array:
    """An order that sorts ``values``; on NumPy, ties in increasing index.

    NumPy float32: one sort of the 64-bit keys ``(b << 32) | index``, where ``b`` is the IEEE bit pattern
    mapped to an unsigned integer of the same order (every bit of a negative value flipped, only the sign
    bit of a non-negative one; -0.0 and +0.0 get adjacent keys). A value sort is several times faster than
    an argsort. Other NumPy dtypes: a stable argsort (the tie order is what lets images sorted one by one
    be merged into the order of the whole). Other namespaces: ``argsort`` (ties in any order).
    """
    n = values.shape[0]
    if isinstance(values, np.ndarray) and not (values.dtype == np.float32 and n < 2**32):
        return np.argsort(values, kind="stable")
    if not isinstance(values, np.ndarray):
        return xp.argsort(values, stable=False)
    bits = values.view(np.uint32)
    flip = bits >> np.uint32(31)
    flip *= np.uint32(0x7FFFFFFF)
    flip |= np.uint32(0x80000000)
    flip ^= bits
    key = flip.astype(np.uint64)
    del bits, flip
    key <<= np.uint64(32)
    key |= np.arange(n, dtype=np.uint64)
    key.sort()
    key &= np.uint64(0xFFFFFFFF)
    return key.astype(np.int64)


_CHUNK = 1 << 18


def _distinct_sorted(s: Array, xp: Namespace) -> tuple[Array, Array]:
    """The distinct values of the sorted ``s`` and, for each, the number of entries ``<=`` it.

    NumPy: the counts in int32 when they fit (half the memory of the curve's largest arrays), written chunk
    by chunk so that no 64-bit index array of the full length is built.
    """
    n = s.shape[0]
    if not (isinstance(s, np.ndarray) and n < 2**31):
        ends = tie_group_ends(s, xp)
        thresholds = xp.take(s, ends)
        ends += 1  # in place: the number of entries <= thresholds[g]
        return thresholds, ends
    last = np.empty(n, dtype=bool)  # last[i]: s[i] is the last entry of its value
    np.not_equal(s[1:], s[:-1], out=last[:-1])
    last[-1] = True
    n_groups = int(np.count_nonzero(last))
    thresholds = np.empty(n_groups, dtype=s.dtype)
    cum_count = np.empty(n_groups, dtype=np.int32)
    at = 0
    for start in range(0, n, _CHUNK):
        idx = np.flatnonzero(last[start : start + _CHUNK])
        k = idx.shape[0]
        np.take(s[start : start + _CHUNK], idx, out=thresholds[at : at + k])
        np.add(idx, start + 1, out=cum_count[at : at + k], casting="unsafe")
        at += k
    return thresholds, cum_count


def exact_groups(
    images: ImageSet, num_classes: int, include_background: bool, /, *, xp: Namespace, runs: bool = False
) -> DiceGroups:
    """The update step of the exact path: groups are the distinct values of ``u`` over every image.

    One sort of every voxel's ``u`` gives the thresholds and the cumulative counts; the wrong voxels, in
    increasing ``u``, give two events each (FP for the predicted class, FN for the true class).

    With ``runs=True`` only the last group of each run of groups without wrong voxels is kept: the group
    just below each distinct wrong value (when some voxel lies below it) and the last group. Those groups
    are groups of the full set (same thresholds, same counts, same events), so their curve is the full
    curve at the points after which the mean Dice changes; its step area is the full curve's, since the
    Dice is constant along a run. No array with one entry per distinct ``u`` is built.

    NumPy inputs take narrower paths with the same results: float32 wrong voxels are ordered by one sort
    of 64-bit keys (value bits and index) instead of an argsort, and the counts are int32 below ``2**31``
    voxels; other namespaces use the array-API calls.
    """
    return groups_from_sorted(sorted_voxels(images, num_classes, include_background, xp=xp), runs=runs, xp=xp)


@dataclass(frozen=True)
class SortedVoxels:
    """What [`exact_groups`][selectivekit.segmentation.engine.exact_groups] builds the groups from: every
    voxel's ``u`` sorted, the labelled counts, and the wrong voxels in increasing ``(u, voxel index)`` with
    the keys of their two events (see [`event_keys`][selectivekit.segmentation.engine.event_keys]).

    The same arrays come from images sorted one by one and merged
    ([`selectivekit.streaming.SegmentationAccumulator`][selectivekit.SegmentationAccumulator] in worker
    processes), so both give the same groups, to the last bit.
    """

    sorted_u: Array
    label_count: Array
    wrong_u: Array
    key_pred: Array
    key_true: Array
    n_classes: int


def event_keys(
    image: Array, pred: Array, label: Array, n_images: int, n_classes: int, first: int, /, *, xp: Namespace
) -> tuple[Array, Array]:
    """The keys ``image * C + class slot`` of the FP (predicted class) and FN (true class) events of wrong
    voxels, in the narrowest integers that hold them (fewer bytes to write and sort); ``n_images * C``
    marks a class that is not evaluated (the background), which ``from_events`` leaves out."""
    n_keys = n_images * n_classes
    kdt = xp.int16 if n_keys < 2**15 - 1 else int_dtype(xp)
    base = xp.astype(image, kdt)
    base *= n_classes
    base -= first
    keys = []
    for labels in (pred, label):
        cls = xp.astype(labels, kdt)
        k = base + cls
        keys.append(k if not first else xp.where(cls >= first, k, xp.full_like(k, n_keys)))
    return keys[0], keys[1]


def sorted_voxels(
    images: ImageSet, num_classes: int, include_background: bool, /, *, xp: Namespace
) -> SortedVoxels:
    """The [`SortedVoxels`][selectivekit.segmentation.engine.SortedVoxels] of an image collection."""
    u = images.u
    dev = device(u)
    # coverage: one sort of every voxel's u (values only: an unstable SIMD sort is several times faster)
    s = xp.sort(u, stable=False)

    first = 0 if include_background else 1
    n_classes = num_classes - first
    n_images = len(images.sizes)
    label_count = _label_counts(images, num_classes, first, xp)

    # wrong voxels, in increasing u: one event for the predicted class (FP while accepted), one for the true
    # class (FN while accepted, TP once referred). Only their own, small sort is needed. Everything is
    # gathered in voxel order (sequential reads), then put in u order.
    w_idx = xp.nonzero(images.pred != images.label)[0]
    if images.stacked:
        image_w = w_idx // images.sizes[0]
    else:
        ends = xp.asarray(list(itertools.accumulate(images.sizes)), dtype=w_idx.dtype, device=dev)
        image_w = xp.searchsorted(ends, w_idx, side="right")
    pred_w, label_w = xp.take(images.pred, w_idx), xp.take(images.label, w_idx)
    keys = event_keys(image_w, pred_w, label_w, n_images, n_classes, first, xp=xp)
    del image_w, pred_w, label_w
    u_w = xp.take(u, w_idx)
    del w_idx
    order = argsort_values(u_w, xp)
    u_w = xp.take(u_w, order)
    key_pred, key_true = (xp.take(k, order) for k in keys)
    del order, keys
    return SortedVoxels(s, label_count, u_w, key_pred, key_true, n_classes)


def groups_from_sorted(voxels: SortedVoxels, /, *, runs: bool, xp: Namespace) -> DiceGroups:
    """The exact groups (see [`exact_groups`][selectivekit.segmentation.engine.exact_groups]) from the
    sorted voxels."""
    s, label_count, u_w = voxels.sorted_u, voxels.label_count, voxels.wrong_u
    key_pred, key_true = voxels.key_pred, voxels.key_true
    dev = device(s)
    n = s.shape[0]
    idt = int_dtype(xp)
    gdt = xp.int32 if n < 2**31 else idt  # group indices
    true = xp.ones((1,), dtype=xp.bool, device=dev)

    if u_w.shape[0]:
        new = xp.concat([true, u_w[1:] != u_w[:-1]])
        rank = xp.cumulative_sum(xp.astype(new, gdt))  # each wrong voxel's distinct value, from 1
        distinct = xp.take(u_w, xp.nonzero(new)[0])
        del new
    else:
        rank = xp.zeros((0,), dtype=gdt, device=dev)
        distinct = None
    del u_w
    if runs:
        tail = xp.asarray([n], dtype=idt, device=dev)
        if distinct is None:
            cum_count = tail
            group_w = rank
        else:
            # voxels below each distinct wrong value: the count at the end of the run before it
            below = xp.astype(xp.searchsorted(s, distinct, side="left"), idt, copy=False)
            lead = int(below[0] > 0)  # some voxel lies below the smallest wrong value: a first run
            cum_count = xp.concat([below[1 - lead :], tail])
            group_w = rank
            group_w -= 1 - lead
        thresholds = xp.take(s, cum_count - 1)
    else:
        thresholds, cum_count = _distinct_sorted(s, xp)
        group_w = rank
        if distinct is not None:
            # sorted queries into the sorted thresholds: each distinct wrong value's group index
            at = xp.astype(xp.searchsorted(thresholds, distinct, side="left"), gdt)
            rank -= 1
            group_w = xp.take(at, rank)
            del at
    del s, rank, distinct

    # interleave the two events of each wrong voxel so that the events stay sorted by group
    def pairs(a: Array, b: Array) -> Array:
        return xp.reshape(xp.stack([a, b], axis=1), (-1,))

    ones = xp.ones(key_pred.shape, dtype=xp.uint8, device=dev)
    zeros = xp.zeros(key_pred.shape, dtype=xp.uint8, device=dev)
    return DiceGroups.from_events(
        thresholds,
        cum_count,
        label_count,
        pairs(key_pred, key_true),
        pairs(group_w, group_w),
        pairs(zeros, ones),
        pairs(ones, zeros),
        group_sorted=True,
        xp=xp,
    )

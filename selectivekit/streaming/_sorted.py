"""Images and instances sorted one by one, and the merge of their sorted runs: the exact path of the
accumulators when worker processes (``evaluate --workers N``) do the sorting.

Maintainers: a worker reduces each image to a [`SortedImage`][] (its ``u`` sorted, its wrong voxels in
increasing ``(u, voxel index)``, its label counts) and each update of instances to its ``(u, correct)`` sorted
by the key of [`selectivekit._lib.sorted_groups.bit_key`][] (errors first among ties). The parent
concatenates the sorted runs and merges them with one stable sort: NumPy's timsort finds the runs and merges
them, O(N log k) for k runs (on 40 runs of 2M float32 it took 2.4 s where a fresh sort of the same array took
5.8 s, on the project's 2-core AMD EPYC machine). A sorted multiset is unique, and the wrong voxels keep
their tie order (image, then voxel), so the merged arrays are the ones the in-memory engine builds from the
concatenated images: the results are the same, to the last bit.

With a thread budget of N (``evaluate --workers N`` sets N, see ``selectivekit._lib.threads``) the merge runs
in that many threads: the values are cut at pivots taken from the largest run, each run's part below,
between and above the pivots is copied into its own slice of the output, and the slices are sorted at once
(NumPy releases the GIL while it sorts). Every value of a slice is below every value of the next, and within
a slice the runs keep their order, so the slices in order are the one stable merge:
the result is the same, to the last bit, with the memory of one merge.

``evaluate`` keeps the same voxels twice, for the Dice and for the voxel errors. In its workers each case is
sorted once: the voxel errors' ``(u, correct)`` sort gives the Dice its sorted ``u`` (the same array, pickled
once). In the parent the voxels are merged once: [`key_of_voxels`][] reads the voxel errors' sorted key from
the Dice's merged voxels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib import thread_count
from .._lib.sorted_groups import bit_key
from ..segmentation.engine import SortedVoxels, argsort_values, event_keys
from ._inputs import common_u, concat

__all__ = [
    "SortedImage",
    "key_of_voxels",
    "merge_runs",
    "merged_key",
    "merged_voxels",
    "sort_image",
    "sort_instances",
]

_MIN_PER_THREAD = 1 << 20  # below about a million values a thread costs more than it saves


@dataclass(frozen=True)
class SortedImage:
    """One image reduced to what the exact Dice needs (picklable; far smaller than the image when only its
    wrong voxels are many)."""

    nbytes: int  # bytes of the image as kept unsorted: the budget counts these, whoever sorted it
    sorted_u: np.ndarray  # every voxel's u, increasing
    wrong_u: np.ndarray  # the wrong voxels, in increasing (u, voxel index)
    wrong_pred: np.ndarray
    wrong_label: np.ndarray
    label_count: np.ndarray  # voxels labelled with each class (every class, int64)
    pred_count: np.ndarray  # voxels predicted as each class

    @property
    def size(self) -> int:
        return int(self.sorted_u.shape[0])


def sort_image(
    p: np.ndarray, t: np.ndarray, u: np.ndarray, num_classes: int, sorted_u: np.ndarray | None = None
) -> SortedImage:
    """The [`SortedImage`][] of one flat image (labels in ``[0, num_classes)``); ``sorted_u``, when given,
    is ``u`` already sorted (by the voxel errors' accumulator of the same image), not sorted again."""
    wrong = np.flatnonzero(p != t)
    u_w = u[wrong]
    order = argsort_values(u_w, np)  # ties in voxel order
    return SortedImage(
        nbytes=p.nbytes + t.nbytes + u.nbytes,
        sorted_u=np.sort(u) if sorted_u is None else sorted_u,
        wrong_u=u_w[order],
        wrong_pred=p[wrong][order],
        wrong_label=t[wrong][order],
        label_count=np.bincount(t, minlength=num_classes).astype(np.int64),
        pred_count=np.bincount(p, minlength=num_classes).astype(np.int64),
    )


def _cuts(runs: Sequence[np.ndarray]) -> np.ndarray:
    """``cuts[i, j]:cuts[i, j + 1]`` is the part of run ``i`` that goes to slice ``j`` of the merge: one
    slice per thread, cut at values of the largest run, each slice at least ``_MIN_PER_THREAD`` values
    (one slice, the whole runs, when the runs are too small to share)."""
    total = sum(int(run.shape[0]) for run in runs)
    parts = max(1, min(thread_count(), total // _MIN_PER_THREAD))
    largest = max(runs, key=lambda run: run.shape[0])
    pivots = largest[[largest.shape[0] * j // parts for j in range(1, parts)]]
    inner = [np.searchsorted(run, pivots, side="right") for run in runs]
    return np.array([[0, *cut, run.shape[0]] for cut, run in zip(inner, runs, strict=True)], dtype=np.int64)


def _by_slice(runs: Sequence[np.ndarray], cuts: np.ndarray) -> list[np.ndarray]:
    """The runs' parts concatenated slice by slice (in run order within a slice)."""
    return [
        run[a:b]
        for j in range(cuts.shape[1] - 1)
        for run, (a, b) in zip(runs, cuts[:, j : j + 2], strict=True)
    ]


def _sort_slices(values: np.ndarray, cuts: np.ndarray) -> None:
    """Sort (stable, in place) each slice of ``values`` laid out by [`_by_slice`][], in parallel."""
    bounds = np.concatenate([[0], np.cumsum((cuts[:, 1:] - cuts[:, :-1]).sum(axis=0))])
    slices = [values[a:b] for a, b in itertools.pairwise(bounds)]
    if len(slices) == 1:
        values.sort(kind="stable")
        return
    with ThreadPoolExecutor(len(slices)) as pool:
        for _ in pool.map(lambda part: part.sort(kind="stable"), slices):
            pass


def merge_runs(runs: list[np.ndarray]) -> np.ndarray:
    """The sorted concatenation of sorted arrays (stable sorts that merge the runs, in the threads of the
    current thread budget)."""
    if len(runs) == 1:
        return runs[0]
    cuts = _cuts(runs)
    out = np.concatenate(_by_slice(runs, cuts))
    _sort_slices(out, cuts)
    return out


def merged_voxels(
    images: list[SortedImage], num_classes: int, include_background: bool
) -> tuple[SortedVoxels, list[np.ndarray]]:
    """The [`SortedVoxels`][selectivekit.segmentation.engine.SortedVoxels] of the images in order (those of
    their concatenation), and each image's sorted ``u`` in the common dtype (for per-image coverages)."""
    n_images = len(images)
    first = 0 if include_background else 1
    n_classes = num_classes - first
    # one dtype for every u (float32 with float64: float64), as the in-memory path has
    us = common_u([image.sorted_u for image in images] + [image.wrong_u for image in images])
    per_image, wrong = us[:n_images], us[n_images:]
    u_w = concat(wrong)
    image_w = np.repeat(np.arange(n_images), [w.shape[0] for w in wrong])
    pred_w = concat([image.wrong_pred for image in images])
    label_w = concat([image.wrong_label for image in images])
    keys = event_keys(image_w, pred_w, label_w, n_images, n_classes, first, xp=np)
    del image_w, pred_w, label_w
    if n_images > 1:
        # each image's run is in (u, voxel) order: a sort with ties in index order gives (u, image, voxel)
        order = argsort_values(u_w, np)
        u_w = u_w[order]
        keys = tuple(k[order] for k in keys)
        del order
    label_count = np.stack([image.label_count[first:] for image in images])
    voxels = SortedVoxels(merge_runs(per_image), label_count, u_w, keys[0], keys[1], n_classes)
    return voxels, per_image


def sort_instances(u: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One update of boolean instances sorted by the key of
    [`selectivekit._lib.sorted_groups.bit_key`][] (``u`` increasing, the wrong ones first among ties):
    ``(u, wrong)``; ``None`` where ``bit_key`` has no key for ``u``."""
    got = bit_key(u, ~wrong)
    if got is None:
        return None
    key, decode = got
    wrong = (key & key.dtype.type(1)) == 0
    return decode(key), wrong


def merged_key(u_parts: list[np.ndarray], correct_parts: list[np.ndarray]) -> tuple[np.ndarray, Any] | None:
    """The sorted key and decoder of ``bit_key`` over the concatenated updates, from updates each sorted by
    ``(u, correct)``: their keys are sorted runs, merged by one stable sort. ``None`` when ``bit_key`` has
    no key."""
    us = common_u(u_parts)
    # the runs are cut by u; the key orders u first, so its slices are in order too
    cuts = _cuts(us)
    # the key's encoding depends on the whole (dtype, sign, range), so it is chosen on the concatenation
    u = concat(_by_slice(us, cuts))
    got = bit_key(u, np.ascontiguousarray(concat(_by_slice(correct_parts, cuts))), sort=False)
    del u
    if got is None:
        return None
    key, decode = got
    if len(u_parts) > 1:
        _sort_slices(key, cuts)
    return key, decode


def key_of_voxels(voxels: SortedVoxels) -> tuple[np.ndarray, Any] | None:
    """The sorted key of ``bit_key`` over every voxel with ``correct = pred == label``, read from merged
    [`SortedVoxels`][selectivekit.segmentation.engine.SortedVoxels] without a sort: their ``sorted_u`` is
    every voxel's ``u`` increasing and their ``wrong_u`` the wrong ones' increasing, so the wrong voxels are
    the first of each run of equal values (errors first among ties, the order of the key). The same key as
    [`merged_key`][] over the images' ``(u, correct)``: a sorted array of keys is unique. ``None`` when
    ``bit_key`` has no key."""
    sorted_u, wrong_u = voxels.sorted_u, voxels.wrong_u
    correct = np.ones(sorted_u.shape[0], dtype=bool)
    # the j-th wrong voxel: the start of its value's run among all voxels, plus its rank among the wrong
    # voxels of that value
    rank = np.arange(wrong_u.shape[0]) - np.searchsorted(wrong_u, wrong_u, side="left")
    correct[np.searchsorted(sorted_u, wrong_u, side="left") + rank] = False
    return bit_key(sorted_u, correct, sort=False)

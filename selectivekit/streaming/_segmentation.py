"""The streaming segmentation accumulator and its pickle-free state (see ``selectivekit.streaming``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .._lib import as_array, check_coverages, check_edges, check_num_classes
from ..risk_coverage import step_area
from ..segmentation.engine import DiceGroups, SortedVoxels, groups_from_sorted, summarize
from ..segmentation.images import collect_images
from ..segmentation.results import DiceAtCoverage, DiceCoverageCurve
from ..selective import required_count
from ..typing import Array
from ._grid import GRIDS, Cells, grid_bins, grid_dice_risk_bounds, grid_size, image_events
from ._inputs import (
    CHUNK,
    DEFAULT_MAX_MEMORY,
    check_grid,
    check_max_memory,
    check_same_grid,
    check_state_header,
    common_u,
    compact_u,
    concat,
    host,
    widen_half,
)
from ._sorted import SortedImage, key_of_voxels, merged_voxels, sort_image

__all__ = ["SegmentationAccumulator"]


def _aggregate(key: np.ndarray, fn: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``fn``/``fp`` per distinct ``key``: (sorted distinct keys, sums, sums) as int64."""
    keys, inverse = np.unique(key, return_inverse=True)
    fn_sum = np.bincount(inverse, weights=fn, minlength=keys.size).astype(np.int64)
    fp_sum = np.bincount(inverse, weights=fp, minlength=keys.size).astype(np.int64)
    return keys, fn_sum, fp_sum


def _compact_labels(x: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds ``[0, num_classes)`` (lossless)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes <= np.iinfo(dtype).max + 1:
            return x.astype(dtype, copy=False)
    return x.astype(np.int64, copy=False)


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
        self._bits = check_grid(grid, self._edges)
        self.max_memory = check_max_memory(max_memory)
        # exact path: (pred, label, u) per image, or the image sorted (`_sort_kept`, in worker processes)
        self._raw: list[tuple[np.ndarray, np.ndarray, np.ndarray] | SortedImage] = []
        self._nbytes = 0
        self._exact: Any = None  # exact path: the merged sorted images and their groups, built once
        self._merged_voxels: Any = None  # exact path: the merged sorted images before their groups
        self._cells: Cells | None = None  # grid path: global cells and per-image events
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
        pred = as_array(widen_half(pred), "pred")
        label = as_array(widen_half(label), "label")
        uncertainty = as_array(widen_half(uncertainty), "uncertainty")
        images, _ = collect_images([pred], [label], [uncertainty], self.num_classes)
        p = _compact_labels(host(images.pred), self.num_classes)
        t = _compact_labels(host(images.label), self.num_classes)
        u = compact_u(host(images.u))
        self._add(p, t, u)

    def _add(self, p: np.ndarray, t: np.ndarray, u: np.ndarray, copy: bool = True) -> None:
        # a copy of the caller's arrays (it may reuse its buffers); kept arrays are never written
        self._add_image((p.copy(), t.copy(), u.copy()) if copy else (p, t, u))

    def _add_image(self, image: tuple[np.ndarray, np.ndarray, np.ndarray] | SortedImage) -> None:
        self._exact = self._merged_voxels = None
        size = image.nbytes if isinstance(image, SortedImage) else sum(a.nbytes for a in image)
        if self._cells is None and self._nbytes + size <= self.max_memory:
            self._raw.append(image)
            self._nbytes += size
            return
        self._to_grid()
        self._images.append(self._grid_image(image))

    def _sort_kept(self, last_sorted_u: np.ndarray | None = None) -> None:
        """Sort each kept image (in a worker process: the parent then merges sorted runs instead of sorting
        every voxel); the results do not change, but the state can no longer be saved with ``to_arrays``.
        ``last_sorted_u``: the ``u`` of the image added last, already sorted elsewhere (used when its dtype
        and size are those of that image)."""
        last = len(self._raw) - 1
        for i, image in enumerate(self._raw):
            if isinstance(image, SortedImage):
                continue
            given = last_sorted_u if i == last else None
            # (its key reads -0.0 as +0.0: equal values, whose sign np.sort does not keep either)
            if given is not None and (given.dtype != image[2].dtype or given.shape != image[2].shape):
                given = None
            self._raw[i] = sort_image(*image, self.num_classes, sorted_u=given)

    def _to_grid(self) -> None:
        if self._cells is not None:
            return
        self._cells = Cells()
        self._images = [self._grid_image(image) for image in self._raw]
        self._raw, self._nbytes, self._exact, self._merged_voxels = [], 0, None, None

    def _grid_image(
        self, image: tuple[np.ndarray, np.ndarray, np.ndarray] | SortedImage
    ) -> dict[str, np.ndarray]:
        """The grid state of one image (its cells also go into the global cells); a sorted image gives the
        same state (every part of it is a count)."""
        assert self._cells is not None
        n_bins = self._n_bins()
        n_classes = self.num_classes - self._first
        grid = (self._edges, self._bits)
        label_count = np.zeros(self.num_classes, dtype=np.int64)
        cell_parts, count_parts, chunks = [], [], []
        if isinstance(image, SortedImage):
            u = image.sorted_u
            label_count += image.label_count
            for start in range(0, image.wrong_u.shape[0], CHUNK):
                part = slice(start, start + CHUNK)
                bins = grid_bins(image.wrong_u[part], edges=self._edges, bits=self._bits, xp=np)
                events = image_events(
                    image.wrong_pred[part], image.wrong_label[part], bins, self._first, xp=np
                )
                cls, cell, fn, fp = events
                chunks.append(_aggregate(cls * n_bins + cell, fn, fp))
        else:
            p, t, u = image
        for start in range(0, u.shape[0], CHUNK):
            stop = start + CHUNK
            bins, cells, counts = self._cells.add_values(u[start:stop], None, grid)
            cell_parts.append(cells)
            count_parts.append(counts)
            if isinstance(image, SortedImage):
                continue
            label_count += np.bincount(t[start:stop], minlength=self.num_classes)
            cls, cell, fn, fp = image_events(p[start:stop], t[start:stop], bins, self._first, xp=np)
            chunks.append(_aggregate(cls * n_bins + cell, fn, fp))  # per chunk: temporaries stay small
        if not chunks:  # a sorted image without wrong voxels
            empty = np.zeros(0, dtype=np.int64)
            chunks.append((empty, empty, empty))
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
        check_same_grid(self, other)
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
            for image in list(other._raw):  # a snapshot: ``other`` may be ``self``
                self._add_image(image)
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
        for image in self._raw:
            if isinstance(image, SortedImage):
                labelled += image.label_count[self._first :]
                predicted += image.pred_count[self._first :]
                continue
            p, t, _ = image
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

    def _exact_state(self) -> tuple[DiceGroups, list[np.ndarray], Any]:
        """The exact groups of the kept images, each image's sorted ``u`` and the sorted voxels, built once.

        Every image is sorted on its own (in the worker processes that read it, or here) and the sorted
        runs merged: the arrays the in-memory engine builds from the concatenated images, so the results are
        those of the in-memory functions, to the last bit."""
        if not self._raw:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        if self._exact is None:
            voxels, per_image = self._merged()
            self._exact = (groups_from_sorted(voxels, runs=False, xp=np), per_image, voxels)
            self._merged_voxels = None  # now in _exact
        return self._exact

    def _merged(self) -> tuple[SortedVoxels, list[np.ndarray]]:
        """The merged sorted voxels of the kept images and each image's sorted ``u``, built once (the first
        step of ``_exact_state``, which can be asked for on its own)."""
        if self._exact is not None:
            return self._exact[2], self._exact[1]
        if self._merged_voxels is None:
            images = [
                image if isinstance(image, SortedImage) else sort_image(*image, self.num_classes)
                for image in self._raw
            ]
            self._merged_voxels = merged_voxels(images, self.num_classes, self.include_background)
        return self._merged_voxels

    def _sorted_key_step(self, errors: Any) -> Callable[[], None] | None:
        """For a [`RiskCoverageAccumulator`][selectivekit.RiskCoverageAccumulator] of this accumulator's
        voxels, ``correct = pred == label`` (``evaluate``'s voxel errors, in the parent of
        ``evaluate --workers``): merge the voxels here and return the step that reads the errors' sorted key
        from them and hands it over (it only reads the merged voxels: it may run in another thread while
        this accumulator builds its groups), instead of the errors' merging the same values a second time.
        ``None`` (nothing done) unless ``errors`` kept the very sorted ``u`` arrays of this accumulator's
        sorted images (one sort a case in the workers) and the same number of wrong voxels in each. The
        results are the same either way."""
        images = self._raw
        if (
            self._cells is not None
            or errors.path != "exact"
            or errors._soft
            or len(images) != len(errors._u)
            or len(images) < 2
            or not all(errors._sorted)
            or not all(isinstance(image, SortedImage) for image in images)
            or any(u is not image.sorted_u for u, image in zip(errors._u, images, strict=True))
            or any(
                int(np.count_nonzero(wrong)) != image.wrong_u.shape[0]
                for wrong, image in zip(errors._risk, images, strict=True)
            )
        ):
            return None
        voxels = self._merged()[0]

        def step() -> None:
            got = key_of_voxels(voxels)
            if got is not None:
                errors._use_key(got)

        return step

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
            return self._exact_state()[0].curve(xp=np)
        return self._grid_groups()[0].curve(xp=np)

    def aurc_dice(self) -> float:
        """``sum_g (c_g - c_{g-1}) (1 - meanDice_g)`` (lower is better), as
        [`selectivekit.aurc_dice`][selectivekit.aurc_dice]."""
        return self.aurc_dice_bound(value=True)[0]

    def aurc_dice_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)``: the lowest and highest exact ``aurc_dice`` consistent with the state (``(v, v)``
        on the exact path); with ``value=True``, ``(value, low, high)``."""
        if self._cells is None:
            # as aurc_dice: only the groups after which the Dice changes
            curve = groups_from_sorted(self._exact_state()[2], runs=True, xp=np).curve(xp=np)
            v = step_area(curve.coverage, 1.0 - curve.mean_dice, xp=np)
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
            return [self._exact_summary_at(c) for c in cs]
        groups, occupied = self._grid_groups()
        return [self._summary_at(groups, occupied, c, groups.group_at_coverage(c, xp=np)) for c in cs]

    def _exact_summary_at(self, c: float) -> DiceAtCoverage:
        """As [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage] at one coverage."""
        groups, per_image, _ = self._exact_state()
        g = groups.group_at_coverage(c, xp=np)
        threshold = groups.thresholds[g]
        accepted = [np.searchsorted(u, threshold, side="right") for u in per_image]
        sizes = np.asarray([u.shape[0] for u in per_image], dtype=np.float64)
        coverage = np.asarray(accepted, dtype=np.float64) / sizes
        realized = int(groups.cum_count[g]) / groups.n_total
        per_class = groups.per_class_dice(g, xp=np)
        return summarize(c, float(threshold), realized, per_class, coverage, self.classes, xp=np)

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
            if any(isinstance(image, SortedImage) for image in self._raw):
                msg = "internal: the state of sorted images cannot be saved (their voxel order is gone)."
                raise RuntimeError(msg)
            for i, name in enumerate(("pred", "label", "u")):
                parts = [image[i] for image in self._raw]
                parts = common_u(parts) if name == "u" and parts else parts  # one dtype, every value exact
                arrays[f"raw_{name}"] = concat(parts) if parts else np.zeros(0)
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
        check_state_header(header, _STATE_FORMAT, _STATE_VERSION)
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
                acc._cells = Cells()
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

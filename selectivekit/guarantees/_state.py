"""The per-image state of the segmentation bootstrap: step functions computed once per image, savable."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._lib import as_array, check_num_classes, to_numpy
from ..selective import required_count
from ..typing import Namespace

# The field names of version 0.3.0 -> the names now.
_OLD_FIELD_NAMES = {
    "thr": "thresholds",
    "cnt": "counts",
    "chg_t": "changed_thresholds",
    "chg_d": "changed_dice",
    "n_vox": "n_voxels",
}


@dataclass
class ImageState:
    """Per-image step functions, from one [`dice_coverage_curve`][selectivekit.dice_coverage_curve] call per
    image.

    Attributes
    ----------
    thresholds : list of ndarray
        ``thresholds[i]``: the distinct ``u`` values of image ``i``, increasing.
    counts : list of ndarray
        ``counts[i][g]``: the number of voxels of image ``i`` with ``u <= thresholds[i][g]``.
    changed_thresholds : list of ndarray
        ``changed_thresholds[i]``: the values of ``u`` at which the Dice after referral of image ``i``
        changes, increasing (a subset of ``thresholds[i]``).
    changed_dice : list of ndarray
        ``changed_dice[i][p]``: the Dice of image ``i`` once its voxels up to ``changed_thresholds[i][p]``
        are accepted (1.0 before the first point: everything referred).
    n_voxels : ndarray of int64, shape (n_items,)
        The number of voxels of each image.

    Notes
    -----
    Version 0.3.0 called the attributes ``thr``, ``cnt``, ``chg_t``, ``chg_d`` and ``n_vox``; those names
    still read the same arrays (deprecated, for code written for 0.3.0). The ``.npz`` files of
    [`save`][selectivekit.guarantees.ImageState.save] keep their array names, so a file written by either
    version loads in both.
    """

    thresholds: list[np.ndarray]
    counts: list[np.ndarray]
    changed_thresholds: list[np.ndarray]
    changed_dice: list[np.ndarray]
    n_voxels: np.ndarray
    _a_matrix: np.ndarray | None = field(default=None, repr=False)
    _union: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        """The number of images."""
        return len(self.thresholds)

    def __getattr__(self, name: str) -> Any:
        # The field names of version 0.3.0 still read the same arrays (deprecated, undocumented:
        # cli.py and tests/test_cli_guarantees.py read `n_vox` and `chg_d`). Only called when the
        # ordinary lookup fails, so the fields themselves cost nothing.
        if name in _OLD_FIELD_NAMES:
            return getattr(self, _OLD_FIELD_NAMES[name])
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg)

    @classmethod
    def of_image(
        cls,
        pred: Any,
        label: Any,
        uncertainty: Any,
        /,
        *,
        num_classes: int,
        include_background: bool = False,
        xp: Namespace | None = None,
    ) -> ImageState:
        """The state of one image (arrays of its spatial shape), e.g. to read a folder image by image."""
        k = check_num_classes(num_classes, include_background)
        return _state_from_parts(
            [_one_image([pred], [label], [uncertainty], k, bool(include_background), xp)]
        )

    @classmethod
    def concat(cls, *states: ImageState) -> ImageState:
        """The images of several states, in order."""
        return cls(
            thresholds=[t for s in states for t in s.thresholds],
            counts=[c for s in states for c in s.counts],
            changed_thresholds=[t for s in states for t in s.changed_thresholds],
            changed_dice=[d for s in states for d in s.changed_dice],
            n_voxels=np.concatenate([s.n_voxels for s in states]),
        )

    def take(self, indices: Sequence[int]) -> ImageState:
        """The images at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        return ImageState(
            thresholds=[self.thresholds[i] for i in idx],
            counts=[self.counts[i] for i in idx],
            changed_thresholds=[self.changed_thresholds[i] for i in idx],
            changed_dice=[self.changed_dice[i] for i in idx],
            n_voxels=self.n_voxels[idx],
        )

    def save(self, path: Any) -> None:
        """Write the state to an ``.npz`` file (about 8 bytes per distinct ``u`` value of each image)."""
        _save_state(path, self)

    @classmethod
    def load(cls, path: Any) -> ImageState:
        """Read a state written by [`save`][selectivekit.guarantees.ImageState.save]."""
        return _load_state(path)

    def count_upto(self, image: int, threshold: np.ndarray) -> np.ndarray:
        """``#{u <= threshold}`` over the voxels of ``image``, for every value of ``threshold``."""
        k = np.searchsorted(self.thresholds[image], threshold, side="right")
        return np.where(k > 0, self.counts[image][np.maximum(k - 1, 0)], 0)

    def count_below(self, image: int, threshold: np.ndarray) -> np.ndarray:
        """``#{u < threshold}`` over the voxels of ``image``, for every value of ``threshold``."""
        k = np.searchsorted(self.thresholds[image], threshold, side="left")
        return np.where(k > 0, self.counts[image][np.maximum(k - 1, 0)], 0)

    def dice(self, image: int, threshold: np.ndarray) -> np.ndarray:
        """``D_j(t)``: Dice of image ``j`` (``image``) after referring its voxels with ``u > t``
        (``threshold``)."""
        k = np.searchsorted(self.changed_thresholds[image], threshold, side="right")
        if self.changed_dice[image].shape[0] == 0:
            return np.ones(np.shape(threshold))
        return np.where(k > 0, self.changed_dice[image][np.maximum(k - 1, 0)], 1.0)

    def dice_rows(self, threshold: np.ndarray) -> np.ndarray:
        """``D_j(t)`` of every image ``j`` (columns) at every value ``t`` of ``threshold`` (rows): one search
        over every image's change points, keyed by (image, rank of the value)."""
        points = np.asarray(threshold, dtype=np.float64).reshape(-1)
        lengths = np.array([c.shape[0] for c in self.changed_thresholds], dtype=np.int64)
        if not lengths.sum():
            return np.ones((points.shape[0], self.n_items))
        flat_t = np.concatenate(self.changed_thresholds)
        flat_d = np.concatenate(self.changed_dice)
        values = np.unique(np.concatenate([flat_t, points]))
        stride = values.shape[0] + 1
        owner = np.repeat(np.arange(self.n_items, dtype=np.int64), lengths)
        keys = owner * stride + np.searchsorted(values, flat_t)  # increasing: image-major, sorted within
        wanted = np.arange(self.n_items, dtype=np.int64) * stride + np.searchsorted(values, points)[:, None]
        pos = np.searchsorted(keys, wanted, side="right")
        before = pos - (np.cumsum(lengths) - lengths)  # change points of image j at or below t
        return np.where(before > 0, flat_d[np.maximum(pos - 1, 0)], 1.0)

    @property
    def a_matrix(self) -> np.ndarray:
        """``A_ij = sum over the voxels v of image i of D_j(u_v)``, shape (n_items, n_items)."""
        if self._a_matrix is None:
            n = self.n_items
            lengths = [c.shape[0] for c in self.changed_thresholds]
            t_all = np.concatenate(self.changed_thresholds) if sum(lengths) else np.zeros(0)
            # the jump of D_j at each of its change points
            jumps = np.concatenate(
                [np.diff(d, prepend=1.0) if d.shape[0] else d for d in self.changed_dice]
            ).astype(np.float64)
            owner = np.repeat(np.arange(n), lengths)
            a = np.empty((n, n))
            for i in range(n):
                # D_j(u_v) = 1 + sum of the jumps at points <= u_v: the voxels of i with u >= t_p see jump p
                above = self.n_voxels[i] - self.count_below(i, t_all)
                a[i] = self.n_voxels[i] + np.bincount(owner, weights=jumps * above, minlength=n)
            self._a_matrix = a
        return self._a_matrix

    @property
    def union(self) -> np.ndarray:
        """Every distinct ``u`` of every image, increasing."""
        if self._union is None:
            self._union = np.unique(np.concatenate(self.thresholds))
        return self._union

    # statistics of resampled sets: ``weights`` (shape (B, n_items)) holds how often each image is drawn in
    # each resample, and the rows of ``indices`` (shape (B, m)) the drawn images themselves

    def aurc_dice(self, weights: np.ndarray) -> np.ndarray:
        """``aurc_dice`` of each resampled set: ``1 - (w^T A w) / ((w . N) (w . 1))``."""
        a = self.a_matrix
        quad = np.einsum("bi,ij,bj->b", weights, a, weights)
        return 1.0 - quad / ((weights @ self.n_voxels.astype(np.float64)) * weights.sum(axis=1))

    def threshold_at(self, weights: np.ndarray, coverage: float) -> np.ndarray:
        """Per row: the smallest value ``t`` with ``sum_i w_i #{u_i <= t} >= ceil(c N_w)`` (N_w voxels)."""
        n_w = weights @ self.n_voxels.astype(np.float64)
        k = required_count(coverage, n_w)  # one required count per row
        union = self.union
        lo = np.zeros(weights.shape[0], dtype=np.int64)
        hi = np.full(weights.shape[0], union.shape[0] - 1, dtype=np.int64)
        used = [i for i in range(self.n_items) if np.any(weights[:, i])]
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            t = union[mid]
            f = np.zeros(weights.shape[0])
            for i in used:
                f += weights[:, i] * self.count_upto(i, t)
            ok = f >= k
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid + 1)
        return union[lo]

    def dice_at(
        self, weights: np.ndarray, indices: np.ndarray, coverage: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and 5th percentile of the image Dice of each resampled set at ``coverage``."""
        t = self.threshold_at(weights, coverage)
        d = np.empty(weights.shape)
        for j in range(self.n_items):
            d[:, j] = self.dice(j, t) if np.any(weights[:, j]) else 1.0
        vals = np.take_along_axis(d, indices, axis=1)
        return vals.mean(axis=1), np.percentile(vals, 5.0, axis=1)


def per_image(pred: Any, label: Any, uncertainty: Any) -> list[tuple[Any, Any, Any]]:
    """Split the inputs into images: stacked arrays (n_images, *spatial) or sequences of arrays."""
    seqs = [isinstance(a, (list, tuple)) for a in (pred, label, uncertainty)]
    if any(seqs) and not all(seqs):
        msg = (
            "`pred`, `label` and `uncertainty` must all be stacked arrays of shape (n_images, *spatial) or "
            "all sequences of per-image arrays."
        )
        raise TypeError(msg)
    if all(seqs):
        n = len(pred)
        for name, seq in (("label", label), ("uncertainty", uncertainty)):
            if len(seq) != n:
                msg = f"`{name}` must hold {n} images like `pred`, got {len(seq)}."
                raise ValueError(msg)
        return [([pred[i]], [label[i]], [uncertainty[i]]) for i in range(n)]
    pred = as_array(pred, "pred")
    label = as_array(label, "label")
    uncertainty = as_array(uncertainty, "uncertainty")
    if pred.ndim < 2:
        msg = (
            "`pred` must be a stacked array of shape (n_images, *spatial) with at least 2 dimensions "
            f"(or a list of per-image arrays), got shape {tuple(pred.shape)}."
        )
        raise ValueError(msg)
    for name, other in (("label", label), ("uncertainty", uncertainty)):
        if tuple(other.shape) != tuple(pred.shape):
            msg = (
                f"`{name}` must have the same shape as `pred` {tuple(pred.shape)}, got {tuple(other.shape)}."
            )
            raise ValueError(msg)
    return [
        (pred[i : i + 1, ...], label[i : i + 1, ...], uncertainty[i : i + 1, ...])
        for i in range(pred.shape[0])
    ]


def _one_image(
    pred: Any, label: Any, uncertainty: Any, num_classes: int, include_background: bool, xp: Namespace | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The state of one image (a stacked array of one image, or a list of one array each)."""
    from ..segmentation import dice_coverage_curve

    curve = dice_coverage_curve(
        pred, label, uncertainty, num_classes=num_classes, include_background=include_background, xp=xp
    )
    t = to_numpy(curve.threshold)
    coverage = to_numpy(curve.coverage).astype(np.float64)
    d = to_numpy(curve.mean_dice).astype(np.float64)
    u = uncertainty[0] if isinstance(uncertainty, list) else uncertainty
    size = math.prod(tuple(u.shape))
    counts = np.rint(coverage * size).astype(np.int64 if size >= 2**31 else np.int32)
    change = np.nonzero(np.diff(d, prepend=1.0) != 0)[0]
    return t, counts, t[change], d[change], size


def _state_from_parts(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]],
) -> ImageState:
    return ImageState(
        thresholds=[p[0] for p in parts],
        counts=[p[1] for p in parts],
        changed_thresholds=[p[2] for p in parts],
        changed_dice=[p[3] for p in parts],
        n_voxels=np.asarray([p[4] for p in parts], dtype=np.int64),
    )


def image_state(
    pred: Any,
    label: Any,
    uncertainty: Any,
    num_classes: int,
    include_background: bool,
    xp: Namespace | None,
    what: str,
) -> ImageState:
    """The state of every image of ``pred``, ``label``, ``uncertainty``; ``what`` names the argument in the
    message when there is no image."""
    images = per_image(pred, label, uncertainty)
    if not images:
        msg = f"`{what}` holds no image; at least one is needed."
        raise ValueError(msg)
    parts = []
    for i, (p, lab, u) in enumerate(images):
        try:
            parts.append(_one_image(p, lab, u, num_classes, include_background, xp))
        except (ValueError, TypeError) as exc:
            msg = f"image {i}: {exc}"
            raise type(exc)(msg) from exc
    return _state_from_parts(parts)


# The arrays of a saved state keep the names of version 0.3.0 (``thr``: thresholds, ``cnt``: counts, ``chg_t``
# and ``chg_d``: changed_thresholds and changed_dice, ``n_vox``: n_voxels), so that the files written by 0.3.0
# and by this version load in both: the format is a file format, versioned by ``format_version``.


def _save_state(path: Any, state: ImageState) -> None:
    """Write the per-image state (used by ``selectivekit compare``) to an ``.npz`` file."""
    lengths = np.asarray([t.shape[0] for t in state.thresholds], dtype=np.int64)
    changes = np.asarray([t.shape[0] for t in state.changed_thresholds], dtype=np.int64)
    np.savez(
        path,
        format_version=np.int64(1),
        lengths=lengths,
        changes=changes,
        n_vox=state.n_voxels,
        thr=np.concatenate(state.thresholds),
        cnt=np.concatenate(state.counts),
        chg_t=np.concatenate(state.changed_thresholds),
        chg_d=np.concatenate(state.changed_dice),
    )


_STATE_KEYS = ("format_version", "lengths", "changes", "n_vox", "thr", "cnt", "chg_t", "chg_d")


def _state_problem(data: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the arrays of a saved state (``None``: every invariant holds).

    Version 1; per image: distinct thresholds strictly increasing with cumulative counts strictly
    increasing to its voxel count, and change points strictly increasing among its thresholds with Dice
    values in [0, 1].
    """
    missing = [k for k in _STATE_KEYS if k not in data]
    if missing:
        return f"it lacks {', '.join(missing)}"
    version = data["format_version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != 1:
        return f"it has format version {version.tolist()!r}; this selectivekit reads version 1"
    ints = {k: data[k] for k in ("lengths", "changes", "n_vox", "cnt")}
    floats = {k: data[k] for k in ("thr", "chg_t", "chg_d")}
    for key, a in {**ints, **floats}.items():
        if a.ndim != 1 or (a.size and a.dtype.kind not in ("iu" if key in ints else "f")):
            kind = "integer" if key in ints else "float"
            return f"`{key}` must be a 1-d {kind} array, got {a.dtype} of shape {a.shape}"
    lengths, changes, n_vox, cnt = (ints[k].astype(np.int64) for k in ("lengths", "changes", "n_vox", "cnt"))
    thr, chg_t, chg_d = floats["thr"], floats["chg_t"], floats["chg_d"]
    if not lengths.size == changes.size == n_vox.size or n_vox.size == 0:
        return "`lengths`, `changes` and `n_vox` must have one entry per image"
    if np.any(lengths < 1) or np.any(changes < 0) or np.any(n_vox < 1):
        return "`lengths` and `n_vox` must be >= 1 and `changes` >= 0"
    if (
        thr.size != lengths.sum()
        or cnt.size != thr.size
        or chg_t.size != changes.sum()
        or chg_d.size != chg_t.size
    ):
        return "the array lengths do not add up to `lengths` and `changes`"
    if not (np.all(np.isfinite(thr)) and np.all(np.isfinite(chg_t)) and np.all((chg_d >= 0) & (chg_d <= 1))):
        return "`thr` and `chg_t` must be finite and `chg_d` (Dice) in [0, 1]"
    ends, c_ends = np.cumsum(lengths), np.cumsum(changes)
    for i in range(n_vox.size):
        t, c = thr[ends[i] - lengths[i] : ends[i]], cnt[ends[i] - lengths[i] : ends[i]]
        ct = chg_t[c_ends[i] - changes[i] : c_ends[i]]
        if np.any(np.diff(t) <= 0) or np.any(np.diff(c) <= 0) or c[0] < 1 or c[-1] != n_vox[i]:
            return f"image {i}: `thr` and `cnt` must increase strictly, `cnt` up to `n_vox` ({n_vox[i]})"
        if np.any(np.diff(ct) <= 0) or not np.all(np.isin(ct, t)):
            return f"image {i}: `chg_t` must increase strictly among its `thr`"
    return None


def _load_state(path: Any) -> ImageState:
    """Read a state; a file that is not a version-1 state, or breaks one of its invariants, raises
    ``ValueError`` naming the file (no pickle is ever loaded)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k in _STATE_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        msg = f"`path` file {str(path)!r} is not a bootstrap state ({type(exc).__name__}: {exc})."
        raise ValueError(msg) from None
    problem = _state_problem(arrays)
    if problem is not None:
        msg = f"`path` file {str(path)!r} is not a valid bootstrap state: {problem}."
        raise ValueError(msg)
    lengths, changes = arrays["lengths"], arrays["changes"]
    split = np.cumsum(lengths)[:-1]
    csplit = np.cumsum(changes)[:-1]
    return ImageState(
        thresholds=np.split(arrays["thr"], split),
        counts=np.split(arrays["cnt"], split),
        changed_thresholds=np.split(arrays["chg_t"], csplit),
        changed_dice=np.split(arrays["chg_d"], csplit),
        n_voxels=arrays["n_vox"].astype(np.int64),
    )

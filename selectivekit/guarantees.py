"""Confidence intervals, paired model comparison and referral thresholds with a guaranteed risk.

Three questions decide whether a selective model can be deployed: how sure is a measured number
([`bootstrap_ci`][selectivekit.bootstrap_ci]), is model B better than model A on the same images or is the
difference noise
([`compare_models`][selectivekit.compare_models]), and which threshold keeps the risk on new patients below a
target
([`guaranteed_risk_threshold`][selectivekit.guaranteed_risk_threshold],
[`guaranteed_dice_threshold`][selectivekit.guaranteed_dice_threshold]).

Units of resampling
-------------------
The voxels of one image are not independent, so every segmentation method here treats **images** as the
exchangeable units: the bootstrap resamples images, the permutation test swaps two models' outputs image by
image, and the thresholds are calibrated on a set of images. Instance metrics (AURC, e-AURC, AUGRC)
resample instances, or the groups of a ``groups=`` array (e.g. the image of each voxel).

How a resample stays cheap
--------------------------
With a global threshold the referral point of a resampled set moves with the resample, so a resample is not
a sum of per-image numbers. It is, however, a weighted sum over per-image state computed once: for image
``i`` the number of its voxels with ``u <= t`` (``C_i(t)``) and its Dice after referral ``D_i(t)``, a step
function that changes only at the image's wrong voxels. With multiplicities ``w`` (how often each image is
drawn), ``N_i`` voxels per image and ``A_ij = sum over the voxels v of image i of D_j(u_v)``,

    aurc_dice(w) = 1 - (w^T A w) / ((w . N) (w . 1))

exactly (the step rule over the thresholds of the resampled set), and the Dice at a coverage needs the
threshold where ``sum_i w_i C_i(t)`` reaches the required count: a vectorized bisection over the sorted
distinct values. Nothing is re-sorted per resample.

Argument checks and array helpers come from ``selectivekit._lib``; ``aurc_optimal`` from
`selectivekit.risk_coverage` (a public name of that module, not exported at the top level).

Lower-level pieces, public in this module but not re-exported at the top level:
[`ImageState`][selectivekit.guarantees.ImageState] (the
per-image state, buildable image by image and savable),
[`bootstrap_state`][selectivekit.guarantees.bootstrap_state] and
[`compare_states`][selectivekit.guarantees.compare_states],
which the command line uses to stream a folder and to compare two saved runs.

SciPy (``pip install scipy``, part of the ``selectivekit[stats]`` extra) is imported lazily: its
``scipy.stats.bootstrap`` turns the bootstrap distributions into percentile, basic and BCa intervals
(with its jackknife acceleration), ``scipy.stats.permutation_test`` runs the paired permutation test
(exact when ``2**n_images <= n_permutations``), and ``scipy.special``/``scipy.stats.binom`` give the
binomial tails of the risk bounds.
"""

from __future__ import annotations

import math
import numbers
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._lib import (
    as_array,
    check_choice,
    check_correct,
    check_coverages,
    check_mask,
    check_num_classes,
    check_positive_int,
    check_risk,
    check_seed,
    check_uncertainty,
    flatten,
    get_namespace,
    to_numpy,
)
from .risk_coverage import aurc_optimal
from .selective import required_count

__all__ = [
    "BootstrapResult",
    "ConfidenceInterval",
    "DiceThreshold",
    "ImageState",
    "ModelComparison",
    "PairedDifference",
    "RiskThreshold",
    "bootstrap_ci",
    "bootstrap_state",
    "compare_models",
    "compare_states",
    "guaranteed_dice_threshold",
    "guaranteed_risk_threshold",
]

INSTANCE_METRICS = ("aurc", "e_aurc", "augrc")
SEGMENTATION_METRICS = ("aurc_dice", "dice_at_coverage")
METHODS = ("BCa", "percentile", "basic")


# ----------------------------------------------------------------------------------------------------
# result types


@dataclass(frozen=True)
class ConfidenceInterval:
    """A bootstrap confidence interval for one statistic.

    Attributes
    ----------
    estimate : float
        The statistic on the data as given (not resampled).
    low, high : float
        The interval; it covers the population value with probability ``confidence`` over repeated
        samples, approximately (the bootstrap is an approximation, better with more units).
    standard_error : float
        Standard deviation (``ddof=1``) of the bootstrap distribution.
    confidence : float
        The confidence level, e.g. 0.95.
    method : str
        ``"BCa"``, ``"percentile"`` or ``"basic"``: the method actually used (BCa falls back to the
        percentile interval where its acceleration is undefined, e.g. when every jackknife value is equal).
    """

    estimate: float
    low: float
    high: float
    standard_error: float
    confidence: float
    method: str


@dataclass(frozen=True, eq=False)  # holds arrays: compare ``intervals`` and ``distribution`` instead
class BootstrapResult:
    """Bootstrap intervals of one or several statistics computed from the same resamples.

    Attributes
    ----------
    intervals : dict of str to ConfidenceInterval
        One entry per statistic: ``"aurc"``, ``"e_aurc"``, ``"augrc"``, ``"aurc_dice"``, and for
        ``dice_at_coverage`` ``"mean@c"`` and ``"p5@c"`` for each requested coverage ``c`` (e.g.
        ``"mean@0.9"``).
    distribution : dict of str to ndarray of shape (n_resamples,)
        The bootstrap distribution of each statistic (NumPy, float64).
    n_units : int
        Number of resampled units (images, instances or groups).
    unit : str
        ``"image"``, ``"instance"`` or ``"group"``.
    n_resamples : int
    confidence : float
    """

    intervals: dict[str, ConfidenceInterval]
    distribution: dict[str, Any]
    n_units: int
    unit: str
    n_resamples: int
    confidence: float

    def __getitem__(self, name: str) -> ConfidenceInterval:
        return self.intervals[name]


@dataclass(frozen=True)
class PairedDifference:
    """Difference ``B - A`` of one statistic between two models on the same images.

    Attributes
    ----------
    estimate : float
        ``statistic(B) - statistic(A)`` on the images as given.
    low, high : float
        Paired-bootstrap interval (the same resampled images for both models).
    standard_error : float
        Standard deviation (``ddof=1``) of the paired-bootstrap distribution.
    p_value : float
        Two-sided p-value of the paired permutation test: under the null hypothesis the two models'
        outputs on each image are exchangeable, so they are swapped image by image.
    method : str
        The interval method actually used.
    """

    estimate: float
    low: float
    high: float
    standard_error: float
    p_value: float
    method: str


@dataclass(frozen=True)
class ModelComparison:
    """Paired comparison of two models on the same images ([`compare_models`][selectivekit.compare_models]).

    Attributes
    ----------
    differences : dict of str to PairedDifference
        ``"aurc_dice"`` (lower is better, so a negative difference favours B) and ``"mean@c"`` for each
        requested coverage (higher is better, a positive difference favours B).
    n_images : int
    confidence : float
    n_resamples : int
        Bootstrap resamples.
    n_permutations : int
        Permutations actually used (all ``2**n_images`` when the test is exact).
    exact : bool
        Whether the permutation test enumerated every swap.
    """

    differences: dict[str, PairedDifference]
    n_images: int
    confidence: float
    n_resamples: int
    n_permutations: int
    exact: bool

    def __getitem__(self, name: str) -> PairedDifference:
        return self.differences[name]


@dataclass(frozen=True)
class RiskThreshold:
    """A selection threshold with a high-probability bound on the selective risk (SGR).

    Attributes
    ----------
    threshold : float
        Accept instances with ``u <= threshold``; ``-inf`` when nothing qualified (everything referred).
    coverage : float
        Share of the calibration instances accepted.
    n_accepted : int
    selective_risk : float
        Empirical error rate of the accepted calibration instances (NaN when nothing is accepted).
    risk_bound : float
        Upper bound on the selective risk that holds with probability at least ``1 - delta``
        (NaN when nothing is accepted).
    target_risk, delta : float
        The requested risk and failure probability.
    n_tests : int
        Number of bounds computed by the binary search; each used ``delta / n_tests``.
    refers_all : bool
        True when no threshold had a bound below ``target_risk``: everything is referred.
    """

    threshold: float
    coverage: float
    n_accepted: int
    selective_risk: float
    risk_bound: float
    target_risk: float
    delta: float
    n_tests: int
    refers_all: bool


@dataclass(frozen=True)
class DiceThreshold:
    """An image-level referral threshold with a guarantee on ``1 - Dice after referral``.

    Attributes
    ----------
    threshold : float
        Accept voxels with ``u <= threshold``, refer the others; ``-inf`` refers everything.
    coverage : float
        Global coverage on the calibration images at this threshold.
    loss : float
        Mean calibration loss ``1 - Dice after referral`` at this threshold (0 when everything is referred).
    bound : float
        ``"crc"``: ``(n loss + 1) / (n + 1)``, the conformal bound on the expected loss of a new image (at
        most ``max_dice_loss``). ``"ltt"``: the Hoeffding–Bentkus upper confidence bound on the expected loss,
        valid with probability ``1 - delta`` (at most ``max_dice_loss``). 0 when everything is referred.
    method : str
        ``"crc"`` (conformal risk control, ``delta=None``) or ``"ltt"`` (Learn then Test).
    max_dice_loss : float
    delta : float or None
    p_value : float or None
        ``"ltt"`` only: the Hoeffding–Bentkus p-value of the hypothesis ``risk > max_dice_loss`` at this
        threshold (at most ``delta``).
    n_images : int
        Calibration images.
    refers_all : bool
        True when no threshold qualified: everything is referred (Dice 1, coverage 0).
    """

    threshold: float
    coverage: float
    loss: float
    bound: float
    method: str
    max_dice_loss: float
    delta: float | None
    p_value: float | None
    n_images: int
    refers_all: bool


# ----------------------------------------------------------------------------------------------------
# small helpers


def _scipy() -> Any:
    try:
        import scipy.special
        import scipy.stats
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        msg = (
            "selectivekit's intervals, tests and guaranteed thresholds need SciPy, which is not installed; "
            "install it with: pip install 'selectivekit[stats]' (or pip install scipy)."
        )
        raise ModuleNotFoundError(msg, name="scipy") from exc
    return scipy


def _check_open_unit(value: Any, name: str) -> float:
    """A real number strictly inside (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        msg = f"`{name}` must be a real number in (0, 1), got {type(value).__name__}."
        raise TypeError(msg)
    v = float(value)
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        msg = f"`{name}` must be in (0, 1), got {value!r}."
        raise ValueError(msg)
    return v


def _check_method(method: Any) -> str:
    if isinstance(method, str):
        for m in METHODS:
            if method.lower() == m.lower():
                return m
    return check_choice(method, "method", METHODS)


def _rng(seed: Any) -> np.random.Generator:
    return np.random.default_rng(check_seed(seed))


def _rng_kw(func: Callable[..., Any], rng: np.random.Generator) -> dict[str, Any]:
    """SciPy >= 1.15 calls the generator ``rng``; older releases ``random_state``."""
    import inspect

    return {"rng" if "rng" in inspect.signature(func).parameters else "random_state": rng}


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Multiplicities of each unit in every row of ``idx`` (shape (B, m)): float64 array (B, n)."""
    b = idx.shape[0]
    flat = (idx + n * np.arange(b, dtype=np.int64)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _resample_indices(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """Resample ``r`` draws the units ``rng.integers(0, n, (n_resamples, n))[r]`` (SciPy's own draw)."""
    return rng.integers(0, n, (n_resamples, n))


def _chunks(n_total: int, size: int) -> list[slice]:
    size = max(1, size)
    return [slice(k, min(k + size, n_total)) for k in range(0, n_total, size)]


# ----------------------------------------------------------------------------------------------------
# per-image state for the segmentation metrics


@dataclass
class ImageState:
    """Per-image step functions, from one [`dice_coverage_curve`][selectivekit.dice_coverage_curve] call per
    image.

    For image ``i``: ``thr[i]`` its distinct ``u`` values (increasing), ``cnt[i]`` the number of its voxels
    with ``u <= thr[i][g]``, and the points where its Dice after referral changes: ``chg_t[i]`` (increasing)
    and ``chg_d[i]``, the Dice once voxels up to that value are accepted (1.0 before the first point).
    """

    thr: list[np.ndarray]
    cnt: list[np.ndarray]
    chg_t: list[np.ndarray]
    chg_d: list[np.ndarray]
    n_vox: np.ndarray
    _a: np.ndarray | None = field(default=None, repr=False)
    _union: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.thr)

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
        xp: Any = None,
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
            thr=[t for s in states for t in s.thr],
            cnt=[c for s in states for c in s.cnt],
            chg_t=[t for s in states for t in s.chg_t],
            chg_d=[d for s in states for d in s.chg_d],
            n_vox=np.concatenate([s.n_vox for s in states]),
        )

    def take(self, indices: Sequence[int]) -> ImageState:
        """The images at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        return ImageState(
            thr=[self.thr[i] for i in idx],
            cnt=[self.cnt[i] for i in idx],
            chg_t=[self.chg_t[i] for i in idx],
            chg_d=[self.chg_d[i] for i in idx],
            n_vox=self.n_vox[idx],
        )

    def save(self, path: Any) -> None:
        """Write the state to an ``.npz`` file (about 8 bytes per distinct ``u`` value of each image)."""
        _save_state(path, self)

    @classmethod
    def load(cls, path: Any) -> ImageState:
        """Read a state written by [`save`][selectivekit.guarantees.ImageState.save]."""
        return _load_state(path)

    def count_upto(self, i: int, t: np.ndarray) -> np.ndarray:
        """``#{u_i <= t}`` for every value of ``t``."""
        k = np.searchsorted(self.thr[i], t, side="right")
        return np.where(k > 0, self.cnt[i][np.maximum(k - 1, 0)], 0)

    def count_below(self, i: int, t: np.ndarray) -> np.ndarray:
        """``#{u_i < t}`` for every value of ``t``."""
        k = np.searchsorted(self.thr[i], t, side="left")
        return np.where(k > 0, self.cnt[i][np.maximum(k - 1, 0)], 0)

    def dice(self, j: int, t: np.ndarray) -> np.ndarray:
        """``D_j(t)``: Dice of image ``j`` after referring its voxels with ``u > t``."""
        k = np.searchsorted(self.chg_t[j], t, side="right")
        if self.chg_d[j].shape[0] == 0:
            return np.ones(np.shape(t))
        return np.where(k > 0, self.chg_d[j][np.maximum(k - 1, 0)], 1.0)

    @property
    def a_matrix(self) -> np.ndarray:
        """``A_ij = sum over the voxels v of image i of D_j(u_v)``, shape (n_items, n_items)."""
        if self._a is None:
            n = self.n_items
            lengths = [c.shape[0] for c in self.chg_t]
            t_all = np.concatenate(self.chg_t) if sum(lengths) else np.zeros(0)
            # the jump of D_j at each of its change points
            jumps = np.concatenate([np.diff(d, prepend=1.0) if d.shape[0] else d for d in self.chg_d]).astype(
                np.float64
            )
            owner = np.repeat(np.arange(n), lengths)
            a = np.empty((n, n))
            for i in range(n):
                # D_j(u_v) = 1 + sum of the jumps at points <= u_v: the voxels of i with u >= t_p see jump p
                above = self.n_vox[i] - self.count_below(i, t_all)
                a[i] = self.n_vox[i] + np.bincount(owner, weights=jumps * above, minlength=n)
            self._a = a
        return self._a

    @property
    def union(self) -> np.ndarray:
        """Every distinct ``u`` of every image, increasing."""
        if self._union is None:
            self._union = np.unique(np.concatenate(self.thr))
        return self._union

    # statistics of resampled sets: rows of ``idx`` (shape (B, m)) are multisets of items

    def aurc_dice(self, w: np.ndarray) -> np.ndarray:
        a = self.a_matrix
        quad = np.einsum("bi,ij,bj->b", w, a, w)
        return 1.0 - quad / ((w @ self.n_vox.astype(np.float64)) * w.sum(axis=1))

    def threshold_at(self, w: np.ndarray, coverage: float) -> np.ndarray:
        """Per row: the smallest value ``t`` with ``sum_i w_i #{u_i <= t} >= ceil(c N_w)`` (N_w voxels)."""
        n_w = w @ self.n_vox.astype(np.float64)
        k = required_count(coverage, n_w)  # one required count per row
        union = self.union
        lo = np.zeros(w.shape[0], dtype=np.int64)
        hi = np.full(w.shape[0], union.shape[0] - 1, dtype=np.int64)
        used = [i for i in range(self.n_items) if np.any(w[:, i])]
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            t = union[mid]
            f = np.zeros(w.shape[0])
            for i in used:
                f += w[:, i] * self.count_upto(i, t)
            ok = f >= k
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid + 1)
        return union[lo]

    def dice_at(self, w: np.ndarray, idx: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean and 5th percentile of the image Dice of each resampled set at ``coverage``."""
        t = self.threshold_at(w, coverage)
        d = np.empty(w.shape)
        for j in range(self.n_items):
            d[:, j] = self.dice(j, t) if np.any(w[:, j]) else 1.0
        vals = np.take_along_axis(d, idx, axis=1)
        return vals.mean(axis=1), np.percentile(vals, 5.0, axis=1)


def _per_image(pred: Any, label: Any, uncertainty: Any) -> list[tuple[Any, Any, Any]]:
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
    pred: Any, label: Any, uncertainty: Any, num_classes: int, include_background: bool, xp: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The state of one image (a stacked array of one image, or a list of one array each)."""
    from .segmentation import dice_coverage_curve

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
        thr=[p[0] for p in parts],
        cnt=[p[1] for p in parts],
        chg_t=[p[2] for p in parts],
        chg_d=[p[3] for p in parts],
        n_vox=np.asarray([p[4] for p in parts], dtype=np.int64),
    )


def _image_state(
    pred: Any, label: Any, uncertainty: Any, num_classes: int, include_background: bool, xp: Any, what: str
) -> ImageState:
    images = _per_image(pred, label, uncertainty)
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


def _save_state(path: Any, state: ImageState) -> None:
    """Write the per-image state (used by ``selectivekit compare``) to an ``.npz`` file."""
    lengths = np.asarray([t.shape[0] for t in state.thr], dtype=np.int64)
    changes = np.asarray([t.shape[0] for t in state.chg_t], dtype=np.int64)
    np.savez(
        path,
        format_version=np.int64(1),
        lengths=lengths,
        changes=changes,
        n_vox=state.n_vox,
        thr=np.concatenate(state.thr),
        cnt=np.concatenate(state.cnt),
        chg_t=np.concatenate(state.chg_t),
        chg_d=np.concatenate(state.chg_d),
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
        thr=np.split(arrays["thr"], split),
        cnt=np.split(arrays["cnt"], split),
        chg_t=np.split(arrays["chg_t"], csplit),
        chg_d=np.split(arrays["chg_d"], csplit),
        n_vox=arrays["n_vox"].astype(np.int64),
    )


# ----------------------------------------------------------------------------------------------------
# per-instance state for aurc, e_aurc, augrc


@dataclass
class _InstanceState:
    """Instances sorted once by ``u``; ``unit`` maps each sorted instance to its resampling unit."""

    unit: np.ndarray  # (N,) unit of each instance, in increasing u
    risk: np.ndarray  # (N,) instance risk in the same order
    ends: np.ndarray  # last position of each distinct u
    is_bool: bool
    n_units: int
    risk_order: np.ndarray  # instances in increasing risk (for the optimal ranking of soft risks)

    def stats(self, w: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """The statistics ``names`` for each row of unit weights ``w`` (shape (B, n_units)): the weighted tie
        groups of each row through the one area formula."""
        from ._lib.tie_groups import area_terms, excess_aurc

        out = np.empty((len(names), w.shape[0]))
        n_inst = self.unit.shape[0]
        for sl in _chunks(w.shape[0], max(1, 4_000_000 // max(n_inst, 1))):
            wi = w[sl][:, self.unit]  # (b, N) weight of every instance
            cum_n = np.cumsum(wi, axis=1)[:, self.ends]
            cum_e = np.cumsum(wi * self.risk, axis=1)[:, self.ends]
            n_tot = cum_n[:, -1:]
            zero = np.zeros_like(n_tot)
            n_prev = np.concatenate([zero, cum_n[:, :-1]], axis=1)
            e_prev = np.concatenate([zero, cum_e[:, :-1]], axis=1)
            areas = {}
            for generalized in {name == "augrc" for name in names}:
                with np.errstate(invalid="ignore", divide="ignore"):
                    terms = area_terms(n_prev, cum_n, e_prev, cum_e, n_tot, generalized, "step", np)
                # groups before the first resampled instance hold nothing: 0, not 0 / 0
                areas[generalized] = np.sum(np.where(cum_n > 0, terms, 0.0), axis=1)
            for r, name in enumerate(names):
                value = areas[name == "augrc"]
                if name == "e_aurc":
                    value = excess_aurc(value, self._optimal(w[sl], wi, cum_e[:, -1], n_tot[:, 0]))
                out[r, sl] = value
        return out

    def _optimal(self, w: np.ndarray, wi: np.ndarray, errors: np.ndarray, n_tot: np.ndarray) -> np.ndarray:
        from ._lib.tie_groups import soft_optimal_aurc

        if self.is_bool:
            pairs = np.stack([np.rint(n_tot), np.rint(errors)], axis=1).astype(np.int64)
            uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
            values = np.array([aurc_optimal(int(n), int(e)) for n, e in uniq])
            return values[inverse.reshape(-1)]
        # soft risk: the best ranking accepts the lowest-risk instances first
        risks = self.risk[self.risk_order]
        res = np.empty(w.shape[0])
        for b in range(w.shape[0]):
            res[b] = soft_optimal_aurc(np.repeat(risks, wi[b][self.risk_order].astype(np.int64)), np)
        return res


def _instance_state(
    uncertainty: Any, correct: Any, risk: Any, groups: Any, mask: Any, xp: Any
) -> tuple[_InstanceState, str]:
    uncertainty = as_array(uncertainty, "uncertainty")
    if (correct is None) == (risk is None):
        msg = "pass exactly one of `correct` (bool per instance) or `risk` (per-instance, in [0, 1])."
        raise TypeError(msg)
    other = as_array(correct if risk is None else risk, "correct" if risk is None else "risk")
    names = ("uncertainty", "correct" if risk is None else "risk")
    xp = get_namespace(uncertainty, other, xp=xp, names=names)
    check_uncertainty(uncertainty, xp)
    inst = ~check_correct(other, uncertainty, xp) if risk is None else check_risk(other, uncertainty, xp)
    mask = check_mask(mask, uncertainty, xp)
    u = to_numpy(flatten(uncertainty, xp))
    r = to_numpy(flatten(inst, xp)).astype(np.float64)
    keep = None if mask is None else to_numpy(flatten(mask, xp))
    if groups is not None:
        g = to_numpy(as_array(groups, "groups"))
        if g.shape != tuple(uncertainty.shape):
            msg = (
                f"`groups` must have the same shape as `uncertainty` {tuple(uncertainty.shape)}, "
                f"got {g.shape}."
            )
            raise ValueError(msg)
        if g.dtype == np.bool_ or not np.issubdtype(g.dtype, np.integer):
            msg = f"`groups` must hold integer group ids, got dtype {g.dtype}."
            raise TypeError(msg)
        g = g.reshape(-1)
    if keep is not None:
        u, r = u[keep], r[keep]
        g = g[keep] if groups is not None else None
    if groups is None:
        unit = np.arange(u.shape[0])
        n_units, kind = u.shape[0], "instance"
    else:
        _, unit = np.unique(g, return_inverse=True)
        unit = unit.reshape(-1)
        n_units, kind = int(unit.max()) + 1, "group"
    from ._lib.tie_groups import tie_group_ends

    order = np.argsort(u, kind="stable")
    ends = tie_group_ends(u[order], np)
    state = _InstanceState(
        unit=unit[order],
        risk=r[order],
        ends=ends,
        is_bool=risk is None,
        n_units=n_units,
        risk_order=np.argsort(r[order], kind="stable"),
    )
    return state, kind


# ----------------------------------------------------------------------------------------------------
# intervals from a bootstrap distribution (SciPy)


def _intervals(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    idx: np.ndarray,
    confidence: float,
    method: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Estimates, interval ends, standard errors, methods used and the distribution (k, B).

    ``statistic(idx)`` maps resampled unit indices (shape (B, m)) to the statistics (shape (k, B)). The
    distribution is ours (drawn once, cheap per resample); SciPy's ``bootstrap`` turns it into intervals
    (``n_resamples=0`` with ``bootstrap_result``), computing the BCa jackknife through ``statistic``.
    """
    scipy = _scipy()
    dist = np.concatenate([statistic(idx[sl]) for sl in _chunks(idx.shape[0], 500)], axis=1)
    estimate = statistic(np.arange(n_units)[None, :])[:, 0]

    def vectorized(i: Any, axis: int = -1) -> np.ndarray:
        i = np.asarray(i).astype(np.int64)
        lead = i.shape[:-1]
        values = statistic(i.reshape(-1, i.shape[-1]))
        return values.reshape((values.shape[0], *lead))

    def run(m: str) -> tuple[np.ndarray, np.ndarray]:
        class _Previous:
            bootstrap_distribution = dist

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate rows are handled below
            with np.errstate(all="ignore"):
                res = scipy.stats.bootstrap(
                    (np.arange(n_units, dtype=np.float64),),
                    vectorized,
                    n_resamples=0,
                    bootstrap_result=_Previous(),
                    confidence_level=confidence,
                    method=m,
                    vectorized=True,
                )
        ci = res.confidence_interval
        return np.atleast_1d(np.asarray(ci.low, dtype=np.float64)), np.atleast_1d(
            np.asarray(ci.high, dtype=np.float64)
        )

    low, high = run(method.lower() if method != "BCa" else "BCa")
    used = [method] * dist.shape[0]
    flat = np.ptp(dist, axis=1) == 0
    bad = ~(np.isfinite(low) & np.isfinite(high))
    if np.any(bad & ~flat):
        plow, phigh = run("percentile")
        for r in np.nonzero(bad & ~flat)[0]:
            low[r], high[r], used[r] = plow[r], phigh[r], "percentile"
    for r in np.nonzero(flat)[0]:
        low[r] = high[r] = dist[r, 0]
    se = np.std(dist, axis=1, ddof=1) if dist.shape[1] > 1 else np.zeros(dist.shape[0])
    return estimate, low, high, se, used, dist


# ----------------------------------------------------------------------------------------------------
# public API: intervals


def _metric_names(metric: Any) -> list[str]:
    items = [metric] if isinstance(metric, str) or callable(metric) else list(metric)
    if not items:
        msg = "`metric` must name at least one metric."
        raise ValueError(msg)
    names = []
    for item in items:
        name = item.__name__ if callable(item) else item
        if name not in INSTANCE_METRICS + SEGMENTATION_METRICS:
            options = ", ".join(f'"{c}"' for c in INSTANCE_METRICS + SEGMENTATION_METRICS)
            msg = f"`metric` must be one of {options} (or the function itself), got {item!r}."
            raise ValueError(msg)
        names.append(name)
    kinds = {n in SEGMENTATION_METRICS for n in names}
    if len(kinds) > 1:
        msg = f"`metric` mixes instance and segmentation metrics: {names}; give one kind per call."
        raise ValueError(msg)
    return list(dict.fromkeys(names))


def _coverage_key(stat: str, c: float) -> str:
    return f"{stat}@{c:g}"


def _segmentation_statistic(
    state: ImageState, names: Sequence[str], cs: Sequence[float]
) -> tuple[list[str], Callable[[np.ndarray], np.ndarray]]:
    keys: list[str] = []
    if "aurc_dice" in names:
        keys.append("aurc_dice")
    for c in cs:
        keys += [_coverage_key("mean", c), _coverage_key("p5", c)]
    n_units = state.n_items

    def statistic(idx: np.ndarray) -> np.ndarray:
        w = _weights(idx, n_units)
        rows = []
        if "aurc_dice" in names:
            rows.append(state.aurc_dice(w))
        for c in cs:
            rows.extend(state.dice_at(w, idx, c))
        return np.stack(rows)

    return keys, statistic


def _run_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    keys: Sequence[str],
    n_units: int,
    unit: str,
    conf: float,
    method: str,
    n_resamples: int,
    rng: np.random.Generator,
) -> BootstrapResult:
    if n_units < 2:
        source = {"image": "pred", "group": "groups"}.get(unit, "uncertainty")
        msg = f"a bootstrap interval needs at least 2 {unit}s to resample (in `{source}`), got {n_units}."
        raise ValueError(msg)
    idx = _resample_indices(rng, n_units, n_resamples)
    estimate, low, high, se, used, dist = _intervals(statistic, n_units, idx, conf, method)
    intervals = {
        key: ConfidenceInterval(
            estimate=float(estimate[r]),
            low=float(low[r]),
            high=float(high[r]),
            standard_error=float(se[r]),
            confidence=conf,
            method=used[r],
        )
        for r, key in enumerate(keys)
    }
    return BootstrapResult(
        intervals=intervals,
        distribution={key: dist[r] for r, key in enumerate(keys)},
        n_units=n_units,
        unit=unit,
        n_resamples=n_resamples,
        confidence=conf,
    )


def bootstrap_state(
    state: ImageState,
    /,
    *,
    coverages: Sequence[float] = (),
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 2000,
    seed: Any = None,
) -> BootstrapResult:
    """[`bootstrap_ci`][selectivekit.bootstrap_ci] of ``aurc_dice`` and ``dice_at_coverage`` from an
    [`ImageState`][selectivekit.guarantees.ImageState].

    The same resamples and results as ``bootstrap_ci(["aurc_dice", "dice_at_coverage"], ...)`` on the images
    the state was built from; used by the command line, which builds the state image by image.
    """
    conf = _check_open_unit(confidence, "confidence")
    cs = list(dict.fromkeys(check_coverages(coverages))) if len(coverages) else []
    names = ["aurc_dice", *(["dice_at_coverage"] if cs else [])]
    keys, statistic = _segmentation_statistic(state, names, cs)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    return _run_bootstrap(
        statistic, keys, state.n_items, "image", conf, _check_method(method), n_resamples, _rng(seed)
    )


def bootstrap_ci(
    metric: Any,
    /,
    *arrays: Any,
    risk: Any = None,
    groups: Any = None,
    mask: Any = None,
    num_classes: int | None = None,
    coverages: Any = None,
    include_background: bool = False,
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 2000,
    seed: Any = None,
    xp: Any = None,
) -> BootstrapResult:
    """Bootstrap confidence intervals for selective-prediction metrics.

    Parameters
    ----------
    metric : str, function, or a sequence of them
        ``"aurc"``, ``"e_aurc"``, ``"augrc"`` (instance metrics: ``arrays`` are ``uncertainty, correct``,
        or ``uncertainty`` with ``risk=``), or ``"aurc_dice"``, ``"dice_at_coverage"`` (segmentation:
        ``arrays`` are ``pred, label, uncertainty`` as for
        [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage]). The
        functions themselves (``sk.aurc``, ...) are accepted too. Several metrics of one kind share the
        resamples.
    *arrays
        The metric's arrays (see above).
    risk : array, optional
        Per-instance loss in [0, 1] instead of ``correct`` (instance metrics).
    groups : integer array like ``uncertainty``, optional
        Instance metrics only: resample these groups (e.g. the image or patient of each voxel) instead of
        single instances. Voxels of one image are not independent; resample their images.
    mask : bool array, optional
        Instance metrics only: the instances to evaluate.
    num_classes, include_background
        Segmentation metrics: as for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    coverages : float or sequence of float in (0, 1]
        Required for ``"dice_at_coverage"``: intervals for the mean and the 5th percentile of the image
        Dice at each coverage.
    confidence : float in (0, 1), default 0.95
    method : {"BCa", "percentile", "basic"}, default "BCa"
    n_resamples : int, default 2000
    seed : int, numpy Generator or None
        Resample ``r`` draws the units ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))[r]``.

    Returns
    -------
    BootstrapResult
        ``intervals`` by name (``"aurc"``, ..., ``"aurc_dice"``, ``"mean@0.9"``, ``"p5@0.9"``) and the
        bootstrap ``distribution`` of each.

    Notes
    -----
    Segmentation metrics resample **images**: each resample draws ``n_images`` images with replacement,
    and the global threshold of every requested coverage is chosen again on the resampled set, exactly as
    [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage] and
    [`selectivekit.aurc_dice`][selectivekit.aurc_dice] would on that set (a drawn
    image counts as many times as it is drawn). Per-image state is computed once, so a resample costs a
    weighted sum and a bisection, not a sort. The inputs may live in any array library and on any device:
    the per-image step functions are computed there, then copied to the host, where the resamples run in
    NumPy (they are small: about one number per distinct value of ``u``).

    Intervals come from ``scipy.stats.bootstrap`` applied to this distribution: BCa (Efron's bias-corrected
    and accelerated interval, the default) is second-order accurate; where its acceleration is undefined
    the percentile interval is used and ``ConfidenceInterval.method`` says so. A statistic whose bootstrap
    distribution is a single value gets the interval ``[value, value]``.

    References
    ----------
    Efron, "Better Bootstrap Confidence Intervals", JASA 82 (1987). Efron & Tibshirani, "An Introduction to
    the Bootstrap", 1993.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = rng.random(500)
    >>> correct = rng.random(500) > u * 0.5
    >>> res = bootstrap_ci("aurc", u, correct, n_resamples=500, seed=0)
    >>> ci = res["aurc"]
    >>> bool(ci.low < ci.estimate < ci.high)
    True
    """
    names = _metric_names(metric)
    conf = _check_open_unit(confidence, "confidence")
    method = _check_method(method)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    rng = _rng(seed)
    if names[0] in SEGMENTATION_METRICS:
        if len(arrays) != 3:
            msg = (
                f"`{names[0]}` needs the arrays `pred, label, uncertainty`; got {len(arrays)} positional "
                "array(s)."
            )
            raise TypeError(msg)
        for name, value in (("risk", risk), ("groups", groups), ("mask", mask)):
            if value is not None:
                msg = f"`{name}` applies to the instance metrics only; segmentation resamples whole images."
                raise TypeError(msg)
        if num_classes is None:
            msg = "`num_classes` is required for the segmentation metrics."
            raise TypeError(msg)
        k = check_num_classes(num_classes, include_background)
        cs: list[float] = []
        if "dice_at_coverage" in names:
            if coverages is None:
                msg = "`coverages` is required for `dice_at_coverage`."
                raise TypeError(msg)
            cs = list(dict.fromkeys(check_coverages(coverages)))
        state = _image_state(*arrays, k, bool(include_background), xp, "pred")
        n_units = state.n_items
        keys, statistic = _segmentation_statistic(state, names, cs)
        unit = "image"
    else:
        if len(arrays) not in (1, 2):
            msg = (
                f"`{names[0]}` needs the arrays `uncertainty, correct` (or `uncertainty` with `risk=`); got "
                f"{len(arrays)} positional array(s)."
            )
            raise TypeError(msg)
        if num_classes is not None or coverages is not None:
            msg = "`num_classes` and `coverages` apply to the segmentation metrics only."
            raise TypeError(msg)
        correct = arrays[1] if len(arrays) == 2 else None
        inst, unit = _instance_state(arrays[0], correct, risk, groups, mask, xp)
        n_units = inst.n_units
        keys = names

        def statistic(idx: np.ndarray) -> np.ndarray:
            return inst.stats(_weights(idx, n_units), names)

    return _run_bootstrap(statistic, keys, n_units, unit, conf, method, n_resamples, rng)


# ----------------------------------------------------------------------------------------------------
# public API: paired comparison


def _paired_comparison(
    state_a: ImageState,
    state_b: ImageState,
    cs: Sequence[float],
    conf: float,
    method: str,
    n_resamples: int,
    n_permutations: int,
    rng: np.random.Generator,
) -> ModelComparison:
    """The paired bootstrap and permutation test on two per-image states of the same images."""
    if state_a.n_items != state_b.n_items:
        msg = f"`pred_b` must hold the {state_a.n_items} images of `pred_a`, got {state_b.n_items}."
        raise ValueError(msg)
    n = state_a.n_items
    if n < 2:
        msg = f"a paired comparison needs at least 2 images (in `pred_a`), got {n}."
        raise ValueError(msg)
    both = ImageState.concat(state_a, state_b)
    keys = ["aurc_dice", *(_coverage_key("mean", c) for c in cs)]

    def stats_of(items: np.ndarray) -> np.ndarray:
        w = _weights(items, 2 * n)
        rows = [both.aurc_dice(w)]
        for c in cs:
            rows.append(both.dice_at(w, items, c)[0])
        return np.stack(rows)

    def difference(idx: np.ndarray) -> np.ndarray:
        return stats_of(idx + n) - stats_of(idx)

    idx = _resample_indices(rng, n, n_resamples)
    estimate, low, high, se, used, _ = _intervals(difference, n, idx, conf, method)

    scipy = _scipy()

    def permuted(x: Any, y: Any, axis: int = -1) -> np.ndarray:
        x = np.asarray(x).astype(np.int64)
        y = np.asarray(y).astype(np.int64)
        lead = x.shape[:-1]
        xs, ys = x.reshape(-1, n), y.reshape(-1, n)
        values = stats_of(ys) - stats_of(xs)  # (k, B)
        return np.moveaxis(values, 0, -1).reshape((*lead, len(keys)))

    items_a = np.arange(n, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = scipy.stats.permutation_test(
            (items_a, items_a + n),
            permuted,
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_permutations,
            alternative="two-sided",
            **_rng_kw(scipy.stats.permutation_test, rng),
        )
    p_values = np.atleast_1d(np.asarray(test.pvalue, dtype=np.float64))
    exact = 2**n <= n_permutations
    differences = {
        key: PairedDifference(
            estimate=float(estimate[r]),
            low=float(low[r]),
            high=float(high[r]),
            standard_error=float(se[r]),
            p_value=float(p_values[r]),
            method=used[r],
        )
        for r, key in enumerate(keys)
    }
    return ModelComparison(
        differences=differences,
        n_images=n,
        confidence=conf,
        n_resamples=n_resamples,
        n_permutations=int(np.asarray(test.null_distribution).shape[0]),
        exact=exact,
    )


def compare_states(
    state_a: ImageState,
    state_b: ImageState,
    /,
    *,
    coverages: Sequence[float] = (),
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 2000,
    n_permutations: int = 9999,
    seed: Any = None,
) -> ModelComparison:
    """[`compare_models`][selectivekit.compare_models] from two
    [`ImageState`][selectivekit.guarantees.ImageState] of the same images, in the same order."""
    cs = list(dict.fromkeys(check_coverages(coverages))) if len(coverages) else []
    return _paired_comparison(
        state_a,
        state_b,
        cs,
        _check_open_unit(confidence, "confidence"),
        _check_method(method),
        check_positive_int(n_resamples, "n_resamples"),
        check_positive_int(n_permutations, "n_permutations"),
        _rng(seed),
    )


def compare_models(
    pred_a: Any,
    uncertainty_a: Any,
    pred_b: Any,
    uncertainty_b: Any,
    label: Any,
    /,
    *,
    num_classes: int,
    coverages: Any = None,
    include_background: bool = False,
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 2000,
    n_permutations: int = 9999,
    seed: Any = None,
    xp: Any = None,
) -> ModelComparison:
    """Paired comparison of two segmentation models on the same images (differences are B minus A).

    Parameters
    ----------
    pred_a, uncertainty_a, pred_b, uncertainty_b : arrays of shape (n_images, *spatial) or sequences
        Each model's predicted labels and per-voxel uncertainty on the same images.
    label : array(s) like ``pred_a``
        The true labels, shared by both models.
    num_classes, include_background
        As for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    coverages : float or sequence of float in (0, 1], optional
        Coverages at which to compare the mean Dice; without them only the AURC is compared.
    confidence, method, n_resamples
        The paired-bootstrap interval, as for [`bootstrap_ci`][selectivekit.bootstrap_ci].
    n_permutations : int, default 9999
        Random swaps for the permutation test; with ``2**n_images <= n_permutations`` every swap is
        enumerated and the test is exact.
    seed : int, numpy Generator or None
        Seeds the bootstrap, then the permutations.

    Returns
    -------
    ModelComparison
        ``differences["aurc_dice"]`` (negative favours B: lower AURC is better) and
        ``differences["mean@c"]`` (positive favours B), each with estimate, paired-bootstrap interval and
        permutation p-value.

    Notes
    -----
    Both statistics use a global threshold per model and per set, as
    [`selectivekit.aurc_dice`][selectivekit.aurc_dice] and
    [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage] do. The paired bootstrap draws images
    with replacement and
    evaluates both models on the same draw. The permutation test (``scipy.stats.permutation_test`` with
    ``permutation_type="samples"``) swaps the two models' outputs on each image independently with
    probability 1/2: a swapped set mixes images of both models, and its thresholds are chosen on that mixed
    set. The p-value is two-sided and counts the observed assignment, ``(1 + #{|T*| >= |T|}) / (1 +
    n_permutations)`` for random swaps.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 2, size=(8, 16, 16))
    >>> def model(noise):
    ...     wrong = rng.random(label.shape) < 0.1
    ...     return np.where(wrong, 1 - label, label), rng.random(label.shape) + noise * wrong
    >>> pa, ua = model(0.2)
    >>> pb, ub = model(1.0)
    >>> cmp = compare_models(pa, ua, pb, ub, label, num_classes=2, coverages=[0.9], seed=0)
    >>> d = cmp["aurc_dice"]
    >>> bool(d.estimate < 0), 0 < d.p_value <= 1
    (True, True)
    """
    k = check_num_classes(num_classes, include_background)
    conf = _check_open_unit(confidence, "confidence")
    method = _check_method(method)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    n_permutations = check_positive_int(n_permutations, "n_permutations")
    cs = [] if coverages is None else list(dict.fromkeys(check_coverages(coverages)))
    rng = _rng(seed)
    state_a = _image_state(pred_a, label, uncertainty_a, k, bool(include_background), xp, "pred_a")
    state_b = _image_state(pred_b, label, uncertainty_b, k, bool(include_background), xp, "pred_b")
    return _paired_comparison(state_a, state_b, cs, conf, method, n_resamples, n_permutations, rng)


# ----------------------------------------------------------------------------------------------------
# public API: thresholds with a guarantee


def _binomial_upper_bound(errors: int, n: int, delta: float) -> float:
    """Largest ``b`` with ``P(Binomial(n, b) <= errors) >= delta``: the exact (Clopper–Pearson) bound.

    ``P(Bin(n, b) <= e) = I_{1-b}(n - e, e + 1)`` (regularized incomplete beta), so the equation
    ``P(Bin(n, b) <= e) = delta`` is solved by SciPy's numerical inverse ``betaincinv``.
    """
    if errors >= n:
        return 1.0
    scipy = _scipy()
    return float(scipy.special.betaincinv(errors + 1, n - errors, 1.0 - delta))


def guaranteed_risk_threshold(
    uncertainty: Any,
    correct: Any,
    /,
    *,
    target_risk: float,
    delta: float,
    mask: Any = None,
    xp: Any = None,
) -> RiskThreshold:
    """Selection with guaranteed risk (SGR): a threshold whose selective risk is at most ``target_risk``
    with probability at least ``1 - delta``.

    Parameters
    ----------
    uncertainty : array of any shape
        Calibration uncertainty, higher = less confident; finite real values.
    correct : bool (or 0/1) array of the same shape
        Whether each calibration prediction is correct.
    target_risk : float in (0, 1)
        The selective risk (error rate among accepted instances) to guarantee.
    delta : float in (0, 1)
        Allowed probability that the guarantee fails.
    mask : bool array, optional
        The calibration instances to use.

    Returns
    -------
    RiskThreshold
        Threshold, calibration coverage, empirical selective risk and the risk bound. When no threshold
        qualifies it refers everything (``threshold=-inf``, ``refers_all=True``); it never raises for that.

    Notes
    -----
    The algorithm of Geifman & El-Yaniv (2017): a binary search over the distinct calibration values of
    ``u`` (tied instances are accepted together). At each of at most ``k = ceil(log2(G + 1))`` steps, with
    ``m`` accepted instances of which ``e`` are wrong, the bound ``b*`` solves
    ``sum_{j <= e} C(m, j) b^j (1 - b)^(m - j) = delta / k``, the exact binomial tail inverted numerically;
    the search moves to more coverage when ``b* < target_risk``. The returned threshold is the largest
    tested one that passed; by the union bound over the ``k`` tests, its selective risk on new instances
    from the same distribution is at most ``b* < target_risk`` with probability at least ``1 - delta``.

    The guarantee needs **exchangeable** calibration and test instances: whole images or patients, or
    classification samples. It does not hold for the voxels of one image (they are dependent), nor under a
    distribution shift between calibration and deployment. It is a statement over calibration sets, not a
    promise for every test batch.

    References
    ----------
    Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = rng.random(5000)
    >>> correct = rng.random(5000) > 0.3 * u
    >>> res = guaranteed_risk_threshold(u, correct, target_risk=0.05, delta=0.1)
    >>> bool(res.risk_bound < 0.05), bool(0.1 < res.coverage < 0.34)
    (True, True)
    """
    r_star = _check_open_unit(target_risk, "target_risk")
    d = _check_open_unit(delta, "delta")
    uncertainty = as_array(uncertainty, "uncertainty")
    correct = as_array(correct, "correct")
    xp = get_namespace(uncertainty, correct, xp=xp, names=("uncertainty", "correct"))
    check_uncertainty(uncertainty, xp)
    ok = check_correct(correct, uncertainty, xp)
    mask = check_mask(mask, uncertainty, xp)
    u = to_numpy(flatten(uncertainty, xp))
    wrong = ~to_numpy(flatten(ok, xp)).astype(bool)
    if mask is not None:
        keep = to_numpy(flatten(mask, xp)).astype(bool)
        u, wrong = u[keep], wrong[keep]
    order = np.argsort(u, kind="stable")
    s = u[order]
    ends = np.nonzero(np.concatenate([s[1:] != s[:-1], [True]]))[0]
    cum_errors = np.cumsum(wrong[order])[ends]
    n_acc = ends + 1
    thresholds = s[ends]
    n_groups = thresholds.shape[0]
    k = max(1, math.ceil(math.log2(n_groups + 1)))
    step_delta = d / k
    lo, hi, best, best_bound, tests = 0, n_groups - 1, -1, math.nan, 0
    while lo <= hi and tests < k:
        mid = (lo + hi) // 2
        bound = _binomial_upper_bound(int(cum_errors[mid]), int(n_acc[mid]), step_delta)
        tests += 1
        if bound < r_star:
            best, best_bound = mid, bound
            lo = mid + 1
        else:
            hi = mid - 1
    n_total = u.shape[0]
    if best < 0:
        return RiskThreshold(
            threshold=-math.inf,
            coverage=0.0,
            n_accepted=0,
            selective_risk=math.nan,
            risk_bound=math.nan,
            target_risk=r_star,
            delta=d,
            n_tests=tests,
            refers_all=True,
        )
    return RiskThreshold(
        threshold=float(thresholds[best]),
        coverage=int(n_acc[best]) / n_total,
        n_accepted=int(n_acc[best]),
        selective_risk=int(cum_errors[best]) / int(n_acc[best]),
        risk_bound=best_bound,
        target_risk=r_star,
        delta=d,
        n_tests=tests,
        refers_all=False,
    )


def _hb_p_value(loss: float, alpha: float, n: int) -> float:
    """Hoeffding–Bentkus p-value of ``H0: risk > alpha`` for a mean ``loss`` of ``n`` losses in [0, 1]."""
    scipy = _scipy()
    a = min(loss, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = (a * math.log(a / alpha) if a > 0 else 0.0) + (
            (1 - a) * math.log((1 - a) / (1 - alpha)) if a < 1 else 0.0
        )
    hoeffding = math.exp(-n * h1)
    bentkus = math.e * float(scipy.stats.binom.cdf(math.ceil(n * loss - 1e-9), n, alpha))
    return min(1.0, hoeffding, bentkus)


def _hb_upper_bound(loss: float, n: int, delta: float) -> float:
    """Smallest ``alpha`` whose Hoeffding–Bentkus p-value at ``loss`` is at most ``delta`` (bisection)."""
    lo, hi = loss, 1.0
    if _hb_p_value(loss, 1.0 - 1e-12, n) > delta:
        return 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _hb_p_value(loss, mid, n) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def guaranteed_dice_threshold(
    pred: Any,
    label: Any,
    uncertainty: Any,
    /,
    *,
    num_classes: int,
    max_dice_loss: float,
    delta: float | None = None,
    include_background: bool = False,
    xp: Any = None,
) -> DiceThreshold:
    """Image-level referral threshold with a guarantee on the loss ``1 - Dice after referral``.

    Parameters
    ----------
    pred, label, uncertainty : arrays of shape (n_images, *spatial) or sequences of per-image arrays
        The calibration images, as for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    num_classes, include_background
        As for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    max_dice_loss : float in (0, 1)
        The largest acceptable ``1 - Dice`` of an image after referral (0.05: Dice at least 0.95).
    delta : float in (0, 1), optional
        ``None`` (default): conformal risk control, a guarantee on the expected loss of a new image.
        A number: Learn then Test, a guarantee that holds with probability ``1 - delta``.

    Returns
    -------
    DiceThreshold
        The threshold (accept voxels with ``u <= threshold``), the calibration coverage and loss, the bound,
        and the method. When no threshold qualifies it refers everything (``threshold=-inf``,
        ``refers_all=True``); it never raises for that.

    Notes
    -----
    Referring a voxel never lowers an image's Dice, so the per-image loss ``L_i(t) = 1 - Dice_i(t)`` never
    rises as more is referred (as ``t`` falls). With ``n`` calibration images and ``R(t)`` their mean loss:

    - ``delta=None``, conformal risk control: the largest calibration value ``t`` with
      ``(n R(t) + 1) / (n + 1) <= max_dice_loss``. For a new image exchangeable with the calibration
      images, ``E[L_new(t)] <= max_dice_loss``, the expectation taken over the calibration set and the new
      image. It is a guarantee on average, not for each image, nor for each calibration set.
    - ``delta``, Learn then Test: each threshold is a hypothesis ``E[L(t)] > max_dice_loss``, tested with
      the Hoeffding–Bentkus p-value; fixed-sequence testing starts from the most referral and walks
      towards less referral while the p-value stays at most ``delta``. Then
      ``P(E[L(t)] <= max_dice_loss) >= 1 - delta`` over calibration sets. Because the loss is monotone the
      walk is a bisection, and the data-dependent grid does not break the guarantee: accepting a threshold
      beyond the first one whose risk exceeds the target would require rejecting at that one too.

    Both need exchangeable **images** (the calibration set drawn like the deployment images); neither says
    anything about one voxel, nor about images from another scanner or population. Referring everything
    (Dice 1) always satisfies them, so a small calibration set yields a cautious threshold, never an error.

    References
    ----------
    Angelopoulos, Bates, Fisch, Lei & Schuster, "Conformal Risk Control", 2022. Angelopoulos, Bates,
    Candès, Jordan & Lei, "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control",
    2021. Bates, Angelopoulos, Lei, Malik & Jordan, "Distribution-Free, Risk-Controlling Prediction Sets",
    JACM 2021 (the Hoeffding–Bentkus bound).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 2, size=(50, 16, 16))
    >>> wrong = rng.random(label.shape) < 0.1
    >>> pred = np.where(wrong, 1 - label, label)
    >>> u = rng.random(label.shape) + wrong
    >>> res = guaranteed_dice_threshold(pred, label, u, num_classes=2, max_dice_loss=0.05)
    >>> res.method, bool(res.bound <= 0.05), bool(res.coverage > 0.5)
    ('crc', True, True)
    """
    from .segmentation import dice_coverage_curve

    alpha = _check_open_unit(max_dice_loss, "max_dice_loss")
    d = None if delta is None else _check_open_unit(delta, "delta")
    k = check_num_classes(num_classes, include_background)
    if isinstance(pred, (list, tuple)):
        n = len(pred)
    else:
        shape = getattr(pred, "shape", None)
        n = int(shape[0]) if shape is not None and len(shape) >= 2 else -1
    if n == 0:
        msg = "`pred` holds no calibration image; at least one is needed."
        raise ValueError(msg)
    if n < 0:
        # let the segmentation checks name the problem (not an array of images)
        _per_image(pred, label, uncertainty)
    curve = dice_coverage_curve(
        pred, label, uncertainty, num_classes=k, include_background=include_background, xp=xp
    )
    loss = 1.0 - to_numpy(curve.mean_dice).astype(np.float64)
    loss = np.maximum.accumulate(np.maximum(loss, 0.0))  # monotone in t (removes float noise)
    coverage = to_numpy(curve.coverage).astype(np.float64)
    threshold = to_numpy(curve.threshold)
    method = "crc" if d is None else "ltt"

    def refer_all() -> DiceThreshold:
        return DiceThreshold(
            threshold=-math.inf,
            coverage=0.0,
            loss=0.0,
            bound=0.0,
            method=method,
            max_dice_loss=alpha,
            delta=d,
            p_value=None if d is None else 0.0,
            n_images=n,
            refers_all=True,
        )

    if d is None:
        ok = (n * loss + 1.0) / (n + 1.0) <= alpha
        count = int(np.searchsorted(~ok, True, side="left"))  # ``ok`` is a prefix: loss is monotone
        if count == 0:
            return refer_all()
        g = count - 1
        return DiceThreshold(
            threshold=float(threshold[g]),
            coverage=float(coverage[g]),
            loss=float(loss[g]),
            bound=(n * float(loss[g]) + 1.0) / (n + 1.0),
            method=method,
            max_dice_loss=alpha,
            delta=None,
            p_value=None,
            n_images=n,
            refers_all=False,
        )
    # Learn then Test: fixed-sequence from the most referral; the p-value rises with the loss, so the
    # sequence of rejections is a prefix found by bisection.
    lo, hi = 0, loss.shape[0]  # count of rejected hypotheses lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _hb_p_value(float(loss[mid - 1]), alpha, n) <= d:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return refer_all()
    g = lo - 1
    return DiceThreshold(
        threshold=float(threshold[g]),
        coverage=float(coverage[g]),
        loss=float(loss[g]),
        bound=_hb_upper_bound(float(loss[g]), n, d),
        method=method,
        max_dice_loss=alpha,
        delta=d,
        p_value=_hb_p_value(float(loss[g]), alpha, n),
        n_images=n,
        refers_all=False,
    )

"""Paired comparison of two segmentation models on the same images: paired bootstrap and permutation test."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib import check_coverages, check_num_classes, check_positive_int
from ..typing import Namespace
from ._bootstrap import bootstrap_intervals, coverage_key
from ._common import check_method, check_open_unit, generator, generator_keyword, load_scipy, multiplicities
from ._state import ImageState, image_state


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
    keys = ["aurc_dice", *(coverage_key("mean", c) for c in cs)]

    def stats_of(items: np.ndarray) -> np.ndarray:
        weights = multiplicities(items, 2 * n)
        rows = [both.aurc_dice(weights)]
        for c in cs:
            rows.append(both.dice_at(weights, items, c)[0])
        return np.stack(rows)

    def difference(indices: np.ndarray) -> np.ndarray:
        return stats_of(indices + n) - stats_of(indices)

    estimate, low, high, se, used, _ = bootstrap_intervals(difference, n, n_resamples, rng, conf, method)

    scipy = load_scipy()

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
            **generator_keyword(scipy.stats.permutation_test, rng),
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
        check_open_unit(confidence, "confidence"),
        check_method(method),
        check_positive_int(n_resamples, "n_resamples"),
        check_positive_int(n_permutations, "n_permutations"),
        generator(seed),
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
    xp: Namespace | None = None,
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
    conf = check_open_unit(confidence, "confidence")
    method = check_method(method)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    n_permutations = check_positive_int(n_permutations, "n_permutations")
    cs = [] if coverages is None else list(dict.fromkeys(check_coverages(coverages)))
    rng = generator(seed)
    state_a = image_state(pred_a, label, uncertainty_a, k, bool(include_background), xp, "pred_a")
    state_b = image_state(pred_b, label, uncertainty_b, k, bool(include_background), xp, "pred_b")
    return _paired_comparison(state_a, state_b, cs, conf, method, n_resamples, n_permutations, rng)

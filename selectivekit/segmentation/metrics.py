"""The public segmentation metrics: Dice at coverage, the Dice-coverage curve, its area, model comparison."""

from __future__ import annotations

import math
from typing import Any

from .._lib import check_coverages, check_num_classes, float_dtype, get_namespace
from ..risk_coverage import step_area
from ..typing import Array, Namespace
from .engine import DiceGroups, empty_class_weights, exact_groups, summarize
from .images import ImageSet, collect_images, per_image_coverage
from .results import DiceAtCoverage, DiceCoverageCurve, PerImageComparison

__all__ = ["aurc_dice", "compare_at_coverage", "dice_at_coverage", "dice_coverage_curve"]


def _exact_inputs(
    pred: Array,
    label: Array,
    uncertainty: Array,
    num_classes: Any,
    include_background: bool,
    ignore_empty: bool,
    xp: Namespace | None,
    *,
    runs: bool = False,
) -> tuple[ImageSet, DiceGroups, int, Namespace]:
    num_classes = check_num_classes(num_classes, include_background)
    if not isinstance(ignore_empty, bool):
        msg = f"`ignore_empty` must be True or False, got {ignore_empty!r}."
        raise TypeError(msg)
    images, xp = collect_images(pred, label, uncertainty, num_classes, xp=xp)
    groups = exact_groups(images, num_classes, bool(include_background), xp=xp, runs=runs)
    return images, groups, num_classes, xp


def dice_at_coverage(
    pred: Array,
    label: Array,
    uncertainty: Array,
    coverages: Any,
    /,
    *,
    num_classes: int,
    include_background: bool = False,
    ignore_empty: bool = False,
    xp: Namespace | None = None,
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
    ignore_empty : bool, default False
        How a class absent from an image's label counts. ``False``: its Dice is 1.0 when the prediction
        (after referral) has none of it either, 0.0 otherwise. ``True``: it is left out (NaN in
        ``per_class_dice``); the image Dice is the mean over the classes present, an image without any
        is left out of ``mean``/``std``/``p5`` (NaN in ``per_image_dice``). ``True`` is the default of
        MONAI's ``DiceMetric``, and gives its value at coverage 1; referral never changes which classes
        are present, so the same (image, class) pairs count at every coverage.

    Returns
    -------
    list of DiceAtCoverage
        One per requested coverage, in the order given; arrays in the input's namespace.

    Notes
    -----
    One global threshold per coverage: the smallest observed ``t`` with
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
    images, groups, num_classes, xp = _exact_inputs(
        pred, label, uncertainty, num_classes, include_background, ignore_empty, xp
    )
    first = 0 if include_background else 1
    classes = tuple(range(first, num_classes))
    results = []
    for c in cs:
        g = groups.group_at_coverage(c, xp=xp)
        threshold = groups.thresholds[g]
        per_class = groups.per_class_dice(g, xp=xp)
        if ignore_empty:
            per_class = xp.where(groups.label_count > 0, per_class, xp.full_like(per_class, math.nan))
        per_image_cov = per_image_coverage(images, threshold, xp=xp)
        realized = int(groups.cum_count[g]) / groups.n_total
        results.append(summarize(c, float(threshold), realized, per_class, per_image_cov, classes, xp=xp))
    return results


def dice_coverage_curve(
    pred: Array,
    label: Array,
    uncertainty: Array,
    /,
    *,
    num_classes: int,
    include_background: bool = False,
    ignore_empty: bool = False,
    xp: Namespace | None = None,
) -> DiceCoverageCurve:
    """Exact mean Dice after referral at every distinct uncertainty threshold (Figure 3 of the paper).

    Parameters
    ----------
    pred, label, uncertainty, num_classes, include_background, ignore_empty
        As for [`dice_at_coverage`][selectivekit.dice_at_coverage] (with ``ignore_empty=True`` the curve is
        NaN when no image has an evaluated class in its label).

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
    _, groups, _, xp = _exact_inputs(
        pred, label, uncertainty, num_classes, include_background, ignore_empty, xp
    )
    weight = empty_class_weights(groups.label_count, xp=xp) if ignore_empty else None
    return groups.curve(xp=xp, key_weight=weight)


def aurc_dice(
    pred: Array,
    label: Array,
    uncertainty: Array,
    /,
    *,
    num_classes: int,
    include_background: bool = False,
    ignore_empty: bool = False,
    ties: str = "step",
    xp: Namespace | None = None,
) -> float:
    """Area under the risk-coverage curve with risk ``1 - mean Dice`` (lower is better).

    Parameters
    ----------
    pred, label, uncertainty, num_classes, include_background, ignore_empty
        As for [`dice_at_coverage`][selectivekit.dice_at_coverage].
    ties : {"step"}
        Only the step rule: the mean Dice of a random split of a tie group is not a sum of per-voxel
        terms, so it has no closed-form expectation like [`aurc`][selectivekit.aurc]'s ``"expected"``.

    Returns
    -------
    float
        ``sum_g (c_g - c_{g-1}) * (1 - meanDice_g)`` over the points of
        [`dice_coverage_curve`][selectivekit.dice_coverage_curve],
        with ``c_0 = 0`` (the step rule of [`selectivekit.aurc`][selectivekit.aurc]).

    Notes
    -----
    The curve is not built: the mean Dice only changes at the groups that hold wrong voxels, so the sum
    runs over the last group of each run between them
    ([`exact_groups`][selectivekit.segmentation.engine.exact_groups] with ``runs=True``), whose points are
    points of the full curve, bit for bit. Over a run the coverage differences telescope, so both sums
    are equal in exact arithmetic; in floating point each lies within about ``(16 + G / 16384) * 2**-53``
    of the exact value, relative (``G`` terms, block-wise summation), below ``1e-13`` for ``G = 10**7``.

    Examples
    --------
    >>> import numpy as np
    >>> pred, label = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 1]])
    >>> u = np.array([[0.1, 0.9, 0.2, 0.3]])
    >>> aurc_dice(pred, label, u, num_classes=2)
    0.20833333333333334
    """
    if ties != "step":
        msg = (
            f'`ties` must be "step" for aurc_dice, got {ties!r}: the Dice after referring part of a tie '
            "group is not linear in the referred voxels, so its expectation over tie orders has no closed "
            "form."
        )
        raise ValueError(msg)
    # only the groups after which the Dice changes: the same step area, without the curve's G points
    _, groups, _, xp = _exact_inputs(
        pred, label, uncertainty, num_classes, include_background, ignore_empty, xp, runs=True
    )
    weight = empty_class_weights(groups.label_count, xp=xp) if ignore_empty else None
    curve = groups.curve(xp=xp, key_weight=weight)
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

    def share(m: Array) -> float:
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

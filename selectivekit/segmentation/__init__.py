"""Selective segmentation with referral: coverage-aware Dice and exact Dice-coverage curves.

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
filled by the streaming accumulators (`selectivekit.streaming`), where a group is a grid bin instead of
a distinct value; [`dice_from_counts`][selectivekit.segmentation.engine.dice_from_counts] and the functions on
[`DiceGroups`][selectivekit.segmentation.engine.DiceGroups] are the single
implementation of the formula used by every path.

Modules
-------
- `results`: the result types;
- [`images`][selectivekit.segmentation.images]: validation and flattening of image collections;
- [`engine`][selectivekit.segmentation.engine]: the Dice formula and the groups (update and compute steps);
- `metrics`: the public functions, built from the two above.
"""

from .engine import DiceGroups, dice_from_counts
from .metrics import aurc_dice, compare_at_coverage, dice_at_coverage, dice_coverage_curve
from .results import DiceAtCoverage, DiceCoverageCurve, PerImageComparison

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

"""Result types of the segmentation metrics: one operating point, one curve, one comparison of two models."""

from __future__ import annotations

from dataclasses import dataclass

from ..typing import Array

__all__ = ["DiceAtCoverage", "DiceCoverageCurve", "PerImageComparison"]


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
    per_image_dice: Array
    per_image_coverage: Array
    per_class_dice: Array
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

    coverage: Array
    mean_dice: Array
    threshold: Array


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
    coverage_difference: Array
    dice_difference: Array
    quadrant_share: dict[int, float]
    on_axis_share: float

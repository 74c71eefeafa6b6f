"""A reference classifier with no learning: a position prior times Gaussian intensity likelihoods.

It measures how much of a 3D segmentation task is atlas lookup. Fit on the training volumes of a fold
(after the trainer's resampling and HU normalisation), it keeps, for every class ``c``:

- the **position prior** ``P(c | v)``: the share of training volumes whose voxel ``v`` has class ``c``,
  with a pseudo-count ``alpha`` per class (so no class is impossible anywhere), optionally smoothed by a
  Gaussian of ``sigma`` voxels;
- the **intensity likelihood** ``p(x | c)``: a Gaussian with the mean and variance of the normalised
  intensity over every training voxel of class ``c``;

and predicts ``argmax_c  log P(c | v) + log p(x_v | c)`` for each voxel. A task that such a classifier
solves does not need a network. ``python -m reference_models prior-baseline`` prints its per-fold,
per-structure Dice on the held-out volumes of the in-order folds.

Volumes of different shapes share one prior grid (the shape of the first training volume): each label
volume is resampled onto it by nearest neighbour, and the prior back onto each test volume linearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PriorClassifier", "fit_prior_classifier", "fold_dice", "main"]


def _zoom_to(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """``array`` resampled to ``shape`` (spatial axes last ``len(shape)``); unchanged when it matches."""
    spatial = array.shape[-len(shape) :]
    if tuple(spatial) == tuple(shape):
        return array
    factors = [1.0] * (array.ndim - len(shape)) + [t / s for t, s in zip(shape, spatial, strict=True)]
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)


@dataclass(frozen=True)
class PriorClassifier:
    """A fitted position-prior-plus-Gaussian-intensity classifier (see the module docstring).

    Attributes
    ----------
    log_prior : array of shape (num_classes, *grid)
        ``log P(c | v)`` on the prior grid.
    mean, std : arrays of shape (num_classes,)
        Gaussian intensity likelihood of each class (normalised intensity).
    """

    log_prior: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def log_posterior(self, image: np.ndarray) -> np.ndarray:
        """Unnormalised ``log P(c | v) + log p(x_v | c)``, array of shape ``(num_classes, *image.shape)``."""
        image = np.asarray(image, dtype=np.float64)
        log_prior = _zoom_to(self.log_prior, image.shape, order=1)
        shape = (-1,) + (1,) * image.ndim
        z = (image[None] - self.mean.reshape(shape)) / self.std.reshape(shape)
        return log_prior - 0.5 * z**2 - np.log(self.std).reshape(shape)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The class of highest posterior at each voxel (uint8, the shape of ``image``)."""
        return np.argmax(self.log_posterior(image), axis=0).astype(np.uint8)


def fit_prior_classifier(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    *,
    alpha: float = 0.5,
    sigma: float = 0.0,
) -> PriorClassifier:
    """Fit the position prior and the per-class Gaussian intensities on training volumes.

    Parameters
    ----------
    images : sequence of float arrays
        Normalised training images, one spatial array each (no channel axis).
    labels : sequence of integer arrays
        Their class labels in ``[0, num_classes)``, the same shapes.
    num_classes : int
        Number of classes, background included.
    alpha : float, default 0.5
        Pseudo-count added to every class at every voxel before the frequencies are taken.
    sigma : float, default 0.0
        Gaussian smoothing (voxels) of the prior; 0 keeps the raw frequencies.

    Returns
    -------
    PriorClassifier

    Notes
    -----
    With ``n`` training volumes and ``K`` classes the prior at voxel ``v`` is
    ``(n_c(v) + alpha) / (n + K alpha)``, ``n_c(v)`` the number of volumes with class ``c`` there (after
    the optional smoothing). The Gaussian of class ``c`` has the mean and the population variance (plus
    ``1e-6``, so that a class of constant intensity keeps a finite likelihood) of its training voxels.

    Examples
    --------
    >>> import numpy as np
    >>> images = [np.array([[0.0, 1.0], [0.1, 0.9]]), np.array([[0.1, 0.9], [0.0, 1.1]])]
    >>> labels = [np.array([[0, 1], [0, 1]]), np.array([[0, 1], [0, 1]])]
    >>> model = fit_prior_classifier(images, labels, num_classes=2)
    >>> model.predict(np.array([[0.05, 0.95], [1.0, 0.0]])).tolist()  # clear intensities beat the prior
    [[0, 1], [1, 0]]
    """
    if len(images) == 0 or len(images) != len(labels):
        msg = (
            f"`images` and `labels` must be non-empty and of equal length, got {len(images)} and "
            f"{len(labels)}."
        )
        raise ValueError(msg)
    if not (np.isfinite(alpha) and alpha > 0):
        msg = f"`alpha` must be a finite number > 0, got {alpha!r}."
        raise ValueError(msg)
    if not (np.isfinite(sigma) and sigma >= 0):
        msg = f"`sigma` must be a finite number >= 0, got {sigma!r}."
        raise ValueError(msg)
    grid = tuple(np.shape(labels[0]))
    counts = np.zeros((num_classes, *grid))
    total = np.zeros(num_classes)
    sums = np.zeros(num_classes)
    squares = np.zeros(num_classes)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        image = np.asarray(image, dtype=np.float64)
        label = np.asarray(label)
        if image.shape != label.shape:
            msg = f"`images[{index}]` has shape {image.shape} but `labels[{index}]` has {label.shape}."
            raise ValueError(msg)
        if label.min() < 0 or label.max() >= num_classes:
            msg = (
                f"`labels[{index}]` must hold classes in [0, {num_classes}), got "
                f"{label.min()}..{label.max()}."
            )
            raise ValueError(msg)
        on_grid = _zoom_to(label, grid, order=0)
        for c in range(num_classes):
            counts[c] += on_grid == c
        flat = label.ravel()
        total += np.bincount(flat, minlength=num_classes)
        sums += np.bincount(flat, weights=image.ravel(), minlength=num_classes)
        squares += np.bincount(flat, weights=image.ravel() ** 2, minlength=num_classes)
    if (total == 0).any():
        missing = np.flatnonzero(total == 0).tolist()
        msg = f"`labels` must contain every class at least once; classes {missing} never occur."
        raise ValueError(msg)
    if sigma > 0:
        counts = ndimage.gaussian_filter(counts, (0, *(sigma,) * len(grid)), mode="nearest")
    prior = (counts + alpha) / (counts.sum(0, keepdims=True) + num_classes * alpha)
    mean = sums / total
    var = np.maximum(squares / total - mean**2, 0.0)
    std = np.sqrt(var + 1e-6)
    return PriorClassifier(np.log(prior), mean, std)


def fold_dice(volumes: Sequence, folds: Sequence[Sequence[int]], num_classes: int, **options) -> np.ndarray:
    """Per-fold, per-structure Dice of the classifier on the held-out volumes of each fold.

    ``volumes`` are loaded volumes (``.image``, ``.label``); for each fold the classifier is fit on the
    other volumes (``options`` go to :func:`fit_prior_classifier`) and its predictions on the fold's volumes
    are scored with the trainer's Dice (:func:`selectivekit.dice_at_coverage` at coverage 1: mean over the
    held-out volumes, a class absent from both label and prediction counts 1). Returns an array of shape
    ``(len(folds), num_classes - 1)``.
    """
    from selectivekit import dice_at_coverage

    rows = []
    for held in folds:
        held_set = set(held)
        train = [v for i, v in enumerate(volumes) if i not in held_set]
        model = fit_prior_classifier(
            [v.image for v in train], [v.label for v in train], num_classes, **options
        )
        preds = [model.predict(volumes[i].image) for i in held]
        labels = [volumes[i].label.astype(np.uint8) for i in held]
        zeros = [np.zeros(p.shape, np.float32) for p in preds]
        (result,) = dice_at_coverage(preds, labels, zeros, [1.0], num_classes=num_classes)
        rows.append(np.asarray(result.per_class_dice).mean(0))
    return np.asarray(rows)


def main(
    dataset: str = "synthetic-mmwhs",
    data_dir: str | None = None,
    spacing: float | None = None,
    *,
    alpha: float = 0.5,
    sigma: float = 0.0,
    echo=print,
) -> np.ndarray:
    """Print the per-fold, per-structure held-out Dice of the classifier on an MM-WHS dataset.

    The volumes are read as the trainer reads them (the dataset's default spacing unless ``spacing``);
    the synthetic dataset is written to its cache folder first when needed. Returns the Dice table.
    """
    from reference_models.config import RunConfig
    from reference_models.data import mmwhs
    from reference_models.datasets import get_dataset
    from reference_models.tasks import _ensure_synthetic

    cfg = RunConfig(dataset=dataset, data_dir=data_dir, spacing=spacing).resolved()
    spec = get_dataset(cfg.dataset)
    if "slices" not in spec.options:
        msg = f"`dataset` must be an MM-WHS dataset, got {dataset!r}."
        raise ValueError(msg)
    directory = _ensure_synthetic(cfg, spec.write_synthetic) if spec.synthetic else cfg.data_dir
    volumes = mmwhs.load_mmwhs(directory, (cfg.spacing,) * 3)
    folds = mmwhs.folds_in_order(len(volumes))
    table = fold_dice(volumes, folds, mmwhs.NUM_CLASSES, alpha=alpha, sigma=sigma)
    names = mmwhs.CLASS_NAMES[1:]
    echo(
        f"prior + Gaussian intensity classifier, {dataset} at {cfg.spacing:g} mm, alpha={alpha:g}, "
        f"sigma={sigma:g}; held-out Dice per fold (in-order folds of {len(folds[0])} volumes)"
    )
    echo("fold  " + " ".join(f"{n:>6}" for n in names) + "    mean")
    for k, row in enumerate(table):
        echo(f"{k:>4}  " + " ".join(f"{d:6.3f}" for d in row) + f"  {row.mean():6.3f}")
    echo("mean  " + " ".join(f"{d:6.3f}" for d in table.mean(0)) + f"  {table.mean():6.3f}")
    return table

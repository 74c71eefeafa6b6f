"""Held-out predictions and their selective-segmentation metrics (all formulas come from selectivekit).

For every model the evaluation keeps, per image, the predicted labels (argmax of the averaged logits), the
true labels and the uncertainty ``u = 1 - max softmax`` (:func:`selectivekit.uncertainty_from_logits`).
Metrics are computed per *part* (GlaS: Test Part A, Part B; MM-WHS: all held-out volumes of the
cross-validation) with one global threshold per part, then combined (GlaS: the average of the two parts,
as in the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from selectivekit import uncertainty_from_logits
from selectivekit.segmentation import (
    DiceAtCoverage,
    DiceCoverageCurve,
    aurc_dice,
    dice_at_coverage,
    dice_coverage_curve,
)
from selectivekit.streaming import SegmentationAccumulator

__all__ = [
    "COVERAGES",
    "PartResult",
    "Prediction",
    "accumulate",
    "average_entries",
    "combine_parts",
    "evaluate_accumulator",
    "evaluate_part",
    "predict_images",
]

COVERAGES = (0.95, 0.90, 0.80, 0.70)


@dataclass
class Prediction:
    """One held-out image's prediction: labels (uint8), truth (uint8), uncertainty (float32)."""

    name: str
    part: str
    group: str | None
    pred: np.ndarray
    label: np.ndarray
    uncertainty: np.ndarray


@dataclass
class PartResult:
    """Metrics of one model on one part; ``results`` keeps the full per-image DiceAtCoverage records."""

    aurc: float
    dice_full: float
    results: list[DiceAtCoverage]
    curve: DiceCoverageCurve
    names: list[str]
    groups: list[str | None]
    per_image_full: np.ndarray | None = None  # per-image Dice at full coverage
    per_class_full: dict[str, float] | None = None  # class id -> mean Dice over the images, full coverage

    def to_json(self) -> dict:
        return {
            "aurc": self.aurc,
            "dice_full_coverage": self.dice_full,
            "dice_at_coverage": {
                f"{r.requested:.2f}": {
                    "mean": float(r.mean),
                    "std": float(r.std),
                    "p5": float(r.p5),
                    "coverage": float(r.coverage),
                }
                for r in self.results
            },
            "dice_per_class_full": self.per_class_full or {},
        }


def predict_images(
    predict_logits: Callable[[np.ndarray], np.ndarray],
    images: Sequence,
    *,
    rank: int = 0,
    world: int = 1,
    progress: Callable | None = None,
) -> list[Prediction]:
    """Predictions for this process's share of ``images`` (``images[rank::world]``)."""
    mine = list(images)[rank::world]
    iterator = progress(mine) if progress else mine
    out = []
    for item in iterator:
        logits = predict_logits(item.image)
        u = np.asarray(uncertainty_from_logits(logits, axis=0), dtype=np.float32)
        pred = np.argmax(logits, axis=0).astype(np.uint8)
        out.append(Prediction(item.name, item.part, item.group, pred, item.label.astype(np.uint8), u))
    return out


def evaluate_part(predictions: Sequence[Prediction], num_classes: int) -> PartResult:
    """AURC (risk = 1 - Dice), Dice at the paper's coverages, the full Dice–coverage curve."""
    preds = [p.pred for p in predictions]
    labels = [p.label for p in predictions]
    us = [p.uncertainty for p in predictions]
    kwargs = {"num_classes": num_classes}
    results = dice_at_coverage(preds, labels, us, [*COVERAGES, 1.0], **kwargs)
    return PartResult(
        aurc=float(aurc_dice(preds, labels, us, **kwargs)),
        dice_full=float(results[-1].mean),
        results=results[:-1],
        curve=dice_coverage_curve(preds, labels, us, **kwargs),
        names=[p.name for p in predictions],
        groups=[p.group for p in predictions],
        per_image_full=np.asarray(results[-1].per_image_dice, dtype=np.float64),
        per_class_full=_per_class(results[-1]),
    )


def _per_class(result) -> dict[str, float]:
    """Mean Dice over the images of each evaluated class, keyed by the class id."""
    dice = np.asarray(result.per_class_dice, dtype=np.float64)
    return {str(c): float(dice[:, i].mean()) for i, c in enumerate(result.classes)}


def accumulate(
    predictions: Sequence[Prediction], parts: Sequence[str], num_classes: int
) -> dict[str, SegmentationAccumulator]:
    """One streaming accumulator per part (for multi-process evaluation: small, mergeable state).

    The accumulators keep the exact values while they fit their memory budget (1 GiB by default; past it
    they fall back to a grid and report bounds); merging the processes' accumulators equals one pass over
    all images, and on the exact path the results equal the in-memory ones.
    """
    accs = {part: SegmentationAccumulator(num_classes=num_classes) for part in parts}
    for p in predictions:
        accs[p.part].update(p.pred, p.label, p.uncertainty)
    return accs


def evaluate_accumulator(
    acc: SegmentationAccumulator, names: list[str], groups: list[str | None]
) -> PartResult:
    """The same metrics as :func:`evaluate_part`, from a (merged) accumulator."""
    results = acc.dice_at_coverage([*COVERAGES, 1.0])
    return PartResult(
        aurc=float(acc.aurc_dice()),
        dice_full=float(results[-1].mean),
        results=results[:-1],
        curve=acc.compute(),
        names=names,
        groups=groups,
        per_image_full=np.asarray(results[-1].per_image_dice, dtype=np.float64),
        per_class_full=_per_class(results[-1]),
    )


def average_entries(entries: list[dict]) -> dict:
    """Number-by-number mean of report entries of the same shape (nested dicts of floats): the parts of a
    run (:func:`combine_parts`) and the seeds of a report."""
    if len(entries) == 1:
        return entries[0]
    return {
        key: average_entries([e[key] for e in entries])
        if isinstance(value, dict)
        else float(sum(e[key] for e in entries) / len(entries))
        for key, value in entries[0].items()
    }


def combine_parts(parts: dict[str, PartResult]) -> dict:
    """The report's model entry ``M``: one part as is, several parts averaged number by number.

    The paper reports GlaS as "the average results of two parts"; we average every reported number (AURC,
    mean, std, 5th percentile, realized coverage) over Test Part A and Part B.
    """
    entries = [p.to_json() for p in parts.values()]
    if len(entries) == 1:
        return entries[0]
    out = average_entries(entries)
    out["parts"] = dict(zip(parts, entries, strict=True))
    return out

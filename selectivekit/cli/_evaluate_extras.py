"""What ``evaluate --ci`` (bootstrap intervals) and ``evaluate --threshold`` (the Dice at a calibrated
threshold) add to an evaluation: gathered image by image while the images are read, then written into the
report."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..segmentation import dice_from_counts
from ._common import STATE_FILE, CommandError, UsageError, needs_scipy
from ._reading import Images, label_map_settings, region_settings, source_settings
from ._threshold_file import read_threshold_file

__all__ = ["EvaluateExtras", "dice_at_threshold"]


class FixedThresholdImage(NamedTuple):
    """One image at the fixed threshold of ``--threshold``."""

    name: str
    dice: float
    dice_per_class: list[float]
    accepted: int
    voxels: int


class EvaluateExtras:
    """What ``--ci`` and ``--threshold`` add to ``evaluate``: filled image by image, then into the report."""

    def __init__(self, args: argparse.Namespace, num_classes: int, requested: Sequence[float]) -> None:
        self.args = args
        self.num_classes = num_classes
        self.include_background = bool(args.include_background)
        self.requested = list(requested)
        self.image_states: list[Any] = []
        self.fixed: list[FixedThresholdImage] = []
        self.threshold_file: dict[str, Any] | None = None
        self.threshold = math.nan

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, num_classes: int, requested: Sequence[float]
    ) -> EvaluateExtras:
        """The extras of the flags, their usage and the threshold file checked before any image is read."""
        if args.ci is None and (args.n_resamples is not None or args.seed is not None):
            msg = "`--n-resamples` and `--seed` apply to `--ci` only."
            raise UsageError(msg)
        if args.n_resamples is None:
            args.n_resamples = 2000
        if args.seed is None:
            args.seed = 0
        extras = cls(args, num_classes, requested)
        if args.threshold is not None:
            data = read_threshold_file(Path(args.threshold))
            settings = data["settings"]
            mine = {
                "num_classes": num_classes,
                "include_background": extras.include_background,
                "regions": region_settings(args)["regions"],
                **source_settings(args),
                **label_map_settings(args),
            }
            # files of 0.4.0 and earlier made their maps from one probability file with msp, at T = 1
            defaults = {"uncertainty_measure": "msp" if settings.get("source") == "probs" else None}
            for key, value in mine.items():
                theirs = settings.get(key, defaults.get(key))
                if key == "regions":  # in order: the order of the per-region maps
                    theirs, value = _in_order(theirs), _in_order(value)
                if theirs != value:
                    msg = (
                        f"`--threshold` was calibrated with {key}={settings.get(key)!r}, but this evaluation "
                        f"uses {key}={mine[key]!r}; a threshold applies only to maps read the same way."
                    )
                    raise UsageError(msg)
            extras.threshold_file = data
            extras.threshold = -math.inf if data["threshold"] is None else float(data["threshold"])
        if args.ci is not None:
            needs_scipy()
        return extras

    def watch(self, images: Images) -> Images:
        """The images, unchanged, each one's bootstrap state and Dice at the fixed threshold gathered."""
        from .. import guarantees

        for name, pred, label, u in images:
            if self.args.ci is not None:
                try:
                    self.image_states.append(
                        guarantees.ImageState.of_image(
                            pred,
                            label,
                            u,
                            num_classes=self.num_classes,
                            include_background=self.include_background,
                        )
                    )
                except (ValueError, TypeError) as exc:
                    msg = f"case {name!r}: {exc}"
                    raise CommandError(msg) from exc
            if self.threshold_file is not None:
                first = 0 if self.include_background else 1
                dice, per_class, accepted = dice_at_threshold(
                    pred, label, u, self.threshold, self.num_classes, first
                )
                self.fixed.append(FixedThresholdImage(name, dice, per_class, accepted, int(u.size)))
            yield name, pred, label, u

    def finish(self, report: dict[str, Any], staging: Path) -> None:
        """Add the intervals and the fixed threshold's results to ``report`` (the state file to
        ``staging``)."""
        if self.args.ci is not None:
            self._intervals(report, staging)
        if self.threshold_file is not None:
            self._fixed_threshold(report)

    def _intervals(self, report: dict[str, Any], staging: Path) -> None:
        from .. import guarantees

        if len(self.image_states) < 2:
            msg = f"`--ci` needs at least 2 images to resample, got {len(self.image_states)}."
            raise CommandError(msg)
        state = guarantees.ImageState.concat(*self.image_states)
        result = guarantees.bootstrap_state(
            state,
            coverages=self.requested,
            confidence=self.args.ci,
            n_resamples=self.args.n_resamples,
            seed=self.args.seed,
        )
        state.save(staging / STATE_FILE)

        def entry(key: str) -> dict[str, Any]:
            interval = result[key]
            return {
                "estimate": interval.estimate,
                "low": interval.low,
                "high": interval.high,
                "standard_error": interval.standard_error,
                "method": interval.method,
            }

        report["intervals"] = {
            "confidence": float(self.args.ci),
            "method": "BCa",
            "n_resamples": int(self.args.n_resamples),
            "seed": int(self.args.seed),
            "unit": "image",
            "state_file": STATE_FILE,
            "aurc_dice": entry("aurc_dice"),
            "coverages": [
                {
                    "requested": float(coverage),
                    "mean": entry(f"mean@{coverage:g}"),
                    "p5": entry(f"p5@{coverage:g}"),
                }
                for coverage in self.requested
            ],
        }

    def _fixed_threshold(self, report: dict[str, Any]) -> None:
        data = self.threshold_file or {}
        dice = np.asarray([image.dice for image in self.fixed], dtype=np.float64)
        accepted = sum(image.accepted for image in self.fixed)
        total = sum(image.voxels for image in self.fixed)
        calibration = data.get("calibration", {})
        report["fixed_threshold"] = {
            "file": str(self.args.threshold),
            "threshold": None if math.isinf(self.threshold) else self.threshold,
            "refers_all": bool(math.isinf(self.threshold)),
            "method": data.get("method"),
            "max_dice_loss": data.get("max_dice_loss"),
            "delta": data.get("delta"),
            "calibration_coverage": calibration.get("coverage"),
            "coverage": accepted / total if total else 0.0,
            "mean": float(dice.mean()) if dice.size else math.nan,
            "std": float(dice.std()) if dice.size else math.nan,
            "p5": float(np.percentile(dice, 5.0)) if dice.size else math.nan,
            "share_meeting_target": (
                float(np.mean(1.0 - dice <= float(data["max_dice_loss"]) + 1e-12))
                if dice.size and data.get("max_dice_loss") is not None
                else None
            ),
        }
        by_name = {image.name: image for image in self.fixed}
        for row in report["per_image"]:
            image = by_name[row["name"]]
            row["fixed_threshold"] = {
                "dice": image.dice,
                "dice_per_class": image.dice_per_class,
                "coverage": image.accepted / image.voxels,
            }


def _in_order(value: Any) -> Any:
    """A setting compared with its order (the regions, whose order is that of their maps)."""
    return list(value.items()) if isinstance(value, dict) else value


def dice_at_threshold(
    pred: np.ndarray, label: np.ndarray, u: np.ndarray, threshold: float, num_classes: int, first: int
) -> tuple[float, list[float], int]:
    """Per-class Dice of one image after referring the voxels with ``u > threshold`` (from scratch): the
    mean over classes ``first..num_classes-1``, the per-class values and the number of voxels accepted."""
    accepted = _accepted(u, threshold)
    after = np.where(accepted, pred, label).astype(np.int64).reshape(-1)
    truth = label.astype(np.int64).reshape(-1)
    # rows: the true class; columns: the class after referral (a referred voxel takes its true class)
    confusion = np.bincount(truth * num_classes + after, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    correct = np.diag(confusion)
    label_count = confusion.sum(axis=1)
    missed = label_count - correct  # accepted voxels of the class, predicted as another
    wrongly_predicted = confusion.sum(axis=0) - correct
    dice = dice_from_counts(label_count, missed, wrongly_predicted, xp=np)[first:]
    return float(dice.mean()), [float(value) for value in dice], int(np.count_nonzero(accepted))


def _accepted(u: np.ndarray, threshold: float) -> np.ndarray:
    """``u <= threshold`` with the threshold's exact value, whatever the dtype of ``u``.

    NumPy 2 casts a Python float to the array's dtype before comparing: against float32 maps the
    threshold would be rounded to float32 first (and to float64 against integers beyond 2**53), which
    moves voxels across it. Floats are compared in float64 (exact for float16/32/64); integers with the
    threshold's floor, a Python integer (``u <= t`` if and only if ``u <= floor(t)``).
    """
    if u.dtype.kind in "iu":
        if math.isinf(threshold):
            return np.full(u.shape, threshold > 0)
        info = np.iinfo(u.dtype)
        floor = min(max(math.floor(threshold), int(info.min) - 1), int(info.max))
        return u <= floor if floor >= info.min else np.zeros(u.shape, dtype=bool)
    return u.astype(np.float64, copy=False) <= threshold

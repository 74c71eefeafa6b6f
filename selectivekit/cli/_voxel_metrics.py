"""What ``evaluate`` reports voxel by voxel, beside the Dice of each image: the AURC family of the voxel
errors (AURC, e-AURC, AUGRC), and, when the input carries probabilities, their calibration (ECE, MCE,
class-wise ECE, Brier score, NLL, a reliability diagram), over every voxel and over the foreground."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..io import CaseArrays
from ._common import CommandError, save_figure

__all__ = ["CALIBRATION_BINS", "VoxelMetrics"]

#: Equal-width bins of the calibration section (the usual 15; equal-mass bins do not stream).
CALIBRATION_BINS = 15

#: The regions of the calibration section: every voxel, and the voxels that are foreground in the truth or
#: in the prediction (where ECE is not dominated by easy background).
REGIONS = ("all", "foreground")


class VoxelMetrics:
    """Gathers the voxel-level metrics of ``evaluate`` case by case (``observe``; the states of other
    processes join with ``merge``), then writes them into the report (``finish``).

    The calibration is kept per image and summed in image order at the end, so that the report of
    ``--workers N`` equals that of one process to the last bit (float sums do not depend on the grouping).
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool,
        *,
        with_probs: bool,
        max_memory: int,
        grid: str,
        case_score: str | None = None,
        failure_dice: float = 0.8,
        costs: tuple[float, float] | None = None,
        intervals: tuple[float, int, int] | None = None,
    ) -> None:
        from ..streaming import RiskCoverageAccumulator

        self.case_score = case_score
        self.failure_dice = failure_dice
        self.intervals = intervals  # (confidence, resamples, seed) of `--ci`, for the case metrics
        self.scores: list[float] = []  # with ``case_score``: one per image, in image order
        self.costs = costs  # (case cost, voxel cost) of `--case-cost`/`--voxel-cost`
        self.states: list[Any] = []  # with ``costs``: each image's ImageState, for the budget curves
        self.num_classes = num_classes
        self.include_background = include_background
        self.with_probs = with_probs
        self.errors = RiskCoverageAccumulator(max_memory=max_memory, grid=grid)
        self.images: list[tuple[str, dict[str, Any]]] = []  # per image: region -> its CalibrationAccumulator

    def observe(self, name: str, arrays: CaseArrays) -> None:
        """Add one case (the arrays of [`selectivekit.io.read_case`][selectivekit.io.read_case])."""
        from ..calibration import CalibrationAccumulator
        from ..cases import case_score

        try:
            self.errors.update(arrays.uncertainty, arrays.pred == arrays.label)
            if self.case_score is not None:
                self.scores.append(case_score(arrays.uncertainty, method=self.case_score, pred=arrays.pred))
            if self.costs is not None:
                from ..guarantees import ImageState

                state = ImageState.of_image(
                    arrays.pred,
                    arrays.label,
                    arrays.uncertainty,
                    num_classes=self.num_classes,
                    include_background=self.include_background,
                )
                self.states.append(state)
            if not self.with_probs or arrays.probs is None:
                return
            # files pass the reader with sums within 1e-2 of 1 (rounded when stored): rescaled here so that
            # the calibration, which wants sums within rounding, reads the probabilities the file meant
            probs = arrays.probs / arrays.probs.sum(axis=0, dtype=arrays.probs.dtype, keepdims=True)
            masks = {"all": None, "foreground": (arrays.label != 0) | (arrays.pred != 0)}
            regions = {}
            for region, mask in masks.items():
                if mask is not None and not mask.any():
                    continue
                accumulator = CalibrationAccumulator(
                    self.num_classes,
                    n_bins=CALIBRATION_BINS,
                    include_background=self.include_background,
                    axis=0,
                )
                accumulator.update(probs, arrays.label, mask=mask)
                regions[region] = accumulator
            self.images.append((name, regions))
        except (ValueError, TypeError) as exc:
            msg = f"case {name!r}: {exc}"
            raise CommandError(msg) from exc

    def merge(self, other: VoxelMetrics) -> VoxelMetrics:
        """Add the cases of ``other`` after this one's; returns ``self``."""
        self.errors.merge(other.errors)
        self.images += other.images
        self.scores += other.scores
        self.states += other.states
        return self

    # ------------------------------------------------------------------ a shard's state file

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The state as a JSON-able header and named arrays, for a shard's state file (``from_arrays``)."""
        errors_header, errors = self.errors.to_arrays()
        header = {
            "num_classes": self.num_classes,
            "include_background": self.include_background,
            "with_probs": self.with_probs,
            "case_score": self.case_score,
            "failure_dice": self.failure_dice,
            "n_images": len(self.images) if self.with_probs else len(self.scores),
            "errors": errors_header,
        }
        arrays = {f"errors_{key}": value for key, value in errors.items()}
        if self.case_score is not None:
            arrays["case_scores"] = np.asarray(self.scores, dtype=np.float64)
        if self.with_probs:
            calibration_header = None
            for region in REGIONS:
                states = [regions[region].to_arrays() for _, regions in self.images if region in regions]
                arrays[f"{region}_present"] = np.array([region in regions for _, regions in self.images])
                for key in ("counts", "sums", "correct", "scores", "voxels", "per_image"):
                    arrays[f"{region}_{key}"] = (
                        np.stack([state[key] for _, state in states]) if states else np.zeros(0)
                    )
                calibration_header = calibration_header or (states[0][0] if states else None)
            header["calibration"] = calibration_header
        return header, arrays

    @classmethod
    def from_arrays(
        cls, header: dict[str, Any], arrays: dict[str, np.ndarray], names: list[str]
    ) -> VoxelMetrics:
        """Rebuild the state of the cases ``names`` from ``to_arrays``; ``ValueError`` for anything else."""
        from ..calibration import CalibrationAccumulator
        from ..streaming import RiskCoverageAccumulator

        try:
            metrics = cls(
                header["num_classes"],
                header["include_background"],
                with_probs=bool(header["with_probs"]),
                max_memory=0,  # replaced by the stored accumulator below
                grid="bfloat16",
                case_score=header["case_score"],
                failure_dice=header["failure_dice"],
            )
            errors = {
                key[len("errors_") :]: value for key, value in arrays.items() if key.startswith("errors_")
            }
            metrics.errors = RiskCoverageAccumulator.from_arrays(header["errors"], errors)
        except (KeyError, TypeError) as exc:
            msg = f"its voxel metrics lack {exc}"
            raise ValueError(msg) from None
        if metrics.case_score is not None:
            scores = np.asarray(arrays.get("case_scores"))
            if scores.shape != (len(names),) or not bool(np.all(np.isfinite(scores))):
                msg = f"`case_scores` must hold one finite score per case ({len(names)})"
                raise ValueError(msg)
            metrics.scores = [float(v) for v in scores]
        if metrics.with_probs:
            regions: list[dict[str, Any]] = [{} for _ in names]
            for region in REGIONS:
                present = np.asarray(arrays.get(f"{region}_present"))
                if present.shape != (len(names),) or present.dtype != bool:
                    msg = (
                        f"`{region}_present` must say for each case ({len(names)}) whether it has the region"
                    )
                    raise ValueError(msg)
                keys = ("counts", "sums", "correct", "scores", "voxels", "per_image")
                stacked = {key: np.asarray(arrays.get(f"{region}_{key}")) for key in keys}
                if any(
                    value.shape[:1] != (int(present.sum()),) for value in stacked.values() if present.any()
                ):
                    msg = f"the `{region}_*` arrays must hold one entry per case that has the region"
                    raise ValueError(msg)
                for j, i in enumerate(np.flatnonzero(present)):
                    one = {key: value[j] for key, value in stacked.items()}
                    regions[i][region] = CalibrationAccumulator.from_arrays(header.get("calibration"), one)
            metrics.images = list(zip(names, regions, strict=True))
        return metrics

    def finish(self, report: dict[str, Any], staging: Path) -> None:
        """Add ``voxel_errors`` and (with probabilities) ``calibration`` to ``report``, the per-image ECE to
        its rows, and the reliability diagram to ``staging``."""
        # one call for the value and its bounds: on the exact path each call sorts every voxel again
        aurc, low, high = self.errors.aurc_bound(value=True)
        report["voxel_errors"] = {
            "path": self.errors.path,
            "aurc": aurc,
            "e_aurc": self.errors.e_aurc(),
            "augrc": self.errors.augrc(),
            "aurc_bound": [low, high],
        }
        if self.case_score is not None:
            _case_section(self, report, staging)
        if not self.with_probs:
            return
        results = {}
        for region in REGIONS:
            parts = [regions[region] for _, regions in self.images if region in regions]
            if parts:
                results[region] = functools.reduce(lambda a, b: a.merge(b), parts).compute()
        report["calibration"] = {
            "n_bins": CALIBRATION_BINS,
            "binning": "equal-width; bin b holds (b/B, (b+1)/B], the first also 0",
            "foreground": "voxels of class >= 1 in the truth or in the prediction",
            "regions": {region: _entry(results[region]) if region in results else None for region in REGIONS},
        }
        per_image = {
            name: {
                f"ece_{region}": result.compute().expected_calibration_error
                for region, result in regions.items()
            }
            for name, regions in self.images
        }
        for row in report["per_image"]:
            if row["name"] in per_image:
                row["calibration"] = per_image[row["name"]]
        from .. import plotting

        bins = {f"{region} voxels": result.bins for region, result in results.items()}
        save_figure(plotting.plot_reliability(bins, title="Reliability"), staging / "reliability.png")


def _case_section(metrics: VoxelMetrics, report: dict[str, Any], staging: Path) -> None:
    """``--case-score``: the cases ranked by their score, referred whole, against their risk 1 - Dice."""
    from .. import plotting
    from ..cases import case_referral

    rows = report["per_image"]
    scores = np.asarray(metrics.scores, dtype=np.float64)
    risks = np.clip(1.0 - np.asarray([row["dice_full"] for row in rows], dtype=np.float64), 0.0, 1.0)
    referral = case_referral(scores, risks, failure_threshold=1.0 - metrics.failure_dice)
    for row, score in zip(rows, scores, strict=True):
        row["case_score"] = float(score)
    report["cases"] = {
        "score": metrics.case_score,
        "risk": "1 - Dice at full coverage",
        "failure_dice": metrics.failure_dice,
        "aurc": referral.aurc,
        "e_aurc": referral.e_aurc,
        "augrc": referral.augrc,
        "e_augrc": referral.e_augrc,
        "failure_auroc": None if math.isnan(referral.failure_auroc) else referral.failure_auroc,
        "failures": int(np.count_nonzero(risks > 1.0 - metrics.failure_dice)),
        "partial_aurc": referral.partial_aurc,
        "coverage_range": list(referral.coverage_range),
        "referral_order": [rows[i]["name"] for i in referral.order],
    }
    if metrics.intervals is not None and len(rows) >= 2:
        from ..guarantees import bootstrap_ci

        confidence, n_resamples, seed = metrics.intervals
        result = bootstrap_ci(
            ["aurc", "e_aurc", "augrc"],
            scores,
            risk=risks,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        report["cases"]["intervals"] = {
            "confidence": confidence,
            "n_resamples": n_resamples,
            "seed": seed,
            "unit": "case",
            **{
                key: {"low": value.low, "high": value.high, "method": value.method}
                for key, value in result.intervals.items()
            },
        }
    title = f"Cases referred whole, by {metrics.case_score} ({len(rows)} cases)"
    save_figure(plotting.plot_risk_coverage(referral.curve, title=title), staging / "case_risk_coverage.png")
    if metrics.costs is not None:
        _budget_section(metrics, report, staging, scores)


BUDGET_STEPS = 100  # the budget axis: 0 to the cost of checking everything one way, in 100 steps


def _budget_section(metrics: VoxelMetrics, report: dict[str, Any], staging: Path, scores: np.ndarray) -> None:
    """``--case-cost``/``--voxel-cost``: the best mean Dice per budget, and budget.png."""
    from .. import plotting
    from ..budget import budget_curves
    from ..guarantees import ImageState

    case_cost, voxel_cost = metrics.costs
    states = ImageState.concat(*metrics.states)
    # up to the cheaper of opening every case and checking every voxel: past it one way reaches Dice 1
    top = min(case_cost * states.n_items, voxel_cost * float(states.n_voxels.sum()))
    budgets = np.linspace(0.0, top, BUDGET_STEPS + 1)
    curves = budget_curves(states, scores, case_cost=case_cost, voxel_cost=voxel_cost, budgets=budgets)

    def values(x: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else float(v) for v in x]

    report["cases"]["budget"] = {
        "case_cost": case_cost,
        "voxel_cost": voxel_cost,
        "order": "cases opened by decreasing case score; voxels above one threshold checked in the rest",
        "budgets": budgets.tolist(),
        "voxels_only": values(curves.voxels_only),
        "cases_only": values(curves.cases_only),
        "best_mix": values(curves.mixed),
        "best_mix_cases": curves.cases.tolist(),
        "best_mix_threshold": [
            float(t) if math.isfinite(t) else ("inf" if t > 0 else "-inf") for t in curves.threshold
        ],
    }
    figure = plotting.plot_budget(
        budgets, curves.voxels_only, curves.cases_only, curves.mixed, unit="cost", title="One expert budget"
    )
    save_figure(figure, staging / "budget.png")


def _entry(result: Any) -> dict[str, Any]:
    bins = result.bins

    def number(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    return {
        "ece": result.expected_calibration_error,
        "mce": result.maximum_calibration_error,
        "classwise_ece": result.classwise_calibration_error,
        "classwise": {str(k): number(v) for k, v in result.classwise.items()},
        "brier": result.brier_score,
        "nll": result.negative_log_likelihood,
        "voxels": result.voxels,
        "bins": {
            "edges": [float(e) for e in bins.edges],
            "count": [int(c) for c in bins.counts],
            "mean_confidence": [number(v) for v in bins.mean_confidence],
            "accuracy": [number(v) for v in bins.accuracy],
        },
    }

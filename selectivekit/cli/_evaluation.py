"""An evaluation computed from the images (in memory, streamed, or in worker processes) or from a merged
accumulator, and its report folder written: shared by ``evaluate`` and ``merge``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._report_sections import evaluation_summary, guarantee_markdown, voxel_markdown
from ..io import Case, CaseArrays
from ..report import (
    CURVE_FILE,
    REPORT_JSON,
    Evaluation,
    absent_classes_note,
    build_report,
    floats,
    per_class_markdown,
    report_html,
    report_markdown,
    write_curve,
    write_json,
)
from ..streaming import DEFAULT_MAX_MEMORY
from ._common import PROG, CommandError, call_with_flag_names, output_folder, save_figure
from ._reading import Images, read_options
from ._voxel_metrics import VoxelMetrics

__all__ = [
    "accumulate",
    "accumulate_in_workers",
    "compute_exact",
    "compute_in_workers",
    "compute_streaming",
    "evaluation_from",
    "voxel_metrics_factory",
    "write_evaluation",
]


def compute_exact(
    images: Images, requested: Sequence[float], num_classes: int, include_background: bool
) -> Evaluation:
    """``evaluate --exact``: every image kept in memory, the exact in-memory functions."""
    from .. import segmentation

    names, preds, labels, uncertainties = [], [], [], []
    for name, pred, label, u in images:
        names.append(name)
        preds.append(pred)
        labels.append(label)
        uncertainties.append(u)
    options = {"num_classes": num_classes, "include_background": include_background}
    results = segmentation.dice_at_coverage(preds, labels, uncertainties, _with_full(requested), **options)
    curve = segmentation.dice_coverage_curve(preds, labels, uncertainties, **options)
    aurc = segmentation.aurc_dice(preds, labels, uncertainties, **options)
    first = 0 if include_background else 1
    labelled = sum(np.bincount(label.reshape(-1), minlength=num_classes)[first:] for label in labels)
    predicted = sum(np.bincount(pred.reshape(-1), minlength=num_classes)[first:] for pred in preds)
    return Evaluation(
        names=names,
        voxels=[int(pred.size) for pred in preds],
        aurc_dice=float(aurc),
        full=results[-1],
        at_coverage=list(results[:-1]),
        curve=curve,
        class_voxels=([int(count) for count in labelled], [int(count) for count in predicted]),
    )


def compute_streaming(
    images: Images,
    requested: Sequence[float],
    num_classes: int,
    include_background: bool,
    *,
    max_memory: int = DEFAULT_MAX_MEMORY,
    grid: str = "bfloat16",
) -> Evaluation:
    """``evaluate`` (streaming): the images accumulated one by one."""
    accumulator, names, voxels = accumulate(
        images, num_classes, include_background, max_memory=max_memory, grid=grid
    )
    return evaluation_from(accumulator, names, voxels, requested)


def compute_in_workers(
    args: argparse.Namespace, cases: Sequence[Case], requested: Sequence[float], num_classes: int
) -> tuple[Evaluation, VoxelMetrics | None]:
    """``--workers N``: the streaming evaluation and the voxel metrics, the files read and accumulated in N
    processes."""
    from .._lib import beside

    accumulator, names, voxels = accumulate_in_workers(
        args,
        cases,
        num_classes,
        "evaluate",
        voxel_metrics=voxel_metrics_factory(args, num_classes),
        sort=True,
    )
    metrics = accumulator.voxel_metrics
    if metrics is None:
        return evaluation_from(accumulator.segmentation, names, voxels, requested), metrics
    # one merge of the voxels for both: the Dice's merged voxels give the voxel errors their sorted key
    key_step = accumulator.segmentation._sorted_key_step(metrics.errors)

    def voxel_areas() -> Any:
        if key_step is not None:
            key_step()
        return metrics.errors.aurc_bound(value=True)

    # with a thread budget (--workers), the voxel errors' key and areas beside the Dice results: the second
    # thread only reads the merged voxels and writes the errors' state, which the Dice does not read
    with beside(voxel_areas):
        evaluation = evaluation_from(accumulator.segmentation, names, voxels, requested)
    return evaluation, metrics


def voxel_metrics_factory(args: argparse.Namespace, num_classes: int) -> Callable[[], VoxelMetrics]:
    """Builds the empty [`VoxelMetrics`][selectivekit.cli._voxel_metrics.VoxelMetrics] of ``evaluate``
    (picklable)."""
    from functools import partial

    return partial(
        VoxelMetrics,
        num_classes,
        bool(args.include_background),
        with_probs=args.probs is not None,
        max_memory=_EXACT_BUDGET if args.exact else args.max_memory,
        grid=args.grid,
        case_score=args.case_score,
        failure_dice=0.8 if args.failure_dice is None else args.failure_dice,
        costs=None if args.case_cost is None else (args.case_cost, args.voxel_cost),
        intervals=None if args.ci is None else (float(args.ci), args.n_resamples or 2000, args.seed or 0),
    )


_EXACT_BUDGET = 2**62  # --exact keeps every voxel error too (no grid)


class CaseAccumulator:
    """The streaming state of ``evaluate`` over cases: the Dice accumulator and (unless left out) the voxel
    metrics; picklable, so that worker processes build one each and the parent merges them.

    With ``sort``, each case kept for the exact path is sorted as it is added (in the worker, in parallel):
    the parent then merges sorted runs instead of sorting every voxel, with the same results; such a state
    cannot be saved to a file."""

    def __init__(self, segmentation: Any, voxel_metrics: VoxelMetrics | None, sort: bool = False) -> None:
        self.segmentation = segmentation
        self.voxel_metrics = voxel_metrics
        self.sort = sort

    def add_case(self, name: str, arrays: CaseArrays) -> None:
        """Add one case read by [`selectivekit.io.read_case`][selectivekit.io.read_case]."""
        self.segmentation.update(arrays.pred, arrays.label, arrays.uncertainty)
        if self.voxel_metrics is not None:
            self.voxel_metrics.observe(name, arrays)
        if self.sort:
            # one sort of the case's u: the voxel errors' (u, correct) order gives the Dice its sorted u
            last_sorted_u = None
            if self.voxel_metrics is not None:
                self.voxel_metrics.errors._sort_kept()
                last_sorted_u = self.voxel_metrics.errors._last_sorted_u()
            self.segmentation._sort_kept(last_sorted_u)

    def merge(self, other: CaseAccumulator) -> CaseAccumulator:
        """Add the cases of ``other`` after this one's; returns ``self``."""
        self.segmentation.merge(other.segmentation)
        if self.voxel_metrics is not None and other.voxel_metrics is not None:
            self.voxel_metrics.merge(other.voxel_metrics)
        return self


def _accumulator_factory(
    num_classes: int,
    include_background: bool,
    *,
    max_memory: int,
    grid: str,
    voxel_metrics: Callable[[], VoxelMetrics | None] | None = None,
    sort: bool = False,
) -> Callable[[], CaseAccumulator]:
    """Builds the empty streaming accumulator of ``evaluate`` (picklable, for ``--workers``)."""
    from functools import partial

    from ..streaming import SegmentationAccumulator

    segmentation = partial(
        SegmentationAccumulator,
        num_classes=num_classes,
        include_background=include_background,
        max_memory=max_memory,
        grid=grid,
    )
    return partial(_new_case_accumulator, segmentation, voxel_metrics, sort)


def _new_case_accumulator(
    segmentation: Callable[[], Any], voxel_metrics: Callable[[], VoxelMetrics | None] | None, sort: bool
) -> CaseAccumulator:
    return CaseAccumulator(segmentation(), None if voxel_metrics is None else voxel_metrics(), sort)


def accumulate(
    images: Images, num_classes: int, include_background: bool, *, max_memory: int, grid: str
) -> tuple[Any, list[str], list[int]]:
    """A [`SegmentationAccumulator`][selectivekit.SegmentationAccumulator] over the images, with their names
    and voxel counts (accumulators of other processes merge into it with its ``merge``)."""
    accumulator = _accumulator_factory(num_classes, include_background, max_memory=max_memory, grid=grid)()
    accumulator = accumulator.segmentation
    names, voxels = [], []
    for name, pred, label, u in images:
        try:
            accumulator.update(pred, label, u)
        except (ValueError, TypeError) as exc:
            msg = f"case {name!r}: {exc}"
            raise CommandError(msg) from exc
        names.append(name)
        voxels.append(int(pred.size))
    return accumulator, names, voxels


def accumulate_in_workers(
    args: argparse.Namespace,
    cases: Sequence[Case],
    num_classes: int,
    description: str,
    *,
    voxel_metrics: Callable[[], VoxelMetrics] | None = None,
    sort: bool = False,
) -> tuple[CaseAccumulator, list[str], list[int]]:
    """``--workers N``: the accumulator over the cases' files (the Dice, and the voxel metrics when
    ``voxel_metrics`` builds them), read and accumulated in N processes and merged in case order; with
    ``sort``, the workers also sort the cases kept for the exact path (a state that is not saved)."""
    from tqdm import tqdm

    from .. import _parallel

    factory = _accumulator_factory(
        num_classes,
        bool(args.include_background),
        max_memory=args.max_memory,
        grid=args.grid,
        voxel_metrics=voxel_metrics,
        sort=sort,
    )
    with tqdm(
        total=len(cases), desc=description, unit="image", disable=True if args.quiet else None
    ) as progress_bar:
        names, voxels, accumulator = call_with_flag_names(
            _parallel.accumulate_in_processes,
            cases,
            read_options(args, num_classes),
            factory,
            workers=args.workers,
            progress=progress_bar.update,
        )
    return accumulator, names, voxels


def evaluation_from(
    accumulator: Any, names: list[str], voxels: list[int], requested: Sequence[float]
) -> Evaluation:
    """The [`Evaluation`][selectivekit.report.Evaluation] of an accumulator: exact values while it kept
    the images, grid values with their bounds after."""
    coverages = _with_full(requested)
    results = accumulator.dice_at_coverage(coverages)
    aurc, low, high = accumulator.aurc_dice_bound(value=True)
    bounds = accumulator.dice_bounds(list(requested)) if accumulator.path == "grid" else None
    return Evaluation(
        names=names,
        voxels=voxels,
        aurc_dice=float(aurc),
        full=results[-1],
        at_coverage=list(results[:-1]),
        curve=accumulator.compute(),
        path=accumulator.path,
        aurc_dice_bound=(float(low), float(high)),
        bounds=bounds,
        class_voxels=tuple([int(count) for count in counts] for counts in accumulator.class_voxels()),
    )


def _with_full(requested: Sequence[float]) -> list[float]:
    return [*requested, 1.0]


def write_evaluation(
    out: Path,
    evaluation: Evaluation,
    requested: Sequence[float],
    settings: dict[str, Any],
    extras: Any,
    *,
    command: str,
    voxel_metrics: VoxelMetrics | None = None,
) -> None:
    """Write the report folder of an evaluation (``evaluate`` and ``merge``); ``extras`` (``evaluate``'s
    ``--ci`` and ``--threshold``, or None) and ``voxel_metrics`` (the voxel errors and the calibration, or
    None) add their entries to the report before it is written."""
    with output_folder(out, REPORT_JSON) as staging:
        report = build_report(evaluation, requested, settings)
        if extras is not None:
            extras.finish(report, staging)
        if voxel_metrics is not None:
            voxel_metrics.finish(report, staging)
        write_json(staging / REPORT_JSON, report)
        write_curve(staging / CURVE_FILE, evaluation.curve)
        _evaluation_plots(staging, evaluation, report)
        sections = per_class_markdown(report) + voxel_markdown(report) + guarantee_markdown(report)
        markdown = report_markdown(report, sections)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        (staging / "report.html").write_text(report_html(markdown, staging), encoding="utf-8")
    print(evaluation_summary(report))
    note = absent_classes_note(report)
    if note is not None:
        print(f"{PROG} {command}: warning: {note}", file=sys.stderr)
    print(f"{PROG} {command}: wrote {out} ({len(evaluation.names)} images)", file=sys.stderr)


def _evaluation_plots(folder: Path, evaluation: Evaluation, report: dict[str, Any]) -> None:
    from .. import plotting

    curve = evaluation.curve
    # a DiceCoverageCurve is drawn with risk 1 - mean Dice (what aurc_dice integrates), its AURC in the legend
    title = f"Risk-coverage ({report['n_images']} images)"
    save_figure(plotting.plot_risk_coverage(curve, title=title), folder / "risk_coverage.png")
    save_figure(plotting.plot_dice_coverage(curve, title="Dice-coverage"), folder / "dice_coverage.png")
    runs = [evaluation.full.per_image_dice, *(result.per_image_dice for result in evaluation.at_coverage)]
    labels = ["coverage 1.00", *(f"coverage {row['coverage']:.2f}" for row in report["coverages"])]
    figure = plotting.plot_dice_histogram(
        [floats(run) for run in runs],
        labels=labels,
        title=f"Per-image Dice ({report['n_images']} images)",
    )
    save_figure(figure, folder / "dice_histogram.png")

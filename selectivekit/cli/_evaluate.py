"""``selectivekit evaluate``: the report of a folder of predictions (or, with ``--save-state``, the state of
one shard of it for ``merge``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cases import CASE_SCORES
from ..io import Case
from ..report import REPORT_JSON, Evaluation, atomic_file, check_out_folder
from ..streaming import DEFAULT_MAX_MEMORY, GRIDS
from ._arguments import (
    add_input_folders,
    add_reading_options,
    add_size_budget,
    coverage_list,
    memory_size,
    open_unit_number,
    positive_integer,
    positive_number,
    seed_number,
    shard_index,
)
from ._common import PROG, STATE_FILE, WRITTEN, CommandError, UsageError, call_with_flag_names, refuse_folder
from ._evaluate_extras import EvaluateExtras
from ._evaluation import (
    accumulate,
    accumulate_in_workers,
    compute_exact,
    compute_in_workers,
    compute_streaming,
    voxel_metrics_factory,
    write_evaluation,
)
from ._reading import (
    check_input_options,
    input_folders,
    label_map_settings,
    layout_settings,
    pair_cases,
    read_images,
    region_settings,
    source_settings,
)

__all__ = ["DEFAULT_COVERAGES", "add_parser", "run"]

DEFAULT_COVERAGES = (0.95, 0.9, 0.8, 0.7)


def add_parser(commands: Any) -> None:
    """The ``evaluate`` command and its options."""
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a folder of predictions with uncertainty or probability maps",
        description=(
            "Evaluate predictions with their uncertainty: AURC of 1 - Dice, Dice at coverage (mean, std, "
            "5th percentile), per-image Dice and coverage, and plots. Files are paired by case name "
            "across the folders (extension and a suffix such as _pred, _label, _gt, _seg, _unc, "
            "_uncertainty, _probs, _prob removed)."
        ),
    )
    add_input_folders(evaluate)
    evaluate.add_argument(
        "--coverages",
        metavar="C1,C2,...",
        type=coverage_list,
        default=list(DEFAULT_COVERAGES),
        help="coverages to report (default: 0.95,0.9,0.8,0.7)",
    )
    add_reading_options(evaluate)
    add_size_budget(evaluate)
    evaluate.add_argument(
        "--exact",
        action="store_true",
        help="keep every image in memory and use the exact in-memory functions",
    )
    evaluate.add_argument(
        "--max-memory",
        metavar="SIZE",
        type=memory_size,
        default=DEFAULT_MAX_MEMORY,
        help=(
            "streaming: keep the images (6 bytes a voxel) and give exact results while they fit SIZE, "
            "e.g. 4GiB or 500MB (default 1GiB); beyond it, a grid of u with bounds on every result; "
            "0: the grid from the start"
        ),
    )
    evaluate.add_argument(
        "--grid",
        choices=tuple(GRIDS),
        default="bfloat16",
        help="the grid beyond --max-memory: upper 16 (default) or 24 bits of float32 u (tighter bounds)",
    )
    evaluate.add_argument(
        "--shard",
        metavar="I/N",
        type=shard_index,
        help="with --save-state: evaluate only block I (from 0) of N of the sorted cases",
    )
    evaluate.add_argument(
        "--save-state",
        metavar="FILE",
        help="write this run's mergeable state (.npz, no pickle) instead of a report; see `merge`",
    )
    evaluate.add_argument(
        "--out", metavar="DIR", default="selectivekit-report", help="output folder (default: %(default)s)"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument(
        "--workers",
        metavar="N",
        type=positive_integer("--workers"),
        default=1,
        help="read and accumulate the files in N processes (default 1); the report is the same",
    )
    _add_guarantee_options(evaluate)
    evaluate.add_argument(
        "--case-score",
        choices=CASE_SCORES,
        help=(
            "add a section on referring whole cases: each case's score from its uncertainty map (e.g. "
            "mean-foreground), the case risk-coverage curve of 1 - Dice, AURC, e-AURC, AUGRC, e-AUGRC, "
            "failure AUROC, and the cases in referral order"
        ),
    )
    evaluate.add_argument(
        "--failure-dice",
        metavar="D",
        type=open_unit_number("--failure-dice"),
        help="with --case-score: a case fails when its Dice is below D (default 0.8), for the failure AUROC",
    )
    evaluate.add_argument(
        "--case-cost",
        metavar="A",
        type=positive_number("--case-cost"),
        help=(
            "with --case-score and --voxel-cost: the expert's cost of opening one case (e.g. minutes); adds "
            "the best mean Dice per budget (voxels only, whole cases only, the best mix) and budget.png"
        ),
    )
    evaluate.add_argument(
        "--voxel-cost",
        metavar="B",
        type=positive_number("--voxel-cost"),
        help="with --case-cost: the cost of checking one voxel, in the same unit",
    )
    evaluate.set_defaults(handler=run)


def _add_guarantee_options(evaluate: argparse.ArgumentParser) -> None:
    """``--ci`` and ``--threshold`` (see `EvaluateExtras`)."""
    evaluate.add_argument(
        "--ci",
        metavar="LEVEL",
        type=open_unit_number("--ci"),
        help=(
            "add bootstrap confidence intervals at this level (e.g. 0.95) to the report: images are "
            f"resampled, the threshold is chosen again on each resample; writes {STATE_FILE} for compare"
        ),
    )
    evaluate.add_argument(
        "--n-resamples",
        metavar="B",
        type=positive_integer("--n-resamples"),
        help="with --ci (default 2000)",
    )
    evaluate.add_argument("--seed", metavar="S", type=seed_number, help="with --ci (default 0)")
    evaluate.add_argument(
        "--threshold",
        metavar="FILE",
        help="also report the coverage and Dice at the fixed threshold of a `selectivekit calibrate` file",
    )


def run(args: argparse.Namespace) -> int:
    """``evaluate``: check the options, read the images, write the report (or the shard's state)."""
    num_classes = check_input_options(args)
    _check_workers(args)
    if args.failure_dice is not None and args.case_score is None:
        msg = "`--failure-dice` applies to `--case-score` only."
        raise UsageError(msg)
    if (args.case_cost is None) != (args.voxel_cost is None) or (
        args.case_cost is not None and args.case_score is None
    ):
        msg = "`--case-cost` and `--voxel-cost` go together, with `--case-score`."
        raise UsageError(msg)
    if args.case_cost is not None and args.shard is not None:
        msg = "`--case-cost` needs every case in one run: evaluate without `--shard`."
        raise UsageError(msg)
    out = Path(args.out)
    folders = input_folders(args)
    call_with_flag_names(check_out_folder, out, REPORT_JSON, list(folders.values()))
    cases = pair_cases(args, folders)
    n_cases = len(cases)
    if args.shard is not None:
        from ..shards import shard_slice

        cases = cases[shard_slice(n_cases, args.shard)]
    settings = {
        "num_classes": num_classes,
        "include_background": bool(args.include_background),
        **region_settings(args),
        **label_map_settings(args),
        **source_settings(args),
        "channel_axis": args.channel_axis,
        "reverse_axes": args.reverse_axes,
        "mode": "exact" if args.exact else "streaming",
        "folders": {f"--{role}": str(folder) for role, folder in folders.items()},
        **layout_settings(args, cases),
    }
    if not args.exact:
        settings |= {"max_memory": args.max_memory, "grid": args.grid}
    requested = list(args.coverages)
    if args.save_state is not None or args.shard is not None:
        return _save_state(args, cases, n_cases, settings, requested, num_classes)
    extras = EvaluateExtras.from_args(args, num_classes, requested)

    if args.exact:
        compute = compute_exact
    else:
        options = {"max_memory": args.max_memory, "grid": args.grid}

        def compute(*arguments: Any) -> Evaluation:
            return compute_streaming(*arguments, **options)

    if args.workers == 1:
        voxel_metrics = voxel_metrics_factory(args, num_classes)()
        images = read_images(args, cases, num_classes, "evaluate", voxel_metrics.observe)
        evaluation = compute(extras.watch(images), requested, num_classes, bool(args.include_background))
        write_evaluation(
            out, evaluation, requested, settings, extras, command="evaluate", voxel_metrics=voxel_metrics
        )
        return 0
    from .._lib import thread_budget

    # the workers' sorted runs are merged in as many threads (same results; the workers have ended)
    with thread_budget(args.workers):
        evaluation, voxel_metrics = compute_in_workers(args, cases, requested, num_classes)
        write_evaluation(
            out, evaluation, requested, settings, extras, command="evaluate", voxel_metrics=voxel_metrics
        )
    return 0


def _check_workers(args: argparse.Namespace) -> None:
    """``--workers`` applies to the streaming accumulator only."""
    if args.workers > 1:
        clash = [
            flag
            for flag, on in (
                ("--exact", args.exact),
                ("--ci", args.ci is not None),
                ("--threshold", args.threshold is not None),
            )
            if on
        ]
        if clash:
            msg = f"`--workers` applies to the streaming evaluation only; leave out {', '.join(clash)}."
            raise UsageError(msg)


def _save_state(
    args: argparse.Namespace,
    cases: Sequence[Case],
    n_cases: int,
    settings: dict[str, Any],
    requested: Sequence[float],
    num_classes: int,
) -> int:
    """``evaluate --shard I/N --save-state FILE``: accumulate this shard's cases and write its state."""
    from .. import shards

    if args.save_state is None:
        msg = "`--shard` needs `--save-state FILE` (each shard writes a state; `merge` writes the report)."
        raise UsageError(msg)
    for flag, value in (
        ("--exact", args.exact or None),
        ("--ci", args.ci),
        ("--threshold", args.threshold),
    ):
        if value is not None:
            msg = f"`{flag}` does not go with `--save-state` (a shard writes a state, not a report)."
            raise UsageError(msg)
    path = Path(args.save_state)
    _check_state_target(path)
    shard = args.shard if args.shard is not None else (0, 1)
    description = f"shard {shard[0]}/{shard[1]}"
    voxel_metrics = voxel_metrics_factory(args, num_classes)
    if args.workers > 1:
        combined, names, voxels = accumulate_in_workers(
            args, cases, num_classes, description, voxel_metrics=voxel_metrics
        )
        accumulator, metrics = combined.segmentation, combined.voxel_metrics
    else:
        metrics = voxel_metrics()
        images = read_images(args, cases, num_classes, description, metrics.observe)
        accumulator, names, voxels = accumulate(
            images, num_classes, bool(args.include_background), max_memory=args.max_memory, grid=args.grid
        )
    with atomic_file(
        path, check=lambda: _check_state_target(path), on_commit=lambda: WRITTEN.append(path)
    ) as staged:
        call_with_flag_names(
            shards.write_state,
            staged,
            accumulator,
            names=names,
            voxels=voxels,
            settings=settings,
            requested=requested,
            shard=shard,
            n_cases=n_cases,
            extra=None if metrics is None else metrics.to_arrays(),
        )
    print(
        f"{PROG} evaluate: wrote the state of shard {shard[0]}/{shard[1]} to {path} ({len(names)} images)",
        file=sys.stderr,
    )
    return 0


def _check_state_target(path: Path) -> None:
    """``--save-state FILE`` replaces only a state file (nothing, or a state of an earlier run)."""
    from ..shards import is_state_file

    refuse_folder(path, "--save-state")
    if os.path.lexists(path) and (path.is_symlink() or not is_state_file(path)):
        msg = (
            f"`--save-state` file {str(path)!r} exists and is not a selectivekit state file; give a new "
            "file name (an existing file is replaced only when it is a state of `evaluate --save-state`)."
        )
        raise CommandError(msg)

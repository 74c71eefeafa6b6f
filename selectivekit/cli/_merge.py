"""``selectivekit merge``: the report of the states that ``evaluate --shard I/N --save-state`` wrote, the same
as one process would write."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..report import REPORT_JSON, check_out_folder
from ._common import CommandError, call_with_flag_names
from ._evaluation import evaluation_from, write_evaluation
from ._voxel_metrics import VoxelMetrics

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """The ``merge`` command and its options."""
    merge = commands.add_parser(
        "merge",
        help="merge the states of `evaluate --shard I/N --save-state` into one report",
        description=(
            "Merge the state files of every shard of one evaluation into the report one process would "
            "write: the same numbers, to the last digit."
        ),
    )
    merge.add_argument("states", metavar="STATES", nargs="+", help="the state file of every shard")
    merge.add_argument("--out", metavar="DIR", required=True, help="output folder")
    merge.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``merge STATES... --out DIR``: the report of the merged shard states."""
    from .. import shards

    out = Path(args.out)
    call_with_flag_names(check_out_folder, out, REPORT_JSON)
    merged = call_with_flag_names(shards.read_states, [Path(state) for state in args.states])
    evaluation = evaluation_from(merged.accumulator, merged.names, merged.voxels, merged.requested)
    voxel_metrics = None
    for extra in merged.extras:  # the voxel errors, calibration and case scores of each shard, in order
        try:
            part = VoxelMetrics.from_arrays(extra.header, extra.arrays, extra.names)
        except ValueError as exc:
            msg = f"`states` file {str(extra.path)!r} is damaged: {str(exc).rstrip('.')}."
            raise CommandError(msg) from None
        voxel_metrics = part if voxel_metrics is None else voxel_metrics.merge(part)
    write_evaluation(
        out, evaluation, merged.requested, merged.settings, None, command="merge", voxel_metrics=voxel_metrics
    )
    return 0

"""``selectivekit calibrate``: a referral threshold with a guaranteed Dice, chosen on a calibration folder
and written as a threshold file for ``evaluate --threshold``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..report import threshold_text
from ._arguments import add_input_folders, add_reading_options, add_size_budget, open_unit_number
from ._common import PROG, CommandError, needs_scipy, output_file, refuse_folder
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
from ._threshold_file import THRESHOLD_KIND

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """The ``calibrate`` command and its options."""
    calibrate = commands.add_parser(
        "calibrate",
        help="pick a referral threshold with a guaranteed Dice on a calibration folder",
        description=(
            "Choose the threshold on u (refer voxels with u > threshold) so that 1 - Dice after referral of "
            "a new image stays at most --max-dice-loss: in expectation (conformal risk control), or with "
            "probability 1 - --delta (Learn then Test). The calibration images must be drawn like the "
            "images the threshold will be used on."
        ),
    )
    add_input_folders(calibrate)
    calibrate.add_argument(
        "--max-dice-loss",
        metavar="A",
        type=open_unit_number("--max-dice-loss"),
        required=True,
        help="largest acceptable 1 - Dice after referral (0.05: Dice >= 0.95)",
    )
    calibrate.add_argument(
        "--delta",
        metavar="D",
        type=open_unit_number("--delta"),
        help="failure probability: Learn then Test instead of conformal risk control",
    )
    add_reading_options(calibrate)
    add_size_budget(calibrate)
    calibrate.add_argument(
        "--out", metavar="FILE", default="threshold.json", help="output file (default: %(default)s)"
    )
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``calibrate``: read the calibration images, choose the threshold, write the threshold file."""
    num_classes = check_input_options(args)
    out = Path(args.out)
    _check_out_file(out)
    needs_scipy()
    folders = input_folders(args)
    cases = pair_cases(args, folders)
    preds, labels, uncertainties = [], [], []
    for _, pred, label, u in read_images(args, cases, num_classes, "calibrate"):
        preds.append(pred)
        labels.append(label)
        uncertainties.append(u)
    from ..guarantees import guaranteed_dice_threshold

    result = guaranteed_dice_threshold(
        preds,
        labels,
        uncertainties,
        num_classes=num_classes,
        max_dice_loss=args.max_dice_loss,
        delta=args.delta,
        include_background=bool(args.include_background),
    )
    from .. import __version__

    if result.method == "crc":
        guarantee = (
            f"E[1 - Dice after referral] <= {args.max_dice_loss} for a new image drawn like the calibration "
            "images (conformal risk control)"
        )
    else:
        guarantee = (
            f"with probability >= {1 - args.delta:g} over calibration sets, the expected 1 - Dice after "
            f"referral of a new image is <= {args.max_dice_loss} (Learn then Test, Hoeffding-Bentkus)"
        )
    data = {
        "kind": THRESHOLD_KIND,
        "selectivekit_version": __version__,
        "threshold": None if result.refers_all else result.threshold,
        "refers_all": result.refers_all,
        "accept": "voxels with u <= threshold keep the prediction; the others are referred",
        "method": result.method,
        "max_dice_loss": result.max_dice_loss,
        "delta": result.delta,
        "guarantee": guarantee,
        "calibration": {
            "n_images": result.n_images,
            "coverage": result.coverage,
            "loss": result.loss,
            "bound": result.bound,
            "p_value": result.p_value,
        },
        "settings": {
            "num_classes": num_classes,
            "include_background": bool(args.include_background),
            **region_settings(args),
            **label_map_settings(args),
            **source_settings(args),
            "channel_axis": args.channel_axis,
            "reverse_axes": args.reverse_axes,
            "folders": {f"--{role}": str(folder) for role, folder in folders.items()},
            **layout_settings(args, cases),
        },
    }
    output_file(out, json.dumps(data, indent=2, allow_nan=False) + "\n")
    note = (
        "refers everything (no threshold qualified)"
        if result.refers_all
        else f"threshold {threshold_text(result.threshold)}"
    )
    print(
        f"{PROG} calibrate: wrote {out} ({result.n_images} images, {result.method}: {note}, calibration "
        f"coverage {result.coverage:.3f})",
        file=sys.stderr,
    )
    return 0


def _check_out_file(out: Path) -> None:
    """``--out`` replaces only a threshold file (nothing, or a threshold of an earlier run)."""
    refuse_folder(out, "--out")
    if out.exists():
        try:
            previous = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or previous.get("kind") != THRESHOLD_KIND:
            msg = f"`--out` file {str(out)!r} exists and is not a threshold file; give a new file name."
            raise CommandError(msg)

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
from ._common import PROG, CommandError, UsageError, needs_scipy, output_file, refuse_folder
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
    calibrate.add_argument(
        "--bound",
        choices=("hoeffding-bentkus", "wsr"),
        help=(
            "with --delta: the upper confidence bound of Learn then Test (default hoeffding-bentkus; wsr: "
            "the Waudby-Smith-Ramdas betting bound, which reads the images in their sorted-name order)"
        ),
    )
    structures = calibrate.add_mutually_exclusive_group()
    structures.add_argument(
        "--per-structure",
        action="store_true",
        help=(
            "one threshold per evaluated class, each with 1 - Dice_k <= --max-dice-loss (with --delta: each "
            "class at delta / K, all together with probability 1 - delta); the file's threshold is the "
            "smallest, which keeps every class's guarantee"
        ),
    )
    structures.add_argument(
        "--max-worst-dice-loss",
        metavar="B",
        type=open_unit_number("--max-worst-dice-loss"),
        help="also keep 1 - the lowest class Dice of an image at most B, with the same threshold",
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
    if args.bound is not None and args.delta is None:
        msg = "`--bound` chooses the bound of Learn then Test; give `--delta` too."
        raise UsageError(msg)
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
    bound = args.bound or "hoeffding-bentkus"
    result, risks = _calibrate(args, preds, labels, uncertainties, num_classes, bound)
    from .. import __version__

    a = args.max_dice_loss
    if args.per_structure:
        claim = f"E[1 - Dice_k after referral] <= {a} for each evaluated class k"
    elif args.max_worst_dice_loss is not None:
        claim = (
            f"E[1 - Dice after referral] <= {a} and E[1 - lowest class Dice] <= {args.max_worst_dice_loss}"
        )
    else:
        claim = f"E[1 - Dice after referral] <= {a}"
    if result.method == "crc":
        guarantee = f"{claim} for a new image drawn like the calibration images (conformal risk control)"
    else:
        name = "Hoeffding-Bentkus" if bound == "hoeffding-bentkus" else "Waudby-Smith-Ramdas"
        split = ", each class at delta / K" if args.per_structure else ""
        guarantee = (
            f"with probability >= {1 - args.delta:g} over calibration sets, {claim} for a new image drawn "
            f"like the calibration images (Learn then Test, {name}{split})"
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
        **({} if args.delta is None else {"bound": bound}),
        **({} if risks is None else {"risks": risks}),
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


def _calibrate(
    args: argparse.Namespace, preds: list, labels: list, uncertainties: list, num_classes: int, bound: str
) -> tuple[Any, dict[str, Any] | None]:
    """The threshold (a ``DiceThreshold``-like summary) and, for several risks, each risk's numbers."""
    from types import SimpleNamespace

    from ..guarantees import (
        guaranteed_class_thresholds,
        guaranteed_dice_threshold,
        guaranteed_joint_threshold,
    )

    common = {
        "num_classes": num_classes,
        "delta": args.delta,
        "bound": bound,
        "include_background": bool(args.include_background),
    }
    if not args.per_structure and args.max_worst_dice_loss is None:
        return guaranteed_dice_threshold(
            preds, labels, uncertainties, max_dice_loss=args.max_dice_loss, **common
        ), None
    if args.per_structure:
        per = guaranteed_class_thresholds(
            preds, labels, uncertainties, max_dice_loss=args.max_dice_loss, **common
        )
        parts = {f"class {k}": (r, k) for k, r in per.per_class.items()}
        threshold, coverage = per.threshold, per.coverage
    else:
        limits = {"mean": args.max_dice_loss, "worst": args.max_worst_dice_loss}
        joint = guaranteed_joint_threshold(preds, labels, uncertainties, max_dice_loss=limits, **common)
        parts = {key: (joint, key) for key in limits}
        threshold, coverage = joint.threshold, joint.coverage
    risks = {
        name: {
            "max_dice_loss": r.max_dice_loss[key],
            "threshold": None if r.refers_all else r.threshold,
            "loss": r.loss[key],
            "bound": r.bound[key],
            "p_value": r.p_value,
            **({"delta": args.delta / len(parts)} if args.per_structure and args.delta is not None else {}),
        }
        for name, (r, key) in parts.items()
    }
    refers_all = threshold == -float("inf")
    # the file's calibration numbers: the highest loss and bound of the risks limited by --max-dice-loss
    limited = [v for name, v in risks.items() if name != "worst"]
    summary = SimpleNamespace(
        threshold=threshold,
        refers_all=refers_all,
        coverage=coverage,
        method="crc" if args.delta is None else "ltt",
        max_dice_loss=args.max_dice_loss,
        delta=args.delta,
        n_images=len(preds),
        loss=0.0 if refers_all else max(v["loss"] for v in limited),
        bound=0.0 if refers_all else max(v["bound"] for v in limited),
        p_value=None if args.delta is None else (0.0 if refers_all else max(v["p_value"] for v in limited)),
    )
    return summary, risks


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

"""Reading a folder of predictions (``evaluate`` and ``calibrate``): the usage checks of the input options,
the pairing of the files by case, and the images read one by one with a progress bar."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._lib import MAX_NUM_CLASSES
from ..io import Case, CaseArrays, pair_files, read_case
from ._common import PROG, CommandError, UsageError, call_with_flag_names

__all__ = [
    "Images",
    "check_input_options",
    "input_folders",
    "label_map_settings",
    "label_maps",
    "layout_settings",
    "pair_cases",
    "probs_roles",
    "read_images",
    "read_options",
    "read_temperature",
    "region_settings",
    "source_settings",
]

#: The images as ``read_images`` yields them: (case name, prediction, label, uncertainty map).
Images = Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]


def check_input_options(args: argparse.Namespace) -> int:
    """The usage checks of the commands that read a folder of predictions; returns the number of classes
    evaluated: ``--num-classes``, or with ``--regions`` the number of regions + 1 (each region is one class
    of the region images, see [`selectivekit.io.region_images`][selectivekit.io.region_images]; the labels
    read are then checked against ``args.num_classes``, set here to its default when not given)."""
    num_classes = _check_classes(args) if args.regions is None else _check_regions(args)
    if args.pred is None and args.probs is None:
        msg = "`--pred` is required with `--uncertainty` (it may be left out only with `--probs`)."
        raise UsageError(msg)
    for flag, value in (
        ("--channel-axis", args.channel_axis),
        ("--uncertainty-measure", args.uncertainty_measure),
        ("--temperature", args.temperature),
    ):
        if value is not None and args.probs is None:
            msg = f"`{flag}` applies to `--probs` only."
            raise UsageError(msg)
    if args.probs is not None and len(set(map(str, args.probs))) < len(args.probs):
        msg = "`--probs` names a folder twice; give each member of the ensemble once."
        raise UsageError(msg)
    measure = args.uncertainty_measure or "msp"
    if args.probs is not None and len(args.probs) == 1 and measure not in ("msp", "entropy"):
        msg = (
            f"`--uncertainty-measure {measure}` needs several predictions of each case (several `--probs` "
            "folders); one folder gives msp or entropy."
        )
        raise UsageError(msg)
    read_temperature(args)
    label_maps(args)  # the label maps go together
    return num_classes


def _check_classes(args: argparse.Namespace) -> int:
    """The usage checks of ``--num-classes`` (without ``--regions``); returns it."""
    if args.num_classes is None:
        msg = "`--num-classes` is required (the labels are 0..K-1), unless `--regions` names the regions."
        raise UsageError(msg)
    num_classes: int = args.num_classes
    if num_classes < 2 and not args.include_background:
        msg = (
            f"`--num-classes` {num_classes} leaves no class to evaluate without `--include-background` "
            "(classes 1..K-1 are evaluated by default)."
        )
        raise UsageError(msg)
    if num_classes > MAX_NUM_CLASSES:
        msg = f"`--num-classes` must be <= {MAX_NUM_CLASSES} (16-bit label maps), got {num_classes}."
        raise UsageError(msg)
    return num_classes


def _check_regions(args: argparse.Namespace) -> int:
    """The usage checks of ``--regions``; returns the number of regions + 1."""
    regions: dict[str, tuple[int, ...]] = args.regions
    for flag, on in (
        ("--include-background", args.include_background),
        ("--probs", args.probs is not None),
    ):
        if on:
            why = (
                "each region is a foreground structure, evaluated against the rest"
                if flag == "--include-background"
                else "it takes `--uncertainty` maps, one shared by the regions or one per region"
            )
            msg = f"`--regions` does not go with `{flag}`: {why}."
            raise UsageError(msg)
    top = max(max(labels) for labels in regions.values())
    if args.num_classes is None:
        args.num_classes = top + 1
    elif top >= args.num_classes:
        msg = (
            f"`--regions` lists label {top}, outside the labels 0..{args.num_classes - 1} of `--num-classes` "
            f"{args.num_classes}."
        )
        raise UsageError(msg)
    if args.num_classes > MAX_NUM_CLASSES:
        msg = f"`--num-classes` must be <= {MAX_NUM_CLASSES} (16-bit label maps), got {args.num_classes}."
        raise UsageError(msg)
    if len(regions) >= MAX_NUM_CLASSES:
        msg = f"`--regions` must name fewer than {MAX_NUM_CLASSES} regions, got {len(regions)}."
        raise UsageError(msg)
    return len(regions) + 1


def region_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--regions`` as the ``settings`` of a report and of a threshold file record it: the regions' names
    and labels in their order (None without ``--regions``) and the label classes ``--num-classes``."""
    if args.regions is None:
        return {"regions": None}
    return {
        "regions": {name: list(labels) for name, labels in args.regions.items()},
        "label_classes": args.num_classes,
    }


def read_temperature(args: argparse.Namespace) -> tuple[float] | None:
    """The one temperature of ``--temperature FILE``, or None."""
    if args.temperature is None:
        return None
    from ..temperature import TemperatureScaling

    try:
        scaling = TemperatureScaling.from_json(args.temperature)
    except ValueError as exc:
        raise CommandError(str(exc).replace("`path`", "`--temperature` file", 1)) from None
    if len(scaling.temperature) != 1:
        msg = (
            f"`--temperature` file {args.temperature!r} holds {len(scaling.temperature)} temperatures (one "
            "per class); probability files take one (a per-class temperature needs the logits)."
        )
        raise UsageError(msg)
    return (scaling.temperature[0],)


def probs_roles(args: argparse.Namespace) -> list[str]:
    """The role keys of the ``--probs`` folders: ``probs``, then ``probs#2``, ``probs#3``, ..."""
    count = 0 if args.probs is None else len(args.probs)
    return ["probs" if i == 0 else f"probs#{i + 1}" for i in range(count)]


def source_settings(args: argparse.Namespace) -> dict[str, Any]:
    """How the uncertainty was made, as a report and a threshold file record it."""
    if args.probs is None:
        return {"source": "uncertainty", "uncertainty_measure": None, "temperature": None}
    temperature = read_temperature(args)
    return {
        "source": "probs",
        "uncertainty_measure": args.uncertainty_measure or "msp",
        "temperature": None if temperature is None else temperature[0],
    }


def label_maps(args: argparse.Namespace) -> dict[str, dict[int, int] | None]:
    """``--label-map`` (both sides) or ``--label-map-labels`` / ``--label-map-pred`` (one side each), as the
    keywords of [`selectivekit.io.load_case`][selectivekit.io.load_case]; a usage error when mixed."""
    if args.label_map is not None and (args.label_map_labels is not None or args.label_map_pred is not None):
        msg = (
            "give either `--label-map` (predictions and labels) or `--label-map-labels` / `--label-map-pred` "
            "(one side each), not both."
        )
        raise UsageError(msg)
    if args.label_map_pred is not None and args.pred is None:
        msg = (
            "`--label-map-pred` applies to `--pred` files; without `--pred` the prediction is the arg-max "
            "of `--probs`."
        )
        raise UsageError(msg)
    return {
        "label_map": args.label_map,
        "label_map_labels": args.label_map_labels,
        "label_map_pred": args.label_map_pred,
    }


def label_map_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The label maps as the ``settings`` of a report record them (JSON keys are strings)."""
    return {
        key: None if mapping is None else {str(value): label for value, label in mapping.items()}
        for key, mapping in label_maps(args).items()
    }


def input_folders(args: argparse.Namespace) -> dict[str, Path]:
    """The folders given, by the role keys of [`selectivekit.io`][selectivekit.io]."""
    folders = {"pred": args.pred, "label": args.label, "uncertainty": args.uncertainty}
    folders |= dict(zip(probs_roles(args), args.probs or [], strict=True))
    return {role: Path(folder) for role, folder in folders.items() if folder is not None}


def pair_cases(args: argparse.Namespace, folders: dict[str, Path]) -> list[Case]:
    """The cases of the folders (see [`selectivekit.io.pair_files`][selectivekit.io.pair_files]); with
    ``--cases predicted``, the label files that no prediction folder has are skipped."""
    partial = ("label",) if args.cases == "predicted" else ()
    cases: list[Case] = call_with_flag_names(
        pair_files, folders, array_roles=tuple(probs_roles(args)), partial_roles=partial
    )
    if partial and not args.quiet:
        n_labels = len(pair_files({"label": folders["label"]}))
        if n_labels > len(cases):
            print(
                f"{PROG} {args.command}: {len(cases)} predicted cases of {n_labels} in `--label`; "
                f"{n_labels - len(cases)} not predicted were skipped",
                file=sys.stderr,
            )
    return cases


def read_options(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """The keyword arguments of [`selectivekit.io.load_case`][selectivekit.io.load_case] from the flags
    (``num_classes``: the classes evaluated; with ``--regions`` the labels are read against
    ``--num-classes`` and turned into one structure per region)."""
    regions = None if args.regions is None else tuple(args.regions.values())
    return {
        "num_classes": num_classes if regions is None else args.num_classes,
        "regions": regions,
        **label_maps(args),
        "channel_axis": args.channel_axis,
        "reverse_axes": args.reverse_axes,
        "pred": "pred" if args.pred is not None else None,
        "uncertainty": "uncertainty" if args.uncertainty is not None else None,
        "probs": probs_roles(args) or None,
        "uncertainty_measure": args.uncertainty_measure or "msp",
        "temperature": read_temperature(args),
        "max_voxels": args.max_voxels,
        "ignore_affine": bool(args.ignore_affine),
    }


def layout_settings(args: argparse.Namespace, cases: Sequence[Case]) -> dict[str, Any]:
    """What the report records of the folders' layouts and of ``--cases``."""
    layouts = cases[0].layouts if cases else {}
    return {"layouts": {f"--{role}": layout for role, layout in layouts.items()}, "cases": args.cases}


def read_images(
    args: argparse.Namespace,
    cases: Sequence[Case],
    num_classes: int,
    description: str,
    probabilities: Callable[[str, CaseArrays], None] | None = None,
) -> Images:
    """Each case read and checked by [`selectivekit.io.read_case`][selectivekit.io.read_case], with a progress
    bar; ``probabilities`` (when given) sees each case's arrays, its probabilities included, before the case
    is yielded."""
    from tqdm import tqdm

    options = read_options(args, num_classes)
    for case in tqdm(cases, desc=description, unit="image", disable=True if args.quiet else None):
        arrays = call_with_flag_names(read_case, case, **options)
        if probabilities is not None:
            probabilities(case.name, arrays)
        yield case.name, arrays.pred, arrays.label, arrays.uncertainty

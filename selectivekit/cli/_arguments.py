"""The argument parser's shared pieces: one-line errors, the types of option values, and the option groups
of the commands that read a folder of predictions (``evaluate`` and ``calibrate``)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import NoReturn

from .._lib import check_coverage
from ..io import DEFAULT_MAX_VOXELS, parse_label_map, parse_regions
from ..predictive import UNCERTAINTY_MEASURES
from ._common import one_line, shortened, with_flag_names

__all__ = [
    "MAX_MEMORY_LIMIT",
    "Parser",
    "add_input_folders",
    "add_reading_options",
    "add_size_budget",
    "coverage_list",
    "label_map_of",
    "memory_size",
    "open_unit_number",
    "positive_integer",
    "region_spec",
    "seed_number",
    "shard_index",
]

MAX_MEMORY_LIMIT = 2**63 - 1  # the budget is compared with int64 byte counts


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, exit status 2:
    ``selectivekit evaluate: error: ... (see selectivekit evaluate --help)``.

    argparse prints the whole usage block before its message; the subcommands' option lists are long, so
    the message is what the user needs, and ``--help`` gives the rest.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------------
# the types of option values


def coverage_list(text: str) -> list[float]:
    """``--coverages``: comma-separated coverages in (0, 1], each once."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            msg = f"`--coverages` must be comma-separated numbers in (0, 1], got {part!r} in {text!r}."
            raise argparse.ArgumentTypeError(msg) from None
        try:
            values.append(check_coverage(value, "--coverages"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not values:
        msg = f"`--coverages` must list at least one coverage in (0, 1], got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    if len(set(values)) != len(values):
        msg = f"`--coverages` lists a coverage twice, got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    return values


def label_map_of(option: str) -> Callable[[str], dict[int, int]]:
    """The type of a label-map option (``--label-map`` and its one-sided forms), its errors naming it."""

    def parse(text: str) -> dict[int, int]:
        try:
            return parse_label_map(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("`label_map`", f"`{option}`")) from None

    return parse


def region_spec(text: str) -> dict[str, tuple[int, ...]]:
    """``--regions``: ``'WT=1,2,3;TC=1,3;ET=3'`` or a JSON file (see `selectivekit.io.parse_regions`)."""
    try:
        return parse_regions(text)
    except ValueError as exc:
        text = str(exc).removeprefix("`regions`: ")  # argparse names the option first
        raise argparse.ArgumentTypeError(text.replace("`regions`", "`--regions`")) from None


def open_unit_number(option: str) -> Callable[[str], float]:
    """The type of an option whose value is a number in (0, 1) (a level, a loss, a probability)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 < value < 1.0:
            msg = f"`{option}` must be a number in (0, 1), got {text!r}."
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def positive_number(option: str) -> Callable[[str], float]:
    """The type of an option whose value is a finite number > 0 (a cost)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 < value < math.inf:
            msg = f"`{option}` must be a finite number > 0, got {text!r}."
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def positive_integer(option: str) -> Callable[[str], int]:
    """The type of an option whose value is an integer >= 1 (a count)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            msg = f"`{option}` must be an integer >= 1, got {text!r}."
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def seed_number(text: str) -> int:
    """``--seed``: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"`--seed` must be an integer >= 0, got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    return value


def memory_size(text: str) -> int:
    """``--max-memory``: bytes, with an optional unit (``KB``/``MB``/``GB``, ``KiB``/``MiB``/``GiB``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*", text, flags=re.IGNORECASE)
    if match is None:
        msg = f"`--max-memory` must be a size such as 2GiB, 500MB or 0, got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    unit = (match.group(2) or "").upper()
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    scale |= {"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    from fractions import Fraction

    size = int(Fraction(match.group(1)) * scale[unit])  # exact: no float overflow or rounding
    if size > MAX_MEMORY_LIMIT:
        msg = f"`--max-memory` must be at most {MAX_MEMORY_LIMIT:,} bytes (8 EiB), got {shortened(text)}."
        raise argparse.ArgumentTypeError(msg)
    return size


def shard_index(text: str) -> tuple[int, int]:
    """``--shard I/N``: block ``I`` (from 0) of ``N``."""
    from ..shards import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(with_flag_names(str(exc))) from None


# --------------------------------------------------------------------------------------------------
# the options of the commands that read a folder of predictions


def add_input_folders(parser: argparse.ArgumentParser) -> None:
    """The folders of predictions, labels and uncertainty (or probabilities), and ``--num-classes``."""
    parser.add_argument("--pred", metavar="DIR", help="predicted label maps (optional with --probs)")
    parser.add_argument("--label", metavar="DIR", required=True, help="true label maps")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--uncertainty", metavar="DIR", help="uncertainty maps (higher = less confident)")
    source.add_argument(
        "--probs",
        metavar="DIR",
        nargs="+",
        help=(
            "class probability maps; several folders (an ensemble's members, e.g. nnU-Net's five folds, or "
            "MC-dropout or test-time-augmentation samples) are read one case at a time and combined"
        ),
    )
    parser.add_argument(
        "--uncertainty-measure",
        choices=UNCERTAINTY_MEASURES,
        help=(
            "with --probs: the uncertainty map made from the probabilities (default msp, 1 - max p of the "
            "mean, computed without cancellation); expected-entropy, mutual-information, variance, "
            "standard-deviation and disagreement need several --probs folders"
        ),
    )
    parser.add_argument(
        "--temperature",
        metavar="FILE",
        help=(
            "with --probs: divide the logits by the temperature of this file (TemperatureScaling.to_json) "
            "before anything else, i.e. p -> softmax(log p / T) for each folder"
        ),
    )
    parser.add_argument(
        "--num-classes",
        metavar="K",
        type=positive_integer("--num-classes"),
        help=(
            "number of classes, background included: the labels are 0..K-1 (e.g. 3 for background, organ "
            "and tumour); classes 1..K-1 are evaluated unless --include-background; required unless "
            "--regions (then the largest label of the regions + 1 by default)"
        ),
    )
    parser.add_argument(
        "--cases",
        choices=("all", "predicted"),
        default="all",
        help=(
            "all: every case must have a file in every folder (default); predicted: evaluate the cases of "
            "the prediction folders only, e.g. a fold's validation folder against the full labelsTr"
        ),
    )


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """How the files are read: classes (or regions) evaluated, label values, class axis, axis order."""
    parser.add_argument(
        "--include-background", action="store_true", help="evaluate class 0 too (default: classes 1..K-1)"
    )
    parser.add_argument(
        "--regions",
        metavar="SPEC",
        type=region_spec,
        help=(
            "evaluate overlapping regions instead of classes, each the voxels whose label is one of its "
            "labels, e.g. 'WT=1,2,3;TC=1,3;ET=3', or a JSON file ({\"WT\": [1, 2, 3], ...} or an nnU-Net "
            "dataset.json with regions); --uncertainty holds one map shared by the regions, or one per "
            "region (an extra first or last axis of length R, in the order given)"
        ),
    )
    parser.add_argument(
        "--label-map",
        metavar="V:C,...",
        type=label_map_of("--label-map"),
        help="stored value -> class for predictions and labels, e.g. 500:1,600:2 (0 -> 0 implied)",
    )
    parser.add_argument(
        "--label-map-labels",
        metavar="V:C,...",
        type=label_map_of("--label-map-labels"),
        help="the same for the true labels only, e.g. 255:1 for 0/255 masks with 0/1 predictions",
    )
    parser.add_argument(
        "--label-map-pred",
        metavar="V:C,...",
        type=label_map_of("--label-map-pred"),
        help="the same for the predictions only",
    )
    parser.add_argument(
        "--channel-axis",
        metavar="N",
        type=int,
        help="class axis of the probability maps (default: the one axis of size K)",
    )
    parser.add_argument(
        "--reverse-axes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "reverse the spatial axes of the uncertainty/probability maps (nnU-Net's .npz are (c, z, y, x); "
            "nibabel reads NIfTI as (x, y, z)); default: on for the .npz of a folder nnU-Net wrote (found by "
            "its plans.json/dataset.json/predict_from_raw_data_args.json) against NIfTI labels, else off"
        ),
    )
    parser.add_argument(
        "--ignore-affine",
        action="store_true",
        help=(
            "evaluate NIfTI files whose voxel-to-world matrices (orientation, spacing, position) differ from "
            "the label's by more than 1e-3 (default: refuse them, naming the case)"
        ),
    )


def add_size_budget(parser: argparse.ArgumentParser) -> None:
    """``--max-voxels``: the largest file, by its header, that is decoded."""
    parser.add_argument(
        "--max-voxels",
        metavar="N",
        type=positive_integer("--max-voxels"),
        default=DEFAULT_MAX_VOXELS,
        help=(
            "refuse, before decoding it, a file whose header declares more than N values (voxels times "
            f"channels or pages; default {DEFAULT_MAX_VOXELS:,} = 2**31, 8 GiB as float32)"
        ),
    )

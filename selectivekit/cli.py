"""The ``selectivekit`` command line: evaluate a folder of predictions, compare two evaluations.

``selectivekit evaluate`` reads predicted labels, true labels and uncertainty (or probability) maps from
folders (see [`selectivekit.io`][selectivekit.io] for the formats and the pairing rule) and writes the paper's
evaluation to ``--out``: ``report.json``, ``report.md`` (the Table-1 layout), ``curve.npz`` and PNG plots.
``selectivekit compare RUN_A RUN_B`` reads two such folders and writes the per-image comparison of the
paper's Figure 2 and a side-by-side table (with paired intervals and p-values when both runs were evaluated
with ``--ci``). ``selectivekit calibrate`` picks a referral threshold with a guaranteed Dice on a
calibration folder; ``selectivekit evaluate --threshold`` reports what that threshold gives on a test folder.

Every error is printed as one message on stderr with a non-zero exit status (1 for bad data or files,
2 for bad command-line usage); nothing is written unless the whole report is complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np

from . import io as skio
from . import report as skreport
from ._lib import MAX_NUM_CLASSES, check_coverage, check_npz_sizes
from .report import (
    AURC_HEADLINE,
    COMPARISON_JSON,
    CURVE_FILE,
    REPORT_JSON,
    TERMS,
    Evaluation,
    percent,
    threshold_text,
)
from .streaming import DEFAULT_MAX_MEMORY, GRIDS

__all__ = ["main"]

PROG = "selectivekit"
DEFAULT_COVERAGES = (0.95, 0.9, 0.8, 0.7)

#: The parameter names and role keys of [`selectivekit.io`][selectivekit.io] and
#: [`selectivekit.report`][selectivekit.report], as the
#: command line's flags (their messages name parameters; the user typed flags).
_FLAGS = {
    "`pred`": "`--pred`",
    "`label`": "`--label`",
    "`uncertainty`": "`--uncertainty`",
    "`probs`": "`--probs`",
    "`label_map`": "`--label-map`",
    "`label_map_labels`": "`--label-map-labels`",
    "`label_map_pred`": "`--label-map-pred`",
    "`channel_axis`": "`--channel-axis`",
    "`reverse_axes`": "`--reverse-axes`",
    "`ignore_affine`": "`--ignore-affine`",
    "`workers`": "`--workers`",
    "`num_classes`": "--num-classes",
    "`coverages`": "`--coverages`",
    "`out`": "`--out`",
    "`shard`": "`--shard`",
    "`states`": "`STATES`",
    "`max_voxels`": "`--max-voxels`",
    '`partial_roles=("label",)`': "`--cases predicted`",
}
_FLAG_PATTERN = re.compile("|".join(re.escape(name) for name in _FLAGS))
_T = TypeVar("_T")


class _CommandError(Exception):
    """A problem with the user's files or data; printed as one line, exit status 1."""


class _UsageError(_CommandError):
    """Options that do not go together; printed as one line, exit status 2 (like argparse's errors)."""


def _as_flags(text: str) -> str:
    """A message of the library with its parameter names and role keys written as this command's flags."""
    return _FLAG_PATTERN.sub(lambda match: _FLAGS[match.group(0)], text)


def _translated(exc: Exception) -> Exception:
    """The same error, its message in the vocabulary of the command line."""
    text = _as_flags(str(exc))
    if text == str(exc):
        return exc
    try:
        return type(exc)(text)
    except TypeError:  # an error class with another constructor: keep it as it is
        return exc


def _flags(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``call(*args, **kwargs)``, its error messages in the vocabulary of the command line."""
    try:
        return call(*args, **kwargs)
    except (ValueError, TypeError, OSError) as exc:
        new = _translated(exc)
        if new is exc:
            raise
        raise new from exc


#: What this run has put in place (``main`` says so when it is interrupted afterwards).
_WRITTEN: list[Path] = []


@contextmanager
def _output_folder(out: Path, marker: str) -> Iterator[Path]:
    """[`selectivekit.report.atomic_folder`][selectivekit.report.atomic_folder], its errors in the vocabulary
    of the command line."""
    try:
        with skreport.atomic_folder(out, marker, on_commit=lambda: _WRITTEN.append(out)) as staging:
            yield staging
    except skreport.ReportError as exc:
        new = _translated(exc)
        if new is exc:
            raise
        raise new from exc


def _output_file(path: Path, text: str) -> None:
    """[`selectivekit.report.atomic_write_text`][selectivekit.report.atomic_write_text], recorded."""
    skreport.atomic_write_text(path, text, on_commit=lambda: _WRITTEN.append(path))


def _one_line(text: str) -> str:
    """A message on one line: the line breaks of multi-line messages (nibabel's, argparse's) folded."""
    return re.sub(r"\s*\n\s*", " ", text).strip()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, exit status 2:
    ``selectivekit evaluate: error: ... (see selectivekit evaluate --help)``.

    argparse prints the whole usage block before its message; the subcommands' option lists are long, so
    the message is what the user needs, and ``--help`` gives the rest.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------------
# argument parsing


def _coverages(text: str) -> list[float]:
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


def _label_map(option: str) -> Callable[[str], dict[int, int]]:
    def parse(text: str) -> dict[int, int]:
        try:
            return skio.parse_label_map(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("`label_map`", f"`{option}`")) from None

    return parse


def _label_maps(args: argparse.Namespace) -> dict[str, dict[int, int] | None]:
    """``--label-map`` (both sides) or ``--label-map-labels`` / ``--label-map-pred`` (one side each), as the
    keywords of [`selectivekit.io.load_case`][selectivekit.io.load_case]; a usage error when mixed."""
    if args.label_map is not None and (args.label_map_labels is not None or args.label_map_pred is not None):
        msg = (
            "give either `--label-map` (predictions and labels) or `--label-map-labels` / `--label-map-pred` "
            "(one side each), not both."
        )
        raise _UsageError(msg)
    if args.label_map_pred is not None and args.pred is None:
        msg = (
            "`--label-map-pred` applies to `--pred` files; without `--pred` the prediction is the arg-max "
            "of `--probs`."
        )
        raise _UsageError(msg)
    return {
        "label_map": args.label_map,
        "label_map_labels": args.label_map_labels,
        "label_map_pred": args.label_map_pred,
    }


def _label_map_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The label maps as the ``settings`` of a report record them (JSON keys are strings)."""
    return {
        key: None if mapping is None else {str(k): v for k, v in mapping.items()}
        for key, mapping in _label_maps(args).items()
    }


def _add_input_folders(parser: argparse.ArgumentParser) -> None:
    """The folders of predictions, labels and uncertainty (or probabilities), and ``--num-classes``."""
    parser.add_argument("--pred", metavar="DIR", help="predicted label maps (optional with --probs)")
    parser.add_argument("--label", metavar="DIR", required=True, help="true label maps")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--uncertainty", metavar="DIR", help="uncertainty maps (higher = less confident)")
    source.add_argument(
        "--probs", metavar="DIR", help="class probability maps; u = 1 - max p (computed without cancellation)"
    )
    parser.add_argument(
        "--num-classes",
        metavar="K",
        type=_count("--num-classes"),
        required=True,
        help=(
            "number of classes, background included: the labels are 0..K-1 (e.g. 3 for background, organ "
            "and tumour); classes 1..K-1 are evaluated unless --include-background"
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


def _add_reading_options(parser: argparse.ArgumentParser) -> None:
    """How the files are read: classes evaluated, label values, class axis, axis order."""
    parser.add_argument(
        "--include-background", action="store_true", help="evaluate class 0 too (default: classes 1..K-1)"
    )
    parser.add_argument(
        "--label-map",
        metavar="V:C,...",
        type=_label_map("--label-map"),
        help="stored value -> class for predictions and labels, e.g. 500:1,600:2 (0 -> 0 implied)",
    )
    parser.add_argument(
        "--label-map-labels",
        metavar="V:C,...",
        type=_label_map("--label-map-labels"),
        help="the same for the true labels only, e.g. 255:1 for 0/255 masks with 0/1 predictions",
    )
    parser.add_argument(
        "--label-map-pred",
        metavar="V:C,...",
        type=_label_map("--label-map-pred"),
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


def _add_size_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-voxels",
        metavar="N",
        type=_count("--max-voxels"),
        default=skio.DEFAULT_MAX_VOXELS,
        help=(
            "refuse, before decoding it, a file whose header declares more than N values (voxels times "
            f"channels or pages; default {skio.DEFAULT_MAX_VOXELS:,} = 2**31, 8 GiB as float32)"
        ),
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Selective segmentation: evaluate uncertainty maps with coverage-aware Dice.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    _add_input_folders(evaluate)
    evaluate.add_argument(
        "--coverages",
        metavar="C1,C2,...",
        type=_coverages,
        default=list(DEFAULT_COVERAGES),
        help="coverages to report (default: 0.95,0.9,0.8,0.7)",
    )
    _add_reading_options(evaluate)
    _add_size_budget(evaluate)
    evaluate.add_argument(
        "--exact",
        action="store_true",
        help="keep every image in memory and use the exact in-memory functions",
    )
    evaluate.add_argument(
        "--max-memory",
        metavar="SIZE",
        type=_memory_size,
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
        type=_shard,
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
        type=_count("--workers"),
        default=1,
        help="read and accumulate the files in N processes (default 1); the report is the same",
    )
    _add_evaluate_guarantee_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    compare = commands.add_parser(
        "compare",
        help="compare two evaluate outputs (the paper's Figure 2 and a side-by-side table)",
        description=(
            "Compare two `selectivekit evaluate` outputs image by image: per-image coverage and Dice "
            "differences (B - A) at each coverage both runs report, with quadrant percentages."
        ),
    )
    compare.add_argument("run_a", metavar="RUN_A", help="output folder of the first evaluate (baseline)")
    compare.add_argument("run_b", metavar="RUN_B", help="output folder of the second evaluate")
    compare.add_argument("--out", metavar="DIR", required=True, help="output folder")
    compare.add_argument("--name-a", metavar="NAME", help="label of RUN_A (default: its folder name)")
    compare.add_argument("--name-b", metavar="NAME", help="label of RUN_B (default: its folder name)")
    _add_compare_guarantee_options(compare)
    compare.set_defaults(handler=_compare)
    _add_calibrate_command(commands)
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
    merge.set_defaults(handler=_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 for bad files or data, 2 for bad usage, 130 when interrupted
        (Ctrl-C, SIGINT), 143 when terminated (SIGTERM).
    """
    _WRITTEN.clear()
    command = None
    restore = _terminate_as_interrupt()
    try:
        parser = _build_parser()
        try:
            args = parser.parse_args(None if argv is None else list(argv))
        except SystemExit as exc:  # argparse printed its one-line message (usage errors) or --help
            return exc.code if isinstance(exc.code, int) else 2
        command = args.command
        return int(args.handler(args))
    except KeyboardInterrupt as exc:
        with _interrupts_ignored():  # a second Ctrl-C must not cut the one line short
            where = _where(command)
            what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
            if _WRITTEN:
                done = ", ".join(str(path) for path in _WRITTEN)
                print(f"{where}: {what} after {done} was written in full.", file=sys.stderr)
            else:
                print(f"{where}: {what}; nothing was written.", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except ModuleNotFoundError as exc:  # nibabel, Pillow, tqdm and matplotlib are optional dependencies
        print(
            f"{_where(command)}: error: this needs the package {exc.name!r}, which is not installed; "
            "install the command line's extras with: pip install 'selectivekit[io,plot]'.",
            file=sys.stderr,
        )
        return 1
    except (_CommandError, ValueError, TypeError, OSError) as exc:
        print(f"{_where(command)}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2 if isinstance(exc, _UsageError) else 1
    except MemoryError as exc:  # not a bug of ours: the data, or what a file claims to hold, is too large
        print(
            f"{_where(command)}: error: not enough memory ({_one_line(str(exc)) or 'MemoryError'}); lower "
            "`--max-memory` or `--max-voxels`, or check the input files.",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # never a traceback; the message is still specific
        print(
            f"{_where(command)}: internal error ({type(exc).__name__}: {_one_line(str(exc))}); "
            "please report it.",
            file=sys.stderr,
        )
        return 1
    finally:
        restore()


def _where(command: str | None) -> str:
    """The program and command that a message comes from (the program alone before a command is known)."""
    return PROG if command is None else f"{PROG} {command}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt: the same clean-up, another message."""


@contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _terminate_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM raise `_Terminated` (main thread only); returns what restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except (OSError, ValueError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------
# all-or-nothing output folder


# --------------------------------------------------------------------------------------------------
# evaluate


def _memory_size(text: str) -> int:
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
    if size > _MAX_MEMORY_LIMIT:
        msg = f"`--max-memory` must be at most {_MAX_MEMORY_LIMIT:,} bytes (8 EiB), got {_short(text)}."
        raise argparse.ArgumentTypeError(msg)
    return size


_MAX_MEMORY_LIMIT = 2**63 - 1  # the budget is compared with int64 byte counts


def _shard(text: str) -> tuple[int, int]:
    from .shards import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(_as_flags(str(exc))) from None


def _check_input_options(args: argparse.Namespace) -> int:
    """The usage checks of the commands that read a folder of predictions; returns ``--num-classes``."""
    num_classes: int = args.num_classes
    if num_classes < 2 and not args.include_background:
        msg = (
            f"`--num-classes` {num_classes} leaves no class to evaluate without `--include-background` "
            "(classes 1..K-1 are evaluated by default)."
        )
        raise _UsageError(msg)
    if num_classes > MAX_NUM_CLASSES:
        msg = f"`--num-classes` must be <= {MAX_NUM_CLASSES} (16-bit label maps), got {num_classes}."
        raise _UsageError(msg)
    if args.pred is None and args.probs is None:
        msg = "`--pred` is required with `--uncertainty` (it may be left out only with `--probs`)."
        raise _UsageError(msg)
    if args.channel_axis is not None and args.probs is None:
        msg = "`--channel-axis` applies to `--probs` only."
        raise _UsageError(msg)
    _label_maps(args)  # the label maps go together
    return num_classes


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
            raise _UsageError(msg)


def _pair_cases(args: argparse.Namespace, folders: dict[str, Path]) -> list[skio.Case]:
    """The cases of the folders (see [`selectivekit.io.pair_files`][selectivekit.io.pair_files]); with
    ``--cases predicted``, the label files that no prediction folder has are skipped."""
    partial = ("label",) if args.cases == "predicted" else ()
    cases: list[skio.Case] = _flags(skio.pair_files, folders, array_roles=("probs",), partial_roles=partial)
    if partial and not args.quiet:
        n_labels = len(skio.pair_files({"label": folders["label"]}))
        if n_labels > len(cases):
            print(
                f"{PROG} {args.command}: {len(cases)} predicted cases of {n_labels} in `--label`; "
                f"{n_labels - len(cases)} not predicted were skipped",
                file=sys.stderr,
            )
    return cases


def _read_options(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """The keyword arguments of [`selectivekit.io.load_case`][selectivekit.io.load_case] from the flags."""
    return {
        "num_classes": num_classes,
        **_label_maps(args),
        "channel_axis": args.channel_axis,
        "reverse_axes": args.reverse_axes,
        "pred": "pred" if args.pred is not None else None,
        "uncertainty": "uncertainty" if args.uncertainty is not None else None,
        "probs": "probs" if args.probs is not None else None,
        "max_voxels": args.max_voxels,
        "ignore_affine": bool(args.ignore_affine),
    }


def _layout_settings(args: argparse.Namespace, cases: Sequence[skio.Case]) -> dict[str, Any]:
    """What the report records of the folders' layouts and of ``--cases``."""
    layouts = cases[0].layouts if cases else {}
    return {"layouts": {f"--{role}": layout for role, layout in layouts.items()}, "cases": args.cases}


def _input_folders(args: argparse.Namespace) -> dict[str, Path]:
    """The folders given, by the role keys of [`selectivekit.io`][selectivekit.io]."""
    folders = {"pred": args.pred, "label": args.label, "uncertainty": args.uncertainty, "probs": args.probs}
    return {role: Path(folder) for role, folder in folders.items() if folder is not None}


def _read_images(
    args: argparse.Namespace, cases: Sequence[skio.Case], num_classes: int, desc: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Each case read and checked by [`selectivekit.io.load_case`][selectivekit.io.load_case], with a progress
    bar."""
    from tqdm import tqdm

    options = _read_options(args, num_classes)
    for case in tqdm(cases, desc=desc, unit="image", disable=True if args.quiet else None):
        pred, label, u = _flags(skio.load_case, case, **options)
        yield case.name, pred, label, u


def _evaluate(args: argparse.Namespace) -> int:
    num_classes = _check_input_options(args)
    _check_workers(args)
    out = Path(args.out)
    folders = _input_folders(args)
    _flags(skreport.check_out_folder, out, REPORT_JSON, list(folders.values()))
    cases = _pair_cases(args, folders)
    n_cases = len(cases)
    if args.shard is not None:
        from .shards import shard_slice

        cases = cases[shard_slice(n_cases, args.shard)]
    settings = {
        "num_classes": num_classes,
        "include_background": bool(args.include_background),
        **_label_map_settings(args),
        "source": "probs" if args.probs is not None else "uncertainty",
        "channel_axis": args.channel_axis,
        "reverse_axes": args.reverse_axes,
        "mode": "exact" if args.exact else "streaming",
        "folders": {f"--{role}": str(folder) for role, folder in folders.items()},
        **_layout_settings(args, cases),
    }
    if not args.exact:
        settings |= {"max_memory": args.max_memory, "grid": args.grid}
    requested = list(args.coverages)
    if args.save_state is not None or args.shard is not None:
        return _save_state(args, cases, n_cases, settings, requested, num_classes)
    extras = _EvaluateExtras.from_args(args, num_classes, requested)

    if args.exact:
        compute = _compute_exact
    else:
        options = {"max_memory": args.max_memory, "grid": args.grid}

        def compute(*a: Any) -> Evaluation:
            return _compute_streaming(*a, **options)

    if args.workers > 1:
        evaluation = _compute_in_workers(args, cases, requested, num_classes)
    else:
        images = _read_images(args, cases, num_classes, "evaluate")
        evaluation = compute(extras.watch(images), requested, num_classes, bool(args.include_background))
    _write_evaluation(out, evaluation, requested, settings, extras)
    return 0


def _write_evaluation(
    out: Path, evaluation: Evaluation, requested: Sequence[float], settings: dict[str, Any], extras: Any
) -> None:
    """Write the report folder of an evaluation (``evaluate`` and ``merge``)."""
    with _output_folder(out, REPORT_JSON) as staging:
        report = skreport.build_report(evaluation, requested, settings)
        if extras is not None:
            extras.finish(report, staging)
        skreport.write_json(staging / REPORT_JSON, report)
        skreport.write_curve(staging / CURVE_FILE, evaluation.curve)
        _evaluation_plots(staging, evaluation, report)
        extras = skreport.per_class_markdown(report) + _extras_markdown(report)
        markdown = skreport.report_markdown(report, extras)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        (staging / "report.html").write_text(skreport.report_html(markdown, staging), encoding="utf-8")
    print(_evaluation_summary(report))
    command = "evaluate" if extras is not None else "merge"
    note = skreport.absent_classes_note(report)
    if note is not None:
        print(f"{PROG} {command}: warning: {note}", file=sys.stderr)
    print(f"{PROG} {command}: wrote {out} ({len(evaluation.names)} images)", file=sys.stderr)


def _save_state(
    args: argparse.Namespace,
    cases: Sequence[skio.Case],
    n_cases: int,
    settings: dict[str, Any],
    requested: Sequence[float],
    num_classes: int,
) -> int:
    """``evaluate --shard I/N --save-state FILE``: accumulate this shard's cases and write its state."""
    from . import shards

    if args.save_state is None:
        msg = "`--shard` needs `--save-state FILE` (each shard writes a state; `merge` writes the report)."
        raise _UsageError(msg)
    for flag, value in (("--exact", args.exact or None), ("--ci", args.ci), ("--threshold", args.threshold)):
        if value is not None:
            msg = f"`{flag}` does not go with `--save-state` (a shard writes a state, not a report)."
            raise _UsageError(msg)
    path = Path(args.save_state)
    _check_state_target(path)
    shard = args.shard if args.shard is not None else (0, 1)
    desc = f"shard {shard[0]}/{shard[1]}"
    if args.workers > 1:
        accumulator, names, voxels = _accumulate_in_workers(args, cases, num_classes, desc)
    else:
        images = _read_images(args, cases, num_classes, desc)
        accumulator, names, voxels = _accumulate(
            images, num_classes, bool(args.include_background), max_memory=args.max_memory, grid=args.grid
        )
    with skreport.atomic_file(
        path, check=lambda: _check_state_target(path), on_commit=lambda: _WRITTEN.append(path)
    ) as tmp:
        _flags(
            shards.write_state,
            tmp,
            accumulator,
            names=names,
            voxels=voxels,
            settings=settings,
            requested=requested,
            shard=shard,
            n_cases=n_cases,
        )
    print(
        f"{PROG} evaluate: wrote the state of shard {shard[0]}/{shard[1]} to {path} ({len(names)} images)",
        file=sys.stderr,
    )
    return 0


def _check_state_target(path: Path) -> None:
    """``--save-state FILE`` replaces only a state file (nothing, or a state of an earlier run)."""
    from .shards import is_state_file

    if path.is_dir():
        msg = f"`--save-state` must be a file name, got the folder {str(path)!r}."
        raise _CommandError(msg)
    if os.path.lexists(path) and (path.is_symlink() or not is_state_file(path)):
        msg = (
            f"`--save-state` file {str(path)!r} exists and is not a selectivekit state file; give a new "
            "file name (an existing file is replaced only when it is a state of `evaluate --save-state`)."
        )
        raise _CommandError(msg)


def _merge(args: argparse.Namespace) -> int:
    """``merge STATES... --out DIR``: the report of the merged shard states."""
    from . import shards

    out = Path(args.out)
    _flags(skreport.check_out_folder, out, REPORT_JSON)
    merged = _flags(shards.read_states, [Path(p) for p in args.states])
    evaluation = _evaluation_from(merged.accumulator, merged.names, merged.voxels, merged.requested)
    _write_evaluation(out, evaluation, merged.requested, merged.settings, None)
    return 0


def _evaluation_summary(report: dict[str, Any]) -> str:
    """The headline numbers of an evaluation as a short plain-text table (printed by ``evaluate``).

    AURC of ``1 - mean Dice`` (lower is better), then per coverage (full coverage first) the realized
    coverage and the mean ± std and 5th percentile of the per-image Dice over the images, in %; the names
    are those of ``report.md`` ([`TERMS`][selectivekit.report.TERMS]).
    """
    full = report["dice_full"]
    names = [TERMS[key] for key in ("coverage", "realized", "dice", "p5")]
    widths = [len(name) for name in names]

    def row(values: list[str]) -> str:
        return "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))

    lines = [
        f"{report['n_images']} images; {AURC_HEADLINE}: {percent(report['aurc_dice'], 3)}",
        row(names),
        row(["1.00", "1.000", _pm(full["mean"], full["std"]), percent(full["p5"])]),
    ]
    for entry in report["coverages"]:
        lines.append(
            row(
                [
                    f"{entry['requested']:.2f}",
                    f"{entry['coverage']:.3f}",
                    _pm(entry["mean"], entry["std"]),
                    percent(entry["p5"]),
                ]
            )
        )
    return "\n".join(lines + _intervals_summary(report))


def _intervals_summary(report: dict[str, Any]) -> list[str]:
    """``evaluate --ci``: the intervals of ``report.md``, on the terminal too (with the small-sample
    warning)."""
    ci = report.get("intervals")
    if ci is None:
        return []
    rows = [(TERMS["aurc"], ci["aurc_dice"], 3)]
    for entry in ci["coverages"]:
        rows += [
            (f"Dice % (mean) at coverage {entry['requested']:.2f}", entry["mean"], 2),
            (f"{TERMS['p5']} at coverage {entry['requested']:.2f}", entry["p5"], 2),
        ]
    width = max(len(label) for label, _, _ in rows)
    level, n = f"{100 * ci['confidence']:g}", report["n_images"]
    lines = ["", f"{level} % confidence intervals (bootstrap over the {n} images):"]
    for label, e, digits in rows:
        interval = f"[{percent(e['low'], digits)}, {percent(e['high'], digits)}]"
        lines.append(f"  {label:<{width}}  {percent(e['estimate'], digits):>7}  {interval:>18}")
    note = skreport.few_images_note(report["n_images"])
    return lines + ([note] if note else [])


def _comparison_summary(a: dict[str, Any], b: dict[str, Any], comparison: dict[str, Any]) -> str:
    """Both runs' headline numbers side by side, and B − A (printed by ``compare``)."""
    name_a, name_b = comparison["run_a"]["name"], comparison["run_b"]["name"]
    width = max(len(name_a), len(name_b), len("100.00 (realized 1.000)"))
    label = len(TERMS["dice_full"])
    header = f"{'':<{label}}  {name_a:>{width}}  {name_b:>{width}}  {'B − A':>8}"
    lines = [f"{comparison['n_images']} images; A = {name_a}, B = {name_b}; {AURC_HEADLINE}", header]

    def row(text: str, va: float, vb: float, digits: int, extra_a: str = "", extra_b: str = "") -> None:
        cell_a, cell_b = f"{va:.{digits}f}{extra_a}", f"{vb:.{digits}f}{extra_b}"
        lines.append(f"{text:<{label}}  {cell_a:>{width}}  {cell_b:>{width}}  {vb - va:>+8.{digits}f}")

    row(TERMS["aurc"], 100 * a["aurc_dice"], 100 * b["aurc_dice"], 3)
    row(TERMS["dice_full"], 100 * a["dice_full"]["mean"], 100 * b["dice_full"]["mean"], 2)
    for entry in comparison["coverages"]:
        ra, rb = entry["a"], entry["b"]
        row(
            f"Dice % at coverage {entry['requested']:.2f}",
            100 * ra["mean"],
            100 * rb["mean"],
            2,
            f" (realized {ra['coverage']:.3f})",
            f" (realized {rb['coverage']:.3f})",
        )
    paired = comparison.get("paired") or {}
    if paired.get("available"):
        level = f"{100 * paired['confidence']:g}"
        lines += ["", f"B − A, paired {level} % confidence interval and permutation p-value:"]
        rows = [(TERMS["aurc"], paired["aurc_dice"], 3)]
        rows += [(f"Dice % at coverage {e['requested']:.2f}", e["mean"], 2) for e in paired["coverages"]]
        for text, e, digits in rows:
            interval = f"[{100 * e['low']:+.{digits}f}, {100 * e['high']:+.{digits}f}]"
            lines.append(
                f"{text:<{label}}  {100 * e['difference']:>+8.{digits}f}  {interval:>18}  "
                f"p = {e['p_value']:.4g}"
            )
        note = skreport.few_images_note(comparison["n_images"])
        lines += [note] if note else []
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _with_full(requested: Sequence[float]) -> list[float]:
    return [*requested, 1.0]


def _compute_exact(
    images: Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    requested: Sequence[float],
    num_classes: int,
    include_background: bool,
) -> Evaluation:
    from . import segmentation

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
    labelled = sum(np.bincount(t.reshape(-1), minlength=num_classes)[first:] for t in labels)
    predicted = sum(np.bincount(p.reshape(-1), minlength=num_classes)[first:] for p in preds)
    return Evaluation(
        names=names,
        voxels=[int(p.size) for p in preds],
        aurc_dice=float(aurc),
        full=results[-1],
        at_coverage=list(results[:-1]),
        curve=curve,
        class_voxels=([int(v) for v in labelled], [int(v) for v in predicted]),
    )


def _accumulator_factory(
    num_classes: int, include_background: bool, *, max_memory: int, grid: str
) -> Callable[[], Any]:
    """Builds the empty streaming accumulator of ``evaluate`` (picklable, for ``--workers``)."""
    from functools import partial

    from .streaming import SegmentationAccumulator

    return partial(
        SegmentationAccumulator,
        num_classes=num_classes,
        include_background=include_background,
        max_memory=max_memory,
        grid=grid,
    )


def _compute_streaming(
    images: Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    requested: Sequence[float],
    num_classes: int,
    include_background: bool,
    *,
    max_memory: int = DEFAULT_MAX_MEMORY,
    grid: str = "bfloat16",
) -> Evaluation:
    accumulator, names, voxels = _accumulate(
        images, num_classes, include_background, max_memory=max_memory, grid=grid
    )
    return _evaluation_from(accumulator, names, voxels, requested)


def _accumulate(
    images: Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    include_background: bool,
    *,
    max_memory: int,
    grid: str,
) -> tuple[Any, list[str], list[int]]:
    """A [`SegmentationAccumulator`][selectivekit.SegmentationAccumulator] over the images, with their names
    and voxel counts (accumulators of other processes merge into it with its ``merge``)."""
    accumulator = _accumulator_factory(num_classes, include_background, max_memory=max_memory, grid=grid)()
    names, voxels = [], []
    for name, pred, label, u in images:
        try:
            accumulator.update(pred, label, u)
        except (ValueError, TypeError) as exc:
            msg = f"case {name!r}: {exc}"
            raise _CommandError(msg) from exc
        names.append(name)
        voxels.append(int(pred.size))
    return accumulator, names, voxels


def _accumulate_in_workers(
    args: argparse.Namespace, cases: Sequence[skio.Case], num_classes: int, desc: str
) -> tuple[Any, list[str], list[int]]:
    """``--workers N``: the accumulator over the cases' files, read and
    accumulated in N processes and merged in case order."""
    from tqdm import tqdm

    from . import _parallel

    factory = _accumulator_factory(
        num_classes, bool(args.include_background), max_memory=args.max_memory, grid=args.grid
    )
    with tqdm(total=len(cases), desc=desc, unit="image", disable=True if args.quiet else None) as bar:
        names, voxels, accumulator = _flags(
            _parallel.accumulate_in_processes,
            cases,
            _read_options(args, num_classes),
            factory,
            workers=args.workers,
            progress=bar.update,
        )
    return accumulator, names, voxels


def _compute_in_workers(
    args: argparse.Namespace, cases: Sequence[skio.Case], requested: Sequence[float], num_classes: int
) -> Evaluation:
    """``--workers N``: the streaming evaluation, its files read and accumulated in N processes."""
    accumulator, names, voxels = _accumulate_in_workers(args, cases, num_classes, "evaluate")
    return _evaluation_from(accumulator, names, voxels, requested)


def _evaluation_from(
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
        class_voxels=tuple([int(v) for v in a] for a in accumulator.class_voxels()),
    )


def _save(fig: Any, path: Path) -> None:
    # selectivekit.plotting builds figures without pyplot: no backend or open-figure state to manage
    fig.savefig(path, dpi=120)


def _evaluation_plots(folder: Path, evaluation: Evaluation, report: dict[str, Any]) -> None:
    from . import plotting

    curve = evaluation.curve
    # a DiceCoverageCurve is drawn with risk 1 - mean Dice (what aurc_dice integrates), its AURC in the legend
    title = f"Risk-coverage ({report['n_images']} images)"
    _save(plotting.plot_risk_coverage(curve, title=title), folder / "risk_coverage.png")
    _save(plotting.plot_dice_coverage(curve, title="Dice-coverage"), folder / "dice_coverage.png")
    runs = [evaluation.full.per_image_dice, *(r.per_image_dice for r in evaluation.at_coverage)]
    labels = ["coverage 1.00", *(f"coverage {row['coverage']:.2f}" for row in report["coverages"])]
    fig = plotting.plot_dice_histogram(
        [skreport.floats(r) for r in runs],
        labels=labels,
        title=f"Per-image Dice ({report['n_images']} images)",
    )
    _save(fig, folder / "dice_histogram.png")


# --------------------------------------------------------------------------------------------------
# compare


def _compare(args: argparse.Namespace) -> int:
    run_a, run_b, out = Path(args.run_a), Path(args.run_b), Path(args.out)
    a = _flags(skreport.load_report, run_a, "RUN_A")
    b = _flags(skreport.load_report, run_b, "RUN_B")
    _flags(skreport.check_out_folder, out, COMPARISON_JSON, [run_a, run_b])
    name_a = args.name_a or run_a.resolve().name
    name_b = args.name_b or run_b.resolve().name
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    comparison, panels = _flags(skreport.build_comparison, a, b, run_a, run_b, name_a, name_b)
    names = [row["name"] for row in comparison["per_image"]]
    common = [row["requested"] for row in comparison["coverages"]]
    comparison["paired"] = _paired_section(a, b, run_a, run_b, names, common, args)
    with _output_folder(out, COMPARISON_JSON) as staging:
        skreport.write_json(staging / COMPARISON_JSON, comparison)
        curves = _comparison_plots(staging, panels, run_a, run_b, name_a, name_b)
        paired = _paired_markdown(comparison)
        markdown = skreport.comparison_markdown(comparison, curves=curves, extras=paired)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        (staging / "report.html").write_text(skreport.report_html(markdown, staging), encoding="utf-8")
    print(_comparison_summary(a, b, comparison))
    print(f"{PROG} compare: wrote {out} ({len(names)} images, {len(common)} coverages)", file=sys.stderr)
    return 0


def _comparison_plots(
    folder: Path, panels: list[Any], run_a: Path, run_b: Path, name_a: str, name_b: str
) -> bool:
    """Figure 2, and the two runs' Dice-coverage curves when both have their ``curve.npz`` (returns whether
    they had)."""
    from . import plotting
    from .segmentation import DiceCoverageCurve

    # compare_at_coverage(result_a, result_b) gives B minus A: the axes and the title say so, with the names
    _save(plotting.plot_per_image_comparison(panels, names=(name_a, name_b)), folder / "figure2.png")
    curves = {}
    for run, name in ((run_a, name_a), (run_b, name_b)):
        if not (run / CURVE_FILE).is_file():
            return False  # an older or hand-made report: no curve to draw
        with np.load(run / CURVE_FILE) as data:
            curves[name] = DiceCoverageCurve(
                coverage=data["coverage"], mean_dice=data["mean_dice"], threshold=data["threshold"]
            )
    _save(plotting.plot_dice_coverage(curves, title="Dice-coverage"), folder / "dice_coverage.png")
    return True


# --------------------------------------------------------------------------------------------------
# confidence intervals, paired comparison and guaranteed thresholds (selectivekit.guarantees)

STATE_FILE = "bootstrap_state.npz"
"""Per-image state written by ``evaluate --ci``; ``compare`` reads it for the paired tests."""
THRESHOLD_KIND = "selectivekit-threshold"


def _open_unit(option: str) -> Any:
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


def _count(option: str) -> Any:
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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"`--seed` must be an integer >= 0, got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    return value


def _add_evaluate_guarantee_options(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument(
        "--ci",
        metavar="LEVEL",
        type=_open_unit("--ci"),
        help=(
            "add bootstrap confidence intervals at this level (e.g. 0.95) to the report: images are "
            f"resampled, the threshold is chosen again on each resample; writes {STATE_FILE} for compare"
        ),
    )
    evaluate.add_argument(
        "--n-resamples",
        metavar="B",
        type=_count("--n-resamples"),
        help="with --ci (default 2000)",
    )
    evaluate.add_argument("--seed", metavar="S", type=_seed, help="with --ci (default 0)")
    evaluate.add_argument(
        "--threshold",
        metavar="FILE",
        help="also report the coverage and Dice at the fixed threshold of a `selectivekit calibrate` file",
    )


def _add_compare_guarantee_options(compare: argparse.ArgumentParser) -> None:
    compare.add_argument(
        "--confidence",
        metavar="LEVEL",
        type=_open_unit("--confidence"),
        default=0.95,
        help="level of the paired-bootstrap intervals (default 0.95; needs both runs evaluated with --ci)",
    )
    compare.add_argument("--n-resamples", metavar="B", type=_count("--n-resamples"), default=2000)
    compare.add_argument(
        "--n-permutations",
        metavar="P",
        type=_count("--n-permutations"),
        default=9999,
        help="random swaps of the permutation test (exact when 2**n_images <= P; default 9999)",
    )
    compare.add_argument("--seed", metavar="S", type=_seed, default=0, help="default 0")


def _add_calibrate_command(commands: Any) -> None:
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
    _add_input_folders(calibrate)
    calibrate.add_argument(
        "--max-dice-loss",
        metavar="A",
        type=_open_unit("--max-dice-loss"),
        required=True,
        help="largest acceptable 1 - Dice after referral (0.05: Dice >= 0.95)",
    )
    calibrate.add_argument(
        "--delta",
        metavar="D",
        type=_open_unit("--delta"),
        help="failure probability: Learn then Test instead of conformal risk control",
    )
    _add_reading_options(calibrate)
    _add_size_budget(calibrate)
    calibrate.add_argument(
        "--out", metavar="FILE", default="threshold.json", help="output file (default: %(default)s)"
    )
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(handler=_calibrate)


def _threshold_field(path: Path, field: str, expected: str, value: Any) -> _CommandError:
    """The one-line error for a field of a threshold file that is not what ``calibrate`` writes."""
    msg = f"`--threshold` file {str(path)!r}: `{field}` must be {expected}, got {_short(value, 60)}."
    return _CommandError(msg)


def _real_in(value: Any, low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> bool:
    """``value`` is a JSON number (not a boolean) within ``[low, high]`` (ends open as asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        v = float(value)
    except OverflowError:  # an integer beyond float64
        return False
    return (low < v if open_low else low <= v) and (v < high if open_high else v <= high)


def _read_threshold_file(path: Path) -> dict[str, Any]:
    """The threshold file written by ``calibrate``, every field checked (one line naming the field)."""
    if not path.is_file():
        msg = (
            f"`--threshold` must be a file written by `selectivekit calibrate`, got {str(path)!r} "
            "(no such file)."
        )
        raise _CommandError(msg)
    data = skreport.read_json(path, "--threshold")
    if not isinstance(data, dict) or data.get("kind") != THRESHOLD_KIND or "threshold" not in data:
        msg = f"`--threshold` file {str(path)!r} was not written by `selectivekit calibrate`."
        raise _CommandError(msg)
    t = data["threshold"]
    if t is not None and not _real_in(t, -math.inf, math.inf, open_low=True, open_high=True):
        raise _threshold_field(path, "threshold", "a finite number or null (refer everything)", t)
    if data.get("refers_all") is not (t is None):
        expected = "true with a null threshold" if t is None else "false beside a finite threshold"
        raise _threshold_field(path, "refers_all", expected, data.get("refers_all"))
    method = data.get("method")
    if method not in ("crc", "ltt"):
        raise _threshold_field(path, "method", '"crc" or "ltt"', method)
    alpha = data.get("max_dice_loss")
    if not _real_in(alpha, 0.0, 1.0, open_low=True, open_high=True):
        raise _threshold_field(path, "max_dice_loss", "a number in (0, 1)", alpha)
    delta = data.get("delta")
    if method == "crc" and delta is not None:
        raise _threshold_field(path, "delta", 'null with method "crc"', delta)
    if method == "ltt" and not _real_in(delta, 0.0, 1.0, open_low=True, open_high=True):
        raise _threshold_field(path, "delta", 'a number in (0, 1) with method "ltt"', delta)
    calibration = data.get("calibration")
    if not isinstance(calibration, dict):
        raise _threshold_field(path, "calibration", "an object", calibration)
    n = calibration.get("n_images")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _threshold_field(path, "calibration.n_images", "an integer >= 1", n)
    # the bound is at most max_dice_loss (1e-9: the last bisection step of the Learn-then-Test bound)
    ranges = (("coverage", 0.0 if t is None else 1.0), ("loss", 1.0), ("bound", float(alpha) + 1e-9))
    for key, high in ranges:
        if not _real_in(calibration.get(key), 0.0, high):
            expected = "a number in [0, max_dice_loss]" if key == "bound" else f"a number in [0, {high:g}]"
            raise _threshold_field(path, f"calibration.{key}", expected, calibration.get(key))
    p_value = calibration.get("p_value")
    if (method == "crc" and p_value is not None) or (method == "ltt" and not _real_in(p_value, 0.0, 1.0)):
        expected = 'null with method "crc"' if method == "crc" else 'a number in [0, 1] with method "ltt"'
        raise _threshold_field(path, "calibration.p_value", expected, p_value)
    settings = data.get("settings")
    if not isinstance(settings, dict):
        raise _threshold_field(path, "settings", "an object", settings)
    k = settings.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise _threshold_field(path, "settings.num_classes", "an integer >= 1", k)
    if not isinstance(settings.get("include_background"), bool):
        raise _threshold_field(
            path, "settings.include_background", "true or false", settings.get("include_background")
        )
    if settings.get("source") not in ("uncertainty", "probs"):
        raise _threshold_field(path, "settings.source", '"uncertainty" or "probs"', settings.get("source"))
    for key in ("label_map", "label_map_labels", "label_map_pred"):
        mapping = settings.get(key)
        if mapping is not None and not (
            isinstance(mapping, dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in mapping.values())
        ):
            raise _threshold_field(path, f"settings.{key}", "null or an object of integer labels", mapping)
    return data


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _dice_at_threshold(
    pred: np.ndarray, label: np.ndarray, u: np.ndarray, threshold: float, num_classes: int, first: int
) -> tuple[float, list[float], int]:
    """Per-class Dice of one image after referring the voxels with ``u > threshold`` (from scratch)."""
    accepted = _accepted(u, threshold)
    after = np.where(accepted, pred, label).astype(np.int64).reshape(-1)
    truth = label.astype(np.int64).reshape(-1)
    conf = np.bincount(truth * num_classes + after, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    den = 2 * tp + fp + fn
    dice = np.where(den == 0, 1.0, 2 * tp / np.where(den == 0, 1.0, den))[first:]
    return float(dice.mean()), [float(d) for d in dice], int(np.count_nonzero(accepted))


class _EvaluateExtras:
    """What ``--ci`` and ``--threshold`` add to ``evaluate``: filled image by image, then into the report."""

    def __init__(self, args: argparse.Namespace, num_classes: int, requested: Sequence[float]) -> None:
        self.args = args
        self.num_classes = num_classes
        self.include_background = bool(args.include_background)
        self.requested = list(requested)
        self.parts: list[Any] = []
        self.fixed: list[tuple[str, float, list[float], int, int]] = []
        self.threshold_file: dict[str, Any] | None = None
        self.threshold = math.nan

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, num_classes: int, requested: Sequence[float]
    ) -> _EvaluateExtras:
        if args.ci is None and (args.n_resamples is not None or args.seed is not None):
            msg = "`--n-resamples` and `--seed` apply to `--ci` only."
            raise _UsageError(msg)
        if args.n_resamples is None:
            args.n_resamples = 2000
        if args.seed is None:
            args.seed = 0
        extras = cls(args, num_classes, requested)
        if args.threshold is not None:
            data = _read_threshold_file(Path(args.threshold))
            settings = data["settings"]
            mine = {
                "num_classes": num_classes,
                "include_background": extras.include_background,
                "source": "probs" if args.probs is not None else "uncertainty",
                **_label_map_settings(args),
            }
            for key, value in mine.items():
                if settings.get(key) != value:
                    msg = (
                        f"`--threshold` was calibrated with {key}={settings.get(key)!r}, but this evaluation "
                        f"uses {key}={value!r}; a threshold applies only to maps read the same way."
                    )
                    raise _UsageError(msg)
            extras.threshold_file = data
            extras.threshold = -math.inf if data["threshold"] is None else float(data["threshold"])
        if args.ci is not None:
            _needs_scipy()
        return extras

    def watch(
        self, images: Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        from . import guarantees

        for name, pred, label, u in images:
            if self.args.ci is not None:
                try:
                    self.parts.append(
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
                    raise _CommandError(msg) from exc
            if self.threshold_file is not None:
                first = 0 if self.include_background else 1
                dice, per_class, accepted = _dice_at_threshold(
                    pred, label, u, self.threshold, self.num_classes, first
                )
                self.fixed.append((name, dice, per_class, accepted, int(u.size)))
            yield name, pred, label, u

    def finish(self, report: dict[str, Any], staging: Path) -> None:
        if self.args.ci is not None:
            self._intervals(report, staging)
        if self.threshold_file is not None:
            self._fixed_threshold(report)

    def _intervals(self, report: dict[str, Any], staging: Path) -> None:
        from . import guarantees

        if len(self.parts) < 2:
            msg = f"`--ci` needs at least 2 images to resample, got {len(self.parts)}."
            raise _CommandError(msg)
        state = guarantees.ImageState.concat(*self.parts)
        result = guarantees.bootstrap_state(
            state,
            coverages=self.requested,
            confidence=self.args.ci,
            n_resamples=self.args.n_resamples,
            seed=self.args.seed,
        )
        state.save(staging / STATE_FILE)

        def entry(key: str) -> dict[str, Any]:
            ci = result[key]
            return {
                "estimate": ci.estimate,
                "low": ci.low,
                "high": ci.high,
                "standard_error": ci.standard_error,
                "method": ci.method,
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
                {"requested": float(c), "mean": entry(f"mean@{c:g}"), "p5": entry(f"p5@{c:g}")}
                for c in self.requested
            ],
        }

    def _fixed_threshold(self, report: dict[str, Any]) -> None:
        data = self.threshold_file or {}
        dice = np.asarray([f[1] for f in self.fixed], dtype=np.float64)
        accepted = sum(f[3] for f in self.fixed)
        total = sum(f[4] for f in self.fixed)
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
        by_name = {f[0]: f for f in self.fixed}
        for row in report["per_image"]:
            f = by_name[row["name"]]
            row["fixed_threshold"] = {"dice": f[1], "dice_per_class": f[2], "coverage": f[3] / f[4]}


def _needs_scipy() -> None:
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        msg = (
            "intervals, paired tests and calibration need SciPy, which is not installed; install it with: "
            "pip install 'selectivekit[stats]'."
        )
        raise _CommandError(msg)


def _extras_markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    ci = report.get("intervals")
    if ci is not None:
        level = f"{100 * ci['confidence']:g}"
        lines += [
            f"## Confidence intervals ({level} %)",
            "",
            f"Bootstrap over images (bias-corrected and accelerated, {ci['method']}; {ci['n_resamples']} "
            f"resamples, seed {ci['seed']}): images are drawn with replacement and the global threshold is "
            "chosen again on each resampled set. The intervals describe the sampling noise of this test set, "
            "not of retraining or of other data."
            + (
                " The estimates are exact; the streaming figures above are computed on a grid of `u`."
                if report.get("path") == "grid"
                else ""
            ),
            "",
            *_warning_lines(report["n_images"]),
            f"| Statistic | Estimate | {level} % interval |",
            "|---|---:|---:|",
            f"| {TERMS['aurc']} | {percent(ci['aurc_dice']['estimate'], 3)} | "
            f"[{percent(ci['aurc_dice']['low'], 3)}, {percent(ci['aurc_dice']['high'], 3)}] |",
        ]
        for row in ci["coverages"]:
            for key in ("dice", "p5"):
                e = row["mean" if key == "dice" else "p5"]
                label = "Dice % (mean)" if key == "dice" else TERMS["p5"]
                lines.append(
                    f"| {label} at coverage {row['requested']:.2f} | {percent(e['estimate'])} | "
                    f"[{percent(e['low'])}, {percent(e['high'])}] |"
                )
        lines.append("")
    fixed = report.get("fixed_threshold")
    if fixed is not None:
        t = "refer everything" if fixed["refers_all"] else threshold_text(fixed["threshold"])
        target = fixed.get("max_dice_loss")
        source = f"{fixed.get('method')}"
        if isinstance(target, (int, float)):  # in % like every Dice of the report
            source += f", max Dice loss {100 * target:g} % (a Dice of at least {100 * (1 - target):g} %)"
        if fixed.get("delta") is not None:
            source += f", delta {fixed['delta']}"
        if fixed.get("calibration_coverage") is not None:
            source += f"; calibration coverage {fixed['calibration_coverage']:.3f}"
        lines += [
            "## Fixed threshold",
            "",
            f"- threshold from `{fixed['file']}`: {t} ({source})",
            f"- {TERMS['realized']} on these images: {fixed['coverage']:.3f}",
            f"- {TERMS['dice']} after referral: {percent(fixed['mean'])} ± {percent(fixed['std'])} "
            f"(5th percentile {percent(fixed['p5'])})",
        ]
        if fixed.get("share_meeting_target") is not None:
            lines.append(
                f"- images with a Dice of at least {100 * (1 - target):g} %: "
                f"{percent(fixed['share_meeting_target'], 1)} %"
            )
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


def _warning_lines(n_images: int) -> list[str]:
    """The small-sample warning as a Markdown quote and a blank line, or nothing."""
    note = skreport.few_images_note(n_images)
    return [f"> **{note}**", ""] if note else []


def _paired_section(
    a: dict[str, Any],
    b: dict[str, Any],
    run_a: Path,
    run_b: Path,
    names: list[str],
    common: list[float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Paired-bootstrap intervals and permutation p-values, when both runs saved their per-image state."""
    missing = [
        f"{which} ({str(run)!r})"
        for which, run in (("RUN_A", run_a), ("RUN_B", run_b))
        if not (run / STATE_FILE).is_file()
    ]
    if missing:
        return {
            "available": False,
            "reason": (
                f"no {STATE_FILE} in {' and '.join(missing)}; run `selectivekit evaluate --ci 0.95` on both"
            ),
        }
    _needs_scipy()
    from . import guarantees

    states = []
    for which, report, run in (("RUN_A", a, run_a), ("RUN_B", b, run_b)):
        check_npz_sizes(run / STATE_FILE, which)  # before loading: a forged header cannot ask for terabytes
        try:
            state = guarantees.ImageState.load(run / STATE_FILE)
        except ValueError as exc:  # names the file: "`path` file ... is not a valid bootstrap state: ..."
            raise _CommandError(str(exc).replace("`path`", f"`{which}`", 1)) from exc
        except (OSError, KeyError) as exc:
            msg = f"`{which}` file {str(run / STATE_FILE)!r} cannot be read: {exc}."
            raise _CommandError(msg) from exc
        order = [row["name"] for row in report["per_image"]]
        if state.n_items != len(order):
            msg = (
                f"`{which}` file {str(run / STATE_FILE)!r} holds {state.n_items} images, "
                f"its report {len(order)}."
            )
            raise _CommandError(msg)
        voxels = [row.get("n_voxels") for row in report["per_image"]]
        if voxels != state.n_vox.tolist():
            msg = (
                f"`{which}` file {str(run / STATE_FILE)!r} holds images of other voxel counts than its "
                "report's; it belongs to another run."
            )
            raise _CommandError(msg)
        position = {name: i for i, name in enumerate(order)}
        states.append(state.take([position[name] for name in names]))
    if len(names) < 2:
        msg = f"a paired comparison needs at least 2 images, got {len(names)}."
        raise _CommandError(msg)
    result = guarantees.compare_states(
        states[0],
        states[1],
        coverages=list(common),
        confidence=args.confidence,
        n_resamples=args.n_resamples,
        n_permutations=args.n_permutations,
        seed=args.seed,
    )

    def entry(key: str) -> dict[str, Any]:
        d = result[key]
        return {
            "difference": d.estimate,
            "low": d.low,
            "high": d.high,
            "standard_error": d.standard_error,
            "p_value": d.p_value,
            "method": d.method,
        }

    return {
        "available": True,
        "confidence": float(args.confidence),
        "n_resamples": int(args.n_resamples),
        "n_permutations": int(result.n_permutations),
        "exact": bool(result.exact),
        "seed": int(args.seed),
        "aurc_dice": entry("aurc_dice"),
        "coverages": [{"requested": float(c), "mean": entry(f"mean@{c:g}")} for c in common],
    }


def _paired_markdown(comparison: dict[str, Any]) -> str:
    paired = comparison.get("paired") or {}
    a, b = comparison["run_a"]["name"], comparison["run_b"]["name"]
    if not paired.get("available"):
        return (
            f"Paired intervals and p-values: not computed ({paired.get('reason', 'no per-image state')}).\n"
        )
    level = f"{100 * paired['confidence']:g}"
    test = "exact" if paired["exact"] else f"{paired['n_permutations']} random swaps"
    lines = [
        f"## Paired comparison ({b} - {a})",
        "",
        f"Paired bootstrap over images ({paired['n_resamples']} resamples, bias-corrected and accelerated) "
        f"and a permutation test that swaps the two models' outputs image by image ({test}, two-sided). A "
        f"negative AURC difference and a positive Dice difference favour {b}.",
        "",
        *_warning_lines(comparison["n_images"]),
        f"| Statistic | Difference | {level} % interval | p-value |",
        "|---|---:|---:|---:|",
    ]
    rows = [(TERMS["aurc"], paired["aurc_dice"], 3)]
    rows += [
        (f"Dice % (mean) at coverage {row['requested']:.2f}", row["mean"], 2) for row in paired["coverages"]
    ]
    for label, e, digits in rows:
        lines.append(
            f"| {label} | {100 * e['difference']:+.{digits}f} | [{100 * e['low']:+.{digits}f}, "
            f"{100 * e['high']:+.{digits}f}] | {e['p_value']:.4g} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def _calibrate(args: argparse.Namespace) -> int:
    num_classes = _check_input_options(args)
    out = Path(args.out)
    if out.is_dir():
        msg = f"`--out` must be a file name, got the folder {str(out)!r}."
        raise _CommandError(msg)
    if out.exists():
        try:
            previous = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or previous.get("kind") != THRESHOLD_KIND:
            msg = f"`--out` file {str(out)!r} exists and is not a threshold file; give a new file name."
            raise _CommandError(msg)
    _needs_scipy()
    folders = _input_folders(args)
    cases = _pair_cases(args, folders)
    preds, labels, us = [], [], []
    for _, pred, label, u in _read_images(args, cases, num_classes, "calibrate"):
        preds.append(pred)
        labels.append(label)
        us.append(u)
    from .guarantees import guaranteed_dice_threshold

    result = guaranteed_dice_threshold(
        preds,
        labels,
        us,
        num_classes=num_classes,
        max_dice_loss=args.max_dice_loss,
        delta=args.delta,
        include_background=bool(args.include_background),
    )
    from . import __version__

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
            **_label_map_settings(args),
            "source": "probs" if args.probs is not None else "uncertainty",
            "channel_axis": args.channel_axis,
            "reverse_axes": args.reverse_axes,
            "folders": {f"--{role}": str(folder) for role, folder in folders.items()},
            **_layout_settings(args, cases),
        },
    }
    _output_file(out, json.dumps(data, indent=2, allow_nan=False) + "\n")
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

"""The ``selectivekit`` command line: evaluate a folder of predictions, compare two evaluations.

``selectivekit evaluate`` reads predicted labels, true labels and uncertainty (or probability) maps from
folders (see :mod:`selectivekit.io` for the formats and the pairing rule) and writes the paper's
evaluation to ``--out``: ``report.json``, ``report.md`` (the Table-1 layout), ``curve.npz`` and PNG plots.
``selectivekit compare RUN_A RUN_B`` reads two such folders and writes the per-image comparison of the
paper's Figure 2 and a side-by-side table.

Every error is printed as one message on stderr with a non-zero exit status (1 for bad data or files,
2 for bad command-line usage); nothing is written unless the whole report is complete.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import io as skio
from . import report as skreport
from ._lib import check_coverage
from .report import COMPARISON_JSON, CURVE_FILE, REPORT_JSON, Evaluation

__all__ = ["main"]

PROG = "selectivekit"
DEFAULT_COVERAGES = (0.95, 0.9, 0.8, 0.7)

#: The parameter names and role keys of :mod:`selectivekit.io` and :mod:`selectivekit.report`, as the
#: command line's flags (their messages name parameters; the user typed flags).
_FLAGS = {
    "`pred`": "`--pred`",
    "`label`": "`--label`",
    "`uncertainty`": "`--uncertainty`",
    "`probs`": "`--probs`",
    "`label_map`": "`--label-map`",
    "`channel_axis`": "`--channel-axis`",
    "`reverse_axes`": "`--reverse-axes`",
    "`num_classes`": "--num-classes",
    "`coverages`": "`--coverages`",
    "`out`": "`--out`",
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


@contextmanager
def _output_folder(out: Path, marker: str) -> Iterator[Path]:
    """:func:`selectivekit.report.atomic_folder`, its errors in the vocabulary of the command line."""
    try:
        with skreport.atomic_folder(out, marker) as staging:
            yield staging
    except skreport.ReportError as exc:
        new = _translated(exc)
        if new is exc:
            raise
        raise new from exc


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


def _label_map(text: str) -> dict[int, int]:
    try:
        return _flags(skio.parse_label_map, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"`--num-classes` must be an integer >= 1, got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Selective segmentation: evaluate uncertainty maps with coverage-aware Dice.",
    )
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
    evaluate.add_argument("--pred", metavar="DIR", help="predicted label maps (optional with --probs)")
    evaluate.add_argument("--label", metavar="DIR", required=True, help="true label maps")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--uncertainty", metavar="DIR", help="uncertainty maps (higher = less confident)")
    source.add_argument(
        "--probs", metavar="DIR", help="class probability maps; u = 1 - max p (computed without cancellation)"
    )
    evaluate.add_argument("--num-classes", metavar="K", type=_positive_int, required=True)
    evaluate.add_argument(
        "--coverages",
        metavar="C1,C2,...",
        type=_coverages,
        default=list(DEFAULT_COVERAGES),
        help="coverages to report (default: 0.95,0.9,0.8,0.7)",
    )
    evaluate.add_argument(
        "--include-background", action="store_true", help="evaluate class 0 too (default: classes 1..K-1)"
    )
    evaluate.add_argument(
        "--label-map",
        metavar="V:C,...",
        type=_label_map,
        help="stored value -> class for predictions and labels, e.g. 500:1,600:2 (0 -> 0 implied)",
    )
    evaluate.add_argument(
        "--channel-axis",
        metavar="N",
        type=int,
        help="class axis of the probability maps (default: the one axis of size K)",
    )
    evaluate.add_argument(
        "--reverse-axes",
        action="store_true",
        help=(
            "reverse the spatial axes of the uncertainty/probability maps (nnU-Net's .npz are (c, z, y, x); "
            "nibabel reads NIfTI as (x, y, z))"
        ),
    )
    evaluate.add_argument(
        "--exact",
        action="store_true",
        help="keep every image in memory and use the exact in-memory functions",
    )
    evaluate.add_argument(
        "--out", metavar="DIR", default="selectivekit-report", help="output folder (default: %(default)s)"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
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
    compare.set_defaults(handler=_compare)
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
        Exit status: 0 on success, 1 for bad files or data, 2 for bad usage, 130 when interrupted.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse prints its own message (usage errors, --help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # nibabel, Pillow, tqdm and matplotlib are optional dependencies
        print(
            f"{PROG} {args.command}: error: this needs the package {exc.name!r}, which is not installed; "
            "install the command line's extras with: pip install 'selectivekit[io,plot]'.",
            file=sys.stderr,
        )
        return 1
    except (_CommandError, ValueError, TypeError, OSError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, _UsageError) else 1
    except Exception as exc:  # never a traceback; the message is still specific
        print(
            f"{PROG} {args.command}: internal error ({type(exc).__name__}: {exc}); please report it.",
            file=sys.stderr,
        )
        return 1


# --------------------------------------------------------------------------------------------------
# all-or-nothing output folder


# --------------------------------------------------------------------------------------------------
# evaluate


def _evaluate(args: argparse.Namespace) -> int:
    num_classes: int = args.num_classes
    if num_classes < 2 and not args.include_background:
        msg = (
            f"`--num-classes` {num_classes} leaves no class to evaluate without `--include-background` "
            "(classes 1..K-1 are evaluated by default)."
        )
        raise _UsageError(msg)
    if args.pred is None and args.probs is None:
        msg = "`--pred` is required with `--uncertainty` (it may be left out only with `--probs`)."
        raise _UsageError(msg)
    if args.channel_axis is not None and args.probs is None:
        msg = "`--channel-axis` applies to `--probs` only."
        raise _UsageError(msg)
    out = Path(args.out)
    folders = {"pred": args.pred, "label": args.label, "uncertainty": args.uncertainty, "probs": args.probs}
    folders = {role: Path(folder) for role, folder in folders.items() if folder is not None}
    _flags(skreport.check_out_folder, out, REPORT_JSON, list(folders.values()))
    cases = _flags(skio.pair_files, folders, array_roles=("probs",))
    settings = {
        "num_classes": num_classes,
        "include_background": bool(args.include_background),
        "label_map": None if args.label_map is None else {str(k): v for k, v in args.label_map.items()},
        "source": "probs" if args.probs is not None else "uncertainty",
        "channel_axis": args.channel_axis,
        "reverse_axes": bool(args.reverse_axes),
        "mode": "exact" if args.exact else "streaming",
        "folders": {f"--{role}": str(folder) for role, folder in folders.items()},
    }
    requested = list(args.coverages)

    def images() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        from tqdm import tqdm

        for case in tqdm(cases, desc="evaluate", unit="image", disable=True if args.quiet else None):
            pred, label, u = _flags(
                skio.load_case,
                case,
                num_classes=num_classes,
                label_map=args.label_map,
                channel_axis=args.channel_axis,
                reverse_axes=bool(args.reverse_axes),
                pred="pred" if args.pred is not None else None,
                uncertainty="uncertainty" if args.uncertainty is not None else None,
                probs="probs" if args.probs is not None else None,
            )
            yield case.name, pred, label, u

    compute = _compute_exact if args.exact else _compute_streaming
    evaluation = compute(images(), requested, num_classes, bool(args.include_background))
    with _output_folder(out, REPORT_JSON) as staging:
        report = skreport.build_report(evaluation, requested, settings)
        skreport.write_json(staging / REPORT_JSON, report)
        skreport.write_curve(staging / CURVE_FILE, evaluation.curve)
        _evaluation_plots(staging, evaluation, report)
        (staging / "report.md").write_text(skreport.report_markdown(report), encoding="utf-8")
    print(f"{PROG} evaluate: wrote {out} ({len(evaluation.names)} images)", file=sys.stderr)
    return 0


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
    return Evaluation(
        names=names,
        voxels=[int(p.size) for p in preds],
        aurc_dice=float(aurc),
        full=results[-1],
        at_coverage=list(results[:-1]),
        curve=curve,
    )


def _compute_streaming(
    images: Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    requested: Sequence[float],
    num_classes: int,
    include_background: bool,
) -> Evaluation:
    from .streaming import SegmentationAccumulator

    accumulator = SegmentationAccumulator(num_classes=num_classes, include_background=include_background)
    names, voxels = [], []
    for name, pred, label, u in images:
        try:
            accumulator.update(pred, label, u)
        except (ValueError, TypeError) as exc:
            msg = f"case {name!r}: {exc}"
            raise _CommandError(msg) from exc
        names.append(name)
        voxels.append(int(pred.size))
    results = accumulator.dice_at_coverage(_with_full(requested))
    return Evaluation(
        names=names,
        voxels=voxels,
        aurc_dice=float(accumulator.aurc_dice()),
        full=results[-1],
        at_coverage=list(results[:-1]),
        curve=accumulator.compute(),
    )


def _save(fig: Any, path: Path) -> None:
    # selectivekit.plotting builds figures without pyplot: no backend or open-figure state to manage
    fig.savefig(path, dpi=120)


def _evaluation_plots(folder: Path, evaluation: Evaluation, report: dict[str, Any]) -> None:
    from . import plotting

    curve = evaluation.curve
    aurc = f"AURC {100 * evaluation.aurc_dice:.3f} %"
    # a DiceCoverageCurve is drawn with risk 1 - mean Dice, what aurc_dice integrates
    _save(plotting.plot_risk_coverage(curve, title=aurc), folder / "risk_coverage.png")
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
    with _output_folder(out, COMPARISON_JSON) as staging:
        skreport.write_json(staging / COMPARISON_JSON, comparison)
        _comparison_plots(staging, panels, run_a, run_b, name_a, name_b)
        (staging / "report.md").write_text(skreport.comparison_markdown(comparison), encoding="utf-8")
    n_images, n_coverages = comparison["n_images"], len(comparison["coverages"])
    print(f"{PROG} compare: wrote {out} ({n_images} images, {n_coverages} coverages)", file=sys.stderr)
    return 0


def _comparison_plots(
    folder: Path, panels: list[Any], run_a: Path, run_b: Path, name_a: str, name_b: str
) -> None:
    from . import plotting
    from .segmentation import DiceCoverageCurve

    _save(plotting.plot_per_image_comparison(panels), folder / "figure2.png")
    curves = {}
    for run, name in ((run_a, name_a), (run_b, name_b)):
        if not (run / CURVE_FILE).is_file():
            return  # an older or hand-made report: no curve to draw
        with np.load(run / CURVE_FILE) as data:
            curves[name] = DiceCoverageCurve(
                coverage=data["coverage"], mean_dice=data["mean_dice"], threshold=data["threshold"]
            )
    _save(plotting.plot_dice_coverage(curves, title="Dice-coverage"), folder / "dice_coverage.png")

"""The ``selectivekit`` command line: evaluate a folder of predictions, compare two evaluations.

``selectivekit evaluate`` reads predicted labels, true labels and uncertainty (or probability) maps from
folders (see :mod:`selectivekit.io` for the formats and the pairing rule) and writes the paper's
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
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import io as skio
from ._validation import check_coverage

__all__ = ["main"]

PROG = "selectivekit"
DEFAULT_COVERAGES = (0.95, 0.9, 0.8, 0.7)
REPORT_JSON = "report.json"
COMPARISON_JSON = "comparison.json"
CURVE_FILE = "curve.npz"
MAX_CURVE_POINTS = 20_001
"""``curve.npz`` keeps the exact curve, thinned to at most this many points (for plots)."""


class CommandError(Exception):
    """A problem with the user's files or data; printed as one line, exit status 1."""


class UsageError(CommandError):
    """Options that do not go together; printed as one line, exit status 2 (like argparse's errors)."""


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
        return skio.parse_label_map(text)
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
    except (CommandError, ValueError, TypeError, OSError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except Exception as exc:  # never a traceback; the message is still specific
        print(
            f"{PROG} {args.command}: internal error ({type(exc).__name__}: {exc}); please report it.",
            file=sys.stderr,
        )
        return 1


# --------------------------------------------------------------------------------------------------
# all-or-nothing output folder


def _check_out(out: Path, marker: str, inputs: Sequence[Path] = ()) -> None:
    resolved = out.resolve()
    for path in inputs:
        if resolved == path.resolve():
            msg = f"`--out` must differ from the input folder {str(path)!r}."
            raise CommandError(msg)
    if out.exists() and not out.is_dir():
        msg = f"`--out` must be a folder, got the file {str(out)!r}."
        raise CommandError(msg)
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        msg = (
            f"`--out` folder {str(out)!r} exists and holds other files (no {marker}); "
            "give a new or empty folder, or a previous output of this command to replace it."
        )
        raise CommandError(msg)


@contextmanager
def _staging(out: Path, marker: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` only if the block completes."""
    out = out.resolve()
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the report is an ordinary folder
    try:
        yield staging
        _check_out(out, marker)  # nothing appeared there while we worked
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            try:
                os.replace(out, old / "previous")
            except OSError:
                old.rmdir()
                raise
            try:
                os.replace(staging, out)
            except OSError:
                os.replace(old / "previous", out)  # put the previous report back
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)  # also replaces an empty folder
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------------
# evaluate


@dataclass
class _Evaluation:
    names: list[str]
    voxels: list[int]
    aurc_dice: float
    full: Any  # DiceAtCoverage at coverage 1.0 (nothing referred)
    at_coverage: list[Any]  # DiceAtCoverage per requested coverage
    curve: Any  # DiceCoverageCurve


def _evaluate(args: argparse.Namespace) -> int:
    num_classes: int = args.num_classes
    if num_classes < 2 and not args.include_background:
        msg = (
            f"`--num-classes` {num_classes} leaves no class to evaluate without `--include-background` "
            "(classes 1..K-1 are evaluated by default)."
        )
        raise UsageError(msg)
    if args.pred is None and args.probs is None:
        msg = "`--pred` is required with `--uncertainty` (it may be left out only with `--probs`)."
        raise UsageError(msg)
    if args.channel_axis is not None and args.probs is None:
        msg = "`--channel-axis` applies to `--probs` only."
        raise UsageError(msg)
    out = Path(args.out)
    folders = {
        "--pred": args.pred,
        "--label": args.label,
        "--uncertainty": args.uncertainty,
        "--probs": args.probs,
    }
    folders = {role: Path(folder) for role, folder in folders.items() if folder is not None}
    _check_out(out, REPORT_JSON, list(folders.values()))
    cases = skio.pair_files(folders, array_roles=("--probs",))
    settings = {
        "num_classes": num_classes,
        "include_background": bool(args.include_background),
        "label_map": None if args.label_map is None else {str(k): v for k, v in args.label_map.items()},
        "source": "probs" if args.probs is not None else "uncertainty",
        "channel_axis": args.channel_axis,
        "reverse_axes": bool(args.reverse_axes),
        "mode": "exact" if args.exact else "streaming",
        "folders": {role: str(folder) for role, folder in folders.items()},
    }
    requested = list(args.coverages)
    extras = _EvaluateExtras.from_args(args, num_classes, requested)

    def images() -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        from tqdm import tqdm

        for case in tqdm(cases, desc="evaluate", unit="image", disable=True if args.quiet else None):
            pred, label, u = skio.load_case(
                case,
                num_classes=num_classes,
                label_map=args.label_map,
                channel_axis=args.channel_axis,
                reverse_axes=bool(args.reverse_axes),
                pred="--pred" if args.pred is not None else None,
                uncertainty="--uncertainty" if args.uncertainty is not None else None,
                probs="--probs" if args.probs is not None else None,
            )
            yield case.name, pred, label, u

    compute = _compute_exact if args.exact else _compute_streaming
    evaluation = compute(extras.watch(images()), requested, num_classes, bool(args.include_background))
    with _staging(out, REPORT_JSON) as staging:
        report = _report(evaluation, requested, settings)
        extras.finish(report, staging)
        _write_json(staging / REPORT_JSON, report)
        _write_curve(staging / CURVE_FILE, evaluation.curve)
        _evaluation_plots(staging, evaluation, report)
        markdown = _report_markdown(report) + _extras_markdown(report)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
    print(f"{PROG} evaluate: wrote {out} ({len(evaluation.names)} images)", file=sys.stderr)
    return 0


def _with_full(requested: Sequence[float]) -> list[float]:
    return [*requested, 1.0]


def _compute_exact(
    images: Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    requested: Sequence[float],
    num_classes: int,
    include_background: bool,
) -> _Evaluation:
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
    return _Evaluation(
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
) -> _Evaluation:
    from .streaming import SegmentationAccumulator

    accumulator = SegmentationAccumulator(num_classes=num_classes, include_background=include_background)
    names, voxels = [], []
    for name, pred, label, u in images:
        try:
            accumulator.update(pred, label, u)
        except (ValueError, TypeError) as exc:
            msg = f"case {name!r}: {exc}"
            raise CommandError(msg) from exc
        names.append(name)
        voxels.append(int(pred.size))
    results = accumulator.dice_at_coverage(_with_full(requested))
    return _Evaluation(
        names=names,
        voxels=voxels,
        aurc_dice=float(accumulator.aurc_dice()),
        full=results[-1],
        at_coverage=list(results[:-1]),
        curve=accumulator.compute(),
    )


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _report(evaluation: _Evaluation, requested: Sequence[float], settings: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    full = evaluation.full
    coverages = [
        {
            "requested": float(req),
            "coverage": float(result.coverage),
            "threshold": float(result.threshold),
            "mean": float(result.mean),
            "std": float(result.std),
            "p5": float(result.p5),
        }
        for req, result in zip(requested, evaluation.at_coverage, strict=True)
    ]
    per_image = []
    full_dice = _floats(full.per_image_dice)
    full_classes = np.asarray(full.per_class_dice, dtype=np.float64)
    at = [
        (
            _floats(r.per_image_dice),
            _floats(r.per_image_coverage),
            np.asarray(r.per_class_dice, dtype=np.float64),
        )
        for r in evaluation.at_coverage
    ]
    for i, name in enumerate(evaluation.names):
        per_image.append(
            {
                "name": name,
                "n_voxels": evaluation.voxels[i],
                "dice_full": full_dice[i],
                "dice_full_per_class": _floats(full_classes[i]),
                "coverages": [
                    {
                        "requested": float(req),
                        "dice": dice[i],
                        "coverage": cov[i],
                        "dice_per_class": _floats(per_class[i]),
                    }
                    for req, (dice, cov, per_class) in zip(requested, at, strict=True)
                ],
            }
        )
    return {
        "selectivekit_version": __version__,
        "settings": settings,
        "classes": [int(k) for k in full.classes],
        "n_images": len(evaluation.names),
        "n_voxels": int(sum(evaluation.voxels)),
        "aurc_dice": float(evaluation.aurc_dice),
        "dice_full": {"mean": float(full.mean), "std": float(full.std), "p5": float(full.p5)},
        "coverages": coverages,
        "per_image": per_image,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _write_curve(path: Path, curve: Any) -> None:
    coverage = np.asarray(curve.coverage, dtype=np.float64)
    mean_dice = np.asarray(curve.mean_dice, dtype=np.float64)
    threshold = np.asarray(curve.threshold, dtype=np.float64)
    if coverage.size > MAX_CURVE_POINTS:  # thin for plotting; keep both ends
        keep = np.unique(np.linspace(0, coverage.size - 1, MAX_CURVE_POINTS).round().astype(np.int64))
        coverage, mean_dice, threshold = coverage[keep], mean_dice[keep], threshold[keep]
    np.savez(path, coverage=coverage, mean_dice=mean_dice, threshold=threshold)


def _pct(value: float, digits: int = 2) -> str:
    return f"{100.0 * value:.{digits}f}"


def _report_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    k = settings["num_classes"]
    classes = f"0..{k - 1}" if settings["include_background"] else f"1..{k - 1}"
    full = report["dice_full"]
    lines = [
        "# selectivekit evaluation",
        "",
        f"- images: {report['n_images']}, voxels: {report['n_voxels']:,}",
        f"- classes evaluated: {classes} of {k}; uncertainty from `--{settings['source']}`; "
        f"{settings['mode']} computation",
        f"- AURC (risk = 1 - mean Dice): **{_pct(report['aurc_dice'], 3)} %**",
        f"- Dice at full coverage: {_pct(full['mean'])} ± {_pct(full['std'])} % "
        f"(5th percentile {_pct(full['p5'])} %)",
        "",
        "| Coverage | Realized coverage | Threshold | Dice (%) | Dice@5PCTL (%) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["coverages"]:
        lines.append(
            f"| {row['requested']:.2f} | {row['coverage']:.4f} | {row['threshold']:.6g} | "
            f"{_pct(row['mean'])} ± {_pct(row['std'])} | {_pct(row['p5'])} |"
        )
    lines += [
        "",
        "Coverage is global: one threshold for the whole set; referred voxels take the true label and the "
        "Dice is computed on all voxels. Dice is the mean over the evaluated classes of each image "
        "(a class absent from both prediction and truth counts 1.0); mean ± std (ddof 0) and the "
        "5th percentile are over images.",
        "",
        "![Risk-coverage](risk_coverage.png)",
        "![Dice-coverage](dice_coverage.png)",
        "![Per-image Dice](dice_histogram.png)",
        "",
    ]
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> None:
    # selectivekit.plotting builds figures without pyplot: no backend or open-figure state to manage
    fig.savefig(path, dpi=120)


def _evaluation_plots(folder: Path, evaluation: _Evaluation, report: dict[str, Any]) -> None:
    from . import plotting

    curve = evaluation.curve
    aurc = f"AURC {100 * evaluation.aurc_dice:.3f} %"
    # a DiceCoverageCurve is drawn with risk 1 - mean Dice, what aurc_dice integrates
    _save(plotting.plot_risk_coverage(curve, title=aurc), folder / "risk_coverage.png")
    _save(plotting.plot_dice_coverage(curve, title="Dice-coverage"), folder / "dice_coverage.png")
    runs = [evaluation.full.per_image_dice, *(r.per_image_dice for r in evaluation.at_coverage)]
    labels = ["coverage 1.00", *(f"coverage {row['coverage']:.2f}" for row in report["coverages"])]
    fig = plotting.plot_dice_histogram(
        [_floats(r) for r in runs], labels=labels, title=f"Per-image Dice ({report['n_images']} images)"
    )
    _save(fig, folder / "dice_histogram.png")


# --------------------------------------------------------------------------------------------------
# compare


def _load_report(folder: Path, which: str) -> dict[str, Any]:
    path = folder / REPORT_JSON
    if not folder.is_dir():
        msg = (
            f"`{which}` must be an output folder of `selectivekit evaluate`, got {str(folder)!r} "
            "(no such folder)."
        )
        raise CommandError(msg)
    if not path.is_file():
        msg = (
            f"`{which}` folder {str(folder)!r} has no {REPORT_JSON}; give an output folder of "
            "`selectivekit evaluate`."
        )
        raise CommandError(msg)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"`{which}` file {str(path)!r} is not valid JSON: {exc}."
        raise CommandError(msg) from exc
    required = ("n_images", "aurc_dice", "coverages", "per_image")
    missing = [key for key in required if key not in report]
    if missing:
        msg = (
            f"`{which}` file {str(path)!r} lacks {', '.join(missing)}; is it a `selectivekit evaluate` "
            "report?"
        )
        raise CommandError(msg)
    return report


def _compare(args: argparse.Namespace) -> int:
    run_a, run_b, out = Path(args.run_a), Path(args.run_b), Path(args.out)
    a = _load_report(run_a, "RUN_A")
    b = _load_report(run_b, "RUN_B")
    _check_out(out, COMPARISON_JSON, [run_a, run_b])
    name_a = args.name_a or run_a.resolve().name
    name_b = args.name_b or run_b.resolve().name
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    images_a = {row["name"]: row for row in a["per_image"]}
    images_b = {row["name"]: row for row in b["per_image"]}
    only_a = sorted(set(images_a) - set(images_b))
    only_b = sorted(set(images_b) - set(images_a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in RUN_A: {', '.join(only_a[:20])}{' ...' if len(only_a) > 20 else ''}")
        if only_b:
            parts.append(f"only in RUN_B: {', '.join(only_b[:20])}{' ...' if len(only_b) > 20 else ''}")
        msg = f"RUN_A and RUN_B must evaluate the same images; {'; '.join(parts)}."
        raise CommandError(msg)
    for key in ("num_classes", "include_background"):
        va, vb = a.get("settings", {}).get(key), b.get("settings", {}).get(key)
        if va != vb:
            msg = f"RUN_A and RUN_B must use the same `{key}`, got {va!r} and {vb!r}."
            raise CommandError(msg)
    rows_a = {row["requested"]: row for row in a["coverages"]}
    rows_b = {row["requested"]: row for row in b["coverages"]}
    common = [c for c in rows_a if c in rows_b]
    if not common:
        msg = (
            f"RUN_A and RUN_B share no coverage: {sorted(rows_a)} and {sorted(rows_b)}; "
            "run both with the same `--coverages`."
        )
        raise CommandError(msg)
    names = sorted(images_a)
    from .segmentation import compare_at_coverage

    comparison: dict[str, Any] = {
        "run_a": {"name": name_a, "folder": str(run_a), "aurc_dice": a["aurc_dice"]},
        "run_b": {"name": name_b, "folder": str(run_b), "aurc_dice": b["aurc_dice"]},
        "n_images": len(names),
        "coverages": [],
        "per_image": [{"name": name, "coverages": []} for name in names],
    }
    panels = []
    for requested in common:
        result_a = _result_from_report(a, images_a, names, requested, "RUN_A")
        result_b = _result_from_report(b, images_b, names, requested, "RUN_B")
        difference = compare_at_coverage(result_a, result_b)
        panels.append(difference)
        comparison["coverages"].append(
            {
                "requested": requested,
                "a": {k: rows_a[requested][k] for k in ("coverage", "threshold", "mean", "std", "p5")},
                "b": {k: rows_b[requested][k] for k in ("coverage", "threshold", "mean", "std", "p5")},
                "quadrant_share": {str(q): float(v) for q, v in difference.quadrant_share.items()},
                "on_axis_share": float(difference.on_axis_share),
            }
        )
        dc, dd = _floats(difference.coverage_difference), _floats(difference.dice_difference)
        for i, row in enumerate(comparison["per_image"]):
            row["coverages"].append(
                {"requested": requested, "coverage_difference": dc[i], "dice_difference": dd[i]}
            )
    comparison["paired"] = _paired_section(a, b, run_a, run_b, names, common, args)
    with _staging(out, COMPARISON_JSON) as staging:
        _write_json(staging / COMPARISON_JSON, comparison)
        _comparison_plots(staging, panels, run_a, run_b, name_a, name_b)
        markdown = _comparison_markdown(comparison) + _paired_markdown(comparison)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
    print(f"{PROG} compare: wrote {out} ({len(names)} images, {len(common)} coverages)", file=sys.stderr)
    return 0


def _result_from_report(
    report: dict[str, Any], images: dict[str, Any], names: list[str], requested: float, which: str
) -> Any:
    """The :class:`~selectivekit.segmentation.DiceAtCoverage` stored in an evaluate report."""
    from .segmentation import DiceAtCoverage

    row = next(r for r in report["coverages"] if r["requested"] == requested)
    dice, coverage, per_class = [], [], []
    for name in names:
        entry = [c for c in images[name].get("coverages", []) if c.get("requested") == requested]
        if len(entry) != 1:
            msg = f"`{which}` report has no per-image result for {name!r} at coverage {requested}."
            raise CommandError(msg)
        dice.append(entry[0]["dice"])
        coverage.append(entry[0]["coverage"])
        per_class.append(entry[0].get("dice_per_class", []))
    return DiceAtCoverage(
        requested=float(requested),
        threshold=float(row["threshold"]),
        coverage=float(row["coverage"]),
        per_image_dice=np.asarray(dice, dtype=np.float64),
        per_image_coverage=np.asarray(coverage, dtype=np.float64),
        per_class_dice=np.asarray(per_class, dtype=np.float64),
        mean=float(row["mean"]),
        std=float(row["std"]),
        p5=float(row["p5"]),
        classes=tuple(report.get("classes", ())),
    )


def _comparison_markdown(comparison: dict[str, Any]) -> str:
    a, b = comparison["run_a"], comparison["run_b"]
    lines = [
        f"# {a['name']} vs {b['name']}",
        "",
        f"{comparison['n_images']} images. AURC (%): {a['name']} **{_pct(a['aurc_dice'], 3)}**, "
        f"{b['name']} **{_pct(b['aurc_dice'], 3)}** (lower is better).",
        "",
        f"| Coverage | Dice (%) {a['name']} | Dice (%) {b['name']} | Dice@5PCTL (%) {a['name']} | "
        f"Dice@5PCTL (%) {b['name']} | Q1 | Q2 | Q3 | Q4 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in comparison["coverages"]:
        ra, rb, q = row["a"], row["b"], row["quadrant_share"]
        lines.append(
            f"| {row['requested']:.2f} | {_pct(ra['mean'])} ± {_pct(ra['std'])} | "
            f"{_pct(rb['mean'])} ± {_pct(rb['std'])} | {_pct(ra['p5'])} | {_pct(rb['p5'])} | "
            f"{_pct(q['1'], 1)} | {_pct(q['2'], 1)} | {_pct(q['3'], 1)} | {_pct(q['4'], 1)} |"
        )
    lines += [
        "",
        f"Quadrants of the per-image differences ({b['name']} - {a['name']}; x: coverage, y: Dice), "
        "as percentages of the images: Q1 both higher, Q2 lower coverage and higher Dice, Q3 both lower, "
        "Q4 higher coverage and lower Dice (the paper's Figure 2); images with a zero difference lie on an "
        "axis and are in no quadrant.",
        "",
        "![Figure 2](figure2.png)",
        "",
    ]
    return "\n".join(lines)


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
    calibrate.add_argument("--pred", metavar="DIR", help="predicted label maps (optional with --probs)")
    calibrate.add_argument("--label", metavar="DIR", required=True, help="true label maps")
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--uncertainty", metavar="DIR", help="uncertainty maps (higher = less confident)")
    source.add_argument("--probs", metavar="DIR", help="class probability maps; u = 1 - max p")
    calibrate.add_argument("--num-classes", metavar="K", type=_positive_int, required=True)
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
    calibrate.add_argument("--include-background", action="store_true", help="evaluate class 0 too")
    calibrate.add_argument("--label-map", metavar="V:C,...", type=_label_map, help="as for evaluate")
    calibrate.add_argument("--channel-axis", metavar="N", type=int, help="as for evaluate")
    calibrate.add_argument("--reverse-axes", action="store_true", help="as for evaluate")
    calibrate.add_argument(
        "--out", metavar="FILE", default="threshold.json", help="output file (default: %(default)s)"
    )
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(handler=_calibrate)


def _read_threshold_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        msg = (
            f"`--threshold` must be a file written by `selectivekit calibrate`, got {str(path)!r} "
            "(no such file)."
        )
        raise CommandError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"`--threshold` file {str(path)!r} is not valid JSON: {exc}."
        raise CommandError(msg) from exc
    if not isinstance(data, dict) or data.get("kind") != THRESHOLD_KIND or "threshold" not in data:
        msg = f"`--threshold` file {str(path)!r} was not written by `selectivekit calibrate`."
        raise CommandError(msg)
    t = data["threshold"]
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
        msg = f"`--threshold` file {str(path)!r} holds an invalid threshold {t!r}."
        raise CommandError(msg)
    return data


def _dice_at_threshold(
    pred: np.ndarray, label: np.ndarray, u: np.ndarray, threshold: float, num_classes: int, first: int
) -> tuple[float, list[float], int]:
    """Per-class Dice of one image after referring the voxels with ``u > threshold`` (from scratch)."""
    after = np.where(u > threshold, label, pred).astype(np.int64).reshape(-1)
    truth = label.astype(np.int64).reshape(-1)
    conf = np.bincount(truth * num_classes + after, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    den = 2 * tp + fp + fn
    dice = np.where(den == 0, 1.0, 2 * tp / np.where(den == 0, 1.0, den))[first:]
    return float(dice.mean()), [float(d) for d in dice], int(np.count_nonzero(u <= threshold))


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
            raise UsageError(msg)
        if args.n_resamples is None:
            args.n_resamples = 2000
        if args.seed is None:
            args.seed = 0
        extras = cls(args, num_classes, requested)
        if args.threshold is not None:
            data = _read_threshold_file(Path(args.threshold))
            settings = data.get("settings", {})
            for key, mine in (
                ("num_classes", num_classes),
                ("include_background", extras.include_background),
            ):
                if key in settings and settings[key] != mine:
                    msg = (
                        f"`--threshold` was calibrated with {key}={settings[key]!r}, but this evaluation "
                        f"uses {key}={mine!r}."
                    )
                    raise UsageError(msg)
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
                    raise CommandError(msg) from exc
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
            raise CommandError(msg)
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
        raise CommandError(msg)


def _extras_markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    ci = report.get("intervals")
    if ci is not None:
        level = f"{100 * ci['confidence']:g}"
        lines += [
            f"## Confidence intervals ({level} %)",
            "",
            f"Bootstrap over images ({ci['method']}, {ci['n_resamples']} resamples, seed {ci['seed']}): "
            "images are drawn with replacement and the global threshold is chosen again on each resampled "
            "set. The intervals describe the sampling noise of this test set, not of retraining or of other "
            "data."
            + (
                " The estimates are exact; the streaming figures above are computed on a grid of `u`."
                if report["settings"].get("mode") == "streaming"
                else ""
            ),
            "",
            f"| Statistic | Estimate (%) | {level} % interval (%) |",
            "|---|---:|---:|",
            f"| AURC | {_pct(ci['aurc_dice']['estimate'], 3)} | "
            f"[{_pct(ci['aurc_dice']['low'], 3)}, {_pct(ci['aurc_dice']['high'], 3)}] |",
        ]
        for row in ci["coverages"]:
            for label, key in (("Dice", "mean"), ("Dice@5PCTL", "p5")):
                e = row[key]
                lines.append(
                    f"| {label} at {row['requested']:.2f} | {_pct(e['estimate'])} | "
                    f"[{_pct(e['low'])}, {_pct(e['high'])}] |"
                )
        lines.append("")
    fixed = report.get("fixed_threshold")
    if fixed is not None:
        t = "refer everything" if fixed["refers_all"] else f"{fixed['threshold']:.6g}"
        target = fixed.get("max_dice_loss")
        lines += [
            "## Fixed threshold",
            "",
            f"- threshold from `{fixed['file']}`: {t} ({fixed.get('method')}, max Dice loss {target}, "
            f"delta {fixed.get('delta')}; calibration coverage {fixed.get('calibration_coverage')})",
            f"- coverage on these images: {fixed['coverage']:.4f}",
            f"- Dice after referral: {_pct(fixed['mean'])} ± {_pct(fixed['std'])} % "
            f"(5th percentile {_pct(fixed['p5'])} %)",
        ]
        if fixed.get("share_meeting_target") is not None:
            lines.append(f"- images with 1 - Dice <= {target}: {_pct(fixed['share_meeting_target'], 1)} %")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


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
        try:
            state = guarantees.ImageState.load(run / STATE_FILE)
        except (OSError, KeyError, ValueError) as exc:
            msg = f"`{which}` file {str(run / STATE_FILE)!r} cannot be read: {exc}."
            raise CommandError(msg) from exc
        order = [row["name"] for row in report["per_image"]]
        if state.n_items != len(order):
            msg = (
                f"`{which}` file {str(run / STATE_FILE)!r} holds {state.n_items} images, "
                f"its report {len(order)}."
            )
            raise CommandError(msg)
        position = {name: i for i, name in enumerate(order)}
        states.append(state.take([position[name] for name in names]))
    if len(names) < 2:
        msg = f"a paired comparison needs at least 2 images, got {len(names)}."
        raise CommandError(msg)
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
        f"Paired bootstrap over images ({paired['n_resamples']} resamples, BCa) and a permutation test that "
        f"swaps the two models' outputs image by image ({test}, two-sided). A negative AURC difference and a "
        f"positive Dice difference favour {b}.",
        "",
        f"| Statistic | Difference (%) | {level} % interval (%) | p-value |",
        "|---|---:|---:|---:|",
    ]
    rows = [("AURC", paired["aurc_dice"], 3)]
    rows += [(f"Dice at {row['requested']:.2f}", row["mean"], 2) for row in paired["coverages"]]
    for label, e, digits in rows:
        lines.append(
            f"| {label} | {100 * e['difference']:+.{digits}f} | [{100 * e['low']:+.{digits}f}, "
            f"{100 * e['high']:+.{digits}f}] | {e['p_value']:.4g} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def _calibrate(args: argparse.Namespace) -> int:
    num_classes: int = args.num_classes
    if num_classes < 2 and not args.include_background:
        msg = (
            f"`--num-classes` {num_classes} leaves no class to evaluate without `--include-background` "
            "(classes 1..K-1 are evaluated by default)."
        )
        raise UsageError(msg)
    if args.pred is None and args.probs is None:
        msg = "`--pred` is required with `--uncertainty` (it may be left out only with `--probs`)."
        raise UsageError(msg)
    if args.channel_axis is not None and args.probs is None:
        msg = "`--channel-axis` applies to `--probs` only."
        raise UsageError(msg)
    out = Path(args.out)
    if out.is_dir():
        msg = f"`--out` must be a file name, got the folder {str(out)!r}."
        raise CommandError(msg)
    if out.exists():
        try:
            previous = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or previous.get("kind") != THRESHOLD_KIND:
            msg = f"`--out` file {str(out)!r} exists and is not a threshold file; give a new file name."
            raise CommandError(msg)
    _needs_scipy()
    folders = {
        "--pred": args.pred,
        "--label": args.label,
        "--uncertainty": args.uncertainty,
        "--probs": args.probs,
    }
    folders = {role: Path(folder) for role, folder in folders.items() if folder is not None}
    cases = skio.pair_files(folders, array_roles=("--probs",))
    from tqdm import tqdm

    preds, labels, us = [], [], []
    for case in tqdm(cases, desc="calibrate", unit="image", disable=True if args.quiet else None):
        pred, label, u = skio.load_case(
            case,
            num_classes=num_classes,
            label_map=args.label_map,
            channel_axis=args.channel_axis,
            reverse_axes=bool(args.reverse_axes),
            pred="--pred" if args.pred is not None else None,
            uncertainty="--uncertainty" if args.uncertainty is not None else None,
            probs="--probs" if args.probs is not None else None,
        )
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
            "label_map": None if args.label_map is None else {str(k): v for k, v in args.label_map.items()},
            "source": "probs" if args.probs is not None else "uncertainty",
            "channel_axis": args.channel_axis,
            "reverse_axes": bool(args.reverse_axes),
            "folders": {role: str(folder) for role, folder in folders.items()},
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    note = (
        "refers everything (no threshold qualified)"
        if result.refers_all
        else f"threshold {result.threshold:.6g}"
    )
    print(
        f"{PROG} calibrate: wrote {out} ({result.n_images} images, {result.method}: {note}, calibration "
        f"coverage {result.coverage:.4f})",
        file=sys.stderr,
    )
    return 0

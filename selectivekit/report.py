"""The report of ``selectivekit evaluate`` and ``compare``: its schema, Markdown summaries, atomic output.

[`build_report`][selectivekit.report.build_report] writes the ``report.json`` payload that
[`load_report`][selectivekit.report.load_report] and
[`result_from_report`][selectivekit.report.result_from_report] read back,
[`build_comparison`][selectivekit.report.build_comparison] the ``comparison.json`` of two reports;
[`atomic_folder`][selectivekit.report.atomic_folder] makes an output folder appear whole or not at all. The
functions name their
arguments in messages (``out``, ``coverages``); the command line translates them to its flags.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .segmentation import DiceAtCoverage, PerImageComparison, compare_at_coverage

__all__ = [
    "COMPARISON_JSON",
    "CURVE_FILE",
    "MAX_CURVE_POINTS",
    "REPORT_JSON",
    "Evaluation",
    "ReportError",
    "atomic_folder",
    "atomic_write_text",
    "build_comparison",
    "build_report",
    "check_out_folder",
    "comparison_markdown",
    "floats",
    "load_report",
    "percent",
    "read_json",
    "report_markdown",
    "result_from_report",
    "write_curve",
    "write_json",
]

REPORT_JSON = "report.json"
"""File name of an evaluation report."""
COMPARISON_JSON = "comparison.json"
"""File name of a comparison of two reports."""
CURVE_FILE = "curve.npz"
"""File name of the Dice-coverage curve beside a report."""
MAX_CURVE_POINTS = 20_001
"""``curve.npz`` keeps the exact curve, thinned to at most this many points (for plots)."""


class ReportError(ValueError):
    """A report folder or file that cannot be used (the message says why)."""


# --------------------------------------------------------------------------------------------------
# all-or-nothing output folder


def check_out_folder(out: Path, marker: str, inputs: Sequence[Path] = ()) -> None:
    """``out`` can receive a report: it differs from every input folder and is new, empty, or a previous
    output (it holds the file ``marker``)."""
    resolved = out.resolve()
    for path in inputs:
        if resolved == path.resolve():
            msg = f"`out` must differ from the input folder {str(path)!r}."
            raise ReportError(msg)
    if out.exists() and not out.is_dir():
        msg = f"`out` must be a folder, got the file {str(out)!r}."
        raise ReportError(msg)
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        msg = (
            f"`out` folder {str(out)!r} exists and holds other files (no {marker}); "
            "give a new or empty folder, or a previous output of this command to replace it."
        )
        raise ReportError(msg)


@contextmanager
def atomic_folder(out: Path, marker: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` only if the block completes."""
    out = out.resolve()
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the report is an ordinary folder
    try:
        yield staging
        check_out_folder(out, marker)  # nothing appeared there while we worked
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that the file appears whole or not at all (a temporary file, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------------
# the schema


@dataclass
class Evaluation:
    """One evaluation of a set of images: what [`build_report`][selectivekit.report.build_report] writes."""

    names: list[str]
    voxels: list[int]
    aurc_dice: float
    full: Any  # DiceAtCoverage at coverage 1.0 (nothing referred)
    at_coverage: list[Any]  # DiceAtCoverage per requested coverage
    curve: Any  # DiceCoverageCurve
    path: str = "exact"  # "exact" (the in-memory values) or "grid" (the streaming grid, with bounds)
    aurc_dice_bound: tuple[float, float] | None = None  # lowest and highest exact aurc_dice (grid path)
    bounds: list[dict[str, tuple[float, float]]] | None = None  # per requested coverage: mean, p5, coverage


def floats(values: Any) -> list[float]:
    """Any array (or scalar) as a flat list of Python floats (JSON)."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def build_report(
    evaluation: Evaluation, requested: Sequence[float], settings: dict[str, Any]
) -> dict[str, Any]:
    """The ``report.json`` payload of an evaluation (the schema that
    [`load_report`][selectivekit.report.load_report] reads back).

    Keys: ``selectivekit_version``, ``settings`` (as given), ``classes``, ``n_images``, ``n_voxels``,
    ``path`` (``"exact"``: the values of the in-memory functions; ``"grid"``: computed on the streaming
    grid of ``u`` past the memory budget), ``aurc_dice`` and ``aurc_dice_bound`` (``[low, high]``: the
    lowest and highest exact value consistent with the grid; ``[aurc_dice, aurc_dice]`` on the exact
    path), ``dice_full`` (mean, std, p5 at coverage 1, always exact), ``coverages`` (one row per requested
    coverage: requested, realized coverage, threshold, mean, std, p5, and the bounds ``mean_bound``,
    ``p5_bound`` and ``coverage_bound``) and ``per_image`` (name, voxels, full-coverage Dice and per-class
    Dice, and per requested coverage its Dice, coverage and class Dice).
    """
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
    for i, row in enumerate(coverages):
        bound = evaluation.bounds[i] if evaluation.bounds is not None else None
        for key in ("mean", "p5", "coverage"):
            row[f"{key}_bound"] = floats(bound[key] if bound is not None else (row[key], row[key]))
    aurc_bound = evaluation.aurc_dice_bound
    if aurc_bound is None:
        aurc_bound = (evaluation.aurc_dice, evaluation.aurc_dice)
    per_image = []
    full_dice = floats(full.per_image_dice)
    full_classes = np.asarray(full.per_class_dice, dtype=np.float64)
    at = [
        (
            floats(r.per_image_dice),
            floats(r.per_image_coverage),
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
                "dice_full_per_class": floats(full_classes[i]),
                "coverages": [
                    {
                        "requested": float(req),
                        "dice": dice[i],
                        "coverage": cov[i],
                        "dice_per_class": floats(per_class[i]),
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
        "path": evaluation.path,
        "aurc_dice": float(evaluation.aurc_dice),
        "aurc_dice_bound": floats(aurc_bound),
        "dice_full": {"mean": float(full.mean), "std": float(full.std), "p5": float(full.p5)},
        "coverages": coverages,
        "per_image": per_image,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (NaN and infinity refused)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def write_curve(path: Path, curve: Any) -> None:
    """Write a Dice-coverage curve to ``.npz``, thinned to at most `MAX_CURVE_POINTS` points."""
    coverage = np.asarray(curve.coverage, dtype=np.float64)
    mean_dice = np.asarray(curve.mean_dice, dtype=np.float64)
    threshold = np.asarray(curve.threshold, dtype=np.float64)
    if coverage.size > MAX_CURVE_POINTS:  # thin for plotting; keep both ends
        keep = np.unique(np.linspace(0, coverage.size - 1, MAX_CURVE_POINTS).round().astype(np.int64))
        coverage, mean_dice, threshold = coverage[keep], mean_dice[keep], threshold[keep]
    np.savez(path, coverage=coverage, mean_dice=mean_dice, threshold=threshold)


def percent(value: float, digits: int = 2) -> str:
    """``value`` as a percentage with ``digits`` decimals (``0.1234`` -> ``"12.34"``), for the Markdown."""
    return f"{100.0 * value:.{digits}f}"


def report_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the Table-1 layout of a [`build_report`][selectivekit.report.build_report] payload."""
    settings = report["settings"]
    k = settings["num_classes"]
    classes = f"0..{k - 1}" if settings["include_background"] else f"1..{k - 1}"
    full = report["dice_full"]
    lines = [
        "# selectivekit evaluation",
        "",
        f"- images: {report['n_images']}, voxels: {report['n_voxels']:,}",
        f"- classes evaluated: {classes} of {k}; uncertainty from `--{settings['source']}`; "
        f"{settings['mode']} computation ({report.get('path', 'exact')} path)",
        f"- AURC (risk = 1 - mean Dice): **{percent(report['aurc_dice'], 3)} %**" + _bound_note(report),
        f"- Dice at full coverage: {percent(full['mean'])} ± {percent(full['std'])} % "
        f"(5th percentile {percent(full['p5'])} %)",
        "",
        "| Coverage | Realized coverage | Threshold | Dice (%) | Dice@5PCTL (%) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["coverages"]:
        lines.append(
            f"| {row['requested']:.2f} | {row['coverage']:.4f} | {row['threshold']:.6g} | "
            f"{percent(row['mean'])} ± {percent(row['std'])} | {percent(row['p5'])} |"
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


def _bound_note(report: dict[str, Any]) -> str:
    """On the grid path: the bound of the AURC, in the Markdown."""
    if report.get("path") != "grid":
        return ""
    low, high = report["aurc_dice_bound"]
    return f" (grid of `u`; the exact value lies in [{percent(low, 3)}, {percent(high, 3)}] %)"


def read_json(path: Path, which: str) -> Any:
    """The JSON content of ``path``; ``which`` names the file in the message when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"`{which}` file {str(path)!r} is not valid JSON: {exc}."
        raise ReportError(msg) from exc


def load_report(folder: Path, which: str) -> dict[str, Any]:
    """Read back the ``report.json`` of ``folder``; ``which`` names the folder in messages."""
    path = folder / REPORT_JSON
    if not folder.is_dir():
        msg = (
            f"`{which}` must be an output folder of `selectivekit evaluate`, got {str(folder)!r} "
            "(no such folder)."
        )
        raise ReportError(msg)
    if not path.is_file():
        msg = (
            f"`{which}` folder {str(folder)!r} has no {REPORT_JSON}; give an output folder of "
            "`selectivekit evaluate`."
        )
        raise ReportError(msg)
    report = read_json(path, which)
    required = ("n_images", "aurc_dice", "coverages", "per_image")
    missing = [key for key in required if key not in report]
    if missing:
        msg = (
            f"`{which}` file {str(path)!r} lacks {', '.join(missing)}; is it a `selectivekit evaluate` "
            "report?"
        )
        raise ReportError(msg)
    return report


def build_comparison(
    a: dict[str, Any], b: dict[str, Any], run_a: Path, run_b: Path, name_a: str, name_b: str
) -> tuple[dict[str, Any], list[PerImageComparison]]:
    """The ``comparison.json`` payload of two reports of the same images, and the per-coverage comparisons.

    The reports must evaluate the same images with the same classes and share at least one requested
    coverage; each shared coverage gets the per-image differences ``B - A`` and the quadrant shares of the
    paper's Figure 2.
    """
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
        raise ReportError(msg)
    for key in ("num_classes", "include_background"):
        va, vb = a.get("settings", {}).get(key), b.get("settings", {}).get(key)
        if va != vb:
            msg = f"RUN_A and RUN_B must use the same `{key}`, got {va!r} and {vb!r}."
            raise ReportError(msg)
    rows_a = {row["requested"]: row for row in a["coverages"]}
    rows_b = {row["requested"]: row for row in b["coverages"]}
    common = [c for c in rows_a if c in rows_b]
    if not common:
        msg = (
            f"RUN_A and RUN_B share no coverage: {sorted(rows_a)} and {sorted(rows_b)}; "
            "run both with the same `coverages`."
        )
        raise ReportError(msg)
    names = sorted(images_a)
    comparison: dict[str, Any] = {
        "run_a": {"name": name_a, "folder": str(run_a), "aurc_dice": a["aurc_dice"]},
        "run_b": {"name": name_b, "folder": str(run_b), "aurc_dice": b["aurc_dice"]},
        "n_images": len(names),
        "coverages": [],
        "per_image": [{"name": name, "coverages": []} for name in names],
    }
    panels = []
    for requested in common:
        result_a = result_from_report(a, images_a, names, requested, "RUN_A")
        result_b = result_from_report(b, images_b, names, requested, "RUN_B")
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
        dc, dd = floats(difference.coverage_difference), floats(difference.dice_difference)
        for i, row in enumerate(comparison["per_image"]):
            row["coverages"].append(
                {"requested": requested, "coverage_difference": dc[i], "dice_difference": dd[i]}
            )
    return comparison, panels


def result_from_report(
    report: dict[str, Any], images: dict[str, Any], names: list[str], requested: float, which: str
) -> Any:
    """The [`DiceAtCoverage`][selectivekit.DiceAtCoverage] stored in a report at ``requested``."""
    row = next(r for r in report["coverages"] if r["requested"] == requested)
    dice, coverage, per_class = [], [], []
    for name in names:
        entry = [c for c in images[name].get("coverages", []) if c.get("requested") == requested]
        if len(entry) != 1:
            msg = f"`{which}` report has no per-image result for {name!r} at coverage {requested}."
            raise ReportError(msg)
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


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """``report.md`` of a comparison: the side-by-side table and the quadrant shares."""
    a, b = comparison["run_a"], comparison["run_b"]
    lines = [
        f"# {a['name']} vs {b['name']}",
        "",
        f"{comparison['n_images']} images. AURC (%): {a['name']} **{percent(a['aurc_dice'], 3)}**, "
        f"{b['name']} **{percent(b['aurc_dice'], 3)}** (lower is better).",
        "",
        f"| Coverage | Dice (%) {a['name']} | Dice (%) {b['name']} | Dice@5PCTL (%) {a['name']} | "
        f"Dice@5PCTL (%) {b['name']} | Q1 | Q2 | Q3 | Q4 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in comparison["coverages"]:
        ra, rb, q = row["a"], row["b"], row["quadrant_share"]
        lines.append(
            f"| {row['requested']:.2f} | {percent(ra['mean'])} ± {percent(ra['std'])} | "
            f"{percent(rb['mean'])} ± {percent(rb['std'])} | {percent(ra['p5'])} | {percent(rb['p5'])} | "
            f"{percent(q['1'], 1)} | {percent(q['2'], 1)} | {percent(q['3'], 1)} | {percent(q['4'], 1)} |"
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

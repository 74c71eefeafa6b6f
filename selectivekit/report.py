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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._lib import (
    MANIFEST,
    ReportError,
    atomic_file,
    atomic_folder,
    atomic_write_text,
    check_out_folder,
    markdown_to_html,
)
from .segmentation import DiceAtCoverage, PerImageComparison, compare_at_coverage

__all__ = [
    "AURC_HEADLINE",
    "COMPARISON_JSON",
    "CURVE_FILE",
    "MANIFEST",
    "MAX_CURVE_POINTS",
    "MIN_IMAGES_FOR_INTERVALS",
    "REPORT_JSON",
    "TERMS",
    "TERM_NOTES",
    "Evaluation",
    "ReportError",
    "absent_classes_note",
    "atomic_file",
    "atomic_folder",
    "atomic_write_text",
    "build_comparison",
    "build_report",
    "check_out_folder",
    "classes_text",
    "comparison_markdown",
    "few_images_note",
    "floats",
    "load_report",
    "markdown_cell",
    "per_case_markdown",
    "per_class_markdown",
    "percent",
    "read_json",
    "region_names",
    "regions_text",
    "report_html",
    "report_markdown",
    "result_from_report",
    "source_text",
    "terms_legend",
    "threshold_text",
    "worst_first",
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
    class_voxels: tuple[list[int], list[int]] | None = None  # labelled and predicted voxels per class


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
    ``p5_bound`` and ``coverage_bound``), ``per_class`` (one row per evaluated class: its labelled and
    predicted voxels, and its Dice averaged over the images at coverage 1 and at each requested coverage),
    ``absent_classes`` (evaluated classes that no image labels or predicts: their Dice counts 1.0),
    ``per_image`` (name, voxels, full-coverage Dice and per-class Dice, and per requested coverage its
    Dice, coverage and class Dice; in the order of the cases) and ``worst_first`` (the case names by Dice
    at full coverage, lowest first, ties by name).
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
        "per_class": _per_class_rows(evaluation, requested, settings.get("regions")),
        "absent_classes": _absent_classes(evaluation),
        "per_image": per_image,
        "worst_first": worst_first([(row["name"], row["dice_full"]) for row in per_image]),
    }


def worst_first(dice_by_name: Sequence[tuple[str, float]]) -> list[str]:
    """The names of ``(name, Dice)`` pairs, lowest Dice first, ties by name: the cases to look at first."""
    return [name for name, _ in sorted(dice_by_name, key=lambda pair: (pair[1], pair[0]))]


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


TERMS: dict[str, str] = {
    "coverage": "Coverage",
    "realized": "Realized coverage",
    "threshold": "Threshold",
    "model": "Model",
    "dice": "Dice % (mean ± std)",
    "p5": "Dice % (5th percentile)",
    "aurc": "AURC %",
    "dice_full": "Dice % at full coverage",
}
"""The names of the reported numbers, shared by every report and summary: ``selectivekit evaluate`` and
``compare`` (``report.md``, ``report.html``, the terminal) and the reference trainers' ``reproduce``."""

TERM_NOTES: dict[str, str] = {
    "coverage": "the share of voxels the model is asked to keep; the others are referred to an annotator",
    "realized": (
        "the share actually kept at the one global threshold; it can exceed the requested coverage because "
        "voxels of equal uncertainty are never split"
    ),
    "threshold": "voxels with uncertainty u <= threshold keep the prediction, the others are referred",
    "model": "the model (or run) the row is about",
    "dice": (
        "the per-image Dice after referral (referred voxels take the true label; the Dice is computed on all "
        "voxels), mean ± standard deviation over the images"
    ),
    "p5": "the 5th percentile of that per-image Dice over the images: how the worst images fare",
    "aurc": "the area under the risk-coverage curve with risk = 1 - mean Dice; lower is better",
    "dice_full": "the mean per-image Dice with nothing referred",
}
"""One line per entry of [`TERMS`][selectivekit.report.TERMS]: what the number is."""

AURC_HEADLINE = "AURC % (risk = 1 - mean Dice, lower is better)"
"""How the summaries introduce the AURC."""

MIN_IMAGES_FOR_INTERVALS = 10
"""Below this many images, every interval and test printed carries a warning (bootstrap and t intervals from
a handful of images are unstable and usually too narrow)."""


def few_images_note(n_images: int) -> str:
    """The warning printed beside intervals and tests computed from fewer than
    [`MIN_IMAGES_FOR_INTERVALS`][selectivekit.report.MIN_IMAGES_FOR_INTERVALS] images; ``""`` from that many
    on."""
    if n_images >= MIN_IMAGES_FOR_INTERVALS:
        return ""
    return (
        f"Warning: computed from only {n_images} images; with fewer than {MIN_IMAGES_FOR_INTERVALS} images "
        "intervals and p-values are unreliable (the intervals are usually too narrow)."
    )


def terms_legend(keys: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Markdown list lines explaining the columns ``keys`` of [`TERMS`][selectivekit.report.TERMS] (one line
    each), followed by the lines ``extra`` (each given as ``"**name**: what it is"``)."""
    return [f"- **{TERMS[key]}**: {TERM_NOTES[key]}." for key in keys] + [f"- {line}" for line in extra]


def threshold_text(threshold: float) -> str:
    """A threshold on the uncertainty as the reports print it: 4 significant digits, trailing zeros kept."""
    return f"{threshold:#.4g}"


def classes_text(classes: Sequence[int], num_classes: int) -> str:
    """``"1..7 of 0..7 (background 0 left out)"``: the evaluated classes of ``num_classes``."""
    ids = sorted(int(k) for k in classes)

    def span(values: list[int]) -> str:
        if not values:
            return "none"
        if len(values) == 1:
            return str(values[0])
        if values == list(range(values[0], values[-1] + 1)):
            return f"{values[0]}..{values[-1]}"
        return ", ".join(map(str, values))

    background = "background 0 included" if 0 in ids else "background 0 left out"
    return f"{span(ids)} of {span(list(range(num_classes)))} ({background})"


def markdown_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (``|`` escaped, line breaks removed)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def report_html(markdown: str, folder: Path | None = None, *, title: str | None = None) -> str:
    """``report.html``: the Markdown of a report as one self-contained HTML page.

    Headings, lists, quotes and tables become HTML, all text escaped; every ``![caption](file.png)`` is
    read from ``folder`` and inlined as a ``data:image/png;base64`` URI; the style sheet is inline. The page
    loads nothing else (no script, no style sheet, no image, no font), so it can be sent by e-mail.

    Parameters
    ----------
    markdown : str
        The text of ``report.md``.
    folder : pathlib.Path, optional
        The report's folder, where its figures are; a figure that is not a PNG file there is replaced by a
        line saying so.
    title : str, optional
        The page title (default: the first heading).

    Returns
    -------
    str
        The HTML document.
    """
    return markdown_to_html(markdown, folder, title=title)


def source_text(settings: dict[str, Any]) -> str:
    """Where the uncertainty maps came from, in words (for probabilities: measure, folders, temperature)."""
    if settings.get("source") != "probs":
        return f"uncertainty from `--{settings.get('source', 'uncertainty')}`"
    folders = sum(1 for flag in settings.get("folders", {}) if flag.startswith("--probs"))
    temperature = settings.get("temperature")
    return (f"uncertainty `{settings.get('uncertainty_measure') or 'msp'}` of `--probs`"
            + (f" ({folders} folders, their mean prediction)" if folders > 1 else "")
            + (f", temperature {temperature:.4g}" if temperature is not None else ""))  # fmt: skip


def report_markdown(report: dict[str, Any], extras: str = "") -> str:
    """``report.md``: the Table-1 layout of a [`build_report`][selectivekit.report.build_report] payload.

    ``extras`` (Markdown: the intervals, a fixed threshold) goes after the figures and before the per-case
    table, which can be long."""
    settings = report["settings"]
    k = settings["num_classes"]
    classes = report.get("classes") or list(range(0 if settings["include_background"] else 1, k))
    full = report["dice_full"]
    regions = settings.get("regions")
    if regions:
        counted = f"voxels: {report['n_voxels'] // len(regions):,} ({len(regions)} regions each)"
        evaluated = f"regions evaluated (overlapping, each a binary structure): {regions_text(regions)}"
    else:
        counted = f"voxels: {report['n_voxels']:,}"
        evaluated = f"classes evaluated: {classes_text(classes, k)}"
    lines = [
        "# selectivekit evaluation",
        "",
        f"- images: {report['n_images']}, {counted}",
        f"- {evaluated}; {source_text(settings)}; "
        f"{settings['mode']} computation, "
        + ("exact values" if report.get("path", "exact") == "exact" else "values on a grid of `u`, bounded"),
        f"- {AURC_HEADLINE}: **{percent(report['aurc_dice'], 3)}**" + _bound_note(report),
        f"- {TERMS['dice_full']}: {percent(full['mean'])} ± {percent(full['std'])} "
        f"(5th percentile {percent(full['p5'])})",
        "",
        "| " + " | ".join(TERMS[key] for key in ("coverage", "realized", "threshold", "dice", "p5")) + " |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["coverages"]:
        lines.append(
            f"| {row['requested']:.2f} | {row['coverage']:.3f} | {threshold_text(row['threshold'])} | "
            f"{percent(row['mean'])} ± {percent(row['std'])} | {percent(row['p5'])} |"
        )
    lines += [
        "",
        *terms_legend(("coverage", "realized", "threshold", "dice", "p5")),
        "",
        "Coverage is global: one threshold for the whole set of images. Each image's Dice is the mean over "
        f"the evaluated {'regions' if regions else 'classes'} (a {'region' if regions else 'class'} absent "
        "from both prediction and truth counts 1.0); ± is the standard deviation of the per-image Dice over "
        "the images."
        + (
            " With regions, coverage is the share of (region, voxel) pairs kept: a voxel may be kept in one "
            "region and referred in another when each region has its own uncertainty map."
            if regions
            else ""
        ),
        "",
        "![Risk-coverage](risk_coverage.png)",
        "![Dice-coverage](dice_coverage.png)",
        "![Per-image Dice, one panel per coverage](dice_histogram.png)",
        "",
        *([extras.rstrip("\n"), ""] if extras else []),
        *per_case_markdown(report),
    ]
    return "\n".join(lines) + "\n"


def per_case_markdown(report: dict[str, Any]) -> list[str]:
    """The per-case table of an evaluation report, worst first: each case's Dice at full coverage and at
    every requested coverage, in %, sorted by the Dice at full coverage (lowest first, ties by name)."""
    rows = {row["name"]: row for row in report["per_image"]}
    order = report.get("worst_first") or worst_first([(n, r["dice_full"]) for n, r in rows.items()])
    requested = [row["requested"] for row in report["coverages"]]
    lines = [
        "## Per case, worst first",
        "",
        f"Every image, sorted by its {TERMS['dice_full']} (lowest first): the cases to look at first. The "
        "other columns give its Dice after referral at each coverage.",
        "",
        "| Case | "
        + " | ".join([TERMS["dice_full"], *(f"Dice % at coverage {c:.2f}" for c in requested)])
        + " |",
        "|:---|" + "---:|" * (1 + len(requested)),
    ]
    for name in order:
        row = rows[name]
        at = {c["requested"]: c["dice"] for c in row.get("coverages", [])}
        cells = [percent(row["dice_full"]), *(percent(at[c]) if c in at else "" for c in requested)]
        lines.append(f"| {markdown_cell(name)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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
    except RecursionError:
        msg = f"`{which}` file {str(path)!r} is not a file selectivekit wrote: its JSON is nested too deeply."
        raise ReportError(msg) from None


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
    missing = [key for key in required if not isinstance(report, dict) or key not in report]
    if missing:
        msg = (
            f"`{which}` file {str(path)!r} lacks {', '.join(missing)}; is it a `selectivekit evaluate` "
            "report?"
        )
        raise ReportError(msg)
    problem = _schema_problem(report)
    if problem is not None:
        msg = f"`{which}` file {str(path)!r} is damaged: {problem}."
        raise ReportError(msg)
    return report


def _schema_problem(report: dict[str, Any]) -> str | None:
    """What of the report's schema (the fields that a comparison reads) is missing or of the wrong type."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def rows(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(row, dict) for row in value)

    def fields(row: dict[str, Any], keys: Sequence[str], where: str) -> str | None:
        bad = next((key for key in keys if not number(row.get(key))), None)
        if bad is None:
            return None
        got = "nothing" if bad not in row else repr(row[bad])[:40]
        return f"`{where}.{bad}` must be a number, got {got}"

    if not isinstance(report["n_images"], int) or isinstance(report["n_images"], bool):
        return f"`n_images` must be an integer, got {repr(report['n_images'])[:40]}"
    if not number(report["aurc_dice"]):
        return f"`aurc_dice` must be a number, got {repr(report['aurc_dice'])[:40]}"
    full = report.get("dice_full", {"mean": 0.0})
    if not isinstance(full, dict) or not number(full.get("mean")):
        return "`dice_full.mean` must be a number"
    if not rows(report["coverages"]) or not rows(report["per_image"]):
        return "`coverages` and `per_image` must be lists of rows"
    for i, row in enumerate(report["coverages"]):
        keys = ("requested", "coverage", "threshold", "mean", "std", "p5")
        problem = fields(row, keys, f"coverages[{i}]")
        if problem is not None:
            return problem
    for i, row in enumerate(report["per_image"]):
        if not isinstance(row.get("name"), str):
            return f"`per_image[{i}].name` must be a string"
        entries = row.get("coverages", [])
        if not rows(entries):
            return f"`per_image[{i}].coverages` must be a list of rows"
        for j, entry in enumerate(entries):
            problem = fields(entry, ("requested", "dice", "coverage"), f"per_image[{i}].coverages[{j}]")
            if problem is not None:
                return problem
    return None


def build_comparison(
    a: dict[str, Any], b: dict[str, Any], run_a: Path, run_b: Path, name_a: str, name_b: str
) -> tuple[dict[str, Any], list[PerImageComparison]]:
    """The ``comparison.json`` payload of two reports of the same images, and the per-coverage comparisons.

    The reports must evaluate the same images with the same classes and share at least one requested
    coverage; each shared coverage gets the per-image differences ``B - A`` and the quadrant shares of the
    paper's Figure 2. ``per_image`` holds each image's Dice at full coverage in both runs and, per shared
    coverage, both Dice values and the differences; ``worst_first`` the names by the lower of the two runs'
    Dice at full coverage, lowest first (ties by name).
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
    for key in ("num_classes", "include_background", "regions"):
        va, vb = a.get("settings", {}).get(key), b.get("settings", {}).get(key)
        if _in_order(va) != _in_order(vb):
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
        "run_a": {
            "name": name_a,
            "folder": str(run_a),
            "aurc_dice": a["aurc_dice"],
            "dice_full": a.get("dice_full"),
        },
        "run_b": {
            "name": name_b,
            "folder": str(run_b),
            "aurc_dice": b["aurc_dice"],
            "dice_full": b.get("dice_full"),
        },
        "n_images": len(names),
        "coverages": [],
        "per_image": [
            {
                "name": name,
                "dice_full_a": images_a[name].get("dice_full"),
                "dice_full_b": images_b[name].get("dice_full"),
                "coverages": [],
            }
            for name in names
        ],
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
        da, db = floats(result_a.per_image_dice), floats(result_b.per_image_dice)
        for i, row in enumerate(comparison["per_image"]):
            row["coverages"].append(
                {
                    "requested": requested,
                    "coverage_difference": dc[i],
                    "dice_difference": dd[i],
                    "dice_a": da[i],
                    "dice_b": db[i],
                }
            )
    full = [(row["name"], row["dice_full_a"], row["dice_full_b"]) for row in comparison["per_image"]]
    if all(isinstance(a, (int, float)) and isinstance(b, (int, float)) for _, a, b in full):
        comparison["worst_first"] = worst_first([(name, min(a, b)) for name, a, b in full])
    return comparison, panels


def _in_order(value: Any) -> Any:
    """A setting compared with its order: the regions of a report are in order (class ``r + 1`` is region
    ``r``), which dict equality ignores."""
    return list(value.items()) if isinstance(value, dict) else value


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


def comparison_markdown(comparison: dict[str, Any], *, curves: bool = True, extras: str = "") -> str:
    """``report.md`` of a comparison: the side-by-side table and the quadrant shares; ``curves``: the folder
    has the two runs' Dice-coverage curves (``dice_coverage.png``); ``extras`` (Markdown: the paired
    intervals and tests) goes before the per-case table, which can be long."""
    a, b = comparison["run_a"], comparison["run_b"]
    na, nb = markdown_cell(a["name"]), markdown_cell(b["name"])
    lines = [
        f"# {na} vs {nb}",
        "",
        f"{comparison['n_images']} images. A = {na} (`{a['folder']}`), B = {nb} (`{b['folder']}`); "
        "differences are B − A.",
        "",
        f"- {AURC_HEADLINE}: {na} **{percent(a['aurc_dice'], 3)}**, {nb} **{percent(b['aurc_dice'], 3)}**, "
        f"B − A {100 * (b['aurc_dice'] - a['aurc_dice']):+.3f}",
    ]
    if a.get("dice_full") and b.get("dice_full"):
        fa, fb = a["dice_full"], b["dice_full"]
        lines.append(
            f"- {TERMS['dice_full']}: {na} {percent(fa['mean'])} ± {percent(fa['std'])}, "
            f"{nb} {percent(fb['mean'])} ± {percent(fb['std'])}"
        )
    columns = [TERMS[key] for key in ("coverage", "model", "realized", "dice", "p5")]
    lines += ["", "| " + " | ".join(columns) + " |", "|---:|:---|---:|---:|---:|"]
    for row in comparison["coverages"]:
        for name, r in ((na, row["a"]), (nb, row["b"])):
            lines.append(
                f"| {row['requested']:.2f} | {name} | {r['coverage']:.3f} | "
                f"{percent(r['mean'])} ± {percent(r['std'])} | {percent(r['p5'])} |"
            )
    lines += [
        "",
        *terms_legend(("coverage", "model", "realized", "dice", "p5")),
        "",
        f"Figure 2 (below) draws every image as a dot: x is its coverage under {nb} minus under {na} (the "
        f"share of the image {nb} keeps, minus the share {na} keeps), y its Dice after referral under {nb} "
        f"minus under {na}, in percentage points. The red numbers in its corners, and the table below, are "
        f"the percentages of the images in each quadrant: Q1 (upper right) {nb} keeps more of the image and "
        f"scores a higher Dice, Q2 (upper left) keeps less and scores higher, Q3 (lower left) keeps less and "
        f"scores lower, Q4 (lower right) keeps more and scores lower. An image with a zero difference lies "
        "on an axis and is in no quadrant.",
        "",
        "| Coverage | Q1 | Q2 | Q3 | Q4 | on an axis |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in comparison["coverages"]:
        q = row["quadrant_share"]
        lines.append(
            f"| {row['requested']:.2f} | "
            + " | ".join(percent(q[k], 1) for k in "1234")
            + f" | {percent(row['on_axis_share'], 1)} |"
        )
    lines += [
        "",
        f"![Figure 2: per-image differences {nb} − {na}, one dot per image, one panel per coverage (all "
        "panels on the same axes). Red: the percentage of images in each quadrant; upper right: "
        f"{nb} keeps more of the image and scores a higher Dice.](figure2.png)",
        "",
    ]
    if curves:
        lines[-1:-1] = ["![Dice-coverage](dice_coverage.png)"]
    if extras:
        lines += [extras.rstrip("\n")]
    lines += _comparison_cases(comparison, na, nb)
    return "\n".join(lines) + "\n"


def _comparison_cases(comparison: dict[str, Any], na: str, nb: str) -> list[str]:
    """The per-case table of a comparison, worst first (when both reports had per-image Dice)."""
    order = comparison.get("worst_first")
    if not order:
        return []
    rows = {row["name"]: row for row in comparison["per_image"]}
    requested = [row["requested"] for row in comparison["coverages"]]
    header = [
        f"{na}: {TERMS['dice_full']}",
        f"{nb}: {TERMS['dice_full']}",
        *(f"B − A: Dice % at coverage {c:.2f}" for c in requested),
    ]
    lines = [
        "## Per case, worst first",
        "",
        f"Every image, sorted by the lower of its two {TERMS['dice_full']} (lowest first): the cases to look "
        "at first. The last columns give B − A, the Dice after referral of B minus that of A, in percentage "
        "points.",
        "",
        "| Case | " + " | ".join(header) + " |",
        "|:---|" + "---:|" * len(header),
    ]
    for name in order:
        row = rows[name]
        at = {c["requested"]: c["dice_difference"] for c in row["coverages"]}
        cells = [
            percent(row["dice_full_a"]),
            percent(row["dice_full_b"]),
            *(f"{100 * at[c]:+.2f}" for c in requested),
        ]
        lines.append(f"| {markdown_cell(name)} | " + " | ".join(cells) + " |")
    return ["", *lines, ""]


def _absent_classes(evaluation: Evaluation) -> list[int]:
    """The evaluated classes that no image labels or predicts (their Dice counts 1.0 in every image)."""
    if evaluation.class_voxels is None:
        return []
    labelled, predicted = evaluation.class_voxels
    classes = [int(k) for k in evaluation.full.classes]
    return [k for k, a, b in zip(classes, labelled, predicted, strict=True) if a == 0 and b == 0]


def _per_class_rows(
    evaluation: Evaluation, requested: Sequence[float], regions: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per evaluated class: its voxels labelled and predicted (where known) and its Dice averaged
    over the images, at coverage 1 and at each requested coverage; with ``regions`` (class ``r + 1`` is
    region ``r``), the region's name and labels too."""
    results = [evaluation.full, *evaluation.at_coverage]
    means = [np.asarray(r.per_class_dice, dtype=np.float64).mean(axis=0) for r in results]
    names = list(regions or {})
    rows = []
    for j, k in enumerate(evaluation.full.classes):
        row: dict[str, Any] = {"class": int(k)}
        if regions:
            row["region"] = names[int(k) - 1]
            row["labels"] = [int(v) for v in regions[row["region"]]]
        if evaluation.class_voxels is not None:
            row["labelled_voxels"] = int(evaluation.class_voxels[0][j])
            row["predicted_voxels"] = int(evaluation.class_voxels[1][j])
        row["dice_full"] = float(means[0][j])
        row["coverages"] = [
            {"requested": float(c), "dice": float(m[j])} for c, m in zip(requested, means[1:], strict=True)
        ]
        rows.append(row)
    return rows


def region_names(report: dict[str, Any]) -> dict[int, str]:
    """Class -> region name for a report of ``evaluate --regions`` (class ``r + 1`` is region ``r``); empty
    for a report of classes."""
    regions = report.get("settings", {}).get("regions") or {}
    return {r + 1: name for r, name in enumerate(regions)}


def regions_text(regions: dict[str, Any]) -> str:
    """``"WT (labels 1, 2, 3), ET (label 3)"``: the regions of ``evaluate --regions`` and their labels."""
    parts = []
    for name, labels in regions.items():
        listed = ", ".join(str(v) for v in labels)
        parts.append(f"{name} (label{'s' if len(labels) > 1 else ''} {listed})")
    return ", ".join(parts)


def absent_classes_note(report: dict[str, Any]) -> str | None:
    """The warning for classes (or regions) that occur in no file, or None."""
    absent = report.get("absent_classes") or []
    if not absent:
        return None
    names = region_names(report)
    if names:
        listed = ", ".join(names.get(c, str(c)) for c in absent)
        several = len(absent) > 1
        return (
            f"region{'s' if several else ''} {listed} occur{'' if several else 's'} in no prediction and no "
            f"label, so {'their' if several else 'its'} Dice counts 1.0 in every image and raises the mean "
            "Dice; do the labels of `--regions` match the label maps' values?"
        )
    k = report["settings"]["num_classes"]
    listed = ", ".join(str(c) for c in absent)
    return (
        f"class{'es' if len(absent) > 1 else ''} {listed} occur{'' if len(absent) > 1 else 's'} in no "
        f"prediction and no label, so {'their' if len(absent) > 1 else 'its'} Dice counts 1.0 in every "
        f"image and raises the mean Dice; is `--num-classes {k}` larger than the label maps' classes?"
    )


def per_class_markdown(report: dict[str, Any]) -> str:
    """``report.md``'s section of Dice per class (mean over images), with the warning for absent classes."""
    rows = report.get("per_class") or []
    if not rows:
        return ""
    coverages = [c["requested"] for c in rows[0]["coverages"]]
    counts = "labelled_voxels" in rows[0]
    names = region_names(report)
    what = "region" if names else "class"
    head = [what, *(["labelled voxels", "predicted voxels"] if counts else []), "Dice at 1.00"]
    head += [f"Dice at {c:.2f}" for c in coverages]
    lines = [f"## Dice per {what}", ""]
    note = absent_classes_note(report)
    if note is not None:
        lines += [f"**Warning:** {note}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        cells = [markdown_cell(names[row["class"]]) if names else str(row["class"])]
        if counts:
            cells += [f"{row['labelled_voxels']:,}", f"{row['predicted_voxels']:,}"]
        cells += [percent(row["dice_full"])] + [percent(c["dice"]) for c in row["coverages"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Dice of each {what} in %, averaged over the images (a {what} absent from both prediction and truth "
        "of an image counts 1.0 there), at coverage 1 (nothing referred) and at each requested coverage.",
        "",
    ]
    if names:
        lines[-1:-1] = [
            "",
            "Each region is the set of voxels whose label is one of its labels; regions may overlap, and "
            "each is evaluated as its own binary structure (a voxel in several regions counts in each).",
        ]
    return "\n".join(lines) + "\n"

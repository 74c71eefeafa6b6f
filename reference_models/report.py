"""Write ``report.json``, ``report.md`` and the figures, and print the Table-1-style summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from reference_models.evaluate import COVERAGES, PartResult, combine_parts
from selectivekit.segmentation import compare_at_coverage

__all__ = ["build_report", "format_table", "write_report"]

_LABELS = {"baseline": "Baseline", "uncertainty_aware": "Uncertainty-aware"}


def build_report(
    dataset: str, framework: str, results: dict[str, dict[str, PartResult]], extra: dict | None = None
) -> dict:
    """The report.json payload: ``{"dataset", "framework", "models": {kind: M}}`` plus run details."""
    report = {
        "dataset": dataset,
        "framework": framework,
        "models": {kind: combine_parts(parts) for kind, parts in results.items()},
    }
    if extra:
        report.update(extra)
    return report


def format_table(report: dict) -> str:
    """Table 1 of the paper for this run: AURC (%), Dice mean ± std (%) and Dice at the 5th percentile (%).

    Columns are the models present (baseline first); the realized global coverage is shown per model.
    """
    models = report["models"]
    kinds = [k for k in ("baseline", "uncertainty_aware") if k in models]
    short = {"baseline": "baseline", "uncertainty_aware": "ours"}
    lines = [
        f"{report['dataset']} ({report['framework']})",
        "AURC % (risk = 1 - Dice; lower is better): "
        + ", ".join(f"{short[k]} {100 * models[k]['aurc']:.3f}" for k in kinds),
        "Dice % at full coverage: "
        + ", ".join(f"{short[k]} {100 * models[k]['dice_full_coverage']:.2f}" for k in kinds),
        "",
        "| coverage | "
        + " | ".join(f"Dice % {short[k]}" for k in kinds)
        + " | "
        + " | ".join(f"Dice@5pct % {short[k]}" for k in kinds)
        + " | realized c |",
        "|---" * (2 + 2 * len(kinds)) + "|",
    ]
    for c in COVERAGES:
        key = f"{c:.2f}"
        d = [models[k]["dice_at_coverage"][key] for k in kinds]
        lines.append(
            f"| {key} | "
            + " | ".join(f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}" for e in d)
            + " | "
            + " | ".join(f"{100 * e['p5']:.2f}" for e in d)
            + " | "
            + " / ".join(f"{e['coverage']:.3f}" for e in d)
            + " |"
        )
    return "\n".join(lines)


def _figures(results: dict[str, dict[str, PartResult]], out: Path) -> tuple[list[str], dict]:
    """Figure 3 (Dice–coverage curves) and Figure 2 (per-image differences) per part.

    Returns the file names and the quadrant shares of Figure 2 (ours minus baseline) per coverage and part.
    """
    from selectivekit.plotting import plot_dice_coverage, plot_per_image_comparison

    names, shares = [], {}
    parts = list(next(iter(results.values())))
    for part in parts:
        curves = {
            f"{_LABELS[kind]} (AURC {100 * by_part[part].aurc:.3f}%)": by_part[part].curve
            for kind, by_part in results.items()
        }
        fig = plot_dice_coverage(curves, min_coverage=0.5, title=f"Dice–coverage, {part}")
        name = f"dice_coverage_{part}.png"
        fig.savefig(out / name, dpi=120)
        names.append(name)
        if {"baseline", "uncertainty_aware"} <= set(results):
            base, ours = results["baseline"][part], results["uncertainty_aware"][part]
            comparisons = [compare_at_coverage(a, b) for a, b in zip(base.results, ours.results, strict=True)]
            for c in comparisons:
                shares.setdefault(f"{c.requested:.2f}", {})[part] = {
                    str(q): float(v) for q, v in c.quadrant_share.items()
                }
            fig = plot_per_image_comparison(
                comparisons, titles=[f"{part}, c = {c.requested:.2f}" for c in comparisons]
            )
            name = f"per_image_{part}.png"
            fig.savefig(out / name, dpi=120)
            names.append(name)
    return names, shares


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(
    out: str | Path,
    dataset: str,
    framework: str,
    results: dict[str, dict[str, PartResult]],
    *,
    notes: list[str] = (),
    extra: dict | None = None,
) -> dict:
    """Write report.json, report.md and the figures ``{dice_coverage,per_image}_<part>.png`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(dataset, framework, results, extra)
    figures, shares = _figures(results, out)
    if shares:
        report["per_image_quadrant_share"] = shares
    report["notes"] = list(notes)
    _write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    md = [f"# Selective segmentation: {dataset}, {framework}", ""]
    md += [f"> {note}" for note in notes] + ([""] if notes else [])
    md += [
        "Dice after referral: voxels above the global uncertainty threshold are corrected by the "
        "annotator and Dice is computed on all voxels (paper, Appendix C). AURC uses risk = 1 - mean "
        "Dice. Realized coverage can exceed the requested one because tied voxels are never split.",
        "",
        "```text",
        format_table(report),
        "```",
        "",
    ]
    if "parts" in next(iter(report["models"].values())):
        md.append("Per part (the table above averages them):")
        md.append("")
        for kind, m in report["models"].items():
            for part, entry in m["parts"].items():
                md.append(
                    f"- {_LABELS[kind]}, {part}: AURC {100 * entry['aurc']:.3f}%, Dice at full coverage "
                    f"{100 * entry['dice_full_coverage']:.2f}%"
                )
        md.append("")
    md += [f"![{name}]({name})" for name in figures]
    _write_atomic(out / "report.md", "\n".join(md) + "\n")
    return report

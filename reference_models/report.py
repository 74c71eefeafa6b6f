"""Write ``report.json``, ``report.md`` and the figures, and print the Table-1-style summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

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
    """Table 1 of the paper for this run: AURC (%), Dice mean ± std (%), Dice at the 5th percentile (%)."""
    models = report["models"]
    kinds = [k for k in ("baseline", "uncertainty_aware") if k in models]
    head = "| coverage | " + " | ".join(
        f"{_LABELS[k]} Dice % | {_LABELS[k]} 5pct % | {_LABELS[k]} realized c" for k in kinds
    )
    lines = [
        f"{report['dataset']} ({report['framework']})",
        "AURC % (risk = 1 - Dice, lower is better): "
        + ", ".join(f"{_LABELS[k]} {100 * models[k]['aurc']:.3f}" for k in kinds),
        "Dice % at full coverage: "
        + ", ".join(f"{_LABELS[k]} {100 * models[k]['dice_full_coverage']:.2f}" for k in kinds),
        "",
        head + " |",
        "|---" * (1 + 3 * len(kinds)) + "|",
    ]
    for c in COVERAGES:
        key = f"{c:.2f}"
        cells = []
        for k in kinds:
            d = models[k]["dice_at_coverage"][key]
            cells.append(
                f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f} | {100 * d['p5']:.2f} | {d['coverage']:.3f}"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure_curves(results: dict[str, dict[str, PartResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        for kind, by_part in results.items():
            r = by_part[part]
            ax.plot(r.curve_coverage, 100 * r.curve_dice, label=f"{_LABELS[kind]} (AURC {100 * r.aurc:.3f}%)")
        ax.set_xlim(0.5, 1.0)
        low = min(100 * r[part].curve_dice[r[part].curve_coverage >= 0.5].min() for r in results.values())
        ax.set_ylim(max(0.0, low - 1), 100.5)
        ax.set_xlabel("coverage")
        ax.set_ylabel("mean Dice after referral (%)")
        ax.set_title(f"Dice–coverage ({part})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure_per_image(results: dict[str, dict[str, PartResult]], path: Path) -> dict:
    """Figure 2: per-image (coverage, Dice) differences, ours minus baseline, at each coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, ours = results["baseline"], results["uncertainty_aware"]
    shares = {}
    fig, axes = plt.subplots(1, len(COVERAGES), figsize=(4 * len(COVERAGES), 4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for part in base:
            cmp = compare_at_coverage(base[part].results[i], ours[part].results[i])
            shares.setdefault(f"{COVERAGES[i]:.2f}", {})[part] = {
                str(q): float(v) for q, v in cmp.quadrant_share.items()
            }
            ax.scatter(
                np.asarray(cmp.coverage_difference), 100 * np.asarray(cmp.dice_difference), s=12,
                alpha=0.7, label=part,
            )  # fmt: skip
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"c = {COVERAGES[i]:.2f}")
        ax.set_xlabel("coverage difference (ours - baseline)")
        if i == 0:
            ax.set_ylabel("Dice difference (%)")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return shares


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
    """Write report.json, report.md, dice_coverage.png and (with both models) per_image.png under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(dataset, framework, results, extra)
    figures = ["dice_coverage.png"]
    _figure_curves(results, out / "dice_coverage.png")
    if {"baseline", "uncertainty_aware"} <= set(results):
        report["per_image_quadrant_share"] = _figure_per_image(results, out / "per_image.png")
        figures.append("per_image.png")
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

"""Write ``report.json``, ``report.md`` and the figures, and print the Table-1-style summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reference_models.datasets import get_dataset
from reference_models.evaluate import COVERAGES, PartResult, average_entries, combine_parts
from reference_models.stats import paired_over_images, paired_over_seeds, seed_summary
from selectivekit.report import (
    AURC_HEADLINE,
    TERMS,
    atomic_write_text,
    few_images_note,
    report_html,
    terms_legend,
)
from selectivekit.segmentation import compare_at_coverage

__all__ = ["build_report", "format_table", "write_report"]

_SHORT = {"baseline": "baseline", "uncertainty_aware": "ours"}  # the models' names in tables and figures


def _per_image(parts: dict[str, PartResult]) -> dict[str, np.ndarray]:
    """Per-image Dice at full coverage and at each coverage, every part's images in order."""
    values = {"1.00": np.concatenate([p.per_image_full for p in parts.values()])}
    for i, c in enumerate(COVERAGES):
        values[f"{c:.2f}"] = np.concatenate([np.asarray(p.results[i].per_image_dice) for p in parts.values()])
    return values


def _paired(per_seed: list[dict[str, dict[str, PartResult]]], entries: list[dict]) -> dict:
    """Ours minus baseline: over seeds (headline numbers) and per image (Dice, averaged over seeds)."""
    ours = [e["uncertainty_aware"] for e in entries]
    base = [e["baseline"] for e in entries]
    over_seeds = {
        "aurc": paired_over_seeds([m["aurc"] for m in ours], [m["aurc"] for m in base]),
        "dice_full_coverage": paired_over_seeds(
            [m["dice_full_coverage"] for m in ours], [m["dice_full_coverage"] for m in base]
        ),
        "dice_at_coverage": {
            key: paired_over_seeds(
                [m["dice_at_coverage"][key]["mean"] for m in ours],
                [m["dice_at_coverage"][key]["mean"] for m in base],
            )
            for key in ours[0]["dice_at_coverage"]
        },
    }
    images_ours = [_per_image(r["uncertainty_aware"]) for r in per_seed]
    images_base = [_per_image(r["baseline"]) for r in per_seed]
    per_image = {
        key: paired_over_images(
            np.mean([d[key] for d in images_ours], axis=0), np.mean([d[key] for d in images_base], axis=0)
        )
        for key in images_ours[0]
    }
    return {
        "difference": "uncertainty_aware minus baseline",
        "over_seeds": over_seeds,
        "per_image_dice": {"dice_full_coverage": per_image.pop("1.00"), "dice_at_coverage": per_image},
    }


def build_report(
    dataset: str,
    framework: str,
    results: dict[str, dict[str, PartResult]] | list[dict[str, dict[str, PartResult]]],
    extra: dict | None = None,
    seeds: list[int] | None = None,
) -> dict:
    """The report.json payload: ``{"dataset", "framework", "models": {kind: M}, "seeds", "paired"}``.

    ``results`` is one seed's ``{kind: {part: PartResult}}`` or a list of them, one per seed. ``models``
    holds each number averaged over the seeds (the single seed's numbers when there is one), ``seeds`` the
    per-seed entries and their mean ± std, ``paired`` the differences ours minus baseline (when both
    models were trained).
    """
    per_seed = results if isinstance(results, list) else [results]
    seeds = list(seeds) if seeds is not None else list(range(len(per_seed)))
    entries = [{kind: combine_parts(parts) for kind, parts in r.items()} for r in per_seed]
    kinds = list(entries[0])
    report = {
        "dataset": dataset,
        "framework": framework,
        "models": {kind: average_entries([e[kind] for e in entries]) for kind in kinds},
        "seeds": {
            "values": seeds,
            "per_seed": {str(s): e for s, e in zip(seeds, entries, strict=True)},
            "summary": {kind: seed_summary([e[kind] for e in entries]) for kind in kinds},
        },
        "n_images": {part: len(p.names) for part, p in per_seed[0][kinds[0]].items()},
    }
    if {"baseline", "uncertainty_aware"} <= set(kinds):
        report["paired"] = _paired(per_seed, entries)
    if extra:
        report.update(extra)
    return report


def _pm(summary: dict, scale: float = 100.0, digits: int = 2) -> str:
    if summary["n"] < 2:
        return f"{scale * summary['mean']:.{digits}f}"
    return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f}"


def _interval(entry: dict, digits: int = 2) -> str:
    ci = entry.get("ci95")
    text = f"{100 * entry['mean']:+.{digits}f}"
    if ci is not None:
        text += f" [{100 * ci[0]:+.{digits}f}, {100 * ci[1]:+.{digits}f}]"
    if entry.get("p_value") is not None:
        text += f", p = {entry['p_value']:.3g}"
    return text


def format_table(report: dict) -> str:
    """Table 1 of the paper for this run: AURC (%), Dice mean ± std (%) and Dice at the 5th percentile (%).

    One row per coverage and model (baseline first), the columns named as in ``selectivekit evaluate``'s
    reports (``selectivekit.report.TERMS``), with the realized global coverage of each model.
    With several seeds the headline lines give mean ± std across seeds and the paired differences.
    """
    models = report["models"]
    kinds = [k for k in ("baseline", "uncertainty_aware") if k in models]
    seeds = report.get("seeds", {}).get("values", [0])
    summary = report.get("seeds", {}).get("summary")
    lines = [f"{report['dataset']} ({report['framework']})"]
    if summary and len(seeds) > 1:
        lines += [
            f"over {len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± std across seeds:",
            f"{AURC_HEADLINE}: "
            + ", ".join(f"{_SHORT[k]} {_pm(summary[k]['aurc'], digits=3)}" for k in kinds),
            f"{TERMS['dice_full']}: "
            + ", ".join(f"{_SHORT[k]} {_pm(summary[k]['dice_full_coverage'])}" for k in kinds),
        ]
    else:
        lines += [
            f"{AURC_HEADLINE}: " + ", ".join(f"{_SHORT[k]} {100 * models[k]['aurc']:.3f}" for k in kinds),
            f"{TERMS['dice_full']}: "
            + ", ".join(f"{_SHORT[k]} {100 * models[k]['dice_full_coverage']:.2f}" for k in kinds),
        ]
    paired = report.get("paired")
    if paired:
        over = paired["over_seeds"]
        # one seed: a difference, with no interval or test across seeds to promise
        what = (
            "over seeds (mean [95% CI], paired t-test)"
            if len(seeds) > 1
            else "with one seed (no interval or test across seeds; train several seeds for them)"
        )
        lines.append(
            f"ours − baseline {what}: {TERMS['aurc']} "
            + _interval(over["aurc"], 3)
            + f"; {TERMS['dice_full']} "
            + _interval(over["dice_full_coverage"])
        )
        img = paired["per_image_dice"]["dice_full_coverage"]
        lines.append(
            f"ours − baseline per image ({img['n_images']} images, mean [95% CI], Wilcoxon signed-rank "
            f"test): {TERMS['dice_full']} " + _interval(img)
        )
        note = few_images_note(img["n_images"])
        if note:
            lines.append(note)
    columns = [TERMS[key] for key in ("coverage", "model", "realized", "dice", "p5")]
    lines += ["", "| " + " | ".join(columns) + " |", "|---:|:---|---:|---:|---:|"]
    for c in COVERAGES:
        key = f"{c:.2f}"
        for k in kinds:
            e = models[k]["dice_at_coverage"][key]
            dice = f"{100 * e['mean']:.2f} ± {100 * e['std']:.2f}"
            lines.append(f"| {key} | {_SHORT[k]} | {e['coverage']:.3f} | {dice} | {100 * e['p5']:.2f} |")
    return "\n".join(lines)


def _figures(results: dict[str, dict[str, PartResult]], out: Path) -> tuple[list[tuple[str, str]], dict]:
    """Figure 3 (Dice–coverage curves) and Figure 2 (per-image differences) per part.

    Returns the file names with their captions and the quadrant shares of Figure 2 (ours minus baseline)
    per coverage and part.
    """
    from selectivekit.plotting import plot_dice_coverage, plot_per_image_comparison

    names, shares = [], {}
    parts = list(next(iter(results.values())))
    for part in parts:
        curves = {
            f"{_SHORT[kind]} (AURC {100 * by_part[part].aurc:.3f}%)": by_part[part].curve
            for kind, by_part in results.items()
        }
        fig = plot_dice_coverage(curves, min_coverage=0.5, title=f"Dice–coverage, {part}")
        name = f"dice_coverage_{part}.png"
        fig.savefig(out / name, dpi=120)
        names.append((name, f"Dice–coverage curves, {part}"))
        if {"baseline", "uncertainty_aware"} <= set(results):
            base, ours = results["baseline"][part], results["uncertainty_aware"][part]
            comparisons = [compare_at_coverage(a, b) for a, b in zip(base.results, ours.results, strict=True)]
            for c in comparisons:
                shares.setdefault(f"{c.requested:.2f}", {})[part] = {
                    str(q): float(v) for q, v in c.quadrant_share.items()
                }
            titles = [f"{part}, coverage {c.requested:.2f}" for c in comparisons]
            fig = plot_per_image_comparison(comparisons, names=("baseline", "ours"), titles=titles)
            name = f"per_image_{part}.png"
            fig.savefig(out / name, dpi=120)
            caption = (
                f"Per-image differences ours − baseline (the paper's Figure 2), {part}: one dot per image, "
                "one panel per coverage, all panels on the same axes. Red: the percentage of images in each "
                "quadrant; upper right: ours keeps more of the image and scores a higher Dice."
            )
            names.append((name, caption))
    return names, shares


def _paired_markdown(paired: dict, n_seeds: int) -> list[str]:
    over, img = paired["over_seeds"], paired["per_image_dice"]
    seeds = "over seeds: mean [95% CI], p" if n_seeds > 1 else "one seed: the difference (no CI or test)"
    note = few_images_note(img["dice_full_coverage"]["n_images"])
    rows = [
        f"| Statistic | ours − baseline {seeds} | ours − baseline per image: mean [95% CI], p |",
        "|---|---|---|",
        f"| {TERMS['aurc']} | {_interval(over['aurc'], 3)} | (one AURC per run, not per image) |",
        f"| {TERMS['dice_full']} | {_interval(over['dice_full_coverage'])} | "
        f"{_interval(img['dice_full_coverage'])} |",
    ]
    for key, entry in over["dice_at_coverage"].items():
        rows.append(
            f"| Dice % at coverage {key} | {_interval(entry)} | {_interval(img['dice_at_coverage'][key])} |"
        )
    return [
        "## Ours minus baseline",
        "",
        *([f"> **{note}**", ""] if note else []),
        *rows,
        "",
        "Over seeds: the difference of the two models trained with the same seed, a Student-t interval "
        "over the seeds and a paired t-test (none with one seed). Per image: each held-out image's Dice "
        "difference averaged over the seeds, a Student-t interval of the mean and a Wilcoxon signed-rank "
        "test. Negative AURC differences and positive Dice differences favour ours.",
        "",
    ]


def write_report(
    out: str | Path,
    dataset: str,
    framework: str,
    results: dict[str, dict[str, PartResult]] | list[dict[str, dict[str, PartResult]]],
    *,
    notes: list[str] = (),
    extra: dict | None = None,
    seeds: list[int] | None = None,
) -> dict:
    """Write report.json, report.md, report.html (the same, self-contained: figures inline) and the figures
    ``{dice_coverage,per_image}_<part>.png`` to ``out``.

    With several seeds' results the figures show the first seed (each seed's own report, written by
    the pipeline into ``seed<S>/``, has its figures).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(dataset, framework, results, extra, seeds)
    first = results[0] if isinstance(results, list) else results
    figures, shares = _figures(first, out)
    if shares:
        report["per_image_quadrant_share"] = shares
    report["notes"] = list(notes)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    table = format_table(report).split("\n")
    split = table.index("")
    md = [f"# Selective segmentation: {dataset}, {framework}", ""]
    if get_dataset(dataset).synthetic:
        md += [
            "> **Synthetic data.** These numbers come from the built-in synthetic dataset written in the "
            "real on-disk format. They test the pipeline and show the method's behaviour; they are not the "
            "paper's numbers and not an estimate of performance on real images.",
            "",
        ]
    md += [f"> {note}" for note in notes] + ([""] if notes else [])
    counts = ", ".join(f"{part}: {n} images" for part, n in report["n_images"].items())
    n_seeds = len(report["seeds"]["values"])
    md += [
        f"Held-out images: {counts}. Seeds: {', '.join(map(str, report['seeds']['values']))}.",
        "",
        *[f"- {line}" for line in table[1:split]],
        "",
        *table[split + 1 :],
        "",
        *terms_legend(
            ("coverage", "model", "realized", "dice", "p5", "aurc"),
            [
                "**baseline**: the U-Net trained with the segmentation loss only.",
                "**ours**: the same network, seed and patches, trained with the uncertainty-aware loss.",
            ],
        ),
        "",
        "The referred voxels are corrected by the annotator and the Dice is computed on all voxels (paper "
        "Appendix C); one global threshold per part."
        + (f" Every number is the mean over the {n_seeds} seeds." if n_seeds > 1 else ""),
        "",
    ]
    if "paired" in report:
        md += _paired_markdown(report["paired"], n_seeds)
    if "parts" in next(iter(report["models"].values())):
        md += ["## Per part", "", "The tables above average the parts.", ""]
        for kind, m in report["models"].items():
            for part, entry in m["parts"].items():
                md.append(
                    f"- {_SHORT[kind]}, {part} ({report['n_images'][part]} images): {TERMS['aurc']} "
                    f"{100 * entry['aurc']:.3f}, {TERMS['dice_full']} {100 * entry['dice_full_coverage']:.2f}"
                )
        md.append("")
    if shares:
        md += [
            "## Figures",
            "",
            "In the per-image figures (the paper's Figure 2) every dot is a held-out image: x is its "
            "coverage under ours minus under the baseline (the share of the image ours keeps, minus the "
            "share the baseline keeps), y its Dice after referral under ours minus under the baseline, in "
            "percentage points. The red numbers in the corners are the percentages of the images in each "
            "quadrant: upper right, ours keeps more of the image and scores a higher Dice; upper left, it "
            "keeps less and scores higher; lower left, it keeps less and scores lower; lower right, it keeps"
            " more and scores lower. Images with a zero difference lie on an axis and are in no quadrant.",
            "",
        ]
    md += [f"![{caption}]({name})" for name, caption in figures]
    text = "\n".join(md) + "\n"
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", report_html(text, out))
    return report

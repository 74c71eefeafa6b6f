"""The text the command line renders from a report beside
[`report_markdown`][selectivekit.report.report_markdown]: the Markdown sections of ``evaluate --ci`` and
``--threshold`` and of ``compare``'s paired comparison, and the plain-text summaries the commands print.

Every function reads the JSON of a report (``report.json``, ``comparison.json``) and returns text; the names
of the statistics are those of [`TERMS`][selectivekit.report.TERMS].
"""

from __future__ import annotations

from typing import Any

from .report import (
    AURC_HEADLINE,
    TERMS,
    few_images_note,
    markdown_cell,
    percent,
    source_text,
    threshold_text,
)

__all__ = [
    "comparison_summary",
    "evaluation_summary",
    "guarantee_markdown",
    "paired_markdown",
    "voxel_markdown",
]


# --------------------------------------------------------------------------------------------------
# the plain-text summaries printed on the terminal


def evaluation_summary(report: dict[str, Any]) -> str:
    """The headline numbers of an evaluation as a short plain-text table (printed by ``evaluate``).

    AURC of ``1 - mean Dice`` (lower is better), then per coverage (full coverage first) the realized
    coverage and the mean ± std and 5th percentile of the per-image Dice over the images, in %; the names
    are those of ``report.md`` ([`TERMS`][selectivekit.report.TERMS]).
    """
    full = report["dice_full"]
    names = [TERMS[key] for key in ("coverage", "realized", "dice", "p5")]
    widths = [len(name) for name in names]

    def row(values: list[str]) -> str:
        return "  ".join(f"{value:>{width}}" for value, width in zip(values, widths, strict=True))

    lines = [
        f"{report['n_images']} images; {AURC_HEADLINE}: {percent(report['aurc_dice'], 3)}",
        row(names),
        row(["1.00", "1.000", _mean_plus_minus_std(full["mean"], full["std"]), percent(full["p5"])]),
    ]
    for entry in report["coverages"]:
        lines.append(
            row(
                [
                    f"{entry['requested']:.2f}",
                    f"{entry['coverage']:.3f}",
                    _mean_plus_minus_std(entry["mean"], entry["std"]),
                    percent(entry["p5"]),
                ]
            )
        )
    return "\n".join(lines + _intervals_summary(report))


def _intervals_summary(report: dict[str, Any]) -> list[str]:
    """``evaluate --ci``: the intervals of ``report.md``, on the terminal too (with the small-sample
    warning)."""
    intervals = report.get("intervals")
    if intervals is None:
        return []
    rows = [(TERMS["aurc"], intervals["aurc_dice"], 3)]
    for entry in intervals["coverages"]:
        rows += [
            (f"Dice % (mean) at coverage {entry['requested']:.2f}", entry["mean"], 2),
            (f"{TERMS['p5']} at coverage {entry['requested']:.2f}", entry["p5"], 2),
        ]
    width = max(len(label) for label, _, _ in rows)
    level, n_images = f"{100 * intervals['confidence']:g}", report["n_images"]
    lines = ["", f"{level} % confidence intervals (bootstrap over the {n_images} images):"]
    for label, interval, digits in rows:
        bounds = f"[{percent(interval['low'], digits)}, {percent(interval['high'], digits)}]"
        lines.append(f"  {label:<{width}}  {percent(interval['estimate'], digits):>7}  {bounds:>18}")
    note = few_images_note(report["n_images"])
    return lines + ([note] if note else [])


def comparison_summary(report_a: dict[str, Any], report_b: dict[str, Any], comparison: dict[str, Any]) -> str:
    """Both runs' headline numbers side by side, and B − A (printed by ``compare``)."""
    name_a, name_b = comparison["run_a"]["name"], comparison["run_b"]["name"]
    width = max(len(name_a), len(name_b), len("100.00 (realized 1.000)"))
    label = len(TERMS["dice_full"])
    header = f"{'':<{label}}  {name_a:>{width}}  {name_b:>{width}}  {'B − A':>8}"
    lines = [f"{comparison['n_images']} images; A = {name_a}, B = {name_b}; {AURC_HEADLINE}", header]

    def row(
        text: str, value_a: float, value_b: float, digits: int, extra_a: str = "", extra_b: str = ""
    ) -> None:
        cell_a, cell_b = f"{value_a:.{digits}f}{extra_a}", f"{value_b:.{digits}f}{extra_b}"
        difference = value_b - value_a
        lines.append(f"{text:<{label}}  {cell_a:>{width}}  {cell_b:>{width}}  {difference:>+8.{digits}f}")

    row(TERMS["aurc"], 100 * report_a["aurc_dice"], 100 * report_b["aurc_dice"], 3)
    row(TERMS["dice_full"], 100 * report_a["dice_full"]["mean"], 100 * report_b["dice_full"]["mean"], 2)
    for entry in comparison["coverages"]:
        row_a, row_b = entry["a"], entry["b"]
        row(
            f"Dice % at coverage {entry['requested']:.2f}",
            100 * row_a["mean"],
            100 * row_b["mean"],
            2,
            f" (realized {row_a['coverage']:.3f})",
            f" (realized {row_b['coverage']:.3f})",
        )
    paired = comparison.get("paired") or {}
    if paired.get("available"):
        level = f"{100 * paired['confidence']:g}"
        lines += ["", f"B − A, paired {level} % confidence interval and permutation p-value:"]
        rows = [(TERMS["aurc"], paired["aurc_dice"], 3)]
        rows += [
            (f"Dice % at coverage {entry['requested']:.2f}", entry["mean"], 2)
            for entry in paired["coverages"]
        ]
        for text, difference, digits in rows:
            interval = f"[{100 * difference['low']:+.{digits}f}, {100 * difference['high']:+.{digits}f}]"
            lines.append(
                f"{text:<{label}}  {100 * difference['difference']:>+8.{digits}f}  {interval:>18}  "
                f"p = {difference['p_value']:.4g}"
            )
        note = few_images_note(comparison["n_images"])
        lines += [note] if note else []
    return "\n".join(lines)


def _mean_plus_minus_std(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


# --------------------------------------------------------------------------------------------------
# the Markdown sections of report.md


def guarantee_markdown(report: dict[str, Any]) -> str:
    """The sections ``evaluate --ci`` (confidence intervals) and ``--threshold`` (the fixed threshold) add
    to ``report.md``; empty without them."""
    lines = _intervals_markdown(report) + _fixed_threshold_markdown(report)
    return "\n".join(lines) + ("\n" if lines else "")


def _intervals_markdown(report: dict[str, Any]) -> list[str]:
    intervals = report.get("intervals")
    if intervals is None:
        return []
    level = f"{100 * intervals['confidence']:g}"
    aurc = intervals["aurc_dice"]
    lines = [
        f"## Confidence intervals ({level} %)",
        "",
        f"Bootstrap over images (bias-corrected and accelerated, {intervals['method']}; "
        f"{intervals['n_resamples']} resamples, seed {intervals['seed']}): images are drawn with replacement "
        "and the global threshold is chosen again on each resampled set. The intervals describe the sampling "
        "noise of this test set, not of retraining or of other data."
        + (
            " The estimates are exact; the streaming figures above are computed on a grid of `u`."
            if report.get("path") == "grid"
            else ""
        ),
        "",
        *_warning_lines(report["n_images"]),
        f"| Statistic | Estimate | {level} % interval |",
        "|---|---:|---:|",
        f"| {TERMS['aurc']} | {percent(aurc['estimate'], 3)} | "
        f"[{percent(aurc['low'], 3)}, {percent(aurc['high'], 3)}] |",
    ]
    for row in intervals["coverages"]:
        for key, label in (("mean", "Dice % (mean)"), ("p5", TERMS["p5"])):
            interval = row[key]
            lines.append(
                f"| {label} at coverage {row['requested']:.2f} | {percent(interval['estimate'])} | "
                f"[{percent(interval['low'])}, {percent(interval['high'])}] |"
            )
    lines.append("")
    return lines


def _fixed_threshold_markdown(report: dict[str, Any]) -> list[str]:
    fixed = report.get("fixed_threshold")
    if fixed is None:
        return []
    threshold = "refer everything" if fixed["refers_all"] else threshold_text(fixed["threshold"])
    target = fixed.get("max_dice_loss")
    source = f"{fixed.get('method')}"
    if isinstance(target, (int, float)):  # in % like every Dice of the report
        source += f", max Dice loss {100 * target:g} % (a Dice of at least {100 * (1 - target):g} %)"
    if fixed.get("delta") is not None:
        source += f", delta {fixed['delta']}"
    if fixed.get("calibration_coverage") is not None:
        source += f"; calibration coverage {fixed['calibration_coverage']:.3f}"
    lines = [
        "## Fixed threshold",
        "",
        f"- threshold from `{fixed['file']}`: {threshold} ({source})",
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
    return lines


def voxel_markdown(report: dict[str, Any]) -> str:
    """The sections of the voxel errors' AURC family and of the calibration (with probabilities) in
    ``report.md``; empty when the report has neither."""
    lines = _voxel_errors_markdown(report.get("voxel_errors")) + _cases_markdown(report)
    calibration = report.get("calibration")
    if calibration is not None:
        lines += [
            "## Calibration",
            "",
            f"Of the probabilities ({source_text(report['settings'])}): top-label ECE and MCE over "
            f"{calibration['n_bins']} equal-width bins of the confidence max p (a confidence of exactly 0 "
            "or 1 falls in the first or last bin), class-wise ECE (each evaluated class's probability "
            "against its presence, then the mean), the Brier score (sum over classes, per voxel) and the "
            "negative log-likelihood per voxel. Foreground: voxels of class >= 1 in the truth or the "
            "prediction, where the easy background does not dominate.",
            "",
            "| Voxels | Count | ECE % | MCE % | Class-wise ECE % | Brier | NLL |",
            "|:---|---:|---:|---:|---:|---:|---:|",
        ]
        for region, entry in calibration["regions"].items():
            if entry is None:
                lines.append(f"| {region} | 0 | | | | | |")
                continue
            cells = [percent(entry[key], 3) for key in ("ece", "mce", "classwise_ece")]
            cells += [f"{entry['brier']:.4g}", f"{entry['nll']:.4g}"]
            lines.append(f"| {region} | {entry['voxels']:,} | " + " | ".join(cells) + " |")
        lines += ["", "![Reliability diagram](reliability.png)", ""]
    return "\n".join(lines) + ("\n" if lines else "")


def _cases_markdown(report: dict[str, Any]) -> list[str]:
    cases = report.get("cases")
    if cases is None:
        return []
    rows = {row["name"]: row for row in report["per_image"]}
    auroc = cases["failure_auroc"]
    low, high = cases["coverage_range"]
    lines = [
        "## Which cases first",
        "",
        f"Each case scored by the `{cases['score']}` of its uncertainty map and referred whole, the highest "
        "score first; its risk is 1 - its Dice at full coverage. e-AURC and e-AUGRC are the excess over the "
        f"best order (by increasing risk); the failure AUROC asks how well the score finds the "
        f"{cases['failures']} case(s) with Dice below {cases['failure_dice']:g}.",
        "",
        "| AURC % | e-AURC % | AUGRC % | e-AUGRC % | failure AUROC | "
        f"mean risk % at coverage {low:g}-{high:g} |",
        "|---:|---:|---:|---:|---:|---:|",
        "| "
        + " | ".join(percent(cases[key], 3) for key in ("aurc", "e_aurc", "augrc", "e_augrc"))
        + f" | {'—' if auroc is None else f'{auroc:.3f}'} | {percent(cases['partial_aurc'], 3)} |",
        "",
        *_case_intervals_markdown(cases.get("intervals")),
        "![Cases referred whole](case_risk_coverage.png)",
        "",
        "Referral order (open these first):",
        "",
        "| # | Case | Score | Dice % at coverage 1 |",
        "|---:|:---|---:|---:|",
    ]
    for rank, name in enumerate(cases["referral_order"], start=1):
        row = rows[name]
        lines.append(
            f"| {rank} | {markdown_cell(name)} | {row['case_score']:.4g} | {percent(row['dice_full'])} |"
        )
    return [*lines, "", *_budget_markdown(cases.get("budget"))]


def _budget_markdown(budget: dict[str, Any] | None) -> list[str]:
    if budget is None:
        return []
    lines = [
        "### One expert budget over cases and voxels",
        "",
        f"Opening a case costs {budget['case_cost']:g}, checking a voxel {budget['voxel_cost']:g} (the unit "
        "of the costs). Cases are opened in the referral order above, voxels above one threshold are checked "
        "in the others; each column is the best mean Dice within the budget, exact over every threshold.",
        "",
        "| Budget | Voxels only % | Whole cases only % | Best mix % | Cases opened by the mix |",
        "|---:|---:|---:|---:|---:|",
    ]
    steps = len(budget["budgets"]) - 1
    for i in sorted({round(steps * k / 5) for k in range(6)}):
        cells = [
            "—" if budget[key][i] is None else percent(budget[key][i])
            for key in ("voxels_only", "cases_only", "best_mix")
        ]
        lines.append(
            f"| {budget['budgets'][i]:.4g} | " + " | ".join(cells) + f" | {budget['best_mix_cases'][i]} |"
        )
    return [*lines, "", "![Best mean Dice per budget](budget.png)", ""]


def _case_intervals_markdown(intervals: dict[str, Any] | None) -> list[str]:
    if intervals is None:
        return []
    level = f"{100 * intervals['confidence']:g}"
    cells = [
        f"[{percent(intervals[key]['low'], 3)}, {percent(intervals[key]['high'], 3)}]"
        for key in ("aurc", "e_aurc", "augrc")
    ]
    return [
        f"{level} % bootstrap intervals over the cases ({intervals['aurc']['method']}, "
        f"{intervals['n_resamples']} resamples, seed {intervals['seed']}): AURC {cells[0]}, "
        f"e-AURC {cells[1]}, AUGRC {cells[2]} (%).",
        "",
    ]


def _voxel_errors_markdown(errors: dict[str, Any] | None) -> list[str]:
    if errors is None:
        return []
    grid = errors.get("path") == "grid"
    cells = [percent(errors[key], 3) for key in ("aurc", "e_aurc", "augrc")]
    if grid:
        low, high = errors["aurc_bound"]
        cells.append(f"[{percent(low, 3)}, {percent(high, 3)}]")
    return [
        "## Voxel errors",
        "",
        "Every voxel of every image ranked by its uncertainty; the risk is the share of wrong voxels among "
        "those accepted. e-AURC is the AURC minus that of a perfect ranking of the same errors (the part due "
        "to the ranking alone); AUGRC the area under the generalized risk (wrong and accepted, over all "
        "voxels)."
        + (" Values on a grid of `u`; the AURC's exact value lies in the bound given." if grid else ""),
        "",
        "| AURC % | e-AURC % | AUGRC % |" + (" AURC bound % |" if grid else ""),
        "|---:|---:|---:|" + ("---:|" if grid else ""),
        "| " + " | ".join(cells) + " |",
        "",
    ]


def paired_markdown(comparison: dict[str, Any]) -> str:
    """The paired-comparison section of ``compare``'s ``report.md`` (intervals and p-values of B - A), or
    the one line that says why it was not computed."""
    paired = comparison.get("paired") or {}
    name_a, name_b = comparison["run_a"]["name"], comparison["run_b"]["name"]
    if not paired.get("available"):
        return (
            f"Paired intervals and p-values: not computed ({paired.get('reason', 'no per-image state')}).\n"
        )
    level = f"{100 * paired['confidence']:g}"
    test = "exact" if paired["exact"] else f"{paired['n_permutations']} random swaps"
    lines = [
        f"## Paired comparison ({name_b} - {name_a})",
        "",
        f"Paired bootstrap over images ({paired['n_resamples']} resamples, bias-corrected and accelerated) "
        f"and a permutation test that swaps the two models' outputs image by image ({test}, two-sided). A "
        f"negative AURC difference and a positive Dice difference favour {name_b}.",
        "",
        *_warning_lines(comparison["n_images"]),
        f"| Statistic | Difference | {level} % interval | p-value |",
        "|---|---:|---:|---:|",
    ]
    rows = [(TERMS["aurc"], paired["aurc_dice"], 3)]
    rows += [
        (f"Dice % (mean) at coverage {row['requested']:.2f}", row["mean"], 2) for row in paired["coverages"]
    ]
    for label, difference, digits in rows:
        lines.append(
            f"| {label} | {100 * difference['difference']:+.{digits}f} | "
            f"[{100 * difference['low']:+.{digits}f}, {100 * difference['high']:+.{digits}f}] | "
            f"{difference['p_value']:.4g} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def _warning_lines(n_images: int) -> list[str]:
    """The small-sample warning as a Markdown quote and a blank line, or nothing."""
    note = few_images_note(n_images)
    return [f"> **{note}**", ""] if note else []

"""``selectivekit compare``: two ``evaluate`` outputs image by image (the paper's Figure 2, a side-by-side
table), with paired intervals and p-values when both runs were evaluated with ``--ci``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .._lib import check_npz_sizes
from .._report_sections import comparison_summary, paired_markdown
from ..report import (
    COMPARISON_JSON,
    CURVE_FILE,
    build_comparison,
    check_out_folder,
    comparison_markdown,
    load_report,
    report_html,
    write_json,
)
from ._arguments import open_unit_number, positive_integer, seed_number
from ._common import (
    PROG,
    STATE_FILE,
    CommandError,
    call_with_flag_names,
    needs_scipy,
    output_folder,
    save_figure,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """The ``compare`` command and its options."""
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
    compare.add_argument(
        "--confidence",
        metavar="LEVEL",
        type=open_unit_number("--confidence"),
        default=0.95,
        help="level of the paired-bootstrap intervals (default 0.95; needs both runs evaluated with --ci)",
    )
    compare.add_argument("--n-resamples", metavar="B", type=positive_integer("--n-resamples"), default=2000)
    compare.add_argument(
        "--n-permutations",
        metavar="P",
        type=positive_integer("--n-permutations"),
        default=9999,
        help="random swaps of the permutation test (exact when 2**n_images <= P; default 9999)",
    )
    compare.add_argument("--seed", metavar="S", type=seed_number, default=0, help="default 0")
    compare.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``compare RUN_A RUN_B --out DIR``: the comparison folder and the side-by-side table."""
    run_a, run_b, out = Path(args.run_a), Path(args.run_b), Path(args.out)
    report_a = call_with_flag_names(load_report, run_a, "RUN_A")
    report_b = call_with_flag_names(load_report, run_b, "RUN_B")
    call_with_flag_names(check_out_folder, out, COMPARISON_JSON, [run_a, run_b])
    name_a = args.name_a or run_a.resolve().name
    name_b = args.name_b or run_b.resolve().name
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    comparison, panels = call_with_flag_names(
        build_comparison, report_a, report_b, run_a, run_b, name_a, name_b
    )
    names = [row["name"] for row in comparison["per_image"]]
    common = [row["requested"] for row in comparison["coverages"]]
    comparison["paired"] = _paired_section(report_a, report_b, run_a, run_b, names, common, args)
    with output_folder(out, COMPARISON_JSON) as staging:
        write_json(staging / COMPARISON_JSON, comparison)
        curves = _comparison_plots(staging, panels, run_a, run_b, name_a, name_b)
        markdown = comparison_markdown(comparison, curves=curves, extras=paired_markdown(comparison))
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        (staging / "report.html").write_text(report_html(markdown, staging), encoding="utf-8")
    print(comparison_summary(report_a, report_b, comparison))
    print(f"{PROG} compare: wrote {out} ({len(names)} images, {len(common)} coverages)", file=sys.stderr)
    return 0


def _comparison_plots(
    folder: Path, panels: list[Any], run_a: Path, run_b: Path, name_a: str, name_b: str
) -> bool:
    """Figure 2, and the two runs' Dice-coverage curves when both have their ``curve.npz`` (returns whether
    they had)."""
    from .. import plotting
    from ..segmentation import DiceCoverageCurve

    # compare_at_coverage(result_a, result_b) gives B minus A: the axes and the title say so, with the names
    save_figure(plotting.plot_per_image_comparison(panels, names=(name_a, name_b)), folder / "figure2.png")
    curves = {}
    for run, name in ((run_a, name_a), (run_b, name_b)):
        if not (run / CURVE_FILE).is_file():
            return False  # an older or hand-made report: no curve to draw
        with np.load(run / CURVE_FILE) as data:
            curves[name] = DiceCoverageCurve(
                coverage=data["coverage"], mean_dice=data["mean_dice"], threshold=data["threshold"]
            )
    save_figure(plotting.plot_dice_coverage(curves, title="Dice-coverage"), folder / "dice_coverage.png")
    return True


def _paired_section(
    report_a: dict[str, Any],
    report_b: dict[str, Any],
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
    needs_scipy()
    from .. import guarantees

    states = [
        _image_states(which, report, run, names)
        for which, report, run in (("RUN_A", report_a, run_a), ("RUN_B", report_b, run_b))
    ]
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
        difference = result[key]
        return {
            "difference": difference.estimate,
            "low": difference.low,
            "high": difference.high,
            "standard_error": difference.standard_error,
            "p_value": difference.p_value,
            "method": difference.method,
        }

    return {
        "available": True,
        "confidence": float(args.confidence),
        "n_resamples": int(args.n_resamples),
        "n_permutations": int(result.n_permutations),
        "exact": bool(result.exact),
        "seed": int(args.seed),
        "aurc_dice": entry("aurc_dice"),
        "coverages": [
            {"requested": float(coverage), "mean": entry(f"mean@{coverage:g}")} for coverage in common
        ],
    }


def _image_states(which: str, report: dict[str, Any], run: Path, names: list[str]) -> Any:
    """The per-image state that ``evaluate --ci`` saved in ``run``, checked against its report, its images
    in the order of ``names``."""
    from .. import guarantees

    path = run / STATE_FILE
    check_npz_sizes(path, which)  # before loading: a forged header cannot ask for terabytes
    try:
        state = guarantees.ImageState.load(path)
    except ValueError as exc:  # names the file: "`path` file ... is not a valid bootstrap state: ..."
        raise CommandError(str(exc).replace("`path`", f"`{which}`", 1)) from exc
    except (OSError, KeyError) as exc:
        msg = f"`{which}` file {str(path)!r} cannot be read: {exc}."
        raise CommandError(msg) from exc
    order = [row["name"] for row in report["per_image"]]
    if state.n_items != len(order):
        msg = f"`{which}` file {str(path)!r} holds {state.n_items} images, its report {len(order)}."
        raise CommandError(msg)
    voxels = [row.get("n_voxels") for row in report["per_image"]]
    if voxels != state.n_voxels.tolist():
        msg = (
            f"`{which}` file {str(path)!r} holds images of other voxel counts than its report's; it belongs "
            "to another run."
        )
        raise CommandError(msg)
    position = {name: index for index, name in enumerate(order)}
    return state.take([position[name] for name in names])

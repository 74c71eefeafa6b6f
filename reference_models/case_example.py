"""Which cases should be checked first? The second half of ``python -m reference_models uncertainty-example``.

On every held-out image of one model (its logits saved by the uncertainty example): each case score of
``selectivekit.CASE_SCORES`` ranks the cases by their risk ``1 - Dice``; the referral order of the best
score lists what a radiologist would open first; and one expert budget over cases and voxels compares
opening whole cases, checking the most uncertain voxels, and the best mix. Writes ``OUT/cases.{json,md}``
and ``OUT/budget.png``; then writes the same cases as NumPy folders (``OUT/work/evaluate-input``, not
committed) and runs ``selectivekit evaluate --case-score mean-foreground --case-cost 5 --voxel-cost 0.0005``
on them into ``OUT/evaluate`` (its report, with the section "Which cases first" and the budget table).

Costs (a stated assumption, not a measurement): opening and correcting a whole case costs 5 minutes;
checking one flagged pixel costs 0.0005 minutes, so checking every pixel of a 130 x 180 image would cost
about 12 minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["CASE_COST", "FAILURE_THRESHOLD", "ORDER_BY", "VOXEL_COST", "case_analysis"]

CASE_COST = 5.0  # minutes to open and correct a whole case
VOXEL_COST = 0.0005  # minutes to check one flagged pixel
FAILURE_THRESHOLD = 0.2  # a case fails when its Dice is below 0.8
ORDER_BY = "mean-foreground"  # the referral list and the budget use this score (ValUES' aggregation)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def case_analysis(images, num_classes: int, out: str | Path, *, echo=print) -> dict:
    """``images``: (logits, label, part, name) of the evaluated cases."""
    import selectivekit as sk

    out = Path(out)
    probs = [_softmax(z) for z, *_ in images]
    preds = [p.argmax(axis=0) for p in probs]
    labels = [y for _, y, *_ in images]
    names = [name for *_, name in images]
    maps = [sk.max_softmax_uncertainty(p, axis=0) for p in probs]
    dice = np.asarray(
        sk.dice_at_coverage(preds, labels, maps, [1.0], num_classes=num_classes)[0].per_image_dice
    )
    risks = 1.0 - dice
    methods = {}
    for method in sk.CASE_SCORES:
        scores = sk.case_scores(maps, preds=preds, method=method)
        r = sk.case_referral(scores, risks, failure_threshold=FAILURE_THRESHOLD)
        methods[method] = {k: getattr(r, k) for k in ("aurc", "e_aurc", "augrc", "e_augrc", "failure_auroc",
                                                       "partial_aurc")}  # fmt: skip
        methods[method]["scores"] = scores
    best = ORDER_BY  # fixed beforehand: no choice is made on these images
    scores = methods[best]["scores"]
    order = sk.case_referral(scores, risks).order
    plans = sk.referral_plans(preds, labels, maps, scores, num_classes=num_classes, case_cost=CASE_COST,
                              voxel_cost=VOXEL_COST)  # fmt: skip
    budgets = np.linspace(0.0, CASE_COST * len(images) * 0.5, 101)
    curves = {kind: plans.dice_within(budgets, cases=kind) for kind in ("any", "none", "only")}
    result = {
        "cases": len(images),
        "failure_threshold": FAILURE_THRESHOLD,
        "failures": int(np.sum(risks > FAILURE_THRESHOLD)),
        "mean_dice": float(dice.mean()),
        "methods": {m: {k: v for k, v in r.items() if k != "scores"} for m, r in methods.items()},
        "order_by": best,
        "referral_order": [
            {"case": names[i], "score": float(scores[i]), "dice": float(dice[i])} for i in order
        ],
        "costs": {"case": CASE_COST, "voxel": VOXEL_COST},
        "budget": {"minutes": budgets.tolist(), **{k: v.tolist() for k, v in curves.items()}},
    }
    (out / "cases.json").write_text(json.dumps(result, indent=1) + "\n")
    text = _markdown(result)
    (out / "cases.md").write_text(text + "\n")
    _budget_figure(budgets, curves, out / "budget.png")
    _evaluate_report(preds, labels, maps, names, num_classes, out)
    echo(text)
    return result


def _evaluate_report(preds, labels, maps, names, num_classes: int, out: Path) -> None:
    """The same cases through ``selectivekit evaluate``, as a user would run it on prediction folders."""
    from selectivekit.cli import main

    folders = {role: out / "work" / "evaluate-input" / role for role in ("pred", "label", "unc")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name, pred, label, u in zip(names, preds, labels, maps, strict=True):
        np.save(folders["pred"] / f"{name}.npy", pred.astype(np.uint8))
        np.save(folders["label"] / f"{name}.npy", label.astype(np.uint8))
        np.save(folders["unc"] / f"{name}.npy", u.astype(np.float32))
    argv = ["evaluate", "--pred", str(folders["pred"]), "--label", str(folders["label"]),
            "--uncertainty", str(folders["unc"]), "--num-classes", str(num_classes), "--quiet",
            "--case-score", ORDER_BY, "--case-cost", f"{CASE_COST:g}", "--voxel-cost", f"{VOXEL_COST:g}",
            "--out", str(out / "evaluate")]  # fmt: skip
    code = main(argv)
    if code != 0:
        msg = f"selectivekit evaluate exited with {code}"
        raise RuntimeError(msg)


def _markdown(result: dict) -> str:
    pct = lambda x: "—" if x != x else f"{100 * x:.2f}"  # noqa: E731
    lines = [
        f"{result['cases']} cases, mean Dice {100 * result['mean_dice']:.2f}%; "
        f"{result['failures']} fail (Dice below {100 * (1 - result['failure_threshold']):.0f}%). "
        "Case risk 1 - Dice, voxel map 1 - max p; percentages.",
        "",
        "| case score | AURC | e-AURC | AUGRC | e-AUGRC | failure AUROC | mean risk over coverage 0.5-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, r in result["methods"].items():
        keys = ("aurc", "e_aurc", "augrc", "e_augrc", "failure_auroc", "partial_aurc")
        lines.append(f"| {m} | " + " | ".join(pct(r[k]) for k in keys) + " |")
    lines += ["", f"The first ten cases to open, by `{result['order_by']}` (fixed beforehand):", "",
              "| # | case | score | Dice |", "|---|---|---|---|"]  # fmt: skip
    for k, row in enumerate(result["referral_order"][:10], start=1):
        lines.append(f"| {k} | {row['case']} | {row['score']:.4f} | {100 * row['dice']:.2f} |")
    b = result["budget"]
    lines += ["", f"Best mean Dice for a budget (a case costs {result['costs']['case']:g} min, a pixel "
              f"{result['costs']['voxel']:g} min):", "", "| minutes | voxels only | cases only | best mix |",
              "|---|---|---|---|"]  # fmt: skip
    for k in range(0, len(b["minutes"]), 20):
        cells = [pct(b[kind][k]) for kind in ("none", "only", "any")]
        lines.append(f"| {b['minutes'][k]:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _budget_figure(budgets: np.ndarray, curves: dict, path: Path) -> None:
    from selectivekit.plotting import plot_budget

    fig = plot_budget(budgets, curves["none"], curves["only"], curves["any"], unit="minutes")
    fig.savefig(path, dpi=110)

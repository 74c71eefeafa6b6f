"""The paper's Appendix D studies (Figure 5) as one command: ``python -m reference_models study NAME``.

Each study trains the uncertainty-aware model at several settings of one hyper-parameter, with every seed,
on the same data (and one baseline per seed for reference), evaluates each model on the held-out images and
writes ``OUT/study.json``, ``OUT/study.md`` (a table of mean ± std over seeds) and ``OUT/study.png`` (AURC
and Dice at full coverage against the setting, as in the paper's panels, with the baseline as a band).

- ``sample-size`` (Figure 5a): the sampled estimator at ``|W'| x |C'|`` = 100 x 2200 ... 600 x 13200 (the
  paper's ratio 1/22), plus the exact loss over all pairs; also the training time per step.
- ``two-stage`` (Figure 5b): the epoch at which the uncertainty term starts (the first stage trains with
  the segmentation loss only).
- ``weight`` (Figure 5c): the weight of the uncertainty term, as the paper's ``lambda x 1000``.

Every other option of ``reproduce`` applies (``--dataset``, ``--epochs``, ``--lr``, ...) and fixes the
settings the study does not vary.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from reference_models.config import RunConfig
from reference_models.evaluate import combine_parts, evaluate_part, predict_images
from reference_models.stats import mean_std

__all__ = ["STUDIES", "default_values", "run_study"]

STUDIES = ("sample-size", "two-stage", "weight")
# the paper's sample sizes (its text prints "400 x 2200" for the fourth; the ratio 1/22 gives 8800)
SAMPLE_SIZES = ((100, 2200), (200, 4400), (300, 6600), (400, 8800), (600, 13200))


def default_values(study: str, cfg: RunConfig) -> list:
    """The settings a study visits: sample sizes (plus ``"exact"``), start epochs, or weights."""
    if study == "sample-size":
        return [f"{w}x{c}" for w, c in SAMPLE_SIZES] + ["exact"]
    if study == "two-stage":
        return [round(cfg.epochs * f) for f in (0.0, 0.2, 0.4, 0.6, 0.8)]
    return [500.0, 1000.0, 2000.0, 4000.0, 8000.0]


def _setting(study: str, cfg: RunConfig, value) -> RunConfig:
    if study == "sample-size":
        if value == "exact":
            return dataclasses.replace(cfg, pairs="exact")
        n_wrong, n_correct = (int(v) for v in str(value).split("x"))
        return dataclasses.replace(cfg, pairs="sampled", n_wrong=n_wrong, n_correct=n_correct)
    if study == "two-stage":
        return dataclasses.replace(cfg, unc_start=float(value), unc_ramp=0.0)
    return dataclasses.replace(cfg, weight=float(value))


def parse_values(study: str, text: str | None) -> list | None:
    """``--values`` as the study reads them: ``100x2200,exact`` / start epochs / weights."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if study == "sample-size":
        for p in parts:
            if p != "exact" and not (len(p.split("x")) == 2 and all(v.isdigit() for v in p.split("x"))):
                msg = f"`--values` for sample-size must look like 300x6600 or exact, got {p!r}."
                raise ValueError(msg)
        return parts
    try:
        return [float(p) for p in parts]
    except ValueError:
        msg = f"`--values` for {study} must be numbers, got {text!r}."
        raise ValueError(msg) from None


def _train_eval(trainer, task, cfg: RunConfig, kind: str) -> dict:
    trainer.cfg = cfg
    run = task.runs[0]
    t0 = time.perf_counter()
    model = trainer.fit(run, kind)
    train_s = time.perf_counter() - t0
    steps = cfg.epochs * (cfg.samples_per_epoch // cfg.batch_size)
    preds = predict_images(lambda image: trainer.predict_logits(model, image), run.eval_images)
    parts = {
        part: evaluate_part([p for p in preds if p.part == part], task.num_classes) for part in task.parts
    }
    entry = combine_parts(parts)
    return {
        "aurc": entry["aurc"],
        "dice_full_coverage": entry["dice_full_coverage"],
        "train_s": train_s,
        "s_per_step": train_s / max(1, steps),
    }


def run_study(
    study: str, cfg: RunConfig, seeds: list[int], values: list | None = None, *, echo=print
) -> dict:
    """Train and evaluate every (setting, seed); write study.json, study.md and study.png to ``cfg.out``."""
    from reference_models.pipeline import make_trainer
    from reference_models.tasks import build_task

    if study not in STUDIES:
        msg = f"`study` must be one of {STUDIES}, got {study!r}."
        raise ValueError(msg)
    cfg = dataclasses.replace(cfg.resolved(), resume=False)
    values = values or default_values(study, cfg)
    task = build_task(cfg)
    if len(task.runs) > 1:
        task = dataclasses.replace(task, runs=task.runs[:1])  # MM-WHS: the first chosen fold
    trainer = make_trainer(task, cfg)
    out = Path(cfg.out)
    rows: dict[str, list[dict]] = {"baseline": []}
    try:
        for seed in seeds:
            seed_cfg = dataclasses.replace(cfg, seed=seed, out=str(out / "work"))
            rows["baseline"].append(_train_eval(trainer, task, seed_cfg, "baseline") | {"seed": seed})
            echo(f"baseline seed {seed}: AURC {100 * rows['baseline'][-1]['aurc']:.3f}%")
            for value in values:
                run_cfg = _setting(study, seed_cfg, value)
                row = _train_eval(trainer, task, run_cfg, "uncertainty_aware") | {"seed": seed}
                rows.setdefault(str(value), []).append(row)
                echo(
                    f"{study}={value} seed {seed}: AURC {100 * row['aurc']:.3f}%, "
                    f"Dice {100 * row['dice_full_coverage']:.2f}%, {1000 * row['s_per_step']:.0f} ms/step"
                )
    finally:
        trainer.close()
    summary = {
        key: {m: mean_std([r[m] for r in entries]) for m in ("aurc", "dice_full_coverage", "s_per_step")}
        for key, entries in rows.items()
    }
    result = {
        "study": study,
        "dataset": cfg.dataset,
        "seeds": seeds,
        "values": [str(v) for v in values],
        "runs": rows,
        "summary": summary,
        "config": {
            k: getattr(cfg, k) for k in ("epochs", "lr", "weight", "margin", "pairs", "width", "patch")
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "study.md").write_text(format_study(result) + "\n")
    plot_study(result).savefig(out / "study.png", dpi=120)
    echo(format_study(result))
    return result


_AXIS = {
    "sample-size": "sample size: wrong x correct voxels (exact: all pairs)",
    "two-stage": "epoch at which the uncertainty term starts",
    "weight": "weight of the uncertainty term (lambda x 1000)",
}


def format_study(result: dict) -> str:
    """The study's table: AURC %, Dice % at full coverage and time per step, mean ± std over seeds."""
    s = result["summary"]
    lines = [
        f"# Study {result['study']} on {result['dataset']} ({len(result['seeds'])} seeds: "
        f"{', '.join(map(str, result['seeds']))})",
        "",
        f"| {_AXIS[result['study']]} | AURC % | Dice % at full coverage | ms per training step |",
        "|---|---|---|---|",
    ]
    for key in ["baseline", *result["values"]]:
        e = s[key]
        lines.append(
            f"| {key} | {100 * e['aurc']['mean']:.3f} ± {100 * e['aurc']['std']:.3f} | "
            f"{100 * e['dice_full_coverage']['mean']:.2f} ± {100 * e['dice_full_coverage']['std']:.2f} | "
            f"{1000 * e['s_per_step']['mean']:.0f} ± {1000 * e['s_per_step']['std']:.0f} |"
        )
    lines += [
        "",
        "Mean ± standard deviation over the seeds. The baseline row is the same network trained "
        "with the segmentation loss only. AURC uses risk = 1 - mean Dice (lower is better).",
    ]
    return "\n".join(lines)


def plot_study(result: dict):
    """Two panels: AURC % and Dice % at full coverage against the setting (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    keys = result["values"]
    x = range(len(keys))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for ax, metric, label in (
        (axes[0], "aurc", "AURC % (lower is better)"),
        (axes[1], "dice_full_coverage", "Dice % at full coverage"),
    ):
        mean = [100 * s[k][metric]["mean"] for k in keys]
        std = [100 * s[k][metric]["std"] for k in keys]
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=4, label="uncertainty-aware")
        b_mean, b_std = 100 * s["baseline"][metric]["mean"], 100 * s["baseline"][metric]["std"]
        ax.axhline(b_mean, color="grey", linestyle="--", label="baseline")
        ax.axhspan(b_mean - b_std, b_mean + b_std, color="grey", alpha=0.15)
        ax.set_xticks(list(x), keys, rotation=30 if result["study"] == "sample-size" else 0)
        ax.set_xlabel(_AXIS[result["study"]])
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{result['study']} on {result['dataset']}: mean ± std over {len(result['seeds'])} seeds", fontsize=10
    )
    return fig

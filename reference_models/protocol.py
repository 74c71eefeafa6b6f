"""The pre-registered study of the loss's default: ``python -m reference_models protocol 3d|2d``.

docs/reproduction.md ("The loss's default: a pre-registered study") states the protocol: the settings, the
seeds, the folds, the metrics, the tests and the decision rules. This module runs exactly that:

1. **Tuning** (fold 0 of the synthetic MM-WHS, seeds 0, 1, 2): the baseline, the control for hard-example
   emphasis, the ablation {paper gradient, binary push} x {from step 0, warm-up + ramp} at weight 200, the
   authors' setting and the weight sweep {2, 20, 2000} at the default schedule. The fold-0 rule picks one
   candidate.
2. **Evaluation** (folds 1-4, seeds 0, 1, 2: 12 paired runs never used for a choice): the baseline, the
   control, the candidate and the current default. The decision rule picks the default.

Every run (setting, fold, seed) trains one model in its own process with one CPU thread and writes one JSON
file, ``OUT/runs/<setting>_fold<F>_seed<S>.json``; a run whose file exists is skipped, so the command resumes
after an interruption. ``analyse`` reads the files and writes ``OUT/protocol.json`` and ``OUT/protocol.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from reference_models.config import RunConfig
from selectivekit._lib import atomic_write_text

__all__ = [
    "PROTOCOLS",
    "Setting",
    "analyse",
    "candidate_rule",
    "decision_rule",
    "evaluate_run",
    "paired",
    "run_protocol",
]

SEEDS = (0, 1, 2)
#: coverages of the voxel-level gamma (share of errors among the referred voxels)
GAMMA_COVERAGES = (0.99, 0.98, 0.95)
#: Dice after referring a share of voxels that is small against the foreground (0.5%, 1%, 2% of all voxels)
REFERRAL_COVERAGES = (0.995, 0.99, 0.98)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One arm of the study: the model kind and the RunConfig fields it changes."""

    name: str
    kind: str  # "baseline" or "uncertainty_aware"
    changes: tuple[tuple[str, object], ...] = ()
    group: str = "ablation"  # "baseline", "control", "ablation", "weight"

    def config(self, base: RunConfig) -> RunConfig:
        """``base`` with this arm's changes, resolved; ``warmup``/``ramp`` are shares of the epochs."""
        changes = dict(self.changes)
        shares = {key: changes.pop(key) for key in ("warmup", "ramp") if key in changes}
        cfg = dataclasses.replace(base, **changes).resolved()
        if shares:
            cfg = dataclasses.replace(
                cfg, unc_start=shares["warmup"] * cfg.epochs, unc_ramp=shares["ramp"] * cfg.epochs
            ).resolved()
        return cfg


def _ranking(name: str, *, weight: float, push: str, schedule: bool, group: str = "ablation") -> Setting:
    start, ramp = (0.25, 0.25) if schedule else (0.0, 0.0)
    changes = (("weight", weight), ("unc_push", push), ("warmup", start), ("ramp", ramp))
    return Setting(name, "uncertainty_aware", changes, group)


BASELINE = Setting("baseline", "baseline", (), "baseline")
CONTROL = Setting(
    "control-error-push", "uncertainty_aware",
    (("unc_term", "error-push"), ("weight", 200.0), ("warmup", 0.25), ("ramp", 0.25)), "control",
)  # fmt: skip
ABLATION = (
    _ranking("binary-schedule-w200", weight=200.0, push="binary", schedule=True),  # the current default
    _ranking("binary-step0-w200", weight=200.0, push="binary", schedule=False),
    _ranking("uniform-schedule-w200", weight=200.0, push="uniform", schedule=True),
    _ranking("uniform-step0-w200", weight=200.0, push="uniform", schedule=False),
    _ranking("authors-w2000", weight=2000.0, push="uniform", schedule=False),
)
WEIGHTS = tuple(
    _ranking(f"binary-schedule-w{w:g}", weight=w, push="binary", schedule=True, group="weight")
    for w in (2.0, 20.0, 2000.0)
)
CURRENT_DEFAULT = "binary-schedule-w200"

#: The protocols: the dataset, the tuning folds and arms, the evaluation folds. The evaluation arms are the
#: baseline, the control, the fold-0 candidate and the current default.
PROTOCOLS = {
    "3d": {
        "dataset": "synthetic-mmwhs",
        "tuning_folds": (0,),
        "evaluation_folds": (1, 2, 3, 4),
        "tuning": (BASELINE, CONTROL, *ABLATION, *WEIGHTS),
    },
    "2d": {  # synthetic GlaS: one split (train -> test A and B); no tuning, every arm reported
        "dataset": "synthetic-glas",
        "tuning_folds": (None,),
        "evaluation_folds": (),
        "tuning": (BASELINE, CONTROL, *ABLATION),
    },
}


def _settings_by_name(protocol: str) -> dict[str, Setting]:
    return {s.name: s for s in PROTOCOLS[protocol]["tuning"]}


def _run_name(setting: str, fold: int | None, seed: int) -> str:
    return f"{setting}_fold{'all' if fold is None else fold}_seed{seed}"


# ---------------------------------------------------------------------------------------------- one run


def _per_structure_dice(preds, labels, num_classes: int) -> list[float]:
    """Dice of each foreground class, per image then averaged over the images where it occurs."""
    out = []
    for k in range(1, num_classes):
        values = []
        for p, g in zip(preds, labels, strict=True):
            a, b = p == k, g == k
            total = int(a.sum()) + int(b.sum())
            if total:
                values.append(2.0 * int((a & b).sum()) / total)
        out.append(float(np.mean(values)) if values else math.nan)
    return out


def evaluate_run(predictions, num_classes: int) -> dict:
    """Every pre-registered metric of one trained model on its held-out images."""
    import selectivekit as sk

    preds = [p.pred for p in predictions]
    labels = [p.label for p in predictions]
    us = [p.uncertainty for p in predictions]
    u_all = np.concatenate([u.reshape(-1) for u in us])
    correct = np.concatenate([(p == g).reshape(-1) for p, g in zip(preds, labels, strict=True)])
    coverages = [1.0, *REFERRAL_COVERAGES]
    at = sk.dice_at_coverage(preds, labels, us, coverages, num_classes=num_classes)
    foreground = float(np.mean([(g > 0).mean() for g in labels]))
    return {
        "aurc": float(sk.aurc_dice(preds, labels, us, num_classes=num_classes)),
        "voxel_aurc": float(sk.aurc(u_all, correct)),
        "voxel_e_aurc": float(sk.e_aurc(u_all, correct)),
        "voxel_error": float(1.0 - correct.mean()),
        "gamma": {f"{c:g}": float(sk.selective_split(u_all, correct, c).gamma) for c in GAMMA_COVERAGES},
        "dice_full": float(at[0].mean),
        "dice_referred": {f"{c:g}": float(r.mean) for c, r in zip(REFERRAL_COVERAGES, at[1:], strict=True)},
        "referred_share_of_foreground": {f"{c:g}": (1.0 - c) / foreground for c in REFERRAL_COVERAGES},
        "foreground_share": foreground,
        "dice_per_structure": _per_structure_dice(preds, labels, num_classes),
        "per_image_dice": [float(d) for d in at[0].per_image_dice],
    }


def _train_one(protocol: str, setting_name: str, fold: int | None, seed: int, base: dict, path: str) -> str:
    """Train and evaluate one run in this (worker) process; write its JSON atomically."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from reference_models.evaluate import predict_images
    from reference_models.pipeline import environment, make_trainer
    from reference_models.tasks import build_task

    setting = _settings_by_name(protocol)[setting_name]
    cfg = RunConfig(**base)
    cfg = dataclasses.replace(cfg, folds=None if fold is None else [fold], seed=seed, progress=False)
    cfg = setting.config(cfg)
    work = Path(path).parent.parent / "work" / Path(path).stem
    cfg = dataclasses.replace(cfg, out=str(work), resume=True)
    task = build_task(cfg)
    trainer = make_trainer(task, cfg)
    try:
        run = task.runs[0]
        t0 = time.perf_counter()
        model = trainer.fit(run, setting.kind)
        train_s = time.perf_counter() - t0
        preds = predict_images(lambda image: trainer.predict_logits(model, image), run.eval_images)
    finally:
        trainer.close()
    result = {
        "protocol": protocol,
        "setting": setting_name,
        "fold": fold,
        "seed": seed,
        "kind": setting.kind,
        "train_s": round(train_s, 1),
        "load_average": os.getloadavg()[0],
        "config": {k: getattr(cfg, k) for k in sorted(_CONFIG_KEYS)},
        "environment": environment("torch"),
        "metrics": evaluate_run(preds, task.num_classes),
    }
    atomic_write_text(Path(path), json.dumps(result, indent=1) + "\n")
    return path


_CONFIG_KEYS = (
    "dataset", "epochs", "lr", "width", "patch", "samples_per_epoch", "spacing", "batch_size", "seg_loss",
    "weight", "margin", "pairs", "unc_start", "unc_ramp", "unc_push", "unc_term", "rank_within",
)  # fmt: skip


def _jobs_of(protocol: str, stage: str, out: Path) -> list[tuple[str, int | None, int]]:
    spec = PROTOCOLS[protocol]
    jobs = []
    if stage in ("tuning", "all"):
        for fold in spec["tuning_folds"]:
            for seed in SEEDS:  # seed-major: every arm of a seed before the next seed
                jobs += [(s.name, fold, seed) for s in spec["tuning"]]
    if stage in ("evaluation", "all") and spec["evaluation_folds"]:
        arms = evaluation_arms(protocol, out)
        if arms is None:
            if stage == "evaluation":
                msg = "the evaluation needs the tuning runs of fold 0 first (run `protocol ... tuning`)."
                raise ValueError(msg)
        else:
            for fold in spec["evaluation_folds"]:
                for seed in SEEDS:
                    jobs += [(name, fold, seed) for name in arms]
    return jobs


def run_protocol(
    protocol: str,
    out: str | Path,
    *,
    stage: str = "all",
    jobs: int = 2,
    base: dict | None = None,
    echo=print,
) -> dict | None:
    """Run every missing run of ``stage`` ("tuning", "evaluation" or "all"), ``jobs`` at a time, then
    ``analyse``. ``base`` holds RunConfig fields common to every run (tests shrink the task with it)."""
    if protocol not in PROTOCOLS:
        msg = f"`protocol` must be one of {tuple(PROTOCOLS)}, got {protocol!r}."
        raise ValueError(msg)
    if stage not in ("tuning", "evaluation", "all"):
        msg = f"`stage` must be tuning, evaluation or all, got {stage!r}."
        raise ValueError(msg)
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    base = {"dataset": PROTOCOLS[protocol]["dataset"], "data_dir": str(out / "data")} | (base or {})
    for round_ in ("tuning", "evaluation"):  # evaluation arms are known only once tuning is done
        if stage not in (round_, "all"):
            continue
        todo = [
            j for j in _jobs_of(protocol, round_, out)
            if not (out / "runs" / f"{_run_name(*j)}.json").is_file()
        ]  # fmt: skip
        if not todo:
            continue
        echo(f"{protocol} {round_}: {len(todo)} runs to do, {jobs} at a time")
        _prepare_data(base)
        # spawn: each run starts a fresh interpreter (its own torch thread pool, no forked state)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(
                    _train_one,
                    protocol,
                    s,
                    f,
                    seed,
                    base,
                    str(out / "runs" / f"{_run_name(s, f, seed)}.json"),
                ): (s, f, seed)
                for s, f, seed in todo
            }
            for future in as_completed(futures):
                s, f, seed = futures[future]
                result = json.loads(Path(future.result()).read_text())
                m = result["metrics"]
                echo(
                    f"  {_run_name(s, f, seed)}: AURC {100 * m['aurc']:.3f}%, "
                    f"Dice {100 * m['dice_full']:.2f}%, {result['train_s']:.0f} s "
                    f"(load {result['load_average']:.1f})"
                )
    return analyse(protocol, out, echo=echo)


def _prepare_data(base: dict) -> None:
    """Write the synthetic dataset once (atomically), before the workers read it."""
    from reference_models.tasks import build_task

    build_task(RunConfig(**base))


# ---------------------------------------------------------------------------------------------- statistics


def paired(diffs: list[float]) -> dict:
    """Mean of paired differences with its 95% t-interval over the pairs, and Wilcoxon's p (two-sided)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "low": math.nan, "high": math.nan, "p_wilcoxon": math.nan}
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "p_wilcoxon": p}


def _load(out: Path) -> dict[tuple[str, int | None, int], dict]:
    runs = {}
    for path in sorted((out / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        runs[(r["setting"], r["fold"], r["seed"])] = r
    return runs


def _summary(runs, setting: str, folds, metric) -> dict:
    values = [
        metric(runs[(setting, f, s)]["metrics"]) for f in folds for s in SEEDS if (setting, f, s) in runs
    ]
    return {"n": len(values), "mean": float(np.mean(values)) if values else math.nan,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan}  # fmt: skip


def _differences(
    runs, setting: str, folds, metric, relative: bool = False, against: str = "baseline"
) -> list[float]:
    out = []
    for f in folds:
        for s in SEEDS:
            if (setting, f, s) in runs and (against, f, s) in runs:
                a = metric(runs[(setting, f, s)]["metrics"])
                b = metric(runs[(against, f, s)]["metrics"])
                out.append((a - b) / b if relative else a - b)
    return out


def candidate_rule(runs, protocol: str) -> str | None:
    """The fold-0 pick: among the ranking arms, the lowest mean AURC of those whose mean Dice at c = 1 is at
    most 1 point below the baseline's; if none, the ranking arm with the highest mean Dice. ``None`` until
    every tuning run is done."""
    spec = PROTOCOLS[protocol]
    folds = spec["tuning_folds"]
    needed = [(s.name, f, seed) for s in spec["tuning"] for f in folds for seed in SEEDS]
    if any(key not in runs for key in needed):
        return None
    arms = [s.name for s in spec["tuning"] if s.group in ("ablation", "weight")]
    dice = {a: _summary(runs, a, folds, lambda m: m["dice_full"])["mean"] for a in arms}
    aurc = {a: _summary(runs, a, folds, lambda m: m["aurc"])["mean"] for a in arms}
    base = _summary(runs, "baseline", folds, lambda m: m["dice_full"])["mean"]
    keep = [a for a in arms if dice[a] >= base - 0.01]
    if keep:
        return min(keep, key=lambda a: (aurc[a], a))
    return max(arms, key=lambda a: (dice[a], a))


def evaluation_arms(protocol: str, out: Path) -> list[str] | None:
    """The arms of the evaluation folds: baseline, control, the fold-0 candidate, the current default."""
    pick = candidate_rule(_load(out), protocol)
    if pick is None:
        return None
    return list(dict.fromkeys(["baseline", CONTROL.name, pick, CURRENT_DEFAULT]))


def decision_rule(runs, protocol: str, arms: list[str]) -> dict:
    """The default: among the evaluated ranking arms whose Dice at c = 1 is not lower than the baseline's by
    more than 1 point (the 95% interval's lower bound of the paired difference >= -0.01), the lowest mean
    AURC. ``lowers_aurc`` says whether its AURC interval excludes 0 (below); if no arm lowers AURC with an
    interval that excludes 0, the default is the arm that costs the least Dice."""
    folds = PROTOCOLS[protocol]["evaluation_folds"]
    ranking = [a for a in arms if a not in ("baseline", CONTROL.name)]
    dice = {a: paired(_differences(runs, a, folds, lambda m: m["dice_full"])) for a in ranking}
    aurc = {a: paired(_differences(runs, a, folds, lambda m: m["aurc"])) for a in ranking}
    keep = [a for a in ranking if dice[a]["low"] >= -0.01]
    lowering = [a for a in keep if aurc[a]["high"] < 0]
    if lowering:
        choice, reason = min(lowering, key=lambda a: (aurc[a]["mean"], a)), "lowest AURC within 1 Dice point"
    else:
        choice = max(ranking, key=lambda a: (dice[a]["mean"], a)) if ranking else None
        reason = "no arm lowered AURC with an interval excluding 0 within 1 Dice point: the least Dice cost"
    return {"default": choice, "reason": reason, "dice": dice, "aurc": aurc, "eligible": keep}


def analyse(protocol: str, out: str | Path, *, echo=print) -> dict:
    """Tables of the finished runs: protocol.json and protocol.md in ``out``."""
    out = Path(out)
    runs = _load(out)
    spec = PROTOCOLS[protocol]
    metrics = {
        "aurc": lambda m: m["aurc"],
        "voxel_e_aurc": lambda m: m["voxel_e_aurc"],
        "dice_full": lambda m: m["dice_full"],
        **{f"dice_referred_{c:g}": (lambda m, c=c: m["dice_referred"][f"{c:g}"]) for c in REFERRAL_COVERAGES},
        **{f"gamma_{c:g}": (lambda m, c=c: m["gamma"][f"{c:g}"]) for c in GAMMA_COVERAGES},
    }
    result: dict = {"protocol": protocol, "n_runs": len(runs), "tuning": {}, "evaluation": {}}
    for stage, folds, arms in (
        ("tuning", spec["tuning_folds"], [s.name for s in spec["tuning"]]),
        ("evaluation", spec["evaluation_folds"], evaluation_arms(protocol, out) or []),
    ):
        for arm in arms:
            entry = {name: _summary(runs, arm, folds, f) for name, f in metrics.items()}
            if arm != "baseline":
                entry["vs_baseline"] = {
                    name: paired(_differences(runs, arm, folds, f)) for name, f in metrics.items()
                }
                entry["vs_baseline"]["aurc_relative"] = paired(
                    _differences(runs, arm, folds, metrics["aurc"], relative=True)
                )
                entry["by_fold"] = {
                    str(f): paired(_differences(runs, arm, [f], metrics["aurc"], relative=True))
                    for f in folds
                }
            structures = [
                runs[(arm, f, s)]["metrics"]["dice_per_structure"]
                for f in folds
                for s in SEEDS
                if (arm, f, s) in runs
            ]
            entry["dice_per_structure_min_over_runs"] = (
                np.nanmin(structures, axis=0).tolist() if structures else []
            )
            result[stage][arm] = entry
    result["candidate"] = candidate_rule(runs, protocol)
    folds = spec["evaluation_folds"] or spec["tuning_folds"]
    if result["candidate"]:  # a ranking gain is one the candidate shows against the control
        result["candidate_vs_control"] = {
            name: paired(_differences(runs, result["candidate"], folds, f, against=CONTROL.name))
            for name, f in metrics.items()
        }
    arms = evaluation_arms(protocol, out)
    if arms and spec["evaluation_folds"]:
        needed = [(a, f, s) for a in arms for f in spec["evaluation_folds"] for s in SEEDS]
        if all(k in runs for k in needed):
            result["decision"] = decision_rule(runs, protocol, arms)
    shares = [r["metrics"]["foreground_share"] for r in runs.values()]
    result["foreground_share"] = float(np.mean(shares)) if shares else math.nan
    (out / "protocol.json").write_text(json.dumps(result, indent=1) + "\n")
    if runs:
        plot_protocol(runs, protocol, out / "figures", evaluation_arms(protocol, out) or [])
    text = format_protocol(result)
    (out / "protocol.md").write_text(text + "\n")
    echo(text)
    return result


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.2f}"


def _interval(p: dict, scale: float = 100.0) -> str:
    if p["n"] < 2:
        return f"{scale * p['mean']:+.2f} (n={p['n']})" if p["n"] else "—"
    return f"{scale * p['mean']:+.2f} [{scale * p['low']:+.2f}, {scale * p['high']:+.2f}]"


def format_protocol(result: dict) -> str:
    """The Markdown tables of ``analyse``."""
    lines = [f"# Protocol {result['protocol']}: {result['n_runs']} runs finished", ""]
    for stage in ("tuning", "evaluation"):
        arms = result[stage]
        if not arms:
            continue
        lines += [
            f"## {stage.capitalize()}",
            "",
            "Mean ± std over runs; differences against the baseline, paired by fold and seed, with a 95% "
            "t-interval over the pairs (percentage points; AURC change in % of the baseline's).",
            "",
            "| arm | runs | AURC % | Dice c=1 % | ΔAURC (rel. %) | ΔDice c=1 (points) "
            "| ΔDice at 1% referred | min structure Dice |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for arm, e in arms.items():
            a, d = e["aurc"], e["dice_full"]
            if a["n"] == 0:
                continue
            vs = e.get("vs_baseline")
            rel = _interval(vs["aurc_relative"]) if vs else ""
            dd = _interval(vs["dice_full"]) if vs else ""
            dr = _interval(vs["dice_referred_0.99"]) if vs else ""
            low = (
                min(e["dice_per_structure_min_over_runs"])
                if e["dice_per_structure_min_over_runs"]
                else math.nan
            )
            lines.append(
                f"| {arm} | {a['n']} | {_pct(a['mean'])} ± {_pct(a['std'])} "
                f"| {_pct(d['mean'])} ± {_pct(d['std'])} | {rel} | {dd} | {dr} | {_pct(low)} |"
            )
        lines.append("")
    lines += _metrics_tables(result)
    if result.get("candidate"):
        lines += [f"Fold-0 candidate (the pre-registered rule): **{result['candidate']}**.", ""]
        vs = result["candidate_vs_control"]
        lines += [
            f"Candidate minus control (paired): AURC {_interval(vs['aurc'])} points, "
            f"Dice at c = 1 {_interval(vs['dice_full'])} points, "
            f"voxel e-AURC {_interval(vs['voxel_e_aurc'])}.",
            "",
        ]
    if "decision" in result:
        dec = result["decision"]
        lines += [f"Decision: **{dec['default']}** ({dec['reason']}).", ""]
    return "\n".join(lines)


def _metrics_tables(result: dict) -> list[str]:
    """Every other pre-registered metric, per stage: voxel e-AURC, gamma, Dice after referring a share of
    the voxels (stated as a share of the foreground too), and, on the evaluation folds, the AURC change by
    fold."""
    fg = result.get("foreground_share", math.nan)
    referred = [f"{100 * (1 - c):g}% ({100 * (1 - c) / fg:.0f}% of fg)" for c in REFERRAL_COVERAGES]
    lines = []
    for stage in ("tuning", "evaluation"):
        arms = {a: e for a, e in result[stage].items() if e["aurc"]["n"]}
        if not arms:
            continue
        lines += [
            f"### {stage.capitalize()}: every metric (mean over runs, %)",
            "",
            f"The foreground is {100 * fg:.1f}% of the voxels. Differences against the baseline below, "
            "paired, with 95% t-intervals (points).",
            "",
            "| arm | voxel e-AURC | "
            + " | ".join(f"γ at c={c:g}" for c in GAMMA_COVERAGES)
            + " | "
            + " | ".join(f"Dice, {r} referred" for r in referred)
            + " |",
            "|---|" + "---|" * (1 + len(GAMMA_COVERAGES) + len(REFERRAL_COVERAGES)),
        ]
        for arm, e in arms.items():
            cells = [_pct(e["voxel_e_aurc"]["mean"])]
            cells += [_pct(e[f"gamma_{c:g}"]["mean"]) for c in GAMMA_COVERAGES]
            cells += [_pct(e[f"dice_referred_{c:g}"]["mean"]) for c in REFERRAL_COVERAGES]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", "| arm minus baseline | voxel e-AURC | "
                  + " | ".join(f"Dice, {r} referred" for r in referred) + " |",
                  "|---|---|" + "---|" * len(REFERRAL_COVERAGES)]  # fmt: skip
        for arm, e in arms.items():
            if "vs_baseline" not in e:
                continue
            vs = e["vs_baseline"]
            cells = [_interval(vs["voxel_e_aurc"])]
            cells += [_interval(vs[f"dice_referred_{c:g}"]) for c in REFERRAL_COVERAGES]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
        by_fold = {a: e["by_fold"] for a, e in arms.items() if "by_fold" in e}
        if stage == "evaluation" and by_fold:
            folds = list(next(iter(by_fold.values())))
            lines += [
                "AURC change against the baseline by fold (relative %, 3 seeds a fold; an interval from "
                "3 pairs is wide):",
                "",
                "| arm | " + " | ".join(f"fold {f}" for f in folds) + " |",
                "|---|" + "---|" * len(folds),
            ]
            for arm, fold_stats in by_fold.items():
                lines.append(f"| {arm} | " + " | ".join(_interval(fold_stats[f]) for f in folds) + " |")
            lines.append("")
    return lines


def plot_protocol(runs, protocol: str, folder: str | Path, evaluation_arms: list[str]) -> list[Path]:
    """The study's figures in ``folder``: each arm's AURC and Dice at c = 1 per run on the tuning folds
    (``tuning.png``), the weight sweep at the default schedule (``weight_sweep.png``, the paper's Figure 5c
    in this task), and the paired differences against the baseline on the evaluation folds
    (``evaluation.png``) once they exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = PROTOCOLS[protocol]
    written = []

    def values(arm, folds, metric):
        return [
            100 * runs[(arm, f, s)]["metrics"][metric] for f in folds for s in SEEDS if (arm, f, s) in runs
        ]

    arms = [s.name for s in spec["tuning"] if values(s.name, spec["tuning_folds"], "aurc")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(arms) + 1.6), sharey=True)
    for ax, metric, label in zip(axes, ("aurc", "dice_full"), ("AURC (%) — lower is better",
                                                              "Dice at c = 1 (%)"), strict=True):  # fmt: skip
        for i, arm in enumerate(arms):
            v = values(arm, spec["tuning_folds"], metric)
            ax.plot(v, [i] * len(v), "o", color="C0", alpha=0.7)
            ax.plot([np.mean(v)], [i], "|", color="k", markersize=14)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(arms)), arms)
    axes[0].invert_yaxis()
    where = "the one split" if spec["tuning_folds"] == (None,) else f"tuning fold(s) {spec['tuning_folds']}"
    fig.suptitle(f"{spec['dataset']}, {where}: one dot per seed, bar = mean")
    fig.tight_layout()
    written.append(folder / "tuning.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    sweep = [(s.changes[0][1], s.name) for s in spec["tuning"] if s.name.startswith("binary-schedule-w")]
    sweep = sorted((w, a) for w, a in sweep if values(a, spec["tuning_folds"], "aurc"))
    if len(sweep) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, metric, label in zip(axes, ("aurc", "dice_full"), ("AURC (%)", "Dice at c = 1 (%)"),
                                     strict=True):  # fmt: skip
            for w, a in sweep:
                v = values(a, spec["tuning_folds"], metric)
                ax.plot([w] * len(v), v, "o", color="C0", alpha=0.6)
            means = [np.mean(values(a, spec["tuning_folds"], metric)) for _, a in sweep]
            ax.plot([w for w, _ in sweep], means, "-", color="C0", label="binary push, warm-up + ramp")
            base = values("baseline", spec["tuning_folds"], metric)
            if base:
                ax.axhline(np.mean(base), color="C1", linestyle="--", label="baseline (mean)")
            ax.set_xscale("log")
            ax.set_xlabel("weight of the uncertainty term")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("Weight sweep on the tuning fold (one dot per seed)")
        fig.tight_layout()
        written.append(folder / "weight_sweep.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    folds = spec["evaluation_folds"]
    evaluated = [a for a in evaluation_arms if a != "baseline"]
    evaluated = [a for a in evaluated if _differences(runs, a, folds, lambda m: m["aurc"])]
    if evaluated:
        fig, axes = plt.subplots(1, 2, figsize=(10, 0.6 * len(evaluated) + 1.8), sharey=True)
        tests = (("aurc", True, "AURC change vs baseline (% of baseline)"),
                 ("dice_full", False, "Dice at c = 1 change vs baseline (points)"))  # fmt: skip
        for ax, (metric, relative, label) in zip(axes, tests, strict=True):
            for i, arm in enumerate(evaluated):
                d = 100 * np.asarray(
                    _differences(runs, arm, folds, lambda m, k=metric: m[k], relative=relative)
                )
                ax.plot(d, [i] * len(d), "o", color="C0", alpha=0.5)
                p = paired(list(d))
                if p["n"] > 1:
                    ax.errorbar([p["mean"]], [i], xerr=[[p["mean"] - p["low"]], [p["high"] - p["mean"]]],
                                fmt="s", color="k", capsize=4)  # fmt: skip
            ax.axvline(0, color="0.5", linewidth=1)
            ax.set_xlabel(label)
            ax.grid(axis="x", alpha=0.3)
        axes[0].set_yticks(range(len(evaluated)), evaluated)
        axes[0].invert_yaxis()
        fig.suptitle(f"Evaluation folds {folds}: one dot per (fold, seed) pair; square = mean, 95% interval")
        fig.tight_layout()
        written.append(folder / "evaluation.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written

"""Which uncertainty map? A worked example on the synthetic GlaS: ``python -m reference_models
uncertainty-example``.

Five baseline 2D U-Nets (seeds 0-4, the dataset's default settings) are trained one after the other on the
synthetic GlaS training images; each model's logits on the held-out images are saved to
``OUT/logits/seed<S>.npz`` (a model whose file exists is not trained again, so the command resumes). Then,
on the held-out images:

- the temperature of the seed-0 model is fitted on test part A (the calibration part) and applied on test
  part B; every number of the table is measured on part B only;
- each uncertainty map is ranked by the paper's AURC (mean Dice after referral), the voxel AURC and e-AURC,
  and each probability map's calibration by ECE (15 equal-width bins), class-wise ECE, Brier and NLL.

The rows: one model's ``1 - max p`` (MSP) and entropy, the same after temperature scaling, and the 5-model
ensemble's MSP, predictive entropy, expected entropy, mutual information and vote disagreement. Writes
``OUT/uncertainty.{json,md}`` and ``OUT/dice_coverage.png`` and ``OUT/reliability.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from reference_models.config import RunConfig

__all__ = ["run_example"]

SEEDS = (0, 1, 2, 3, 4)
CALIBRATION_PART = "testA"
EVALUATION_PART = "testB"


def _train(seed: int, base: dict, path: Path) -> None:
    """Train one baseline and save its logits on every held-out image (atomically)."""
    import torch

    torch.set_num_threads(1)
    from reference_models.pipeline import make_trainer
    from reference_models.tasks import build_task

    cfg = dataclasses.replace(RunConfig(**base), seed=seed, progress=False).resolved()
    task = build_task(cfg)
    trainer = make_trainer(task, cfg)
    try:
        run = task.runs[0]
        model = trainer.fit(run, "baseline")
        arrays = {}
        for i, item in enumerate(run.eval_images):
            arrays[f"logits_{i}"] = trainer.predict_logits(model, item.image).astype(np.float32)
            arrays[f"label_{i}"] = item.label.astype(np.uint8)
            arrays[f"part_{i}"] = np.array(item.part)
    finally:
        trainer.close()
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    with np.load(path) as f:
        n = len([k for k in f.files if k.startswith("logits_")])
        return [(f[f"logits_{i}"], f[f"label_{i}"], str(f[f"part_{i}"])) for i in range(n)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def _ranking(preds, labels, maps, num_classes: int) -> dict:
    import selectivekit as sk

    correct = np.concatenate([(p == y).reshape(-1) for p, y in zip(preds, labels, strict=True)])
    u = np.concatenate([m.reshape(-1) for m in maps])
    return {
        "aurc": float(sk.aurc_dice(preds, labels, maps, num_classes=num_classes)),
        "voxel_aurc": float(sk.aurc(u, correct)),
        "voxel_e_aurc": float(sk.e_aurc(u, correct)),
    }


def _dice(preds, labels, maps, num_classes: int) -> float:
    import selectivekit as sk

    return float(sk.dice_at_coverage(preds, labels, maps, [1.0], num_classes=num_classes)[0].mean)


def _calibration(probs, labels, num_classes: int) -> dict:
    import selectivekit as sk

    acc = sk.CalibrationAccumulator(num_classes, axis=0)
    for p, y in zip(probs, labels, strict=True):
        acc.update(p, y)
    r = acc.compute()
    return {
        "ece": r.expected_calibration_error,
        "classwise_ece": r.classwise_calibration_error,
        "brier": r.brier_score,
        "nll": r.negative_log_likelihood,
        "bins": r.bins,
    }


def run_example(out: str | Path, *, base: dict | None = None, seeds=SEEDS, echo=print) -> dict:
    """Train what is missing, then measure and write the table and the figure."""
    import selectivekit as sk

    out = Path(out)
    (out / "logits").mkdir(parents=True, exist_ok=True)
    base = {"dataset": "synthetic-glas", "data_dir": str(out / "data")} | (base or {})
    for seed in seeds:
        path = out / "logits" / f"seed{seed}.npz"
        if not path.is_file():
            t0 = time.perf_counter()
            _train(seed, base, path)
            echo(
                f"  model {seed}: trained in {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.1f})"
            )
    models = [_load(out / "logits" / f"seed{s}.npz") for s in seeds]
    num_classes = models[0][0][0].shape[0]
    calib = [i for i, (_, _, part) in enumerate(models[0]) if part == CALIBRATION_PART]
    evaluation = [i for i, (_, _, part) in enumerate(models[0]) if part == EVALUATION_PART]
    labels = [models[0][i][1] for i in evaluation]

    single = [models[0][i][0] for i in evaluation]
    scaling = sk.fit_temperature([(models[0][i][0], models[0][i][1]) for i in calib], axis=0)
    scaled = [scaling.apply(z, axis=0) for z in single]
    rows, sources, curves = {}, {}, {}
    for name, logits in (("one model", single), ("one model, temperature-scaled", scaled)):
        probs = [_softmax(z) for z in logits]
        preds = [p.argmax(axis=0) for p in probs]
        sources[name] = _calibration(probs, labels, num_classes)
        measures = {"msp": [sk.max_softmax_uncertainty(p, axis=0) for p in probs],
                    "entropy": [sk.entropy_uncertainty(p, axis=0) for p in probs]}  # fmt: skip
        sources[name]["dice"] = _dice(preds, labels, measures["msp"], num_classes)
        for measure, maps in measures.items():
            rows[f"{name}: {measure}"] = _ranking(preds, labels, maps, num_classes)
            curves[f"{name}: {measure}"] = (preds, maps)

    ensembles = []
    for i in evaluation:
        acc = sk.PredictiveAccumulator(axis=0)
        for m in models:
            acc.update(_softmax(m[i][0]))
        ensembles.append(acc.result())
    preds = [e.prediction for e in ensembles]
    name = f"{len(models)}-model ensemble"
    sources[name] = _calibration([e.mean for e in ensembles], labels, num_classes)
    sources[name]["dice"] = _dice(preds, labels, [e.measure("msp") for e in ensembles], num_classes)
    for measure in ("msp", "entropy", "expected-entropy", "mutual-information", "disagreement"):
        maps = [e.measure(measure) for e in ensembles]
        rows[f"{name}: {measure}"] = _ranking(preds, labels, maps, num_classes)
        curves[f"{name}: {measure}"] = (preds, maps)

    result = {
        "models": len(models),
        "calibration_images": len(calib),
        "evaluation_images": len(evaluation),
        "temperature": scaling.temperature[0],
        "ranking": rows,
        "calibration": {k: {m: v for m, v in s.items() if m != "bins"} for k, s in sources.items()},
        "config": base,
    }
    (out / "uncertainty.json").write_text(json.dumps(result, indent=1) + "\n")
    text = _markdown(result)
    (out / "uncertainty.md").write_text(text + "\n")
    _figures(sources, curves, labels, num_classes, out)
    echo(text)
    return result


def _markdown(result: dict) -> str:
    lines = [
        f"Synthetic GlaS, {result['models']} baseline U-Nets (seeds 0-{result['models'] - 1}); "
        f"temperature fitted on {CALIBRATION_PART} ({result['calibration_images']} images, "
        f"T = {result['temperature']:.2f}); every number on {EVALUATION_PART} "
        f"({result['evaluation_images']} images). Percentages; lower is better except Dice.",
        "",
        "| uncertainty map | AURC (Dice) | voxel AURC | voxel e-AURC |",
        "|---|---|---|---|",
    ]
    for name, r in result["ranking"].items():
        cells = " | ".join(f"{100 * r[k]:.3f}" for k in ("aurc", "voxel_aurc", "voxel_e_aurc"))
        lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        "| probabilities | Dice | ECE | class-wise ECE | Brier | NLL |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in result["calibration"].items():
        lines.append(
            f"| {name} | {100 * c['dice']:.2f} | {100 * c['ece']:.2f} | {100 * c['classwise_ece']:.2f} "
            f"| {100 * c['brier']:.2f} | {c['nll']:.4f} |"
        )
    return "\n".join(lines)


def _figures(sources: dict, curves: dict, labels, num_classes: int, out: Path) -> None:
    """``reliability.png`` (every probability source) and ``dice_coverage.png`` (every uncertainty map)."""
    import selectivekit as sk
    from selectivekit.plotting import plot_dice_coverage, plot_reliability

    fig = plot_reliability({name: s["bins"] for name, s in sources.items()}, title="test part B")
    fig.savefig(out / "reliability.png", dpi=110)
    dice = {
        name: sk.dice_coverage_curve(preds, labels, maps, num_classes=num_classes)
        for name, (preds, maps) in curves.items()
    }
    fig = plot_dice_coverage(dice, min_coverage=0.8, title="Dice after referral, test part B", figsize=(7, 5))
    fig.savefig(out / "dice_coverage.png", dpi=110)

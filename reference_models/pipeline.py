"""The ``reproduce`` job: data -> baseline and uncertainty-aware models -> held-out metrics -> report."""

from __future__ import annotations

import time
from pathlib import Path

from reference_models.config import RunConfig
from reference_models.evaluate import PartResult, Prediction, evaluate_part, predict_images
from reference_models.report import format_table, write_report
from reference_models.tasks import build_task

__all__ = ["make_trainer", "reproduce"]


def make_trainer(task, cfg: RunConfig):
    """The framework's trainer; under ``torchrun`` the PyTorch one joins the process group first."""
    if cfg.framework == "torch":
        from reference_models.train_torch import TorchTrainer, init_distributed

        return TorchTrainer(task, cfg, init_distributed(cfg.device))
    from reference_models.train_keras import KerasTrainer

    return KerasTrainer(task, cfg)


def reproduce(cfg: RunConfig, *, echo=print) -> dict | None:
    """Run the whole job; returns the report on the main process (``None`` on other ranks)."""
    cfg = cfg.resolved()
    started = time.perf_counter()
    task = build_task(cfg)
    trainer = make_trainer(task, cfg)
    info = trainer.dist
    predictions: dict[str, list[Prediction]] = {kind: [] for kind in cfg.models}
    timings: dict[str, float] = {}
    for run in task.runs:
        for kind in cfg.models:
            t0 = time.perf_counter()
            model = trainer.fit(run, kind)
            timings[f"{run.name}/{kind}/train_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            mine = predict_images(
                lambda image, model=model: trainer.predict_logits(model, image),
                run.eval_images, rank=info.rank, world=info.world,
            )  # fmt: skip
            predictions[kind] += trainer.gather(mine)
            timings[f"{run.name}/{kind}/predict_s"] = round(time.perf_counter() - t0, 2)
    if not info.is_main:
        return None
    results: dict[str, dict[str, PartResult]] = {}
    for kind, preds in predictions.items():
        results[kind] = {
            part: evaluate_part([p for p in preds if p.part == part], task.num_classes) for part in task.parts
        }
    timings["total_s"] = round(time.perf_counter() - started, 2)
    extra = {
        "config": {
            k: getattr(cfg, k)
            for k in (
                "epochs",
                "width",
                "patch",
                "batch_size",
                "seed",
                "lr",
                "weight",
                "margin",
                "pairs",
                "protocol",
                "samples_per_epoch",
                "spacing",
            )
        },
        "world_size": info.world,
        "timings": timings,
    }
    report = write_report(cfg.out, cfg.dataset, cfg.framework, results, notes=task.notes, extra=extra)
    echo("")
    echo(format_table(report))
    for note in task.notes:
        echo(f"NOTE: {note}")
    echo(f"report: {Path(cfg.out) / 'report.md'} (total {timings['total_s']:.0f} s)")
    return report

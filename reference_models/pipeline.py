"""The ``reproduce`` job: data -> baseline and uncertainty-aware models -> held-out metrics -> report."""

from __future__ import annotations

import time
from pathlib import Path

from reference_models.config import RunConfig
from reference_models.evaluate import (
    PartResult,
    Prediction,
    accumulate,
    evaluate_accumulator,
    evaluate_part,
    predict_images,
)
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
    try:
        return _reproduce(cfg, task, trainer, started, echo)
    finally:
        trainer.close()


def _reproduce(cfg: RunConfig, task, trainer, started: float, echo) -> dict | None:
    info = trainer.dist
    # one process: every prediction in memory, exact metrics; several: mergeable accumulators per part
    predictions: dict[str, list[Prediction]] = {kind: [] for kind in cfg.models}
    streamed: dict[str, dict] = {kind: {} for kind in cfg.models}
    meta: dict[str, list] = {kind: [] for kind in cfg.models}
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
            if info.enabled:
                shard = (
                    accumulate(mine, task.parts, task.num_classes),
                    [(p.name, p.part, p.group) for p in mine],
                )
                for accs, names in trainer.gather(shard):  # rank order, on the main process
                    for part, acc in accs.items():
                        streamed[kind][part] = (
                            streamed[kind][part].merge(acc) if part in streamed[kind] else acc
                        )
                    meta[kind] += names
            else:
                predictions[kind] += mine
            timings[f"{run.name}/{kind}/predict_s"] = round(time.perf_counter() - t0, 2)
    if not info.is_main:
        return None
    results: dict[str, dict[str, PartResult]] = {}
    for kind, preds in predictions.items():
        if info.enabled:
            results[kind] = {}
            for part in task.parts:
                names = [m for m in meta[kind] if m[1] == part]
                results[kind][part] = evaluate_accumulator(
                    streamed[kind][part], [m[0] for m in names], [m[2] for m in names]
                )
        else:
            results[kind] = {
                part: evaluate_part([p for p in preds if p.part == part], task.num_classes)
                for part in task.parts
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

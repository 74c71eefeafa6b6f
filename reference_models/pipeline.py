"""The ``reproduce`` job: data -> baseline and uncertainty-aware models -> held-out metrics -> report."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from reference_models.config import RunConfig
from reference_models.cpu_isa import PINNED
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

__all__ = ["environment", "make_trainer", "reproduce"]


def make_trainer(task, cfg: RunConfig):
    """The framework's trainer; under ``torchrun`` the PyTorch one joins the process group first."""
    if cfg.framework == "torch":
        from reference_models.train_torch import TorchTrainer, init_distributed

        return TorchTrainer(task, cfg, init_distributed(cfg.device))
    from reference_models.train_keras import KerasTrainer

    return KerasTrainer(task, cfg)


def reproduce(cfg: RunConfig, *, echo=print) -> dict | None:
    """Run the whole job; returns the report on the main process (``None`` on other ranks).

    With ``cfg.seeds`` each seed trains and evaluates both models (the data stay the same; the seed sets
    the initial weights, the patches and the sampled pairs); every seed's own report goes to
    ``OUT/seed<S>/`` and ``OUT/report.{json,md}`` summarises them: mean ± std across seeds and the paired
    differences (ours minus baseline) over seeds and per image.
    """
    cfg = cfg.resolved()
    started = time.perf_counter()
    task = build_task(cfg)
    trainer = make_trainer(task, cfg)
    seeds = list(cfg.seeds) if cfg.seeds else [cfg.seed]
    try:
        per_seed = []
        for seed in seeds:
            seed_cfg = dataclasses.replace(cfg, seed=seed, seeds=None)
            if len(seeds) > 1:
                seed_cfg = dataclasses.replace(seed_cfg, out=str(Path(cfg.out) / f"seed{seed}"))
                echo(f"seed {seed}: {seed_cfg.out}")
            trainer.cfg = seed_cfg  # the trainer reads seed, out and checkpoints from its config
            per_seed.append(_train_and_evaluate(seed_cfg, task, trainer))
        if not trainer.dist.is_main:
            return None
        return _report(cfg, task, seeds, per_seed, trainer.dist.world, started, echo)
    finally:
        trainer.close()


def _train_and_evaluate(cfg: RunConfig, task, trainer) -> tuple[dict, dict] | None:
    """Train every model of every run with ``cfg.seed``; the per-part results on the main process."""
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
        return None, timings
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
    return results, timings


def _config_summary(cfg: RunConfig) -> dict:
    keys = (
        "epochs", "width", "patch", "batch_size", "seed", "lr", "weight", "margin", "pairs", "protocol",
        "samples_per_epoch", "spacing", "unc_start", "unc_ramp", "rank_within", "n_wrong", "n_correct",
        "loss_setting", "unc_push", "seg_loss",
    )  # fmt: skip
    return {k: getattr(cfg, k) for k in keys}


def environment(framework: str) -> dict:
    """What the bits of a run depend on besides its settings: library versions, threads, CPU kernels.

    A run repeats bit for bit only when these are the same too (docs/reproduction.md, "Determinism").
    """
    import platform

    import numpy as np
    import scipy

    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu": _cpu_name(),
    }
    if framework == "torch":
        import torch

        env |= {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            # the instruction-set caps `python -m reference_models` sets (reference_models/cpu_isa.py)
            "cpu_isa_pin": {name: os.environ[name] for name in PINNED if name in os.environ},
        }
    else:
        import keras
        import tensorflow as tf

        env |= {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "threads": tf.config.threading.get_intra_op_parallelism_threads(),
        }
    return env


def _cpu_name() -> str:
    """The CPU's model name (Linux: from /proc/cpuinfo), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _report(cfg: RunConfig, task, seeds: list[int], per_seed: list, world: int, started: float, echo) -> dict:
    timings = {}
    for seed, (_, t) in zip(seeds, per_seed, strict=True):
        timings.update({(f"seed{seed}/{k}" if len(seeds) > 1 else k): v for k, v in t.items()})
    if len(seeds) > 1:  # every seed's own report, in its own folder
        for seed, (results, _) in zip(seeds, per_seed, strict=True):
            seed_cfg = dataclasses.replace(cfg, seed=seed)
            extra = {"config": _config_summary(seed_cfg), "world_size": world}
            write_report(
                Path(cfg.out) / f"seed{seed}", cfg.dataset, cfg.framework, results, notes=task.notes,
                extra=extra,
            )  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - started, 2)
    extra = {
        "config": _config_summary(cfg) | {"seeds": seeds},
        "world_size": world,
        "timings": timings,
        "environment": environment(cfg.framework),
    }
    report = write_report(
        cfg.out, cfg.dataset, cfg.framework, [r for r, _ in per_seed], notes=task.notes, extra=extra,
        seeds=seeds,
    )  # fmt: skip
    echo("")
    echo(format_table(report))
    for note in task.notes:
        echo(f"NOTE: {note}")
    echo(f"report: {Path(cfg.out) / 'report.md'} (total {timings['total_s']:.0f} s)")
    return report

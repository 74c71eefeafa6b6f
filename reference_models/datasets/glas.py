"""GlaS (MICCAI 2015 gland segmentation), 2D: the real folder and the built-in synthetic one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reference_models.data import glas, synthetic
from reference_models.datasets import DatasetSpec
from reference_models.tasks import EvalImage, Run, Task

if TYPE_CHECKING:
    from reference_models.config import RunConfig

__all__ = ["SPECS", "build_glas_task"]


def build_glas_task(cfg: RunConfig, directory: Path) -> Task:
    data = glas.load_glas(directory)

    def chw(image: np.ndarray) -> np.ndarray:
        # per-channel scaling to about [-1, 1]; fixed, not per-image statistics
        return (np.moveaxis(image, -1, 0).astype(np.float32) - 127.5) / 127.5

    train = data["train"]
    evals = [
        EvalImage(g.name, g.split, chw(g.image), g.mask.astype(np.uint8), g.grade)
        for part in ("testA", "testB")
        for g in data[part]
    ]
    run = Run("glas", [chw(g.image) for g in train], [g.mask.astype(np.uint8) for g in train], evals)
    return Task(
        dataset=cfg.dataset, dims=2, in_channels=3, num_classes=2, class_weights=None,
        patch_size=(cfg.patch, cfg.patch), parts=("testA", "testB"), runs=[run], combine="average",
        rotate=True,
    )  # fmt: skip


_COMMON = {"dims": 2, "build_task": build_glas_task}
SPECS = (
    # the built-in CPU job: small 2D U-Net, 128x128 crops, must finish in minutes on 2 cores
    DatasetSpec(
        "synthetic-glas", **_COMMON, write_synthetic=synthetic.write_synthetic_glas,
        defaults={
            "lr": 2e-4, "epochs": 20, "width": 0.125, "patch": 128, "samples_per_epoch": 192, "spacing": 2.0,
            "seg_loss": "ce",
        },
    ),
    # paper settings for GlaS: 192x192 crops, full-width 2D U-Net
    DatasetSpec(
        "glas", **_COMMON,
        defaults={
            "lr": 2e-4, "epochs": 100, "width": 1.0, "patch": 192, "samples_per_epoch": 340, "spacing": 2.0,
            "seg_loss": "ce",
        },
    ),
)  # fmt: skip

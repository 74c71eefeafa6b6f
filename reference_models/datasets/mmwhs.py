"""MM-WHS (whole-heart CT), 3D: the real training set and the built-in synthetic one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reference_models.data import mmwhs, synthetic
from reference_models.data.patches import authors_crop, authors_training_crops
from reference_models.datasets import DatasetSpec
from reference_models.tasks import EvalImage, Run, Task

if TYPE_CHECKING:
    from reference_models.config import RunConfig

__all__ = ["SPECS", "build_mmwhs_task"]


def _axial_slices(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[list, list]:
    """Every axial slice of every volume: images ``(C, X, Y)`` and labels ``(X, Y)``."""
    pairs = [
        (im[..., z], lb[..., z]) for im, lb in zip(images, labels, strict=True) for z in range(lb.shape[-1])
    ]
    return [np.ascontiguousarray(a) for a, _ in pairs], [np.ascontiguousarray(b) for _, b in pairs]


# share of training patches centred on a foreground voxel (nnU-Net's 1/3); the synthetic heart fills less of
# its field of view, and two thirds let the CPU-sized budget reach every structure
_FOREGROUND = {"synthetic-mmwhs": 2 / 3}


def build_mmwhs_task(cfg: RunConfig, directory: Path) -> Task:
    volumes = mmwhs.load_mmwhs(directory, (cfg.spacing,) * 3)
    folds = mmwhs.folds_in_order(len(volumes))
    chosen = range(len(folds)) if cfg.folds is None else cfg.folds
    runs = []
    notes = []
    for k in chosen:
        if not 0 <= k < len(folds):
            msg = f"`folds` entries must be in [0, {len(folds)}), got {k}."
            raise ValueError(msg)
        held = set(folds[k])
        train = [v for i, v in enumerate(volumes) if i not in held]
        test = [volumes[i] for i in folds[k]]
        if cfg.protocol == "authors":
            crops = [c for v in train for c in authors_training_crops(v.image[None], v.label, cfg.patch)]
            images, labels = [c[0] for c in crops], [c[1] for c in crops]
            evals = []
            for v in test:
                image, label = authors_crop(v.image[None], v.label, cfg.patch)
                evals.append(EvalImage(v.case, "cv", image, label))
        else:
            images, labels = [v.image[None] for v in train], [v.label for v in train]
            evals = [EvalImage(v.case, "cv", v.image[None], v.label) for v in test]
        if cfg.slices:  # the 2D version of the same task: axial slices (study option)
            images, labels = _axial_slices(images, labels)
            evals = [
                EvalImage(f"{e.name}_z{z:03d}", e.part, e.image[..., z], e.label[..., z])
                for e in evals
                for z in range(e.label.shape[-1])
                if e.label[..., z].any()
            ]
        runs.append(Run(f"fold{k}", images, labels, evals))
    if cfg.protocol == "authors":
        notes.append(
            "Protocol `authors`: every input, including the held-out ones, is the ground-truth foreground "
            "bounding box resized to 64^3. This LEAKS THE LABEL into the test inputs (the network is told "
            "where the heart is and how large it is); the numbers are not a valid estimate of performance."
        )
    # the authors' cross-entropy weights: myocardium (class 5) counts twice
    weights = [1.0] * mmwhs.NUM_CLASSES
    weights[5] = 2.0
    if cfg.slices:
        notes.append(
            "2D study option (`--slices`): trained on axial slices, evaluated on the held-out slices that "
            "contain heart; not the paper's 3D protocol."
        )
    dims = 2 if cfg.slices else 3
    return Task(
        dataset=cfg.dataset, dims=dims, in_channels=1, num_classes=mmwhs.NUM_CLASSES, class_weights=weights,
        patch_size=(cfg.patch,) * dims, parts=("cv",), runs=runs, combine="single", notes=notes,
        foreground_fraction=0.0 if cfg.protocol == "authors" else _FOREGROUND.get(cfg.dataset, 1 / 3),
    )  # fmt: skip


_COMMON = {"dims": 3, "build_task": build_mmwhs_task, "options": frozenset({"protocol-authors", "slices"})}
SPECS = (
    # CPU-sized (docs/synthetic-mmwhs.md): the 168 mm field of view is 42 x 42 x 44 voxels at 4 mm; a
    # 24^3 patch (96 mm) costs 0.42x a 32^3 one; 100 epochs of 96 patches (1200 steps) are what the
    # baseline needs to learn every structure on every seed, about 5 minutes on one thread
    DatasetSpec(
        "synthetic-mmwhs", **_COMMON, write_synthetic=synthetic.write_synthetic_mmwhs,
        defaults={
            "lr": 3e-3, "epochs": 100, "width": 0.25, "patch": 24, "samples_per_epoch": 96, "spacing": 4.0,
            "seg_loss": "ce+dice",
        },
    ),
    # paper settings for MM-WHS: 64^3 patches at 2 mm, 27 patches per training volume per epoch, 10 epochs
    DatasetSpec(
        "mmwhs", **_COMMON,
        defaults={
            "lr": 2e-4, "epochs": 10, "width": 1.0, "patch": 64, "samples_per_epoch": 16 * 27, "spacing": 2.0,
            "seg_loss": "ce",
        },
    ),
)  # fmt: skip

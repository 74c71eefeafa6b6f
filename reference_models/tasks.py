"""Turn a dataset on disk into training runs and held-out evaluation sets (framework independent).

A :class:`Task` has one or more :class:`Run` objects (GlaS: one; MM-WHS: one per cross-validation fold).
Each run trains the baseline and the uncertainty-aware model on the same patches and evaluates both on its
held-out images, grouped into the *parts* that the report summarises (GlaS: ``testA`` and ``testB``;
MM-WHS: ``cv``, the union of every fold's held-out volumes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference_models.config import RunConfig
from reference_models.data import glas, mmwhs, synthetic
from reference_models.data.patches import authors_crop, authors_training_crops

__all__ = ["EvalImage", "Run", "Task", "build_task", "default_synthetic_dir"]


@dataclass
class EvalImage:
    """A held-out image: ``image`` (C, *spatial) float32, ``label`` (*spatial) uint8."""

    name: str
    part: str
    image: np.ndarray
    label: np.ndarray
    group: str | None = None  # GlaS grade (benign / malignant), for the per-image figure


@dataclass
class Run:
    name: str
    train_images: list[np.ndarray]
    train_labels: list[np.ndarray]
    eval_images: list[EvalImage]


@dataclass
class Task:
    dataset: str
    dims: int
    in_channels: int
    num_classes: int
    class_weights: list[float] | None
    patch_size: tuple[int, ...]
    parts: tuple[str, ...]
    runs: list[Run]
    combine: str  # "average" (GlaS: mean of the parts' numbers) or "single"
    notes: list[str] = field(default_factory=list)
    foreground_fraction: float = 0.0
    rotate: bool = False


def default_synthetic_dir(dataset: str, seed: int = 0) -> Path:
    """Cache folder for the built-in synthetic datasets (under the system temp dir)."""
    return Path(tempfile.gettempdir()) / "selectivekit-reference" / f"{dataset}-seed{seed}"


def _ensure_synthetic(cfg: RunConfig) -> Path:
    """Write the synthetic dataset once; later runs (and other ranks) reuse the finished folder.

    The files are written into a private temporary folder that is renamed into place when complete, so
    concurrent processes (``torchrun`` ranks) never read a half-written dataset.
    """
    options = cfg.extra.get("synthetic", {})
    if cfg.data_dir:
        directory = Path(cfg.data_dir)
    else:
        directory = default_synthetic_dir(cfg.dataset)
        if options:
            digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
            directory = directory.with_name(f"{directory.name}-{digest}")
    if (directory / ".complete").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    writer = (
        synthetic.write_synthetic_glas if cfg.dataset == "synthetic-glas" else synthetic.write_synthetic_mmwhs
    )
    writer(staging, **options)
    (staging / ".complete").write_text("written by reference_models.data.synthetic\n")
    try:
        os.rename(staging, directory)  # atomic; fails if another process finished first
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / ".complete").is_file():
            msg = f"{directory} exists but is not a finished synthetic dataset; remove it and retry."
            raise FileExistsError(msg) from None
    return directory


def _glas_task(cfg: RunConfig, directory: Path) -> Task:
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
        cfg.dataset, 2, 3, 2, None, (cfg.patch, cfg.patch), ("testA", "testB"), [run], "average",
        rotate=True,
    )  # fmt: skip


def _mmwhs_task(cfg: RunConfig, directory: Path) -> Task:
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
        cfg.dataset, dims, 1, mmwhs.NUM_CLASSES, weights, (cfg.patch,) * dims, ("cv",), runs, "single",
        notes=notes, foreground_fraction=0.0 if cfg.protocol == "authors" else 1 / 3,
    )  # fmt: skip


def _axial_slices(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[list, list]:
    """Every axial slice of every volume: images ``(C, X, Y)`` and labels ``(X, Y)``."""
    pairs = [
        (im[..., z], lb[..., z]) for im, lb in zip(images, labels, strict=True) for z in range(lb.shape[-1])
    ]
    return [np.ascontiguousarray(a) for a, _ in pairs], [np.ascontiguousarray(b) for _, b in pairs]


def build_task(cfg: RunConfig) -> Task:
    """Read (or first write, for the synthetic datasets) the data and split it into runs."""
    cfg = cfg.resolved()
    if cfg.dataset.startswith("synthetic-"):
        directory = _ensure_synthetic(cfg)
    else:
        directory = Path(cfg.data_dir)
    if "glas" in cfg.dataset:
        return _glas_task(cfg, directory)
    return _mmwhs_task(cfg, directory)

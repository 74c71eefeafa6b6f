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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from reference_models.config import RunConfig

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
    """Cache folder for the built-in synthetic datasets (under the system temp dir).

    The name carries the generator's version, so a folder written by an older generator is never reused.
    """
    from reference_models.data.synthetic import GENERATOR_VERSIONS

    version = GENERATOR_VERSIONS.get(dataset, 1)
    return Path(tempfile.gettempdir()) / "selectivekit-reference" / f"{dataset}-v{version}-seed{seed}"


def _ensure_synthetic(cfg: RunConfig, writer) -> Path:
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


def build_task(cfg: RunConfig) -> Task:
    """Read (or first write, for the synthetic datasets) the data and split it into runs."""
    from reference_models.datasets import get_dataset

    cfg = cfg.resolved()
    spec = get_dataset(cfg.dataset)
    directory = _ensure_synthetic(cfg, spec.write_synthetic) if spec.write_synthetic else Path(cfg.data_dir)
    return spec.build_task(cfg, directory)

"""Run configuration shared by the command line, the trainers and the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

__all__ = ["DATASETS", "MODEL_KINDS", "RunConfig"]

DATASETS = ("synthetic-glas", "synthetic-mmwhs", "glas", "mmwhs")
MODEL_KINDS = ("baseline", "uncertainty_aware")

# Per-dataset defaults; `None` in RunConfig means "take it from here".
_DEFAULTS = {
    # the built-in CPU job: small 2D U-Net, 128x128 crops, must finish in minutes on 2 cores
    "synthetic-glas": {"epochs": 20, "width": 0.125, "patch": 128, "samples_per_epoch": 192, "spacing": 2.0},
    # paper settings for GlaS: 192x192 crops, full-width 2D U-Net
    "glas": {"epochs": 100, "width": 1.0, "patch": 192, "samples_per_epoch": 85 * 4, "spacing": 2.0},
    # CPU-sized: at 4 mm a 32^3 patch sees 128 mm, the whole synthetic heart (a pipeline check on CPU;
    # for paper-size numbers use --width 1 --patch 64 --spacing 2 on a GPU)
    "synthetic-mmwhs": {"epochs": 20, "width": 0.25, "patch": 32, "samples_per_epoch": 96, "spacing": 4.0},
    # paper settings for MM-WHS: 64^3 patches at 2 mm, 27 patches per training volume per epoch, 10 epochs
    "mmwhs": {"epochs": 10, "width": 1.0, "patch": 64, "samples_per_epoch": 16 * 27, "spacing": 2.0},
}


@dataclass
class RunConfig:
    """Everything that determines a run. ``None`` fields take the dataset's default (see ``resolved``)."""

    dataset: str = "synthetic-glas"
    data_dir: str | None = None
    framework: str = "torch"
    epochs: int | None = None
    out: str = "runs/reproduce"
    device: str = "auto"
    pairs: str = "exact"
    protocol: str = "default"
    resume: bool = False
    width: float | None = None
    batch_size: int = 8
    seed: int = 42
    lr: float = 2e-4
    weight: float = 2000.0
    margin: float = 0.1
    patch: int | None = None
    samples_per_epoch: int | None = None
    folds: list[int] | None = None
    spacing: float | None = None
    models: tuple[str, ...] = MODEL_KINDS
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def resolved(self) -> RunConfig:
        """A copy with every ``None`` default filled in from the dataset's defaults, validated."""
        if self.dataset not in DATASETS:
            msg = f"`dataset` must be one of {DATASETS}, got {self.dataset!r}."
            raise ValueError(msg)
        for name, allowed in (
            ("framework", ("torch", "keras")),
            ("pairs", ("exact", "sampled")),
            ("protocol", ("default", "authors")),
        ):
            if getattr(self, name) not in allowed:
                msg = f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}."
                raise ValueError(msg)
        if self.protocol == "authors" and "mmwhs" not in self.dataset:
            msg = (
                "`--protocol authors` applies to MM-WHS only: the authors published no GlaS pipeline, "
                "so there is nothing to reproduce for GlaS."
            )
            raise ValueError(msg)
        if self.dataset in ("glas", "mmwhs") and not self.data_dir:
            msg = f"`--data-dir` is required for the real {self.dataset} dataset."
            raise ValueError(msg)
        if self.batch_size < 1:
            msg = f"`batch_size` must be >= 1, got {self.batch_size}."
            raise ValueError(msg)
        for kind in self.models:
            if kind not in MODEL_KINDS:
                msg = f"`models` must be among {MODEL_KINDS}, got {kind!r}."
                raise ValueError(msg)
        defaults = _DEFAULTS[self.dataset]
        values = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in defaults}
        if self.protocol == "authors":
            values["patch"] = 64
        return dataclasses.replace(self, **values)

    @property
    def is_3d(self) -> bool:
        return "mmwhs" in self.dataset

    def fingerprint(self, kind: str, run: str) -> str:
        """Hash of everything that changes training; a checkpoint is only resumed if it matches."""
        keys = (
            "dataset", "data_dir", "framework", "pairs", "protocol", "width", "batch_size", "seed", "lr",
            "weight", "margin", "patch", "samples_per_epoch", "spacing",
        )  # fmt: skip
        payload = {k: getattr(self, k) for k in keys} | {"kind": kind, "run": run}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

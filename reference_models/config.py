"""Run configuration shared by the command line, the trainers and the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from reference_models.datasets import dataset_names, get_dataset
from selectivekit import LOSS_SETTINGS, LossSetting

__all__ = ["DATASETS", "LOSS_PRESETS", "MODEL_KINDS", "SEG_LOSSES", "UNC_TERMS", "RunConfig"]

DATASETS = dataset_names()
MODEL_KINDS = ("baseline", "uncertainty_aware")

# The uncertainty term's settings: the library's named settings (selectivekit.LOSS_SETTINGS), so the reference
# trainers, the losses and the nnU-Net trainers share one default. "authors" is the paper's exact objective
# (weight 2000 on the mean over all pairs of the batch, from the first step); "default" is the library's
# default. `unc_start`/`unc_ramp` are given here as shares of the run's epochs.
LOSS_PRESETS = {
    name: {
        "weight": setting.weight,
        "unc_start": setting.warmup,
        "unc_ramp": setting.ramp,
        "rank_within": "batch",
        "unc_push": setting.push,
    }
    for name, setting in LOSS_SETTINGS.items()
}
RANK_WITHIN = ("batch", "image", "class")
# the segmentation term of both models: the paper's cross-entropy, or cross-entropy plus a soft Dice over
# the foreground classes (nnU-Net's loss; the CPU-sized synthetic MM-WHS default, see docs/reproduction.md)
SEG_LOSSES = ("ce", "ce+dice")
# the second term of the "uncertainty_aware" model: the ranking loss, or the study's control for hard-example
# emphasis ("error-push": the binary push on every wrong voxel, with no correct side and no margin; see
# train_torch.error_push_loss)
UNC_TERMS = ("ranking", "error-push")


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
    lr: float | None = None
    weight: float | None = None
    margin: float = 0.1
    patch: int | None = None
    samples_per_epoch: int | None = None
    folds: list[int] | None = None
    spacing: float | None = None
    n_wrong: int = 300
    n_correct: int = 6600
    loss_setting: str = "default"
    unc_start: float | None = None
    unc_ramp: float | None = None
    rank_within: str | None = None
    log_every: int = 0
    slices: bool = False
    unc_sides: str = "both"
    unc_region: str = "all"
    unc_push: str | None = None
    seg_loss: str | None = None
    unc_term: str = "ranking"
    seeds: list[int] | None = None
    models: tuple[str, ...] = MODEL_KINDS
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def resolved(self) -> RunConfig:
        """A copy with every ``None`` default filled in from the dataset's defaults, validated."""
        spec = get_dataset(self.dataset)
        for name, allowed in (
            ("framework", ("torch", "keras")),
            ("pairs", ("exact", "sampled")),
            ("protocol", ("default", "authors")),
            ("loss_setting", tuple(LOSS_PRESETS)),
            ("rank_within", (None, *RANK_WITHIN)),
            ("unc_push", (None, "uniform", "label", "binary")),
            ("seg_loss", (None, *SEG_LOSSES)),
            ("unc_term", UNC_TERMS),
        ):
            if getattr(self, name) not in allowed:
                msg = f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}."
                raise ValueError(msg)
        if self.protocol == "authors" and "protocol-authors" not in spec.options:
            msg = (
                "`--protocol authors` applies to MM-WHS only: the authors published no GlaS pipeline, "
                "so there is nothing to reproduce for GlaS."
            )
            raise ValueError(msg)
        torch_only = {"rank_within": "batch", "unc_sides": "both", "unc_region": "all", "log_every": 0}
        if self.framework == "keras":
            for key, plain in torch_only.items():
                if getattr(self, key) not in (None, plain):
                    msg = f"`{key}` is a study option of the PyTorch trainer; Keras takes only {plain!r}."
                    raise ValueError(msg)
            if self.unc_push == "label":
                msg = "`unc_push` 'label' is a study option of the PyTorch trainer."
                raise ValueError(msg)
        if self.slices and "slices" not in spec.options:
            msg = "`--slices` (2D axial slices) applies to MM-WHS only."
            raise ValueError(msg)
        if not spec.synthetic and not self.data_dir:
            msg = f"`--data-dir` is required for the real {self.dataset} dataset."
            raise ValueError(msg)
        if self.batch_size < 1:
            msg = f"`batch_size` must be >= 1, got {self.batch_size}."
            raise ValueError(msg)
        for kind in self.models:
            if kind not in MODEL_KINDS:
                msg = f"`models` must be among {MODEL_KINDS}, got {kind!r}."
                raise ValueError(msg)
        defaults = spec.defaults
        values = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in defaults}
        if self.protocol == "authors" and self.patch is None:
            values["patch"] = 64  # the authors' crop size; --patch overrides it (CPU-sized studies)
        if values["epochs"] < 1:
            msg = f"`epochs` must be >= 1, got {values['epochs']}."
            raise ValueError(msg)
        preset = LOSS_PRESETS[self.loss_setting]
        epochs = values["epochs"]
        for key in ("weight", "rank_within", "unc_push"):
            values[key] = preset[key] if getattr(self, key) is None else getattr(self, key)
        for key in ("unc_start", "unc_ramp"):  # presets give shares of the epochs; options give epochs
            values[key] = preset[key] * epochs if getattr(self, key) is None else float(getattr(self, key))
        for key in ("weight", "unc_start", "unc_ramp", "lr"):
            value = values.get(key, getattr(self, key))
            if not (
                isinstance(value, (int, float)) and value >= 0 and value == value and value != float("inf")
            ):
                msg = f"`{key}` must be a finite number >= 0, got {value!r}."
                raise ValueError(msg)
        return dataclasses.replace(self, **values)

    def uncertainty_setting(self) -> LossSetting:
        """The uncertainty term's weight, push and schedule (of a resolved config) as the library's object.

        The study push ``"label"`` is applied to the logits by the trainer; its margin loss pushes uniformly.
        """
        return LossSetting(
            weight=self.weight,
            push=self.unc_push if self.unc_push in ("binary", "uniform") else "uniform",
            warmup=min(1.0, self.unc_start / self.epochs),
            ramp=self.unc_ramp / self.epochs,
        )

    def unc_factor(self, epoch: float) -> float:
        """Share of ``weight`` applied at (fractional) ``epoch``: 0 before ``unc_start``, then a linear ramp
        over ``unc_ramp`` epochs up to 1 (the library's schedule, `LossSetting.weight_at`)."""
        return self.uncertainty_setting().replace(weight=1.0).weight_at(epoch / self.epochs)

    @property
    def is_3d(self) -> bool:
        return get_dataset(self.dataset).dims == 3 and not self.slices

    def fingerprint(self, kind: str, run: str) -> str:
        """Hash of everything that changes training; a checkpoint is only resumed if it matches."""
        keys = (
            "dataset", "data_dir", "framework", "pairs", "protocol", "width", "batch_size", "seed", "lr",
            "weight", "margin", "patch", "samples_per_epoch", "spacing", "unc_start", "unc_ramp",
            "rank_within", "n_wrong", "n_correct", "slices", "unc_sides", "unc_region", "unc_push",
            "seg_loss", "unc_term",
        )  # fmt: skip
        payload = {k: getattr(self, k) for k in keys} | {"kind": kind, "run": run}
        # cross-entropy was the only term before the option existed: checkpoints of those runs still match
        if payload["seg_loss"] == "ce":
            del payload["seg_loss"]
        if payload["unc_term"] == "ranking":  # likewise for runs from before the control existed
            del payload["unc_term"]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

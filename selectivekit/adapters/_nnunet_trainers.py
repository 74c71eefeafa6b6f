"""The nnU-Net v2 trainer classes; imported on first use by `selectivekit.adapters.nnunet`.

This module imports nnU-Net (and so torch) at import time: the public module exposes its names lazily, so
that ``selectivekit-nnunet path`` and ``import selectivekit.adapters.nnunet`` work without either.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from selectivekit.adapters.torch import UncertaintyMarginLoss

from ..loss_setting import LOSS_SETTINGS, LossSetting
from ._nnunet_names import DEFAULT_WEIGHT, SHORT_SCHEDULES, schedule_suffix

_PUBLIC_MODULE = "selectivekit.adapters.nnunet"

#: The keys this trainer adds to nnU-Net's logger (one value per epoch, like nnU-Net's own).
LOG_KEYS = ("train_seg_losses", "train_unc_losses", "val_seg_losses", "val_unc_losses")


class NNUNetUncertaintyAwareLoss(nn.Module):
    """nnU-Net's segmentation loss plus ``weight`` times the uncertainty margin loss.

    Parameters
    ----------
    seg_loss : nn.Module
        nnU-Net's own loss as ``nnUNetTrainer._build_loss`` builds it (a ``DeepSupervisionWrapper`` around
        ``DC_and_CE_loss``, or ``DC_and_BCE_loss`` for regions, when deep supervision is on); it receives
        the outputs and targets as given.
    unc_loss : UncertaintyMarginLoss
        The uncertainty term, applied to logits (B, C, *spatial) and class indices (B, 1, *spatial); for
        regions (``unc_loss.sigmoid``), to logits (B, R, *spatial) and nnU-Net's region targets
        (B, R, *spatial), 0/1 per region channel.
    weight : float
        The weight of the uncertainty term.
    scale_weights : sequence of float or None
        ``None``: the uncertainty term on the full-resolution output only (``output[0]`` when nnU-Net gives
        a list of deep-supervision outputs). Otherwise one weight per output, e.g. nnU-Net's own
        deep-supervision weights: ``sum_i scale_weights[i] * unc_loss(output[i], target[i])``.
    ignore_channel : bool, default False
        Region targets only: the target's last channel is nnU-Net's ignore mask (1 where the voxel carries
        the ignore label; ``DC_and_BCE_loss(use_ignore_label=True)`` reads it so). Its voxels take no part
        in the uncertainty term, in any region.

    Attributes
    ----------
    last_seg_loss, last_unc_loss : Tensor or None
        The two terms of the last call, detached (``last_unc_loss`` before ``weight``), for logging.

    Notes
    -----
    nnU-Net's targets are float tensors of shape (B, 1, *spatial) holding whole numbers; they are cast to
    int64 for the uncertainty term. The ignore label (``label_manager.ignore_label``) is the
    ``ignore_index`` of ``unc_loss``: ignored voxels are neither correct nor wrong. Region targets are
    0/1 (bool or float) per region channel, passed as they are; with ``ignore_channel`` the ignored
    voxels are set to ``unc_loss.ignore_index`` in every region channel and the mask channel dropped.
    """

    def __init__(
        self,
        seg_loss: nn.Module,
        unc_loss: UncertaintyMarginLoss,
        weight: float,
        scale_weights: tuple[float, ...] | None = None,
        ignore_channel: bool = False,
    ) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        self.unc_loss = unc_loss
        self.weight = float(weight)
        self.scale_weights = None if scale_weights is None else tuple(float(w) for w in scale_weights)
        if ignore_channel and not unc_loss.sigmoid:
            msg = "`ignore_channel` applies to region targets (an `unc_loss` with `sigmoid=True`) only."
            raise ValueError(msg)
        self.ignore_channel = bool(ignore_channel)
        self.last_seg_loss: torch.Tensor | None = None
        self.last_unc_loss: torch.Tensor | None = None

    def uncertainty_term(self, output, target) -> torch.Tensor:
        """The uncertainty term (before ``weight``) on ``output`` and ``target`` as nnU-Net gives them."""
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        targets = list(target) if isinstance(target, (list, tuple)) else [target]
        if len(outputs) != len(targets):
            msg = f"`output` and `target` must have as many scales, got {len(outputs)} and {len(targets)}."
            raise ValueError(msg)
        if self.scale_weights is None:
            return self.unc_loss(outputs[0], self._target(targets[0]))
        if len(self.scale_weights) != len(outputs):
            msg = (
                f"`scale_weights` must have one weight per output scale ({len(outputs)}), "
                f"got {len(self.scale_weights)}."
            )
            raise ValueError(msg)
        terms = [
            w * self.unc_loss(o, self._target(t))
            for w, o, t in zip(self.scale_weights, outputs, targets, strict=True)
            if w != 0.0
        ]
        return torch.stack(terms).sum()

    def forward(self, output, target) -> torch.Tensor:
        seg = self.seg_loss(output, target)
        unc = self.uncertainty_term(output, target)
        self.last_seg_loss = seg.detach() if isinstance(seg, torch.Tensor) else torch.as_tensor(seg)
        self.last_unc_loss = unc.detach()
        return seg + self.weight * unc

    def _target(self, target: torch.Tensor) -> torch.Tensor:
        """nnU-Net's target as the uncertainty term takes it."""
        if not self.unc_loss.sigmoid:
            return _as_indices(target)
        if not self.ignore_channel:
            return target  # 0/1 per region channel (bool or float), read as it is
        ignored = target[:, -1:].bool()
        regions = target[:, :-1]
        # int8 holds 0, 1 and the ignore index (-100 by default) in an eighth of int64's memory
        dtype = torch.int8 if -128 <= self.unc_loss.ignore_index <= 127 else torch.int64
        fill = torch.full((), self.unc_loss.ignore_index, dtype=dtype, device=target.device)
        return torch.where(ignored, fill, regions.to(dtype))


def _as_indices(target: torch.Tensor) -> torch.Tensor:
    # nnU-Net's data loaders give float labels; whole numbers, so the cast is exact (no read from the device)
    return target.long() if target.is_floating_point() else target


class nnUNetTrainerUncertaintyAware(nnUNetTrainer):  # nnU-Net's naming, which `-tr` takes
    """nnU-Net's trainer with the uncertainty-aware margin ranking loss added to its segmentation loss.

    Select it with ``nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerUncertaintyAware`` (after
    ``selectivekit-nnunet install-trainer``). The loss is nnU-Net's own (Dice + cross-entropy with its
    deep-supervision weights) plus ``uncertainty_weight`` times
    [`UncertaintyMarginLoss`][selectivekit.adapters.torch.UncertaintyMarginLoss] on the
    full-resolution output.

    Attributes
    ----------
    uncertainty_weight : float
        Weight of the uncertainty term (default `selectivekit.adapters.nnunet.DEFAULT_WEIGHT`).
    uncertainty_margin : float, default 0.1
    uncertainty_pairs : {"exact", "sampled"}, default "exact"
    uncertainty_push : {"binary", "uniform"}, default "binary"
        Where the term moves a wrong voxel (see
        [`selectivekit.MarginLossOptions`][selectivekit.MarginLossOptions]): ``"binary"``
        from its predicted to its true class, ``"uniform"`` the paper's gradient.
    uncertainty_warmup, uncertainty_ramp : float, default 0.25 and 0.25
        Shares of the epochs: segmentation only for the first ``uncertainty_warmup``, then the weight
        ramps linearly to ``uncertainty_weight`` over the next ``uncertainty_ramp`` (set per epoch).
        Both 0 give the authors' schedule (the full weight from the first step).
    uncertainty_on_all_scales : bool, default False
        ``True``: the term on every deep-supervision output, weighted with nnU-Net's deep-supervision
        weights (see `nnUNetTrainerUncertaintyAwareAllScales`).
    schedule_epochs : int or None
        Number of epochs that replaces nnU-Net's 1000 (the ``_5epochs``-style variants set it).

    Subclass to change them, e.g. ``class MyTrainer(nnUNetTrainerUncertaintyAware): uncertainty_weight =
    0.5``.

    Region training (a ``dataset.json`` with ``regions_class_order``, nnU-Net's sigmoid outputs and
    ``DC_and_BCE_loss``) is supported: the uncertainty term then takes one instance per (region, voxel)
    pair, ``u = 1 - max(p, 1 - p)`` of each region's sigmoid and its correctness against nnU-Net's region
    target, ranked over all regions together (`UncertaintyMarginLoss` with ``sigmoid=True``); a voxel
    with the ignore label takes no part in any region.
    """

    uncertainty_weight: float = DEFAULT_WEIGHT
    uncertainty_margin: float = 0.1
    uncertainty_pairs: str = "exact"
    uncertainty_push: str = LOSS_SETTINGS["default"].push
    uncertainty_warmup: float = LOSS_SETTINGS["default"].warmup
    uncertainty_ramp: float = LOSS_SETTINGS["default"].ramp
    uncertainty_on_all_scales: bool = False
    schedule_epochs: int | None = None

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's own signature)
    ) -> None:
        # nnU-Net records the __init__ arguments by name (for checkpoints): keep its exact signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule_epochs is not None:
            self.num_epochs = int(self.schedule_epochs)
        self._unc_terms: dict[str, list[tuple[float, float]]] = {"train": [], "val": []}
        logged = _logged_lists(self.logger)
        for key in LOG_KEYS:
            logged.setdefault(key, [])

    def _build_loss(self) -> nn.Module:
        seg_loss = super()._build_loss()
        ignore = self.label_manager.ignore_label
        regions = bool(self.label_manager.has_regions)
        unc_loss = UncertaintyMarginLoss(
            self.uncertainty_margin,
            pairs=self.uncertainty_pairs,
            push=self.uncertainty_push,
            # regions: the ignore label arrives as a mask channel, turned into the default ignore index
            ignore_index=-100 if ignore is None or regions else int(ignore),
            sigmoid=regions,
        )
        scale_weights = None
        if self.uncertainty_on_all_scales and isinstance(seg_loss, DeepSupervisionWrapper):
            scale_weights = tuple(float(w) for w in seg_loss.weight_factors)
        self.print_to_log_file(
            f"Uncertainty-aware loss: weight {self.uncertainty_weight}, margin {self.uncertainty_margin}, "
            f"pairs {self.uncertainty_pairs!r}, push {self.uncertainty_push!r}, warm-up "
            f"{self.uncertainty_warmup:g} and ramp {self.uncertainty_ramp:g} of the epochs, on "
            + ("every deep-supervision scale" if scale_weights else "the full-resolution output")
            + (f", ignore label {ignore}" if ignore is not None else "")
            + (
                f", {len(self.label_manager.foreground_regions)} sigmoid regions ranked together"
                if regions
                else ""
            )
        )
        return NNUNetUncertaintyAwareLoss(
            seg_loss,
            unc_loss,
            self.uncertainty_weight,
            scale_weights,
            ignore_channel=regions and ignore is not None,
        )

    def _record_terms(self, phase: str) -> None:
        seg, unc = self.loss.last_seg_loss, self.loss.last_unc_loss
        if seg is not None and unc is not None:
            # nnU-Net itself reads its loss back once a step; this is the same read, outside the loss
            self._unc_terms[phase].append((float(seg), float(unc)))

    @property
    def loss_setting(self) -> LossSetting:
        """The trainer's weight, push and schedule as a [`LossSetting`][selectivekit.LossSetting]."""
        return LossSetting(
            weight=self.uncertainty_weight,
            push=self.uncertainty_push,
            warmup=self.uncertainty_warmup,
            ramp=self.uncertainty_ramp,
        )

    def uncertainty_factor(self, epoch: int) -> float:
        """Share of ``uncertainty_weight`` used in ``epoch``: 0 in the warm-up, then the linear ramp."""
        return self.loss_setting.replace(weight=1.0).weight_at(epoch / max(1, self.num_epochs))

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.loss.weight = self.loss_setting.weight_at(self.current_epoch / max(1, self.num_epochs))

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        self._record_terms("train")
        return result

    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step(batch)
        self._record_terms("val")
        return result

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        self._log_terms("train")

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        super().on_validation_epoch_end(val_outputs)
        self._log_terms("val")

    def _log_terms(self, phase: str) -> None:
        terms = self._unc_terms[phase]
        self._unc_terms[phase] = []
        if self.is_ddp:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, terms)
            terms = [t for part in gathered for t in part]
        seg, unc = (float(np.mean(col)) for col in zip(*terms, strict=True)) if terms else (np.nan, np.nan)
        self.logger.log(f"{phase}_seg_losses", seg, self.current_epoch)
        self.logger.log(f"{phase}_unc_losses", unc, self.current_epoch)
        self.print_to_log_file(
            f"{phase}_seg_loss {np.round(seg, decimals=4)} {phase}_unc_loss {np.round(unc, decimals=4)} "
            f"(x weight {self.uncertainty_weight})"
        )


def _logged_lists(logger) -> dict:
    # nnU-Net <= 2.7: nnUNetLogger.my_fantastic_logging; 2.8: MetaLogger.local_logger.my_fantastic_logging
    return getattr(logger, "local_logger", logger).my_fantastic_logging


class nnUNetTrainerUncertaintyAwareAllScales(nnUNetTrainerUncertaintyAware):
    """`nnUNetTrainerUncertaintyAware` with the uncertainty term on every deep-supervision output.

    Each scale's term is weighted as nnU-Net weights its segmentation loss there (halving per scale, the
    lowest resolution at 0, normalised to sum 1).
    """

    uncertainty_on_all_scales = True


def _short_variants() -> dict[str, type]:
    variants = {}
    for base in (nnUNetTrainerUncertaintyAware, nnUNetTrainerUncertaintyAwareAllScales):
        for epochs in SHORT_SCHEDULES:
            name = base.__name__ + schedule_suffix(epochs)
            doc = f"`{base.__name__}` for {epochs} epoch{'s' if epochs > 1 else ''} (nnU-Net's 1000)."
            variants[name] = type(name, (base,), {"schedule_epochs": epochs, "__doc__": doc})
    return variants


SHORT_VARIANTS = _short_variants()
globals().update(SHORT_VARIANTS)

TRAINERS = {
    "nnUNetTrainerUncertaintyAware": nnUNetTrainerUncertaintyAware,
    "nnUNetTrainerUncertaintyAwareAllScales": nnUNetTrainerUncertaintyAwareAllScales,
    **SHORT_VARIANTS,
}

# The public module is where users and pickles find these classes.
for _cls in (*TRAINERS.values(), NNUNetUncertaintyAwareLoss):
    _cls.__module__ = _PUBLIC_MODULE
del _cls

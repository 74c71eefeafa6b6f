"""Lightning: a callback that drives the schedule of the PyTorch ``UncertaintyAwareLoss`` from the trainer.

[`UncertaintyScheduleCallback`][selectivekit.adapters.lightning.UncertaintyScheduleCallback] states the length
of training once, from ``trainer.estimated_stepping_batches``, and sets the loss's step from
``trainer.global_step`` before every training batch, so the weight follows optimizer steps (gradient
accumulation, several devices and resumed runs included) instead of counting calls of the loss.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from .torch import UncertaintyAwareLoss

__all__ = ["UncertaintyScheduleCallback"]


class UncertaintyScheduleCallback(pl.Callback):
    """Drives the weight schedule of an ``UncertaintyAwareLoss`` from a Lightning ``Trainer``.

    Parameters
    ----------
    loss : UncertaintyAwareLoss
        The loss the ``LightningModule`` trains with (the PyTorch one).

    Notes
    -----
    At the start of training it sets ``loss.schedule.total_steps`` to ``trainer.estimated_stepping_batches``
    (optimizer steps; give ``max_epochs`` or ``max_steps`` so Lightning can count them), and before every
    training batch it sets ``loss.schedule`` to ``trainer.global_step``, so the loss's own counting of
    calls is overridden by the trainer's step.

    Examples
    --------
    >>> from selectivekit.adapters.torch import UncertaintyAwareLoss
    >>> criterion = UncertaintyAwareLoss()
    >>> callback = UncertaintyScheduleCallback(criterion)  # Trainer(callbacks=[callback], max_epochs=...)
    """

    def __init__(self, loss: UncertaintyAwareLoss) -> None:
        super().__init__()
        if not isinstance(loss, UncertaintyAwareLoss):
            name = type(loss).__name__
            msg = f"`loss` must be a selectivekit.adapters.torch.UncertaintyAwareLoss, got {name}."
            raise TypeError(msg)
        self.loss = loss

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if not isinstance(total, int) and (total != total or total == float("inf")):
            msg = (
                "`UncertaintyScheduleCallback` needs the length of training: give the Trainer `max_epochs` "
                "or `max_steps` (Lightning estimated an unbounded number of steps)."
            )
            raise ValueError(msg)
        self.loss.schedule.set_total_steps(max(1, int(total)))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.loss.schedule.set_step(int(trainer.global_step))

"""A tiny LightningModule that trains with UncertaintyAwareLoss and logs SelectiveDice's scalar views.

Used in-process by ``test_lightning.py`` and, for DDP, run as a script:
``python -m tests.adapters._lightning_app OUT_DIR`` (Lightning's ``strategy="ddp"`` starts the second
process by running this command again). Every rank saves what its steps saw, so that the test can
recompute the exact values with the core functions in one process.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

NUM_CLASSES = 3
COVERAGES = (1.0, 0.9)

# third-party warnings that do not concern this test (the suite turns warnings into errors)
WARNING_FILTERS = (
    ("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning),
    ("ignore", r".*does not have many workers", UserWarning),
    ("ignore", r".*`training_step` returned `None`", UserWarning),
    ("ignore", r".*The number of training batches", UserWarning),
    ("ignore", r".*litlogger", UserWarning),
)


def silence_warnings() -> None:
    for action, message, category in WARNING_FILTERS:
        warnings.filterwarnings(action, message=message, category=category)


def data(n_train: int = 4, n_val: int = 4, size: int = 8):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_val, 1, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n_train + n_val, size, size), generator=g)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def make_module():
    """The LightningModule class (built here so that importing this file needs no Lightning)."""
    import lightning as L
    import torch
    from torchmetrics import MetricCollection

    import selectivekit as sk
    from selectivekit.adapters.torch import SelectiveDice, UncertaintyAwareLoss

    class SegModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Conv2d(1, NUM_CLASSES, 3, padding=1)
            self.criterion = UncertaintyAwareLoss(warmup=0, ramp=0, weight=1.0, margin=0.1)
            dice = SelectiveDice(num_classes=NUM_CLASSES, coverages=COVERAGES)
            self.dice90 = dice.at_coverage(0.9)  # one scalar view, logged by itself
            self.aurc = dice.scalar("aurc_dice")
            self.val_metrics = MetricCollection(dice.scalar_metrics(), prefix="val/")  # all of them
            self.train_seen: list = []
            self.val_seen: list = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            loss = self.criterion(logits, y)
            self.train_seen.append((logits.detach().clone(), y.clone()))
            self.log("train/unc", self.criterion.last_unc_loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            # u rounded to bfloat16: the metric's grid is then exact, so it must equal the core exactly
            u = sk.uncertainty_from_logits(logits, axis=1).to(torch.bfloat16).to(torch.float64)
            pred = logits.argmax(dim=1)
            self.val_seen.append((pred, y, u))
            self.dice90.update(pred, y, u)
            self.aurc.update(pred, y, u)
            self.val_metrics.update(pred, y, u)
            self.log("val/dice90", self.dice90)
            self.log("val/aurc", self.aurc)
            self.log_dict(self.val_metrics)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    return SegModule


def fit(module, *, devices: int = 1, strategy: str = "auto", batch_size: int = 2):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    (xt, yt), (xv, yv) = data()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        module,
        DataLoader(TensorDataset(xt, yt), batch_size=batch_size),
        DataLoader(TensorDataset(xv, yv), batch_size=batch_size),
    )
    return trainer


def main(out_dir: str) -> None:
    """2-process DDP on CPU (gloo): 2 training steps and a validation epoch per rank."""
    import torch

    silence_warnings()
    out = Path(out_dir)
    module = make_module()()
    trainer = fit(module, devices=2, strategy="ddp", batch_size=1)
    rank = trainer.global_rank
    torch.save({"train": module.train_seen, "val": module.val_seen}, out / f"rank{rank}.pt")
    if rank == 0:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        dtypes = {k: str(v.dtype) for k, v in trainer.callback_metrics.items()}
        steps = trainer.global_step
        (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "dtypes": dtypes, "steps": steps}))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1])

"""PyTorch trainer: baseline vs uncertainty-aware, atomic per-epoch checkpoints, resume, DDP (torchrun).

Under ``torchrun`` every process reads ``RANK``/``WORLD_SIZE``; the global batch (``--batch-size``) is
split evenly across processes, so one process and N processes take the same optimisation steps on the
same patches (DDP averages the gradients; the cross-entropy part is then identical, the ranking term is
computed within each process's share of the batch).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from reference_models.checkpoint import CheckpointError, other_settings, unreadable
from reference_models.config import RunConfig
from reference_models.curves import CurveWriter, Monitor
from reference_models.data.patches import PatchSampler, sliding_window
from reference_models.models_torch import UNet
from reference_models.tasks import Task
from selectivekit.report import atomic_file

__all__ = [
    "CheckpointError",
    "DistInfo",
    "TorchTrainer",
    "build_loss",
    "init_distributed",
    "load_checkpoint",
    "resolve_device",
    "save_atomic",
]


class DistInfo:
    """Rank and world size; a single process is rank 0 of 1."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    """``auto`` picks CUDA when available (one GPU per local rank under torchrun), else CPU."""
    local = dist_info.local_rank if dist_info else 0
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local % max(1, torch.cuda.device_count()))
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        device = resolve_device(device_name, info)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` through `selectivekit.report.atomic_file`: a crash while writing leaves the previous
    checkpoint intact, and the next save removes what the crash left."""
    with atomic_file(Path(path)) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, model: nn.Module, optimizer, fingerprint: str, device) -> int:
    """Restore ``model`` and ``optimizer`` from a checkpoint of `TorchTrainer`; returns its epoch.

    Raises `CheckpointError` (one line, naming the file and how to start over) when the file is empty, cut
    short or something else, or was written with other settings. The file is read with
    ``weights_only=True``: tensors and plain values only, no code from the pickle is run.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "fingerprint"} <= set(state):
            msg = f"holds {type(state).__name__}, not the model, optimizer, epoch and fingerprint"
            raise TypeError(msg)
    except Exception as exc:  # torch.load raises many kinds (EOFError, RuntimeError, UnpicklingError, ...)
        raise unreadable(path, exc) from exc
    if state["fingerprint"] != fingerprint:
        raise other_settings(path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"])
    except Exception as exc:  # tensors of other shapes, a missing key
        raise unreadable(path, exc) from exc


class CrossEntropyDice(nn.Module):
    """Cross-entropy plus ``1 -`` the mean soft Dice of the foreground classes (nnU-Net's loss).

    The soft Dice of class ``k`` is ``(2 sum p_k y_k + 1) / (sum p_k + sum y_k + 1)`` over every voxel of
    the batch, with ``p`` the softmax and ``y`` the one-hot label; class 0 (background) is left out. Each
    structure counts the same however small it is, which is what lets a small network learn the smallest
    structures within a CPU budget.
    """

    def __init__(self, cross_entropy: nn.Module) -> None:
        super().__init__()
        self.cross_entropy = cross_entropy

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = logits.float().softmax(1)
        onehot = nn.functional.one_hot(y, logits.shape[1]).movedim(-1, 1).to(p.dtype)
        dims = (0, *range(2, p.ndim))
        overlap = (p * onehot).sum(dims)[1:]
        total = (p.sum(dims) + onehot.sum(dims))[1:]
        dice = (2 * overlap + 1.0) / (total + 1.0)
        return self.cross_entropy(logits, y) + (1 - dice.mean())


def _seg_loss(task: Task, cfg: RunConfig, device: torch.device) -> nn.Module:
    weight = None if task.class_weights is None else torch.tensor(task.class_weights, device=device)
    cross_entropy = nn.CrossEntropyLoss(weight=weight)
    return CrossEntropyDice(cross_entropy) if cfg.seg_loss == "ce+dice" else cross_entropy


def build_loss(
    kind: str, task: Task, cfg: RunConfig, device: torch.device, seed: int | None = None
) -> nn.Module:
    """The segmentation loss (cross-entropy, or cross-entropy + soft Dice) for the baseline;
    ``selectivekit``'s ``UncertaintyAwareLoss`` around it otherwise.

    ``seed`` seeds the sampled estimator's generator (``pairs="sampled"``); the trainer builds the loss
    afresh every epoch with a seed derived from (run seed, epoch, rank), so a resumed run draws the same
    pairs as an uninterrupted one.
    """
    seg = _seg_loss(task, cfg, device)
    if kind == "baseline":
        return seg
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    # the trainer applies the schedule itself (`RunConfig.unc_factor`, the same formula per step)
    return UncertaintyAwareLoss(
        seg, setting=cfg.uncertainty_setting(), margin=cfg.margin, reduction="mean", pairs=cfg.pairs,
        seed=seed, n_wrong=cfg.n_wrong, n_correct=cfg.n_correct,
    )  # fmt: skip


def error_push_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The control for hard-example emphasis: ``mean over wrong voxels of p_m / (p_m + p_t)``.

    ``m`` is a wrong voxel's predicted class and ``t`` its true class; ``p_m / (p_m + p_t) = sigmoid(z_m -
    z_t)``. Its gradient on a wrong voxel has the direction of the binary push (probability from ``m`` to
    ``t`` only) and, per wrong voxel, at least the size the ranking term gives it (``1 / |W|`` against
    ``a_j / |W|`` with ``a_j <= 1`` the share of correct voxels within the margin), but it has no correct
    side and no margin: it emphasises the errors without ranking them against the correct voxels. Zero
    when no voxel is wrong.
    """
    pred = logits.detach().argmax(1)
    valid = y != ignore_index
    wrong = (pred != y) & valid
    target = torch.where(valid, y, 0)
    gap = logits.gather(1, pred[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]
    term = torch.sigmoid(gap.float())
    return (term * wrong).sum() / wrong.sum().clamp(min=1)


def push_towards_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same values; on a wrong voxel only its predicted and its true class keep their gradient.

    Raising ``u = 1 - max softmax`` of a wrong voxel lowers the predicted class and raises every other class
    in proportion to its probability: with two classes that is the true class, with K > 2 it is mostly the
    wrong ones (towards the uniform distribution). Detaching the other K - 2 logits of wrong voxels turns the
    push into "from the predicted class to the true one", as with two classes. Correct voxels are unchanged.
    """
    k = torch.arange(logits.shape[1], device=logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
    pred = logits.detach().argmax(1, keepdim=True)
    label = y.unsqueeze(1)
    keep = (pred == label) | (k == pred) | (k == label)
    return torch.where(keep, logits, logits.detach())


def foreground_box(y: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Per image, the bounding box of the labelled voxels (``y > 0``) grown by ``pad`` voxels (training only:
    it reads the label, like the authors' ground-truth crops, but changes only which voxels are ranked)."""
    inside = torch.zeros_like(y, dtype=torch.bool)
    for i in range(y.shape[0]):
        where = torch.nonzero(y[i] > 0)
        if len(where) == 0:
            continue
        low = (where.min(0).values - pad).clamp(min=0).tolist()
        high = (where.max(0).values + pad + 1).tolist()
        inside[(i, *[slice(a, b) for a, b in zip(low, high, strict=True)])] = True
    return inside


class TorchTrainer:
    """Trains and applies one U-Net per (run, model kind)."""

    def __init__(self, task: Task, cfg: RunConfig, dist_info: DistInfo | None = None) -> None:
        self.task, self.cfg = task, cfg
        self.dist = dist_info or DistInfo()
        self.device = resolve_device(cfg.device, self.dist)

    def new_model(self) -> UNet:
        torch.manual_seed(self.cfg.seed)  # same initial weights for both models of a run
        base, depth = (32, 3) if self.task.dims == 3 else (64, 4)
        model = UNet(
            self.task.dims, self.task.in_channels, self.task.num_classes,
            base=base, depth=depth, width=self.cfg.width,
        )  # fmt: skip
        return model.to(self.device)

    def checkpoint_path(self, run: str, kind: str) -> Path:
        return Path(self.cfg.out) / "checkpoints" / f"{run}_{kind}.pt"

    def fit(self, run, kind: str, *, stop_after: int | None = None) -> UNet:
        """Train ``kind`` on ``run``'s patches for ``cfg.epochs`` epochs (resuming if asked).

        ``stop_after`` ends the call after that many epochs *of this call* (used to test resuming). On CPU
        the call runs with ``torch.use_deterministic_algorithms(True)`` (the previous setting is restored).
        """
        previous = torch.are_deterministic_algorithms_enabled()
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        try:
            return self._fit(run, kind, stop_after)
        finally:
            torch.use_deterministic_algorithms(previous)

    def _fit(self, run, kind: str, stop_after: int | None) -> UNet:
        cfg = self.cfg
        model = self.new_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        path = self.checkpoint_path(run.name, kind)
        fingerprint = cfg.fingerprint(kind, run.name)
        start = 0
        if cfg.resume and path.is_file():
            start = load_checkpoint(path, model, optimizer, fingerprint, self.device)
        sampler = PatchSampler(
            run.train_images, run.train_labels, self.task.patch_size, cfg.samples_per_epoch, cfg.seed,
            rotate=self.task.rotate, foreground_fraction=self.task.foreground_fraction,
        )  # fmt: skip
        net = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.batch_size % self.dist.world:
            msg = f"`batch_size` {cfg.batch_size} must be divisible by the {self.dist.world} processes."
            raise ValueError(msg)
        local = cfg.batch_size // self.dist.world
        curves = monitor = None
        if cfg.log_every > 0 and self.dist.is_main:
            monitor = Monitor(run.eval_images, self.task.patch_size, self.task.num_classes)
            name = f"{run.name}_{kind}_seed{cfg.seed}.jsonl"
            curves = CurveWriter(Path(cfg.out) / "curves" / name, fresh=start == 0)
        done = 0
        for epoch in range(start, cfg.epochs):
            if stop_after is not None and done >= stop_after:
                break
            x_all, y_all = sampler.epoch(epoch)
            loss_seed = (cfg.seed * 1_000_003 + epoch) * 131 + self.dist.rank
            loss_fn = build_loss(kind, self.task, cfg, self.device, seed=loss_seed)
            n_batches = len(x_all) // cfg.batch_size  # drop the incomplete last batch
            net.train()
            bar = tqdm(
                range(n_batches), desc=f"{run.name} {kind} epoch {epoch + 1}/{cfg.epochs}",
                disable=not (cfg.progress and self.dist.is_main), leave=False, dynamic_ncols=True,
            )  # fmt: skip
            total = 0.0
            for step in bar:
                begin = step * cfg.batch_size + self.dist.rank * local
                x = torch.from_numpy(x_all[begin : begin + local]).to(self.device)
                y = torch.from_numpy(y_all[begin : begin + local]).to(self.device)
                global_step = epoch * n_batches + step
                factor = cfg.unc_factor(epoch + step / max(1, n_batches))
                log = curves is not None and global_step % cfg.log_every == 0
                logits = net(x)
                loss, point = self._loss(loss_fn, kind, logits, y, factor, log)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                if log:
                    curves.write(
                        {"step": global_step, "epoch": epoch, **point, **self._monitor(model, monitor)}
                    )
                    net.train()
                postfix = {"loss": f"{total / (step + 1):.4f}"}
                bar.set_postfix(postfix)
            bar.close()
            done += 1
            if self.dist.is_main:
                state = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1, "fingerprint": fingerprint, "loss": total / max(1, n_batches),
                }  # fmt: skip
                save_atomic(state, path)
            if self.dist.enabled:
                dist.barrier()
        return model

    def _loss(self, loss_fn, kind: str, logits, y, factor: float, log: bool):
        """The batch loss; with ``log`` also both terms and the gradient norm each sends to the logits."""
        if kind == "baseline":
            loss = loss_fn(logits, y)
            if not log:
                return loss, {}
            l_seg, l_unc = loss, self._probe(logits, y)
        else:
            l_seg = loss_fn.seg_loss(logits, y)
            l_unc = self._unc_term(loss_fn.unc_loss, logits, y)
            loss = l_seg + (self.cfg.weight * factor) * l_unc if factor > 0 else l_seg + 0.0 * l_unc
            if not log:
                return loss, {}
        (g_seg,) = torch.autograd.grad(l_seg, logits, retain_graph=True)
        point = {"seg_loss": float(l_seg.detach()), "unc_loss": float(l_unc.detach()), "factor": factor,
                 "grad_seg": float(g_seg.norm())}  # fmt: skip
        if l_unc.requires_grad:
            (g_unc,) = torch.autograd.grad(self.cfg.weight * l_unc, logits, retain_graph=True)
            point["grad_unc"] = float(g_unc.norm())  # at full weight, before the schedule's factor
        return loss, point

    def _unc_term(self, unc_loss, logits, y):
        if self.cfg.unc_region == "foreground-box":  # pairs only inside each image's labelled box
            y = torch.where(foreground_box(y), y, -100)
        if self.cfg.unc_term == "error-push":
            return error_push_loss(logits, y)
        if self.cfg.unc_push == "label":
            logits = push_towards_label(logits, y)
        if self.cfg.unc_sides != "both":  # the other side's logits are detached: no gradient reaches them
            wrong = (logits.detach().argmax(1) != y)[:, None]
            keep = ~wrong if self.cfg.unc_sides == "correct" else wrong
            logits = torch.where(keep, logits, logits.detach())
        if self.cfg.rank_within == "class":  # pairs within each predicted class, classes averaged
            pred = logits.detach().argmax(1)
            terms = [unc_loss(logits, torch.where(pred == k, y, -100)) for k in torch.unique(pred).tolist()]
            return torch.stack(terms).mean()
        if self.cfg.rank_within == "image":
            return torch.stack([unc_loss(logits[i : i + 1], y[i : i + 1]) for i in range(len(logits))]).mean()
        return unc_loss(logits, y)

    def _probe(self, logits, y):
        """The baseline's ranking term (not trained on): how well its uncertainty ranks errors."""
        from selectivekit.adapters.torch import UncertaintyMarginLoss

        return self._unc_term(UncertaintyMarginLoss(self.cfg.margin), logits.detach(), y)

    @torch.no_grad()
    def _monitor(self, model, monitor: Monitor) -> dict:
        model.eval()
        logits = model(torch.from_numpy(monitor.x).to(self.device)).float().cpu().numpy()
        return monitor.metrics(logits)

    @torch.no_grad()
    def predict_logits(self, model: UNet, image: np.ndarray) -> np.ndarray:
        """Whole-image logits ``(K, *spatial)`` by sliding windows of the training patch size."""
        model.eval()

        def predict(batch: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

        return sliding_window(
            predict, image, self.task.patch_size, num_classes=self.task.num_classes,
            overlap=0.5, batch_size=self.cfg.batch_size,
        )  # fmt: skip

    def gather(self, obj) -> list:
        """Every process's ``obj`` on rank 0, in rank order (``[]`` elsewhere; ``[obj]`` without DDP)."""
        if not self.dist.enabled:
            return [obj]
        gathered = [None] * self.dist.world if self.dist.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered if self.dist.is_main else []

    def close(self) -> None:
        """Leave the process group: wait for every rank, then tear gloo/nccl down before the process exits.

        Without this a worker that finishes first can exit while the group's threads still run, and gloo then
        aborts the process ("terminate called without an active exception").
        """
        if self.dist.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

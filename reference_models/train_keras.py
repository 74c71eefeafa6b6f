"""Keras 3 (TensorFlow backend) trainer with the same data, schedule and checkpoints as the PyTorch one.

Distribution goes through ``tf.distribute``: ``MirroredStrategy`` when several GPUs are visible, the
default (no-op) strategy otherwise, and ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a
cluster. ``model.fit`` splits each global batch across replicas; the loss is reduced over the global
batch. Inputs are channels-last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from reference_models.checkpoint import other_settings, unreadable
from reference_models.config import RunConfig
from reference_models.data.patches import PatchSampler, sliding_window
from reference_models.models_keras import unet
from reference_models.tasks import Task
from selectivekit.report import atomic_file

__all__ = ["KerasTrainer", "WeightedSparseCrossEntropy", "build_loss", "choose_strategy"]


class _Single:
    """Rank/world of the Keras path: one process (multi-worker clusters report the chief as rank 0)."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world
        self.enabled = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored with TF_CONFIG, Mirrored with more than one GPU, else the default strategy."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@keras.saving.register_keras_serializable(package="reference_models")
class WeightedSparseCrossEntropy(keras.losses.Loss):
    """Cross-entropy from logits with per-class weights, normalised like ``torch.nn.CrossEntropyLoss``.

    ``sum_i w[y_i] * CE_i / sum_i w[y_i]`` over the batch (plain mean when all weights are 1).
    """

    def __init__(self, class_weights=None, name: str = "weighted_sparse_ce", **kwargs) -> None:
        super().__init__(name=name, reduction="sum", **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, "int32")
        ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        if self.class_weights is None:
            return keras.ops.mean(ce)
        w = keras.ops.take(keras.ops.convert_to_tensor(self.class_weights, dtype=ce.dtype), y_true)
        return keras.ops.sum(w * ce) / keras.ops.sum(w)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="reference_models")
class CrossEntropyDice(WeightedSparseCrossEntropy):
    """The weighted cross-entropy plus ``1 -`` the mean soft Dice of the foreground classes, as
    ``reference_models.train_torch.CrossEntropyDice`` (channels last here)."""

    def __init__(self, class_weights=None, name: str = "cross_entropy_dice", **kwargs) -> None:
        super().__init__(class_weights, name=name, **kwargs)

    def call(self, y_true, y_pred):
        p = keras.ops.softmax(keras.ops.cast(y_pred, "float32"), axis=-1)
        k = keras.ops.shape(y_pred)[-1]
        onehot = keras.ops.one_hot(keras.ops.cast(y_true, "int32"), k, dtype=p.dtype)
        axes = tuple(range(len(y_pred.shape) - 1))
        overlap = keras.ops.sum(p * onehot, axis=axes)[1:]
        total = (keras.ops.sum(p, axis=axes) + keras.ops.sum(onehot, axis=axes))[1:]
        dice = (2 * overlap + 1.0) / (total + 1.0)
        return super().call(y_true, y_pred) + (1.0 - keras.ops.mean(dice))


def build_loss(kind: str, task: Task, cfg: RunConfig, factor: float = 1.0) -> keras.losses.Loss:
    """The segmentation loss (weighted cross-entropy, or with soft Dice) for the baseline; selectivekit's
    Keras ``UncertaintyAwareLoss`` around it.

    ``factor`` scales the weight (the warm-up/ramp schedule, applied per epoch in Keras).
    """
    seg = (CrossEntropyDice if cfg.seg_loss == "ce+dice" else WeightedSparseCrossEntropy)(task.class_weights)
    if kind == "baseline":
        return seg
    from selectivekit.adapters.keras import UncertaintyAwareLoss

    # one epoch's constant weight: the trainer recompiles when the schedule moves
    setting = cfg.uncertainty_setting().replace(weight=cfg.weight * factor, warmup=0.0, ramp=0.0)
    return UncertaintyAwareLoss(
        seg, setting=setting, margin=cfg.margin, reduction="mean", pairs=cfg.pairs, seed=cfg.seed,
        from_logits=True, n_wrong=cfg.n_wrong, n_correct=cfg.n_correct,
    )  # fmt: skip


class _Progress(keras.callbacks.Callback):
    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        super().__init__()
        self.bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_train_end(self, logs=None):
        self.bar.close()


def _replace_atomic(write, path: Path) -> None:
    """Call ``write(tmp_path)`` (a temporary path with ``path``'s name, so its suffix too) and put the file at
    ``path`` whole or not at all (`selectivekit.report.atomic_file`)."""
    with atomic_file(path) as tmp:
        write(tmp)


class KerasTrainer:
    """Trains and applies one Keras U-Net per (run, model kind)."""

    def __init__(self, task: Task, cfg: RunConfig) -> None:
        self.task, self.cfg = task, cfg
        self.strategy = choose_strategy()
        resolver = getattr(self.strategy, "cluster_resolver", None)
        rank = int(getattr(resolver, "task_id", 0) or 0) if resolver else 0
        self.dist = _Single(rank, 1)

    def new_model(self) -> keras.Model:
        keras.utils.set_random_seed(self.cfg.seed)  # same initial weights for both models of a run
        base, depth = (32, 3) if self.task.dims == 3 else (64, 4)
        return unet(
            self.task.dims, self.task.in_channels, self.task.num_classes,
            base=base, depth=depth, width=self.cfg.width,
        )  # fmt: skip

    def checkpoint_dir(self, run: str, kind: str) -> Path:
        return Path(self.cfg.out) / "checkpoints" / f"{run}_{kind}_keras"

    def _save(self, model, epoch: int, fingerprint: str, directory: Path) -> None:
        # a compiled model's weights file also holds the optimizer's variables (Adam moments, step count);
        # each epoch's under its own name, so that a kill before state.json is replaced leaves the previous
        # pair (state.json and the weights it names) as it was
        name = f"model-epoch{epoch}.weights.h5"
        _replace_atomic(model.save_weights, directory / name)
        # written last: names the epoch and the weights file to resume from
        state = json.dumps({"epoch": epoch, "fingerprint": fingerprint, "weights": name})
        _replace_atomic(lambda p: p.write_text(state, encoding="utf-8"), directory / "state.json")
        for old in directory.glob("model*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def _restore(self, model, optimizer, directory: Path, fingerprint: str) -> int:
        """Load the checkpoint in ``directory``; its epoch. `CheckpointError` when it cannot be used."""
        try:
            state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
            epoch, written_with = int(state["epoch"]), state["fingerprint"]
        except Exception as exc:  # not JSON, not an object, no epoch
            raise unreadable(directory / "state.json", exc) from exc
        if written_with != fingerprint:
            raise other_settings(directory)
        weights = directory / str(state.get("weights", "model.weights.h5"))
        try:
            optimizer.build(model.trainable_variables)  # so the saved optimizer variables have a home
            model.load_weights(weights)
        except Exception as exc:  # h5py and Keras raise OSError, ValueError, KeyError, ...
            raise unreadable(weights, exc) from exc
        return epoch

    def fit(self, run, kind: str, *, stop_after: int | None = None) -> keras.Model:
        """Train ``kind`` on ``run``'s patches for ``cfg.epochs`` epochs (resuming if asked).

        Runs with TensorFlow op determinism enabled; it is switched off again afterwards if it was off
        before (TensorFlow has no public switch back, so the internal one is used when present).
        """
        from tensorflow.python.framework import config as tf_config

        was_on = getattr(tf_config, "is_op_determinism_enabled", lambda: True)()
        tf.config.experimental.enable_op_determinism()
        try:
            return self._fit(run, kind, stop_after)
        finally:
            if not was_on and hasattr(tf_config, "disable_op_determinism"):
                tf_config.disable_op_determinism()

    def _fit(self, run, kind: str, stop_after: int | None) -> keras.Model:
        cfg = self.cfg
        directory = self.checkpoint_dir(run.name, kind)
        fingerprint = cfg.fingerprint(kind, run.name)
        with self.strategy.scope():
            model = self.new_model()
            optimizer = keras.optimizers.Adam(learning_rate=cfg.lr)
            compiled = None if kind == "baseline" else cfg.unc_factor(0.5)
            model.compile(
                optimizer=optimizer, loss=build_loss(kind, self.task, cfg, compiled or 0.0), jit_compile=False
            )
        start = 0
        if cfg.resume and (directory / "state.json").is_file():
            start = self._restore(model, optimizer, directory, fingerprint)
        sampler = PatchSampler(
            run.train_images, run.train_labels, self.task.patch_size, cfg.samples_per_epoch, cfg.seed,
            rotate=self.task.rotate, foreground_fraction=self.task.foreground_fraction,
        )  # fmt: skip
        done = 0
        for epoch in range(start, cfg.epochs):
            if stop_after is not None and done >= stop_after:
                break
            x, y = sampler.epoch(epoch)
            # the warm-up/ramp of the uncertainty term, per epoch (its value at mid-epoch): recompiled
            # with the new weight when it changes (the optimizer and its state are kept)
            factor = None if kind == "baseline" else cfg.unc_factor(epoch + 0.5)
            if factor != compiled:
                with self.strategy.scope():
                    model.compile(
                        optimizer=optimizer, loss=build_loss(kind, self.task, cfg, factor), jit_compile=False
                    )
                compiled = factor
            n = (len(x) // cfg.batch_size) * cfg.batch_size  # drop the incomplete last batch
            x = np.ascontiguousarray(np.moveaxis(x[:n], 1, -1))
            progress = _Progress(
                n // cfg.batch_size, f"{run.name} {kind} epoch {epoch + 1}/{cfg.epochs}",
                cfg.progress and self.dist.is_main,
            )  # fmt: skip
            model.fit(
                x, y[:n].astype(np.int32), batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0,
                callbacks=[progress],
            )  # fmt: skip
            done += 1
            if self.dist.is_main:
                self._save(model, epoch + 1, fingerprint, directory)
        return model

    def predict_logits(self, model: keras.Model, image: np.ndarray) -> np.ndarray:
        """Whole-image logits ``(K, *spatial)`` by sliding windows of the training patch size."""

        def predict(batch: np.ndarray) -> np.ndarray:
            out = model(np.moveaxis(batch, 1, -1), training=False)
            return np.moveaxis(keras.ops.convert_to_numpy(out), -1, 1)

        return sliding_window(
            predict, image, self.task.patch_size, num_classes=self.task.num_classes,
            overlap=0.5, batch_size=self.cfg.batch_size,
        )  # fmt: skip

    def gather(self, obj) -> list:
        """Every Keras worker evaluates all held-out images itself (``rank``/``world`` are 0/1)."""
        return [obj]

    def close(self) -> None:
        """Nothing to tear down: ``tf.distribute`` strategies end with the process."""

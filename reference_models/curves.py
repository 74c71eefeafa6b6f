"""Training curves: what each model does step by step (framework independent).

A :class:`Monitor` holds a fixed set of held-out patches (chosen once from the run's evaluation images, the
same for both models and every seed) and turns the network's logits on them into a curve point: mean
Dice at full coverage, AURC with risk = 1 - Dice, and the voxel-level AURC of the errors. The trainers add
the two loss terms of the current batch and the gradient norm that each term sends to the logits, and
write one JSON line per point to ``OUT/curves/<run>_<kind>_seed<S>.jsonl``.

These curves are how the 3D collapse of the uncertainty-aware model was diagnosed (docs/reproduction.md):
Dice, the two terms and their gradient norms over training, side by side for both models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selectivekit import aurc, correctness, uncertainty_from_logits
from selectivekit.segmentation import aurc_dice, dice_at_coverage

__all__ = ["Monitor", "read_curves"]


def _centre_window(shape: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, (s - p) // 2), max(0, (s - p) // 2) + p) for s, p in zip(shape, patch, strict=True)
    )


class Monitor:
    """A fixed held-out patch set and the metrics of a model on it.

    Parameters
    ----------
    images : sequence of EvalImage
        The run's held-out images; the centre patch of each of the first ``max_images`` is used (padded
        by edge values when the image is smaller than the patch).
    patch_size : tuple of int
    num_classes : int
    max_images : int, default 8
    """

    def __init__(self, images: Sequence, patch_size: Sequence[int], num_classes: int, max_images: int = 8):
        from reference_models.data.patches import pad_to

        xs, ys = [], []
        for item in list(images)[:max_images]:
            x = pad_to(np.asarray(item.image, np.float32), patch_size, 1)
            y = pad_to(np.asarray(item.label, np.uint8), patch_size, 0)
            window = _centre_window(y.shape, patch_size)
            xs.append(np.ascontiguousarray(x[(slice(None), *window)]))
            ys.append(np.ascontiguousarray(y[window]))
        self.x = np.stack(xs)
        self.y = np.stack(ys)
        self.num_classes = int(num_classes)

    def metrics(self, logits: np.ndarray) -> dict[str, float]:
        """``dice`` (mean over patches, full coverage), ``aurc_dice`` and the voxel ``aurc`` of the errors."""
        logits = np.asarray(logits, np.float64)
        pred = [np.argmax(lg, axis=0).astype(np.uint8) for lg in logits]
        u = [np.asarray(uncertainty_from_logits(lg, axis=0)) for lg in logits]
        labels = list(self.y)
        full = dice_at_coverage(pred, labels, u, [1.0], num_classes=self.num_classes)[0]
        correct = correctness(np.stack(pred), self.y)
        return {
            "dice": float(full.mean),
            "aurc_dice": float(aurc_dice(pred, labels, u, num_classes=self.num_classes)),
            "aurc_voxel": float(aurc(np.stack(u), correct)),
            "error_rate": float(1.0 - np.mean(correct)),
            "foreground_predicted": float(np.mean(np.stack(pred) > 0)),
        }


class CurveWriter:
    """Appends one JSON object per line to ``path`` (created afresh when the run starts at epoch 0)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.path.exists():
            self.path.unlink()

    def write(self, point: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(point, sort_keys=True) + "\n")


def read_curves(path: str | Path) -> list[dict]:
    """The points of one curves file, in step order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


_PANELS = (
    ("dice", "Dice at full coverage (held-out patches)", False),
    ("aurc_dice", "AURC, risk = 1 - Dice", True),
    ("seg_loss", "segmentation term", True),
    ("grad_ratio", "|grad of weight x unc term| / |grad of seg term| (logits)", True),
)


def plot_curves(runs: dict[str, str | Path], title: str = ""):
    """One figure, four panels over training steps: Dice, AURC, the segmentation term and the ratio of the
    gradient norms the two terms send to the logits. ``runs`` maps a legend label to a curves file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 3.4), constrained_layout=True)
    for label, path in runs.items():
        points = read_curves(path)
        steps = [p["step"] for p in points]
        for ax, (key, name, log) in zip(axes, _PANELS, strict=True):
            if key == "grad_ratio":
                values = [p.get("grad_unc", float("nan")) / p["grad_seg"] for p in points]
            else:
                values = [p[key] for p in points]
            ax.plot(steps, values, label=label)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("training step")
            if log:
                ax.set_yscale("log")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

"""Framework-independent patch sampling, sliding-window inference and the authors' GT-box crops.

Everything here works on NumPy arrays with the channel axis first: images ``(C, *spatial)`` float32,
labels ``(*spatial)`` uint8. The training frameworks convert batches at the last moment, so the PyTorch and
Keras trainers see the same samples in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["PatchSampler", "authors_crop", "authors_training_crops", "pad_to", "sliding_window"]


def pad_to(array: np.ndarray, size: Sequence[int], first_spatial: int) -> np.ndarray:
    spatial = array.shape[first_spatial:]
    missing = [max(0, s - n) for s, n in zip(size, spatial, strict=True)]
    if not any(missing):
        return array
    pad = [(0, 0)] * first_spatial + [(m // 2, m - m // 2) for m in missing]
    return np.pad(array, pad, mode="edge")


class PatchSampler:
    """Random patches whose choice depends only on ``(seed, epoch)``.

    Parameters
    ----------
    images, labels : sequences of arrays
        Images ``(C, *spatial)`` and labels ``(*spatial)``; spatial sizes may differ between items.
    patch_size : tuple of int
        Spatial patch size; smaller items are edge-padded up to it.
    samples_per_epoch : int
        Patches per epoch; items are visited in a random order, each about equally often.
    seed : int
        Base seed. Epoch ``e`` uses ``np.random.default_rng([seed, e])``, so a resumed run draws exactly
        the patches an uninterrupted run would, and two models trained with the same seed see the same data.
    rotate : bool
        Also rotate by random multiples of 90 degrees in the first two spatial axes (square 2D patches).
    foreground_fraction : float
        Share of patches centred on a random labelled voxel (training only; never used at test time).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: Sequence[int],
        samples_per_epoch: int,
        seed: int,
        *,
        rotate: bool = False,
        foreground_fraction: float = 0.0,
    ) -> None:
        if len(images) != len(labels) or not images:
            msg = (
                "`images` and `labels` must be non-empty and of equal length, "
                f"got {len(images)} and {len(labels)}."
            )
            raise ValueError(msg)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.images = [pad_to(np.asarray(im, np.float32), self.patch_size, 1) for im in images]
        self.labels = [pad_to(np.asarray(lb, np.uint8), self.patch_size, 0) for lb in labels]
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.rotate = rotate
        self.foreground_fraction = float(foreground_fraction)
        self._foreground = [np.argwhere(lb > 0) if foreground_fraction else None for lb in self.labels]

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """All patches of ``epoch``: ``x`` float32 (n, C, *patch) and ``y`` int64 (n, *patch)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        n = self.samples_per_epoch
        order = rng.permutation(np.resize(np.arange(len(self.images)), n))
        xs, ys = [], []
        for index in order:
            image, label = self.images[index], self.labels[index]
            starts = self._start(rng, label.shape, self._foreground[index])
            window = tuple(slice(s, s + p) for s, p in zip(starts, self.patch_size, strict=True))
            x, y = image[(slice(None), *window)], label[window]
            for axis in range(y.ndim):
                if rng.random() < 0.5:
                    x, y = np.flip(x, axis + 1), np.flip(y, axis)
            if self.rotate and x.shape[1] == x.shape[2]:
                k = int(rng.integers(4))
                x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(0, 1))
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y, dtype=np.int64))
        return np.stack(xs), np.stack(ys)

    def _start(self, rng, shape, foreground) -> list[int]:
        limits = [s - p for s, p in zip(shape, self.patch_size, strict=True)]
        use_fg = foreground is not None and len(foreground) and rng.random() < self.foreground_fraction
        if use_fg:
            centre = foreground[rng.integers(len(foreground))]
            return [
                int(np.clip(c - p // 2, 0, lim))
                for c, p, lim in zip(centre, self.patch_size, limits, strict=True)
            ]
        return [int(rng.integers(lim + 1)) for lim in limits]


def _starts(size: int, patch: int, stride: int) -> list[int]:
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, stride))
    return [*starts, size - patch]


def sliding_window(
    predict: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 8,
) -> np.ndarray:
    """Logits ``(K, *spatial)`` for a whole image from overlapping tiles, averaged where they overlap.

    ``predict`` maps a float32 batch ``(B, C, *patch)`` to logits ``(B, K, *patch)``. Images smaller than
    the patch are edge-padded and the padding is cropped off again.
    """
    image = np.asarray(image, dtype=np.float32)
    spatial = image.shape[1:]
    padded = pad_to(image, patch_size, 1)
    offsets = [(p - s) // 2 if p > s else 0 for s, p in zip(spatial, patch_size, strict=True)]
    full = padded.shape[1:]
    strides = [max(1, int(p * (1 - overlap))) for p in patch_size]
    corners = list(
        itertools.product(*[_starts(s, p, st) for s, p, st in zip(full, patch_size, strides, strict=True)])
    )
    logits = np.zeros((num_classes, *full), dtype=np.float32)
    counts = np.zeros(full, dtype=np.float32)
    for begin in range(0, len(corners), batch_size):
        chunk = corners[begin : begin + batch_size]
        windows = [
            tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True)) for corner in chunk
        ]
        batch = np.stack([padded[(slice(None), *w)] for w in windows])
        out = np.asarray(predict(batch), dtype=np.float32)
        for window, tile in zip(windows, out, strict=True):
            logits[(slice(None), *window)] += tile
            counts[window] += 1.0
    logits /= counts[None]
    crop = tuple(slice(o, o + s) for o, s in zip(offsets, spatial, strict=True))
    return logits[(slice(None), *crop)]


def _bbox(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    where = np.argwhere(label > 0)
    if where.size == 0:
        return np.zeros(label.ndim, int), np.array(label.shape)
    return where.min(0), where.max(0) + 1


def authors_crop(
    image: np.ndarray, label: np.ndarray, size: int = 64, shift: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' input: the **ground-truth** foreground box (optionally shifted), resized to ``size^3``.

    This reads the label to choose the input region, so at test time it leaks the answer (the network
    only ever sees the heart, centred and scaled). Kept only to reproduce their protocol for comparison.
    The crop is z-scored, as in their code. ``image`` is ``(C, *spatial)``.
    """
    from scipy import ndimage

    low, high = _bbox(label)
    extent = high - low
    if shift is not None:
        move = np.rint(np.asarray(shift) * extent).astype(int)
        low, high = low + move, high + move
    low = np.clip(low, 0, np.array(label.shape) - 1)
    high = np.clip(high, low + 1, np.array(label.shape))
    window = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    sub_image, sub_label = image[(slice(None), *window)], label[window]
    zoom = [size / n for n in sub_label.shape]
    out_image = np.stack(
        [ndimage.zoom(ch, zoom, order=1, grid_mode=True, mode="nearest") for ch in sub_image]
    )
    out_label = ndimage.zoom(sub_label, zoom, order=0, grid_mode=True, mode="nearest")
    out_image = (out_image - out_image.mean()) / (out_image.std() + 1e-6)
    return out_image.astype(np.float32), out_label.astype(np.uint8)


def authors_training_crops(
    image: np.ndarray, label: np.ndarray, size: int = 64, step: float = 0.1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """27 GT-box crops per volume: the box shifted by ``{-step, 0, +step}`` of its extent along each axis."""
    shifts = itertools.product((-step, 0.0, step), repeat=3)
    return [authors_crop(image, label, size, shift) for shift in shifts]

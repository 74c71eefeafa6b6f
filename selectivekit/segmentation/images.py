"""Image collections: a stacked array or a sequence of per-image arrays, validated and flattened once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._lib import as_array, check_labels, check_uncertainty, device, float_dtype, get_namespace
from ..typing import Array, Namespace

__all__ = ["ImageSet", "collect_images", "per_image_coverage"]


def _is_sequence(x: Array) -> bool:
    return isinstance(x, (list, tuple))


def _check_labels(x: Array, name: str, num_classes: int, xp: Namespace) -> Array:
    """Labels in ``[0, num_classes)`` as integers (bools and whole-valued floats converted)."""
    return check_labels(x, name, xp, num_classes=num_classes)


def _check_like_pred(pred: Array, label: Array, uncertainty: Array, where: str) -> None:
    """``label`` and ``uncertainty`` have the shape of ``pred``; ``where`` is the image index (``"[3]"``)."""
    for name, other in (("label", label), ("uncertainty", uncertainty)):
        if tuple(other.shape) != tuple(pred.shape):
            msg = (
                f"`{name}{where}` must have the same shape as `pred{where}` {tuple(pred.shape)}, "
                f"got {tuple(other.shape)}."
            )
            raise ValueError(msg)


@dataclass(frozen=True)
class ImageSet:
    """Validated inputs, flattened and concatenated image after image (from
    [`collect_images`][selectivekit.segmentation.images.collect_images]).

    Attributes
    ----------
    pred, label, u : arrays of shape (N,)
        All voxels of all images, image after image.
    sizes : tuple of int
        Voxels per image.
    stacked : bool
        The input was one stacked array (every image has ``sizes[0]`` voxels).
    """

    pred: Array
    label: Array
    u: Array
    sizes: tuple[int, ...]
    stacked: bool


def collect_images(
    pred: Array, label: Array, uncertainty: Array, num_classes: int, /, *, xp: Namespace | None = None
) -> tuple[ImageSet, Namespace]:
    """Validate a collection of images and flatten it, image after image.

    ``pred``, ``label`` and ``uncertainty`` are all stacked arrays of shape (n_images, *spatial) or all
    sequences of per-image arrays (shapes may differ between images). Labels must lie in
    ``[0, num_classes)`` and ``uncertainty`` must be finite; every error names the argument (and image).
    """
    seqs = [_is_sequence(a) for a in (pred, label, uncertainty)]
    if any(seqs) and not all(seqs):
        names = ", ".join(
            f"`{n}`" for n, s in zip(("pred", "label", "uncertainty"), seqs, strict=True) if not s
        )
        msg = (
            "`pred`, `label` and `uncertainty` must all be stacked arrays of shape (n_images, *spatial) or "
            f"all sequences of per-image arrays; {names} is not a sequence."
        )
        raise TypeError(msg)
    if all(seqs):
        if len(pred) == 0:
            msg = "`pred` is an empty sequence; at least one image is needed."
            raise ValueError(msg)
        for name, seq in (("label", label), ("uncertainty", uncertainty)):
            if len(seq) != len(pred):
                msg = f"`{name}` must hold {len(pred)} images like `pred`, got {len(seq)}."
                raise ValueError(msg)
        preds = [as_array(p, "pred") for p in pred]
        labels = [as_array(p, "label") for p in label]
        us = [as_array(p, "uncertainty") for p in uncertainty]
        names = [f"{role}[{i}]" for role in ("pred", "label", "uncertainty") for i in range(len(preds))]
        xp = get_namespace(*preds, *labels, *us, xp=xp, names=names)
        sizes = []
        for i, (p, lab, u) in enumerate(zip(preds, labels, us, strict=True)):
            _check_like_pred(p, lab, u, f"[{i}]")
            size = math.prod(p.shape)
            if size == 0:
                msg = f"`pred[{i}]` is empty (shape {tuple(p.shape)}); every image needs a voxel."
                raise ValueError(msg)
            sizes.append(size)
        flat = [[xp.reshape(a, (-1,)) for a in arrays] for arrays in (preds, labels, us)]
        p_all, l_all, u_all = (xp.concat(f) if len(f) > 1 else f[0] for f in flat)
        stacked = False
    else:
        pred = as_array(pred, "pred")
        label = as_array(label, "label")
        uncertainty = as_array(uncertainty, "uncertainty")
        xp = get_namespace(pred, label, uncertainty, xp=xp, names=("pred", "label", "uncertainty"))
        if pred.ndim < 2:
            msg = (
                "`pred` must be a stacked array of shape (n_images, *spatial) with at least 2 dimensions "
                f"(or a list of per-image arrays), got shape {tuple(pred.shape)}."
            )
            raise ValueError(msg)
        _check_like_pred(pred, label, uncertainty, "")
        if math.prod(pred.shape) == 0:
            msg = f"`pred` is empty (shape {tuple(pred.shape)}); at least one voxel per image is needed."
            raise ValueError(msg)
        sizes = [math.prod(pred.shape[1:])] * pred.shape[0]
        p_all, l_all, u_all = (xp.reshape(a, (-1,)) for a in (pred, label, uncertainty))
        stacked = True
    check_uncertainty(u_all, xp)
    p_all = _check_labels(p_all, "pred", num_classes, xp)
    l_all = _check_labels(l_all, "label", num_classes, xp)
    return ImageSet(p_all, l_all, u_all, tuple(sizes), stacked), xp


def per_image_coverage(images: ImageSet, threshold: Any, /, *, xp: Namespace) -> Array:
    """Share of each image's voxels with ``u <= threshold``: array of shape (n_images,)."""
    accepted = images.u <= threshold
    fdt = float_dtype(xp)
    if images.stacked:
        per = xp.sum(xp.astype(xp.reshape(accepted, (len(images.sizes), -1)), fdt), axis=1)
    else:
        parts, start = [], 0
        for size in images.sizes:
            parts.append(xp.sum(xp.astype(accepted[start : start + size], fdt)))
            start += size
        per = xp.stack(parts)
    sizes = xp.asarray(images.sizes, dtype=fdt, device=device(per))
    return per / sizes

"""What the torch metrics do to the arguments of ``update`` before the core's checks see them.

``pred`` and ``label`` become integer class indices of ``uncertainty``'s shape (one-hot decoded, whole
floats cast, a length-1 channel axis added or removed; MONAI's ``MetaTensor`` as a plain tensor), half
precision is widened to float32, and the kept ``uncertainty`` is float64 (integers beyond 2**53 refused).
Used by ``selectivekit.adapters.torch_metrics`` only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def not_none(value: Any, name: str) -> None:
    """Refuse ``None`` for the argument ``name`` with a message that names it."""
    if value is None:
        msg = f"`{name}` must be a tensor or array, got None."
        raise TypeError(msg)


def widen(x: Any) -> Any:
    """Half-precision tensors as float32 (exact); the checks and the core run on float32 or wider."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            return x.float()
    return x


def as_float64(u: torch.Tensor) -> torch.Tensor:
    """``u`` in float64, the dtype of the kept state; integers beyond 2**53 are refused (float64 would tie
    distinct values, and the state must be float64 to be synchronized across processes)."""
    if not u.dtype.is_floating_point and u.numel() and int(u.abs().max()) > 2**53:
        msg = (
            "`uncertainty` holds integers beyond 2**53, which this metric would round to float64 (distinct "
            "values tie); pass their ranks, or use selectivekit.SegmentationAccumulator / "
            "RiskCoverageAccumulator, which keep them exact."
        )
        raise ValueError(msg)
    return u.to(torch.float64)


def check_max_memory(max_memory: Any) -> int:
    """``max_memory`` as a non-negative int (bytes), or a message that names the argument."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 0:
        msg = f"`max_memory` must be a non-negative int (bytes; 0: always the grid), got {max_memory!r}."
        raise ValueError(msg) if isinstance(max_memory, (int, np.integer)) else TypeError(msg)
    return int(max_memory)


def _plain(x: Any) -> Any:
    """A tensor subclass (MONAI's ``MetaTensor``, whose every operation carries its metadata) as a plain
    tensor; anything else as it is."""
    if isinstance(x, torch.Tensor) and type(x) is not torch.Tensor:
        return x.as_subclass(torch.Tensor)
    return x


def class_indices(pred: Any, label: Any, uncertainty: Any, num_classes: int, one_hot: bool | None) -> tuple:
    """``pred`` and ``label`` as integer class indices of ``uncertainty``'s shape (tensors only; other
    arrays pass through to the core's checks): one-hot decoded, float whole numbers checked and cast,
    a length-1 channel axis added or removed."""
    if isinstance(uncertainty, (list, tuple)):
        if not isinstance(pred, (list, tuple)) or not isinstance(label, (list, tuple)):
            return pred, label, uncertainty  # the core reports the mix
        if not len(pred) == len(label) == len(uncertainty):
            return pred, label, uncertainty  # the core reports the lengths
        out = [
            _class_indices_one(p, lab, u, num_classes, one_hot, 0, f"[{i}]")
            for i, (p, lab, u) in enumerate(zip(pred, label, uncertainty, strict=True))
        ]
        return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]
    return _class_indices_one(pred, label, uncertainty, num_classes, one_hot, 1, "")


def _class_indices_one(
    pred: Any, label: Any, u: Any, num_classes: int, one_hot: bool | None, axis: int, where: str
) -> tuple[Any, Any, Any]:
    u = _plain(u)
    if not isinstance(u, torch.Tensor) or u.ndim < axis:
        return _plain(pred), _plain(label), u
    u_shape = tuple(u.shape)
    return (
        _as_indices(_plain(pred), f"pred{where}", u_shape, axis, num_classes, one_hot),
        _as_indices(_plain(label), f"label{where}", u_shape, axis, num_classes, one_hot),
        u,
    )


def _as_indices(
    x: Any, name: str, u_shape: tuple[int, ...], axis: int, num_classes: int, one_hot: bool | None
) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    shape = tuple(x.shape)
    # the one-hot shapes: a class axis where `uncertainty` has none, or in place of its length-1 axis
    hot_shapes = [(*u_shape[:axis], num_classes, *u_shape[axis:])]
    if len(u_shape) > axis and u_shape[axis] == 1:
        hot_shapes.append((*u_shape[:axis], num_classes, *u_shape[axis + 1 :]))
    is_hot = shape in hot_shapes
    fits_indices = (
        shape == u_shape or _drop_axis(shape, axis) == u_shape or _drop_axis(u_shape, axis) == shape
    )
    if one_hot is None and is_hot and fits_indices:
        msg = (
            f"`{name}` of shape {shape} reads both as one-hot and as class indices (num_classes="
            f"{num_classes}); pass `one_hot=True` or `one_hot=False`."
        )
        raise ValueError(msg)
    if one_hot is True and not is_hot:
        msg = (
            f"`{name}` must be one-hot (one_hot=True): shape {hot_shapes[0]}, with the class axis at "
            f"{axis}, for `uncertainty` of shape {u_shape}; got {shape}."
        )
        raise ValueError(msg)
    if is_hot and one_hot is not False:
        ok = ((x == 0) | (x == 1)).all() & (x.sum(dim=axis) == 1).all()
        if not bool(ok):
            msg = (
                f"`{name}` is one-hot (class axis {axis} of length {num_classes}) but not exactly: every "
                "voxel must have a single 1 and zeros elsewhere."
            )
            raise ValueError(msg)
        return torch.reshape(torch.argmax(x, dim=axis), u_shape)
    if shape != u_shape and fits_indices:
        x = torch.reshape(x, u_shape)  # a length-1 channel axis on one side only
    if x.is_floating_point():
        if not bool((x == torch.round(x)).all()):
            msg = (
                f"`{name}` holds floating-point labels that are not whole numbers (or NaN); they must be "
                "class indices in value, as MONAI's LoadImaged gives them."
            )
            raise ValueError(msg)
        x = x.to(torch.int64)
    return x


def _drop_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...] | None:
    """``shape`` without its length-1 axis ``axis``; None when that axis is not of length 1."""
    if len(shape) > axis and shape[axis] == 1:
        return shape[:axis] + shape[axis + 1 :]
    return None

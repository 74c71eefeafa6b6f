"""What the PyTorch and Keras adapters share besides formulas: target layouts, static shapes, composition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .array_api import is_traced

__all__ = [
    "check_same_static_shape",
    "compose_margin_loss",
    "region_targets",
    "same_static_shape",
    "target_layout",
]


def same_static_shape(a: Sequence[int | None], b: Sequence[int | None]) -> bool:
    """Shapes that can match (``None`` is an unknown dimension, as in symbolic Keras shapes)."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def check_same_static_shape(name_a: str, a: object, name_b: str, b: object) -> None:
    sa, sb = tuple(a.shape), tuple(b.shape)  # type: ignore[attr-defined]
    if not same_static_shape(sa, sb):
        msg = f"`{name_b}` must have the same shape as `{name_a}` {sa}, got {sb}."
        raise ValueError(msg)


def target_layout(
    pred_shape: Sequence[int | None], true_shape: Sequence[int | None], axis: int, true_name: str
) -> str:
    """How a target relates to predictions of ``pred_shape`` with the class axis ``axis``.

    Returns ``"one_hot"`` (the shape of the predictions, more than one class: one-hot or soft labels),
    ``"indices_with_axis"`` (class indices with a 1 at the class axis, as MONAI and Keras keep them) or
    ``"indices"`` (class indices, the class axis absent). Anything else raises ``ValueError`` naming
    ``true_name``.
    """
    pred_shape, true_shape = tuple(pred_shape), tuple(true_shape)
    rank = len(pred_shape)
    axis = axis % rank
    spatial = pred_shape[:axis] + pred_shape[axis + 1 :]
    if same_static_shape(true_shape, pred_shape) and pred_shape[axis] not in (None, 1):
        return "one_hot"
    if len(true_shape) == rank and true_shape[axis] == 1:
        if same_static_shape(true_shape[:axis] + true_shape[axis + 1 :], spatial):
            return "indices_with_axis"
    elif same_static_shape(true_shape, spatial):
        return "indices"
    msg = (
        f"`{true_name}` must have shape {spatial} (class indices, or with a 1 at the class axis) or "
        f"{pred_shape} (one-hot), got {true_shape}."
    )
    raise ValueError(msg)


def compose_margin_loss(cls: type, margin_loss: Any, options: Mapping[str, Any]) -> Any:
    """The uncertainty term of an ``UncertaintyAwareLoss``: ``margin_loss``, or ``cls(**options)``."""
    if margin_loss is None:
        return cls(**options)
    if options:
        names = ", ".join(f"`{name}`" for name in sorted(options))
        msg = f"give `margin_loss` or its options ({names}), not both."
        raise TypeError(msg)
    if not isinstance(margin_loss, cls):
        msg = f"`margin_loss` must be a {cls.__name__}, got {type(margin_loss).__name__}."
        raise TypeError(msg)
    return margin_loss


def region_targets(
    logits: Any, labels: Any, ignore_index: int | None, validate: bool, xp: Any
) -> tuple[Any, Any | None]:
    """The targets of region (multi-label sigmoid) outputs: which (channel, voxel) pairs are 1, and the mask
    of the pairs that take part (``labels != ignore_index``; None when every pair does).

    ``labels`` has the shape of ``logits`` and holds 0/1 (bool, integers or whole floats) or
    ``ignore_index``. With ``validate`` (and no JAX tracer), one read from the device checks the targets
    and that the logits are finite; dtypes and shapes are always checked. Shared by the core function and
    the PyTorch loss, which compute ``u`` and the correctness ``(z > 0) == is_one`` from these.
    """
    if not xp.isdtype(logits.dtype, "real floating"):
        msg = f"`logits` must be floating point, got dtype {logits.dtype}."
        raise TypeError(msg)
    if tuple(labels.shape) != tuple(logits.shape):
        msg = (
            f"the target of sigmoid (region) outputs must have the shape of `logits` {tuple(logits.shape)} "
            f"(a 0/1 target per region channel), got {tuple(labels.shape)}."
        )
        raise ValueError(msg)
    boolean = xp.isdtype(labels.dtype, "bool")
    if not (boolean or xp.isdtype(labels.dtype, ("integral", "real floating"))):
        msg = f"the target of sigmoid (region) outputs must hold 0/1 values, got dtype {labels.dtype}."
        raise TypeError(msg)
    is_one = labels if boolean else labels == 1
    mask = None if ignore_index is None or boolean else labels != ignore_index
    if validate and not is_traced(logits, labels):
        bad_labels = ~(is_one | (labels == 0))
        if mask is not None:
            bad_labels = bad_labels & mask
        bad_labels = xp.any(bad_labels)
        if bool(bad_labels | xp.any(~xp.isfinite(logits))):  # the one read, for both checks
            if bool(bad_labels):
                allowed = "" if mask is None else f" or the ignore index {ignore_index}"
                msg = f"the target of sigmoid (region) outputs must hold 0 or 1{allowed}, got other values."
                raise ValueError(msg)
            msg = "`logits` must be finite, got NaN or infinite values."
            raise ValueError(msg)
    return is_one, mask

"""Validated, flat, masked per-instance inputs: the first step of every instance metric."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..typing import Array, Namespace
from .array_api import as_array, flatten, get_namespace, working_float_dtype
from .validation import check_correct, check_mask, check_risk, check_same_library, check_uncertainty

__all__ = ["Instances", "loss_instances", "prepare_instances"]


class Instances(NamedTuple):
    """Flat (masked) instances: ``u``, and ``correct`` (bool) or the instance ``risk``, and the namespace."""

    u: Array
    correct: Array | None
    soft_risk: Array | None
    xp: Namespace

    @property
    def is_bool(self) -> bool:
        """The risk is an error indicator (``correct`` was given), not a soft per-instance loss."""
        return self.correct is not None

    @property
    def risk(self) -> Array:
        """The instance risk: the error indicator ``~correct``, or the given soft ``risk``."""
        return ~self.correct if self.correct is not None else self.soft_risk


def prepare_instances(
    uncertainty: Any,
    correct: Any = None,
    *,
    risk: Any = None,
    mask: Any = None,
    target: str = "correct",
    xp: Namespace | None = None,
) -> Instances:
    """Validate, flatten and mask one set of instances.

    ``target`` says what the caller needs besides ``uncertainty``: ``"none"``, ``"correct"`` (required) or
    ``"correct_or_risk"`` (exactly one of ``correct`` and ``risk``).
    """
    uncertainty = as_array(uncertainty, "uncertainty")
    if target == "correct_or_risk":
        if (correct is None) == (risk is None):
            msg = "pass exactly one of `correct` (bool per instance) or `risk` (per-instance, in [0, 1])."
            raise TypeError(msg)
        other = as_array(correct if risk is None else risk, "correct" if risk is None else "risk")
    elif target == "correct":
        other = as_array(correct, "correct")
    else:
        other = None
    if other is not None and xp is None:
        check_same_library(other, "correct" if risk is None else "risk", uncertainty)
    xp = get_namespace(uncertainty, other, xp=xp)
    check_uncertainty(uncertainty, xp)
    soft = None
    if other is not None and risk is None:
        correct = flatten(check_correct(other, uncertainty, xp), xp)
    elif other is not None:
        correct = None
        soft = flatten(check_risk(other, uncertainty, xp), xp)
    mask = check_mask(mask, uncertainty, xp)
    u = flatten(uncertainty, xp)
    if mask is not None:
        keep = flatten(mask, xp)
        u = u[keep]
        correct = correct[keep] if correct is not None else None
        soft = soft[keep] if soft is not None else None
    return Instances(u, correct, soft, xp)


def loss_instances(u: Array, correct: Array, mask: Array | None, xp: Namespace) -> tuple[Array, Array, Array]:
    """The flat inputs of the margin loss: ``u`` in its working float dtype and the correct/wrong flags.

    Both flags are ``False`` outside ``mask``. Keeps autograd (PyTorch through its array namespace): only
    reshapes, a dtype cast and boolean operations. ``u`` already in its working dtype is not copied (the
    kernels only read it).
    """
    u = flatten(xp.astype(u, working_float_dtype(u, xp), copy=False), xp)
    is_c = flatten(correct if xp.isdtype(correct.dtype, "bool") else correct == 1, xp)
    is_w = ~is_c
    if mask is not None:
        keep = flatten(mask, xp)
        is_c = is_c & keep
        is_w = is_w & keep
    return u, is_c, is_w

"""The setting of the uncertainty-aware loss: its weight, its gradient on wrong voxels, and its schedule.

One object, [`LossSetting`][selectivekit.LossSetting], holds what a user of the loss must not get wrong:
the weight of the uncertainty term, where its gradient moves a wrong voxel (``push``) and the schedule that
brings the weight in (a warm-up without the term, then a linear ramp). The PyTorch and Keras
``UncertaintyAwareLoss``, the array-API form ([`uncertainty_weight`][selectivekit.uncertainty_weight] with
[`margin_loss_from_logits`][selectivekit.margin_loss_from_logits]), the nnU-Net trainers and the reference
trainers all read their default from [`LOSS_SETTINGS`][selectivekit.LOSS_SETTINGS] ``["default"]``, and a
[`WeightSchedule`][selectivekit.WeightSchedule] follows the length of training that the user states once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ._lib import check_choice

__all__ = ["LOSS_SETTINGS", "LossSetting", "WeightSchedule", "get_loss_setting", "uncertainty_weight"]

PUSHES = ("binary", "uniform")


def _share(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        msg = f"`{name}` must be a share of training in [0, 1], got {value!r}."
        raise ValueError(msg)
    return float(value)


@dataclass(frozen=True)
class LossSetting:
    """The weight, gradient and schedule of the uncertainty term ``L = L_seg + w(t) * L_unc``.

    Parameters
    ----------
    weight : float
        The full weight of the uncertainty term (finite, ``>= 0``), reached at the end of the ramp.
    push : {"binary", "uniform"}
        Where the gradient moves a *wrong* voxel when ``u = 1 - max softmax`` is computed from logits.
        ``"uniform"`` is the plain gradient of ``u`` (the paper's): it lowers the predicted class and
        raises every other class in proportion to its probability. ``"binary"`` takes a wrong voxel's
        gradient from ``p_t / (p_m + p_t)``, the uncertainty between its predicted class ``m`` and its true
        class ``t``, so it moves probability from ``m`` to ``t`` only. The value of the loss is the same
        either way; ``"binary"`` is a descent direction of that value, not its gradient, and it reads the
        true label. With two classes both are the same.
    warmup : float
        Share of training (in ``[0, 1]``) with the weight at 0: segmentation only.
    ramp : float
        Share of training over which the weight then rises linearly from 0 to ``weight`` (finite,
        ``>= 0``; with ``warmup + ramp > 1`` training ends before the full weight).

    Notes
    -----
    The weight at progress ``t`` (the share of training done, in ``[0, 1]``) is ``0`` for ``t < warmup``,
    ``weight * (t - warmup) / ramp`` during the ramp, and ``weight`` after it (at once, if ``ramp`` is 0).
    A setting with neither warm-up nor ramp has a constant weight and needs no length of training.

    Examples
    --------
    >>> setting = LossSetting(weight=200.0, push="binary", warmup=0.25, ramp=0.25)
    >>> [setting.weight_at(t) for t in (0.0, 0.25, 0.375, 0.5, 1.0)]
    [0.0, 0.0, 100.0, 200.0, 200.0]
    >>> setting.constant
    False
    """

    weight: float
    push: str
    warmup: float
    ramp: float

    def __post_init__(self) -> None:
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            msg = f"`weight` must be a finite number >= 0, got {weight!r}."
            raise ValueError(msg)
        object.__setattr__(self, "weight", float(weight))
        object.__setattr__(self, "push", check_choice(self.push, "push", PUSHES))
        object.__setattr__(self, "warmup", _share(self.warmup, "warmup"))
        ramp = self.ramp
        if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not 0 <= ramp < math.inf:
            msg = f"`ramp` must be a finite share of training >= 0, got {ramp!r}."
            raise ValueError(msg)
        object.__setattr__(self, "ramp", float(ramp))

    @property
    def constant(self) -> bool:
        """Whether the weight is the same at every step (no warm-up, no ramp)."""
        return self.warmup == 0 and self.ramp == 0

    def weight_at(self, progress: float) -> float:
        """The weight of the uncertainty term after a share ``progress`` of training (clipped to [0, 1])."""
        if not isinstance(progress, (int, float)) or progress != progress:
            msg = f"`progress` must be a number in [0, 1], got {progress!r}."
            raise ValueError(msg)
        progress = min(1.0, max(0.0, float(progress)))
        if progress < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return self.weight
        return self.weight * min(1.0, (progress - self.warmup) / self.ramp)

    def check_push(self, push: str) -> None:
        """Refuse a margin loss whose ``push`` is not this setting's (give ``push`` in one place)."""
        if push != self.push:
            msg = (
                f"`margin_loss` has push={push!r} but the setting has push={self.push!r}: give `push` in one "
                "place, to the margin loss or to the setting."
            )
            raise ValueError(msg)

    def replace(self, **changes: Any) -> LossSetting:
        """A copy with some fields changed (validated again); ``None`` values are ignored, and with no change
        the setting itself is returned."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def to_config(self) -> dict[str, Any]:
        """The setting as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)


#: The named settings. ``"default"`` is what every entry point uses unless told otherwise; ``"authors"`` is
#: the paper's exact objective (weight 2000 on the mean over pairs, the plain gradient, from the first step),
#: for reproducing the paper or for two classes, where it did not collapse. docs/reproduction.md records the
#: study behind the default and what it does and does not show.
LOSS_SETTINGS: dict[str, LossSetting] = {
    "default": LossSetting(weight=200.0, push="binary", warmup=0.25, ramp=0.25),
    "authors": LossSetting(weight=2000.0, push="uniform", warmup=0.0, ramp=0.0),
}


def get_loss_setting(setting: str | LossSetting = "default", /, **changes: Any) -> LossSetting:
    """A named setting (``"default"``, ``"authors"``) or a `LossSetting`, with some fields changed.

    Parameters
    ----------
    setting : str or LossSetting, default "default"
        A name in [`LOSS_SETTINGS`][selectivekit.LOSS_SETTINGS] or a setting object.
    **changes
        ``weight``, ``push``, ``warmup`` or ``ramp`` to change; ``None`` keeps the setting's value.

    Examples
    --------
    >>> get_loss_setting("authors").weight
    2000.0
    >>> get_loss_setting("default", weight=50).weight
    50.0
    """
    if isinstance(setting, LossSetting):
        base = setting
    elif isinstance(setting, str) and setting in LOSS_SETTINGS:
        base = LOSS_SETTINGS[setting]
    else:
        names = ", ".join(f'"{n}"' for n in LOSS_SETTINGS)
        msg = f"`setting` must be one of {names} or a LossSetting, got {setting!r}."
        raise ValueError(msg)
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(LossSetting)})
    if unknown:
        msg = f"unknown setting field(s) {unknown}; the fields are weight, push, warmup, ramp."
        raise TypeError(msg)
    return base.replace(**changes)


def _check_total(total_steps: Any) -> int | None:
    if total_steps is None:
        return None
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        msg = (
            f"`total_steps` must be a whole number >= 1 (the steps of all of training), got {total_steps!r}."
        )
        raise ValueError(msg)
    return int(total_steps)


class WeightSchedule:
    """The weight of the uncertainty term over training: a `LossSetting` and a step counter.

    A user states the length of training once, as ``total_steps``; the loss (or a callback) then advances the
    counter and reads the weight. The PyTorch loss advances it on every call that computes a gradient; the
    Lightning, Keras and nnU-Net hooks set it from their trainer's own step or epoch count.

    Parameters
    ----------
    setting : LossSetting
        The weight, push and schedule.
    total_steps : int, optional
        The number of steps of all of training. Required before training with a setting that warms up or
        ramps (one that is not `constant`): such a schedule without a length raises instead of training
        at full weight from the first step.

    Examples
    --------
    >>> schedule = WeightSchedule(LOSS_SETTINGS["default"], total_steps=8)
    >>> weights = []
    >>> for _ in range(8):
    ...     weights.append(schedule.weight)
    ...     schedule.advance()
    >>> weights
    [0.0, 0.0, 0.0, 100.0, 200.0, 200.0, 200.0, 200.0]
    >>> WeightSchedule(LOSS_SETTINGS["default"]).weight
    Traceback (most recent call last):
    ...
    ValueError: the uncertainty-aware loss does not know the length of training: its setting ...
    """

    def __init__(self, setting: LossSetting, total_steps: int | None = None) -> None:
        if not isinstance(setting, LossSetting):
            msg = f"`setting` must be a LossSetting, got {type(setting).__name__}."
            raise TypeError(msg)
        self.setting = setting
        self.total_steps = _check_total(total_steps)
        self.step = 0

    def __repr__(self) -> str:
        return f"WeightSchedule({self.setting!r}, total_steps={self.total_steps}, step={self.step})"

    def set_total_steps(self, total_steps: int) -> None:
        """State the length of training (steps of all of training)."""
        self.total_steps = _check_total(total_steps)

    def set_step(self, step: int) -> None:
        """Set the number of steps done (a trainer's global step)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            msg = f"`step` must be a whole number >= 0, got {step!r}."
            raise ValueError(msg)
        self.step = int(step)

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more steps of training."""
        self.set_step(self.step + steps)

    @property
    def progress(self) -> float:
        """The share of training done, in [0, 1] (1 for a constant setting without a length)."""
        if self.total_steps is None:
            self.require_length()
            return 1.0
        return min(1.0, self.step / self.total_steps)

    @property
    def weight(self) -> float:
        """The weight of the uncertainty term at the current step."""
        return self.setting.weight_at(self.progress)

    def require_length(self) -> None:
        """Raise ``ValueError`` if the setting warms up or ramps and the length of training is unknown."""
        if self.total_steps is None and not self.setting.constant:
            s = self.setting
            msg = (
                "the uncertainty-aware loss does not know the length of training: its setting trains "
                f"without the term for the first {s.warmup:.0%} of training and ramps the weight to "
                f"{s.weight:g} over the next {s.ramp:.0%}. Give `total_steps` (the steps of all of "
                "training), use the schedule callback of Lightning or Keras, or choose a constant weight "
                '(`setting="authors"`, or `warmup=0, ramp=0`).'
            )
            raise ValueError(msg)


def uncertainty_weight(step: int, total_steps: int, /, setting: str | LossSetting = "default") -> float:
    """The weight of the uncertainty term after ``step`` of ``total_steps`` steps of training.

    For the array-API and JAX form of the loss, where no object keeps the count:
    ``loss = seg_loss + uncertainty_weight(step, total_steps) * margin_loss_from_logits(...)``. ``step`` and
    ``total_steps`` are Python integers: under ``jax.jit`` compute the weight outside the compiled step and
    pass it in as an argument.

    Examples
    --------
    >>> [uncertainty_weight(step, 8) for step in (0, 2, 3, 4, 7)]
    [0.0, 0.0, 100.0, 200.0, 200.0]
    >>> uncertainty_weight(0, 100, setting="authors")
    2000.0
    """
    schedule = WeightSchedule(get_loss_setting(setting), total_steps)
    schedule.set_step(step)
    return schedule.weight

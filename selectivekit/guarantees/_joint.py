"""Thresholds that guarantee several Dice risks at once, one threshold per structure, and the
Waudby-Smith–Ramdas betting bound beside Hoeffding–Bentkus."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib import as_array, check_choice, check_num_classes, to_numpy
from ..typing import Namespace
from ._bounds import hb_p_value, hb_upper_bound, wsr_p_value, wsr_upper_bound
from ._common import check_open_unit
from ._state import ImageState, image_state, per_image

BOUNDS = ("hoeffding-bentkus", "wsr")

# loss rows evaluated at once: points x images stays under this many float64 values (32 MiB)
_CHUNK_VALUES = 2**22


@dataclass(frozen=True)
class JointThreshold:
    """One referral threshold that keeps every listed risk at most its limit.

    Attributes
    ----------
    threshold : float
        Accept voxels with ``u <= threshold``, refer the others; ``-inf`` refers everything.
    coverage : float
        Global coverage of the calibration images at this threshold.
    max_dice_loss : dict
        The limit of each risk: ``"mean"`` (``1 -`` the image's mean Dice over the evaluated classes),
        ``"worst"`` (``1 -`` its lowest class Dice) or a class index ``k`` (``1 - Dice_k``).
    loss : dict
        The mean calibration loss of each risk at this threshold.
    bound : dict
        Per risk: ``"crc"``, the conformal bound ``(n loss + 1) / (n + 1)``; ``"ltt"``, the upper confidence
        bound at level ``1 - delta`` of the chosen ``bound``. Each is at most its limit.
    method : str
        ``"crc"`` (conformal risk control) or ``"ltt"`` (Learn then Test).
    bound_name : str or None
        ``"hoeffding-bentkus"`` or ``"wsr"`` (Waudby-Smith–Ramdas) for ``"ltt"``; None for ``"crc"``.
    delta : float or None
    p_value : float or None
        ``"ltt"``: the largest of the risks' p-values at this threshold (at most ``delta``).
    n_images : int
    refers_all : bool
        True when no threshold qualified: everything is referred.
    """

    threshold: float
    coverage: float
    max_dice_loss: dict[Any, float]
    loss: dict[Any, float]
    bound: dict[Any, float]
    method: str
    bound_name: str | None
    delta: float | None
    p_value: float | None
    n_images: int
    refers_all: bool


@dataclass(frozen=True)
class ClassThresholds:
    """One threshold per structure, each with its own guarantee on ``1 - Dice_k after referral``.

    Attributes
    ----------
    per_class : dict of int to JointThreshold
        The threshold of each evaluated class ``k`` (its only risk is ``k``).
    threshold : float
        The smallest of them: referring every voxel with ``u > threshold`` keeps each class's guarantee at
        once (referring more never lowers a Dice).
    coverage : float
        Calibration coverage at ``threshold``.
    method : str
        ``"crc"`` or ``"ltt"``.
    delta : float or None
        ``"ltt"``: the family-wise level; each class was tested at ``delta_per_class``.
    delta_per_class : float or None
        ``delta / number of classes`` (Bonferroni): with probability at least ``1 - delta`` every class's
        guarantee holds together.
    n_images : int
    """

    per_class: dict[int, JointThreshold]
    threshold: float
    coverage: float
    method: str
    delta: float | None
    delta_per_class: float | None
    n_images: int


@dataclass
class Calibration:
    """The per-image step functions every risk needs, computed once: the image Dice (``"mean"``) and each
    evaluated class's own Dice (its binary problem). A simulation reuses it across splits with ``take``."""

    states: dict[Any, ImageState]
    classes: tuple[int, ...]

    @classmethod
    def of_images(
        cls,
        pred: Any,
        label: Any,
        uncertainty: Any,
        num_classes: int,
        include_background: bool,
        xp: Namespace | None,
        *,
        with_classes: bool = True,
    ) -> Calibration:
        k = check_num_classes(num_classes, include_background)
        images = per_image(pred, label, uncertainty)
        if not images:
            msg = "`pred` holds no calibration image; at least one is needed."
            raise ValueError(msg)
        states: dict[Any, ImageState] = {
            "mean": image_state(pred, label, uncertainty, k, include_background, xp, "pred")
        }
        # the checks above passed: every image is a (pred, label, u) triple of one shape, each a list of one
        # array or a stacked slice of one image; [0] is the image either way
        arrays = [[to_numpy(as_array(a[0], "pred")) for a in img] for img in images]
        classes = tuple(range(0 if include_background else 1, k)) if with_classes else ()
        for c in classes:
            states[c] = image_state(
                [p == c for p, _, _ in arrays],
                [lab == c for _, lab, _ in arrays],
                [u for _, _, u in arrays],
                2,
                False,
                None,
                "pred",
            )
        return cls(states=states, classes=classes)

    @property
    def n_images(self) -> int:
        return self.states["mean"].n_items

    def take(self, indices: Any) -> Calibration:
        """The images at ``indices`` (repeats allowed), in that order."""
        return Calibration({key: s.take(indices) for key, s in self.states.items()}, self.classes)

    def coverage(self, threshold: float) -> float:
        """The share of every calibration voxel with ``u <= threshold``."""
        state = self.states["mean"]
        at = np.array([threshold])
        accepted = sum(int(state.count_upto(i, at)[0]) for i in range(state.n_items))
        return accepted / int(state.n_voxels.sum())

    def loss_rows(self, key: Any, points: np.ndarray) -> np.ndarray:
        """``L_i(t)`` of risk ``key`` at every point ``t`` (rows) for every image ``i`` (columns)."""
        if key == "worst":
            return np.max([self.loss_rows(c, points) for c in self.classes], axis=0)
        return 1.0 - self.states[key].dice_rows(points)


def check_bound(bound: Any) -> str:
    """``bound`` is one of `BOUNDS`."""
    return check_choice(bound, "bound", BOUNDS)


def _check_limits(max_dice_loss: Any, classes: tuple[int, ...]) -> dict[Any, float]:
    if not isinstance(max_dice_loss, Mapping) or not max_dice_loss:
        msg = (
            "`max_dice_loss` must be a non-empty mapping of risks to limits, e.g. "
            f'{{"mean": 0.05, "worst": 0.2}}, got {type(max_dice_loss).__name__}.'
        )
        raise TypeError(msg)
    limits: dict[Any, float] = {}
    for key, value in max_dice_loss.items():
        ok_class = isinstance(key, numbers.Integral) and not isinstance(key, bool) and int(key) in classes
        if key not in ("mean", "worst") and not ok_class:
            msg = (
                f'`max_dice_loss` keys must be "mean", "worst" or an evaluated class {list(classes)}, got '
                f"{key!r}."
            )
            raise ValueError(msg)
        limits[int(key) if ok_class else key] = check_open_unit(value, f"max_dice_loss[{key!r}]")
    return limits


def choose_threshold(
    cal: Calibration, limits: dict[Any, float], delta: float | None, bound: str
) -> JointThreshold:
    """The fixed-sequence choice: walk from referring everything towards accepting more, through the
    segments between the points where some image's loss changes, and stop before the first segment that
    fails; the threshold is the largest calibration ``u`` inside the last passing segment."""
    n = cal.n_images
    keys = list(limits)
    needs = {c for key in keys for c in (cal.classes if key == "worst" else [key])}
    points = np.unique(np.concatenate([t for key in needs for t in cal.states[key].changed_thresholds]))
    # segment 0: everything below the first change point (loss 0); segment p: [points[p-1], points[p])
    n_seg = points.shape[0] + 1
    chunk = max(1, _CHUNK_VALUES // max(n, 1))
    method = "crc" if delta is None else "ltt"
    first_fail = n_seg
    for start in range(0, n_seg, chunk):
        seg = np.arange(start, min(n_seg, start + chunk))
        at = points[np.maximum(seg - 1, 0)]
        fail = np.zeros(seg.shape[0], dtype=bool)
        for key in keys:
            rows = np.where((seg > 0)[:, None], cal.loss_rows(key, at), 0.0)
            alpha = limits[key]
            if delta is None:
                fail |= (n * rows.mean(axis=1) + 1.0) / (n + 1.0) > alpha
            elif bound == "wsr":
                fail |= wsr_p_value(rows, alpha, delta) > delta
            else:
                fail |= hb_p_value(rows.mean(axis=1), alpha, n) > delta
        if fail.any():
            first_fail = int(seg[np.argmax(fail)])
            break
    union = cal.states["mean"].union
    # the largest calibration u below the first failing segment's start (any u when none failed)
    stop = points[first_fail - 1] if first_fail < n_seg else math.inf
    below = union[union < stop]
    if first_fail == 0 or below.shape[0] == 0:
        return JointThreshold(
            threshold=-math.inf,
            coverage=0.0,
            max_dice_loss=dict(limits),
            loss=dict.fromkeys(keys, 0.0),
            bound=dict.fromkeys(keys, 0.0),
            method=method,
            bound_name=None if delta is None else bound,
            delta=delta,
            p_value=None if delta is None else 0.0,
            n_images=n,
            refers_all=True,
        )
    t = float(below[-1])
    at = np.array([t])
    rows = {key: cal.loss_rows(key, at)[0] for key in keys}
    loss = {key: float(r.mean()) for key, r in rows.items()}
    if delta is None:
        bounds = {key: (n * loss[key] + 1.0) / (n + 1.0) for key in keys}
        p_value = None
    elif bound == "wsr":
        bounds = {key: wsr_upper_bound(r, delta) for key, r in rows.items()}
        p_value = max(float(wsr_p_value(r[None, :], limits[key], delta)[0]) for key, r in rows.items())
    else:
        bounds = {key: hb_upper_bound(loss[key], n, delta) for key in keys}
        p_value = max(hb_p_value(loss[key], limits[key], n) for key in keys)
    return JointThreshold(
        threshold=t,
        coverage=cal.coverage(t),
        max_dice_loss=dict(limits),
        loss=loss,
        bound=bounds,
        method=method,
        bound_name=None if delta is None else bound,
        delta=delta,
        p_value=p_value,
        n_images=n,
        refers_all=False,
    )


def guaranteed_joint_threshold(
    pred: Any,
    label: Any,
    uncertainty: Any,
    /,
    *,
    num_classes: int,
    max_dice_loss: Mapping[Any, float],
    delta: float | None = None,
    bound: str = "hoeffding-bentkus",
    include_background: bool = False,
    xp: Namespace | None = None,
) -> JointThreshold:
    """One referral threshold that controls several Dice risks of a new image at once.

    Parameters
    ----------
    pred, label, uncertainty : arrays of shape (n_images, *spatial) or sequences of per-image arrays
        The calibration images, as for [`guaranteed_dice_threshold`][selectivekit.guaranteed_dice_threshold].
    num_classes, include_background
        As for [`dice_at_coverage`][selectivekit.dice_at_coverage].
    max_dice_loss : mapping
        The limit in (0, 1) of each risk: ``"mean"`` (``1 -`` the image's mean Dice over the evaluated
        classes), ``"worst"`` (``1 -`` its lowest class Dice: the worst structure) and any evaluated class
        ``k`` (``1 - Dice_k``). ``{"mean": 0.05, "worst": 0.2}`` asks for a mean Dice of at least 0.95 and no
        structure below 0.8, on average over new images.
    delta : float in (0, 1), optional
        ``None``: conformal risk control (each expected loss at most its limit). A number: Learn then Test,
        every risk at most its limit together with probability ``1 - delta``.
    bound : ``"hoeffding-bentkus"`` or ``"wsr"``
        With ``delta``: the p-value of each risk, Hoeffding–Bentkus (from the mean loss) or the
        Waudby-Smith–Ramdas betting bound (from the losses in the order of the images; tighter when the losses
        vary little). Ignored by conformal risk control.

    Returns
    -------
    JointThreshold
        The threshold, its calibration coverage, each risk's calibration loss and bound. When no threshold
        qualifies it refers everything (``refers_all=True``); it never raises for that.

    Notes
    -----
    Every risk ``L_i(t)`` never rises as more is referred (``t`` falls). Conformal risk control returns the
    smallest of the risks' own conformal thresholds, so each ``E[L_new(t)] <= limit`` holds as for one risk.
    Learn then Test tests ``H_t: some risk exceeds its limit`` with the largest of the risks' p-values (a
    valid p-value for a union of hypotheses, no split of ``delta``), walking from the most referral; because
    each true risk is monotone in ``t``, the first threshold where ``H_t`` is true is crossed by the walk, so
    ``P(every risk <= its limit) >= 1 - delta`` over calibration sets, whatever the p-values do elsewhere.
    The Waudby-Smith–Ramdas p-value reads the images in the order given: that order must not be chosen by
    looking at the losses. Exchangeable images are needed, as for every guarantee here.

    References
    ----------
    Angelopoulos, Bates, Candès, Jordan & Lei, "Learn then Test", 2021. Bates, Angelopoulos, Lei, Malik &
    Jordan, "Distribution-Free, Risk-Controlling Prediction Sets", JACM 2021 (Hoeffding–Bentkus and
    Waudby-Smith–Ramdas bounds). Waudby-Smith & Ramdas, "Estimating means of bounded random variables by
    betting", JRSS-B 2024.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 3, size=(40, 16, 16))
    >>> wrong = rng.random(label.shape) < 0.1
    >>> pred = np.where(wrong, (label + 1) % 3, label)
    >>> u = rng.random(label.shape) + wrong
    >>> res = guaranteed_joint_threshold(
    ...     pred, label, u, num_classes=3, max_dice_loss={"mean": 0.05, "worst": 0.08}
    ... )
    >>> bool(res.bound["mean"] <= 0.05 and res.bound["worst"] <= 0.08), bool(res.coverage > 0.5)
    (True, True)
    """
    d = None if delta is None else check_open_unit(delta, "delta")
    name = check_bound(bound)
    cal = Calibration.of_images(pred, label, uncertainty, num_classes, include_background, xp)
    limits = _check_limits(max_dice_loss, cal.classes)
    return choose_threshold(cal, limits, d, name)


def guaranteed_class_thresholds(
    pred: Any,
    label: Any,
    uncertainty: Any,
    /,
    *,
    num_classes: int,
    max_dice_loss: float | Mapping[int, float],
    delta: float | None = None,
    bound: str = "hoeffding-bentkus",
    include_background: bool = False,
    xp: Namespace | None = None,
) -> ClassThresholds:
    """One referral threshold per structure, each guaranteeing that structure's ``1 - Dice_k after referral``.

    A pooled guarantee on the mean Dice can hide a small structure that fails; here each evaluated class ``k``
    gets its own threshold ``t_k`` (a Mondrian, per-class calibration) and its own guarantee, and referring
    every voxel above ``min_k t_k`` keeps them all at once.

    Parameters
    ----------
    pred, label, uncertainty, num_classes, include_background
        As for [`guaranteed_joint_threshold`][selectivekit.guarantees.guaranteed_joint_threshold].
    max_dice_loss : float or mapping of class to float
        One limit for every class, or a limit per evaluated class (every one must be given).
    delta : float in (0, 1), optional
        ``None``: conformal risk control, ``E[1 - Dice_k] <= limit_k`` for each class. A number: Learn then
        Test for each class at ``delta / number of classes``, so that every class's guarantee holds together
        with probability at least ``1 - delta`` (Bonferroni).
    bound : ``"hoeffding-bentkus"`` or ``"wsr"``
        As for [`guaranteed_joint_threshold`][selectivekit.guarantees.guaranteed_joint_threshold].

    Returns
    -------
    ClassThresholds
        ``per_class[k]`` (a [`JointThreshold`][selectivekit.guarantees.JointThreshold] whose only risk is
        ``k``), and the combined ``threshold = min_k t_k``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 3, size=(40, 16, 16))
    >>> wrong = rng.random(label.shape) < 0.1
    >>> pred = np.where(wrong, (label + 1) % 3, label)
    >>> u = rng.random(label.shape) + wrong
    >>> res = guaranteed_class_thresholds(pred, label, u, num_classes=3, max_dice_loss={1: 0.05, 2: 0.1})
    >>> sorted(res.per_class), res.threshold == min(r.threshold for r in res.per_class.values())
    ([1, 2], True)
    """
    d = None if delta is None else check_open_unit(delta, "delta")
    name = check_bound(bound)
    cal = Calibration.of_images(pred, label, uncertainty, num_classes, include_background, xp)
    if isinstance(max_dice_loss, Mapping):
        limits = _check_limits(max_dice_loss, cal.classes)
        missing = [c for c in cal.classes if c not in limits]
        if missing or any(not isinstance(key, int) for key in limits):
            msg = (
                f"`max_dice_loss` must give a limit for each evaluated class {list(cal.classes)} and only "
                "them."
            )
            raise ValueError(msg)
    else:
        alpha = check_open_unit(max_dice_loss, "max_dice_loss")
        limits = dict.fromkeys(cal.classes, alpha)
    return class_thresholds(cal, limits, d, name)


def class_thresholds(
    cal: Calibration, limits: dict[int, float], delta: float | None, bound: str
) -> ClassThresholds:
    """Each class's threshold at ``delta / K`` (``"ltt"``) and the combined one."""
    per_delta = None if delta is None else delta / len(limits)
    per_class = {c: choose_threshold(cal, {c: alpha}, per_delta, bound) for c, alpha in limits.items()}
    t = min(r.threshold for r in per_class.values())
    return ClassThresholds(
        per_class=per_class,
        threshold=t,
        coverage=cal.coverage(t),
        method="crc" if delta is None else "ltt",
        delta=delta,
        delta_per_class=per_delta,
        n_images=cal.n_images,
    )

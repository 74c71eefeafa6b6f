"""Thresholds with a guaranteed risk: SGR for instances; conformal risk control and Learn then Test for
images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib import (
    as_array,
    check_correct,
    check_mask,
    check_num_classes,
    check_uncertainty,
    flatten,
    get_namespace,
    to_numpy,
)
from ..typing import Namespace
from ._bounds import binomial_upper_bound, hb_p_value, hb_upper_bound
from ._common import check_open_unit
from ._state import per_image


@dataclass(frozen=True)
class RiskThreshold:
    """A selection threshold with a high-probability bound on the selective risk (SGR).

    Attributes
    ----------
    threshold : float
        Accept instances with ``u <= threshold``; ``-inf`` when nothing qualified (everything referred).
    coverage : float
        Share of the calibration instances accepted.
    n_accepted : int
    selective_risk : float
        Empirical error rate of the accepted calibration instances (NaN when nothing is accepted).
    risk_bound : float
        Upper bound on the selective risk that holds with probability at least ``1 - delta``
        (NaN when nothing is accepted).
    target_risk, delta : float
        The requested risk and failure probability.
    n_tests : int
        Number of bounds computed by the binary search; each used ``delta / n_tests``.
    refers_all : bool
        True when no threshold had a bound below ``target_risk``: everything is referred.
    """

    threshold: float
    coverage: float
    n_accepted: int
    selective_risk: float
    risk_bound: float
    target_risk: float
    delta: float
    n_tests: int
    refers_all: bool


@dataclass(frozen=True)
class DiceThreshold:
    """An image-level referral threshold with a guarantee on ``1 - Dice after referral``.

    Attributes
    ----------
    threshold : float
        Accept voxels with ``u <= threshold``, refer the others; ``-inf`` refers everything.
    coverage : float
        Global coverage on the calibration images at this threshold.
    loss : float
        Mean calibration loss ``1 - Dice after referral`` at this threshold (0 when everything is referred).
    bound : float
        ``"crc"``: ``(n loss + 1) / (n + 1)``, the conformal bound on the expected loss of a new image (at
        most ``max_dice_loss``). ``"ltt"``: the Hoeffding–Bentkus upper confidence bound on the expected loss,
        valid with probability ``1 - delta`` (at most ``max_dice_loss``). 0 when everything is referred.
    method : str
        ``"crc"`` (conformal risk control, ``delta=None``) or ``"ltt"`` (Learn then Test).
    max_dice_loss : float
    delta : float or None
    p_value : float or None
        ``"ltt"`` only: the Hoeffding–Bentkus p-value of the hypothesis ``risk > max_dice_loss`` at this
        threshold (at most ``delta``).
    n_images : int
        Calibration images.
    refers_all : bool
        True when no threshold qualified: everything is referred (Dice 1, coverage 0).
    """

    threshold: float
    coverage: float
    loss: float
    bound: float
    method: str
    max_dice_loss: float
    delta: float | None
    p_value: float | None
    n_images: int
    refers_all: bool


def guaranteed_risk_threshold(
    uncertainty: Any,
    correct: Any,
    /,
    *,
    target_risk: float,
    delta: float,
    mask: Any = None,
    xp: Namespace | None = None,
) -> RiskThreshold:
    """Selection with guaranteed risk (SGR): a threshold whose selective risk is at most ``target_risk``
    with probability at least ``1 - delta``.

    Parameters
    ----------
    uncertainty : array of any shape
        Calibration uncertainty, higher = less confident; finite real values.
    correct : bool (or 0/1) array of the same shape
        Whether each calibration prediction is correct.
    target_risk : float in (0, 1)
        The selective risk (error rate among accepted instances) to guarantee.
    delta : float in (0, 1)
        Allowed probability that the guarantee fails.
    mask : bool array, optional
        The calibration instances to use.

    Returns
    -------
    RiskThreshold
        Threshold, calibration coverage, empirical selective risk and the risk bound. When no threshold
        qualifies it refers everything (``threshold=-inf``, ``refers_all=True``); it never raises for that.

    Notes
    -----
    The algorithm of Geifman & El-Yaniv (2017): a binary search over the distinct calibration values of
    ``u`` (tied instances are accepted together). At each of at most ``k = ceil(log2(G + 1))`` steps, with
    ``m`` accepted instances of which ``e`` are wrong, the bound ``b*`` solves
    ``sum_{j <= e} C(m, j) b^j (1 - b)^(m - j) = delta / k``, the exact binomial tail inverted numerically;
    the search moves to more coverage when ``b* < target_risk``. The returned threshold is the largest
    tested one that passed; by the union bound over the ``k`` tests, its selective risk on new instances
    from the same distribution is at most ``b* < target_risk`` with probability at least ``1 - delta``.

    The guarantee needs **exchangeable** calibration and test instances: whole images or patients, or
    classification samples. It does not hold for the voxels of one image (they are dependent), nor under a
    distribution shift between calibration and deployment. It is a statement over calibration sets, not a
    promise for every test batch.

    References
    ----------
    Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = rng.random(5000)
    >>> correct = rng.random(5000) > 0.3 * u
    >>> res = guaranteed_risk_threshold(u, correct, target_risk=0.05, delta=0.1)
    >>> bool(res.risk_bound < 0.05), bool(0.1 < res.coverage < 0.34)
    (True, True)
    """
    r_star = check_open_unit(target_risk, "target_risk")
    d = check_open_unit(delta, "delta")
    uncertainty = as_array(uncertainty, "uncertainty")
    correct = as_array(correct, "correct")
    xp = get_namespace(uncertainty, correct, xp=xp, names=("uncertainty", "correct"))
    check_uncertainty(uncertainty, xp)
    ok = check_correct(correct, uncertainty, xp)
    mask = check_mask(mask, uncertainty, xp)
    u = to_numpy(flatten(uncertainty, xp))
    wrong = ~to_numpy(flatten(ok, xp)).astype(bool)
    if mask is not None:
        keep = to_numpy(flatten(mask, xp)).astype(bool)
        u, wrong = u[keep], wrong[keep]
    order = np.argsort(u, kind="stable")
    s = u[order]
    ends = np.nonzero(np.concatenate([s[1:] != s[:-1], [True]]))[0]
    cum_errors = np.cumsum(wrong[order])[ends]
    n_acc = ends + 1
    thresholds = s[ends]
    n_groups = thresholds.shape[0]
    k = max(1, math.ceil(math.log2(n_groups + 1)))
    step_delta = d / k
    lo, hi, best, best_bound, tests = 0, n_groups - 1, -1, math.nan, 0
    while lo <= hi and tests < k:
        mid = (lo + hi) // 2
        bound = binomial_upper_bound(int(cum_errors[mid]), int(n_acc[mid]), step_delta)
        tests += 1
        if bound < r_star:
            best, best_bound = mid, bound
            lo = mid + 1
        else:
            hi = mid - 1
    n_total = u.shape[0]
    if best < 0:
        return RiskThreshold(
            threshold=-math.inf,
            coverage=0.0,
            n_accepted=0,
            selective_risk=math.nan,
            risk_bound=math.nan,
            target_risk=r_star,
            delta=d,
            n_tests=tests,
            refers_all=True,
        )
    return RiskThreshold(
        threshold=float(thresholds[best]),
        coverage=int(n_acc[best]) / n_total,
        n_accepted=int(n_acc[best]),
        selective_risk=int(cum_errors[best]) / int(n_acc[best]),
        risk_bound=best_bound,
        target_risk=r_star,
        delta=d,
        n_tests=tests,
        refers_all=False,
    )


def guaranteed_dice_threshold(
    pred: Any,
    label: Any,
    uncertainty: Any,
    /,
    *,
    num_classes: int,
    max_dice_loss: float,
    delta: float | None = None,
    include_background: bool = False,
    bound: str = "hoeffding-bentkus",
    xp: Namespace | None = None,
) -> DiceThreshold:
    """Image-level referral threshold with a guarantee on the loss ``1 - Dice after referral``.

    Parameters
    ----------
    pred, label, uncertainty : arrays of shape (n_images, *spatial) or sequences of per-image arrays
        The calibration images, as for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    num_classes, include_background
        As for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    max_dice_loss : float in (0, 1)
        The largest acceptable ``1 - Dice`` of an image after referral (0.05: Dice at least 0.95).
    delta : float in (0, 1), optional
        ``None`` (default): conformal risk control, a guarantee on the expected loss of a new image.
        A number: Learn then Test, a guarantee that holds with probability ``1 - delta``.
    bound : ``"hoeffding-bentkus"`` (default) or ``"wsr"``
        With ``delta``: the p-value and upper bound of Learn then Test. ``"wsr"``, the Waudby-Smith–Ramdas
        betting bound, reads each image's loss in the order given (not only their mean) and is usually
        tighter when the losses vary little; see
        [`guaranteed_joint_threshold`][selectivekit.guarantees.guaranteed_joint_threshold]. Ignored by
        conformal risk control.

    Returns
    -------
    DiceThreshold
        The threshold (accept voxels with ``u <= threshold``), the calibration coverage and loss, the bound,
        and the method. When no threshold qualifies it refers everything (``threshold=-inf``,
        ``refers_all=True``); it never raises for that.

    Notes
    -----
    Referring a voxel never lowers an image's Dice, so the per-image loss ``L_i(t) = 1 - Dice_i(t)`` never
    rises as more is referred (as ``t`` falls). With ``n`` calibration images and ``R(t)`` their mean loss:

    - ``delta=None``, conformal risk control: the largest calibration value ``t`` with
      ``(n R(t) + 1) / (n + 1) <= max_dice_loss``. For a new image exchangeable with the calibration
      images, ``E[L_new(t)] <= max_dice_loss``, the expectation taken over the calibration set and the new
      image. It is a guarantee on average, not for each image, nor for each calibration set.
    - ``delta``, Learn then Test: each threshold is a hypothesis ``E[L(t)] > max_dice_loss``, tested with
      the Hoeffding–Bentkus p-value; fixed-sequence testing starts from the most referral and walks
      towards less referral while the p-value stays at most ``delta``. Then
      ``P(E[L(t)] <= max_dice_loss) >= 1 - delta`` over calibration sets. Because the loss is monotone the
      walk is a bisection, and the data-dependent grid does not break the guarantee: accepting a threshold
      beyond the first one whose risk exceeds the target would require rejecting at that one too.
      With ``bound="wsr"`` the p-value is the Waudby-Smith–Ramdas one; the walk is then a linear scan
      (those p-values need not rise with the loss), and the same argument holds.

    Both need exchangeable **images** (the calibration set drawn like the deployment images); neither says
    anything about one voxel, nor about images from another scanner or population. Referring everything
    (Dice 1) always satisfies them, so a small calibration set yields a cautious threshold, never an error.

    References
    ----------
    Angelopoulos, Bates, Fisch, Lei & Schuster, "Conformal Risk Control", 2022. Angelopoulos, Bates,
    Candès, Jordan & Lei, "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control",
    2021. Bates, Angelopoulos, Lei, Malik & Jordan, "Distribution-Free, Risk-Controlling Prediction Sets",
    JACM 2021 (the Hoeffding–Bentkus bound).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 2, size=(50, 16, 16))
    >>> wrong = rng.random(label.shape) < 0.1
    >>> pred = np.where(wrong, 1 - label, label)
    >>> u = rng.random(label.shape) + wrong
    >>> res = guaranteed_dice_threshold(pred, label, u, num_classes=2, max_dice_loss=0.05)
    >>> res.method, bool(res.bound <= 0.05), bool(res.coverage > 0.5)
    ('crc', True, True)
    """
    from ..segmentation import dice_coverage_curve
    from ._joint import Calibration, check_bound, choose_threshold

    alpha = check_open_unit(max_dice_loss, "max_dice_loss")
    d = None if delta is None else check_open_unit(delta, "delta")
    k = check_num_classes(num_classes, include_background)
    if check_bound(bound) == "wsr" and d is not None:
        cal = Calibration.of_images(pred, label, uncertainty, k, include_background, xp, with_classes=False)
        joint = choose_threshold(cal, {"mean": alpha}, d, "wsr")
        return DiceThreshold(
            threshold=joint.threshold,
            coverage=joint.coverage,
            loss=joint.loss["mean"],
            bound=joint.bound["mean"],
            method="ltt",
            max_dice_loss=alpha,
            delta=d,
            p_value=joint.p_value,
            n_images=joint.n_images,
            refers_all=joint.refers_all,
        )
    if isinstance(pred, (list, tuple)):
        n = len(pred)
    else:
        shape = getattr(pred, "shape", None)
        n = int(shape[0]) if shape is not None and len(shape) >= 2 else -1
    if n == 0:
        msg = "`pred` holds no calibration image; at least one is needed."
        raise ValueError(msg)
    if n < 0:
        # let the segmentation checks name the problem (not an array of images)
        per_image(pred, label, uncertainty)
    curve = dice_coverage_curve(
        pred, label, uncertainty, num_classes=k, include_background=include_background, xp=xp
    )
    loss = 1.0 - to_numpy(curve.mean_dice).astype(np.float64)
    loss = np.maximum.accumulate(np.maximum(loss, 0.0))  # monotone in t (removes float noise)
    coverage = to_numpy(curve.coverage).astype(np.float64)
    threshold = to_numpy(curve.threshold)
    method = "crc" if d is None else "ltt"

    def refer_all() -> DiceThreshold:
        return DiceThreshold(
            threshold=-math.inf,
            coverage=0.0,
            loss=0.0,
            bound=0.0,
            method=method,
            max_dice_loss=alpha,
            delta=d,
            p_value=None if d is None else 0.0,
            n_images=n,
            refers_all=True,
        )

    if d is None:
        ok = (n * loss + 1.0) / (n + 1.0) <= alpha
        count = int(np.searchsorted(~ok, True, side="left"))  # ``ok`` is a prefix: loss is monotone
        if count == 0:
            return refer_all()
        g = count - 1
        return DiceThreshold(
            threshold=float(threshold[g]),
            coverage=float(coverage[g]),
            loss=float(loss[g]),
            bound=(n * float(loss[g]) + 1.0) / (n + 1.0),
            method=method,
            max_dice_loss=alpha,
            delta=None,
            p_value=None,
            n_images=n,
            refers_all=False,
        )
    # Learn then Test: fixed-sequence from the most referral; the p-value rises with the loss, so the
    # sequence of rejections is a prefix found by bisection.
    lo, hi = 0, loss.shape[0]  # count of rejected hypotheses lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if hb_p_value(float(loss[mid - 1]), alpha, n) <= d:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return refer_all()
    g = lo - 1
    return DiceThreshold(
        threshold=float(threshold[g]),
        coverage=float(coverage[g]),
        loss=float(loss[g]),
        bound=hb_upper_bound(float(loss[g]), n, d),
        method=method,
        max_dice_loss=alpha,
        delta=d,
        p_value=hb_p_value(float(loss[g]), alpha, n),
        n_images=n,
        refers_all=False,
    )

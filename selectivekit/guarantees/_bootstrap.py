"""Bootstrap confidence intervals: the resampled statistics, and SciPy's intervals from their distribution."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._lib import (
    as_array,
    check_correct,
    check_coverages,
    check_mask,
    check_num_classes,
    check_positive_int,
    check_risk,
    check_uncertainty,
    flatten,
    get_namespace,
    to_numpy,
)
from ..risk_coverage import aurc_optimal
from ..typing import Namespace
from ._common import check_method, check_open_unit, generator, generator_keyword, load_scipy, multiplicities
from ._state import ImageState, image_state

INSTANCE_METRICS = ("aurc", "e_aurc", "augrc")
SEGMENTATION_METRICS = ("aurc_dice", "dice_at_coverage")


@dataclass(frozen=True)
class ConfidenceInterval:
    """A bootstrap confidence interval for one statistic.

    Attributes
    ----------
    estimate : float
        The statistic on the data as given (not resampled).
    low, high : float
        The interval; it covers the population value with probability ``confidence`` over repeated
        samples, approximately (the bootstrap is an approximation, better with more units).
    standard_error : float
        Standard deviation (``ddof=1``) of the bootstrap distribution.
    confidence : float
        The confidence level, e.g. 0.95.
    method : str
        ``"BCa"``, ``"percentile"`` or ``"basic"``: the method actually used (BCa falls back to the
        percentile interval where its acceleration is undefined, e.g. when every jackknife value is equal).
    """

    estimate: float
    low: float
    high: float
    standard_error: float
    confidence: float
    method: str


@dataclass(frozen=True, eq=False)  # holds arrays: compare ``intervals`` and ``distribution`` instead
class BootstrapResult:
    """Bootstrap intervals of one or several statistics computed from the same resamples.

    Attributes
    ----------
    intervals : dict of str to ConfidenceInterval
        One entry per statistic: ``"aurc"``, ``"e_aurc"``, ``"augrc"``, ``"aurc_dice"``, and for
        ``dice_at_coverage`` ``"mean@c"`` and ``"p5@c"`` for each requested coverage ``c`` (e.g.
        ``"mean@0.9"``).
    distribution : dict of str to ndarray of shape (n_resamples,)
        The bootstrap distribution of each statistic (NumPy, float64).
    n_units : int
        Number of resampled units (images, instances or groups).
    unit : str
        ``"image"``, ``"instance"`` or ``"group"``.
    n_resamples : int
    confidence : float
    """

    intervals: dict[str, ConfidenceInterval]
    distribution: dict[str, Any]
    n_units: int
    unit: str
    n_resamples: int
    confidence: float

    def __getitem__(self, name: str) -> ConfidenceInterval:
        return self.intervals[name]


def _chunks(n_total: int, size: int) -> list[slice]:
    size = max(1, size)
    return [slice(k, min(k + size, n_total)) for k in range(0, n_total, size)]


# ----------------------------------------------------------------------------------------------------
# per-instance state for aurc, e_aurc, augrc


@dataclass
class _InstanceState:
    """Instances sorted once by ``u``; ``unit`` maps each sorted instance to its resampling unit."""

    unit: np.ndarray  # (N,) unit of each instance, in increasing u
    risk: np.ndarray  # (N,) instance risk in the same order
    ends: np.ndarray  # last position of each distinct u
    is_bool: bool
    n_units: int
    risk_order: np.ndarray  # instances in increasing risk (for the optimal ranking of soft risks)

    def stats(self, w: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """The statistics ``names`` for each row of unit weights ``w`` (shape (B, n_units)): the weighted tie
        groups of each row through the one area formula."""
        from .._lib.tie_groups import area_terms, excess_aurc

        out = np.empty((len(names), w.shape[0]))
        n_inst = self.unit.shape[0]
        for sl in _chunks(w.shape[0], max(1, 4_000_000 // max(n_inst, 1))):
            wi = w[sl][:, self.unit]  # (b, N) weight of every instance
            cum_n = np.cumsum(wi, axis=1)[:, self.ends]
            cum_e = np.cumsum(wi * self.risk, axis=1)[:, self.ends]
            n_tot = cum_n[:, -1:]
            zero = np.zeros_like(n_tot)
            n_prev = np.concatenate([zero, cum_n[:, :-1]], axis=1)
            e_prev = np.concatenate([zero, cum_e[:, :-1]], axis=1)
            areas = {}
            for generalized in {name == "augrc" for name in names}:
                with np.errstate(invalid="ignore", divide="ignore"):
                    terms = area_terms(n_prev, cum_n, e_prev, cum_e, n_tot, generalized, "step", np)
                # groups before the first resampled instance hold nothing: 0, not 0 / 0
                areas[generalized] = np.sum(np.where(cum_n > 0, terms, 0.0), axis=1)
            for r, name in enumerate(names):
                value = areas[name == "augrc"]
                if name == "e_aurc":
                    value = excess_aurc(value, self._optimal(w[sl], wi, cum_e[:, -1], n_tot[:, 0]))
                out[r, sl] = value
        return out

    def _optimal(self, w: np.ndarray, wi: np.ndarray, errors: np.ndarray, n_tot: np.ndarray) -> np.ndarray:
        from .._lib.tie_groups import soft_optimal_aurc

        if self.is_bool:
            pairs = np.stack([np.rint(n_tot), np.rint(errors)], axis=1).astype(np.int64)
            uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
            values = np.array([aurc_optimal(int(n), int(e)) for n, e in uniq])
            return values[inverse.reshape(-1)]
        # soft risk: the best ranking accepts the lowest-risk instances first
        risks = self.risk[self.risk_order]
        res = np.empty(w.shape[0])
        for b in range(w.shape[0]):
            res[b] = soft_optimal_aurc(np.repeat(risks, wi[b][self.risk_order].astype(np.int64)), np)
        return res


def _instance_state(
    uncertainty: Any, correct: Any, risk: Any, groups: Any, mask: Any, xp: Namespace | None
) -> tuple[_InstanceState, str]:
    uncertainty = as_array(uncertainty, "uncertainty")
    if (correct is None) == (risk is None):
        msg = "pass exactly one of `correct` (bool per instance) or `risk` (per-instance, in [0, 1])."
        raise TypeError(msg)
    other = as_array(correct if risk is None else risk, "correct" if risk is None else "risk")
    names = ("uncertainty", "correct" if risk is None else "risk")
    xp = get_namespace(uncertainty, other, xp=xp, names=names)
    check_uncertainty(uncertainty, xp)
    inst = ~check_correct(other, uncertainty, xp) if risk is None else check_risk(other, uncertainty, xp)
    mask = check_mask(mask, uncertainty, xp)
    u = to_numpy(flatten(uncertainty, xp))
    r = to_numpy(flatten(inst, xp)).astype(np.float64)
    keep = None if mask is None else to_numpy(flatten(mask, xp))
    if groups is not None:
        g = to_numpy(as_array(groups, "groups"))
        if g.shape != tuple(uncertainty.shape):
            msg = (
                f"`groups` must have the same shape as `uncertainty` {tuple(uncertainty.shape)}, "
                f"got {g.shape}."
            )
            raise ValueError(msg)
        if g.dtype == np.bool_ or not np.issubdtype(g.dtype, np.integer):
            msg = f"`groups` must hold integer group ids, got dtype {g.dtype}."
            raise TypeError(msg)
        g = g.reshape(-1)
    if keep is not None:
        u, r = u[keep], r[keep]
        g = g[keep] if groups is not None else None
    if groups is None:
        unit = np.arange(u.shape[0])
        n_units, kind = u.shape[0], "instance"
    else:
        _, unit = np.unique(g, return_inverse=True)
        unit = unit.reshape(-1)
        n_units, kind = int(unit.max()) + 1, "group"
    from .._lib.tie_groups import tie_group_ends

    order = np.argsort(u, kind="stable")
    ends = tie_group_ends(u[order], np)
    state = _InstanceState(
        unit=unit[order],
        risk=r[order],
        ends=ends,
        is_bool=risk is None,
        n_units=n_units,
        risk_order=np.argsort(r[order], kind="stable"),
    )
    return state, kind


# ----------------------------------------------------------------------------------------------------
# intervals (SciPy)

# Resamples per call of a statistic: bounds the (B, n_units) weights and the (B, n_items) Dice table.
_RESAMPLES_PER_CALL = 500


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    n_resamples: int,
    rng: np.random.Generator,
    confidence: float,
    method: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Estimates, interval ends, standard errors, methods used and the distribution (k, n_resamples).

    ``statistic(indices)`` maps resampled unit indices (shape (B, m)) to the statistics (shape (k, B)).
    ``scipy.stats.bootstrap`` is called as documented: its one sample is the unit indices ``0, ..., n - 1``
    (as floats), which it resamples, and the vectorized statistic reads the drawn indices back. SciPy draws
    resample ``r`` as ``rng.integers(0, n, (n_resamples, n))[r]``, the draw that `bootstrap_ci` documents
    (the tests rebuild each resample from it); the BCa acceleration comes from its jackknife, through the
    same statistic.
    """
    # SciPy's public API only: no object imitating its results. Computing the percentile and BCa intervals
    # ourselves from our own draw would avoid depending on SciPy's draw, but would restate what SciPy keeps
    # tested; the brute-force tests pin the draw instead. SciPy draws one array of shape (n_resamples, n)
    # (no `batch`, which would draw batch by batch), and the statistic evaluates it in slices of
    # _RESAMPLES_PER_CALL rows. Peak memory: SciPy's index array and the float copy of the resamples, both
    # (n_resamples, n).
    scipy = load_scipy()
    estimate = statistic(np.arange(n_units)[None, :])[:, 0]

    def vectorized(sample: Any, axis: int = -1) -> np.ndarray:
        drawn = np.asarray(sample)
        lead = drawn.shape[:-1]
        rows = drawn.reshape(-1, drawn.shape[-1])
        values = np.concatenate(
            [statistic(rows[sl].astype(np.int64)) for sl in _chunks(rows.shape[0], _RESAMPLES_PER_CALL)],
            axis=1,
        )
        return values.reshape((values.shape[0], *lead))

    def run(m: str, previous: Any = None) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate rows are handled below
            with np.errstate(all="ignore"):
                return scipy.stats.bootstrap(
                    (np.arange(n_units, dtype=np.float64),),
                    vectorized,
                    vectorized=True,
                    n_resamples=n_resamples if previous is None else 0,
                    bootstrap_result=previous,  # documented: reuse a distribution, e.g. for another method
                    confidence_level=confidence,
                    method=m,
                    **generator_keyword(scipy.stats.bootstrap, rng),
                )

    def ends(result: Any) -> tuple[np.ndarray, np.ndarray]:
        ci = result.confidence_interval
        return np.atleast_1d(np.asarray(ci.low, dtype=np.float64)), np.atleast_1d(
            np.asarray(ci.high, dtype=np.float64)
        )

    result = run(method)
    dist = np.asarray(result.bootstrap_distribution, dtype=np.float64).reshape(-1, n_resamples)
    low, high = ends(result)
    used = [method] * dist.shape[0]
    flat = np.ptp(dist, axis=1) == 0
    bad = ~(np.isfinite(low) & np.isfinite(high))
    if np.any(bad & ~flat):
        plow, phigh = ends(run("percentile", result))
        for r in np.nonzero(bad & ~flat)[0]:
            low[r], high[r], used[r] = plow[r], phigh[r], "percentile"
    for r in np.nonzero(flat)[0]:
        low[r] = high[r] = dist[r, 0]
    se = np.std(dist, axis=1, ddof=1) if dist.shape[1] > 1 else np.zeros(dist.shape[0])
    return estimate, low, high, se, used, dist


# ----------------------------------------------------------------------------------------------------
# public API


def _metric_names(metric: Any) -> list[str]:
    items = [metric] if isinstance(metric, str) or callable(metric) else list(metric)
    if not items:
        msg = "`metric` must name at least one metric."
        raise ValueError(msg)
    names = []
    for item in items:
        name = item.__name__ if callable(item) else item
        if name not in INSTANCE_METRICS + SEGMENTATION_METRICS:
            options = ", ".join(f'"{c}"' for c in INSTANCE_METRICS + SEGMENTATION_METRICS)
            msg = f"`metric` must be one of {options} (or the function itself), got {item!r}."
            raise ValueError(msg)
        names.append(name)
    kinds = {n in SEGMENTATION_METRICS for n in names}
    if len(kinds) > 1:
        msg = f"`metric` mixes instance and segmentation metrics: {names}; give one kind per call."
        raise ValueError(msg)
    return list(dict.fromkeys(names))


def coverage_key(stat: str, c: float) -> str:
    """The name of a statistic at a coverage: ``"mean@0.9"``."""
    return f"{stat}@{c:g}"


def _segmentation_statistic(
    state: ImageState, names: Sequence[str], cs: Sequence[float]
) -> tuple[list[str], Callable[[np.ndarray], np.ndarray]]:
    keys: list[str] = []
    if "aurc_dice" in names:
        keys.append("aurc_dice")
    for c in cs:
        keys += [coverage_key("mean", c), coverage_key("p5", c)]
    n_units = state.n_items

    def statistic(indices: np.ndarray) -> np.ndarray:
        weights = multiplicities(indices, n_units)
        rows = []
        if "aurc_dice" in names:
            rows.append(state.aurc_dice(weights))
        for c in cs:
            rows.extend(state.dice_at(weights, indices, c))
        return np.stack(rows)

    return keys, statistic


def _run_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    keys: Sequence[str],
    n_units: int,
    unit: str,
    conf: float,
    method: str,
    n_resamples: int,
    rng: np.random.Generator,
) -> BootstrapResult:
    if n_units < 2:
        source = {"image": "pred", "group": "groups"}.get(unit, "uncertainty")
        msg = f"a bootstrap interval needs at least 2 {unit}s to resample (in `{source}`), got {n_units}."
        raise ValueError(msg)
    estimate, low, high, se, used, dist = bootstrap_intervals(
        statistic, n_units, n_resamples, rng, conf, method
    )
    intervals = {
        key: ConfidenceInterval(
            estimate=float(estimate[r]),
            low=float(low[r]),
            high=float(high[r]),
            standard_error=float(se[r]),
            confidence=conf,
            method=used[r],
        )
        for r, key in enumerate(keys)
    }
    return BootstrapResult(
        intervals=intervals,
        distribution={key: dist[r] for r, key in enumerate(keys)},
        n_units=n_units,
        unit=unit,
        n_resamples=n_resamples,
        confidence=conf,
    )


def bootstrap_state(
    state: ImageState,
    /,
    *,
    coverages: Sequence[float] = (),
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 2000,
    seed: Any = None,
) -> BootstrapResult:
    """[`bootstrap_ci`][selectivekit.bootstrap_ci] of ``aurc_dice`` and ``dice_at_coverage`` from an
    [`ImageState`][selectivekit.guarantees.ImageState].

    The same resamples and results as ``bootstrap_ci(["aurc_dice", "dice_at_coverage"], ...)`` on the images
    the state was built from; used by the command line, which builds the state image by image.
    """
    conf = check_open_unit(confidence, "confidence")
    cs = list(dict.fromkeys(check_coverages(coverages))) if len(coverages) else []
    names = ["aurc_dice", *(["dice_at_coverage"] if cs else [])]
    keys, statistic = _segmentation_statistic(state, names, cs)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    return _run_bootstrap(
        statistic, keys, state.n_items, "image", conf, check_method(method), n_resamples, generator(seed)
    )


def bootstrap_ci(
    metric: Any,
    /,
    *arrays: Any,
    risk: Any = None,
    groups: Any = None,
    mask: Any = None,
    num_classes: int | None = None,
    coverages: Any = None,
    include_background: bool = False,
    confidence: float = 0.95,
    method: str = "BCa",
    n_resamples: int = 2000,
    seed: Any = None,
    xp: Namespace | None = None,
) -> BootstrapResult:
    """Bootstrap confidence intervals for selective-prediction metrics.

    Parameters
    ----------
    metric : str, function, or a sequence of them
        ``"aurc"``, ``"e_aurc"``, ``"augrc"`` (instance metrics: ``arrays`` are ``uncertainty, correct``,
        or ``uncertainty`` with ``risk=``), or ``"aurc_dice"``, ``"dice_at_coverage"`` (segmentation:
        ``arrays`` are ``pred, label, uncertainty`` as for
        [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage]). The
        functions themselves (``sk.aurc``, ...) are accepted too. Several metrics of one kind share the
        resamples.
    *arrays
        The metric's arrays (see above).
    risk : array, optional
        Per-instance loss in [0, 1] instead of ``correct`` (instance metrics).
    groups : integer array like ``uncertainty``, optional
        Instance metrics only: resample these groups (e.g. the image or patient of each voxel) instead of
        single instances. Voxels of one image are not independent; resample their images.
    mask : bool array, optional
        Instance metrics only: the instances to evaluate.
    num_classes, include_background
        Segmentation metrics: as for [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage].
    coverages : float or sequence of float in (0, 1]
        Required for ``"dice_at_coverage"``: intervals for the mean and the 5th percentile of the image
        Dice at each coverage.
    confidence : float in (0, 1), default 0.95
    method : {"BCa", "percentile", "basic"}, default "BCa"
    n_resamples : int, default 2000
    seed : int, numpy Generator or None
        Resample ``r`` draws the units ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))[r]``.

    Returns
    -------
    BootstrapResult
        ``intervals`` by name (``"aurc"``, ..., ``"aurc_dice"``, ``"mean@0.9"``, ``"p5@0.9"``) and the
        bootstrap ``distribution`` of each.

    Notes
    -----
    Segmentation metrics resample **images**: each resample draws ``n_images`` images with replacement,
    and the global threshold of every requested coverage is chosen again on the resampled set, exactly as
    [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage] and
    [`selectivekit.aurc_dice`][selectivekit.aurc_dice] would on that set (a drawn
    image counts as many times as it is drawn). Per-image state is computed once, so a resample costs a
    weighted sum and a bisection, not a sort. The inputs may live in any array library and on any device:
    the per-image step functions are computed there, then copied to the host, where the resamples run in
    NumPy (they are small: about one number per distinct value of ``u``).

    Intervals come from ``scipy.stats.bootstrap`` applied to this distribution: BCa (Efron's bias-corrected
    and accelerated interval, the default) is second-order accurate; where its acceleration is undefined
    the percentile interval is used and ``ConfidenceInterval.method`` says so. A statistic whose bootstrap
    distribution is a single value gets the interval ``[value, value]``.

    References
    ----------
    Efron, "Better Bootstrap Confidence Intervals", JASA 82 (1987). Efron & Tibshirani, "An Introduction to
    the Bootstrap", 1993.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> u = rng.random(500)
    >>> correct = rng.random(500) > u * 0.5
    >>> res = bootstrap_ci("aurc", u, correct, n_resamples=500, seed=0)
    >>> ci = res["aurc"]
    >>> bool(ci.low < ci.estimate < ci.high)
    True
    """
    names = _metric_names(metric)
    conf = check_open_unit(confidence, "confidence")
    method = check_method(method)
    n_resamples = check_positive_int(n_resamples, "n_resamples")
    rng = generator(seed)
    if names[0] in SEGMENTATION_METRICS:
        if len(arrays) != 3:
            msg = (
                f"`{names[0]}` needs the arrays `pred, label, uncertainty`; got {len(arrays)} positional "
                "array(s)."
            )
            raise TypeError(msg)
        for name, value in (("risk", risk), ("groups", groups), ("mask", mask)):
            if value is not None:
                msg = f"`{name}` applies to the instance metrics only; segmentation resamples whole images."
                raise TypeError(msg)
        if num_classes is None:
            msg = "`num_classes` is required for the segmentation metrics."
            raise TypeError(msg)
        k = check_num_classes(num_classes, include_background)
        cs: list[float] = []
        if "dice_at_coverage" in names:
            if coverages is None:
                msg = "`coverages` is required for `dice_at_coverage`."
                raise TypeError(msg)
            cs = list(dict.fromkeys(check_coverages(coverages)))
        state = image_state(*arrays, k, bool(include_background), xp, "pred")
        n_units = state.n_items
        keys, statistic = _segmentation_statistic(state, names, cs)
        unit = "image"
    else:
        if len(arrays) not in (1, 2):
            msg = (
                f"`{names[0]}` needs the arrays `uncertainty, correct` (or `uncertainty` with `risk=`); got "
                f"{len(arrays)} positional array(s)."
            )
            raise TypeError(msg)
        if num_classes is not None or coverages is not None:
            msg = "`num_classes` and `coverages` apply to the segmentation metrics only."
            raise TypeError(msg)
        correct = arrays[1] if len(arrays) == 2 else None
        inst, unit = _instance_state(arrays[0], correct, risk, groups, mask, xp)
        n_units = inst.n_units
        keys = names

        def statistic(indices: np.ndarray) -> np.ndarray:
            return inst.stats(multiplicities(indices, n_units), names)

    return _run_bootstrap(statistic, keys, n_units, unit, conf, method, n_resamples, rng)

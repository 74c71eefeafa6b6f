"""Figures of the paper from result objects: risk-coverage curves, Dice-coverage curves (Figure 3),
per-image coverage/Dice differences (Figure 2) and per-image Dice histograms.

Every function takes results and returns a new `matplotlib.figure.Figure` built without pyplot, so
nothing is registered globally (no open-figure bookkeeping, no backend switch). Save it with
``fig.savefig("name.png")``; show it in a notebook by leaving it as the cell's value.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._lib import to_numpy
from .calibration import CalibrationBins
from .risk_coverage import RiskCoverageCurve
from .segmentation.results import DiceCoverageCurve, PerImageComparison

__all__ = [
    "plot_budget",
    "plot_dice_coverage",
    "plot_dice_histogram",
    "plot_per_image_comparison",
    "plot_reliability",
    "plot_risk_coverage",
]


def _named(
    curves: Any, kind: type | tuple[type, ...], what: str, argument: str = "curves"
) -> list[tuple[str, Any]]:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    kind_name = " or ".join(k.__name__ for k in kinds)
    if isinstance(curves, kinds):
        curves = {"": curves}
    if isinstance(curves, Mapping):
        items = list(curves.items())
    elif isinstance(curves, Sequence) and not isinstance(curves, str):
        items = [(f"{what} {i + 1}", c) for i, c in enumerate(curves)]
    else:
        msg = (
            f"`{argument}` must be a {kind_name}, a mapping of names to them or a sequence, "
            f"got {type(curves).__name__}."
        )
        raise TypeError(msg)
    if not items:
        msg = f"`{argument}` is empty; at least one curve is needed."
        raise ValueError(msg)
    for name, c in items:
        if not isinstance(c, kinds):
            msg = f"`curves[{name!r}]` must be a {kind_name}, got {type(c).__name__}."
            raise TypeError(msg)
    return [(str(n), c) for n, c in items]


def _thin_index(x: np.ndarray, max_points: int) -> np.ndarray | slice:
    """Which of the increasing ``x`` to draw: at most ``max_points`` points, evenly spaced in coverage,
    keeping the first and last points."""
    if x.size <= max_points:
        return slice(None)
    targets = np.linspace(x[0], x[-1], max_points)
    return np.unique(
        np.concatenate([[0], np.searchsorted(x, targets, side="left").clip(0, x.size - 1), [x.size - 1]])
    )


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    idx = _thin_index(x, max_points)
    return x[idx], y[idx]


_BLOCK = 1 << 16  # curves of tens of millions of points are read in blocks: no temporary of their size


def _risk(curve: RiskCoverageCurve | DiceCoverageCurve, where: slice | np.ndarray) -> np.ndarray:
    """The risk of ``curve`` at ``where``, as float64 (``1 - mean Dice`` for a Dice curve)."""
    if isinstance(curve, DiceCoverageCurve):
        return 1.0 - to_numpy(curve.mean_dice)[where].astype(np.float64)
    return to_numpy(curve.risk)[where].astype(np.float64)


def _largest_risk(curve: RiskCoverageCurve | DiceCoverageCurve, where: slice) -> float:
    """The largest risk of ``curve`` in ``where`` (in the curve's dtype: no float64 copy of the window)."""
    if isinstance(curve, DiceCoverageCurve):
        return 1.0 - float(to_numpy(curve.mean_dice)[where].min())
    return float(to_numpy(curve.risk)[where].max())


def _step_area(curve: RiskCoverageCurve | DiceCoverageCurve, coverage: np.ndarray) -> float:
    """The right-endpoint step rule ``sum_g (c_g - c_{g-1}) r_g`` over the whole curve, in float64."""
    total, previous = 0.0, 0.0
    for start in range(0, coverage.shape[0], _BLOCK):
        block = coverage[start : start + _BLOCK].astype(np.float64)
        widths = np.diff(block, prepend=previous)
        total += float(np.dot(widths, _risk(curve, slice(start, start + _BLOCK))))
        previous = float(block[-1])
    return total


def _increasing_pair(pair: Any, what: str, *, within_unit: bool) -> tuple[float, float]:
    """``pair`` as two floats ``lo < hi`` (inside [0, 1] for a coverage range), checked."""
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError) as exc:
        msg = f"`{what}` must be a pair of numbers (low, high), got {pair!r}."
        raise TypeError(msg) from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi) or (within_unit and not 0.0 <= lo < hi <= 1.0):
        where = " inside [0, 1]" if within_unit else ""
        msg = f"`{what}` must be an increasing pair{where}, got ({lo:g}, {hi:g})."
        raise ValueError(msg)
    return lo, hi


def _new_figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _in_percent(axis: Any) -> None:
    """Tick labels of a Dice (or risk) axis in percent, as in every table of the reports: 0.85 -> 85.

    The data stay in [0, 1] (limits and arguments such as `ylim` keep their unit); only the labels change,
    and the axis label says "(%)".
    """
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _: Any) -> str:
        # round away the float noise of 100 * 0.07, print the shortest form (85, 2.5, −4) with the minus
        # sign matplotlib puts on the other axes
        return f"{round(100.0 * value, 6) + 0.0:g}".replace("-", "\N{MINUS SIGN}")

    axis.set_major_formatter(FuncFormatter(label))


def plot_risk_coverage(
    curves: RiskCoverageCurve
    | DiceCoverageCurve
    | Mapping[str, RiskCoverageCurve | DiceCoverageCurve]
    | Sequence[RiskCoverageCurve | DiceCoverageCurve],
    /,
    *,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    coverage_range: tuple[float, float] = (0.0, 1.0),
    fit_from: float = 0.05,
    show_aurc: bool = True,
    max_points: int = 4000,
    figsize: tuple[float, float] = (5.0, 4.0),
) -> Any:
    """Risk-coverage curves of one or several models (selective risk against coverage; lower is better).

    A [`DiceCoverageCurve`][selectivekit.DiceCoverageCurve] is drawn with risk ``1 - mean Dice`` (what
    [`selectivekit.segmentation.aurc_dice`][selectivekit.aurc_dice] integrates); when every curve is one, the
    y axis says so.

    Parameters
    ----------
    curves : RiskCoverageCurve or DiceCoverageCurve, a mapping of name to them, or a sequence of them
        E.g. ``{"baseline": sk.risk_coverage_curve(u0, ok0), "ours": sk.risk_coverage_curve(u1, ok1)}``,
        or Dice-coverage curves from [`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve].
    title : str, optional
        Axes title.
    ylim : (float, float), optional
        Limits of the y axis, as risks in [0, 1] (the tick labels show them in percent). Default: from 0
        to just above the largest risk drawn at coverage ``>= fit_from`` inside `coverage_range`.
    coverage_range : (float, float), default (0.0, 1.0)
        Limits of the x axis, e.g. ``(0.5, 1.0)`` to zoom on the coverages a clinic would use.
    fit_from : float, default 0.05
        The default y limit ignores the points below this coverage: the first operating points average
        over a handful of the most confident instances, so one error there gives a risk near 1 that would
        squash the rest of the curve. Those points are still drawn (cut off by the axis). 0 fits them all.
    show_aurc : bool, default True
        Put each curve's area (AURC, in percent like the y axis; ``1 - mean Dice`` integrated for a Dice
        curve) in the legend.
        The area is computed from the full curve, not from the thinned or zoomed drawing.
    max_points : int, default 4000
        Curves with more points are thinned for drawing (evenly in coverage); the data are not changed.
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        If `curves` is not a curve, a mapping or a sequence of curves.
    ValueError
        If `curves` is empty, or `coverage_range`, `ylim` or `fit_from` is not an increasing pair or a
        coverage in [0, 1].

    Examples
    --------
    >>> import numpy as np, selectivekit as sk
    >>> u, ok = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 1])
    >>> fig = plot_risk_coverage({"model": sk.risk_coverage_curve(u, ok)})
    >>> fig.axes[0].get_xlabel()
    'coverage'
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['model (AURC 14.583%)']
    >>> from selectivekit.segmentation import DiceCoverageCurve
    >>> dice = DiceCoverageCurve(np.array([0.5, 1.0]), np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    >>> plot_risk_coverage(dice).axes[0].get_ylabel()
    'risk = 1 - mean Dice (%)'
    """
    named = _named(curves, (RiskCoverageCurve, DiceCoverageCurve), "model")
    lo, hi = _increasing_pair(coverage_range, "coverage_range", within_unit=True)
    if ylim is not None:
        ylim = _increasing_pair(ylim, "ylim", within_unit=False)
    if not 0.0 <= float(fit_from) <= 1.0:
        msg = f"`fit_from` must be a coverage in [0, 1], got {fit_from}."
        raise ValueError(msg)
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    top = 0.0
    for name, c in named:
        coverage = to_numpy(c.coverage)
        label = name or None
        if show_aurc:
            # the right-endpoint step rule of aurc/aurc_dice, on the full curve
            area = _step_area(c, coverage)
            label = f"{name} (AURC {100 * area:.3f}%)" if name else f"AURC {100 * area:.3f}%"
        # the points at coverage >= max(lo, fit_from) whose step starts inside the window: a step drawn at
        # coverage c_g starts at c_{g-1} (c_0 = 0), so the point after the window's end is visible too
        first = int(np.searchsorted(coverage, max(lo, float(fit_from)), side="left"))
        end = int(np.searchsorted(coverage, hi, side="right")) + 1
        if first < min(end, coverage.shape[0]):
            top = max(top, _largest_risk(c, slice(first, end)))
        where = _thin_index(coverage, max_points)
        ax.plot(coverage[where].astype(np.float64), _risk(c, where), drawstyle="steps-pre", label=label)
    ax.set_xlabel("coverage")
    all_dice = all(isinstance(c, DiceCoverageCurve) for _, c in named)
    ax.set_ylabel("risk = 1 - mean Dice (%)" if all_dice else "selective risk (%)")
    _in_percent(ax.yaxis)  # like the AURC in the legend and the reports' tables
    ax.set_xlim(lo, hi)
    ax.set_ylim(ylim if ylim is not None else (0.0, 1.08 * top if top > 0 else 1.0))
    ax.grid(alpha=0.3)
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend()
    if title:
        ax.set_title(title)
    return fig


def plot_dice_coverage(
    curves: DiceCoverageCurve | Mapping[str, DiceCoverageCurve] | Sequence[DiceCoverageCurve],
    /,
    *,
    min_coverage: float = 0.0,
    title: str | None = None,
    max_points: int = 4000,
    figsize: tuple[float, float] = (5.0, 4.0),
) -> Any:
    """Dice-coverage curves (the paper's Figure 3): mean Dice after referral against global coverage.

    The Dice axis is labelled in percent, like the reports' tables.

    Parameters
    ----------
    curves : DiceCoverageCurve, mapping of name to DiceCoverageCurve, or sequence of them
        E.g. from [`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve] or a streaming
        accumulator's ``compute()``.
    min_coverage : float, default 0.0
        Left end of the x axis (the paper starts where the curves stop converging, e.g. 0.5).
    title : str, optional
        Axes title.
    max_points : int, default 4000
        Curves with more points are thinned for drawing.
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from selectivekit.segmentation import dice_coverage_curve
    >>> pred, label = np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 1]])
    >>> curve = dice_coverage_curve(pred, label, np.array([[0.1, 0.9, 0.2, 0.3]]), num_classes=2)
    >>> fig = plot_dice_coverage({"model": curve})
    >>> fig.axes[0].get_ylabel()
    'mean Dice (%)'
    """
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    low = 1.0
    for name, c in _named(curves, DiceCoverageCurve, "model"):
        cov, dice = to_numpy(c.coverage), to_numpy(c.mean_dice)
        keep = cov >= min_coverage
        if keep.any():
            low = min(low, float(dice[keep].min()))
        x, y = _thin(cov, dice, max_points)
        ax.plot(x, y, drawstyle="steps-pre", label=name or None)
    ax.set_xlabel("coverage")
    ax.set_ylabel("mean Dice (%)")
    _in_percent(ax.yaxis)
    ax.set_xlim(min_coverage, 1.0)
    ax.set_ylim(max(0.0, low - 0.02 * (1.0 - low) - 1e-3), 1.0 + 0.02 * (1.0 - low) + 1e-3)
    ax.grid(alpha=0.3)
    if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    return fig


def _is_array_like(x: Any) -> bool:
    """Whether ``x`` is one run of values (an array with a dimension or a sequence), not a single number."""
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        return int(ndim) > 0
    return isinstance(x, Sequence) and not isinstance(x, (str, bytes))


def _dice_runs(per_image_dice: Any, labels: Sequence[str] | None) -> list[tuple[str | None, np.ndarray]]:
    """``per_image_dice`` as (label, float64 values) pairs, checked."""
    if isinstance(per_image_dice, Mapping):
        if labels is not None:
            msg = "`labels` must be None when `per_image_dice` is a mapping (its keys are the labels)."
            raise ValueError(msg)
        names: list[str | None] = [str(k) for k in per_image_dice]
        runs = list(per_image_dice.values())
    elif isinstance(per_image_dice, (str, bytes)) or per_image_dice is None:
        msg = (
            "`per_image_dice` must be an array of per-image Dice values, a sequence of them or a mapping of "
            f"labels to them, got {type(per_image_dice).__name__}."
        )
        raise TypeError(msg)
    elif (
        isinstance(per_image_dice, Sequence)
        and len(per_image_dice) > 0
        and all(_is_array_like(r) for r in per_image_dice)
    ):
        runs = list(per_image_dice)  # several runs (their lengths may differ)
        names = [None] * len(runs)
    else:
        runs = [per_image_dice]
        names = [None]
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            msg = f"`labels` must be a sequence of str, got {type(labels).__name__}."
            raise TypeError(msg)
        if len(labels) != len(runs):
            msg = f"`labels` must hold {len(runs)} labels (one per run), got {len(labels)}."
            raise ValueError(msg)
        names = [str(n) for n in labels]
    if not runs:
        msg = "`per_image_dice` is empty; at least one run is needed."
        raise ValueError(msg)
    out = []
    for i, (name, run) in enumerate(zip(names, runs, strict=True)):
        where = "`per_image_dice`" if len(runs) == 1 else f"`per_image_dice[{name if name else i}]`"
        try:
            values = np.asarray(to_numpy(run), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            msg = f"{where} must hold numbers (per-image Dice), got {type(run).__name__}."
            raise TypeError(msg) from exc
        if values.ndim > 1:
            msg = (
                f"{where} must be one-dimensional (one value per image), got shape {values.shape}; "
                "pass several runs as a sequence or a mapping."
            )
            raise ValueError(msg)
        values = values.reshape(-1)
        if values.size == 0:
            msg = f"{where} is empty; at least one image is needed."
            raise ValueError(msg)
        if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
            msg = f"{where} must hold Dice values in [0, 1]; got a value outside it (or NaN/inf)."
            raise ValueError(msg)
        out.append((name, values))
    return out


def plot_dice_histogram(
    per_image_dice: Any,
    /,
    *,
    labels: Sequence[str] | None = None,
    bins: int = 40,
    value_range: tuple[float, float] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Any:
    """Histogram of per-image Dice for one or several runs (e.g. full coverage and lower ones).

    The bins span the data (the smallest to the largest Dice of all runs), so a set whose images all
    score 0.5 to 1 fills the axis instead of its right half. Several runs are drawn as small multiples:
    one panel per run, one above the other, with the same bins and the same axes, each titled with its
    label. No run hides another and no legend covers a bar. The Dice axis is labelled in percent, like the
    reports' tables.

    Parameters
    ----------
    per_image_dice : array-like, sequence of array-likes, or mapping of label to array-like
        One run's per-image Dice (e.g. ``result.per_image_dice`` of
        [`selectivekit.segmentation.dice_at_coverage`][selectivekit.dice_at_coverage]), a sequence of runs
        (their lengths may differ),
        or a mapping of labels to runs. Values must be finite and in [0, 1].
    labels : sequence of str, optional
        Panel titles, one per run (not with a mapping, whose keys are the labels).
    bins : int, default 40
        Number of equal-width bins, shared by all runs.
    value_range : (float, float), optional
        The span of the bins and of the x axis, inside [0, 1], e.g. ``(0.0, 1.0)`` to compare figures
        of different data sets on one scale. Default: the data's range.
    title : str, optional
        Figure title.
    figsize : (float, float), optional
        Figure size in inches; default 6 inches wide, 4 high for one run and 1.3 inches a panel for several.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per run, sharing both axes.

    Raises
    ------
    TypeError
        If `per_image_dice` or `labels` is of the wrong type, or `bins` is not an int.
    ValueError
        If a run is empty or holds values outside [0, 1], if `labels` does not hold one label per run, if
        `bins` is not positive, or if `value_range` is not an increasing pair inside [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_dice_histogram(
    ...     [np.array([0.8, 0.9, 0.95]), np.array([0.85, 0.93])], labels=["coverage 1.00", "coverage 0.90"]
    ... )
    >>> [ax.get_title(loc="left") for ax in fig.axes], fig.axes[-1].get_xlabel()
    (['coverage 1.00', 'coverage 0.90'], 'per-image Dice (%)')
    >>> [round(float(x), 3) for x in fig.axes[0].get_xlim()]  # the data's range (0.8 to 0.95), a margin
    [0.797, 0.953]
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        msg = f"`bins` must be an int, got {type(bins).__name__}."
        raise TypeError(msg)
    if bins < 1:
        msg = f"`bins` must be positive, got {bins}."
        raise ValueError(msg)
    from matplotlib.ticker import MaxNLocator

    runs = _dice_runs(per_image_dice, labels)
    if value_range is not None:
        lo, hi = _increasing_pair(value_range, "value_range", within_unit=True)
        margin = 0.0
    else:
        lo = min(float(values.min()) for _, values in runs)
        hi = max(float(values.max()) for _, values in runs)
        if hi - lo < 0.02:  # one value, or nearly: a bar 0.02 wide around it, inside [0, 1]
            mid = min(max(0.5 * (lo + hi), 0.01), 0.99)
            lo, hi = mid - 0.01, mid + 0.01
        margin = 0.02 * (hi - lo)
    edges = np.linspace(lo, hi, int(bins) + 1)
    n = len(runs)
    fig = _new_figure(figsize or (6.0, 4.0 if n == 1 else 1.0 + 1.3 * n))
    axes = fig.subplots(n, 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for i, (ax, (name, values)) in enumerate(zip(axes, runs, strict=True)):
        ax.hist(values, bins=edges, color=f"C{i % 10}", alpha=0.8)
        if name:
            ax.set_title(name, loc="left", fontsize=9)
        # image counts: no 2.5 ticks; a few ticks on a short panel
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins="auto" if n == 1 else 4))
        ax.grid(axis="y", alpha=0.3)
    if n == 1:
        axes[0].set_ylabel("images")
    else:
        fig.supylabel("images")
    axes[-1].set_xlabel("per-image Dice (%)")
    _in_percent(axes[-1].xaxis)
    axes[-1].set_xlim(lo - margin, hi + margin)
    if title:
        fig.suptitle(title)
    return fig


def plot_per_image_comparison(
    comparisons: PerImageComparison | Sequence[PerImageComparison],
    /,
    *,
    names: tuple[str, str] = ("A", "B"),
    title: str | None = None,
    titles: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Any:
    """Per-image coverage difference against Dice difference (the paper's Figure 2), one panel per coverage.

    Each dot is an image: x is ``c_b - c_a``, its coverage under run B minus under run A, and y is
    ``d_b - d_a``, the same for its Dice after referral (in percentage points), as computed by
    [`selectivekit.segmentation.compare_at_coverage`][selectivekit.compare_at_coverage] (``a`` is the first
    argument there). The axis
    labels name the runs (``names``), the figure title says what is subtracted from what, and each
    quadrant carries the share of images in it (in red, in a corner kept clear of the dots); a caption
    under the panels says so. Upper right: B keeps more of the image *and* scores a higher Dice on it. All
    panels share their axes, so the clouds of different coverages compare at a glance.

    Parameters
    ----------
    comparisons : PerImageComparison or sequence of them
        E.g. one per requested coverage (0.95, 0.9, 0.8, 0.7).
    names : (str, str), default ("A", "B")
        The names of run A (subtracted) and run B, e.g. ``("baseline", "ours")`` for the paper's figure,
        which then reads "ours − baseline".
    title : str, optional
        Figure title; default ``"Per-image differences, B − A (each dot is one image)"`` with the names.
    titles : sequence of str, optional
        Panel titles; default ``"coverage 0.90"`` (the requested coverage, two decimals as in the reports).
    figsize : (float, float), optional
        Figure size in inches; default 3.5 inches per panel, up to three panels in a row and two columns
        from four panels on (the paper's four coverages as 2 x 2).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        If `comparisons` is not a PerImageComparison or a non-empty sequence of them, or `names` is not
        two strings.
    ValueError
        If `titles` does not hold one title per panel.

    Examples
    --------
    >>> import numpy as np
    >>> from selectivekit.segmentation import compare_at_coverage, dice_at_coverage
    >>> rng = np.random.default_rng(0)
    >>> label = rng.integers(0, 3, (8, 16, 16))
    >>> pred_a = np.where(rng.random(label.shape) < 0.1, 0, label)
    >>> pred_b = np.where(rng.random(label.shape) < 0.1, 0, label)
    >>> a = dice_at_coverage(pred_a, label, rng.random(label.shape), 0.9, num_classes=3)[0]
    >>> b = dice_at_coverage(pred_b, label, rng.random(label.shape), 0.9, num_classes=3)[0]
    >>> fig = plot_per_image_comparison(compare_at_coverage(a, b), names=("baseline", "ours"))
    >>> len(fig.axes), fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
    (1, 'coverage difference (ours − baseline)', 'Dice difference (ours − baseline, % points)')
    """
    if isinstance(comparisons, PerImageComparison):
        comparisons = [comparisons]
    comparisons = list(comparisons)
    if not comparisons or not all(isinstance(c, PerImageComparison) for c in comparisons):
        msg = "`comparisons` must be a PerImageComparison or a non-empty sequence of them."
        raise TypeError(msg)
    if titles is not None and len(titles) != len(comparisons):
        msg = f"`titles` must hold {len(comparisons)} titles, got {len(titles)}."
        raise ValueError(msg)
    if isinstance(names, str) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        msg = f"`names` must be two strings (run A, run B), got {names!r}."
        raise TypeError(msg)
    from matplotlib.ticker import MaxNLocator

    name_a, name_b = names
    difference = f"{name_b} − {name_a}"
    n = len(comparisons)
    columns = n if n <= 3 else 2  # four panels as 2 x 2: readable at the width of a report page
    rows = -(-n // columns)
    width, height = figsize or (3.5 * columns, 0.9 + 3.5 * rows)
    fig = _new_figure((width, height))
    fig.suptitle(
        title if title is not None else f"Per-image differences, {difference} (each dot is one image)"
    )
    grid = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    axes = list(grid.reshape(-1)[:n])
    for ax in grid.reshape(-1)[n:]:  # an odd number of panels in two columns: the empty cell goes
        fig.delaxes(ax)
    points = [
        (
            np.asarray(to_numpy(comp.coverage_difference), dtype=np.float64).reshape(-1),
            np.asarray(to_numpy(comp.dice_difference), dtype=np.float64).reshape(-1),
        )
        for comp in comparisons
    ]
    # one pair of limits for every panel, with every panel's corners clear of its dots
    xr, yr = _clear_corners(np.concatenate([p[0] for p in points]), np.concatenate([p[1] for p in points]))
    for i, (ax, comp, (dc, dd)) in enumerate(zip(axes, comparisons, points, strict=True)):
        ax.scatter(dc, dd, s=12, alpha=0.7, zorder=2)
        ax.axhline(0.0, color="0.3", lw=0.8, zorder=1)
        ax.axvline(0.0, color="0.3", lw=0.8, zorder=1)
        for q, (sx, sy) in _QUADRANTS.items():
            ax.text(
                0.5 + sx * (0.5 - _CORNER_PAD),
                0.5 + sy * (0.5 - _CORNER_PAD),
                f"{100 * comp.quadrant_share[q]:.1f}%",
                transform=ax.transAxes,
                ha="right" if sx > 0 else "left",
                va="top" if sy > 0 else "bottom",
                fontsize=9,
                color="tab:red",
                zorder=3,
            )
        ax.set_title(titles[i] if titles is not None else f"coverage {comp.requested:.2f}", fontsize=10)
        if i + columns >= n:  # the lowest panel of its column
            ax.set_xlabel(f"coverage difference ({difference})")
            ax.xaxis.set_tick_params(labelbottom=True)
        if i % columns == 0:
            ax.set_ylabel(f"Dice difference ({difference}, % points)")
        ax.grid(alpha=0.3)
    axes[0].set_xlim(-xr, xr)
    axes[0].set_ylim(-yr, yr)
    axes[0].xaxis.set_major_locator(MaxNLocator(nbins=4, symmetric=True))  # room for "−0.05" on 3.5 inches
    _in_percent(axes[0].yaxis)
    caption = (
        f"Red: the share of images in each quadrant. Right of the vertical line: {name_b} keeps more of "
        f"the image than {name_a}; above the horizontal line: {name_b} scores a higher Dice. Images on a "
        "line (a zero difference) are in no quadrant."
    )
    # under the panels, where constrained layout keeps room for it
    fig.supxlabel(textwrap.fill(caption, width=max(40, int(16 * width))), fontsize=8, color="0.25")
    return fig


# quadrant -> (sign of x, sign of y); the share labels sit in the corners, in axes coordinates
_QUADRANTS = {1: (1, 1), 2: (-1, 1), 3: (-1, -1), 4: (1, -1)}
_CORNER_PAD = 0.02
_CORNER_BOX = (0.22, 0.10)  # room a label such as "100.0%" takes, as a share of the axes' width/height


def _clear_corners(dc: np.ndarray, dd: np.ndarray) -> tuple[float, float]:
    """Half-widths of the x and y axes such that no point lies under a corner's share label.

    Start with a 15% margin around the points and widen both axes (by 10% a step, at most 4 times the
    data's extent) until the four corner boxes are empty: points far out in both differences are rare,
    so a small widening usually suffices.
    """
    span_x = max(float(np.abs(dc).max(initial=0.0)), 1e-6)
    span_y = max(float(np.abs(dd).max(initial=0.0)), 1e-6)
    width, height = _CORNER_BOX
    scale = 1.15
    while True:
        u = 0.5 + dc / (2 * scale * span_x)  # axes coordinates
        v = 0.5 + dd / (2 * scale * span_y)
        edge_u = np.abs(u - 0.5) >= 0.5 - _CORNER_PAD - width - 0.01
        edge_v = np.abs(v - 0.5) >= 0.5 - _CORNER_PAD - height - 0.01
        if not np.any(edge_u & edge_v) or scale >= 4.0:
            return scale * span_x, scale * span_y
        scale *= 1.1


def plot_reliability(
    bins: CalibrationBins | Mapping[str, CalibrationBins] | Sequence[CalibrationBins],
    /,
    *,
    title: str | None = None,
    figsize: tuple[float, float] = (5.0, 5.5),
) -> Any:
    """Reliability diagram: accuracy against mean confidence per bin, above a histogram of the voxels.

    A calibrated model lies on the diagonal; below it, over-confident. Each non-empty bin is a point at
    (mean confidence, accuracy) joined by a line; the lower panel shows the share of voxels per bin (log
    scale: segmentation puts most voxels in the last bin). The title line gives each model's ECE.

    Parameters
    ----------
    bins : CalibrationBins, mapping of name to CalibrationBins, or sequence of them
        From [`calibration_bins`][selectivekit.calibration_bins] or
        ``CalibrationAccumulator.compute().bins``.
    title : str, optional
        Figure title.
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from selectivekit import calibration_bins
    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [1.0, 0.0]])
    >>> fig = plot_reliability({"model": calibration_bins(probs, np.array([0, 1, 0, 0]), axis=-1)})
    >>> fig.axes[0].get_ylabel()
    'accuracy (%)'
    """
    fig = _new_figure(figsize)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    eces = []
    for i, (name, b) in enumerate(_named(bins, CalibrationBins, "model", "bins")):
        full = b.counts > 0
        color = f"C{i}"
        label = name or None
        top.plot(b.mean_confidence[full], b.accuracy[full], "o-", color=color, markersize=4, label=label)
        share = b.counts / max(int(b.counts.sum()), 1)
        centres = 0.5 * (b.edges[:-1] + b.edges[1:])
        bottom.step(centres, share, where="mid", color=color)
        eces.append(f"{name + ': ' if name else ''}ECE {100 * b.expected_calibration_error():.2f}%")
    top.set_ylabel("accuracy (%)")
    _in_percent(top.yaxis)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("; ".join(eces) if not title else f"{title}\n" + "; ".join(eces), fontsize=9)
    bottom.set_yscale("log")
    bottom.set_ylabel("share of voxels")
    bottom.set_xlabel("confidence (%)")
    _in_percent(bottom.xaxis)
    bottom.grid(alpha=0.3)
    return fig


def plot_budget(
    budgets: Any,
    voxels_only: Any,
    cases_only: Any,
    mixed: Any,
    /,
    *,
    unit: str = "minutes",
    title: str | None = None,
    figsize: tuple[float, float] = (6.0, 4.0),
) -> Any:
    """Best mean Dice after referral against the expert's budget: voxels only, whole cases only, the mix.

    Parameters
    ----------
    budgets, voxels_only, cases_only, mixed : arrays of the same length
        From [`budget_curves`][selectivekit.budget.budget_curves] (``.budgets``, ``.voxels_only``,
        ``.cases_only``, ``.mixed``) or ``ReferralPlans.dice_within``; NaN where no plan fits.
    unit : str
        The unit of the budget, for the x axis.
    title : str, optional
        Axes title.
    figsize : (float, float)
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = np.asarray(to_numpy(budgets), dtype=np.float64).reshape(-1)
    fig = _new_figure(figsize)
    ax = fig.add_subplot()
    for values, label, style in (
        (voxels_only, "check voxels only", "--"),
        (cases_only, "open whole cases only", ":"),
        (mixed, "best mix of both", "-"),
    ):
        y = np.asarray(to_numpy(values), dtype=np.float64).reshape(-1)
        if y.shape != x.shape:
            msg = f"each curve must hold one value per budget ({x.size}), got {y.size}."
            raise ValueError(msg)
        ax.plot(x, y, style, drawstyle="steps-post", label=label)
    ax.set_xlabel(f"expert budget ({unit})")
    ax.set_ylabel("mean Dice after referral (%)")
    _in_percent(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return fig

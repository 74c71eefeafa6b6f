"""Plots render to valid, non-trivial PNGs without touching pyplot's global state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")

import selectivekit.risk_coverage as rc
from selectivekit.plotting import (
    plot_dice_coverage,
    plot_dice_histogram,
    plot_per_image_comparison,
    plot_risk_coverage,
)
from selectivekit.risk_coverage import RiskCoverageCurve
from selectivekit.segmentation import (
    DiceCoverageCurve,
    PerImageComparison,
    aurc_dice,
    compare_at_coverage,
    dice_at_coverage,
    dice_coverage_curve,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _models(seed=0, n_images=12):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, (n_images, 24, 24))
    out = {}
    for name, sharp in (("baseline", 0.5), ("ours", 1.5)):
        wrong = rng.random(label.shape) < 0.1
        pred = np.where(wrong, (label + 1) % 3, label)
        u = rng.random(label.shape) + sharp * wrong
        out[name] = (pred, label, u)
    return out


def _check_png(fig, path):
    fig.savefig(path, dpi=80)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5000  # more than an empty canvas
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert np.std(image[..., :3]) > 0.05  # drawn content, not a blank image


def _no_pyplot_figures():
    import sys

    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        return plt.get_fignums() == []
    return True


def test_risk_coverage_plot(tmp_path):
    curves = {}
    for name, (pred, label, u) in _models().items():
        curves[name] = rc.risk_coverage_curve(u, pred == label)
    fig = plot_risk_coverage(curves, title="risk-coverage")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    expected = [
        f"{name} (AURC {100 * rc.aurc(u, pred == label):.3f}%)"
        for name, (pred, label, u) in _models().items()
    ]
    assert legend == expected
    _check_png(fig, tmp_path / "rc.png")
    assert _no_pyplot_figures()


def test_dice_coverage_plot_thins_long_curves(tmp_path):
    curves = {
        name: dice_coverage_curve(pred, label, u, num_classes=3)
        for name, (pred, label, u) in _models().items()
    }
    assert curves["ours"].coverage.size > 500
    fig = plot_dice_coverage(curves, min_coverage=0.5, max_points=500)
    for line in fig.axes[0].get_lines():
        assert len(line.get_xdata()) <= 502
        assert line.get_xdata()[-1] == 1.0
    _check_png(fig, tmp_path / "dice.png")
    assert _no_pyplot_figures()


def test_per_image_comparison_plot(tmp_path):
    models = _models()
    coverages = [0.95, 0.9, 0.8, 0.7]
    base = dice_at_coverage(*models["baseline"], coverages, num_classes=3)
    ours = dice_at_coverage(*models["ours"], coverages, num_classes=3)
    comparisons = [compare_at_coverage(a, b) for a, b in zip(base, ours, strict=True)]
    fig = plot_per_image_comparison(comparisons)
    assert len(fig.axes) == 4
    texts = [t.get_text() for t in fig.axes[0].texts]
    expected = [f"{100 * comparisons[0].quadrant_share[q]:.1f}%" for q in (1, 2, 3, 4)]
    assert texts == expected
    _check_png(fig, tmp_path / "fig2.png")
    assert _no_pyplot_figures()


def test_risk_coverage_plot_of_dice_curves(tmp_path):
    curves = {
        name: dice_coverage_curve(pred, label, u, num_classes=3)
        for name, (pred, label, u) in _models().items()
    }
    fig = plot_risk_coverage(curves, title="AURC", max_points=10**9)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "risk = 1 - mean Dice (%)"
    expected = [
        f"{name} (AURC {100 * aurc_dice(pred, label, u, num_classes=3):.3f}%)"
        for name, (pred, label, u) in _models().items()
    ]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
    for line, curve in zip(ax.get_lines(), curves.values(), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), curve.coverage)
        np.testing.assert_allclose(line.get_ydata(), 1.0 - curve.mean_dice, rtol=0, atol=1e-15)
    _check_png(fig, tmp_path / "rc_dice.png")
    assert _no_pyplot_figures()


def test_dice_curve_draws_like_the_equivalent_risk_curve():
    pred, label, u = _models()["ours"]
    dice = dice_coverage_curve(pred, label, u, num_classes=3)
    n = label.size
    risk = 1.0 - np.asarray(dice.mean_dice, dtype=np.float64)
    equivalent = RiskCoverageCurve(
        coverage=dice.coverage,
        risk=risk,
        threshold=dice.threshold,
        cumulative_risk=risk * dice.coverage * n,
        n_total=n,
    )
    for max_points in (300, 4000):  # thinned and not
        a = plot_risk_coverage(dice, max_points=max_points).axes[0]
        b = plot_risk_coverage(equivalent, max_points=max_points).axes[0]
        (la,), (lb,) = a.get_lines(), b.get_lines()
        np.testing.assert_array_equal(la.get_xdata(), lb.get_xdata())
        np.testing.assert_array_equal(la.get_ydata(), lb.get_ydata())
        (text_a,), (text_b,) = a.get_legend().get_texts(), b.get_legend().get_texts()
        assert (
            text_a.get_text()
            == text_b.get_text()
            == f"AURC {100 * aurc_dice(pred, label, u, num_classes=3):.3f}%"
        )
    assert plot_risk_coverage(dice, show_aurc=False).axes[0].get_legend() is None
    assert b.get_ylabel() == "selective risk (%)"
    # mixed inputs are allowed; the axis then keeps the generic label
    ok = pred == label
    mixed = plot_risk_coverage({"dice": dice, "voxel errors": rc.risk_coverage_curve(u, ok)})
    assert mixed.axes[0].get_ylabel() == "selective risk (%)"
    assert len(mixed.axes[0].get_lines()) == 2


def _bar_heights(ax):
    return np.array([patch.get_height() for patch in ax.patches if patch.__class__.__name__ == "Rectangle"])


def test_dice_histogram_one_run(tmp_path):
    pred, label, u = _models()["baseline"]
    (result,) = dice_at_coverage(pred, label, u, [1.0], num_classes=3)
    fig = plot_dice_histogram(result.per_image_dice, title="Per-image Dice")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "per-image Dice (%)" and ax.get_ylabel() == "images"
    assert ax.get_legend() is None
    heights = _bar_heights(ax)
    assert heights.size == 40 and heights.sum() == len(result.per_image_dice)
    _check_png(fig, tmp_path / "hist1.png")
    assert _no_pyplot_figures()


def test_dice_histogram_several_runs(tmp_path):
    rng = np.random.default_rng(1)
    full = rng.uniform(0.6, 1.0, 30)
    lower = rng.uniform(0.8, 1.0, 25)  # runs may differ in length
    fig = plot_dice_histogram([full, list(lower)], labels=["coverage 1.00", "coverage 0.90"], bins=20)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["coverage 1.00", "coverage 0.90"]
    edges = np.linspace(min(full.min(), lower.min()), max(full.max(), lower.max()), 21)  # the data's range
    for ax, run in zip(fig.axes, (full, lower), strict=True):  # one panel per run, the same bins
        np.testing.assert_array_equal(_bar_heights(ax), np.histogram(run, bins=edges)[0])
    _check_png(fig, tmp_path / "hist2.png")
    # a mapping gives the labels; a plain list of numbers is one run
    fig = plot_dice_histogram({"a": full, "b": lower})
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["a", "b"]
    fig = plot_dice_histogram([0.5, 0.75, 1.0])
    assert len(fig.axes) == 1 and _bar_heights(fig.axes[0]).sum() == 3
    assert _no_pyplot_figures()


@pytest.mark.parametrize("n_runs", [2, 3, 5])
@pytest.mark.parametrize("where", ["low", "high", "same"])
def test_dice_histogram_runs_stay_visible_and_nothing_covers_a_bar(n_runs, where):
    """Every run keeps its own bars (identical runs included) and no legend or title covers one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(n_runs)
    if where == "low":  # tall bars at the left, where a legend in the upper left used to sit
        runs = [np.concatenate([np.full(40, 0.6), rng.uniform(0.6, 1.0, 10)]) for _ in range(n_runs)]
    elif where == "high":
        runs = [np.concatenate([np.full(40, 0.99), rng.uniform(0.6, 0.99, 10)]) for _ in range(n_runs)]
    else:  # the same values in every run: overlaid, the later runs would hide the first
        runs = [rng.uniform(0.7, 0.9, 30)] * n_runs
    labels = [f"coverage {c:.2f}" for c in np.linspace(1.0, 0.7, n_runs)]
    fig = plot_dice_histogram(runs, labels=labels, bins=10)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    lo = min(r.min() for r in runs)
    hi = max(r.max() for r in runs)
    edges = np.linspace(lo, hi, 11)
    assert len(fig.axes) == n_runs
    for ax, run in zip(fig.axes, runs, strict=True):
        np.testing.assert_array_equal(_bar_heights(ax), np.histogram(run, bins=edges)[0])
        assert ax.get_shared_x_axes().joined(ax, fig.axes[0])
        assert ax.get_shared_y_axes().joined(ax, fig.axes[0])
        bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_height() > 0]
        covers = [ax.title, ax._left_title, ax._right_title]
        if ax.get_legend() is not None:
            covers.append(ax.get_legend())
        for artist in covers:
            if not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
                continue
            box = artist.get_window_extent(renderer)
            assert not any(box.overlaps(bar) for bar in bars), f"{artist} covers a bar"


def test_dice_axes_are_in_percent_like_the_tables():
    """Every Dice axis labels its ticks in percent (85, not 0.85) and says so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pred, label, u = _models()["ours"]
    curve = dice_coverage_curve(pred, label, u, num_classes=3)
    results = dice_at_coverage(pred, label, u, [0.9, 1.0], num_classes=3)
    comp = compare_at_coverage(results[0], dice_at_coverage(*_models()["baseline"], 0.9, num_classes=3)[0])
    cases = [
        (plot_dice_coverage(curve).axes[0], "y"),
        (plot_risk_coverage(curve).axes[0], "y"),
        (plot_dice_histogram([r.per_image_dice for r in results]).axes[-1], "x"),
        (plot_per_image_comparison(comp).axes[0], "y"),
    ]
    for ax, which in cases:
        FigureCanvasAgg(ax.figure).draw()
        axis = ax.yaxis if which == "y" else ax.xaxis
        assert "%" in axis.get_label().get_text()
        lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
        shown = [
            (t.get_loc(), t.label1.get_text()) for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi
        ]
        assert len(shown) >= 2
        for value, text in shown:
            assert float(text.replace("\u2212", "-")) == pytest.approx(100 * value, abs=1e-6)


def test_dice_histogram_inputs_are_checked():
    with pytest.raises(TypeError, match="`per_image_dice`"):
        plot_dice_histogram("0.9")
    with pytest.raises(TypeError, match="`per_image_dice`"):
        plot_dice_histogram(None)
    with pytest.raises(ValueError, match="`per_image_dice` is empty"):
        plot_dice_histogram([])
    with pytest.raises(ValueError, match="`per_image_dice` is empty"):
        plot_dice_histogram({})
    with pytest.raises(ValueError, match=r"`per_image_dice\[b\]` is empty"):
        plot_dice_histogram({"a": [0.5], "b": []})
    with pytest.raises(ValueError, match=r"`per_image_dice` must hold Dice values in \[0, 1\]"):
        plot_dice_histogram(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="`per_image_dice`"):
        plot_dice_histogram(np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="one-dimensional"):
        plot_dice_histogram(np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="`labels` must hold 2 labels"):
        plot_dice_histogram([[0.5], [0.6]], labels=["only one"])
    with pytest.raises(TypeError, match="`labels`"):
        plot_dice_histogram([[0.5], [0.6]], labels="ab")
    with pytest.raises(ValueError, match="`labels` must be None"):
        plot_dice_histogram({"a": [0.5]}, labels=["a"])
    with pytest.raises(TypeError, match="`bins`"):
        plot_dice_histogram([0.5], bins=2.5)
    with pytest.raises(ValueError, match="`bins`"):
        plot_dice_histogram([0.5], bins=0)


def test_plot_inputs_are_checked():
    with pytest.raises(TypeError, match="`curves`"):
        plot_risk_coverage(42)
    with pytest.raises(ValueError, match="`curves` is empty"):
        plot_dice_coverage({})
    with pytest.raises(TypeError, match="`comparisons`"):
        plot_per_image_comparison([])
    dice = DiceCoverageCurve(coverage=[0.5, 1.0], mean_dice=[0.9, 0.8], threshold=[0.1, 0.2])
    with pytest.raises(TypeError, match=r"`curves\['y'\]` must be a RiskCoverageCurve or DiceCoverageCurve"):
        plot_risk_coverage({"x": dice, "y": 3})
    with pytest.raises(TypeError, match=r"`curves\['x'\]` must be a DiceCoverageCurve"):
        plot_dice_coverage({"x": 3})


# --- what a reader sees: limits, labels, legend and titles, read from the Figure object ---


def _noisy_start_curve():
    """A risk curve whose first, most confident instance is wrong: risk 1 at coverage 1/1000."""
    u = np.linspace(0.0, 1.0, 1000)
    correct = np.ones(1000, dtype=bool)
    correct[0] = False
    correct[900:] = np.arange(100) % 2 == 0  # errors among the least confident
    return rc.risk_coverage_curve(u, correct)


def test_risk_coverage_default_view_ignores_the_first_points():
    curve = _noisy_start_curve()
    assert curve.risk[0] == 1.0 and curve.coverage[0] < 0.05
    ax = plot_risk_coverage({"m": curve}).axes[0]
    bottom, top = ax.get_ylim()
    visible = np.asarray(curve.risk)[np.asarray(curve.coverage) >= 0.05].max()
    assert bottom == 0.0 and visible <= top < 1.2 * visible < 0.2  # the real curve fills the axis
    assert ax.get_xlim() == (0.0, 1.0)
    # fit_from=0 fits every point, the first one included
    assert plot_risk_coverage(curve, fit_from=0.0).axes[0].get_ylim()[1] >= 1.0
    # the line itself is not cut: every point is drawn
    assert len(ax.get_lines()[0].get_xdata()) == curve.coverage.size


def test_risk_coverage_ylim_and_coverage_range():
    curve = _noisy_start_curve()
    ax = plot_risk_coverage(curve, ylim=(0.0, 0.5), coverage_range=(0.5, 1.0)).axes[0]
    assert ax.get_ylim() == (0.0, 0.5) and ax.get_xlim() == (0.5, 1.0)
    # zoomed to (0.5, 1.0), the default y limit fits the points shown there
    ax = plot_risk_coverage(curve, coverage_range=(0.5, 0.9)).axes[0]
    cov, risk = np.asarray(curve.coverage), np.asarray(curve.risk)
    shown = risk[(cov >= 0.5) & (np.concatenate([[0.0], cov[:-1]]) <= 0.9)]
    assert shown.max() <= ax.get_ylim()[1] <= 1.1 * shown.max()
    with pytest.raises(ValueError, match="`coverage_range` must be an increasing pair inside"):
        plot_risk_coverage(curve, coverage_range=(0.9, 0.5))
    with pytest.raises(ValueError, match="`coverage_range`"):
        plot_risk_coverage(curve, coverage_range=(0.0, 1.5))
    with pytest.raises(TypeError, match="`ylim` must be a pair"):
        plot_risk_coverage(curve, ylim=0.5)
    with pytest.raises(ValueError, match="`ylim` must be an increasing pair"):
        plot_risk_coverage(curve, ylim=(0.5, 0.5))
    with pytest.raises(ValueError, match="`fit_from`"):
        plot_risk_coverage(curve, fit_from=2.0)


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(1, 60),
    dice=st.booleans(),
    window=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).filter(lambda w: w[0] < w[1]),
    fit_from=st.one_of(st.floats(0.0, 1.0), st.integers(0, 59)),  # an integer: the coverage of that point
    seed=st.integers(0, 2**16),
    end_at=st.one_of(st.none(), st.integers(0, 59)),  # the window ends at the coverage of that point
)
def test_risk_coverage_area_and_y_limit_from_blocks_equal_the_whole_curve(
    n, dice, window, fit_from, seed, end_at
):
    """The legend's area and the default y limit are computed block by block on the curve's own dtype (a
    curve has tens of millions of points); blocks of 7 points here. References: an exact sum over every
    point, and the y limit of the points in the window taken one by one."""
    import math

    from selectivekit import plotting

    rng = np.random.default_rng(seed)
    coverage = np.cumsum(rng.integers(1, 4, n)).astype(np.float32)
    coverage /= coverage[-1]
    values = rng.random(n).astype(np.float32)
    thresholds = np.arange(n, dtype=np.float32)
    if dice:
        curve = DiceCoverageCurve(coverage, values, thresholds)
    else:
        curve = RiskCoverageCurve(coverage, values, thresholds, np.cumsum(values), n)
    risk = [1.0 - float(v) if dice else float(v) for v in values]
    if isinstance(fit_from, int):
        fit_from = float(coverage[min(fit_from, n - 1)])
    if end_at is not None:
        end = float(coverage[min(end_at, n - 1)])
        window = (window[0] * end, end)
    saved, plotting._BLOCK = plotting._BLOCK, 7
    try:
        area = plotting._step_area(curve, np.asarray(coverage))
        ax = plot_risk_coverage(curve, coverage_range=window, fit_from=fit_from).axes[0]
    finally:
        plotting._BLOCK = saved
    widths = [float(c) - (float(coverage[i - 1]) if i else 0.0) for i, c in enumerate(coverage)]
    assert area == pytest.approx(math.fsum(w * r for w, r in zip(widths, risk, strict=True)), rel=1e-12)
    shown = [
        r
        for i, r in enumerate(risk)
        if coverage[i] >= max(window[0], fit_from) and (float(coverage[i - 1]) if i else 0.0) <= window[1]
    ]
    top = max(shown, default=0.0)
    assert ax.get_ylim() == pytest.approx((0.0, 1.08 * top if top > 0 else 1.0), rel=1e-12)


def test_dice_histogram_uses_the_data_range():
    dice = np.array([0.52, 0.7, 0.81, 0.9, 0.97])
    ax = plot_dice_histogram(dice, bins=10).axes[0]
    lo, hi = ax.get_xlim()
    assert 0.5 < lo < 0.52 and 0.97 < hi < 0.99
    bars = [p for p in ax.patches if p.__class__.__name__ == "Rectangle"]
    assert min(p.get_x() for p in bars) == pytest.approx(0.52)
    assert max(p.get_x() + p.get_width() for p in bars) == pytest.approx(0.97)
    assert all(float(t).is_integer() for t in ax.get_yticks())  # image counts
    ax = plot_dice_histogram(dice, value_range=(0.0, 1.0)).axes[0]
    assert ax.get_xlim() == (0.0, 1.0)
    # one value: a narrow bar around it, inside [0, 1]
    lo, hi = plot_dice_histogram([1.0, 1.0]).axes[0].get_xlim()
    assert lo < 1.0 <= hi <= 1.001
    with pytest.raises(ValueError, match="`value_range`"):
        plot_dice_histogram(dice, value_range=(0.5, 1.5))


def _comparison(dc, dd, requested=0.9):
    dc, dd = np.asarray(dc, dtype=float), np.asarray(dd, dtype=float)
    shares = {
        1: np.mean((dc > 0) & (dd > 0)),
        2: np.mean((dc < 0) & (dd > 0)),
        3: np.mean((dc < 0) & (dd < 0)),
        4: np.mean((dc > 0) & (dd < 0)),
    }
    return PerImageComparison(requested, dc, dd, shares, 1.0 - sum(shares.values()))


def test_per_image_comparison_says_what_is_compared():
    rng = np.random.default_rng(3)
    comps = [_comparison(rng.normal(0, 0.01, 30), rng.normal(0.01, 0.02, 30), c) for c in (0.95, 0.9)]
    fig = plot_per_image_comparison(comps, names=("baseline", "ours"))
    assert fig.get_suptitle() == "Per-image differences, ours − baseline (each dot is one image)"
    assert [ax.get_xlabel() for ax in fig.axes] == ["coverage difference (ours − baseline)"] * 2
    assert fig.axes[0].get_ylabel() == "Dice difference (ours − baseline, % points)"
    assert [ax.get_title() for ax in fig.axes] == ["coverage 0.95", "coverage 0.90"]
    # the caption under the panels explains the red numbers, with the runs' names
    caption = " ".join(fig.get_supxlabel().split())
    assert caption.startswith("Red: the share of images in each quadrant.")
    assert "ours keeps more of the image than baseline" in caption and "ours scores a higher Dice" in caption
    fig = plot_per_image_comparison(comps[0])
    assert fig.axes[0].get_xlabel() == "coverage difference (B − A)"
    assert "B − A" in fig.get_suptitle() and "B keeps more of the image than A" in fig.get_supxlabel()
    assert plot_per_image_comparison(comps[0], title="run 2 vs run 1").get_suptitle() == "run 2 vs run 1"
    with pytest.raises(TypeError, match="`names` must be two strings"):
        plot_per_image_comparison(comps[0], names="ab")
    with pytest.raises(TypeError, match="`names`"):
        plot_per_image_comparison(comps[0], names=("a", "b", "c"))


@pytest.mark.parametrize("n_panels", [2, 3, 4, 5])
def test_per_image_comparison_panels_share_their_axes(n_panels):
    """Clouds of very different spread get the same limits, wide enough for the widest."""
    rng = np.random.default_rng(n_panels)
    comps = [
        _comparison(
            rng.normal(0, 0.01 * (i + 1) ** 2, 40), rng.normal(0, 0.005 * (i + 1), 40), 0.95 - 0.05 * i
        )
        for i in range(n_panels)
    ]
    fig = plot_per_image_comparison(comps)
    first = fig.axes[0]
    for ax, comp in zip(fig.axes, comps, strict=True):
        assert first.get_shared_x_axes().joined(first, ax)
        assert first.get_shared_y_axes().joined(first, ax)
        assert ax.get_xlim() == first.get_xlim() and ax.get_ylim() == first.get_ylim()
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        assert x0 < comp.coverage_difference.min() and comp.coverage_difference.max() < x1
        assert y0 < comp.dice_difference.min() and comp.dice_difference.max() < y1


@pytest.mark.parametrize("cloud", ["uniform", "corners", "gaussian"])
def test_quadrant_shares_hide_no_point(cloud):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(7)
    if cloud == "uniform":  # points up to the corners of the data's square
        dc, dd = rng.uniform(-1, 1, 300), rng.uniform(-0.05, 0.05, 300)
    elif cloud == "corners":  # a point in each extreme corner
        dc = np.array([1.0, -1.0, -1.0, 1.0, 0.2, -0.1])
        dd = np.array([0.03, 0.03, -0.03, -0.03, 0.01, -0.02])
    else:
        dc, dd = rng.normal(0, 0.01, 200), rng.normal(0, 0.02, 200)
    comp = _comparison(dc, dd)
    fig = plot_per_image_comparison([comp, comp])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        labels = ax.texts
        assert [t.get_text() for t in labels] == [
            f"{100 * comp.quadrant_share[q]:.1f}%" for q in (1, 2, 3, 4)
        ]
        points = ax.transData.transform(np.column_stack([dc, dd]))
        radius = 3.0  # pixels: the dots' size
        for text in labels:
            box = text.get_window_extent(renderer).padded(radius)
            x, y = points[:, 0], points[:, 1]
            inside = (box.x0 <= x) & (x <= box.x1) & (box.y0 <= y) & (y <= box.y1)
            assert not np.any(inside), f"the label {text.get_text()!r} hides a point"
        # every point is inside the axes
        bbox = ax.get_window_extent(renderer)
        assert all(bbox.contains(x, y) for x, y in points)


def test_reliability_diagram_draws_each_non_empty_bin():
    from selectivekit import calibration_bins, expected_calibration_error
    from selectivekit.plotting import plot_reliability

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=500)
    label = rng.integers(0, 3, 500)
    bins = calibration_bins(probs, label, n_bins=10, axis=-1)
    fig = plot_reliability({"model": bins, "other": calibration_bins(probs, label, n_bins=5, axis=-1)})
    top, bottom = fig.axes
    lines = [line for line in top.get_lines() if line.get_label() == "model"]
    full = bins.counts > 0
    np.testing.assert_allclose(lines[0].get_xdata(), bins.mean_confidence[full])
    np.testing.assert_allclose(lines[0].get_ydata(), bins.accuracy[full])
    ece = expected_calibration_error(probs, label, n_bins=10, axis=-1)
    assert f"model: ECE {100 * ece:.2f}%" in top.get_title()
    assert bottom.get_yscale() == "log"
    with pytest.raises(TypeError, match="`bins` must be a CalibrationBins"):
        plot_reliability(3)


def test_budget_plot_draws_the_three_curves_and_checks_lengths(tmp_path):
    from selectivekit.plotting import plot_budget

    budgets = np.linspace(0.0, 10.0, 5)
    voxels, cases, mixed = budgets / 20 + 0.5, budgets / 25 + 0.5, budgets / 20 + 0.52
    fig = plot_budget(budgets, voxels, cases, mixed, unit="minutes", title="budget")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == [
        "check voxels only",
        "open whole cases only",
        "best mix of both",
    ]
    np.testing.assert_allclose(ax.get_lines()[2].get_ydata(), mixed)
    assert ax.get_xlabel() == "expert budget (minutes)"
    fig.savefig(tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="one value per budget"):
        plot_budget(budgets, voxels[:3], cases, mixed)

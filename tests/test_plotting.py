"""Plots render to valid, non-trivial PNGs without touching pyplot's global state."""

from __future__ import annotations

import numpy as np
import pytest

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
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["baseline", "ours"]
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
    assert ax.get_ylabel() == "risk = 1 - mean Dice"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "ours"]
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
        assert a.get_legend() is None and b.get_legend() is None
    assert b.get_ylabel() == "selective risk"
    # mixed inputs are allowed; the axis then keeps the generic label
    ok = pred == label
    mixed = plot_risk_coverage({"dice": dice, "voxel errors": rc.risk_coverage_curve(u, ok)})
    assert mixed.axes[0].get_ylabel() == "selective risk"
    assert len(mixed.axes[0].get_lines()) == 2


def _bar_heights(ax):
    return np.array([patch.get_height() for patch in ax.patches if patch.__class__.__name__ == "Rectangle"])


def test_dice_histogram_one_run(tmp_path):
    pred, label, u = _models()["baseline"]
    (result,) = dice_at_coverage(pred, label, u, [1.0], num_classes=3)
    fig = plot_dice_histogram(result.per_image_dice, title="Per-image Dice")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "per-image Dice" and ax.get_ylabel() == "images"
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
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["coverage 1.00", "coverage 0.90"]
    filled = _bar_heights(ax)
    assert filled.size == 20 and filled.sum() == 30  # the first run as bars, the second as an outline
    np.testing.assert_array_equal(filled, np.histogram(full, bins=np.linspace(0, 1, 21))[0])
    _check_png(fig, tmp_path / "hist2.png")
    # a mapping gives the labels; a plain list of numbers is one run
    fig = plot_dice_histogram({"a": full, "b": lower})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b"]
    fig = plot_dice_histogram([0.5, 0.75, 1.0])
    assert _bar_heights(fig.axes[0]).sum() == 3
    assert _no_pyplot_figures()


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

"""Plots render to valid, non-trivial PNGs without touching pyplot's global state."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import selectivekit.risk_coverage as rc
from selectivekit.plotting import (
    plot_dice_coverage,
    plot_per_image_comparison,
    plot_risk_coverage,
)
from selectivekit.segmentation import (
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


def test_plot_inputs_are_checked():
    with pytest.raises(TypeError, match="`curves`"):
        plot_risk_coverage(42)
    with pytest.raises(ValueError, match="`curves` is empty"):
        plot_dice_coverage({})
    with pytest.raises(TypeError, match="`comparisons`"):
        plot_per_image_comparison([])

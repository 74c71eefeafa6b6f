"""The position-prior-plus-Gaussian-intensity reference classifier against per-voxel loops."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_models.cli import main as cli_main
from reference_models.data.mmwhs import folds_in_order
from reference_models.prior_classifier import fit_prior_classifier, fold_dice


def _tiny_set(seed: int, n: int, shape: tuple[int, ...], num_classes: int):
    """Random images and labels; every class occurs (the first voxels of the first label hold 0..K-1)."""
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, num_classes, shape) for _ in range(n)]
    labels[0].reshape(-1)[:num_classes] = np.arange(num_classes)
    images = [rng.normal(0, 1, shape) + 0.8 * lb for lb in labels]
    return images, labels


def _reference_log_posterior(images, labels, num_classes, alpha, image):
    """The classifier restated voxel by voxel: counts, frequencies, Gaussian fits, posterior."""
    values = {c: [] for c in range(num_classes)}
    for im, lb in zip(images, labels, strict=True):
        for index in np.ndindex(lb.shape):
            values[int(lb[index])].append(float(im[index]))
    mean = {c: sum(v) / len(v) for c, v in values.items()}
    std = {c: math.sqrt(sum((x - mean[c]) ** 2 for x in v) / len(v) + 1e-6) for c, v in values.items()}
    out = np.zeros((num_classes, *image.shape))
    for index in np.ndindex(image.shape):
        for c in range(num_classes):
            count = sum(int(lb[index]) == c for lb in labels)
            prior = (count + alpha) / (len(labels) + num_classes * alpha)
            z = (float(image[index]) - mean[c]) / std[c]
            out[(c, *index)] = math.log(prior) - 0.5 * z * z - math.log(std[c])
    return out


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    shape=st.sampled_from([(3, 4), (2, 3, 4), (4, 1, 3)]),
    num_classes=st.integers(2, 4),
    alpha=st.sampled_from([0.01, 0.5, 2.0]),
)
def test_posterior_matches_a_per_voxel_loop(seed, n, shape, num_classes, alpha):
    images, labels = _tiny_set(seed, n, shape, num_classes)
    model = fit_prior_classifier(images, labels, num_classes, alpha=alpha)
    test_image = np.random.default_rng(seed + 1).normal(0, 1.5, shape)
    expected = _reference_log_posterior(images, labels, num_classes, alpha, test_image)
    np.testing.assert_allclose(model.log_posterior(test_image), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(model.predict(test_image), np.argmax(expected, axis=0))


def test_smoothing_spreads_the_prior_to_neighbours():
    images, labels = _tiny_set(0, 3, (9,), 2)
    for lb in labels:
        lb[:] = 0
        lb[4] = 1
    raw = fit_prior_classifier(images, labels, 2, sigma=0.0)
    smooth = fit_prior_classifier(images, labels, 2, sigma=1.0)
    # raw frequencies: class 1 only at voxel 4; smoothed, its neighbours gain prior mass
    assert raw.log_prior[1, 3] == raw.log_prior[1, 0]
    assert smooth.log_prior[1, 3] > raw.log_prior[1, 3]
    assert smooth.log_prior[1, 4] < raw.log_prior[1, 4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fold_dice_matches_a_direct_dice_loop(seed):
    images, labels = _tiny_set(seed, 8, (4, 3, 3), 3)
    volumes = [
        SimpleNamespace(image=im, label=lb.astype(np.uint8)) for im, lb in zip(images, labels, strict=True)
    ]
    folds = folds_in_order(8)
    table = fold_dice(volumes, folds, 3)
    assert table.shape == (2, 2)
    for k, held in enumerate(folds):
        train = [i for i in range(8) if i not in held]
        model = fit_prior_classifier([images[i] for i in train], [labels[i] for i in train], 3)
        for c in (1, 2):
            scores = []
            for i in held:
                pred, true = model.predict(images[i]) == c, labels[i] == c
                both = int(pred.sum()) + int(true.sum())
                scores.append(1.0 if both == 0 else 2 * int((pred & true).sum()) / both)
            assert table[k, c - 1] == pytest.approx(sum(scores) / len(scores), abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, r"`alpha` must be a finite number > 0, got 0\.0"),
        ({"sigma": -1.0}, r"`sigma` must be a finite number >= 0, got -1\.0"),
        ({"num_classes": 2}, r"`labels\[0\]` must hold classes in \[0, 2\), got 0\.\.2"),
        ({"num_classes": 4}, r"every class at least once; classes \[3\] never occur"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    images, labels = _tiny_set(0, 2, (3, 3), 3)
    options = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_prior_classifier(images, labels, options.pop("num_classes"), **options)


def test_shape_mismatch_and_empty_input_are_named():
    images, labels = _tiny_set(0, 2, (3, 3), 2)
    with pytest.raises(ValueError, match=r"`images\[1\]` has shape \(3, 2\) but `labels\[1\]` has \(3, 3\)"):
        fit_prior_classifier([images[0], images[1][:, :2]], labels, 2)
    with pytest.raises(ValueError, match=r"`images` and `labels` must be non-empty and of equal length"):
        fit_prior_classifier([], [], 2)


def test_cli_needs_data_for_the_real_dataset(capsys):
    assert cli_main(["prior-baseline", "--dataset", "mmwhs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err

"""Patch sampling is a function of (seed, epoch); sliding windows reassemble whole images exactly."""

from __future__ import annotations

import numpy as np
import pytest

from reference_models.data.patches import PatchSampler, authors_crop, authors_training_crops, sliding_window


def _items(rng, shapes, channels=2):
    images = [rng.normal(size=(channels, *s)).astype(np.float32) for s in shapes]
    labels = [rng.integers(0, 3, s).astype(np.uint8) for s in shapes]
    return images, labels


def test_sampler_depends_only_on_seed_and_epoch():
    images, labels = _items(np.random.default_rng(0), [(20, 24), (18, 30)])
    a = PatchSampler(images, labels, (16, 16), 6, seed=3, rotate=True)
    b = PatchSampler(images, labels, (16, 16), 6, seed=3, rotate=True)
    xa, ya = a.epoch(1)
    a.epoch(0)  # drawing another epoch first changes nothing
    xb, yb = b.epoch(1)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert xa.shape == (6, 2, 16, 16) and ya.shape == (6, 16, 16) and ya.dtype == np.int64
    assert not np.array_equal(a.epoch(2)[0], xa)
    assert not np.array_equal(PatchSampler(images, labels, (16, 16), 6, seed=4).epoch(1)[0], xa)


def test_patches_are_crops_of_the_items_with_matching_labels():
    rng = np.random.default_rng(1)
    image = np.arange(2 * 12 * 10, dtype=np.float32).reshape(2, 12, 10)
    label = (image[0] % 3).astype(np.uint8)  # label is a function of the image value
    x, y = PatchSampler([image], [label], (8, 8), 10, seed=0, rotate=True).epoch(0)
    np.testing.assert_array_equal(y, x[:, 0] % 3)
    for patch in x[:, 0]:
        assert set(patch.ravel()) <= set(image[0].ravel())
    del rng


def test_small_items_are_padded_and_foreground_sampling_hits_labels():
    image = np.zeros((1, 6, 40, 40), np.float32)
    label = np.zeros((6, 40, 40), np.uint8)
    label[2, 30:34, 30:34] = 1
    sampler = PatchSampler([image], [label], (8, 8, 8), 8, seed=0, foreground_fraction=1.0)
    x, y = sampler.epoch(0)
    assert x.shape == (8, 1, 8, 8, 8)
    assert all(patch.any() for patch in y)  # every patch is centred on a labelled voxel


@pytest.mark.parametrize("shape", [(21, 35), (8, 8), (5, 30)])
def test_sliding_window_reassembles_the_image(shape):
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, *shape)).astype(np.float32)

    def predict(batch):  # "logits": a per-pixel function of the input, so tiles must agree
        return np.stack([batch[:, 0] * 2, batch[:, 1] - 1, batch[:, 0] + batch[:, 1]], axis=1)

    out = sliding_window(predict, image, (8, 8), num_classes=3, overlap=0.5, batch_size=3)
    expected = predict(image[None])[0]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_authors_crop_uses_the_ground_truth_box():
    image = np.random.default_rng(3).normal(size=(1, 40, 40, 40)).astype(np.float32)
    label = np.zeros((40, 40, 40), np.uint8)
    label[10:30, 5:15, 20:36] = 2
    crop, crop_label = authors_crop(image, label, size=16)
    assert crop.shape == (1, 16, 16, 16) and crop_label.shape == (16, 16, 16)
    assert (crop_label == 2).all()  # the crop is exactly the labelled box: the leak
    np.testing.assert_allclose([crop.mean(), crop.std()], [0, 1], atol=1e-4)  # z-score per crop
    assert len(authors_training_crops(image, label, size=8)) == 27

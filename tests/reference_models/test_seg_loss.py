"""The segmentation term ``ce+dice`` (cross-entropy + soft Dice), both frameworks, against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_models.config import RunConfig
from reference_models.train_torch import CrossEntropyDice


def _reference(logits: np.ndarray, y: np.ndarray, weights: list[float]) -> float:
    """Channels-first logits (B, K, ...), labels (B, ...); float64, written out voxel by voxel."""
    k = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, k).astype(np.float64)
    t = y.reshape(-1)
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    w = np.asarray(weights)[t]
    ce = float((w * -np.log(p[np.arange(len(t)), t])).sum() / w.sum())
    dices = []
    for c in range(1, k):
        overlap = sum(p[i, c] for i in range(len(t)) if t[i] == c)
        dices.append((2 * overlap + 1.0) / (p[:, c].sum() + (t == c).sum() + 1.0))
    return ce + 1.0 - float(np.mean(dices))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5, 6, 3)).astype(np.float32) * 3
    y = rng.integers(0, 4, size=(2, 5, 6, 3))
    y[0, 0] = 0
    return logits, y, [1.0, 2.0, 1.0, 0.5]


def test_torch_ce_dice_matches_reference(batch):
    logits, y, w = batch
    loss = CrossEntropyDice(torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float64)))
    got = loss(torch.from_numpy(logits).double(), torch.from_numpy(y))
    assert float(got) == pytest.approx(_reference(logits, y, w), rel=1e-6)


def test_torch_ce_dice_perfect_prediction_has_dice_zero():
    y = torch.tensor([[0, 1, 2, 2, 1]])
    logits = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).double() * 60.0
    loss = CrossEntropyDice(torch.nn.CrossEntropyLoss())
    assert float(loss(logits, y)) == pytest.approx(0.0, abs=1e-12)


def test_keras_ce_dice_matches_reference(batch):
    pytest.importorskip("keras")
    from reference_models.train_keras import CrossEntropyDice as KerasCEDice

    logits, y, w = batch
    got = KerasCEDice(w)(y, np.moveaxis(logits, 1, -1))
    assert float(np.asarray(got)) == pytest.approx(_reference(logits, y, w), rel=1e-5)


def test_seg_loss_defaults_and_choice():
    assert RunConfig(dataset="synthetic-mmwhs").resolved().seg_loss == "ce+dice"
    assert RunConfig(dataset="synthetic-glas").resolved().seg_loss == "ce"
    assert RunConfig(dataset="synthetic-mmwhs", seg_loss="ce").resolved().seg_loss == "ce"
    with pytest.raises(ValueError, match="`seg_loss`"):
        RunConfig(seg_loss="dice").resolved()
    a = RunConfig(dataset="synthetic-mmwhs").resolved()
    b = RunConfig(dataset="synthetic-mmwhs", seg_loss="ce").resolved()
    assert a.fingerprint("baseline", "fold0") != b.fingerprint("baseline", "fold0")


def test_seg_loss_on_the_command_line():
    from reference_models.cli import build_parser, config_from_args

    args = build_parser().parse_args(["reproduce", "--dataset", "synthetic-mmwhs", "--seg-loss", "ce"])
    assert config_from_args(args).resolved().seg_loss == "ce"
    args = build_parser().parse_args(["reproduce", "--dataset", "synthetic-mmwhs"])
    assert config_from_args(args).resolved().seg_loss == "ce+dice"


def test_fingerprint_of_cross_entropy_runs_is_the_one_from_before_the_option():
    import hashlib
    import json

    cfg = RunConfig(dataset="synthetic-glas").resolved()
    keys = (
        "dataset", "data_dir", "framework", "pairs", "protocol", "width", "batch_size", "seed", "lr",
        "weight", "margin", "patch", "samples_per_epoch", "spacing", "unc_start", "unc_ramp",
        "rank_within", "n_wrong", "n_correct", "slices", "unc_sides", "unc_region", "unc_push",
    )  # fmt: skip
    payload = {k: getattr(cfg, k) for k in keys} | {"kind": "baseline", "run": "glas"}
    old = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.fingerprint("baseline", "glas") == old

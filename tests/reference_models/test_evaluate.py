"""The report entry of one part: per-class Dice at full coverage against a direct loop."""

from __future__ import annotations

import numpy as np
import pytest

from reference_models.evaluate import Prediction, evaluate_part


@pytest.mark.parametrize(("seed", "num_classes"), [(0, 3), (1, 4), (2, 8)])
def test_per_class_dice_matches_a_loop(seed, num_classes):
    rng = np.random.default_rng(seed)
    predictions = []
    for i in range(3):
        label = rng.integers(0, num_classes, (5, 4, 3)).astype(np.uint8)
        pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, num_classes, label.shape))
        pred = pred.astype(np.uint8)
        if i == 0:  # class 1 absent from both label and prediction of one image: its Dice is 1
            label[label == 1] = 0
            pred[pred == 1] = 0
        u = rng.random(label.shape).astype(np.float32)
        predictions.append(Prediction(f"im{i}", "cv", None, pred, label, u))
    entry = evaluate_part(predictions, num_classes).to_json()["dice_per_class_full"]
    assert list(entry) == [str(c) for c in range(1, num_classes)]
    for c in range(1, num_classes):
        scores = []
        for p in predictions:
            a, b = p.pred == c, p.label == c
            total = int(a.sum()) + int(b.sum())
            scores.append(1.0 if total == 0 else 2 * int((a & b).sum()) / total)
        assert entry[str(c)] == pytest.approx(np.mean(scores), abs=1e-12)

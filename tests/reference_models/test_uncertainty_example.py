"""The worked example of the uncertainty guide at a tiny size: it trains, resumes, and its numbers are the
library's on the saved logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")


@pytest.mark.slow
def test_uncertainty_example_at_a_tiny_size_resumes(tmp_path):
    import selectivekit as sk
    from reference_models import uncertainty_example as ex

    base = {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "patch": 32, "width": 0.0625}
    lines = []
    first = ex.run_example(tmp_path, base=base, seeds=(0, 1), echo=lines.append)
    assert sum("trained in" in line for line in lines) == 2
    assert {p.name for p in tmp_path.iterdir()} >= {"uncertainty.json", "uncertainty.md", "reliability.png",
                                                     "dice_coverage.png", "logits"}  # fmt: skip
    lines.clear()
    again = ex.run_example(tmp_path, base=base, seeds=(0, 1), echo=lines.append)
    assert not any("trained in" in line for line in lines)  # resumed from the saved logits
    assert json.dumps(again["ranking"], sort_keys=True) == json.dumps(first["ranking"], sort_keys=True)
    # the ensemble's mutual information row, recomputed here from the saved logits
    models = [ex._load(tmp_path / "logits" / f"seed{s}.npz") for s in (0, 1)]
    part_b = [i for i, (_, _, part) in enumerate(models[0]) if part == ex.EVALUATION_PART]
    maps, preds, labels = [], [], []
    for i in part_b:
        stack = np.stack([ex._softmax(m[i][0]) for m in models])
        r = sk.predictive_uncertainty(stack, axis=0)
        maps.append(r.epistemic)
        preds.append(stack.mean(axis=0).argmax(axis=0))
        labels.append(models[0][i][1])
    want = sk.aurc_dice(preds, labels, maps, num_classes=2)
    assert first["ranking"]["2-model ensemble: mutual-information"]["aurc"] == pytest.approx(want, rel=1e-12)
    assert json.loads((tmp_path / "uncertainty.json").read_text())["evaluation_images"] == len(part_b)

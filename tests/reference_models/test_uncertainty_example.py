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

    # a small synthetic GlaS (default: 24 + 20 images of about 136 x 176, whose evaluation took most of the
    # time); Part A calibrates, Part B is evaluated
    small = {"n_train": 4, "n_test_a": 3, "n_test_b": 4, "height_range": (36, 48), "width_range": (40, 56)}
    base = {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "patch": 32, "width": 0.0625}
    base["extra"] = {"synthetic": small}
    lines = []
    first = ex.run_example(tmp_path, base=base, seeds=(0, 1), echo=lines.append)
    assert sum("trained in" in line for line in lines) == 2
    expected = {
        "uncertainty.json",
        "uncertainty.md",
        "reliability.png",
        "dice_coverage.png",
        "cases.md",
        "logits",
    }
    assert {p.name for p in tmp_path.iterdir()} >= expected
    lines.clear()
    again = ex.run_example(tmp_path, base=base, seeds=(0, 1), echo=lines.append)
    assert not any("trained in" in line for line in lines)  # resumed from the saved logits
    assert json.dumps(again["ranking"], sort_keys=True) == json.dumps(first["ranking"], sort_keys=True)
    # the ensemble's mutual information row, recomputed here from the saved logits
    models = [ex._load(tmp_path / "logits" / f"seed{s}.npz") for s in (0, 1)]
    part_b = [i for i, (_, _, part, _) in enumerate(models[0]) if part == ex.EVALUATION_PART]
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
    # the case section: the case AURC of the mean-foreground score, recomputed from the saved logits
    cases = json.loads((tmp_path / "cases.json").read_text())
    probs = [ex._softmax(z) for z, *_ in models[0]]  # every held-out image
    preds0 = [p.argmax(axis=0) for p in probs]
    maps0 = [sk.max_softmax_uncertainty(p, axis=0) for p in probs]
    labels0 = [y for _, y, *_ in models[0]]
    dice = sk.dice_at_coverage(preds0, labels0, maps0, [1.0], num_classes=2)[0].per_image_dice
    scores = [
        float(m[p > 0].mean()) if (p > 0).any() else float(m.mean())
        for m, p in zip(maps0, preds0, strict=True)
    ]
    want = sk.aurc(np.array(scores), risk=1 - np.asarray(dice))
    assert cases["methods"]["mean-foreground"]["aurc"] == pytest.approx(want, rel=1e-12)
    assert (tmp_path / "budget.png").is_file() and len(cases["referral_order"]) == len(models[0])
    # the same cases through `selectivekit evaluate`: its case section agrees with the analysis
    report = json.loads((tmp_path / "evaluate" / "report.json").read_text())
    assert report["cases"]["aurc"] == pytest.approx(want, rel=1e-6)
    assert report["cases"]["referral_order"] == [row["case"] for row in cases["referral_order"]]
    np.testing.assert_allclose(report["cases"]["budget"]["budgets"][:1], [0.0])
    markdown = (tmp_path / "evaluate" / "report.md").read_text()
    assert "## Which cases first" in markdown and "### One expert budget over cases and voxels" in markdown

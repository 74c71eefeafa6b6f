"""Defects of the streaming accumulators and the torchmetrics metrics found by attacking them.

bfloat16 tensors, merges of different configurations, checkpoints (``state_dict``), the dtype of
``aurc_dice``, colliding coverage keys, and ``None`` passed to ``update``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")

import selectivekit.risk_coverage as rc  # noqa: E402
from selectivekit.adapters.torch_metrics import AURC, SelectiveDice  # noqa: E402
from selectivekit.segmentation import aurc_dice, dice_at_coverage  # noqa: E402
from selectivekit.streaming import RiskCoverageAccumulator, SegmentationAccumulator  # noqa: E402
from tests.test_segmentation import make_images  # noqa: E402

BUDGETS = pytest.mark.parametrize("budget", [1 << 30, 0], ids=["exact", "grid"])


def _risk(seed=0, n=600):
    rng = np.random.default_rng(seed)
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)), torch.as_tensor(rng.random(n) < 0.7)


def _images(seed=0, n_images=3, num_classes=3):
    images = make_images(seed, n_images, num_classes, error_rate=0.3, ndim=2)
    return tuple(torch.as_tensor(np.stack([im[j] for im in images])) for j in range(3))


# ----------------------------------------------------------------------------------------------------
# 5. bfloat16 tensors in the streaming accumulators


@BUDGETS
def test_bfloat16_tensors_in_the_accumulators(budget):
    u, correct = _risk()
    ub = u.to(torch.bfloat16)
    acc = RiskCoverageAccumulator(max_memory=budget)
    acc.update(ub, correct)  # raised "Got unsupported ScalarType BFloat16" inside torch
    ref = rc.aurc(ub.float().numpy(), correct.numpy())  # bfloat16 -> float32 is exact
    assert acc.aurc() == pytest.approx(ref, abs=1e-14)
    acc.update(u.half(), correct)
    pred, label, uu = _images()
    seg = SegmentationAccumulator(num_classes=3, max_memory=budget)
    seg.update(pred[0], label[0], uu[0].to(torch.bfloat16))
    expected = aurc_dice(
        [pred[0].numpy()], [label[0].numpy()], [uu[0].to(torch.bfloat16).float().numpy()], num_classes=3
    )
    assert seg.aurc_dice() == pytest.approx(expected, abs=1e-14)
    metric = SelectiveDice(num_classes=3, max_memory=budget)
    metric.update(pred, label, uu.to(torch.bfloat16))
    aurc_metric = AURC(max_memory=budget)
    aurc_metric.update(ub, correct)
    assert float(aurc_metric.compute()) == pytest.approx(ref, abs=1e-14)


# ----------------------------------------------------------------------------------------------------
# 9. every merge checks the configuration


def test_merge_refuses_other_edges_and_classes():
    u, correct = _risk()
    a, b = AURC(edges=[0.2, 0.5]), AURC(edges=[0.3, 0.5])
    a.update(u, correct)
    b.update(u, correct)
    with pytest.raises(ValueError, match="`incoming_state` must have the same configuration"):
        a.merge_state(b)  # merged silently, with a wrong result
    pred, label, uu = _images(num_classes=4)
    d3, d4 = SelectiveDice(num_classes=3, include_background=True), SelectiveDice(num_classes=4)
    d4.update(pred, label, uu)
    with pytest.raises(ValueError, match="`incoming_state` must have the same configuration"):
        d3.merge_state(d4)  # equal state shapes: merged silently
    with pytest.raises(ValueError, match="`incoming_state` must have the same configuration"):
        SelectiveDice(num_classes=5).merge_state(d4)  # raised a raw torch size error
    with pytest.raises(TypeError, match="`incoming_state` must be a SelectiveDice"):
        d4.merge_state(a)
    with pytest.raises(ValueError, match=r"`incoming_state\['count'\]` must be a tensor of shape"):
        AURC().merge_state({**a.metric_state, "count": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match="`other` must use the same grid"):
        RiskCoverageAccumulator().merge(RiskCoverageAccumulator(grid="float32-24"))
    with pytest.raises(ValueError, match="`other` must evaluate the same classes"):
        SegmentationAccumulator(num_classes=3, include_background=True).merge(
            SegmentationAccumulator(num_classes=4)
        )


@BUDGETS
def test_merge_of_the_same_configuration_equals_one_metric(budget):
    u, correct = _risk(1, 900)
    a, b, one = AURC(max_memory=budget), AURC(max_memory=budget), AURC(max_memory=budget)
    a.update(u[:300], correct[:300])
    b.update(u[300:], correct[300:])
    one.update(u, correct)
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(float(one.compute()), abs=1e-15)
    assert float(a.compute()) == pytest.approx(
        rc.aurc(u.numpy(), correct.numpy()), abs=1e-14 if budget else 1e-2
    )
    assert a.result()["path"] == ("exact" if budget else "grid")


# ----------------------------------------------------------------------------------------------------
# 10. state_dict() restores a checkpointed metric


@BUDGETS
def test_state_dict_round_trip(budget):
    u, correct = _risk(2)
    metric = AURC(max_memory=budget)
    metric.update(u, correct)
    pred, label, uu = _images(2)
    dice = SelectiveDice(num_classes=3, coverages=[1.0, 0.8], max_memory=budget)
    dice.update(pred, label, uu)
    for original, fresh in (
        (metric, AURC(max_memory=budget)),
        (dice, SelectiveDice(num_classes=3, coverages=[1.0, 0.8], max_memory=budget)),
    ):
        assert original.state_dict()  # was empty
        buffer = io.BytesIO()
        torch.save(original.state_dict(), buffer)
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=False))
        before, after = original.compute(), fresh.compute()
        if isinstance(before, dict):
            assert before.keys() == after.keys()
            for key in before:
                assert torch.equal(before[key], after[key]), key
        else:
            assert torch.equal(before, after)
    # a restored metric continues to accumulate
    metric_more = AURC(max_memory=budget)
    metric_more.load_state_dict(metric.state_dict())
    metric_more.update(u, correct)
    both = torch.cat([u, u]).numpy(), torch.cat([correct, correct]).numpy()
    assert float(metric_more.compute()) == pytest.approx(rc.aurc(*both), abs=1e-14 if budget else 1e-2)


def test_state_dict_of_another_configuration_is_refused():
    metric = AURC(edges=[0.5])
    metric.update(*_risk())
    with pytest.raises(ValueError, match="`state_dict` was saved by a AURC of another configuration"):
        AURC(edges=[0.25]).load_state_dict(metric.state_dict())


# ----------------------------------------------------------------------------------------------------
# 11. aurc_dice is float64; colliding coverage keys are refused


@BUDGETS
def test_aurc_dice_is_float64_and_exact_on_the_exact_path(budget):
    pred, label, uu = _images(3)
    metric = SelectiveDice(num_classes=3, coverages=[1.0, 0.9], max_memory=budget)
    metric.update(pred, label, uu)
    out = metric.compute()
    for key, value in out.items():
        assert value.dtype == torch.float64, key  # aurc_dice was float32
    imgs = [x.numpy() for x in pred], [x.numpy() for x in label], [x.numpy() for x in uu]
    if budget:
        assert float(out["aurc_dice"]) == aurc_dice(*imgs, num_classes=3)
        ref = dice_at_coverage(*imgs, [1.0, 0.9], num_classes=3)
        assert float(out["dice@0.9"]) == ref[1].mean
        assert float(out["exact"]) == 1.0
    else:
        assert float(out["aurc_dice_low"]) <= aurc_dice(*imgs, num_classes=3) <= float(out["aurc_dice_high"])
        assert float(out["exact"]) == 0.0


def test_colliding_coverage_keys_are_refused():
    with pytest.raises(ValueError, match="`coverages` must give distinct keys"):
        SelectiveDice(num_classes=3, coverages=[0.9, 0.9000001])
    metric = SelectiveDice(num_classes=3, coverages=[0.9, 0.91])
    metric.update(*_images())
    assert {"dice@0.9", "dice@0.91", "coverage@0.9", "coverage@0.91"} <= set(metric.compute())


# ----------------------------------------------------------------------------------------------------
# 7. None passed to update


def test_none_in_update_names_the_argument():
    u, correct = _risk()
    with pytest.raises(TypeError, match="`uncertainty` must be a tensor or array, got None"):
        AURC().update(None, correct)  # was RuntimeError: Could not infer dtype of NoneType
    with pytest.raises(TypeError, match="pass exactly one of `correct`"):
        AURC().update(u, None)
    pred, label, uu = _images()
    for args, name in (
        ((None, label, uu), "pred"),
        ((pred, None, uu), "label"),
        ((pred, label, None), "uncertainty"),
    ):
        with pytest.raises(TypeError, match=f"`{name}` must be a tensor or array, got None"):
            SelectiveDice(num_classes=3).update(*args)
    with pytest.raises(TypeError, match="`uncertainty` must be an array, got None"):
        RiskCoverageAccumulator().update(None, correct.numpy())

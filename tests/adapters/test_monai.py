"""MONAI conventions, tested with MONAI itself: DiceMetric, LoadImaged labels, AsDiscrete one-hot,
DeepSupervisionLoss."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchmetrics")
monai = pytest.importorskip("monai")

from monai.data import decollate_batch  # noqa: E402
from monai.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402
from monai.metrics import DiceMetric  # noqa: E402
from monai.transforms import AsDiscrete, EnsureChannelFirstd, LoadImaged  # noqa: E402

import selectivekit as sk  # noqa: E402
from selectivekit.adapters.torch import (  # noqa: E402
    SelectiveDice,
    UncertaintyAwareLoss,
    UncertaintyMarginLoss,
)

K = 4


def _images(seed=0, n=5, shape=(6, 7)):
    """Images where class 2 is absent from one label and every evaluated class from another; u on a
    1/32 grid (exact in bfloat16, so the grid metric equals the exact one)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, K, (n, *shape))
    label[0] = 0
    label[1][label[1] == 2] = 1
    pred = np.where(rng.random(label.shape) < 0.3, rng.integers(0, K, label.shape), label)
    pred[0, 0, 0] = 3  # predicted, absent from the label
    u = rng.integers(0, 24, label.shape) / 32.0
    return pred, label, u


def _onehot(x):
    return torch.nn.functional.one_hot(torch.as_tensor(x), K).movedim(-1, 1).double()


MONAI_ATOL = 1e-6  # DiceMetric computes in float32


def _monai_dice(pred, label, ignore_empty):
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=ignore_empty)
    metric(_onehot(pred), _onehot(label))
    return float(metric.aggregate())


# ----------------------------------------------------------------------------------------------------
# ignore_empty: DiceMetric's value at full coverage, and after referral at every threshold


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_equals_monai_dicemetric(ignore_empty):
    pred, label, u = _images()
    ours = sk.dice_at_coverage(pred, label, u, 1.0, num_classes=K, ignore_empty=ignore_empty)[0]
    assert ours.mean == pytest.approx(_monai_dice(pred, label, ignore_empty), abs=MONAI_ATOL)
    # every point of the curve is MONAI's Dice of the prediction after referral at that threshold
    curve = sk.dice_coverage_curve(pred, label, u, num_classes=K, ignore_empty=ignore_empty)
    referred = [_monai_dice(np.where(u <= t, pred, label), label, ignore_empty) for t in curve.threshold]
    np.testing.assert_allclose(curve.mean_dice, referred, rtol=0, atol=MONAI_ATOL)
    # the torchmetrics metric, in two batches, on its exact path and on its grid (max_memory=0)
    area = sk.aurc_dice(pred, label, u, num_classes=K, ignore_empty=ignore_empty)
    for options in ({}, {"max_memory": 0}):
        metric = SelectiveDice(num_classes=K, ignore_empty=ignore_empty, coverages=[1.0], **options)
        for part in (slice(0, 2), slice(2, None)):
            metric.update(torch.as_tensor(pred[part]), torch.as_tensor(label[part]), torch.as_tensor(u[part]))
        out = metric.compute()
        assert float(out["dice@1"]) == pytest.approx(ours.mean, abs=1e-12)
        assert float(out["aurc_dice"]) == pytest.approx(area, abs=1e-12)
        assert float(_scalar_after(metric, pred, label, u, "aurc_dice")) == pytest.approx(area, abs=1e-12)


def _scalar_after(template, pred, label, u, key):
    view = template.scalar(key)
    view.update(torch.as_tensor(pred), torch.as_tensor(label), torch.as_tensor(u))
    return view.compute()


def test_ignore_empty_differs_from_default_and_per_class():
    pred, label, u = _images()
    assert _monai_dice(pred, label, True) != pytest.approx(_monai_dice(pred, label, False))
    per_class = DiceMetric(include_background=False, reduction="mean_batch")
    per_class(_onehot(pred), _onehot(label))
    for options in ({}, {"max_memory": 0}):
        metric = SelectiveDice(num_classes=K, ignore_empty=True, **options)
        metric.update(torch.as_tensor(pred), torch.as_tensor(label), torch.as_tensor(u))
        np.testing.assert_allclose(
            metric.class_dice(1.0).numpy(), per_class.aggregate().numpy(), atol=MONAI_ATOL
        )


# ----------------------------------------------------------------------------------------------------
# float labels as LoadImaged gives them


@pytest.fixture(scope="module")
def loaded_labels(tmp_path_factory):
    """Two label volumes written as NIfTI and read back by LoadImaged + EnsureChannelFirstd (float
    MetaTensors of shape (1, *spatial)), with the integer arrays written."""
    nib = pytest.importorskip("nibabel")
    folder = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(3)
    arrays, loaded = [], []
    load = LoadImaged(keys="label", image_only=True)
    channel = EnsureChannelFirstd(keys="label", channel_dim="no_channel")
    for i in range(2):
        lab = rng.integers(0, K, (5, 6, 4)).astype(np.float32)
        path = folder / f"case{i}.nii.gz"
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(path))
        data = channel(load({"label": str(path)}))
        arrays.append(lab.astype(np.int64))
        loaded.append(data["label"])
    return arrays, loaded


def test_loadimaged_labels_are_float_and_accepted(loaded_labels):
    arrays, loaded = loaded_labels
    target = torch.stack([torch.as_tensor(t) for t in loaded])  # (B, 1, *spatial) float, as a DataLoader
    assert target.is_floating_point() and target.shape == (2, 1, 5, 6, 4)
    ints = torch.as_tensor(np.stack(arrays))[:, None]
    logits = torch.randn(2, K, 5, 6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for loss in (
        UncertaintyMarginLoss(),
        UncertaintyAwareLoss(warmup=0, ramp=0),
        UncertaintyAwareLoss(warmup=0, ramp=0, seg_loss=DiceCELoss(to_onehot_y=True, softmax=True)),
    ):
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        la, lb = loss(a, target), loss(b, ints)
        la.backward()
        lb.backward()
        assert float(la.detach()) == pytest.approx(float(lb.detach()), rel=1e-12)
        torch.testing.assert_close(a.grad, b.grad)
    # SelectiveDice: per-image MetaTensors (channel first) and the stacked batch, against integer labels
    pred = torch.argmax(logits, dim=1, keepdim=True)
    u = torch.round(torch.rand(2, 1, 5, 6, 4, generator=torch.Generator().manual_seed(1)) * 32) / 32
    ref = sk.dice_at_coverage(
        pred[:, 0].numpy(), np.stack(arrays), u[:, 0].numpy(), [1.0, 0.7], num_classes=K
    )
    for lab, p, uu in ((list(loaded), list(pred), list(u)), (target, pred, u)):
        metric = SelectiveDice(num_classes=K, coverages=[1.0, 0.7])
        metric.update(p, lab, uu)
        out = metric.compute()
        assert [float(out["dice@1"]), float(out["dice@0.7"])] == pytest.approx(
            [r.mean for r in ref], abs=1e-12
        )


@pytest.mark.parametrize("bad", [0.5, float("nan")])
def test_float_labels_that_are_not_whole_numbers_raise(bad):
    logits = torch.randn(1, K, 3, 3)
    target = torch.zeros(1, 1, 3, 3)
    target[0, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="`target` holds floating-point"):
        UncertaintyAwareLoss(warmup=0, ramp=0)(logits, target)
    pred = torch.zeros(1, 3, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="`label` holds floating-point"):
        SelectiveDice(num_classes=K).update(pred, target[:, 0], torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match=r"`pred\[0\]` holds floating-point"):
        SelectiveDice(num_classes=K).update([target[0]], [pred], [torch.zeros(1, 3, 3)])


# ----------------------------------------------------------------------------------------------------
# one-hot pred/label from AsDiscrete


def test_asdiscrete_one_hot_equals_class_indices():
    pred_idx, label, u = _images(seed=4)
    probs = torch.softmax(torch.randn(5, K, 6, 7, generator=torch.Generator().manual_seed(2)), dim=1)
    pred_idx = torch.argmax(probs, dim=1).numpy()
    ref = sk.dice_at_coverage(pred_idx, label, u, [1.0, 0.8], num_classes=K, ignore_empty=True)
    # MONAI's post-processing: per image (decollated), channel first
    to_pred, to_label = AsDiscrete(argmax=True, to_onehot=K), AsDiscrete(to_onehot=K)
    preds = [to_pred(p) for p in decollate_batch(probs)]  # (K, H, W) each
    labels = [to_label(lab) for lab in decollate_batch(torch.as_tensor(label)[:, None])]
    us = [torch.as_tensor(x)[None] for x in u]  # (1, H, W): u with its channel axis
    assert preds[0].shape == (K, 6, 7) and labels[0].shape == (K, 6, 7)
    for one_hot in (None, True):
        metric = SelectiveDice(num_classes=K, coverages=[1.0, 0.8], ignore_empty=True, one_hot=one_hot)
        metric.update(preds, labels, us)
        out = metric.compute()
        assert [float(out["dice@1"]), float(out["dice@0.8"])] == pytest.approx(
            [r.mean for r in ref], abs=1e-12
        )
    # stacked one-hot pred with index labels with a channel axis and u without one
    metric = SelectiveDice(num_classes=K, coverages=[1.0, 0.8], ignore_empty=True)
    metric.update(torch.stack(preds), torch.as_tensor(label)[:, None].float(), torch.as_tensor(u))
    assert float(metric.compute()["dice@0.8"]) == pytest.approx(ref[1].mean, abs=1e-12)


def test_one_hot_flag_and_errors():
    u = torch.zeros(2, 3, 3)
    idx = torch.zeros(2, 3, 3, dtype=torch.int64)
    hot = torch.nn.functional.one_hot(idx, K).movedim(-1, 1)
    with pytest.raises(ValueError, match="`pred` must be one-hot"):
        SelectiveDice(num_classes=K, one_hot=True).update(idx, hot, u)
    with pytest.raises(ValueError, match=r"`label` is one-hot .* but not exactly"):
        SelectiveDice(num_classes=K).update(idx, hot * 2, u)
    with pytest.raises(ValueError, match="`label` must have the same shape"):
        SelectiveDice(num_classes=K, one_hot=False).update(idx, hot, u)  # read as indices: wrong shape
    # num_classes=1 (background only): (n, 1, ...) fits both readings
    with pytest.raises(ValueError, match="reads both as one-hot and as class indices"):
        SelectiveDice(num_classes=1, include_background=True).update(idx[:, None], idx[:, None], u)
    metric = SelectiveDice(num_classes=1, include_background=True, one_hot=False, coverages=[1.0])
    metric.update(idx[:, None], idx[:, None], u)
    assert float(metric.compute()["dice@1"]) == 1.0
    with pytest.raises(TypeError, match="`one_hot` must be one of"):
        SelectiveDice(num_classes=K, one_hot="auto")


# ----------------------------------------------------------------------------------------------------
# deep supervision


def _scales(seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = [torch.randn(2, K, 8, 8, generator=g), torch.randn(2, K, 4, 4, generator=g)]
    outputs.append(torch.randn(2, K, 2, 2, generator=g))
    target = torch.randint(0, K, (2, 1, 8, 8), generator=g)
    return outputs, target


@pytest.mark.parametrize("weights", [None, [1.0, 0.25, 0.5]])
def test_inside_monai_deep_supervision_loss_and_with_lists(weights):
    outputs, target = _scales()
    kwargs = {} if weights is None else {"weights": weights}
    monai_loss = DeepSupervisionLoss(UncertaintyAwareLoss(warmup=0, ramp=0, weight=10.0), **kwargs)
    ours = UncertaintyAwareLoss(warmup=0, ramp=0, weight=10.0, scale_weights=weights)
    leaves = [[o.clone().requires_grad_(True) for o in outputs] for _ in range(3)]
    theirs = monai_loss(leaves[0], target.float())  # MONAI's float target, resized by MONAI
    mine = ours(leaves[1], target)  # one target, resized by us
    # a list of targets (as nnU-Net gives them), resized here with MONAI's own rule
    targets = [
        torch.nn.functional.interpolate(target.float(), size=o.shape[2:], mode="nearest-exact")
        for o in outputs
    ]
    listed = ours(leaves[2], targets)
    for loss in (theirs, mine, listed):
        loss.backward()
    assert float(mine.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6)
    assert float(listed.detach()) == pytest.approx(float(theirs.detach()), rel=1e-6)
    for a, b, c in zip(*leaves, strict=True):
        torch.testing.assert_close(b.grad, a.grad)
        torch.testing.assert_close(c.grad, a.grad)
    # the logged terms are the weighted sums of the per-scale terms
    w = weights or [1.0, 0.5, 0.25]
    single = UncertaintyAwareLoss(warmup=0, ramp=0, weight=10.0)
    seg = unc = 0.0
    for wi, o, t in zip(w, outputs, targets, strict=True):
        single(o, t)
        seg += wi * float(single.last_seg_loss)
        unc += wi * float(single.last_unc_loss)
    assert float(ours.last_seg_loss) == pytest.approx(seg, rel=1e-6)
    assert float(ours.last_unc_loss) == pytest.approx(unc, rel=1e-6)


def test_deep_supervision_errors():
    outputs, target = _scales()
    with pytest.raises(ValueError, match="`scale_weights` must have one weight per output"):
        UncertaintyAwareLoss(warmup=0, ramp=0, scale_weights=[1.0, 0.5])(outputs, target)
    with pytest.raises(ValueError, match="`target` must hold one target per output"):
        UncertaintyAwareLoss(warmup=0, ramp=0)(outputs, [target])
    with pytest.raises(TypeError, match="`target` is a list"):
        UncertaintyAwareLoss(warmup=0, ramp=0)(outputs[0], [target])
    with pytest.raises(ValueError, match="`scale_weights` must be a non-empty"):
        UncertaintyAwareLoss(warmup=0, ramp=0, scale_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="`logits` is an empty list"):
        UncertaintyAwareLoss(warmup=0, ramp=0)([], target)

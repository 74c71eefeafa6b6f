"""The margin loss of region (multi-label sigmoid) outputs, ``sigmoid=True``: against a brute-force sum over
every pair of a wrong and a correct (region, voxel) instance, value and gradient, in PyTorch and in the
array-API core; targets, the ignore index, the errors; `UncertaintyAwareLoss` with regions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import selectivekit as sk  # noqa: E402
from selectivekit.adapters.torch import UncertaintyAwareLoss, UncertaintyMarginLoss  # noqa: E402


def _brats_like_batch(seed: int = 0, size: int = 6):
    """Logits (2, 3, size, size, size) of three nested regions (WT, TC, ET) and their 0/1 targets."""
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 3, indexing="ij")
    d = torch.sqrt((z - size / 2) ** 2 + (y - size / 2) ** 2 + (x - size / 2) ** 2)
    target = torch.stack([d < r for r in (2.8, 1.9, 1.1)])[None].repeat(2, 1, 1, 1, 1)
    logits = 3.0 * (target.double() * 2 - 1) + 2.5 * torch.randn(
        target.shape, generator=g, dtype=torch.float64
    )
    return logits.requires_grad_(True), target


def _all_pairs(logits, target, margin, keep=None, reduction="mean"):
    """sum_{j wrong, k correct} max(u_k - u_j + m, 0) over every (batch, region, voxel) instance, written
    out: u = 1 - max(p, 1 - p) with p = sigmoid(z), correct = (p > 0.5) == target."""
    p = torch.sigmoid(logits)
    u = 1 - torch.maximum(p, 1 - p)
    correct = (p > 0.5) == target.bool()
    keep = torch.ones_like(correct) if keep is None else keep
    uw, uc = u[~correct & keep], u[correct & keep]
    d = uc[None, :] - uw[:, None] + margin
    total = torch.where(d > 0, d, torch.zeros_like(d)).sum()
    return total / (uw.numel() * uc.numel()) if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float32], ids=["bool", "int", "float"])
def test_region_loss_is_the_all_pairs_sum_over_regions_and_voxels(reduction, dtype):
    logits, target = _brats_like_batch()
    loss = UncertaintyMarginLoss(0.2, reduction=reduction, sigmoid=True)(logits, target.to(dtype))
    (grad,) = torch.autograd.grad(loss, logits)
    want = _all_pairs(logits, target, 0.2, reduction=reduction)
    (want_grad,) = torch.autograd.grad(want, logits)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    # the array-API core (NumPy here; JAX and CuPy run the same code): the same value
    core = sk.margin_loss_from_logits(
        logits.detach().numpy(),
        target.to(dtype).numpy(),
        axis=1,
        sigmoid=True,
        margin=0.2,
        reduction=reduction,
    )
    assert float(core) == pytest.approx(float(want.detach()), rel=1e-10)


def test_regions_are_ranked_together_not_one_by_one():
    """A wrong pair of one region must rank above the correct pairs of every region."""
    logits = torch.tensor([[[-4.0, 3.0], [0.3, 0.2]]], dtype=torch.float64)  # (1, 2 regions, 2 voxels)
    target = torch.tensor(
        [[[1, 1], [1, 1]]]
    )  # region 0's first voxel is wrong, confidently; the rest correct
    loss = UncertaintyMarginLoss(0.0, reduction="sum", sigmoid=True)(logits, target)
    u = sk.sigmoid_uncertainty_from_logits(logits.numpy())
    wrong = u[0, 0, 0]
    # region 0 alone has one correct pair (u = 0.047) below the wrong one (0.018): its own ranking is loose
    # by 0.029; region 1's correct pairs (0.43, 0.45) count too
    want = sum(max(c - wrong, 0.0) for c in (u[0, 0, 1], u[0, 1, 0], u[0, 1, 1]))
    assert float(loss) == pytest.approx(want, rel=1e-12)


def test_ignored_pairs_take_no_part():
    logits, target = _brats_like_batch(seed=1)
    marked = target.long().clone()
    marked[:, :, :2] = -100  # two slices not annotated, in every region
    keep = marked != -100
    loss = UncertaintyMarginLoss(sigmoid=True)(logits, marked)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, _all_pairs(logits, target, 0.1, keep=keep), rtol=1e-10, atol=1e-12)
    assert torch.all(grad[:, :, :2] == 0)
    core = sk.margin_loss_from_logits(
        logits.detach().numpy(), marked.numpy(), axis=1, sigmoid=True, ignore_index=-100
    )
    assert float(core) == pytest.approx(float(loss.detach()), rel=1e-10)


def test_sigmoid_uncertainty_is_the_two_class_softmax_uncertainty():
    z = torch.linspace(-40, 40, 161, dtype=torch.float64)
    two_classes = torch.stack([torch.zeros_like(z), z])
    torch.testing.assert_close(
        sk.sigmoid_uncertainty_from_logits(z),
        sk.uncertainty_from_logits(two_classes, axis=0),
        rtol=1e-12,
        atol=0,
    )
    assert bool(sk.sigmoid_uncertainty_from_logits(torch.tensor([40.0])) > 0)  # no cancellation in float32


def test_region_targets_are_checked():
    logits, target = _brats_like_batch()
    loss = UncertaintyMarginLoss(sigmoid=True)
    with pytest.raises(ValueError, match=r"must have the shape of `logits` \(2, 3, 6, 6, 6\)"):
        loss(logits, target[:, :1])
    bad = target.long().clone()
    bad[0, 0, 0, 0, 0] = 2
    with pytest.raises(ValueError, match="must hold 0 or 1 or the ignore index -100"):
        loss(logits, bad)
    with pytest.raises(ValueError, match="must be finite"):
        loss(torch.full_like(logits, float("nan")), target)
    with pytest.raises(TypeError, match="`sigmoid` must be True or False"):
        UncertaintyMarginLoss(sigmoid=1)
    assert "sigmoid=True" in repr(loss)


def test_uncertainty_aware_loss_with_regions():
    logits, target = _brats_like_batch(seed=2)
    criterion = UncertaintyAwareLoss(weight=3.0, warmup=0.0, ramp=0.0, sigmoid=True)
    loss = criterion(logits, target.float())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.double())
    torch.testing.assert_close(loss, bce + 3.0 * _all_pairs(logits, target, 0.1), rtol=1e-10, atol=1e-12)
    marked = target.long().clone()
    marked[:, 1:] = -100  # only the whole tumour is annotated
    criterion(logits, marked)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :1], target[:, :1].double())
    torch.testing.assert_close(criterion.last_seg_loss, want.detach(), rtol=1e-10, atol=1e-12)
    # deep supervision: the region targets resized to each output
    low = logits[:, :, ::2, ::2, ::2]
    assert torch.isfinite(criterion([logits, low], target.float()))

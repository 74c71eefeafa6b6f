"""``validate=False`` is an opt-out of the checks, never of memory safety: NaN reaches the exact kernels."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from selectivekit.adapters import torch as skt  # noqa: E402


@pytest.mark.parametrize("where", ["correct", "wrong", "both"])
@pytest.mark.parametrize("n", [64, 5000])
def test_nan_without_validation_gives_nan_loss_not_index_error(where, n):
    g = torch.Generator().manual_seed(n)
    u = torch.rand(n, generator=g)
    correct = torch.rand(n, generator=g) < 0.7
    nan_at = correct if where == "correct" else ~correct if where == "wrong" else torch.ones(n, dtype=bool)
    idx = torch.nonzero(nan_at).reshape(-1)[:3]
    u[idx] = math.nan
    u.requires_grad_()
    loss = skt.uncertainty_margin_loss(u, correct, validate=False)
    assert torch.isnan(loss)
    loss.backward()  # the backward reads in bounds as well
    assert u.grad.shape == u.shape


def test_nan_logits_without_validation_in_the_segmentation_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g) * 3
    logits[0, :, 0, :4] = math.nan
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    loss_fn = skt.UncertaintyAwareLoss(warmup=0, ramp=0, seg_loss=torch.nn.CrossEntropyLoss(), validate=False)
    logits.requires_grad_()
    loss = loss_fn(logits, target)
    assert torch.isnan(loss)
    loss.backward()


def test_bucket_search_maps_nan_queries_in_bounds():
    from selectivekit.adapters import _torch_kernels as kernels

    a = torch.sort(torch.rand(1000, generator=torch.Generator().manual_seed(1)))[0]
    q = torch.tensor([math.nan, -math.inf, math.inf, 0.5, math.nan])
    pos = kernels.bucket_search(a, q, "left")
    assert bool(((pos >= 0) & (pos <= a.numel())).all())
    finite = torch.isfinite(q)
    assert torch.equal(pos[finite], torch.searchsorted(a, q[finite], side="left"))

"""PyTorch adapter of the uncertainty loss: its fast kernels against all-pairs references and the core."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import selectivekit as sk  # noqa: E402
from selectivekit.adapters import _torch_kernels  # noqa: E402
from selectivekit.adapters.torch import (  # noqa: E402
    UncertaintyAwareLoss,
    UncertaintyMarginLoss,
    uncertainty_margin_loss,
)
from selectivekit.loss import uncertainty_margin_loss as core_loss  # noqa: E402
from selectivekit.uncertainty import uncertainty_from_logits  # noqa: E402
from tests.test_loss import GRID_MARGINS, all_pairs_reference, grid_batches  # noqa: E402


def vectorized_all_pairs(u, correct, margin, reduction="sum"):
    """The all-pairs definition as a dense (|W|, |C|) matrix, for sizes a Python loop cannot reach."""
    u = np.asarray(u, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    w_idx, c_idx = np.flatnonzero(~correct), np.flatnonzero(correct)
    d = u[c_idx][None, :] - u[w_idx][:, None] + margin
    active = d > 0
    total = val(d[active].sum())
    grad = np.zeros_like(u)
    grad[c_idx] = active.sum(0)
    grad[w_idx] = -active.sum(1)
    if reduction == "mean" and w_idx.size and c_idx.size:
        total /= w_idx.size * c_idx.size
        grad /= w_idx.size * c_idx.size
    return total, grad


@pytest.fixture(params=["cpu_kernel", "static_kernel"])
def kernel(request, monkeypatch):
    """Run each test with the NumPy CPU kernel and with the static-shape kernel (the CUDA one) on CPU."""
    monkeypatch.setattr(_torch_kernels, "CPU_KERNEL", request.param == "cpu_kernel")
    return request.param


def value_and_grad(u, correct, dtype=torch.float64, **kwargs):
    ut = torch.tensor(u, dtype=dtype, requires_grad=True)
    loss = uncertainty_margin_loss(ut, torch.tensor(correct), **kwargs)
    loss.backward()
    return val(loss.detach()), ut.grad.double().numpy(), loss


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(max_size=60))
def test_exact_equals_all_pairs(kernel, reduction, batch):
    u, correct, margin = batch
    expected, expected_grad = all_pairs_reference(u, correct, margin, reduction)
    value, grad, _ = value_and_grad(u, correct, margin=margin, reduction=reduction)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-12)


@given(
    n=st.integers(300, 3000),
    levels=st.sampled_from([4, 64, 10**6]),
    wrong_rate=st.sampled_from([0.03, 0.5, 0.97]),
    margin=st.sampled_from(GRID_MARGINS),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_equals_all_pairs_large(kernel, n, levels, wrong_rate, margin, seed):
    """Sizes where the bucket table is used, both sides smaller in turn, few to many distinct values."""
    rng = np.random.default_rng(seed)
    u = np.floor(rng.random(n) * levels) / levels  # ties when levels is small; exact in float32
    correct = rng.random(n) >= wrong_rate
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        expected, expected_grad = vectorized_all_pairs(u, correct, margin, "sum")
        value, grad, _ = value_and_grad(u, correct, dtype=dtype, margin=margin, reduction="sum")
        assert value == pytest.approx(expected, rel=rtol, abs=1e-9)
        np.testing.assert_array_equal(grad, expected_grad)  # counts: exact in float32 too


@pytest.mark.parametrize("wrong_rate", [0.03, 0.5, 0.97])
@pytest.mark.parametrize("levels", [4, 10**6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_in_small_chunks_equals_all_pairs(monkeypatch, wrong_rate, levels, dtype):
    """The CPU kernel's chunked passes (compaction, bucket queries, float64 dots, gradient scatter) with
    chunks of a few instances, so that every loop runs many times and ends on a partial chunk; the input
    is read, never written (it is not copied)."""
    monkeypatch.setattr(_torch_kernels, "_MASK_CHUNK", 7)
    monkeypatch.setattr(_torch_kernels, "_QUERY_CHUNK", 5)
    monkeypatch.setattr(_torch_kernels, "_DOT_CHUNK", 3)
    rng = np.random.default_rng(levels + int(100 * wrong_rate))
    n = 1001
    u = np.floor(rng.random(n) * levels) / levels
    correct = rng.random(n) >= wrong_rate
    expected, expected_grad = vectorized_all_pairs(u, correct, 0.1, "sum")
    ut = torch.tensor(u, dtype=dtype, requires_grad=True)
    before = ut.detach().clone()
    loss = uncertainty_margin_loss(ut, torch.tensor(correct), margin=0.1, reduction="sum")
    loss.backward()
    assert val(loss) == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-10, abs=1e-9)
    np.testing.assert_array_equal(ut.grad.double().numpy(), expected_grad)
    assert torch.equal(ut.detach(), before)


@given(
    a=st.lists(st.floats(-1e6, 1e6, width=32), min_size=0, max_size=200),
    q=st.lists(st.floats(-1e7, 1e7, width=32), min_size=1, max_size=200),
    dup=st.integers(0, 5),
    side=st.sampled_from(["left", "right"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_bucket_search_equals_searchsorted(a, q, dup, side, dtype):
    a = np.sort(np.asarray(a + a[:dup] * 3, dtype=dtype))
    q = np.asarray(q + a.tolist()[: len(a) // 2], dtype=dtype)  # queries equal to elements: ties
    at, qt = torch.from_numpy(a), torch.from_numpy(q)
    np.testing.assert_array_equal(
        _torch_kernels.bucket_search(at, qt, side).numpy(), np.searchsorted(a, q, side=side)
    )


@pytest.mark.parametrize("which", ["all_correct", "all_wrong", "mask_empty"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empty_side_gives_zero_with_zero_gradient(kernel, which, reduction):
    u = torch.tensor([0.5, 0.1, 0.9, 0.3], requires_grad=True)
    correct = torch.tensor([which == "all_correct"] * 4)
    mask = torch.zeros(4, dtype=torch.bool) if which == "mask_empty" else None
    if which == "mask_empty":
        correct = torch.tensor([True, False, True, False])
    loss = uncertainty_margin_loss(u, correct, reduction=reduction, mask=mask)
    loss.backward()
    assert val(loss.detach()) == 0.0
    assert torch.all(u.grad == 0)


@given(batch=grid_batches())
def test_mask_and_shapes(kernel, batch):
    u, correct, margin = batch
    mask = np.arange(u.size) % 4 != 2
    expected, expected_grad = all_pairs_reference(u, correct, margin, "mean", mask=mask)
    ut = torch.tensor(u.reshape(1, -1), requires_grad=True)
    loss = uncertainty_margin_loss(
        ut, torch.tensor(correct.reshape(1, -1)), margin=margin, mask=torch.tensor(mask.reshape(1, -1))
    )
    loss.backward()
    assert val(loss.detach()) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(ut.grad.numpy().ravel(), expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(kernel, dtype):
    rng = np.random.default_rng(0)
    u = torch.tensor(rng.random(4000), dtype=torch.float32).to(dtype).requires_grad_(True)
    correct = torch.tensor(rng.random(4000) < 0.9)
    loss = uncertainty_margin_loss(u, correct, reduction="sum")
    loss.backward()
    assert loss.dtype == torch.float32
    assert u.grad.dtype == dtype
    expected, _ = vectorized_all_pairs(u.detach().float().numpy(), correct.numpy(), 0.1)
    assert val(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_agrees_with_core_on_float32(kernel):
    rng = np.random.default_rng(2)
    u = torch.tensor(rng.random(20000), dtype=torch.float32)
    correct = torch.tensor(rng.random(20000) < 0.95)
    for reduction in ("sum", "mean"):
        ours = uncertainty_margin_loss(u, correct, reduction=reduction)
        core = core_loss(u.double(), correct, reduction=reduction)
        assert val(ours) == pytest.approx(val(core), rel=1e-5)


# --- sampled ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@given(batch=grid_batches(), seed=st.integers(0, 1000))
def test_sampled_with_caps_above_sizes_equals_exact(reduction, batch, seed):
    u, correct, margin = batch
    exact, exact_grad, _ = value_and_grad(u, correct, margin=margin, reduction=reduction)
    kwargs = {"pairs": "sampled", "n_wrong": u.size, "n_correct": u.size, "seed": seed}
    value, grad, _ = value_and_grad(u, correct, margin=margin, reduction=reduction, **kwargs)
    assert value == pytest.approx(exact, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-12, atol=1e-12)


def test_sampled_is_reproducible_and_module_advances_its_generator():
    rng = np.random.default_rng(0)
    u = torch.tensor(rng.random(500))
    correct = torch.tensor(rng.random(500) < 0.8)
    kwargs = {"pairs": "sampled", "n_wrong": 5, "n_correct": 30}
    a = uncertainty_margin_loss(u, correct, seed=3, **kwargs)
    b = uncertainty_margin_loss(u, correct, seed=torch.Generator().manual_seed(3), **kwargs)
    assert val(a) == val(b)
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 3, (2, 50), generator=torch.Generator().manual_seed(2))
    first = UncertaintyMarginLoss(seed=7, **kwargs)
    second = UncertaintyMarginLoss(seed=7, **kwargs)
    run1 = [val(first(logits, target)) for _ in range(3)]
    run2 = [val(second(logits, target)) for _ in range(3)]
    assert run1 == run2
    assert len(set(run1)) > 1


# --- modules ---------------------------------------------------------------------------------------------


def val(t) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def make_logits(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


def core_reference(logits, labels, mask, margin=0.1, reduction="mean"):
    """The core loss on u from the core helper: value and gradient with respect to the logits."""
    leaf = logits.detach().clone().requires_grad_(True)
    u = uncertainty_from_logits(leaf, axis=1)
    correct = torch.argmax(leaf, 1) == labels
    loss = core_loss(u, correct, margin=margin, reduction=reduction, mask=mask)
    loss.backward()
    return val(loss.detach()), leaf.grad


@given(
    shape=st.sampled_from([(2, 3, 5), (2, 4, 3, 3), (1, 2, 2, 2, 3)]),
    seed=st.integers(0, 100),
    margin=st.sampled_from([0.0, 0.1, 0.5]),
    reduction=st.sampled_from(["mean", "sum"]),
)
def test_module_agrees_with_core(shape, seed, margin, reduction):
    logits = make_logits(shape, seed)
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    labels[0, 0] = -100  # ignored
    mask = labels != -100
    expected, expected_grad = core_reference(logits, labels, mask, margin, reduction)
    # the core reference is the plain gradient of u: the paper's push
    loss = UncertaintyMarginLoss(margin, reduction=reduction, push="uniform")(logits, labels)
    loss.backward()
    assert val(loss.detach()) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(logits.grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_module_target_layouts_agree():
    logits = make_logits((2, 4, 6, 6), 3)
    labels = torch.randint(0, 4, (2, 6, 6), generator=torch.Generator().manual_seed(4))
    module = UncertaintyMarginLoss()
    by_index = module(logits, labels)
    by_channel = module(logits, labels[:, None])
    one_hot = torch.nn.functional.one_hot(labels, 4).movedim(-1, 1)
    by_one_hot = module(logits, one_hot)
    assert val(by_index) == val(by_channel) == val(by_one_hot)
    # an all-zero one-hot row is ignored, like ignore_index
    one_hot[0, :, 0, 0] = 0
    labels_ignored = labels.clone()
    labels_ignored[0, 0, 0] = -100
    assert val(module(logits, one_hot)) == val(module(logits, labels_ignored))


def test_aware_loss_is_seg_plus_weight_times_unc():
    logits = make_logits((2, 3, 4, 4), 5)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(6))
    labels[1, 1, 1] = -100
    criterion = UncertaintyAwareLoss(weight=2000.0, margin=0.1, setting="authors")
    loss = criterion(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    unc = UncertaintyMarginLoss(0.1)(logits, labels)
    assert val(loss) == pytest.approx(val(ce + 2000.0 * unc), rel=1e-12)
    assert val(criterion.last_seg_loss) == pytest.approx(val(ce), rel=1e-12)
    assert val(criterion.last_unc_loss) == pytest.approx(val(unc), rel=1e-12)
    assert not criterion.last_seg_loss.requires_grad and not criterion.last_unc_loss.requires_grad
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_aware_loss_one_hot_and_custom_seg_loss():
    logits = make_logits((2, 3, 4, 4), 7)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(8))
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1)
    default = UncertaintyAwareLoss(warmup=0, ramp=0)
    assert val(default(logits, one_hot)) == pytest.approx(val(default(logits, labels)), rel=1e-12)
    seen = []

    def dice_like(x, y):
        seen.append(tuple(y.shape))
        return (x.softmax(1) * y).mean()

    custom = UncertaintyAwareLoss(dice_like, weight=3.0, warmup=0, ramp=0)
    value = custom(logits, one_hot)
    assert seen == [tuple(one_hot.shape)]  # the custom loss gets the target as given
    expected = dice_like(logits, one_hot) + 3.0 * UncertaintyMarginLoss()(logits, one_hot)
    assert val(value) == pytest.approx(val(expected), rel=1e-12)


def test_module_under_autocast_and_training_step():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 4, 3, padding=1)
    x = torch.randn(2, 2, 6, 6, 6)
    y = torch.randint(0, 4, (2, 6, 6, 6))
    criterion = UncertaintyAwareLoss(warmup=0, ramp=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
        assert logits.dtype == torch.bfloat16
        loss = criterion(logits, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert torch.isfinite(criterion.last_unc_loss)


# dynamo's own notes: about array_api_compat's cached helpers (UserWarning) and, while tracing, about
# instantiating the autograd.Function class internally (DeprecationWarning raised inside torch)
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_torch_compile_aot_eager():
    """torch.compile traces the module; data-dependent parts (validation, the CPU kernel) graph-break."""
    logits = make_logits((2, 3, 4, 4), 9)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(10))
    criterion = UncertaintyAwareLoss(warmup=0, ramp=0)
    expected = criterion(logits, labels)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    compiled = torch.compile(criterion, backend="aot_eager")
    got = compiled(logits, labels)
    (grad,) = torch.autograd.grad(got, logits)
    assert val(got.detach()) == pytest.approx(val(expected.detach()), rel=1e-12)
    torch.testing.assert_close(grad, grad_expected)


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_functional_rejects_bad_inputs():
    u = torch.tensor([0.1, float("nan"), 0.3])
    correct = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="`uncertainty` must be finite"):
        uncertainty_margin_loss(u, correct)
    with pytest.raises(ValueError, match="`correct` must have the same shape"):
        uncertainty_margin_loss(torch.zeros(3), correct[:2])
    with pytest.raises(ValueError, match="`correct` must be boolean or hold only 0 and 1"):
        uncertainty_margin_loss(torch.zeros(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        uncertainty_margin_loss(torch.zeros(3), correct, margin=-1.0)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        uncertainty_margin_loss(torch.zeros(3), correct, reduction="none")
    with pytest.raises(ValueError, match="`pairs` must be one of"):
        uncertainty_margin_loss(torch.zeros(3), correct, pairs="some")
    with pytest.raises(TypeError, match=r"`uncertainty` must be a torch\.Tensor"):
        uncertainty_margin_loss(np.zeros(3), correct)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        uncertainty_margin_loss(torch.zeros(3), correct, pairs="sampled", seed="x")


def test_validate_false_skips_only_the_value_checks():
    u = torch.tensor([0.1, float("nan"), 0.3])
    correct = torch.tensor([True, False, True])
    uncertainty_margin_loss(u, correct, validate=False)  # no read, no error
    with pytest.raises(ValueError, match="`correct` must have the same shape"):
        uncertainty_margin_loss(u, correct[:2], validate=False)


def test_module_rejects_bad_targets():
    logits = torch.randn(2, 3, 4)
    module = UncertaintyMarginLoss()
    with pytest.raises(ValueError, match=r"`target` must hold class indices in \[0, 3\)"):
        module(logits, torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="`target` must have shape"):
        module(logits, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="`target` must hold integer class indices"):
        module(logits, torch.zeros(2, 4, dtype=torch.bool))
    # float targets are class indices when they are whole numbers (MONAI labels: see test_monai.py)
    with pytest.raises(ValueError, match="`target` holds floating-point class indices that are not whole"):
        module(logits, torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="`logits` must be a tensor of shape"):
        module(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`logits` must be finite"):
        module(torch.full((2, 3, 4), float("nan")), torch.zeros(2, 4, dtype=torch.long))
    one_hot = torch.nn.functional.one_hot(torch.zeros(2, 4, dtype=torch.long), 3).permute(0, 2, 1)
    with pytest.raises(ValueError, match="`logits` must be finite"):
        module(torch.full((2, 3, 4), float("inf")), one_hot)


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        UncertaintyMarginLoss(float("inf"))
    with pytest.raises(ValueError, match="`weight` must be a finite number >= 0"):
        UncertaintyAwareLoss(weight=-1.0)
    with pytest.raises(TypeError, match="`seg_loss` must be callable"):
        UncertaintyAwareLoss(seg_loss="ce")
    with pytest.raises(ValueError, match="`n_wrong` must be >= 1"):
        UncertaintyAwareLoss(n_wrong=0)


def test_aware_loss_composes_one_margin_loss():
    from selectivekit.loss import MarginLossOptions

    logits = make_logits((2, 3, 5), 3)
    target = torch.randint(0, 3, (2, 5), generator=torch.Generator().manual_seed(4))
    options = MarginLossOptions(margin=0.3, reduction="sum")
    by_keywords = UncertaintyAwareLoss(weight=2.0, warmup=0, ramp=0, margin=0.3, reduction="sum")
    composed = UncertaintyAwareLoss(
        weight=2.0, warmup=0, ramp=0, margin_loss=UncertaintyMarginLoss(options=options)
    )
    assert by_keywords.unc_loss.options == composed.unc_loss.options == options
    assert val(by_keywords(logits, target)) == val(composed(logits, target))
    ignoring = UncertaintyAwareLoss(margin_loss=UncertaintyMarginLoss(ignore_index=7))
    assert ignoring.seg_loss.ignore_index == 7  # the default cross-entropy follows the margin loss
    with pytest.raises(TypeError, match="give `margin_loss` or its options"):
        UncertaintyAwareLoss(margin_loss=UncertaintyMarginLoss(), margin=0.2)
    with pytest.raises(TypeError, match="`margin_loss` must be a UncertaintyMarginLoss"):
        UncertaintyAwareLoss(margin_loss=torch.nn.CrossEntropyLoss())
    with pytest.raises(TypeError, match="unknown option"):
        UncertaintyMarginLoss(marginn=0.2)


def test_sampled_seed_none_follows_torch_manual_seed_and_generators_advance():
    u = torch.tensor(np.random.default_rng(1).random(300))
    correct = torch.tensor(np.random.default_rng(2).random(300) < 0.7)
    kwargs = {"pairs": "sampled", "n_wrong": 4, "n_correct": 9}
    torch.manual_seed(5)
    first = [val(uncertainty_margin_loss(u, correct, **kwargs)) for _ in range(3)]
    torch.manual_seed(5)
    again = [val(uncertainty_margin_loss(u, correct, **kwargs)) for _ in range(3)]
    assert first == again and len(set(first)) > 1
    g, h = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    run_g = [val(uncertainty_margin_loss(u, correct, seed=g, **kwargs)) for _ in range(3)]
    run_h = [val(uncertainty_margin_loss(u, correct, seed=h, **kwargs)) for _ in range(3)]
    assert run_g == run_h and len(set(run_g)) > 1
    assert run_g[0] == val(uncertainty_margin_loss(u, correct, seed=8, **kwargs))


def test_exact_loss_backward_twice_with_retain_graph():
    """A gradient probe (``autograd.grad(..., retain_graph=True)``) and then ``backward`` give the same."""
    from selectivekit.adapters.torch import UncertaintyMarginLoss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (64,), generator=gen)
    loss = UncertaintyMarginLoss(0.1)(logits, y)
    (probe,) = torch.autograd.grad(loss, logits, retain_graph=True)
    loss.backward()
    torch.testing.assert_close(logits.grad, probe)
    assert probe.abs().sum() > 0


# --- every target ignored; one-hot targets checked ----------------------------------------------------------


@pytest.mark.parametrize("target_shape", [(2, 5), (2, 1, 5)], ids=["indices", "indices_with_axis"])
def test_aware_loss_all_ignored_is_zero_with_zero_gradient(target_shape):
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.full(target_shape, -100)
    loss = UncertaintyAwareLoss(warmup=0, ramp=0)(logits, target)  # the weight from the first step
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_aware_loss_partly_ignored_unchanged():
    """One labelled voxel: the loss is still cross-entropy over the labelled voxels + weight * margin loss."""
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.full((2, 5), 7)
    target[0, 2], target[1, 4] = 1, 0
    crit = UncertaintyAwareLoss(ignore_index=7, weight=3.0, warmup=0, ramp=0)
    got = crit(logits, target)
    keep = target != 7
    flat = logits.permute(0, 2, 1)[keep]
    ce = -torch.log_softmax(flat, dim=1)[torch.arange(2), target[keep]].mean()
    u = sk.uncertainty_from_logits(logits, axis=1)
    correct = logits.argmax(1) == target
    unc = sk.uncertainty_margin_loss(u, correct, mask=keep)
    torch.testing.assert_close(got, ce + 3.0 * unc)


def test_one_hot_target_negative_or_nan_rejected():
    logits = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    for bad in (-1.0, math.nan):
        target = torch.zeros(1, 3, 4)
        target[0, 0] = 1.0
        target[0, 1, 2] = bad
        with pytest.raises(ValueError, match=r"`target` .*one-hot.* finite values >= 0"):
            UncertaintyMarginLoss()(logits, target)
    # a valid one-hot target (with an all-zero, ignored voxel) still works
    target = torch.zeros(1, 3, 4)
    target[0, 0, :3] = 1.0
    assert torch.isfinite(UncertaintyMarginLoss()(logits, target))

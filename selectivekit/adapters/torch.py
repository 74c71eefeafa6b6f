"""PyTorch losses: the uncertainty-aware margin ranking loss (SPEC section 6) with a fast exact kernel.

- :func:`uncertainty_margin_loss`: functional, for a ``u`` you computed yourself (MC dropout, ensembles).
- :class:`UncertaintyMarginLoss`: ``forward(logits, target)``, ``u = 1 - max softmax`` and correctness from
  the argmax, ``ignore_index``.
- :class:`UncertaintyAwareLoss`: ``L_seg + weight * L_unc`` (eq. 3 of the paper), the two terms kept for
  logging.

The exact path is a :class:`torch.autograd.Function` with the closed-form backward of
:func:`selectivekit.loss.uncertainty_margin_loss` (same formula: ``L_sum = sum_k cnt_k v_k - S_k`` over
correct ``k`` with ``v_k = u_k + m``, ``cnt_k = #{wrong j : u_j < v_k}``, ``S_k`` their sum of ``u_j``):

- on CPU it sorts only the smaller side and locates every instance of the other side in it with a bucket
  table over the sorted side's value range (exact: the bucket function is monotone, so only values that
  share a bucket need comparing; crowded buckets fall back to a binary search). The gradient is
  ``+cnt_k`` for correct ``k`` and ``-#{k : v_k > u_j}`` for wrong ``j``, counted with one ``bincount``.
- on other devices (CUDA) it uses static shapes only: one sort of the batch (non-wrong instances as
  ``+inf``), one ``searchsorted``, prefix sums, ``scatter_add`` for the counts. Nothing reads back to the
  host, so it does not synchronise (checked by ``benchmarks/bench_loss.py --device cuda``).

Prefix sums and the per-instance terms are accumulated in float64 (float32 on MPS); the loss is returned in
float32 (float64 for float64 input). Half-precision and bfloat16 ``u`` are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xpt
import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._validation import check_margin
from ..loss import check_loss_options, validate_loss_inputs
from ..uncertainty import uncertainty_from_logits
from .torch_metrics import AURC, SelectiveDice  # the metrics live beside the losses, one import away

__all__ = [
    "AURC",
    "SelectiveDice",
    "UncertaintyAwareLoss",
    "UncertaintyMarginLoss",
    "uncertainty_margin_loss",
]


#: Use the compacting kernel for CPU tensors (tests set it to False to run the static kernel on CPU).
_CPU_KERNEL = True


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# --- CPU kernel: compact, sort the smaller side, locate the other side with a bucket table -----------------


def _bucket_search(a: torch.Tensor, q: torch.Tensor, side: str) -> torch.Tensor:
    """``torch.searchsorted(a, q, side=side)`` for sorted 1-D float ``a``, exactly, mostly without a search.

    ``b(x) = clamp((x - a[0]) * scale, 0, nb - 1)`` truncated to an integer is computed with the same float
    operations for ``a`` and ``q``, and every step (subtraction, multiplication by a constant >= 0, clamp,
    truncation of a non-negative value) is monotone under IEEE rounding, so ``b`` is non-decreasing:
    elements of ``a`` in lower buckets than ``b(q)`` are ``< q`` and those in higher buckets are ``> q``.
    Only the elements in ``q``'s own bucket need a comparison. With ``4 len(a)`` buckets most hold at most
    one element; one table lookup gives the bucket's start and its single element (``+inf`` when empty,
    NaN when crowded), and only queries that land in a crowded bucket (two or more elements, e.g. ties)
    get a real binary search. A binary search costs ~40 ns a query on CPU; the table lookup is a gather.
    Returns int64 positions. ``a`` and ``q`` share a float dtype and live on the CPU.
    """
    m = a.numel()
    if m == 0:
        return torch.zeros(q.shape, dtype=torch.int64)
    lo = float(a[0])  # CPU tensors: no device to synchronise with
    nb = 4 * m
    span = float(a[-1]) - lo
    scale = float(torch.tensor(nb / span if span > 0 else 0.0, dtype=a.dtype))  # as the kernels see it
    if not (math.isfinite(scale) and scale > 0) or m >= 2**29:
        return torch.searchsorted(a, q, side=side)

    def bucket(x: torch.Tensor) -> torch.Tensor:
        # float clamp keeps the value finite; the integer clamp fixes nb - 1 rounding up in float32
        return ((x - lo) * scale).clamp_(0, nb - 1).to(torch.int64).clamp_(max=nb - 1)

    ba = bucket(a)
    counts = torch.bincount(ba, minlength=nb)
    starts = torch.cumsum(counts, 0) - counts
    first = torch.full((nb,), math.inf, dtype=a.dtype)  # an empty bucket adds nothing
    run_start = torch.ones(m, dtype=torch.bool)
    run_start[1:] = ba[1:] != ba[:-1]
    first[ba[run_start]] = a[run_start]
    first[counts > 1] = math.nan  # crowded: searched below
    bq = bucket(q)
    if a.dtype == torch.float32:  # one 8-byte lookup gives both: (float bits, start) pairs
        packed = torch.stack([first.view(torch.int32), starts.to(torch.int32)], 1).view(torch.int64)
        hit = torch.index_select(packed.reshape(-1), 0, bq).view(torch.int32).reshape(-1, 2)
        fq, pos = hit[:, 0].view(torch.float32), hit[:, 1]
    else:
        fq, pos = torch.index_select(first, 0, bq), torch.index_select(starts, 0, bq)
    pos = (pos + ((fq < q) if side == "left" else (fq <= q))).to(torch.int64)
    crowded = torch.isnan(fq).nonzero().reshape(-1)
    if crowded.numel():
        pos[crowded] = torch.searchsorted(a, q[crowded], side=side)
    return pos


def _sort(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and order of a CPU tensor; NumPy's SIMD argsort is several times faster than ``torch.sort``."""
    order = torch.from_numpy(np.argsort(x.numpy()))
    return x[order], order


def _exact_cpu_forward(u: torch.Tensor, is_c: torch.Tensor, is_w: torch.Tensor, margin: float):
    """``L_sum`` (a float64 tensor) and what the backward needs; data-dependent shapes (CPU only)."""
    uw = u[is_w]
    vc = u[is_c] + margin
    n_w, n_c = uw.numel(), vc.numel()
    state = {"n_w": n_w, "n_c": n_c}
    if n_w == 0 or n_c == 0:
        return torch.zeros((), dtype=torch.float64), state
    if n_w <= n_c:  # sort the wrong side; cnt_k = #{u_j < v_k} for every correct k
        ws, order = _sort(uw)
        cnt = _bucket_search(ws, vc, "left")
        hist = torch.bincount(cnt, minlength=n_w + 1)  # hist[r] = #{k : cnt_k = r}
        prefix = torch.zeros(n_w + 1, dtype=torch.float64)
        torch.cumsum(ws.double(), 0, out=prefix[1:])
        # sum_k (cnt_k v_k - S_k), with sum_k S_k = sum_r hist[r] prefix[r]
        total = torch.dot(cnt.double(), vc.double()) - torch.dot(hist.double(), prefix)
        state.update(side="wrong", order=order, cnt=cnt, hist=hist)
    else:  # sort the correct side; a_j = #{v_k > u_j} for every wrong j
        cs, order = _sort(vc)
        pos = _bucket_search(cs, uw, "right")  # #{v_k <= u_j}
        suffix = torch.zeros(n_c + 1, dtype=torch.float64)
        torch.cumsum(cs.double(), 0, out=suffix[1:])
        total = ((suffix[-1] - suffix[pos]) - (n_c - pos) * uw.double()).sum()
        state.update(side="correct", order=order, pos=pos)
    return total, state


def _exact_cpu_backward(state: dict, is_c: torch.Tensor, is_w: torch.Tensor, dtype: torch.dtype):
    """The all-pairs gradient of ``L_sum`` as counts: +#active pairs (correct), -#active pairs (wrong)."""
    grad = torch.zeros(is_c.shape, dtype=dtype)
    n_w, n_c = state["n_w"], state["n_c"]
    if n_w == 0 or n_c == 0:
        return grad
    order = state["order"]
    if state["side"] == "wrong":
        grad.masked_scatter_(is_c, state["cnt"].to(dtype))
        at_most = torch.cumsum(state["hist"], 0)[:n_w]  # #{k : cnt_k <= r}
        from_wrong = torch.empty(n_w, dtype=dtype)
        from_wrong[order] = (at_most - n_c).to(dtype)  # sorted wrong r is active with k iff cnt_k >= r + 1
        grad.masked_scatter_(is_w, from_wrong)
    else:
        pos = state["pos"]
        grad.masked_scatter_(is_w, (pos - n_c).to(dtype))
        at_most = torch.cumsum(torch.bincount(pos, minlength=n_c + 1), 0)[:n_c]  # #{j : pos_j <= r}
        from_correct = torch.empty(n_c, dtype=dtype)
        from_correct[order] = at_most.to(dtype)  # sorted correct r is active with j iff pos_j <= r
        grad.masked_scatter_(is_c, from_correct)
    return grad


# --- static-shape kernel (CUDA and other devices: no host synchronisation) ---------------------------------


def _exact_static_forward(u: torch.Tensor, is_c: torch.Tensor, is_w: torch.Tensor, margin: float):
    acc = _acc_dtype(u.device)
    ws, order = torch.sort(torch.where(is_w, u, math.inf))  # the wrong values first, then +inf
    v = u + margin
    cnt = torch.searchsorted(ws, v, side="left")  # #{u_j < v_k}: tied pairs are not active
    finite = torch.where(torch.isfinite(ws), ws, 0.0).to(acc)
    prefix = torch.cat([finite.new_zeros(1), torch.cumsum(finite, 0)])
    per_correct = cnt.to(acc) * v.to(acc) - prefix[cnt]
    total = torch.where(is_c, per_correct, 0.0).sum()
    return total, (order, cnt)


def _exact_static_backward(saved, is_c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    order, cnt = saved
    n = cnt.numel()
    grad = torch.where(is_c, cnt, 0).to(dtype)
    hist = torch.zeros(n + 1, dtype=torch.int64, device=cnt.device)
    hist.scatter_add_(0, cnt, is_c.to(torch.int64))
    at_most = torch.cumsum(hist, 0)[:n]  # #{k : cnt_k <= r}
    # sorted position r is active with #{k : cnt_k >= r + 1} correct instances (0 past the wrong ones)
    from_wrong = torch.empty_like(grad)
    from_wrong[order] = (at_most - at_most[-1:]).to(dtype)
    return grad + from_wrong


class _ExactMarginLoss(torch.autograd.Function):
    """``L_sum`` (or ``L_mean``) over all pairs, with the closed-form backward."""

    @staticmethod
    def forward(ctx, u, is_c, is_w, margin, mean):
        ctx.mean = mean
        if u.device.type == "cpu" and _CPU_KERNEL:
            total, state = _exact_cpu_forward(u, is_c, is_w, margin)
            n_pairs = state["n_w"] * state["n_c"]
            ctx.cpu_state = state
            ctx.scale = 1.0 / n_pairs if (mean and n_pairs) else 1.0
            ctx.save_for_backward(is_c, is_w)
            return (total * ctx.scale).to(u.dtype)
        total, saved = _exact_static_forward(u, is_c, is_w, margin)
        n_pairs = is_w.sum().to(total.dtype) * is_c.sum().to(total.dtype)
        scale = 1.0 / torch.clamp(n_pairs, min=1.0) if mean else torch.ones_like(n_pairs)
        ctx.static_saved = saved
        ctx.save_for_backward(is_c, scale)
        return (total * scale).to(u.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if hasattr(ctx, "cpu_state"):
            is_c, is_w = ctx.saved_tensors
            counts = _exact_cpu_backward(ctx.cpu_state, is_c, is_w, grad_output.dtype)
            return counts * (grad_output * ctx.scale), None, None, None, None
        is_c, scale = ctx.saved_tensors
        counts = _exact_static_backward(ctx.static_saved, is_c, grad_output.dtype)
        return counts * (grad_output * scale).to(grad_output.dtype), None, None, None, None


def _sampled(u, is_c, is_w, margin, n_wrong, n_correct, generator, mean):
    """The authors' estimator: ``randperm`` without replacement on each side, every pair between samples."""
    idx_w = torch.nonzero(is_w).reshape(-1)
    idx_c = torch.nonzero(is_c).reshape(-1)
    n_w, n_c = idx_w.numel(), idx_c.numel()
    zero = (u * 0.0).sum()  # keeps the graph: a zero gradient
    if n_w == 0 or n_c == 0:
        return zero
    pick_w = idx_w[torch.randperm(n_w, generator=generator, device=u.device)[:n_wrong]]
    pick_c = idx_c[torch.randperm(n_c, generator=generator, device=u.device)[:n_correct]]
    d = u[pick_c][None, :] - u[pick_w][:, None] + margin
    total = torch.where(d > 0, d, 0.0).sum()  # where, not relu/maximum: zero gradient at ties
    n_pairs = pick_w.numel() * pick_c.numel()
    return total / n_pairs if mean else total * (n_w * n_c / n_pairs)


def _generator(seed: Any, device: torch.device) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"`seed` must be an int, a torch.Generator or None, got {type(seed).__name__}."
        raise TypeError(msg)
    return torch.Generator(device=device).manual_seed(seed)


def uncertainty_margin_loss(
    uncertainty: torch.Tensor,
    correct: torch.Tensor,
    /,
    *,
    margin: float = 0.1,
    reduction: str = "mean",
    pairs: str = "exact",
    n_wrong: int = 300,
    n_correct: int = 6600,
    seed: int | torch.Generator | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Margin ranking loss between every wrong and every correct instance, for PyTorch tensors.

    Same definition, options and errors as :func:`selectivekit.uncertainty_margin_loss` (lower is
    better): ``L_sum = sum_{j in W, k in C} max(u_k - u_j + margin, 0)``, ``"mean"`` divides by
    ``|W| |C|``. The exact path is a fast kernel with a closed-form backward (module docstring).

    Parameters
    ----------
    uncertainty : Tensor of any shape
        Per-instance uncertainty, finite; gradients flow into it on both sides. float16/bfloat16 are
        computed in float32.
    correct : Tensor of the same shape
        Boolean (or 0/1): whether the prediction is correct. No gradient.
    margin, reduction, pairs, n_wrong, n_correct, mask
        As in :func:`selectivekit.uncertainty_margin_loss`.
    seed : int, torch.Generator or None
        Randomness of ``pairs="sampled"`` (``torch.randperm`` on the tensor's device, as the authors'
        code); ``None`` uses the global torch RNG.
    validate : bool, default True
        Check for NaN/inf in ``uncertainty`` and a ``correct`` that is not 0/1. This reads one boolean back
        from the device; ``validate=False`` skips it (shapes and dtypes are always checked), so the exact
        path never synchronises with the host on CUDA.

    Returns
    -------
    Tensor
        0-d, float32 (float64 for float64 input), on the input's device.

    Examples
    --------
    >>> import torch
    >>> u = torch.tensor([0.25, 0.5, 0.75, 0.0], requires_grad=True)
    >>> correct = torch.tensor([True, True, False, False])
    >>> loss = uncertainty_margin_loss(u, correct, margin=0.25, reduction="sum")
    >>> loss.backward()
    >>> float(loss.detach()), u.grad.tolist()
    (1.25, [1.0, 1.0, 0.0, -2.0])
    """
    if not isinstance(uncertainty, torch.Tensor):
        msg = f"`uncertainty` must be a torch.Tensor, got {type(uncertainty).__name__}."
        raise TypeError(msg)
    correct = torch.as_tensor(correct, device=uncertainty.device)
    if mask is not None:
        mask = torch.as_tensor(mask, device=uncertainty.device)
    margin, reduction, pairs, n_wrong, n_correct = check_loss_options(
        margin, reduction, pairs, n_wrong, n_correct
    )
    validate_loss_inputs(uncertainty, correct, mask, xpt, read=validate)

    u = uncertainty.reshape(-1)
    if u.dtype != torch.float64:
        u = u.to(torch.float32)
    is_c = correct.reshape(-1)
    is_c = is_c if is_c.dtype == torch.bool else is_c == 1
    is_w = ~is_c
    if mask is not None:
        keep = mask.reshape(-1)
        is_c = is_c & keep
        is_w = is_w & keep
    mean = reduction == "mean"
    if pairs == "sampled":
        generator = _generator(seed, u.device)
        return _sampled(u, is_c, is_w, margin, n_wrong, n_correct, generator, mean)
    return _ExactMarginLoss.apply(u, is_c, is_w, margin, mean)


# --- modules -----------------------------------------------------------------------------------------------


def _labels_and_mask(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, validate: bool
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Class indices (B, *spatial), the mask of instances that count, and whether ``target`` is one-hot."""
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        msg = f"`logits` must be a tensor of shape (B, C, *spatial), got {shape}."
        raise ValueError(msg)
    if not logits.is_floating_point():
        msg = f"`logits` must be floating point, got dtype {logits.dtype}."
        raise TypeError(msg)
    k = logits.shape[1]
    spatial = (logits.shape[0], *logits.shape[2:])
    target = torch.as_tensor(target, device=logits.device)
    if target.shape == logits.shape and k > 1:  # one-hot (or soft) labels; all-zero rows are ignored
        if validate and not bool(torch.isfinite(logits).all()):  # the one read
            uncertainty_from_logits(logits, axis=1)  # raises the shared message for non-finite logits
        return target.argmax(1), target.ne(0).any(1), True
    if target.ndim == logits.ndim and target.shape[1] == 1 and target.shape[2:] == logits.shape[2:]:
        target = target[:, 0]  # (B, 1, *spatial) class indices, as MONAI keeps them
    if tuple(target.shape) != spatial:
        msg = (
            f"`target` must have shape {spatial} (class indices) or {tuple(logits.shape)} (one-hot), "
            f"got {tuple(target.shape)}."
        )
        raise ValueError(msg)
    if target.is_floating_point() or target.dtype == torch.bool:
        msg = (
            "`target` must hold integer class indices (or be one-hot like `logits`), "
            f"got dtype {target.dtype}."
        )
        raise TypeError(msg)
    mask = target != ignore_index
    if validate:
        bad_target = (mask & ((target < 0) | (target >= k))).any()
        if bool(bad_target | ~torch.isfinite(logits).all()):  # the one read, for both checks
            if bool(bad_target):
                msg = (
                    f"`target` must hold class indices in [0, {k}) or `ignore_index` ({ignore_index}), "
                    "got values outside it."
                )
                raise ValueError(msg)
            uncertainty_from_logits(logits, axis=1)  # raises the shared message for non-finite logits
    return target, mask, False


class UncertaintyMarginLoss(nn.Module):
    """The uncertainty loss from logits: ``u = 1 - max softmax``, correctness from the argmax.

    Parameters
    ----------
    margin : float, default 0.1
    reduction : {"mean", "sum"}, default "mean"
    pairs : {"exact", "sampled"}, default "exact"
    n_wrong, n_correct : int, default 300 and 6600
        As in :func:`uncertainty_margin_loss`.
    seed : int or None
        For ``pairs="sampled"``: seeds a generator owned by the module (advanced at every call).
    ignore_index : int, default -100
        Target value of instances that take no part (as :class:`torch.nn.CrossEntropyLoss`).
    validate : bool, default True
        Check the target's class range and that the logits are finite, in one read from the device.
        ``False`` makes no read at all (no host synchronisation).

    Notes
    -----
    ``forward(logits, target)``: ``logits`` of shape (B, C, *spatial); ``target`` of shape (B, *spatial)
    or (B, 1, *spatial) with integer class indices, or one-hot/soft labels of shape (B, C, *spatial)
    (rows that are all zero take no part). ``u`` is :func:`selectivekit.uncertainty_from_logits` (no
    cancellation for saturated voxels), computed in float32 under autocast.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[0.5, 0.0, 1.0], [0.0, 1.0, 0.0]]], requires_grad=True)  # (1, 2, 3)
    >>> target = torch.tensor([[0, 0, 1]])  # voxels 1 and 2 are wrong, voxel 0 is correct but unsure
    >>> loss = UncertaintyMarginLoss(margin=0.1)(logits, target)
    >>> loss.backward()
    >>> bool(loss > 0), logits.grad.shape
    (True, torch.Size([1, 2, 3]))
    """

    def __init__(
        self,
        margin: float = 0.1,
        *,
        reduction: str = "mean",
        pairs: str = "exact",
        n_wrong: int = 300,
        n_correct: int = 6600,
        seed: int | None = None,
        ignore_index: int = -100,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.margin, self.reduction, self.pairs, self.n_wrong, self.n_correct = check_loss_options(
            margin, reduction, pairs, n_wrong, n_correct
        )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            msg = f"`seed` must be an int or None, got {type(seed).__name__}."
            raise TypeError(msg)
        self.seed = seed
        self.ignore_index = int(ignore_index)
        self.validate = bool(validate)
        self._generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, pairs={self.pairs!r}"

    def _rng(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels, mask, _ = _labels_and_mask(logits, target, self.ignore_index, self.validate)
        u = uncertainty_from_logits(logits, axis=1, validate=False)  # checked in _labels_and_mask
        correct = torch.argmax(logits, dim=1) == labels
        return uncertainty_margin_loss(
            u,
            correct,
            margin=self.margin,
            reduction=self.reduction,
            pairs=self.pairs,
            n_wrong=self.n_wrong,
            n_correct=self.n_correct,
            seed=self._rng(logits.device) if self.pairs == "sampled" else None,
            mask=mask,
            validate=False,  # logits checked in _labels_and_mask, so u is finite; correct is boolean
        )


class UncertaintyAwareLoss(nn.Module):
    """The paper's objective ``L = L_seg + weight * L_unc`` (eq. 3).

    Parameters
    ----------
    seg_loss : callable ``(logits, target) -> loss``, optional
        The segmentation loss, e.g. a MONAI ``DiceCELoss``; it receives ``target`` as given. Default:
        :class:`torch.nn.CrossEntropyLoss` with ``ignore_index`` (class indices, or one-hot as class
        probabilities).
    weight : float, default 2000.0
        The paper's ``lambda = 2`` on a loss scaled by 1000, as the authors' code (with ``reduction="mean"``).
    margin, reduction, pairs, n_wrong, n_correct, seed, ignore_index, validate
        As in :class:`UncertaintyMarginLoss`.

    Attributes
    ----------
    last_seg_loss, last_unc_loss : Tensor or None
        The two terms of the last call, detached (``last_unc_loss`` before ``weight``), for logging.

    Examples
    --------
    >>> import torch
    >>> criterion = UncertaintyAwareLoss(weight=2000.0, margin=0.1)
    >>> logits = torch.randn(2, 3, 4, 4, requires_grad=True, generator=torch.Generator().manual_seed(0))
    >>> target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    >>> loss = criterion(logits, target)
    >>> loss.backward()
    >>> torch.allclose(loss.detach(), criterion.last_seg_loss + 2000.0 * criterion.last_unc_loss)
    True
    """

    def __init__(
        self,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        weight: float = 2000.0,
        *,
        margin: float = 0.1,
        reduction: str = "mean",
        pairs: str = "exact",
        n_wrong: int = 300,
        n_correct: int = 6600,
        seed: int | None = None,
        ignore_index: int = -100,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if seg_loss is not None and not callable(seg_loss):
            msg = f"`seg_loss` must be callable (logits, target) -> loss, got {type(seg_loss).__name__}."
            raise TypeError(msg)
        self._default_seg = seg_loss is None
        self.seg_loss = nn.CrossEntropyLoss(ignore_index=ignore_index) if seg_loss is None else seg_loss
        self.weight = check_margin(weight, "weight")
        self.unc_loss = UncertaintyMarginLoss(
            margin,
            reduction=reduction,
            pairs=pairs,
            n_wrong=n_wrong,
            n_correct=n_correct,
            seed=seed,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.last_seg_loss: torch.Tensor | None = None
        self.last_unc_loss: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"weight={self.weight}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l_unc = self.unc_loss(logits, target)  # first: it validates the target with a clear message
        seg_target = target
        if self._default_seg:
            if target.shape == logits.shape:
                seg_target = target.to(logits.dtype)  # one-hot: class probabilities
            elif target.ndim == logits.ndim:
                seg_target = target[:, 0]
        l_seg = self.seg_loss(logits, seg_target)
        self.last_seg_loss = l_seg.detach()
        self.last_unc_loss = l_unc.detach()
        return l_seg + self.weight * l_unc

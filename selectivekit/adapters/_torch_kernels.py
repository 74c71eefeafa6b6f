"""The PyTorch restatements of the core formulas: the margin loss's exact kernels and sampled estimator.

Only restatements live here (no API classes); ``tests/adapters/test_kernels.py`` checks each against the
core on the same inputs, values and gradients.

The exact path is a `torch.autograd.Function` with the closed-form backward of
[`selectivekit.loss.uncertainty_margin_loss`][selectivekit.uncertainty_margin_loss] (same formula: ``L_sum =
sum_k cnt_k v_k - S_k`` over
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

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..loss import MarginLossOptions, sample_indices

__all__ = [
    "CPU_KERNEL",
    "ExactMarginLoss",
    "bucket_search",
    "margin_loss",
    "sampled_loss",
]


#: Use the compacting kernel for CPU tensors (tests set it to False to run the static kernel on CPU).
CPU_KERNEL = True


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# --- CPU kernel: compact, sort the smaller side, locate the other side with a bucket table -----------------


def bucket_search(a: torch.Tensor, q: torch.Tensor, side: str, index_dtype=torch.int64) -> torch.Tensor:
    """``torch.searchsorted(a, q, side=side)`` for sorted 1-D float ``a``, exactly, mostly without a search.

    ``b(x) = clamp((x - a[0]) * scale, 0, nb - 1)`` truncated to an integer is computed with the same float
    operations for ``a`` and ``q``, and every step (subtraction, multiplication by a constant >= 0, clamp,
    truncation of a non-negative value) is monotone under IEEE rounding, so ``b`` is non-decreasing:
    elements of ``a`` in lower buckets than ``b(q)`` are ``< q`` and those in higher buckets are ``> q``.
    Only the elements in ``q``'s own bucket need a comparison. With ``4 len(a)`` buckets most hold at most
    one element (with fewer than ``8 len(a)`` queries, ``len(q) / 2`` buckets but at least ``2 len(a)``:
    the table, 13 bytes a bucket while it is built, would outweigh the queries, and 2 buckets an element
    searched as fast as 4 on 10**6 uniform values); one table lookup gives the bucket's start and its
    single element (``+inf`` when empty, NaN when crowded), and only queries that land in a crowded
    bucket (two or more elements, e.g. ties) get a real binary search. A binary search costs ~40 ns a
    query on CPU; the table lookup is a gather.
    Returns positions of ``index_dtype`` (int32 halves the memory of the per-query arrays). ``a`` and ``q``
    share a float dtype and live on the CPU.

    NaN (possible only when the caller skipped validation): a NaN query lands in bucket 0 after the
    integer clamp, so every read stays in bounds and its position is some value in ``[0, len(a)]``; a NaN
    in ``a`` makes the value range NaN and takes ``torch.searchsorted``. The loss built on these positions
    is then NaN, as the all-pairs formula would be.
    """
    m = a.numel()
    if m == 0:
        return torch.zeros(q.shape, dtype=index_dtype)
    lo = float(a[0])  # CPU tensors: no device to synchronise with
    nb = min(4 * m, max(2 * m, q.numel() // 2))
    span = float(a[-1]) - lo
    scale = float(torch.tensor(nb / span if span > 0 else 0.0, dtype=a.dtype))  # as the kernels see it
    if not (math.isfinite(scale) and scale > 0) or m >= 2**29:
        return torch.searchsorted(a, q, side=side).to(index_dtype)

    def bucket(x: torch.Tensor) -> torch.Tensor:
        # float clamp keeps the value finite; the integer clamp fixes nb - 1 rounding up in float32 and
        # maps NaN (whose integer conversion is undefined) into the table
        t = x - lo
        t.mul_(scale).clamp_(0, nb - 1)
        return t.to(torch.int32).clamp_(0, nb - 1)

    ba = bucket(a)
    counts = torch.bincount(ba, minlength=nb)  # int64: narrowed at once (m < 2**29)
    crowded = counts > 1  # searched below
    counts = counts.to(torch.int32)
    starts = torch.cumsum(counts, 0, dtype=torch.int32)
    starts -= counts  # int32 in place: no int64 temporaries of the table's length
    del counts
    run_start = torch.ones(m, dtype=torch.bool)
    run_start[1:] = ba[1:] != ba[:-1]
    if a.dtype == torch.float32:  # one 8-byte lookup gives both: (float bits, start) pairs
        table = torch.empty((nb, 2), dtype=torch.int32)
        table[:, 1] = starts
        del starts
        first = table[:, 0].view(torch.float32)
    else:
        first = torch.empty(nb, dtype=a.dtype)
    first.fill_(math.inf)  # an empty bucket adds nothing
    first[ba[run_start]] = a[run_start]
    first[crowded] = math.nan
    del ba, run_start, crowded
    if a.dtype == torch.float32:
        packed = table.view(torch.int64).reshape(-1)
    out = torch.empty(q.shape, dtype=index_dtype)
    for i in range(0, q.numel(), _QUERY_CHUNK):  # bounded temporaries: one chunk of queries at a time
        qc = q[i : i + _QUERY_CHUNK]
        bq = bucket(qc)
        if a.dtype == torch.float32:
            hit = torch.index_select(packed, 0, bq).view(torch.int32).reshape(-1, 2)
            fq, pos = hit[:, 0].view(torch.float32), hit[:, 1]
        else:
            fq, pos = torch.index_select(first, 0, bq), torch.index_select(starts, 0, bq)
        oc = out[i : i + _QUERY_CHUNK]
        oc.copy_(pos)
        oc += (fq < qc) if side == "left" else (fq <= qc)
        crowded = torch.isnan(fq).nonzero().reshape(-1)
        if crowded.numel():
            oc[crowded] = torch.searchsorted(a, qc[crowded], side=side).to(index_dtype)
    return out


#: Queries located per pass of `bucket_search` (bounds its temporaries; large enough to amortise the loop).
_QUERY_CHUNK = 1 << 20


def _sort(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and order (int32 below 2**31 values) of a CPU tensor; NumPy's SIMD argsort is several times
    faster than ``torch.sort``."""
    order = torch.from_numpy(np.argsort(x.numpy()))
    values = x[order]
    return values, order.to(torch.int32) if x.numel() < 2**31 else order  # int32: kept for the backward


#: Chunk of the float64 dot products (bounded temporaries instead of two float64 copies of a side).
_DOT_CHUNK = 1 << 20
_COUNT_DTYPE = torch.int32
#: Instances compacted or scattered per pass (``x[mask]`` alone builds int64 positions: 8 bytes an instance);
#: a batch of 8 x 64^3 voxels takes one pass.
_MASK_CHUNK = 1 << 21


def _compact(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x[mask]`` (a copy) for flat CPU tensors, one chunk at a time (bounded temporaries)."""
    n = x.numel()
    if n <= _MASK_CHUNK:
        return x[mask]
    out = torch.empty(int(torch.count_nonzero(mask)), dtype=x.dtype)
    done = 0
    for i in range(0, n, _MASK_CHUNK):
        part = x[i : i + _MASK_CHUNK][mask[i : i + _MASK_CHUNK]]
        out[done : done + part.numel()] = part
        done += part.numel()
    return out


def _scatter(grad: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> None:
    """``grad[mask] = source`` in ``grad``'s dtype, converting and scattering one chunk at a time."""
    if grad.numel() <= _MASK_CHUNK:
        grad.masked_scatter_(mask, source.to(grad.dtype))
        return
    done = 0
    for i in range(0, grad.numel(), _MASK_CHUNK):
        part = mask[i : i + _MASK_CHUNK]
        k = int(torch.count_nonzero(part))
        grad[i : i + _MASK_CHUNK].masked_scatter_(part, source[done : done + k].to(grad.dtype))
        done += k


def _dot64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)`` accumulated in float64, converting one chunk at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, a.numel(), _DOT_CHUNK):
        total += torch.dot(a[i : i + _DOT_CHUNK].double(), b[i : i + _DOT_CHUNK].double())
    return total


def exact_cpu_forward(u: torch.Tensor, is_c: torch.Tensor, is_w: torch.Tensor, margin: float):
    """``L_sum`` (a float64 tensor) and what the backward needs; data-dependent shapes (CPU only).

    Memory: besides the compacted sides, one int32 count or position per instance of the larger side, the
    bucket table of the smaller side and chunked temporaries.
    """
    uw = _compact(u, is_w)
    vc = _compact(u, is_c)
    vc.add_(margin)  # a copy
    n_w, n_c = uw.numel(), vc.numel()
    state = {"n_w": n_w, "n_c": n_c}
    if n_w == 0 or n_c == 0:
        return torch.zeros((), dtype=torch.float64), state
    if n_w <= n_c:  # sort the wrong side; cnt_k = #{u_j < v_k} for every correct k
        ws, order = _sort(uw)
        del uw  # sorted in ws
        small = n_w < 2**31
        cnt = bucket_search(ws, vc, "left", _COUNT_DTYPE if small else torch.int64)
        hist = torch.bincount(cnt, minlength=n_w + 1)  # hist[r] = #{k : cnt_k = r}
        prefix = torch.zeros(n_w + 1, dtype=torch.float64)
        torch.cumsum(ws.double(), 0, out=prefix[1:])
        # sum_k (cnt_k v_k - S_k), with sum_k S_k = sum_r hist[r] prefix[r]
        total = _dot64(cnt, vc) - torch.dot(hist.double(), prefix)
        state.update(side="wrong", order=order, cnt=cnt, hist=hist)
    else:  # sort the correct side; a_j = #{v_k > u_j} for every wrong j
        cs, order = _sort(vc)
        del vc  # sorted in cs
        pos = bucket_search(cs, uw, "right", _COUNT_DTYPE if n_c < 2**31 else torch.int64)  # #{v_k <= u_j}
        suffix = torch.zeros(n_c + 1, dtype=torch.float64)
        torch.cumsum(cs.double(), 0, out=suffix[1:])
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, n_w, _DOT_CHUNK):  # float64 terms one chunk at a time
            p = pos[i : i + _DOT_CHUNK]
            total += ((suffix[-1] - suffix[p]) - (n_c - p) * uw[i : i + _DOT_CHUNK].double()).sum()
        state.update(side="correct", order=order, pos=pos)
    return total, state


def exact_cpu_backward(state: dict, is_c: torch.Tensor, is_w: torch.Tensor, dtype: torch.dtype):
    """The all-pairs gradient of ``L_sum`` as counts: +#active pairs (correct), -#active pairs (wrong)."""
    grad = torch.zeros(is_c.shape, dtype=dtype)
    n_w, n_c = state["n_w"], state["n_c"]
    if n_w == 0 or n_c == 0:
        return grad
    order = state["order"]
    if state["side"] == "wrong":
        _scatter(grad, is_c, state["cnt"])
        at_most = torch.cumsum(state["hist"], 0)[:n_w]  # #{k : cnt_k <= r}
        from_wrong = torch.empty(n_w, dtype=dtype)
        from_wrong[order] = (at_most - n_c).to(dtype)  # sorted wrong r is active with k iff cnt_k >= r + 1
        grad.masked_scatter_(is_w, from_wrong)
    else:
        pos = state["pos"]
        _scatter(grad, is_w, pos - n_c)
        at_most = torch.cumsum(torch.bincount(pos, minlength=n_c + 1), 0)[:n_c]  # #{j : pos_j <= r}
        from_correct = torch.empty(n_c, dtype=dtype)
        from_correct[order] = at_most.to(dtype)  # sorted correct r is active with j iff pos_j <= r
        grad.masked_scatter_(is_c, from_correct)
    return grad


# --- static-shape kernel (CUDA and other devices: no host synchronisation) ---------------------------------


def exact_static_forward(u: torch.Tensor, is_c: torch.Tensor, is_w: torch.Tensor, margin: float):
    acc = _acc_dtype(u.device)
    ws, order = torch.sort(torch.where(is_w, u, math.inf))  # the wrong values first, then +inf
    v = u + margin
    cnt = torch.searchsorted(ws, v, side="left")  # #{u_j < v_k}: tied pairs are not active
    finite = torch.where(torch.isfinite(ws), ws, 0.0).to(acc)
    prefix = torch.cat([finite.new_zeros(1), torch.cumsum(finite, 0)])
    per_correct = cnt.to(acc) * v.to(acc) - prefix[cnt]
    total = torch.where(is_c, per_correct, 0.0).sum()
    return total, (order, cnt)


def exact_static_backward(saved, is_c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
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


class ExactMarginLoss(torch.autograd.Function):
    """``L_sum`` (or ``L_mean``) over all pairs, with the closed-form backward."""

    @staticmethod
    def forward(ctx, u, is_c, is_w, margin, mean):
        ctx.mean = mean
        if u.device.type == "cpu" and CPU_KERNEL:
            total, state = exact_cpu_forward(u, is_c, is_w, margin)
            n_pairs = state["n_w"] * state["n_c"]
            ctx.cpu_state = state
            ctx.scale = 1.0 / n_pairs if (mean and n_pairs) else 1.0
            ctx.save_for_backward(is_c, is_w)
            return (total * ctx.scale).to(u.dtype)
        total, saved = exact_static_forward(u, is_c, is_w, margin)
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
            counts = exact_cpu_backward(ctx.cpu_state, is_c, is_w, grad_output.dtype)
            return counts.mul_(grad_output * ctx.scale), None, None, None, None
        is_c, scale = ctx.saved_tensors
        counts = exact_static_backward(ctx.static_saved, is_c, grad_output.dtype)
        return counts * (grad_output * scale).to(grad_output.dtype), None, None, None, None


def sampled_loss(
    u: torch.Tensor,
    is_c: torch.Tensor,
    is_w: torch.Tensor,
    options: MarginLossOptions,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The sampled estimator: the core's draw
    ([`selectivekit.loss.sample_indices`][selectivekit.loss.sample_indices], NumPy on the host),
    then every pair between the samples; the same pairs as the core for the same generator state."""
    idx_w = torch.nonzero(is_w).reshape(-1)
    idx_c = torch.nonzero(is_c).reshape(-1)
    n_w, n_c = idx_w.numel(), idx_c.numel()
    zero = (u * 0.0).sum()  # keeps the graph: a zero gradient
    if n_w == 0 or n_c == 0:
        return zero
    pick_w, pick_c = sample_indices(n_w, n_c, options, rng)
    pick_w = idx_w[torch.as_tensor(pick_w, device=u.device)]
    pick_c = idx_c[torch.as_tensor(pick_c, device=u.device)]
    d = u[pick_c][None, :] - u[pick_w][:, None] + options.margin
    total = torch.where(d > 0, d, 0.0).sum()  # where, not relu/maximum: zero gradient at ties
    n_pairs = pick_w.numel() * pick_c.numel()
    return total / n_pairs if options.reduction == "mean" else total * (n_w * n_c / n_pairs)


def margin_loss(
    u: torch.Tensor,
    is_c: torch.Tensor,
    is_w: torch.Tensor,
    options: MarginLossOptions,
    rng: np.random.Generator | None,
) -> torch.Tensor:
    """The loss of flat float ``u`` and disjoint boolean masks of the correct and wrong instances."""
    if options.pairs == "sampled":
        return sampled_loss(u, is_c, is_w, options, rng)
    return ExactMarginLoss.apply(u, is_c, is_w, options.margin, options.reduction == "mean")


def binary_push(
    u: torch.Tensor, logits: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor
):
    """``u`` with the value unchanged and, on wrong voxels, the gradient of ``p_t / (p_m + p_t)``.

    ``m`` is the predicted class (``pred``, the argmax the caller already has) and ``t`` the true class
    (``labels``, already valid where it matters; masked voxels take no part in the loss).
    ``p_t / (p_m + p_t) = sigmoid(z_t - z_m)`` is the uncertainty of the two-class choice between them, so
    a push on it moves probability from ``m`` to ``t`` only. Straight through: ``u.detach() + (b -
    b.detach())`` has the value of ``u`` and the gradient of ``b``.
    """
    gap = logits.gather(1, pred[:, None])[:, 0] - logits.gather(1, labels[:, None])[:, 0]
    b = torch.sigmoid(-gap).to(u.dtype)
    return torch.where(correct, u, u.detach() + (b - b.detach()))

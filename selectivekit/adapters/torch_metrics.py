"""torchmetrics metrics: ``AURC`` and ``SelectiveDice``, with states that add up across DDP ranks.

Both keep dense, fixed-size states over the cells of the threshold grid of `selectivekit.streaming`
(every bfloat16 value by default: 65,536 cells, or ``len(edges) + 1`` cells for user ``edges``), so
``torch.distributed`` reduces them with one all-reduce per state: sums, plus a max for the largest ``u`` of
each cell (the reported, achievable threshold). The update steps are the streaming ones
([`grid_update`][selectivekit.streaming.grid_update], [`image_events`][selectivekit.streaming.image_events],
[`dice_from_counts`][selectivekit.segmentation.engine.dice_from_counts]) run on the input's device; the
results come from
[`curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] and
[`step_area`][selectivekit.risk_coverage.step_area].

State size: ``AURC`` 3 x 65,536 values (1.5 MB); ``SelectiveDice`` (3 + C) x 65,536 float64 values for C
evaluated classes (5.5 MiB for 7 classes). Pass coarser ``edges`` to shrink them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import array_api_compat.torch as xpt
import torch

try:
    from torchmetrics import Metric
except (ImportError, RuntimeError, OSError) as exc:  # a CUDA torchvision beside a CPU torch: RuntimeError
    _msg = (
        "the selectivekit torch metrics (AURC, SelectiveDice) need torchmetrics, which could not be "
        f"imported ({type(exc).__name__}: {exc}). Install or repair it: pip install torchmetrics. The losses "
        "of selectivekit.adapters.torch work without it."
    )
    raise ImportError(_msg) from exc

from .._lib import bincount, check_coverages, check_edges, check_num_classes, prepare_instances, scatter_max
from ..risk_coverage import RiskCoverageCurve, step_area
from ..segmentation.engine import dice_from_counts
from ..segmentation.images import collect_images
from ..segmentation.results import DiceCoverageCurve
from ..selective import group_at_coverage
from ..streaming import curve_from_grid, grid_bins, grid_size, grid_update, image_events

__all__ = ["AURC", "SelectiveDice"]


def _should_sync(metric: Metric) -> bool:
    """Whether ``metric`` synchronizes its states across ranks (DDP) before reading them."""
    return (
        bool(metric.sync_on_compute)
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


class AURC(Metric):
    """Area under the risk-coverage curve, accumulated over batches and DDP ranks (lower is better).

    Parameters
    ----------
    edges : sequence of float, optional
        Cell edges of the threshold grid; default: every bfloat16 value (exact for bfloat16-representable
        ``u``; otherwise each cell is one operating point, thresholded at its largest ``u``).
    **kwargs
        Passed to `torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Examples
    --------
    >>> import torch
    >>> metric = AURC()
    >>> metric.update(torch.tensor([0.125, 0.25]), torch.tensor([True, False]))
    >>> metric.update(torch.tensor([0.5, 0.25]), torch.tensor([True, True]))
    >>> metric.compute()
    tensor(0.2292, dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, *, edges: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._edges = check_edges(edges)
        n = grid_size(self._edges)
        self.add_state("count", default=torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("risk_sum", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "max_u", default=torch.full((n,), -math.inf, dtype=torch.float64), dist_reduce_fx="max"
        )

    def update(
        self, uncertainty: torch.Tensor, correct: Any = None, *, risk: Any = None, mask: Any = None
    ) -> None:
        """Add instances (any shape): ``correct`` (bool) or ``risk`` (per-instance, in [0, 1])."""
        uncertainty = torch.as_tensor(uncertainty).detach()
        inst = prepare_instances(uncertainty, correct, risk=risk, mask=mask, target="correct_or_risk")
        count, risk_sum, top = grid_update(
            inst.u, inst.risk, self.count.shape[0], edges=self._edges, xp=inst.xp
        )
        self.count += count.to(self.count.device)
        self.risk_sum += risk_sum.to(self.risk_sum.device)
        self.max_u = torch.maximum(self.max_u, top.to(self.max_u.device))

    def _curve(self) -> RiskCoverageCurve:
        return curve_from_grid(self.count, self.risk_sum, self.max_u, xp=xpt)

    def compute(self) -> torch.Tensor:
        """AURC of the accumulated (and, under DDP, synchronized) instances, as a float64 0-d tensor."""
        curve = self._curve()
        return torch.tensor(step_area(curve.coverage, curve.risk, xp=xpt), dtype=torch.float64)

    def curve(self) -> RiskCoverageCurve:
        """The risk-coverage curve at every occupied cell (synchronized across ranks)."""
        with self.sync_context(should_sync=_should_sync(self)):
            return self._curve()


class SelectiveDice(Metric):
    """Coverage-aware Dice with referral, accumulated over images and DDP ranks.

    Each update takes a batch of images; for every image the Dice after referral is evaluated at every
    grid cell (one cumulative sum over the cells per class) and added to per-cell sums over images. The
    sums are exact and add up across ranks, so the mean (and standard deviation) of the image Dice at any
    global coverage, and ``aurc_dice``, need no per-image state.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``.
    include_background : bool, default False
        Evaluate class 0 too (default: classes ``1..K-1``).
    coverages : float or sequence of float, default (1.0, 0.95, 0.9, 0.8, 0.7)
        Coverages reported by [`compute`][selectivekit.adapters.torch.SelectiveDice.compute].
    edges : sequence of float, optional
        Cell edges of the threshold grid; default: every bfloat16 value.
    **kwargs
        Passed to `torchmetrics.Metric`.

    Notes
    -----
    [`compute`][selectivekit.adapters.torch.SelectiveDice.compute] returns a dict of float64 0-d tensors:
    ``"aurc_dice"`` (lower is better), and for each
    coverage ``c``: ``"dice@c"`` (mean image Dice, higher is better), ``"dice_std@c"`` (``ddof=0``) and
    ``"coverage@c"`` (realized). Per-image values (5th percentile, Figure 2) need per-image state: use
    [`selectivekit.streaming.SegmentationAccumulator`][selectivekit.SegmentationAccumulator] for those.

    Examples
    --------
    >>> import torch
    >>> metric = SelectiveDice(num_classes=2, coverages=[1.0, 0.75])
    >>> metric.update(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 0, 1]]),
    ...               torch.tensor([[0.125, 0.875, 0.25, 0.375]]))
    >>> {k: round(float(v), 4) for k, v in metric.compute().items()}  # doctest: +ELLIPSIS
    {'aurc_dice': 0.2083, 'dice@1': 0.5, 'dice_std@1': 0.0, 'coverage@1': 1.0, 'dice@0.75': 0.6667, ...}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        num_classes: int,
        include_background: bool = False,
        coverages: float | Sequence[float] = (1.0, 0.95, 0.9, 0.8, 0.7),
        edges: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes, include_background)
        self._first = 0 if include_background else 1
        self.coverages = check_coverages(coverages)
        self._edges = check_edges(edges)
        n = grid_size(self._edges)
        c = self.num_classes - self._first
        f64 = torch.float64
        self.add_state("count", default=torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("max_u", default=torch.full((n,), -math.inf, dtype=f64), dist_reduce_fx="max")
        self.add_state("dice_sum", default=torch.zeros(n, dtype=f64), dist_reduce_fx="sum")
        self.add_state("dice_sq_sum", default=torch.zeros(n, dtype=f64), dist_reduce_fx="sum")
        self.add_state("class_dice_sum", default=torch.zeros((c, n), dtype=f64), dist_reduce_fx="sum")
        self.add_state("n_images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, label: torch.Tensor, uncertainty: torch.Tensor) -> None:
        """Add a batch of images: tensors of shape (n_images, *spatial), or lists of per-image tensors."""
        if isinstance(uncertainty, torch.Tensor):
            uncertainty = uncertainty.detach()
        images, xp = collect_images(pred, label, uncertainty, self.num_classes)
        n_bins = self.count.shape[0]
        n_cls = self.num_classes - self._first
        start = 0
        for size in images.sizes:
            p = images.pred[start : start + size]
            t = images.label[start : start + size]
            u = images.u[start : start + size]
            start += size
            bins = grid_bins(u, edges=self._edges, xp=xp)
            count = bincount(bins, n_bins, xp)
            top = torch.full((n_bins,), -math.inf, dtype=torch.float64, device=bins.device)
            top = scatter_max(top, bins, xp.astype(u, xp.float64), xp)
            label_count = bincount(xp.astype(t, xp.int64), self.num_classes, xp)[self._first :]
            cls, cell, fn, fp = image_events(p, t, bins, self._first, xp=xp)
            slot = cls * n_bins + cell
            # accepted wrong voxels per (class, cell), cumulated over the cells: FN and FP at every threshold
            fn_cum = torch.cumsum(self._per_cell(slot, fn, n_cls, n_bins, xp), dim=1)
            fp_cum = torch.cumsum(self._per_cell(slot, fp, n_cls, n_bins, xp), dim=1)
            dice = dice_from_counts(label_count[:, None], fn_cum, fp_cum, xp=xp)  # (C, n_bins)
            image_dice = torch.mean(dice, dim=0)
            dev = self.count.device
            self.count += count.to(dev)
            self.max_u = torch.maximum(self.max_u, top.to(dev))
            self.dice_sum += image_dice.to(dev)
            self.dice_sq_sum += (image_dice * image_dice).to(dev)
            self.class_dice_sum += dice.to(dev)
            self.n_images += 1

    @staticmethod
    def _per_cell(slot: Any, weight: Any, n_cls: int, n_bins: int, xp: Any) -> torch.Tensor:
        total = bincount(slot, n_cls * n_bins, xp, weights=xp.astype(weight, xp.float64))
        return torch.reshape(total, (n_cls, n_bins))

    def _occupied(self) -> tuple[torch.Tensor, torch.Tensor]:
        if int(self.n_images) == 0:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        occupied = torch.nonzero(self.count > 0)[:, 0]
        return occupied, torch.cumsum(self.count, 0)[occupied]

    def _curve(self) -> DiceCoverageCurve:
        occupied, cum_count = self._occupied()
        return DiceCoverageCurve(
            coverage=cum_count.to(torch.float64) / cum_count[-1],
            mean_dice=self.dice_sum[occupied] / self.n_images,
            threshold=self.max_u[occupied],
        )

    def curve(self) -> DiceCoverageCurve:
        """The Dice-coverage curve at every occupied cell (synchronized across ranks)."""
        with self.sync_context(should_sync=_should_sync(self)):
            return self._curve()

    def compute(self) -> dict[str, torch.Tensor]:
        """``aurc_dice`` and mean/std/realized coverage at each requested coverage (float64 tensors)."""
        curve = self._curve()
        occupied, cum_count = self._occupied()
        n = self.n_images.to(torch.float64)
        out = {"aurc_dice": torch.tensor(step_area(curve.coverage, 1.0 - curve.mean_dice, xp=xpt))}
        for c in self.coverages:
            g = group_at_coverage(cum_count, c, xp=xpt)
            cell = occupied[g]
            mean = self.dice_sum[cell] / n
            var = torch.clamp(self.dice_sq_sum[cell] / n - mean * mean, min=0.0)
            out[f"dice@{c:g}"] = mean
            out[f"dice_std@{c:g}"] = torch.sqrt(var)
            out[f"coverage@{c:g}"] = curve.coverage[g]
        return out

    def class_dice(self, coverage: float) -> torch.Tensor:
        """Mean Dice of each evaluated class over the images at ``coverage``: shape (C,)."""
        c = check_coverages(coverage)[0]
        with self.sync_context(should_sync=_should_sync(self)):
            occupied, cum_count = self._occupied()
            cell = occupied[group_at_coverage(cum_count, c, xp=xpt)]
            return self.class_dice_sum[:, cell] / self.n_images

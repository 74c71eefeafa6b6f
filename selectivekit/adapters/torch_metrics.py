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
from torchmetrics import Metric

from .._lib import bincount, check_coverages, check_edges, check_num_classes, prepare_instances, scatter_max
from ..risk_coverage import RiskCoverageCurve, step_area
from ..segmentation.engine import dice_from_counts
from ..segmentation.images import collect_images
from ..segmentation.results import DiceCoverageCurve
from ..selective import group_at_coverage
from ..streaming import curve_from_grid, grid_bins, grid_size, grid_update, image_events

__all__ = ["AURC", "SelectiveDice", "SelectiveDiceValue"]

_STATISTICS = ("dice", "dice_std", "coverage")


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
    ignore_empty : bool, default False
        ``True`` leaves out, in each image, the classes absent from its label, and the images without any
        evaluated class (the default of MONAI's ``DiceMetric``); ``False`` scores an absent class 1.0 when
        the prediction after referral has none of it either, 0.0 otherwise. As in
        [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage]; the values are NaN when no image
        has an evaluated class.
    one_hot : bool or None, default None
        Whether ``pred`` and ``label`` come one-hot (MONAI's ``AsDiscrete(to_onehot=K)``), with the class
        axis after the image axis (axis 1 of a stacked tensor, axis 0 of a per-image tensor). ``None``
        reads each of them from its shape, against ``uncertainty``'s: one-hot when it has a class axis of
        length ``num_classes`` where ``uncertainty`` has none (or a length-1 axis), class indices when it
        has ``uncertainty``'s shape (give or take that length-1 axis). The two readings can only fit the same
        shape when ``num_classes == 1``; there ``None`` raises and ``True``/``False`` decides.
    **kwargs
        Passed to `torchmetrics.Metric`.

    Notes
    -----
    [`compute`][selectivekit.adapters.torch.SelectiveDice.compute] returns a dict of float64 0-d tensors:
    ``"aurc_dice"`` (lower is better), and for each
    coverage ``c``: ``"dice@c"`` (mean image Dice, higher is better), ``"dice_std@c"`` (``ddof=0``) and
    ``"coverage@c"`` (realized). Per-image values (5th percentile, Figure 2) need per-image state: use
    [`selectivekit.streaming.SegmentationAccumulator`][selectivekit.SegmentationAccumulator] for those.

    Each of these numbers is also a scalar metric of its own, for Lightning's ``self.log`` and
    ``MetricCollection``: [`at_coverage`][selectivekit.adapters.torch.SelectiveDice.at_coverage],
    [`scalar`][selectivekit.adapters.torch.SelectiveDice.scalar] and
    [`scalar_metrics`][selectivekit.adapters.torch.SelectiveDice.scalar_metrics] return
    [`SelectiveDiceValue`][selectivekit.adapters.torch.SelectiveDiceValue] metrics with this one's options.

    Inputs: ``pred`` and ``label`` hold class indices (integers, or floating-point whole numbers as
    MONAI's ``LoadImaged`` gives labels; other values, or NaN, raise ``ValueError``) or are one-hot
    (``one_hot``); a length-1 channel axis (MONAI's ``(B, 1, *spatial)``) may be present or not on any of
    ``pred``, ``label`` and ``uncertainty``.

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
        ignore_empty: bool = False,
        one_hot: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes, include_background)
        self._first = 0 if include_background else 1
        self.coverages = check_coverages(coverages)
        self._edges = check_edges(edges)
        for name, value, allowed in (
            ("ignore_empty", ignore_empty, (True, False)),
            ("one_hot", one_hot, (None, True, False)),
        ):
            if not any(value is a for a in allowed):
                msg = f"`{name}` must be one of {allowed}, got {value!r}."
                raise TypeError(msg)
        self.ignore_empty = ignore_empty
        self.one_hot = one_hot
        self._options = {
            "num_classes": num_classes,
            "include_background": include_background,
            "edges": edges,
            "ignore_empty": ignore_empty,
            "one_hot": one_hot,
            **kwargs,
        }
        n = grid_size(self._edges)
        c = self.num_classes - self._first
        f64 = torch.float64
        self.add_state("count", default=torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("max_u", default=torch.full((n,), -math.inf, dtype=f64), dist_reduce_fx="max")
        self.add_state("dice_sum", default=torch.zeros(n, dtype=f64), dist_reduce_fx="sum")
        self.add_state("dice_sq_sum", default=torch.zeros(n, dtype=f64), dist_reduce_fx="sum")
        self.add_state("class_dice_sum", default=torch.zeros((c, n), dtype=f64), dist_reduce_fx="sum")
        self.add_state("n_images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        if ignore_empty:  # images with a class in their label, and per class
            self.add_state("n_scored", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state("class_images", default=torch.zeros(c, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, label: torch.Tensor, uncertainty: torch.Tensor) -> None:
        """Add a batch of images: tensors of shape (n_images, *spatial), or lists of per-image tensors."""
        pred, label, uncertainty = _class_indices(pred, label, uncertainty, self.num_classes, self.one_hot)
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
            dev = self.count.device
            if self.ignore_empty:  # the classes present in the label only; no image without one
                present = label_count > 0
                n_present = present.sum()
                dice = dice * present[:, None]
                image_dice = dice.sum(0) / torch.clamp(n_present, min=1)
                self.n_scored += (n_present > 0).to(dev)
                self.class_images += present.to(dev)
            else:
                image_dice = torch.mean(dice, dim=0)
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

    def _n_dice(self) -> torch.Tensor:
        """The number of images the mean Dice is over (float64): those with a class, for ``ignore_empty``."""
        return (self.n_scored if self.ignore_empty else self.n_images).to(torch.float64)

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
            mean_dice=self.dice_sum[occupied] / self._n_dice(),
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
        n = self._n_dice()
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
            n = self.class_images if self.ignore_empty else self.n_images
            return self.class_dice_sum[:, cell] / n.to(torch.float64)

    def scalar(self, key: str) -> SelectiveDiceValue:
        """One entry of [`compute`][selectivekit.adapters.torch.SelectiveDice.compute] (``"aurc_dice"``,
        ``"dice@0.9"``, ``"dice_std@0.9"``, ``"coverage@0.9"``) as a metric of its own with this metric's
        options: a [`SelectiveDiceValue`][selectivekit.adapters.torch.SelectiveDiceValue], fresh states."""
        return SelectiveDiceValue(key, **self._options)

    def at_coverage(self, coverage: float, statistic: str = "dice") -> SelectiveDiceValue:
        """The mean image Dice (or ``statistic``: ``"dice_std"``, ``"coverage"``) at ``coverage`` as a scalar
        metric: ``SelectiveDice(num_classes=3).at_coverage(0.9)``."""
        c = check_coverages(coverage)[0]
        return self.scalar(f"{statistic}@{c:g}")

    def scalar_metrics(self) -> dict[str, SelectiveDiceValue]:
        """Every entry of [`compute`][selectivekit.adapters.torch.SelectiveDice.compute] as a scalar metric,
        keyed like it with ``"."`` written ``"_"`` (``"dice@0_9"``: a module name cannot hold a dot).
        ``torchmetrics.MetricCollection(metric.scalar_metrics())`` logs each number, and its compute
        groups update the shared states once per batch."""
        keys = ["aurc_dice"] + [f"{stat}@{c:g}" for c in self.coverages for stat in _STATISTICS]
        return {key.replace(".", "_"): self.scalar(key) for key in keys}


class SelectiveDiceValue(SelectiveDice):
    """One number of [`SelectiveDice`][selectivekit.adapters.torch.SelectiveDice] as a scalar metric.

    Lightning's ``self.log(name, metric)`` and ``torchmetrics.MetricCollection`` take metrics whose
    ``compute`` returns one tensor; this one accumulates as ``SelectiveDice`` does and returns the entry
    ``key`` of its result, a float64 0-d tensor. In a ``MetricCollection`` several of them with the same
    options share their states (torchmetrics' compute groups), so the batch is accumulated once.

    Parameters
    ----------
    key : str
        ``"aurc_dice"`` (lower is better), ``"dice@c"`` (mean image Dice at coverage ``c``, higher is
        better), ``"dice_std@c"`` or ``"coverage@c"`` (realized), ``c`` in (0, 1].
    **kwargs
        The options of [`SelectiveDice`][selectivekit.adapters.torch.SelectiveDice] (``num_classes``, ...;
        not ``coverages``).

    Examples
    --------
    >>> import torch
    >>> metric = SelectiveDice(num_classes=2).at_coverage(0.75)
    >>> metric.update(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 0, 1]]),
    ...               torch.tensor([[0.125, 0.875, 0.25, 0.375]]))
    >>> metric.compute()
    tensor(0.6667, dtype=torch.float64)
    """

    def __init__(self, key: str, **kwargs: Any) -> None:
        if "coverages" in kwargs:
            msg = "`coverages` is set by `key` for a SelectiveDiceValue; give the coverage in `key`."
            raise TypeError(msg)
        stat, coverage = _parse_key(key)
        super().__init__(coverages=1.0 if coverage is None else coverage, **kwargs)
        self.key = "aurc_dice" if coverage is None else f"{stat}@{self.coverages[0]:g}"
        self._statistic = stat

    @property
    def higher_is_better(self) -> bool | None:  # type: ignore[override]
        """``False`` for ``aurc_dice``, ``True`` for ``dice``, ``None`` for the others."""
        return {"aurc_dice": False, "dice": True}.get(self._statistic)

    def compute(self) -> torch.Tensor:
        """The entry ``key``, as a float64 0-d tensor (synchronized across ranks)."""
        if self.key == "aurc_dice":
            curve = self._curve()
            area = step_area(curve.coverage, 1.0 - curve.mean_dice, xp=xpt)
            return torch.tensor(area, dtype=torch.float64, device=self.count.device)
        return super().compute()[self.key].to(torch.float64)


def _parse_key(key: Any) -> tuple[str, float | None]:
    """``"aurc_dice"`` or ``"<statistic>@<coverage>"``: the statistic and the coverage (None for the area)."""
    msg = (
        "`key` must be 'aurc_dice' or '<statistic>@<coverage>' with a statistic in "
        f"{', '.join(_STATISTICS)} and a coverage in (0, 1] (e.g. 'dice@0.9'), got {key!r}."
    )
    if not isinstance(key, str):
        raise TypeError(msg)
    if key == "aurc_dice":
        return key, None
    stat, _, coverage = key.partition("@")
    try:
        value = float(coverage)
    except ValueError:
        raise ValueError(msg) from None
    if stat not in _STATISTICS or not 0.0 < value <= 1.0:
        raise ValueError(msg)
    return stat, value


def _plain(x: Any) -> Any:
    """A tensor subclass (MONAI's ``MetaTensor``, whose every operation carries its metadata) as a plain
    tensor; anything else as it is."""
    if isinstance(x, torch.Tensor) and type(x) is not torch.Tensor:
        return x.as_subclass(torch.Tensor)
    return x


def _class_indices(pred: Any, label: Any, uncertainty: Any, num_classes: int, one_hot: bool | None) -> tuple:
    """``pred`` and ``label`` as integer class indices of ``uncertainty``'s shape (tensors only; other
    arrays pass through to the core's checks): one-hot decoded, float whole numbers checked and cast,
    a length-1 channel axis added or removed."""
    if isinstance(uncertainty, (list, tuple)):
        if not isinstance(pred, (list, tuple)) or not isinstance(label, (list, tuple)):
            return pred, label, uncertainty  # the core reports the mix
        if not len(pred) == len(label) == len(uncertainty):
            return pred, label, uncertainty  # the core reports the lengths
        out = [
            _class_indices_one(p, lab, u, num_classes, one_hot, 0, f"[{i}]")
            for i, (p, lab, u) in enumerate(zip(pred, label, uncertainty, strict=True))
        ]
        return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]
    return _class_indices_one(pred, label, uncertainty, num_classes, one_hot, 1, "")


def _class_indices_one(
    pred: Any, label: Any, u: Any, num_classes: int, one_hot: bool | None, axis: int, where: str
) -> tuple[Any, Any, Any]:
    u = _plain(u)
    if not isinstance(u, torch.Tensor) or u.ndim < axis:
        return _plain(pred), _plain(label), u
    u_shape = tuple(u.shape)
    return (
        _as_indices(_plain(pred), f"pred{where}", u_shape, axis, num_classes, one_hot),
        _as_indices(_plain(label), f"label{where}", u_shape, axis, num_classes, one_hot),
        u,
    )


def _as_indices(
    x: Any, name: str, u_shape: tuple[int, ...], axis: int, num_classes: int, one_hot: bool | None
) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    shape = tuple(x.shape)
    # the one-hot shapes: a class axis where `uncertainty` has none, or in place of its length-1 axis
    hot_shapes = [(*u_shape[:axis], num_classes, *u_shape[axis:])]
    if len(u_shape) > axis and u_shape[axis] == 1:
        hot_shapes.append((*u_shape[:axis], num_classes, *u_shape[axis + 1 :]))
    is_hot = shape in hot_shapes
    fits_indices = (
        shape == u_shape or _drop_axis(shape, axis) == u_shape or _drop_axis(u_shape, axis) == shape
    )
    if one_hot is None and is_hot and fits_indices:
        msg = (
            f"`{name}` of shape {shape} reads both as one-hot and as class indices (num_classes="
            f"{num_classes}); pass `one_hot=True` or `one_hot=False`."
        )
        raise ValueError(msg)
    if one_hot is True and not is_hot:
        msg = (
            f"`{name}` must be one-hot (one_hot=True): shape {hot_shapes[0]}, with the class axis at "
            f"{axis}, for `uncertainty` of shape {u_shape}; got {shape}."
        )
        raise ValueError(msg)
    if is_hot and one_hot is not False:
        ok = ((x == 0) | (x == 1)).all() & (x.sum(dim=axis) == 1).all()
        if not bool(ok):
            msg = (
                f"`{name}` is one-hot (class axis {axis} of length {num_classes}) but not exactly: every "
                "voxel must have a single 1 and zeros elsewhere."
            )
            raise ValueError(msg)
        return torch.reshape(torch.argmax(x, dim=axis), u_shape)
    if shape != u_shape and fits_indices:
        x = torch.reshape(x, u_shape)  # a length-1 channel axis on one side only
    if x.is_floating_point():
        if not bool((x == torch.round(x)).all()):
            msg = (
                f"`{name}` holds floating-point labels that are not whole numbers (or NaN); they must be "
                "class indices in value, as MONAI's LoadImaged gives them."
            )
            raise ValueError(msg)
        x = x.to(torch.int64)
    return x


def _drop_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...] | None:
    """``shape`` without its length-1 axis ``axis``; None when that axis is not of length 1."""
    if len(shape) > axis and shape[axis] == 1:
        return shape[:axis] + shape[axis + 1 :]
    return None

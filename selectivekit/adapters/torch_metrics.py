"""torchmetrics metrics: ``AURC`` and ``SelectiveDice``, exact while they fit a memory budget, with states
that add up across DDP ranks.

Like the accumulators of `selectivekit.streaming`, each metric keeps its inputs (list states, gathered
across ranks) while they fit ``max_memory`` bytes on a rank, and its results are then those of the core
functions on the concatenated inputs (``"exact"`` path). Past the budget a rank folds what it holds into
dense, fixed-size states over the cells of the threshold grid (every bfloat16 value by default: 65,536
cells, or ``len(edges) + 1`` cells for user ``edges``), which ``torch.distributed`` reduces with one
all-reduce per state: sums, plus a max for the largest ``u`` of each cell (the reported, achievable
threshold). When any rank went to the grid, the result is on the grid (``"grid"`` path) and carries a
rigorous bound, the lowest and highest exact value consistent with the cell counts
([`AURC.result`][selectivekit.adapters.torch.AURC.result], the ``_low``/``_high`` keys of
[`SelectiveDice.compute`][selectivekit.adapters.torch.SelectiveDice.compute]).

The update steps are the streaming ones ([`grid_update`][selectivekit.streaming.grid_update],
[`image_events`][selectivekit.streaming.image_events],
[`dice_from_counts`][selectivekit.segmentation.engine.dice_from_counts]) run on the input's device; the
results come from [`curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] and
[`step_area`][selectivekit.risk_coverage.step_area], or from the core functions on the exact path.

Grid state size: ``AURC`` 3 x 65,536 values (1.5 MB); ``SelectiveDice`` (3 + C) x 65,536 float64 values for
C evaluated classes (5.5 MiB for 7 classes). Pass coarser ``edges`` to shrink them. Every state is
persistent: ``state_dict()`` holds it, with the configuration, and ``load_state_dict`` refuses a state of
another configuration.
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

from .. import risk_coverage as rc
from .. import segmentation as seg
from .._lib import bincount, check_coverages, check_edges, check_num_classes, prepare_instances, scatter_max
from ..risk_coverage import RiskCoverageCurve
from ..segmentation.engine import dice_from_counts
from ..segmentation.images import collect_images
from ..segmentation.results import DiceCoverageCurve
from ..selective import group_at_coverage
from ..streaming import (
    DEFAULT_MAX_MEMORY,
    curve_from_grid,
    grid_bins,
    grid_dice_risk_bounds,
    grid_risk_bounds,
    grid_size,
    grid_update,
    image_events,
)
from ..typing import Namespace
from ._torch_metric_inputs import as_float64, check_max_memory, class_indices, not_none, widen

__all__ = ["AURC", "SelectiveDice", "SelectiveDiceValue"]

_STATISTICS = ("dice", "dice_std", "coverage")


def _should_sync(metric: Metric) -> bool:
    """Whether ``metric`` synchronizes its states across ranks (DDP) before reading them."""
    return (
        bool(metric.sync_on_compute)
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


def _cat(parts: Any, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """A list state (or its synchronized tensor) as one tensor of ``dtype``."""
    if isinstance(parts, torch.Tensor):
        return parts.to(dtype)
    if not parts:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat([p.to(dtype) for p in parts])


def _nbytes(parts: Any) -> int:
    if isinstance(parts, torch.Tensor):
        return parts.numel() * parts.element_size()
    return sum(p.numel() * p.element_size() for p in parts)


class _Configured(Metric):
    """What both metrics share: the configuration in ``state_dict`` and checks on merge and load."""

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, Any]:
        return {"selectivekit_config": self._config()}

    def set_extra_state(self, state: Any) -> None:
        theirs = state.get("selectivekit_config") if isinstance(state, dict) else None
        if theirs != self._config():
            msg = (
                f"`state_dict` was saved by a {type(self).__name__} of another configuration ({theirs}); "
                f"this one has {self._config()}."
            )
            raise ValueError(msg)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._local_bytes = self._held_bytes()
        self._computed = None  # torchmetrics caches the last result
        if self._local_bytes or int(torch.sum(self.count)) > 0:  # restored data counts as updated
            self._update_count = max(self._update_count, 1)

    def _held_bytes(self) -> int:
        raise NotImplementedError

    def _list_dtypes(self) -> dict[str, torch.dtype]:
        raise NotImplementedError

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        # an empty list state is gathered as float32 by torchmetrics: give it its dtype, or the ranks' sizes
        # in bytes disagree
        for name, dtype in self._list_dtypes().items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.zeros(0, dtype=dtype, device=self.device)])
        super()._sync_dist(*args, **kwargs)

    def merge_state(self, incoming_state: Any) -> None:
        """Merge the state of another metric of the same class and configuration (or a state dict)."""
        if isinstance(incoming_state, Metric):
            if type(incoming_state) is not type(self):
                msg = (
                    f"`incoming_state` must be a {type(self).__name__}, got {type(incoming_state).__name__}."
                )
                raise TypeError(msg)
            if incoming_state._config() != self._config():
                msg = (
                    f"`incoming_state` must have the same configuration as this metric: {self._config()}, "
                    f"got {incoming_state._config()}."
                )
                raise ValueError(msg)
        elif isinstance(incoming_state, dict):
            for name in self._defaults:
                value = incoming_state.get(name)
                mine = getattr(self, name)
                if isinstance(mine, torch.Tensor) and (
                    not isinstance(value, torch.Tensor) or value.shape != mine.shape
                ):
                    shape = getattr(value, "shape", None)
                    msg = (
                        f"`incoming_state[{name!r}]` must be a tensor of shape {tuple(mine.shape)} "
                        f"(the same configuration), got {type(value).__name__} of shape {shape}."
                    )
                    raise ValueError(msg)
        super().merge_state(incoming_state)
        self._local_bytes = self._held_bytes()
        if self._local_bytes > self.max_memory:
            self._to_grid()

    def _to_grid(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        super().reset()
        self._local_bytes = 0


class AURC(_Configured):
    """Area under the risk-coverage curve, accumulated over batches and DDP ranks (lower is better).

    Parameters
    ----------
    edges : sequence of float, optional
        Cell edges of the threshold grid used past the budget; default: every bfloat16 value.
    max_memory : int, default 1 GiB
        Bytes of kept instances per rank (16 an instance: ``u`` and the risk as float64) before the grid
        takes over; 0: the grid from the start.
    **kwargs
        Passed to `torchmetrics.Metric` (``sync_on_compute``, ``process_group``, ...).

    Notes
    -----
    [`compute`][selectivekit.adapters.torch.AURC.compute] returns the AURC;
    [`result`][selectivekit.adapters.torch.AURC.result] returns it with its bound and the path used. On the
    exact path both equal [`selectivekit.aurc`][selectivekit.aurc] on every instance.

    Examples
    --------
    >>> import torch
    >>> metric = AURC()
    >>> metric.update(torch.tensor([0.125, 0.25]), torch.tensor([True, False]))
    >>> metric.update(torch.tensor([0.5, 0.25]), torch.tensor([True, True]))
    >>> metric.compute()
    tensor(0.2292, dtype=torch.float64)
    >>> metric.result()["path"]
    'exact'
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, *, edges: Any = None, max_memory: int = DEFAULT_MAX_MEMORY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._edges = check_edges(edges)
        self.max_memory = check_max_memory(max_memory)
        self._local_bytes = 0
        n = grid_size(self._edges)
        f64 = torch.float64
        self.add_state("count", torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum", persistent=True)
        self.add_state("risk_sum", torch.zeros(n, dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("max_u", torch.full((n,), -math.inf, dtype=f64), dist_reduce_fx="max", persistent=True)
        self.add_state("u_kept", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("risk_kept", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("on_grid", torch.zeros((), dtype=torch.int64), dist_reduce_fx="max", persistent=True)
        self.add_state("soft", torch.zeros((), dtype=torch.int64), dist_reduce_fx="max", persistent=True)

    def _config(self) -> dict[str, Any]:
        return {"edges": None if self._edges is None else [float(e) for e in self._edges]}

    def _held_bytes(self) -> int:
        return _nbytes(self.u_kept) + _nbytes(self.risk_kept)

    def _list_dtypes(self) -> dict[str, torch.dtype]:
        return {"u_kept": torch.float64, "risk_kept": torch.float64}

    def update(
        self, uncertainty: torch.Tensor, correct: Any = None, *, risk: Any = None, mask: Any = None
    ) -> None:
        """Add instances (any shape): ``correct`` (bool) or ``risk`` (per-instance, in [0, 1])."""
        not_none(uncertainty, "uncertainty")
        uncertainty = torch.as_tensor(widen(uncertainty))
        inst = prepare_instances(
            uncertainty, widen(correct), risk=widen(risk), mask=widen(mask), target="correct_or_risk"
        )
        if not inst.is_bool:
            self.soft = torch.ones_like(self.soft)
        u = as_float64(inst.u)
        r = inst.risk.to(torch.float64)
        size = u.numel() * 16
        if int(self.on_grid) == 0 and self._local_bytes + size <= self.max_memory:
            self.u_kept.append(u)
            self.risk_kept.append(r)
            self._local_bytes += size
            return
        self._to_grid()
        self._grid_add(u, r)

    def _grid_add(self, u: torch.Tensor, r: torch.Tensor) -> None:
        count, risk_sum, top = grid_update(u, r, self.count.shape[0], edges=self._edges, xp=xpt)
        self.count += count.to(self.count.device)
        self.risk_sum += risk_sum.to(self.risk_sum.device)
        self.max_u = torch.maximum(self.max_u, top.to(self.max_u.device))

    def _to_grid(self) -> None:
        """Fold the kept instances into the grid states (this rank's)."""
        if int(self.on_grid) == 0:
            self.on_grid = torch.ones_like(self.on_grid)
        if self._held_bytes():
            self._grid_add(
                _cat(self.u_kept, torch.float64, self.count.device),
                _cat(self.risk_kept, torch.float64, self.count.device),
            )
        self.u_kept, self.risk_kept = [], []
        self._local_bytes = 0

    def _kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.count.device
        return _cat(self.u_kept, torch.float64, dev), _cat(self.risk_kept, torch.float64, dev)

    def _grid_states(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The grid states with the instances still kept (by ranks that stayed exact) folded in."""
        u, r = self._kept()
        count, risk_sum, top = self.count, self.risk_sum, self.max_u
        if u.numel():
            c2, r2, t2 = grid_update(u, r, count.shape[0], edges=self._edges, xp=xpt)
            count, risk_sum, top = count + c2, risk_sum + r2, torch.maximum(top, t2)
        return count, risk_sum, top

    def _exact_target(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        u, r = self._kept()
        if u.numel() == 0:
            msg = "no instance was accumulated; call `update` with at least one instance first."
            raise ValueError(msg)
        return u, ({"risk": r} if int(self.soft) else {"correct": r == 0})

    def _curve(self) -> RiskCoverageCurve:
        if int(self.on_grid) == 0:
            u, target = self._exact_target()
            return rc.risk_coverage_curve(u, target.get("correct"), risk=target.get("risk"))
        return curve_from_grid(*self._grid_states(), xp=xpt)

    def _result(self) -> dict[str, Any]:
        if int(self.on_grid) == 0:
            u, target = self._exact_target()
            v = rc.aurc(u, target.get("correct"), risk=target.get("risk"))
            return {"aurc": v, "aurc_low": v, "aurc_high": v, "path": "exact"}
        count, risk_sum, _ = self._grid_states()
        occupied = torch.nonzero(count > 0)[:, 0]
        v, lo, hi = grid_risk_bounds(count[occupied], risk_sum[occupied])["aurc"]
        return {"aurc": v, "aurc_low": lo, "aurc_high": hi, "path": "grid"}

    def compute(self) -> torch.Tensor:
        """AURC of the accumulated (and, under DDP, synchronized) instances, as a float64 0-d tensor."""
        return torch.tensor(self._result()["aurc"], dtype=torch.float64)

    def result(self) -> dict[str, Any]:
        """``{"aurc", "aurc_low", "aurc_high"}`` as float64 0-d tensors and ``"path"`` (``"exact"`` or
        ``"grid"``), synchronized across ranks. The bound is the lowest and highest exact AURC consistent
        with the cell counts (``aurc`` twice on the exact path)."""
        with self.sync_context(should_sync=_should_sync(self)):
            out = self._result()
        return {k: v if k == "path" else torch.tensor(v, dtype=torch.float64) for k, v in out.items()}

    def curve(self) -> RiskCoverageCurve:
        """The risk-coverage curve, at every distinct ``u`` (exact) or occupied cell (grid), synchronized
        across ranks."""
        with self.sync_context(should_sync=_should_sync(self)):
            return self._curve()


class SelectiveDice(_Configured):
    """Coverage-aware Dice with referral, accumulated over images and DDP ranks.

    While the images fit ``max_memory`` on every rank they are kept (in compact dtypes) and the results are
    those of [`selectivekit.dice_at_coverage`][selectivekit.dice_at_coverage] and
    [`selectivekit.aurc_dice`][selectivekit.aurc_dice] on all of them. Past the budget each image's Dice
    after referral is evaluated at every grid cell (one cumulative sum over the cells per class) and added
    to per-cell sums over images. The sums are exact and add up across ranks, so the mean (and standard
    deviation) of the image Dice at any global coverage, and ``aurc_dice``, need no per-image state.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K``.
    include_background : bool, default False
        Evaluate class 0 too (default: classes ``1..K-1``).
    coverages : float or sequence of float, default (1.0, 0.95, 0.9, 0.8, 0.7)
        Coverages reported by [`compute`][selectivekit.adapters.torch.SelectiveDice.compute]; two that
        give the same key (``f"{c:g}"``) are refused.
    edges : sequence of float, optional
        Cell edges of the threshold grid used past the budget; default: every bfloat16 value.
    max_memory : int, default 1 GiB
        Bytes of kept images per rank (``u`` as float64 and both label maps: 10 bytes a voxel for up to
        256 classes) before the grid takes over; 0: the grid from the start.
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
    ``"aurc_dice"`` (lower is better) with its bound ``"aurc_dice_low"``/``"aurc_dice_high"``, ``"exact"``
    (1.0 on the exact path, 0.0 on the grid), and for each coverage ``c``: ``"dice@c"`` (mean image Dice,
    higher is better) with its bound ``"dice_low@c"``/``"dice_high@c"``, ``"dice_std@c"`` (``ddof=0``) and
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
    {'aurc_dice': 0.2083, 'aurc_dice_low': 0.2083, 'aurc_dice_high': 0.2083, 'exact': 1.0, 'dice@1': 0.5, ...}
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
        max_memory: int = DEFAULT_MAX_MEMORY,
        ignore_empty: bool = False,
        one_hot: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_num_classes(num_classes, include_background)
        self.include_background = bool(include_background)
        self._first = 0 if include_background else 1
        self.coverages = check_coverages(coverages)
        keys = [f"{c:g}" for c in self.coverages]
        if len(set(keys)) != len(keys):
            msg = (
                f"`coverages` must give distinct keys `dice@{{c:g}}`, got {self.coverages} "
                f"(keys {keys}); drop or round the coverages that collide."
            )
            raise ValueError(msg)
        self._edges = check_edges(edges)
        self.max_memory = check_max_memory(max_memory)
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
            "max_memory": max_memory,
            "ignore_empty": ignore_empty,
            "one_hot": one_hot,
            **kwargs,
        }
        self._local_bytes = 0
        self._label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int64
        n = grid_size(self._edges)
        c = self.num_classes - self._first
        f64 = torch.float64
        dense = {
            "count": torch.zeros(n, dtype=torch.int64),
            "max_u": torch.full((n,), -math.inf, dtype=f64),
            "dice_sum": torch.zeros(n, dtype=f64),
            "dice_sq_sum": torch.zeros(n, dtype=f64),
            "class_dice_sum": torch.zeros((c, n), dtype=f64),
            "n_images": torch.zeros((), dtype=torch.int64),
        }
        for name, default in dense.items():
            self.add_state(name, default, dist_reduce_fx="max" if name == "max_u" else "sum", persistent=True)
        for name in ("pred_kept", "label_kept", "u_kept", "size_kept"):
            self.add_state(name, [], dist_reduce_fx="cat", persistent=True)
        self.add_state("on_grid", torch.zeros((), dtype=torch.int64), dist_reduce_fx="max", persistent=True)
        if ignore_empty:  # grid: images with a class in their label, and per class
            zero = torch.zeros((), dtype=torch.int64)
            self.add_state("n_scored", zero, dist_reduce_fx="sum", persistent=True)
            self.add_state(
                "class_images", torch.zeros(c, dtype=torch.int64), dist_reduce_fx="sum", persistent=True
            )

    def _config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "include_background": self.include_background,
            "edges": None if self._edges is None else [float(e) for e in self._edges],
            "ignore_empty": self.ignore_empty,
        }

    def _held_bytes(self) -> int:
        return sum(_nbytes(getattr(self, n)) for n in ("pred_kept", "label_kept", "u_kept"))

    def _list_dtypes(self) -> dict[str, torch.dtype]:
        labels = self._label_dtype
        return {"pred_kept": labels, "label_kept": labels, "u_kept": torch.float64, "size_kept": torch.int64}

    def update(self, pred: torch.Tensor, label: torch.Tensor, uncertainty: torch.Tensor) -> None:
        """Add a batch of images: tensors of shape (n_images, *spatial), or lists of per-image tensors."""
        for name, value in (("pred", pred), ("label", label), ("uncertainty", uncertainty)):
            not_none(value, name)
        pred, label, uncertainty = class_indices(pred, label, uncertainty, self.num_classes, self.one_hot)
        if isinstance(uncertainty, (list, tuple)):
            uncertainty = [widen(u) for u in uncertainty]
        else:
            uncertainty = widen(uncertainty)
        images, _ = collect_images(pred, label, uncertainty, self.num_classes)
        as_float64(images.u)  # refuses integers that float64 would tie, before any state changes
        start = 0
        for size in images.sizes:
            p = images.pred[start : start + size]
            t = images.label[start : start + size]
            u = images.u[start : start + size]
            start += size
            nbytes = size * (8 + 2 * torch.empty((), dtype=self._label_dtype).element_size())
            if int(self.on_grid) == 0 and self._local_bytes + nbytes <= self.max_memory:
                self.pred_kept.append(p.to(self._label_dtype))
                self.label_kept.append(t.to(self._label_dtype))
                self.u_kept.append(u.to(torch.float64))
                self.size_kept.append(torch.tensor([size], dtype=torch.int64, device=u.device))
                self._local_bytes += nbytes
            else:
                self._to_grid()
                self._grid_image(p, t, u, self._states())

    def _states(self) -> dict[str, torch.Tensor]:
        names = ["count", "max_u", "dice_sum", "dice_sq_sum", "class_dice_sum"]
        if self.ignore_empty:
            names += ["n_scored", "class_images"]
        return {n: getattr(self, n) for n in names} | {"n_images": self.n_images}

    def _grid_image(self, p: Any, t: Any, u: Any, states: dict[str, torch.Tensor]) -> None:
        """Add one image (flat tensors) to the grid ``states`` (in place)."""
        xp = xpt
        n_bins = states["count"].shape[0]
        n_cls = self.num_classes - self._first
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
        dev = states["count"].device
        if self.ignore_empty:  # the classes present in the label only; no image without one
            present = label_count > 0
            n_present = present.sum()
            dice = dice * present[:, None]
            image_dice = dice.sum(0) / torch.clamp(n_present, min=1)
            states["n_scored"] += (n_present > 0).to(dev)
            states["class_images"] += present.to(dev)
        else:
            image_dice = torch.mean(dice, dim=0)
        states["count"] += count.to(dev)
        states["max_u"].copy_(torch.maximum(states["max_u"], top.to(dev)))
        states["dice_sum"] += image_dice.to(dev)
        states["dice_sq_sum"] += (image_dice * image_dice).to(dev)
        states["class_dice_sum"] += dice.to(dev)
        states["n_images"] += 1

    @staticmethod
    def _per_cell(slot: Any, weight: Any, n_cls: int, n_bins: int, xp: Namespace) -> torch.Tensor:
        total = bincount(slot, n_cls * n_bins, xp, weights=xp.astype(weight, xp.float64))
        return torch.reshape(total, (n_cls, n_bins))

    def _kept(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        dev = self.count.device
        sizes = _cat(self.size_kept, torch.int64, dev).tolist()
        pred = _cat(self.pred_kept, torch.int64, dev)
        label = _cat(self.label_kept, torch.int64, dev)
        u = _cat(self.u_kept, torch.float64, dev)
        out, start = [], 0
        for size in sizes:
            out.append((pred[start : start + size], label[start : start + size], u[start : start + size]))
            start += size
        return out

    def _to_grid(self) -> None:
        """Fold the kept images into the grid states (this rank's)."""
        if int(self.on_grid) == 0:
            self.on_grid = torch.ones_like(self.on_grid)
        if self._held_bytes():
            states = self._states()
            for p, t, u in self._kept():
                self._grid_image(p, t, u, states)
            self.n_images = states["n_images"]
        for name in ("pred_kept", "label_kept", "u_kept", "size_kept"):
            setattr(self, name, [])
        self._local_bytes = 0

    def _grid_states(self) -> dict[str, torch.Tensor]:
        """The grid states with the images still kept (by ranks that stayed exact) folded in (a copy)."""
        states = {k: v.clone() for k, v in self._states().items()}
        for p, t, u in self._kept():
            self._grid_image(p, t, u, states)
        if int(states["n_images"]) == 0:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        return states

    def _exact_inputs(self) -> tuple[list, list, list, dict[str, Any]]:
        kept = self._kept()
        if not kept:
            msg = "no image was accumulated; call `update` with at least one image first."
            raise ValueError(msg)
        preds, labels, us = (list(x) for x in zip(*kept, strict=True))
        return (
            preds,
            labels,
            us,
            {
                "num_classes": self.num_classes,
                "include_background": self.include_background,
                "ignore_empty": self.ignore_empty,
            },
        )

    def _n_dice(self, states: dict[str, torch.Tensor]) -> torch.Tensor:
        """The number of images the mean Dice is over (float64): those with a class, for ``ignore_empty``."""
        return (states["n_scored"] if self.ignore_empty else states["n_images"]).to(torch.float64)

    @staticmethod
    def _occupied(states: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        occupied = torch.nonzero(states["count"] > 0)[:, 0]
        return occupied, torch.cumsum(states["count"], 0)[occupied]

    def _grid_curve(self, states: dict[str, torch.Tensor]) -> DiceCoverageCurve:
        occupied, cum_count = self._occupied(states)
        return DiceCoverageCurve(
            coverage=cum_count.to(torch.float64) / cum_count[-1],
            mean_dice=states["dice_sum"][occupied] / self._n_dice(states),
            threshold=states["max_u"][occupied],
        )

    def _curve(self) -> DiceCoverageCurve:
        if int(self.on_grid) == 0:
            preds, labels, us, options = self._exact_inputs()
            return seg.dice_coverage_curve(preds, labels, us, **options)
        return self._grid_curve(self._grid_states())

    def curve(self) -> DiceCoverageCurve:
        """The Dice-coverage curve, at every distinct ``u`` (exact) or occupied cell (grid), synchronized
        across ranks."""
        with self.sync_context(should_sync=_should_sync(self)):
            return self._curve()

    def compute(self) -> dict[str, torch.Tensor]:
        """``aurc_dice`` and mean/std/realized coverage at each requested coverage, with the bounds of the
        grid path (float64 tensors; see the class notes for the keys)."""
        f64 = torch.float64
        if int(self.on_grid) == 0:
            preds, labels, us, options = self._exact_inputs()
            v = float(seg.aurc_dice(preds, labels, us, **options))
            out = {"aurc_dice": v, "aurc_dice_low": v, "aurc_dice_high": v, "exact": 1.0}
            for c, r in zip(
                self.coverages,
                seg.dice_at_coverage(preds, labels, us, self.coverages, **options),
                strict=True,
            ):
                key = f"{c:g}"
                out |= {f"dice@{key}": r.mean, f"dice_low@{key}": r.mean, f"dice_high@{key}": r.mean}
                out |= {f"dice_std@{key}": r.std, f"coverage@{key}": r.coverage}
            return {k: torch.tensor(float(v), dtype=f64) for k, v in out.items()}
        states = self._grid_states()
        curve = self._grid_curve(states)
        occupied, cum_count = self._occupied(states)
        n = self._n_dice(states)
        v, lo, hi = grid_dice_risk_bounds(states["count"][occupied], 1.0 - curve.mean_dice)
        out = {
            "aurc_dice": torch.tensor(v, dtype=f64),
            "aurc_dice_low": torch.tensor(lo, dtype=f64),
            "aurc_dice_high": torch.tensor(hi, dtype=f64),
            "exact": torch.tensor(0.0, dtype=f64),
        }
        for c in self.coverages:
            g = group_at_coverage(cum_count, c, xp=xpt)
            cell = occupied[g]
            mean = states["dice_sum"][cell] / n
            before = states["dice_sum"][occupied[g - 1]] / n if g > 0 else torch.ones((), dtype=f64)
            var = torch.clamp(states["dice_sq_sum"][cell] / n - mean * mean, min=0.0)
            key = f"{c:g}"
            out[f"dice@{key}"] = mean.to(f64)
            out[f"dice_low@{key}"] = mean.to(f64)
            out[f"dice_high@{key}"] = before.to(f64)
            out[f"dice_std@{key}"] = torch.sqrt(var).to(f64)
            out[f"coverage@{key}"] = curve.coverage[g].to(f64)
        return out

    def class_dice(self, coverage: float) -> torch.Tensor:
        """Mean Dice of each evaluated class over the images at ``coverage``: shape (C,)."""
        c = check_coverages(coverage)[0]
        with self.sync_context(should_sync=_should_sync(self)):
            if int(self.on_grid) == 0:
                preds, labels, us, options = self._exact_inputs()
                r = seg.dice_at_coverage(preds, labels, us, [c], **options)[0]
                return torch.nanmean(torch.as_tensor(r.per_class_dice, dtype=torch.float64), dim=0)
            states = self._grid_states()
            occupied, cum_count = self._occupied(states)
            cell = occupied[group_at_coverage(cum_count, c, xp=xpt)]
            n = states["class_images"] if self.ignore_empty else states["n_images"]
            return states["class_dice_sum"][:, cell] / n.to(torch.float64)

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

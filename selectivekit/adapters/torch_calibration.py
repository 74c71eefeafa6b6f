"""A torchmetrics metric of calibration: ECE, MCE, class-wise ECE, Brier score and NLL per voxel.

Its states are the equal-width bin counts and sums of [`selectivekit.calibration`][selectivekit.calibration]
(integer counts and float64 sums, reduced across DDP ranks by one sum each), so the result over ranks and
batches is the one of [`CalibrationAccumulator`][selectivekit.CalibrationAccumulator] over the same voxels.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xpt
import numpy as np
import torch

try:
    from torchmetrics import Metric
except (ImportError, RuntimeError, OSError) as exc:  # a CUDA torchvision beside a CPU torch: RuntimeError
    _msg = (
        "the selectivekit calibration metric needs torchmetrics, which could not be imported "
        f"({type(exc).__name__}: {exc}). Install or repair it: pip install torchmetrics."
    )
    raise ImportError(_msg) from exc

from .._lib import check_positive_int
from ..calibration import CalibrationBins, bin_statistics, brier_nll_sums, calibration_inputs

__all__ = ["CalibrationError"]


class CalibrationError(Metric):
    """Calibration of voxel probabilities, accumulated over batches and DDP ranks.

    Parameters
    ----------
    num_classes : int
        ``C``, the length of the class axis.
    n_bins : int, default 15
        Equal-width bins: bin ``b`` holds confidences in ``((b-1)/B, b/B]``, the first also 0.
    include_background : bool, default True
        Whether class 0 counts in the class-wise ECE.
    axis : int, default 1
        The class axis of ``probs`` (1 for (N, C, H, W)).
    from_logits : bool, default False
        Apply a softmax over ``axis`` to what ``update`` receives.

    Examples
    --------
    >>> import torch
    >>> metric = CalibrationError(2, n_bins=5)
    >>> metric.update(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]))
    >>> metric.update(torch.tensor([[0.6, 0.4], [1.0, 0.0]]), torch.tensor([0, 0]))
    >>> round(float(metric.compute()["expected_calibration_error"]), 4)
    0.075
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(
        self,
        num_classes: int,
        *,
        n_bins: int = 15,
        include_background: bool = True,
        axis: int = 1,
        from_logits: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.n_bins = check_positive_int(n_bins, "n_bins")
        self.axis = axis
        self.from_logits = bool(from_logits)
        if not include_background and self.num_classes < 2:
            msg = "`include_background=False` needs at least 2 classes."
            raise ValueError(msg)
        self.classes = list(range(0 if include_background else 1, self.num_classes))
        self.edges = np.arange(self.n_bins + 1, dtype=np.float64) / self.n_bins
        b, k = self.n_bins, len(self.classes)
        for name, shape, dtype in (
            ("counts", (b,), torch.int64),
            ("confidence_sums", (b,), torch.float64),
            ("correct_counts", (b,), torch.int64),
            ("class_counts", (k, b), torch.int64),
            ("class_confidence_sums", (k, b), torch.float64),
            ("class_outcomes", (k, b), torch.int64),
            ("brier_sum", (), torch.float64),
            ("nll_sum", (), torch.float64),
            ("voxels", (), torch.int64),
        ):
            self.add_state(name, torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum", persistent=True)

    def update(self, probs: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch: ``probs`` (or logits with ``from_logits=True``) and integer labels."""
        if self.from_logits:
            if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
                msg = f"`probs` must be a float tensor of logits, got {type(probs).__name__}."
                raise TypeError(msg)
            probs = torch.softmax(probs.detach().float() if probs.dtype in (torch.float16, torch.bfloat16)
                                  else probs.detach(), dim=self.axis)  # fmt: skip
        else:
            probs = probs.detach() if isinstance(probs, torch.Tensor) else probs
        flat, label, c, xp = calibration_inputs(probs, label, self.axis, mask, xpt)
        if c != self.num_classes:
            msg = f"`probs` must have {self.num_classes} classes on axis {self.axis}, got {c}."
            raise ValueError(msg)
        stats = bin_statistics(xp.max(flat, axis=-1), xp.argmax(flat, axis=-1) == label, self.edges, xp)
        for state, value in zip(("counts", "confidence_sums", "correct_counts"), stats, strict=True):
            setattr(self, state, getattr(self, state) + value.to(getattr(self, state).device))
        for i, k in enumerate(self.classes):
            stats = bin_statistics(flat[:, k], label == k, self.edges, xp)
            for state, value in zip(
                ("class_counts", "class_confidence_sums", "class_outcomes"), stats, strict=True
            ):
                getattr(self, state)[i] += value.to(getattr(self, state).device)
        brier, nll = brier_nll_sums(flat, label, xp)
        self.brier_sum = self.brier_sum + brier.to(self.brier_sum.device, torch.float64)
        self.nll_sum = self.nll_sum + nll.to(self.nll_sum.device, torch.float64)
        self.voxels = self.voxels + flat.shape[0]

    def bins(self) -> CalibrationBins:
        """The pooled top-label bins (for ``selectivekit.plotting.plot_reliability``)."""
        return CalibrationBins(self.edges, self.counts.cpu().numpy(), self.confidence_sums.cpu().numpy(),
                               self.correct_counts.cpu().numpy())  # fmt: skip

    def compute(self) -> dict[str, torch.Tensor]:
        """``expected_calibration_error``, ``maximum_calibration_error``, ``classwise_calibration_error``,
        ``brier_score`` and ``negative_log_likelihood`` as float64 tensors (NaN before any update)."""
        top = self.bins()
        per_class = [
            CalibrationBins(
                self.edges, n.cpu().numpy(), s.cpu().numpy(), o.cpu().numpy()
            ).expected_calibration_error()
            for n, s, o in zip(
                self.class_counts, self.class_confidence_sums, self.class_outcomes, strict=True
            )
        ]
        voxels = int(self.voxels)
        values = {
            "expected_calibration_error": top.expected_calibration_error(),
            "maximum_calibration_error": top.maximum_calibration_error(),
            "classwise_calibration_error": float(np.mean(per_class)) if voxels else float("nan"),
            "brier_score": float(self.brier_sum) / voxels if voxels else float("nan"),
            "negative_log_likelihood": float(self.nll_sum) / voxels if voxels else float("nan"),
        }
        return {k: torch.tensor(v, dtype=torch.float64, device=self.voxels.device) for k, v in values.items()}

"""Mergeable accumulators for evaluation sets that do not fit in memory: exact while they fit.

Exact first
-----------
An accumulator keeps the instances themselves (``u`` and the correctness or risk; for segmentation the
predicted labels, true labels and ``u`` of each image, in compact dtypes) while they fit in ``max_memory``
bytes (default [`DEFAULT_MAX_MEMORY`][selectivekit.streaming.DEFAULT_MAX_MEMORY], 1 GiB). Its results are
then those of the in-memory functions ([`selectivekit.aurc`][selectivekit.aurc],
[`selectivekit.dice_coverage_curve`][selectivekit.dice_coverage_curve], ...) on the concatenated inputs, to
the last bit, and ``path`` is ``"exact"``.

The grid beyond the budget
--------------------------
Past the budget the accumulator folds what it holds into a threshold grid and continues there (``path`` is
``"grid"``). By default the grid has one cell per bfloat16 value: a float32 ``u`` falls in the cell of its
upper 16 bits (relative resolution ``2**-8`` at every magnitude, so saturated-softmax voxels near 0 keep
separate thresholds); ``grid="float32-24"`` keeps the upper 24 bits (relative resolution ``2**-16``, a
tighter bound for a state of at most ``2**24`` occupied cells). A grid of user-given ``edges``
(right-closed cells ``(e_{j-1}, e_j]``) can be used instead. Each occupied cell keeps its instance count,
its summed risk and its largest ``u``, which is the reported threshold: accepting ``u <= max`` accepts
exactly the cells up to it, so every operating point is achievable.

Every grid result comes with a rigorous bound (the ``*_bound`` methods): the lowest and highest exact value
that any data with the same cell counts could give, whatever the order and the ties of the instances inside
each cell. For the risk-coverage areas each cell is ordered best case (correct instances first, and the ties
that lower the step rule most) and worst case (errors first), in closed form (harmonic sums). The bound is 0
wide when every value is alone in its cell (e.g. ``u`` already rounded to bfloat16); in exact mode it is the
value itself. Floating rounding is covered by widening a non-degenerate bound by ``8 eps`` per occupied cell.

``a.merge(b)`` equals one pass over both inputs: exact + exact stays exact (while the sum fits ``a``'s
budget), anything merged with a grid state is a grid state. The accumulators pickle (for process pools) and
[`SegmentationAccumulator.to_arrays`][selectivekit.SegmentationAccumulator.to_arrays] gives a pickle-free
form for files.

The accumulators reuse the in-memory pieces:
[`selectivekit.risk_coverage.curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] and
[`step_area`][selectivekit.risk_coverage.step_area] for the risk-coverage curve, and
[`selectivekit.segmentation.DiceGroups`][selectivekit.segmentation.engine.DiceGroups] for the Dice-coverage
computations.
"""

from __future__ import annotations

# The code (maintainers): _grid.py the grid (cells, occupied-cell state, bounds), _inputs.py the budget and
# the kept inputs both accumulators share, _risk.py and _segmentation.py one accumulator each.
from ._grid import (
    BFLOAT16_BINS,
    GRIDS,
    curve_from_grid,
    grid_bins,
    grid_dice_risk_bounds,
    grid_risk_bounds,
    grid_size,
    grid_update,
    image_events,
)
from ._inputs import DEFAULT_MAX_MEMORY
from ._risk import RiskCoverageAccumulator
from ._segmentation import SegmentationAccumulator

__all__ = [
    "BFLOAT16_BINS",
    "DEFAULT_MAX_MEMORY",
    "GRIDS",
    "RiskCoverageAccumulator",
    "SegmentationAccumulator",
    "curve_from_grid",
    "grid_bins",
    "grid_dice_risk_bounds",
    "grid_risk_bounds",
    "grid_size",
    "grid_update",
    "image_events",
]

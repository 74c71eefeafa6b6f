"""The streaming risk-coverage accumulator (see ``selectivekit.streaming``)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .. import risk_coverage as rc
from .._lib import check_edges, prepare_instances
from .._lib.sorted_groups import bit_key, step_areas
from .._lib.tie_groups import excess_aurc
from ..risk_coverage import RiskCoverageCurve, aurc_optimal
from ..typing import Array
from ._grid import GRIDS, Cells, curve_from_grid, grid_risk_bounds, grid_size
from ._inputs import (
    CHUNK,
    DEFAULT_MAX_MEMORY,
    check_grid,
    check_max_memory,
    check_same_grid,
    check_state_header,
    common_u,
    compact_u,
    concat,
    host,
    widen_half,
)
from ._sorted import merged_key, sort_instances

__all__ = ["RiskCoverageAccumulator"]

_STATE_FORMAT = "selectivekit.risk_coverage_state"
_STATE_VERSION = 1
_GRID_NAMES = {bits: name for name, bits in GRIDS.items()}


def _state_error(what: str) -> ValueError:
    return ValueError(f"`arrays` do not hold a consistent {_STATE_FORMAT} state: {what}.")


def _vector(arrays: dict[str, np.ndarray], name: str, kinds: str) -> np.ndarray:
    a = arrays.get(name)
    if not isinstance(a, np.ndarray) or a.ndim != 1 or (a.size and a.dtype.kind not in kinds):
        raise _state_error(
            f"`{name}` must be a 1-d array of kind {kinds!r}, got {getattr(a, 'dtype', type(a))}"
        )
    return a


class RiskCoverageAccumulator:
    """Streaming risk-coverage curve, AURC, AUGRC and e-AURC: exact while the instances fit ``max_memory``,
    then on a threshold grid with rigorous bounds.

    Parameters
    ----------
    edges : sequence of float, optional
        Cell edges of the grid (strictly increasing); default: the grid named by ``grid``.
    grid : {"bfloat16", "float32-24"}, default "bfloat16"
        The grid used past the budget: the upper 16 or 24 bits of float32 ``u`` (finer: a tighter bound, at
        most ``2**24`` occupied cells).
    max_memory : int, default DEFAULT_MAX_MEMORY (1 GiB)
        Bytes of kept instances (float32 ``u`` and a bool: 5 bytes each) before the grid takes over; 0:
        the grid from the start.

    Notes
    -----
    ``path`` is ``"exact"`` while the instances are kept: every result is then the in-memory function's on
    the concatenated updates (for example [`selectivekit.aurc`][selectivekit.aurc]), to the last bit, and
    each bound is that value twice. On the grid the state is the occupied cells (count, summed risk,
    largest ``u``), whatever the number of instances; the curve comes from
    [`selectivekit.risk_coverage.curve_from_groups`][selectivekit.risk_coverage.curve_from_groups] over those
    cells and [`aurc_bound`][selectivekit.RiskCoverageAccumulator.aurc_bound] gives the lowest and highest
    exact AURC consistent with the cell counts (see the module notes).

    Examples
    --------
    >>> import numpy as np
    >>> acc = RiskCoverageAccumulator()
    >>> acc.update(np.array([0.125, 0.25]), np.array([True, False]))
    >>> acc.update(np.array([0.5, 0.25]), np.array([True, True]))
    >>> acc.aurc(), acc.path
    (0.22916666666666663, 'exact')
    >>> grid = RiskCoverageAccumulator(max_memory=0)
    >>> grid.update(np.array([0.5, 0.5001, 0.25]), np.array([True, False, True]))
    >>> grid.path, [round(b, 6) for b in grid.aurc_bound()]  # exact AURC: 1/9 to 5/18
    ('grid', [0.111111, 0.277778])
    """

    def __init__(
        self, *, edges: Any = None, grid: str = "bfloat16", max_memory: int = DEFAULT_MAX_MEMORY
    ) -> None:
        self._edges = check_edges(edges)
        self._bits = check_grid(grid, self._edges)
        self.max_memory = check_max_memory(max_memory)
        self._u: list[np.ndarray] = []  # exact path: the instances, update after update
        self._risk: list[np.ndarray] = []  # bool "wrong" flags, or float64 risks once one is soft
        self._sorted: list[bool] = []  # per update: already sorted by (u, correct) (`_sort_kept`)
        self._key: Any = None  # exact path, boolean: the sorted key of bit_key, computed once
        self._given_key: Any = None  # that key built by the caller from the same instances (`_use_key`)
        self._nbytes = 0
        self._cells: Cells | None = None  # grid path
        self._soft = False

    @property
    def path(self) -> str:
        """``"exact"`` while the instances are kept, ``"grid"`` after the budget was exceeded."""
        return "exact" if self._cells is None else "grid"

    @property
    def n_instances(self) -> int:
        """Number of instances accumulated so far: the kept ones on the exact path, the sum of the cell counts
        on the grid."""
        if self._cells is None:
            return sum(u.shape[0] for u in self._u)
        return int(self._cells.arrays()[1].sum())

    def update(
        self,
        uncertainty: Array,
        correct: Array | None = None,
        /,
        *,
        risk: Array | None = None,
        mask: Array | None = None,
    ) -> None:
        """Add instances: ``correct`` (bool) or ``risk`` (per-instance, in [0, 1]); arrays of any shape."""
        if uncertainty is None:
            msg = "`uncertainty` must be an array, got None."
            raise TypeError(msg)
        inst = prepare_instances(
            widen_half(uncertainty),
            widen_half(correct),
            risk=widen_half(risk),
            mask=widen_half(mask),
            target="correct_or_risk",
        )
        u = compact_u(host(inst.u))
        if inst.is_bool:
            r = ~host(inst.correct).astype(bool, copy=False)
        else:
            r = host(inst.soft_risk).astype(np.float64)
        self._add(u, r)

    def _add(self, u: np.ndarray, r: np.ndarray, copy: bool = True, is_sorted: bool = False) -> None:
        self._key = self._given_key = None
        if r.dtype != np.bool_ and not self._soft:
            self._soft = True
            self._risk = [x.astype(np.float64) for x in self._risk]
        if self._soft and r.dtype == np.bool_:
            r = r.astype(np.float64)
        if self._cells is None and self._nbytes + u.nbytes + r.nbytes <= self.max_memory:
            self._u.append(u.copy() if copy else u)  # a copy: the caller may reuse its buffer
            self._risk.append(r.copy() if copy else r)
            self._sorted.append(is_sorted)
            self._nbytes += u.nbytes + r.nbytes
            return
        self._to_grid()
        self._grid_add(u, r)

    def _grid_add(self, u: np.ndarray, r: np.ndarray) -> None:
        assert self._cells is not None
        for start in range(0, u.shape[0], CHUNK):
            stop = start + CHUNK
            self._cells.add_values(u[start:stop], r[start:stop], (self._edges, self._bits))

    def _to_grid(self) -> None:
        if self._cells is not None:
            return
        self._cells = Cells()
        for u, r in zip(self._u, self._risk, strict=True):
            self._grid_add(u, r)
        self._u, self._risk, self._sorted, self._nbytes, self._key = [], [], [], 0, None
        self._given_key = None

    def merge(self, other: RiskCoverageAccumulator) -> RiskCoverageAccumulator:
        """Add the state of ``other`` (same grid) into this accumulator; returns ``self``.

        Exact + exact stays exact while both fit this accumulator's ``max_memory``; otherwise the result is
        on the grid. ``other`` is not changed. ``acc.merge(acc)`` doubles the data, as merging a copy does.
        """
        check_same_grid(self, other)
        if other._cells is None:
            # a snapshot: with ``other is self`` the loop would walk the lists it appends to
            for u, r, done in list(zip(other._u, other._risk, other._sorted, strict=True)):
                self._add(u, r, copy=False, is_sorted=done)  # kept arrays are never written: both may share
        else:
            self._to_grid()
            assert self._cells is not None
            self._cells.add(*other._cells.arrays())
        if other._soft and not self._soft:
            self._soft = True
            self._risk = [x.astype(np.float64) for x in self._risk]
        return self

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The state as a JSON-able header and named NumPy arrays (no pickle), for
        [`from_arrays`][selectivekit.RiskCoverageAccumulator.from_arrays]."""
        header = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "edges": None if self._edges is None else [float(e) for e in self._edges],
            "grid": _GRID_NAMES.get(self._bits, "bfloat16"),
            "max_memory": self.max_memory,
            "path": self.path,
            "soft": self._soft,
        }
        if self._cells is None:
            u = concat(common_u(self._u)) if self._u else np.zeros(0, dtype=np.float32)
            risk = concat(self._risk) if self._risk else np.zeros(0, dtype=np.float64 if self._soft else bool)
            sizes = np.array([part.size for part in self._u], dtype=np.int64)
            return header, {"u": u, "risk": risk, "size": sizes}
        ids, count, risk, top = self._cells.arrays()
        return header, {"cells_id": ids, "cells_count": count, "cells_risk": risk, "cells_top": top}

    @classmethod
    def from_arrays(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> RiskCoverageAccumulator:
        """Rebuild an accumulator from [`to_arrays`][selectivekit.RiskCoverageAccumulator.to_arrays]; a state
        that ``to_arrays`` cannot have written raises ``ValueError``."""
        check_state_header(header, _STATE_FORMAT, _STATE_VERSION)
        try:
            acc = cls(edges=header["edges"], grid=header["grid"], max_memory=header["max_memory"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _state_error(f"its settings are not valid ({exc})") from None
        soft, path = header.get("soft"), header.get("path")
        if not isinstance(soft, bool) or path not in ("exact", "grid"):
            raise _state_error("`soft` must be true or false and `path` exact or grid")
        acc._soft = soft
        if path == "exact":
            sizes = _vector(arrays, "size", "iu")
            u, risk = _vector(arrays, "u", "fiu"), _vector(arrays, "risk", "f" if soft else "b")
            total = int(sizes.sum()) if sizes.size else 0
            if (sizes.size and int(sizes.min()) < 1) or u.size != total or risk.size != total:
                raise _state_error("`u` and `risk` must hold the instances that `size` counts")
            if u.dtype.kind == "f" and not bool(np.all(np.isfinite(u))):
                raise _state_error("`u` must be finite")
            if soft and not bool(np.all((risk >= 0) & (risk <= 1))):
                raise _state_error("`risk` must lie in [0, 1]")
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            for start, stop in itertools.pairwise(bounds):
                acc._add(u[start:stop], risk[start:stop], copy=False)
            if acc._cells is not None:
                raise _state_error("its instances exceed its `max_memory`")
            return acc
        ids = _vector(arrays, "cells_id", "iu")
        count = _vector(arrays, "cells_count", "iu")
        risk = _vector(arrays, "cells_risk", "f")
        top = _vector(arrays, "cells_top", "f")
        if not (ids.size == count.size == risk.size == top.size):
            raise _state_error("the cell arrays must have one entry per cell")
        n_cells = grid_size(acc._edges, bits=acc._bits)
        if ids.size and (
            int(ids.min()) < 0 or int(ids.max()) >= n_cells or not bool(np.all(ids[1:] > ids[:-1]))
        ):
            raise _state_error(f"`cells_id` must increase strictly within [0, {n_cells})")
        if ids.size and int(count.min()) < 1:
            raise _state_error("`cells_count` must be >= 1")
        if not bool(np.all(np.isfinite(risk) & (risk >= 0) & (risk <= count))):
            raise _state_error("`cells_risk` must lie in [0, cells_count]")
        if not soft and not bool(np.all(risk == np.round(risk))):
            raise _state_error("`cells_risk` must count the wrong instances")
        if not bool(np.all(np.isfinite(top))) or (top.size > 1 and not bool(np.all(top[1:] > top[:-1]))):
            raise _state_error("`cells_top` must be finite and increase strictly")
        acc._cells = Cells()
        acc._cells.add(
            ids.astype(np.int64), count.astype(np.int64), risk.astype(np.float64), top.astype(np.float64)
        )
        return acc

    def _instances(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not self._u:
            msg = "no instance was accumulated; call `update` with at least one instance first."
            raise ValueError(msg)
        if len(self._u) > 1:  # join once; later calls reuse the joined arrays
            self._u, self._risk = [concat(common_u(self._u))], [concat(self._risk)]
            self._sorted = [False]
        u, r = self._u[0], self._risk[0]
        return u, ({"risk": r} if self._soft else {"correct": ~r})

    def _sort_kept(self) -> None:
        """Sort each kept update of boolean instances by ``(u, correct)`` (in a worker process: the parent
        then merges the sorted runs instead of sorting every instance); the results do not change."""
        if self._cells is not None or self._soft:
            return
        for i, (u, r) in enumerate(zip(self._u, self._risk, strict=True)):
            if not self._sorted[i] and (got := sort_instances(u, r)) is not None and got[0].dtype == u.dtype:
                self._u[i], self._risk[i] = got
                self._sorted[i] = True

    def _last_sorted_u(self) -> np.ndarray | None:
        """The ``u`` of the last update, increasing, when it is kept and sorted (``_sort_kept``)."""
        if self._cells is not None or not self._sorted or not self._sorted[-1]:
            return None
        return self._u[-1]

    def _use_key(self, got: tuple[np.ndarray, Any]) -> None:
        """Take the sorted ``bit_key`` of the kept instances, ``(key, decode)``, built by the caller from
        the same instances in the same order (``evaluate --workers``: from the Dice's merged voxels),
        instead of merging the kept updates again."""
        self._given_key, self._key = got, None

    def _exact_areas(self) -> tuple[float, float, float] | None:
        """Exact path, boolean instances: ``(aurc, augrc, errors)`` from one sorted key (``None`` where
        ``bit_key`` has none); the values of [`selectivekit.aurc`][selectivekit.aurc] and
        [`selectivekit.augrc`][selectivekit.augrc] on the concatenated updates, to the last bit."""
        if self._soft:
            return None
        if self._key is None:
            if not self._u:
                self._instances()  # raises: nothing accumulated
            if self._given_key is not None:
                got, self._given_key = self._given_key, None
            elif len(self._u) > 1 and all(self._sorted):
                got = merged_key(self._u, [~r for r in self._risk])
            else:
                u, target = self._instances()
                inst = prepare_instances(u, target["correct"], target="correct_or_risk")
                got = bit_key(inst.u, np.ascontiguousarray(inst.correct))
            if got is None:
                self._key = False
            else:
                key = got[0]
                n_total = key.shape[0]
                (aurc, augrc), errors = step_areas(key, n_total, [False, True])
                self._key = (aurc, augrc, errors, n_total)
        return None if self._key is False else self._key

    def _grid_curve(self) -> RiskCoverageCurve:
        assert self._cells is not None
        _, count, risk, top = self._cells.arrays()
        return curve_from_grid(count, risk, top, xp=np)

    def compute(self) -> RiskCoverageCurve:
        """The risk-coverage curve (NumPy arrays): at every distinct ``u`` on the exact path, at every
        occupied cell on the grid."""
        if self._cells is None:
            u, target = self._instances()
            return rc.risk_coverage_curve(u, target.get("correct"), risk=target.get("risk"))
        return self._grid_curve()

    def aurc(self) -> float:
        """AURC (lower is better), as [`selectivekit.aurc`][selectivekit.aurc] (on the grid: at the cells)."""
        return self.aurc_bound(value=True)[0]

    def augrc(self) -> float:
        """AUGRC (lower is better), as [`selectivekit.augrc`][selectivekit.augrc] (on the grid: at the
        cells)."""
        return self.augrc_bound(value=True)[0]

    def e_aurc(self) -> float:
        """Excess AURC (boolean correctness only: the optimum needs the error count, not the soft risks)."""
        return self.e_aurc_bound(value=True)[0]

    def _alone(self) -> tuple[np.ndarray, np.ndarray] | None:
        """On the grid with boolean correctness and every instance alone in its cell, the state is exact:
        the cells in order as instances ``(u, correct)``, so that the values are computed as the in-memory
        functions compute them, to the last bit. ``None`` otherwise."""
        _, count, risk, _ = self._cells.arrays()
        occupied = count > 0
        if self._soft or count[occupied].max(initial=0) > 1:
            return None
        return np.arange(int(occupied.sum()), dtype=np.float64), risk[occupied] == 0

    def aurc_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)``: the lowest and highest exact AURC consistent with the state (``(v, v)`` on the
        exact path); with ``value=True``, ``(value, low, high)``."""
        if self._cells is None and (areas := self._exact_areas()) is not None:
            return (areas[0],) * (3 if value else 2)
        if self._cells is None or (alone := self._alone()) is not None:
            u, target = self._instances() if self._cells is None else (alone[0], {"correct": alone[1]})
            v = rc.aurc(u, target.get("correct"), risk=target.get("risk"))
            return (v, v, v) if value else (v, v)
        _, count, risk, _ = self._cells.arrays()
        out = grid_risk_bounds(count[count > 0], risk[count > 0])["aurc"]
        return out if value else out[1:]

    def augrc_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)`` for the AUGRC, as [`aurc_bound`][selectivekit.RiskCoverageAccumulator.aurc_bound]
        (the grid value is the highest)."""
        if self._cells is None and (areas := self._exact_areas()) is not None:
            return (areas[1],) * (3 if value else 2)
        if self._cells is None or (alone := self._alone()) is not None:
            u, target = self._instances() if self._cells is None else (alone[0], {"correct": alone[1]})
            v = rc.augrc(u, target.get("correct"), risk=target.get("risk"))
            return (v, v, v) if value else (v, v)
        _, count, risk, _ = self._cells.arrays()
        out = grid_risk_bounds(count[count > 0], risk[count > 0])["augrc"]
        return out if value else out[1:]

    def e_aurc_bound(self, *, value: bool = False) -> tuple[float, ...]:
        """``(low, high)`` for the excess AURC: the AURC bound less the optimum (known exactly from the
        counts)."""
        if self._soft:
            msg = "`e_aurc` needs boolean `correct` inputs; this accumulator received a soft `risk`."
            raise TypeError(msg)
        if self._cells is None and (areas := self._exact_areas()) is not None:
            aurc, _, errors, n_total = areas
            v = float(excess_aurc(aurc, aurc_optimal(n_total, round(errors))))
            return (v, v, v) if value else (v, v)
        if self._cells is None or (alone := self._alone()) is not None:
            u, target = self._instances() if self._cells is None else (alone[0], {"correct": alone[1]})
            v = rc.e_aurc(u, target["correct"])
            return (v, v, v) if value else (v, v)
        v, lo, hi = self.aurc_bound(value=True)
        _, count, risk, _ = self._cells.arrays()
        best = aurc_optimal(int(count.sum()), round(float(risk.sum())))
        out = (v - best, lo - best, hi - best)
        return out if value else out[1:]

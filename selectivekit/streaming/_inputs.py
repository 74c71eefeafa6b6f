"""The pieces both accumulators share: the memory budget, the grid options, and the kept inputs in
compact dtypes that keep every value exact."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._lib import check_choice, to_numpy
from ._grid import GRIDS

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_MEMORY",
    "check_grid",
    "check_max_memory",
    "check_same_grid",
    "check_state_header",
    "common_u",
    "compact_u",
    "concat",
    "host",
    "widen_half",
]

#: Default ``max_memory`` of the accumulators: 1 GiB of kept instances. That holds about 200 million
#: instances of [`RiskCoverageAccumulator`][selectivekit.RiskCoverageAccumulator] (float32 ``u`` and a bool,
#: 5 bytes each) or 180 million voxels of
#: [`SegmentationAccumulator`][selectivekit.SegmentationAccumulator] (float32 ``u`` and two uint8 labels):
#: about 85 volumes of 128^3. The exact computation at the end then needs temporary memory of about 8 times
#: the kept bytes (measured with tracemalloc for both accumulators: one sort of every ``u`` plus the wrong
#: voxels), so the default stays within a 16 GB workstation; lower it on smaller machines.
DEFAULT_MAX_MEMORY = 1 << 30

# Voxels handled per step inside ``update``: bounds the temporary memory independently of the volume size.
CHUNK = 1 << 17


# ----------------------------------------------------------------------------------------------------
# shared pieces of the accumulators


def host(x: Any) -> np.ndarray:
    """``x`` as NumPy; half-precision tensors (bfloat16 has no NumPy dtype) are widened to float32 first."""
    return to_numpy(widen_half(x))


def widen_half(x: Any) -> Any:
    """bfloat16/float16 tensors as float32 (exact), anything else unchanged: the checks run on NumPy."""
    if hasattr(x, "detach") and str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
        return x.detach().float()
    return x


def check_grid(grid: Any, edges: np.ndarray | None) -> int:
    name = check_choice(grid, "grid", tuple(GRIDS))
    if edges is not None and name != "bfloat16":
        msg = f"`grid` and `edges` exclude each other: give one of them, got grid={name!r} and edges."
        raise ValueError(msg)
    return GRIDS[name]


def check_max_memory(max_memory: Any) -> int:
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 0:
        msg = f"`max_memory` must be a non-negative int (bytes; 0: always the grid), got {max_memory!r}."
        raise ValueError(msg) if isinstance(max_memory, (int, np.integer)) else TypeError(msg)
    return int(max_memory)


def _compact_labels(x: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels in the smallest unsigned dtype that holds ``[0, num_classes)`` (lossless)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes <= np.iinfo(dtype).max + 1:
            return x.astype(dtype, copy=False)
    return x.astype(np.int64, copy=False)


_EXACT_INT = 2**53  # integers of larger magnitude are not all exact in float64


def _big_integers(u: np.ndarray) -> bool:
    """Integer ``u`` with a value that float64 would round (``|u| > 2**53``): such ``u`` stays integer."""
    return u.dtype.kind in "iu" and u.size > 0 and (int(u.max()) > _EXACT_INT or int(u.min()) < -_EXACT_INT)


def compact_u(u: np.ndarray) -> np.ndarray:
    """``u`` as float32 or float64, or as int64/uint64 when it holds integers beyond ``2**53`` (float64
    would tie distinct values); no copy when it already is one (the exact paths copy what they keep)."""
    if u.dtype in (np.float32, np.float64):
        return u
    if _big_integers(u):
        return u.astype(np.int64 if u.dtype.kind == "i" or int(u.max()) < 2**63 else np.uint64, copy=False)
    return u.astype(np.float64, copy=False)


def common_u(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The kept ``u`` of several updates in one dtype that keeps every value exactly.

    float32 with float64 becomes float64. Integers beyond ``2**53`` make every part integer (int64, or
    uint64 for values of 2**63 and more): float parts must then hold whole numbers in that range, else the
    values cannot be compared exactly and a ``ValueError`` says so.
    """
    dtypes = {u.dtype for u in parts}
    if len(dtypes) == 1:
        return parts
    big = [u for u in parts if _big_integers(u)]
    if not big:
        return [u.astype(np.float64, copy=False) for u in parts]
    target = np.dtype(np.uint64) if any(u.dtype == np.uint64 for u in big) else np.dtype(np.int64)
    info = np.iinfo(target)
    out = []
    for u in parts:
        whole = u.dtype.kind in "iu" or bool(np.all(u == np.round(u)))
        inside = u.size == 0 or (int(u.min()) >= info.min and int(u.max()) <= info.max) if whole else False
        if not inside:
            msg = (
                "`uncertainty` holds integers beyond 2**53 in some updates and values that are not "
                f"{target} integers in others; float64 would tie distinct values, so pass one integer "
                "or one float dtype to every update."
            )
            raise ValueError(msg)
        out.append(u.astype(target, copy=False))
    return out


def concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def check_same_grid(self: Any, other: Any) -> None:
    if type(other) is not type(self):
        msg = f"`other` must be a {type(self).__name__}, got {type(other).__name__}."
        raise TypeError(msg)
    mine, theirs = self._edges, other._edges
    same = (mine is None and theirs is None) or (
        mine is not None and theirs is not None and np.array_equal(mine, theirs)
    )
    if not same or self._bits != other._bits:
        msg = "`other` must use the same grid (`grid` and `edges`) as this accumulator."
        raise ValueError(msg)


def check_state_header(header: Any, state_format: str, version: int) -> None:
    """A saved accumulator's header names ``state_format`` and ``version``; else ``ValueError``."""
    if not isinstance(header, dict) or header.get("format") != state_format:
        msg = f"`header` is not a {state_format} state."
        raise ValueError(msg)
    if header.get("version") != version:
        msg = f"`header` has state version {header.get('version')!r}; this selectivekit reads {version}."
        raise ValueError(msg)

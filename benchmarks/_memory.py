"""Peak-memory helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import tracemalloc

_LIBC = None


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_extra_mib(fn) -> float:
    """Peak resident memory of one call above the resident size before it (Linux: ``VmHWM`` after
    resetting it through ``/proc/self/clear_refs``, ``malloc_trim`` first); NaN where unavailable.
    Sees every allocator (NumPy, PyTorch); allocator caches already resident are not counted again."""
    global _LIBC
    if not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    if _LIBC is None:
        with contextlib.suppress(OSError):
            _LIBC = ctypes.CDLL("libc.so.6")
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    before = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return float("nan")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def peak_traced_mib(fn) -> float:
    """Peak of the memory traced by ``tracemalloc`` during one call (NumPy allocations; not PyTorch's)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def load_line() -> str:
    """``date, load averages`` of this moment, for the printed tables."""
    import time

    one, five, fifteen = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{stamp}, load {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {os.cpu_count()} CPUs"

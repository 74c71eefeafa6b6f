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


# The vector extensions that decide how fast a sort, a decompression or a reduction runs here, in the
# order printed (the names /proc/cpuinfo gives them).
_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vbmi2", "sha_ni")


def cpu_line() -> str:
    """``CPU model (vector extensions)``: the model name and the SIMD flags that matter for the figures,
    read from ``/proc/cpuinfo`` (Linux; elsewhere ``platform.processor()`` and no flags)."""
    import platform

    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    present = set(value.split())
                    flags = [flag for flag in _VECTOR_FLAGS if flag in present]
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({' '.join(flags) if flags else 'vector extensions unknown'})"


def load_line() -> str:
    """``date, load averages, CPU model (vector extensions)`` of this moment, for the printed tables."""
    import time

    one, five, fifteen = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"{stamp}, load {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {os.cpu_count()} CPUs, "
        f"{cpu_line()}"
    )


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """The summed resident set (bytes) of process ``pid`` and all its descendants now (Linux; 0 elsewhere)."""
    if not os.path.isdir("/proc"):
        return 0
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_bytes(p)
        stack += _children(p)
    return total


def run_measured(cmd: list[str], *, every: float = 0.02, env: dict | None = None) -> tuple[float, int, str]:
    """Run ``cmd`` as a subprocess: its wall time (start-up included), the peak summed resident set of its
    process tree in bytes (sampled every ``every`` s from /proc) and its standard output. A nonzero exit
    raises ``SystemExit`` with its standard error."""
    import subprocess
    import threading
    import time

    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            done.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        msg = f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}"
        raise SystemExit(msg)
    return elapsed, peak, out.decode()

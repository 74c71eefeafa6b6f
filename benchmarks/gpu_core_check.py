"""GPU check of the array-API core: the same metrics on torch-CUDA, CuPy and JAX arrays as on NumPy.

Run on a machine with a GPU: ``python benchmarks/gpu_core_check.py``. For each library that imports and
sees a GPU it prints whether every result equals the NumPy one, whether returned arrays stay on the device,
and the median time of ``aurc`` on 10,000,000 scores next to one sort in that library.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import selectivekit as sk


def median_time(fn, sync, repeats=5):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def to_numpy(x):
    if hasattr(x, "get"):  # CuPy
        return x.get()
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def backends(smoke_cpu: bool):
    try:
        import torch

        if smoke_cpu:
            yield "torch-cpu", torch.as_tensor, torch.sort, lambda: None
        if torch.cuda.is_available():
            yield (
                "torch-cuda",
                (lambda a: torch.as_tensor(a, device="cuda")),
                torch.sort,
                torch.cuda.synchronize,
            )
    except ImportError:
        pass
    try:
        import cupy

        yield "cupy", cupy.asarray, cupy.sort, cupy.cuda.Device().synchronize
    except Exception as exc:  # no CuPy or no device
        print(f"cupy: skipped ({type(exc).__name__}: {exc})")
    try:
        import jax
        import jax.numpy as jnp

        if any(d.platform == "gpu" for d in jax.devices()):
            yield "jax-gpu", jnp.asarray, jnp.sort, lambda: None
    except ImportError:
        pass


def main() -> None:
    import sys

    smoke_cpu = "--cpu" in sys.argv  # also run torch on the CPU (a smoke test of this script)
    rng = np.random.default_rng(0)
    n = 1_000_000 if smoke_cpu else 10_000_000
    correct = rng.random(n) >= 0.2
    u = np.where(correct, rng.random(n), np.sqrt(rng.random(n))).astype(np.float32)
    u_ties = np.round(u, 3)
    logits = rng.normal(size=(4, 5, 64, 64)).astype(np.float32) * 6
    small_u, small_c = u[:100_000], correct[:100_000]
    reference = {
        "aurc": sk.aurc(u, correct),
        "aurc_ties": sk.aurc(u_ties, correct),
        "e_aurc": sk.e_aurc(small_u, small_c),
        "augrc": sk.augrc(small_u, small_c),
        "split": sk.selective_split(u_ties, correct, 0.9),
        "u_logits": sk.uncertainty_from_logits(logits, axis=1),
    }
    for name, to, sort, sync in backends(smoke_cpu):
        du, dt, dc = to(u), to(u_ties), to(correct)
        got = {
            "aurc": sk.aurc(du, dc),
            "aurc_ties": sk.aurc(dt, dc),
            "e_aurc": sk.e_aurc(to(small_u), to(small_c)),
            "augrc": sk.augrc(to(small_u), to(small_c)),
            "split": sk.selective_split(dt, dc, 0.9),
        }
        ok = {k: abs(got[k] - reference[k]) < 1e-9 for k in ("aurc", "aurc_ties", "e_aurc", "augrc")}
        ok["split"] = got["split"] == reference["split"]
        ul = sk.uncertainty_from_logits(to(logits), axis=1)
        ok["u_logits"] = bool(np.allclose(to_numpy(ul), reference["u_logits"], rtol=1e-5, atol=1e-7))
        curve = sk.risk_coverage_curve(du, dc)
        device = getattr(curve.coverage, "device", None)
        t_aurc = median_time(lambda du=du, dc=dc: sk.aurc(du, dc), sync)
        t_sort = median_time(lambda du=du, sort=sort: sort(du), sync)
        print(
            f"{name}: all equal to NumPy: {all(ok.values())} {ok} | curve on {device} | "
            f"aurc {t_aurc * 1e3:.1f} ms vs one sort {t_sort * 1e3:.1f} ms ({t_aurc / t_sort:.2f}x)"
        )


if __name__ == "__main__":
    main()

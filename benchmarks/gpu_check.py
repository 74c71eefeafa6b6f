"""GPU check, one prepared script: the core metrics and the exact loss on device arrays, timed and checked
against NumPy.

Run on a machine with a GPU: ``python benchmarks/gpu_check.py`` (well within 5 minutes on an H100; a
``--budget-s`` deadline, 270 s by default, skips the timings left when it passes). Without a GPU:
``python benchmarks/gpu_check.py --device cpu --tiny`` runs the same checks on torch CPU tensors at a tiny
size in seconds (the test suite does that).

For each array library that imports and sees the device (torch CUDA, CuPy, JAX on GPU; torch CPU with
``--device cpu``) it prints:

* whether ``aurc`` (continuous and heavily tied scores), ``e_aurc``, ``augrc``, ``selective_split`` and
  ``uncertainty_from_logits`` equal the NumPy results (to 1e-9, the split exactly, the uncertainty map to
  float32 rounding), and whether the curve stays on the device;
* the median time of ``aurc`` on ``n`` scores (1e7; ``--tiny``: 2e4) against one sort of the same scores
  in that library (``torch.sort``, ``cupy.sort``, ``jnp.sort``);
* torch only: the exact uncertainty loss (``pairs="exact"``), forward + backward, on one batch of 8 x 64^3
  voxels (``--tiny``: 2 x 16^3), against the authors' sampled estimator (300 wrong x 6600 correct, every
  pair materialised, as in ``bench_loss.py``) and one sort of the batch; its value is checked against the
  NumPy core's ``uncertainty_margin_loss`` on the same voxels (relative 1e-6).

The exit status is 1 when any check fails, 2 when no library sees the device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import load_line

import selectivekit as sk

MARGIN = 0.1


def median_ms(fn, sync, repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "get"):  # CuPy
        return x.get()
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def backends(device: str):
    """``(name, to_device, sort, sync)`` for each library that sees ``device``."""
    try:
        import torch

        if device == "cpu":
            yield "torch-cpu", torch.as_tensor, torch.sort, lambda: None
        elif torch.cuda.is_available():
            to = lambda a: torch.as_tensor(a, device="cuda")  # noqa: E731
            yield "torch-cuda", to, torch.sort, torch.cuda.synchronize
        else:
            print("torch: no CUDA device, skipped")
    except ImportError:
        print("torch: not installed, skipped")
    if device == "cpu":
        return
    try:
        import cupy

        cupy.cuda.Device().compute_capability  # noqa: B018 (raises without a device)
        yield "cupy", cupy.asarray, cupy.sort, cupy.cuda.Device().synchronize
    except Exception as exc:  # no CuPy or no device
        print(f"cupy: skipped ({type(exc).__name__}: {exc})")
    try:
        import jax
        import jax.numpy as jnp

        if any(d.platform == "gpu" for d in jax.devices()):
            yield "jax-gpu", jnp.asarray, jnp.sort, lambda: None
        else:
            print("jax: no GPU device, skipped")
    except ImportError:
        print("jax: not installed, skipped")


def scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    correct = rng.random(n) >= 0.2
    u = np.where(correct, rng.random(n), np.sqrt(rng.random(n))).astype(np.float32)
    return u, correct


def loss_batch(batch: int, side: int, classes: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """u (1 - max softmax, float32) and correct (bool) of synthetic logits, ~4.5% wrong voxels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=(batch, side, side, side))
    logits = (rng.normal(size=(batch, classes, side, side, side)) * 1.5).astype(np.float32)
    boost = (3.8 + 3.0 * rng.random((batch, side, side, side))).astype(np.float32)
    np.put_along_axis(
        logits, labels[:, None], np.take_along_axis(logits, labels[:, None], 1) + boost[:, None], 1
    )
    u = np.asarray(sk.uncertainty_from_logits(logits, axis=1), dtype=np.float32)
    return u, logits.argmax(1) == labels


def reference_values(u, correct, u_ties, logits) -> dict:
    small = slice(0, min(u.size, 100_000))
    return {
        "aurc": sk.aurc(u, correct),
        "aurc_ties": sk.aurc(u_ties, correct),
        "e_aurc": sk.e_aurc(u[small], correct[small]),
        "augrc": sk.augrc(u[small], correct[small]),
        "split": sk.selective_split(u_ties, correct, 0.9),
        "u_logits": np.asarray(sk.uncertainty_from_logits(logits, axis=1)),
    }


def compare(got: dict, reference: dict) -> dict[str, bool]:
    """Which of ``got`` equal ``reference``: scalars to 1e-9, the split exactly, the map to float32."""
    ok = {k: bool(abs(float(got[k]) - reference[k]) < 1e-9) for k in ("aurc", "aurc_ties", "e_aurc", "augrc")}
    ok["split"] = got["split"] == reference["split"]
    ok["u_logits"] = bool(np.allclose(to_numpy(got["u_logits"]), reference["u_logits"], rtol=1e-5, atol=1e-7))
    return ok


def check_metrics(name, to, sort, sync, data, reference, repeats) -> bool:
    u, correct, u_ties, logits = data
    du, dt, dc = to(u), to(u_ties), to(correct)
    small = slice(0, min(u.size, 100_000))
    got = {
        "aurc": sk.aurc(du, dc),
        "aurc_ties": sk.aurc(dt, dc),
        "e_aurc": sk.e_aurc(to(u[small]), to(correct[small])),
        "augrc": sk.augrc(to(u[small]), to(correct[small])),
        "split": sk.selective_split(dt, dc, 0.9),
        "u_logits": sk.uncertainty_from_logits(to(logits), axis=1),
    }
    ok = compare(got, reference)
    curve = sk.risk_coverage_curve(du, dc)
    where = getattr(curve.coverage, "device", type(curve.coverage).__module__)
    t_aurc = median_ms(lambda: sk.aurc(du, dc), sync, repeats)
    t_sort = median_ms(lambda: sort(du), sync, repeats)
    print(
        f"{name}: metrics equal to NumPy: {all(ok.values())} {ok} | curve on {where} | aurc "
        f"{t_aurc:.2f} ms vs one sort {t_sort:.2f} ms ({t_aurc / t_sort:.2f}x)"
    )
    return all(ok.values())


def check_loss(device: str, batch: tuple[np.ndarray, np.ndarray], repeats: int) -> bool:
    import torch

    from selectivekit.adapters.torch import uncertainty_margin_loss

    u_np, c_np = batch
    u = torch.as_tensor(u_np, device=device)
    correct = torch.as_tensor(c_np, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    reference = float(sk.uncertainty_margin_loss(u_np, c_np, margin=MARGIN))
    value = float(uncertainty_margin_loss(u, correct, margin=MARGIN))
    same = abs(value - reference) <= 1e-6 * abs(reference)
    generator = torch.Generator(device=device).manual_seed(0)

    def exact():
        leaf = u.detach().requires_grad_(True)
        uncertainty_margin_loss(leaf, correct, margin=MARGIN).backward()

    def sampled():  # the authors' estimator, as in bench_loss.py
        leaf = u.detach().requires_grad_(True)
        flat_u, flat_c = leaf.reshape(-1), correct.reshape(-1)
        uc, uw = flat_u[flat_c], flat_u[~flat_c]
        uc = uc[torch.randperm(uc.numel(), device=device, generator=generator)[:6600]]
        uw = uw[torch.randperm(uw.numel(), device=device, generator=generator)[:300]]
        torch.relu(uc[None, :] - uw[:, None] + MARGIN).mean().backward()

    t_exact = median_ms(exact, sync, repeats)
    t_sampled = median_ms(sampled, sync, repeats)
    t_sort = median_ms(lambda: torch.sort(u.reshape(-1)), sync, repeats)
    print(
        f"torch-{device} loss on {tuple(u.shape)} ({100 * (~c_np).mean():.2f}% wrong): exact equal to NumPy: "
        f"{same} ({value:.9g} vs {reference:.9g}) | fwd+bwd exact {t_exact:.2f} ms, sampled 300x6600 "
        f"{t_sampled:.2f} ms (exact / sampled {t_exact / t_sampled:.2f}x), one sort {t_sort:.2f} ms"
    )
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="2e4 scores and a 2 x 16^3 batch (seconds)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip what is left after this")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    n, batch, side = (20_000, 2, 16) if args.tiny else (10_000_000, 8, 64)
    print(f"{load_line()}; device {args.device}; n = {n:,}; medians of {args.repeats}")
    u, correct = scores(n)
    u_ties = np.round(u, 3)
    logits = (
        np.random.default_rng(1).normal(size=(4, 5, 16, 16) if args.tiny else (4, 5, 64, 64)) * 6
    ).astype(np.float32)
    data = (u, correct, u_ties, logits)
    reference = reference_values(*data)
    results, seen = [], 0
    for name, to, sort, sync in backends(args.device):
        seen += 1
        if time.perf_counter() - start > args.budget_s:
            print(f"{name}: skipped, past the {args.budget_s:.0f} s budget")
            continue
        results.append(check_metrics(name, to, sort, sync, data, reference, args.repeats))
        if name.startswith("torch") and time.perf_counter() - start <= args.budget_s:
            results.append(check_loss(args.device, loss_batch(batch, side), args.repeats))
    if not seen:
        print(f"no array library sees the device {args.device!r}")
        return 2
    print(f"all checks passed: {all(results)} ({time.perf_counter() - start:.1f} s)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

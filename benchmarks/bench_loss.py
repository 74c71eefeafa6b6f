"""Benchmark of the exact uncertainty loss against the authors' sampled estimator and a plain sort.

One batch of 8 x 64^3 voxels, 8 classes, about 4.5% wrong voxels; u = 1 - max softmax of synthetic logits.
Timed side by side in one process (medians over ``--repeats`` runs after one warm-up), forward + backward:

- PyTorch: ``selectivekit.adapters.torch.uncertainty_margin_loss(pairs="exact")`` vs the authors' estimator
  (``randperm`` without replacement, 300 wrong x 6600 correct, every pair materialised, mean) vs one
  ``torch.sort`` of the batch's ``u`` (no backward).
- Keras 3 / TensorFlow: ``selectivekit.adapters.keras`` exact loss on ``u`` inside ``tf.function``
  (graph mode, gradient included) and with ``jit_compile=True`` vs one ``tf.sort`` of the batch
  (in ``tf.function``).

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` above what was allocated before the call.
On CPU the peak resident set size of the process above its size before the call (Linux: ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``, with ``malloc_trim`` before each call); allocator caches
that stay resident are not counted again, so read it as "new memory touched by the call".

``--memory-voxels N`` (CPU) measures instead the peak extra memory of the exact loss, forward + backward
(``loss.backward()``, the gradient of ``u`` included), on N voxels drawn like the batch (the batch's
generator, repeated with other seeds and cut to N), and prints it as a multiple of the input bytes:
``u`` (float32, 4 bytes a voxel) plus ``correct`` (bool, 1 byte a voxel), 5 bytes a voxel in all.

Usage::

    python benchmarks/bench_loss.py [--device cpu|cuda] [--repeats N] [--no-keras] [--threads N]
    python benchmarks/bench_loss.py --memory-voxels 100000000 [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch
from _memory import load_line, peak_rss_extra_mib

from selectivekit.adapters.torch import uncertainty_margin_loss
from selectivekit.uncertainty import uncertainty_from_logits

BATCH, CLASSES, SIDE = 8, 8, 64
MARGIN = 0.1


def make_batch(device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """u (float32, 8 x 64^3) and correct (bool) from synthetic logits with ~4.5% wrong voxels."""
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH, CLASSES, SIDE, SIDE, SIDE)
    labels = torch.randint(0, CLASSES, (BATCH, SIDE, SIDE, SIDE), generator=g)
    logits = torch.randn(shape, generator=g) * 1.5
    boost = 3.8 + 3.0 * torch.rand((BATCH, 1, SIDE, SIDE, SIDE), generator=g)
    logits.scatter_add_(1, labels[:, None], boost)
    u = uncertainty_from_logits(logits, axis=1)
    correct = logits.argmax(1) == labels
    return u.to(device), correct.to(device)


def make_voxels(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` voxels drawn like the batch: ``make_batch`` with seeds 0, 1, ... (one batch alive at a time)."""
    u = torch.empty(n, dtype=torch.float32)
    correct = torch.empty(n, dtype=torch.bool)
    done, seed = 0, 0
    while done < n:
        ub, cb = make_batch("cpu", seed)
        take = min(n - done, ub.numel())
        u[done : done + take] = ub.reshape(-1)[:take]
        correct[done : done + take] = cb.reshape(-1)[:take]
        done, seed = done + take, seed + 1
    return u, correct


def bench_memory(n: int, repeats: int) -> None:
    """Peak extra resident memory of the exact loss, forward + backward, as a multiple of the input bytes."""
    u, correct = make_voxels(n)
    n_wrong = int((~correct).sum())
    input_bytes = u.numel() * u.element_size() + correct.numel() * correct.element_size()
    print(f"torch {torch.__version__} on cpu ({torch.get_num_threads()} threads); {load_line()}")
    print(f"  voxels {n}, wrong {n_wrong} ({100 * n_wrong / n:.2f}%), margin {MARGIN}")
    print(
        f"  input bytes: u float32 + correct bool = {input_bytes / 2**20:.1f} MiB "
        f"({input_bytes / n:.0f} bytes a voxel)"
    )

    def exact():
        leaf = u.detach().requires_grad_(True)
        uncertainty_margin_loss(leaf, correct, margin=MARGIN).backward()

    for i in range(repeats):
        t0 = time.perf_counter()
        peak = peak_rss_extra_mib(exact)
        wall = time.perf_counter() - t0
        ratio = peak * 2**20 / input_bytes
        print(
            f"  run {i + 1}: exact fwd+bwd peak extra {peak:8.1f} MiB = {ratio:.2f}x the input bytes "
            f"(target <= 5x), {wall:.1f} s; {load_line()}"
        )


def sampled_estimator(u: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """The authors' code: randperm without replacement, at most 300 wrong x 6600 correct, all pairs, mean."""
    flat_u, flat_c = u.reshape(-1), correct.reshape(-1)
    uc, uw = flat_u[flat_c], flat_u[~flat_c]
    uc = uc[torch.randperm(uc.numel(), device=u.device)[:6600]]
    uw = uw[torch.randperm(uw.numel(), device=u.device)[:300]]
    return torch.relu(uc[None, :] - uw[:, None] + MARGIN).mean()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(rows, repeats: int, device: str) -> dict[str, float]:
    """Median wall time (ms) of each ``(name, fn)``, interleaved: every round runs each candidate once,
    so slow drifts of the machine's load hit all of them alike."""
    for _, fn in rows:  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, fn in rows:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def peak_extra_mib(fn, device: str) -> float:
    """Peak memory of one call above the memory in use before it (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return peak_rss_extra_mib(fn)


def check_no_sync(u: torch.Tensor, correct: torch.Tensor) -> str:
    """Count host synchronisations of the exact path (CUDA): with validation, and with validate=False."""
    lines = []

    def count_sync_warnings(fn) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)

    for validate in (True, False):
        leaf = u.detach().clone().requires_grad_(True)
        n_sync = count_sync_warnings(
            lambda leaf=leaf, validate=validate: uncertainty_margin_loss(
                leaf, correct, margin=MARGIN, validate=validate
            ).backward()
        )
        lines.append(f"sync-debug warnings, exact fwd+bwd, validate={validate}: {n_sync}")
    leaf = u.detach().clone().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        uncertainty_margin_loss(leaf, correct, margin=MARGIN, validate=False).backward()
        verdict = "ok (no synchronisation under set_sync_debug_mode('error'))"
    except RuntimeError as exc:
        verdict = f"FAILED: {exc}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    lines.append(f"exact fwd+bwd with validate=False under sync debug 'error': {verdict}")
    from selectivekit.adapters.torch import UncertaintyAwareLoss

    logits = torch.randn(2, 4, 16, 16, 16, device=u.device, requires_grad=True)
    target = torch.randint(0, 4, (2, 16, 16, 16), device=u.device)
    for validate in (True, False):
        criterion = UncertaintyAwareLoss(total_steps=100, validate=validate)  # the default setting
        n_sync = count_sync_warnings(lambda c=criterion: c(logits, target).backward())
        lines.append(f"sync-debug warnings, UncertaintyAwareLoss fwd+bwd, validate={validate}: {n_sync}")
    return "\n".join(lines)


def bench_torch(device: str, repeats: int) -> None:
    u, correct = make_batch(device)
    n, n_wrong = u.numel(), int((~correct).sum())
    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads); batch {tuple(u.shape)}"
    )
    print(f"  voxels {n}, wrong {n_wrong} ({100 * n_wrong / n:.2f}%), margin {MARGIN}")

    def exact():
        leaf = u.detach().requires_grad_(True)
        uncertainty_margin_loss(leaf, correct, margin=MARGIN).backward()

    def sampled():
        leaf = u.detach().requires_grad_(True)
        sampled_estimator(leaf, correct).backward()

    def one_sort():
        torch.sort(u.reshape(-1))

    rows = [
        ("exact (selectivekit)", exact),
        ("sampled 300x6600 (authors)", sampled),
        ("one torch.sort", one_sort),
    ]
    times = median_ms(rows, repeats, device)
    mems = {name: peak_extra_mib(fn, device) for name, fn in rows}
    for name, _ in rows:
        print(f"  {name:<30s} {times[name]:9.2f} ms   peak extra {mems[name]:8.1f} MiB")
    t_exact = times["exact (selectivekit)"]
    print(
        f"  ratio exact / sampled   = {t_exact / times['sampled 300x6600 (authors)']:.2f}x (target <= 1.5x)"
    )
    print(f"  ratio exact / one sort  = {t_exact / times['one torch.sort']:.2f}x")
    if device == "cuda":
        print("  " + check_no_sync(u, correct).replace("\n", "\n  "))


def bench_keras(repeats: int) -> None:
    import keras
    import tensorflow as tf

    from selectivekit.adapters.keras import uncertainty_margin_loss as keras_loss

    u_t, c_t = make_batch("cpu")
    u = tf.constant(u_t.reshape(-1).numpy())
    correct = tf.constant(c_t.reshape(-1).numpy())
    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f"keras {keras.__version__} / tensorflow {tf.__version__} ({', '.join(devices)})")

    def make_exact(jit: bool):
        @tf.function(jit_compile=jit)
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = keras_loss(x, correct, margin=MARGIN)
            return loss, tape.gradient(loss, x)

        return step

    exact_graph = make_exact(False)
    exact_xla = make_exact(True)
    one_sort = tf.function(lambda x: tf.sort(x))
    one_sort_xla = tf.function(lambda x: tf.sort(x), jit_compile=True)

    def run(fn):
        return lambda: [t.numpy() for t in tf.nest.flatten(fn(u))]

    rows = [
        ("exact, tf.function", run(exact_graph)),
        ("exact, jit_compile=True", run(exact_xla)),
        ("one tf.sort, tf.function", run(one_sort)),
        ("one tf.sort, jit_compile=True", run(one_sort_xla)),
    ]
    times = median_ms(rows, repeats, "cpu")
    mems = {name: peak_extra_mib(fn, "cpu") for name, fn in rows}
    for name, _ in rows:
        print(f"  {name:<30s} {times[name]:9.2f} ms   peak extra {mems[name]:8.1f} MiB")
    base = times["one tf.sort, tf.function"]
    print(
        f"  ratio exact (tf.function) / one tf.sort = {times['exact, tf.function'] / base:.2f}x "
        "(target <= 1.5x)"
    )
    print(f"  ratio exact (XLA) / one tf.sort         = {times['exact, jit_compile=True'] / base:.2f}x")
    xla = times["one tf.sort, jit_compile=True"]
    print(f"  ratio exact (XLA) / one tf.sort (XLA)   = {times['exact, jit_compile=True'] / xla:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras/TensorFlow part")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument(
        "--memory-voxels",
        type=int,
        default=0,
        help="only the exact loss's CPU peak extra memory on this many voxels (0: the timing benchmark)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_voxels > 0:
        if args.device != "cpu":
            print("--memory-voxels measures the CPU resident memory; use --device cpu", file=sys.stderr)
            return 1
        bench_memory(args.memory_voxels, max(args.repeats, 1))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    bench_torch(args.device, args.repeats)
    if not args.no_keras:
        bench_keras(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

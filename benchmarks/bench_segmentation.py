"""Exact Dice-coverage curve vs the naive evaluation, vs one sort; streaming peak memory.

Run: ``python benchmarks/bench_segmentation.py [--quick]``. Prints times measured side by side in this
process (median of repeats after a warm-up; the sort, the curve and ``aurc_dice`` in turn within each
repeat) and their ratios, in wall time and in CPU time.

Data: 4 volumes of 128^3 voxels, 8 classes, ~5% wrong voxels, labels uint8, uncertainty float32 (correct
voxels ``exp(-U(0, 25))`` like a saturating softmax, wrong voxels ``U(0.05, 0.9)``).

1. ``dice_coverage_curve`` (exact at every distinct threshold: ~8 million points) against
   - the naive approach at 100 coverage points: for each coverage, pick the threshold, refer, recompute every
     class Dice from scratch (written here; it even reuses one sort for all 100 thresholds);
   - one ``np.sort`` of all voxels' ``u``.
2. ``SegmentationAccumulator``: 50 volumes of 128^3 fed one at a time; peak traced memory (tracemalloc) of
   the updates, including the live volume and the accumulated state, relative to one volume's arrays.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _memory import load_line, peak_traced_mib

from selectivekit.segmentation import aurc_dice, dice_coverage_curve
from selectivekit.selective import required_count
from selectivekit.streaming import SegmentationAccumulator

K = 8


def make_volumes(rng: np.random.Generator, n: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (n, side, side, side)
    label = rng.integers(0, K, size=shape, dtype=np.uint8)
    wrong = rng.random(shape, dtype=np.float32) < 0.05
    pred = np.where(wrong, (label + rng.integers(1, K, size=shape, dtype=np.uint8)) % K, label).astype(
        np.uint8
    )
    u = np.exp(-25.0 * rng.random(shape, dtype=np.float32))
    u[wrong] = 0.05 + 0.85 * rng.random(int(wrong.sum()), dtype=np.float32)
    return pred, label, u


def naive_dice_at(pred, label, u, coverages):
    """For each coverage: threshold (one shared sort), refer, recompute per-class Dice from scratch."""
    n_images = pred.shape[0]
    flat_p = pred.reshape(n_images, -1)
    flat_l = label.reshape(n_images, -1)
    flat_u = u.reshape(n_images, -1)
    s = np.sort(u, axis=None)
    out = []
    for c in coverages:
        t = s[required_count(c, s.size) - 1]
        dice = np.empty((n_images, K - 1))
        for i in range(n_images):
            after = np.where(flat_u[i] > t, flat_l[i], flat_p[i])
            conf = np.bincount(flat_l[i].astype(np.int64) * K + after, minlength=K * K).reshape(K, K)
            tp = np.diag(conf)
            fp = conf.sum(axis=0) - tp
            fn = conf.sum(axis=1) - tp
            den = 2 * tp + fp + fn
            d = np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)
            dice[i] = d[1:]
        out.append(float(dice.mean(axis=1).mean()))
    return np.array(out)


def timed_together(fns, repeats):
    """Wall and CPU medians of each function, run in turn within every repeat (one warm-up each), so that a
    change of load between them shifts all alike; returns ``{name: (wall_s, cpu_s)}``."""
    for fn in fns.values():
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def timed(fn, repeats):
    fn()  # warm-up (page faults of the first large allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_curve(side: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    pred, label, u = make_volumes(rng, 4, side)
    n = u.size
    print(f"[curve] 4 volumes of {side}^3 = {n:,} voxels, {K} classes, {np.mean(pred != label):.2%} wrong")
    times = timed_together(
        {
            "sort": lambda: np.sort(u, axis=None),
            "curve": lambda: dice_coverage_curve(pred, label, u, num_classes=K),
            "area": lambda: aurc_dice(pred, label, u, num_classes=K),
        },
        repeats,
    )
    (t_sort, c_sort), (t_exact, c_exact), (t_area, c_area) = times["sort"], times["curve"], times["area"]
    coverages = np.linspace(0.01, 1.0, 100)
    t_naive = timed(lambda: naive_dice_at(pred, label, u, coverages), max(1, repeats // 3))
    curve = dice_coverage_curve(pred, label, u, num_classes=K)
    # the exact curve, read at the same 100 operating points, equals the naive evaluation
    cum = np.rint(curve.coverage * n).astype(np.int64)
    idx = [int(np.searchsorted(cum, required_count(c, n), side="left")) for c in coverages]
    err = float(np.max(np.abs(curve.mean_dice[idx] - naive_dice_at(pred, label, u, coverages))))
    print(f"  exact curve points: {curve.coverage.size:,} (every distinct threshold)")
    print(f"  one np.sort of u:          {t_sort * 1e3:9.1f} ms")
    print(f"  exact dice_coverage_curve: {t_exact * 1e3:9.1f} ms")
    print(f"  naive at 100 coverages:    {t_naive * 1e3:9.1f} ms")
    print(f"  ratio naive-100 / exact:   {t_naive / t_exact:9.1f}x   (target >= 20x)")
    print(f"  ratio exact / one sort:    {t_exact / t_sort:9.2f}x   (target <= 3x)")
    print(f"  max |exact - naive| at the 100 points: {err:.2e}")
    inputs = pred.nbytes + label.nbytes + u.nbytes
    m_curve = peak_traced_mib(lambda: dice_coverage_curve(pred, label, u, num_classes=K)) * 2**20 / inputs
    m_area = peak_traced_mib(lambda: aurc_dice(pred, label, u, num_classes=K)) * 2**20 / inputs
    ratio = t_area / t_sort
    print(f"  aurc_dice:                 {t_area * 1e3:9.1f} ms = {ratio:.2f}x one sort (target <= 3x)")
    print(
        f"  CPU time (process_time):   sort {c_sort * 1e3:.1f} ms, curve {c_exact / c_sort:.2f}x, "
        f"aurc_dice {c_area / c_sort:.2f}x"
    )
    print(f"  peak extra memory (tracemalloc), as a multiple of the inputs ({inputs / 2**20:.0f} MiB):")
    print(f"    dice_coverage_curve {m_curve:5.2f}x, aurc_dice {m_area:5.2f}x   (target <= 4x)")
    print("  ready to paste:")
    print(
        f"  | `dice_coverage_curve`, 4 x {side}^3, {K} classes | {t_exact * 1e3:.0f} ms | "
        f"{t_exact / t_sort:.2f}x np.sort | {m_curve:.2f}x inputs |"
    )
    print(
        f"  | `aurc_dice`, 4 x {side}^3, {K} classes | {t_area * 1e3:.0f} ms | "
        f"{t_area / t_sort:.2f}x np.sort | {m_area:.2f}x inputs |"
    )
    print(f"  ({load_line()})")


def bench_streaming(side: int, n_volumes: int) -> None:
    rng = np.random.default_rng(1)
    acc = SegmentationAccumulator(num_classes=K, max_memory=0)  # the bounded-memory grid path
    volume_bytes = 0
    worst = 0.0
    tracemalloc.start()
    t0 = time.perf_counter()
    for _ in range(n_volumes):
        pred, label, u = (a[0] for a in make_volumes(rng, 1, side))
        volume_bytes = pred.nbytes + label.nbytes + u.nbytes
        tracemalloc.reset_peak()  # exclude this script's data generation; keep the live volume and the state
        acc.update(pred, label, u)
        worst = max(worst, tracemalloc.get_traced_memory()[1])
        del pred, label, u
    elapsed = time.perf_counter() - t0
    state = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t1 = time.perf_counter()
    curve = acc.compute()
    at = acc.dice_at_coverage([0.95, 0.9, 0.8, 0.7])
    t_compute = time.perf_counter() - t1
    print(f"[streaming] {n_volumes} volumes of {side}^3, one at a time")
    print(f"  one volume's arrays (pred u8 + label u8 + u f32): {volume_bytes / 2**20:8.1f} MiB")
    print(f"  peak traced memory during updates:               {worst / 2**20:8.1f} MiB")
    print(f"  ratio peak / one volume:                         {worst / volume_bytes:8.2f}x  (target <= 2x)")
    print(f"  accumulated state after all volumes:             {state / 2**20:8.1f} MiB")
    print(f"  update time {elapsed / n_volumes * 1e3:.0f} ms/volume; compute {t_compute * 1e3:.0f} ms")
    print(f"  curve points {curve.coverage.size:,}; Dice@0.9 mean {at[1].mean:.4f} (std {at[1].std:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 volumes, 10 streamed volumes")
    args = parser.parse_args()
    side = 64 if args.quick else 128
    bench_curve(side, repeats=3 if args.quick else 5)
    bench_streaming(side, 10 if args.quick else 50)


if __name__ == "__main__":
    main()

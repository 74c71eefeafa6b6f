"""Bootstrap intervals for the segmentation metrics: 1,000 resamples vs one exact evaluation vs brute force.

Run: ``python benchmarks/bench_bootstrap.py [--quick]``. Prints times measured side by side in this process
(median of repeats after a warm-up), their ratios, and peak traced memory (tracemalloc) of each.

Data: 20 volumes of 64^3 voxels, 8 classes, ~5% wrong voxels, labels uint8, uncertainty float32 (correct
voxels ``exp(-U(0, 25))`` like a saturating softmax, wrong voxels ``U(0.05, 0.9)``).

- one exact evaluation: ``aurc_dice`` and ``dice_at_coverage`` at 0.95, 0.9, 0.8, 0.7 (what
  ``selectivekit evaluate --exact`` computes);
- ``bootstrap_ci`` of the same statistics (AURC, mean and 5th-percentile Dice at each coverage), 1,000
  resamples, BCa (its jackknife included);
- the brute-force bootstrap: for each resample rebuild the resampled set of volumes and run the exact
  evaluation on it. It costs about one exact evaluation per resample, so it is timed on a few resamples
  and scaled to 1,000 (said in the output); its values are checked against ``bootstrap_ci``'s.

Target (the guarantees issue): 1,000 resamples cost at most 20 times one exact evaluation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _memory import load_line
from _memory import peak_traced_mib as peak_mib

from selectivekit import aurc_dice, bootstrap_ci, dice_at_coverage

K = 8
COVERAGES = [0.95, 0.9, 0.8, 0.7]


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


def exact_evaluation(pred, label, u) -> list[float]:
    values = [aurc_dice(pred, label, u, num_classes=K)]
    for r in dice_at_coverage(pred, label, u, COVERAGES, num_classes=K):
        values += [r.mean, r.p5]
    return values


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and brute-force resamples")
    parser.add_argument("--n-resamples", type=int, default=1000)
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    n_brute = 3 if args.quick else 10
    rng = np.random.default_rng(0)
    pred, label, u = make_volumes(rng, 20, 64)
    print(load_line())
    print(f"data: {pred.shape[0]} volumes of {pred.shape[1:]} = {pred.size:,} voxels, {K} classes")

    t_exact, exact = timed(lambda: exact_evaluation(pred, label, u), repeats)

    def boot():
        return bootstrap_ci(
            ["aurc_dice", "dice_at_coverage"],
            pred,
            label,
            u,
            num_classes=K,
            coverages=COVERAGES,
            n_resamples=args.n_resamples,
            seed=0,
        )

    t_boot, result = timed(boot, repeats)
    keys = list(result.distribution)

    idx = np.random.default_rng(0).integers(0, pred.shape[0], (args.n_resamples, pred.shape[0]))
    start = time.perf_counter()
    worst = 0.0
    for r in range(n_brute):
        values = exact_evaluation(pred[idx[r]], label[idx[r]], u[idx[r]])
        worst = max(worst, max(abs(v - result.distribution[k][r]) for v, k in zip(values, keys, strict=True)))
    t_brute = (time.perf_counter() - start) / n_brute * args.n_resamples

    m_exact = peak_mib(lambda: exact_evaluation(pred, label, u))
    m_boot = peak_mib(boot)
    m_brute = peak_mib(lambda: exact_evaluation(pred[idx[0]], label[idx[0]], u[idx[0]]))
    inputs = (pred.nbytes + label.nbytes + u.nbytes) / 2**20

    print(f"one exact evaluation:              {t_exact:8.3f} s   peak {m_exact:7.1f} MiB")
    print(
        f"bootstrap_ci, {args.n_resamples} resamples (BCa):  {t_boot:8.3f} s   peak {m_boot:7.1f} MiB   "
        f"= {t_boot / t_exact:.1f}x one exact evaluation (target <= 20x)"
    )
    print(
        f"brute-force bootstrap (scaled from {n_brute} resamples): {t_brute:8.1f} s   "
        f"peak {m_brute:7.1f} MiB "
        f"per resample   = {t_brute / t_boot:.0f}x bootstrap_ci"
    )
    print(
        f"inputs: {inputs:.1f} MiB; largest |brute force - bootstrap_ci| over {n_brute} resamples: "
        f"{worst:.1e}"
    )
    for key in keys:
        ci = result[key]
        print(f"  {key:>10}: {ci.estimate:.5f}  [{ci.low:.5f}, {ci.high:.5f}]  ({ci.method})")
    print("exact evaluation values:", ", ".join(f"{v:.5f}" for v in exact))


if __name__ == "__main__":
    main()

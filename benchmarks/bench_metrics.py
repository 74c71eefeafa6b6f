"""AURC on 10,000,000 float32 scores (20% errors) vs a bare sort and the usual peer approach.

Run: ``python benchmarks/bench_metrics.py [--n 10000000] [--repeats 5]``. Prints medians and the ratios
measured side by side in this process:

* ``aurc / np.sort``: against the floor of any sort-based method (target <= 1.5x);
* ``peer / aurc``: the approach of most peers (argsort descending, cumulative errors / k, trapezoid;
  not tie-correct), how many times slower than ours (target >= 4x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import selectivekit as sk


def peer_aurc(u: np.ndarray, correct: np.ndarray) -> float:
    """The common recipe (torch-uncertainty / CRL style): sort by confidence, cumulative risk, trapezoid."""
    order = np.argsort(-u)[::-1]  # argsort "descending confidence" = ascending uncertainty
    errors = np.cumsum(~correct[order])
    k = np.arange(1, u.size + 1)
    risks = errors / k
    return float(np.trapezoid(risks, k / u.size))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    correct = rng.random(args.n) >= 0.2
    # errors tend to have higher uncertainty, as with a useful model
    base = rng.random(args.n, dtype=np.float32)
    u_cont = np.where(correct, base, np.sqrt(base)).astype(np.float32)
    cases = {"continuous": u_cont, "ties (rounded to 1e-3)": np.round(u_cont, 3).astype(np.float32)}
    print(f"aurc on n={args.n:,} float32 scores, 20% errors; medians of {args.repeats} runs")
    for name, u in cases.items():
        ours = sk.aurc(u, correct)
        t_ours = median_time(lambda u=u: sk.aurc(u, correct), args.repeats)
        t_sort = median_time(lambda u=u: np.sort(u), args.repeats)
        t_peer = median_time(lambda u=u: peer_aurc(u, correct), args.repeats)
        print(
            f"  {name:24s} aurc {t_ours * 1e3:7.1f} ms | np.sort {t_sort * 1e3:7.1f} ms | "
            f"peer {t_peer * 1e3:7.1f} ms | aurc/sort = {t_ours / t_sort:4.2f}x (target <= 1.5) | "
            f"peer/aurc = {t_peer / t_ours:4.1f}x (target >= 4) | value {ours:.6f} "
            f"(peer {peer_aurc(u, correct):.6f})"
        )


if __name__ == "__main__":
    main()
